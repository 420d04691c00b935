"""The search as a recipe step (`stage: search` in `bertedge run`): validation before any model loads, the
wall-clock budget (with a fake clock, and `max_hours: 0`), and tiny end-to-end runs: the pick is the fastest
candidate within the budget by search.json's own numbers, over-budget branches are dropped or skipped with
their reason, `max_hours: 0` lists the rest as not tried, and with no candidate within the budget there is no
final artifact, the report names the best one within it and the run fails in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error

from bertedge.recipe import parse_recipe
from bertedge.search import SearchConfig, plan_and_build

TEACHER = {"stage": "finetune", "name": "teacher", "max_length": 32,
           "train": {"epochs": 4, "lr": 3e-3, "batch_size": 16, "seed": 0, "warmup_ratio": 0.0}}
SEARCH = {"stage": "search", "layers": [1], "prune": [{"ffn": 0, "heads": 0}, {"ffn": 0.5, "heads": 0.5}],
          "quantize": ["dynamic"], "distill": {"train": {"epochs": 1, "lr": 3e-3, "batch_size": 16, "seed": 0}},
          "prune_options": {"recover_epochs": 1, "importance_samples": 32, "train": {"batch_size": 16}},
          "batch_size": 1, "seq_len": 32, "runs": 3, "warmup": 0}
NAMES = ["L1", "L1-onnx", "L1-dynamic", "L1-p50-50", "L1-p50-50-onnx", "L1-p50-50-dynamic"]


def write_recipe(path: Path, model_dir: Path, data_dir: Path, *, search: dict | None = None,
                 budget: dict | None = None, stages: list | None = None) -> Path:
    recipe = {
        "name": "tiny-search", "model": str(model_dir), "task": "text-classification", "data": str(data_dir),
        "budget": budget or {"max_accuracy_drop": 100.0},
        "bench": {"batch_sizes": [1], "seq_lens": [32], "warmup": 0, "duration": 0.02, "real_lengths": False,
                  "peer": False},
        "stages": stages or [TEACHER, {**SEARCH, **(search or {})}],
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def forced_drops(drops: dict[str, float]):
    """A `_candidate_value` that makes each candidate lose `drops[name]` points vs the run's teacher (0 if not
    listed), whatever it really scores, so budget verdicts do not depend on how a tiny model trains."""
    from bertedge.artifacts import dev_metrics, load_artifact

    def value(artifact, metric):
        run_dir = artifact.path.parents[3]  # RUN/search/STEP/candidates/NAME
        teacher = dev_metrics(load_artifact(run_dir / "artifacts" / "teacher"))[metric]
        return teacher - drops.get(artifact.path.name, 0.0) / 100

    return value


def finals(search: dict) -> list[dict]:
    return [c for c in search["candidates"] if c.get("final") and c["status"] == "built"]


# ----------------------------------------------------------------------------- validation (no model loads)

def check(cli, tmp_path, tiny_model_dir, tiny_data, **kwargs):
    path = write_recipe(tmp_path / "bad.yaml", tiny_model_dir, tiny_data["sst"], **kwargs)
    result = cli("run", str(path), "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything ran
    return path, result


FIX = "Fix the value (see `bertedge optimize --help` and docs/optimize.md for each field)"


@pytest.mark.parametrize("field", ["layers", "prune", "quantize"])
def test_empty_axis_is_refused(cli, tmp_path, tiny_model_dir, tiny_data, field):
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, search={field: []})
    line = assert_one_line_error(result)
    assert line == (f"error: {path}: stages.1.search.{field}: List should have at least 1 item after validation, "
                    f"not 0. {FIX}")


def test_prune_ratio_of_one_is_refused(cli, tmp_path, tiny_model_dir, tiny_data):
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data,
                         search={"prune": [{"ffn": 0, "heads": 0}, {"ffn": 1.0, "heads": 0.5}]})
    assert assert_one_line_error(result) == f"error: {path}: stages.1.search.prune.1.ffn: Input should be less than 1. {FIX}"


def test_depth_above_the_finetune_teacher_is_refused(cli, tmp_path, tiny_model_dir, tiny_data):
    # The teacher is a finetune of the 2-layer tiny model: its depth comes from the model's config.json.
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, search={"layers": [1, 3]})
    assert assert_one_line_error(result) == (f"error: {path}: stages.1.search.layers.1: 3 is deeper than its teacher "
                                             "'teacher' (2 layers). Use depths from 1 to 2 (0 = the teacher itself)")


def test_depth_above_a_distilled_teacher_is_refused(cli, tmp_path, tiny_model_dir, tiny_data):
    stages = [TEACHER, {"stage": "distill", "name": "student", "layers": 1}, {**SEARCH, "layers": [2]},
              {**SEARCH, "name": "from-teacher", "source": "teacher", "layers": [2]}]
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, stages=stages)
    assert assert_one_line_error(result) == (f"error: {path}: stages.2.search.layers.0: 2 is deeper than its teacher "
                                             "'student' (1 layer). Use depths from 1 to 1 (0 = the teacher itself)")


def test_negative_budget_is_refused(cli, tmp_path, tiny_model_dir, tiny_data):
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, search={"max_accuracy_drop": -0.5})
    assert assert_one_line_error(result) == (f"error: {path}: stages.1.search.max_accuracy_drop: Input should be "
                                             f"greater than or equal to 0. {FIX}")
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, budget={"max_accuracy_drop": -1})
    assert assert_one_line_error(result) == (f"error: {path}: budget.max_accuracy_drop: Input should be greater than "
                                             "or equal to 0. Fix the recipe (see recipes/sst2.yaml)")


def test_negative_max_hours_is_refused(cli, tmp_path, tiny_model_dir, tiny_data):
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, search={"max_hours": -1})
    assert assert_one_line_error(result) == (f"error: {path}: stages.1.search.max_hours: Input should be greater "
                                             f"than or equal to 0. {FIX}")


def test_early_exit_axis_is_validated_before_any_model_loads(cli, tmp_path, tiny_model_dir, tiny_data):
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, search={"early_exit": [0.9]})
    assert assert_one_line_error(result) == (f"error: {path}: stages.1.search.early_exit: Input should be a valid "
                                             f"dictionary. {FIX}")
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, search={"early_exit": {"pooling": "max"}})
    assert assert_one_line_error(result) == (f"error: {path}: stages.1.search.early_exit.pooling: Input should be "
                                             "'cls' or 'mean'. Fix the value (same fields as the stage's config)")
    # Early exit is for text classification: a search of an NER recipe with it is refused in one line.
    path = write_recipe(tmp_path / "ner.yaml", tiny_model_dir, tiny_data["conll"], search={"early_exit": {}})
    data = yaml.safe_load(path.read_text())
    data["task"] = "token-classification"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli("run", str(path), "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    assert assert_one_line_error(result) == (f"error: {path}: stages.1.search.early_exit: early exit needs a "
                                             "text-classification model; this search's task is token-classification. "
                                             "Remove early_exit from the search for this task")


def test_optimize_refuses_early_exit_for_a_token_classification_teacher(cli, tmp_path, tiny_artifacts):
    out = tmp_path / "s"
    line = assert_one_line_error(cli("optimize", "--teacher", tiny_artifacts["conll"].path, "--out", out,
                                     "--layers", "1", "--early-exit"))
    assert line == ("error: search.early_exit: early exit needs a text-classification model; this search's task is "
                    "token-classification. Remove early_exit from the search for this task")
    assert not out.exists()


def test_option_blocks_and_flow_are_checked(cli, tmp_path, tiny_model_dir, tiny_data):
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, search={"distill": {"layers": 2}})
    assert assert_one_line_error(result) == (f"error: {path}: stages.1.search.distill.layers: set by the search "
                                             "itself. Remove it from distill; the search varies it (layers / prune / "
                                             "quantize)")
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data,
                         stages=[TEACHER, {"stage": "export"}, SEARCH])
    assert assert_one_line_error(result) == (
        f"error: {path}: stages.2.search: a search starts from a fine-tuned PyTorch teacher (a finetune, distill or "
        "prune step), not the export step 'export'. Put the search step right after its teacher, or name the teacher "
        "with `source:`")
    path, result = check(cli, tmp_path, tiny_model_dir, tiny_data, stages=[TEACHER, SEARCH, {"stage": "quantize"}])
    assert assert_one_line_error(result) == (
        f"error: {path}: stages.2.quantize: a quantize step cannot start from the search step 'search' (its pick is "
        "a final ONNX bundle). Put the search step last, or set `source:` to an earlier step")


def test_check_validates_a_search_recipe_and_the_budget_is_inherited(cli, tmp_path, tiny_model_dir, tiny_data):
    path = write_recipe(tmp_path / "ok.yaml", tiny_model_dir, tiny_data["sst"],
                        budget={"max_accuracy_drop": 2.0, "max_size_mb": 8})
    result = cli("run", str(path), "--check")
    assert result.code == 0 and "valid (teacher -> search)" in result.out, result
    data = yaml.safe_load(path.read_text())
    recipe = parse_recipe(data)
    assert (recipe.stages[1].max_accuracy_drop, recipe.stages[1].max_size_mb) == (2.0, 8)
    data["stages"][1]["max_accuracy_drop"] = 0.5  # the step's own budget wins, field by field
    own = parse_recipe(data)
    assert (own.stages[1].max_accuracy_drop, own.stages[1].max_size_mb) == (0.5, 8)
    assert parse_recipe(yaml.safe_load(own.to_yaml())).to_yaml() == own.to_yaml()


def test_optimize_max_hours_is_validated(cli, tmp_path, tiny_artifacts):
    assert_one_line_error(cli("optimize", "--teacher", tiny_artifacts["sst"].path, "--out", tmp_path / "s",
                              "--max-hours", "-1"),
                          "search.max_hours: Input should be greater than or equal to 0")


# ----------------------------------------------------------------------------- the wall-clock budget, no wall time

def hourly_builder():
    """A fake build that takes one hour of a fake clock per candidate."""
    now = {"t": 0.0}
    built = []

    def build(name, stage, parent, settings):
        now["t"] += 3600
        built.append(name)
        return {"name": name, "stage": stage, "parent": parent, "status": "built", "drop_pts": 0.0}

    return built, build, lambda: now["t"]


def tree(**overrides) -> SearchConfig:
    return SearchConfig.model_validate({"layers": [1], "prune": [{}, {"ffn": 0.5, "heads": 0.5}],
                                        "quantize": ["dynamic"], **overrides})


def test_max_hours_stops_building_and_lists_the_rest_as_not_tried():
    built, build, clock = hourly_builder()
    records = plan_and_build(tree(max_hours=2.5), 2, build, clock=clock)
    assert built == ["L1", "L1-onnx", "L1-dynamic"]  # 3 h spent once the first chain ends: nothing new
    assert [r["name"] for r in records] == NAMES
    for r in records[3:]:
        assert r["status"] == "not tried"
        assert r["reason"] == "not tried: wall-clock budget spent (10800 s used of max_hours 2.5 = 9000 s)"
    built, build, clock = hourly_builder()
    records = plan_and_build(tree(max_hours=5), 2, build, clock=clock)
    assert built == NAMES[:5] and records[5]["status"] == "not tried"  # 5 h used when the last one was next
    built, build, clock = hourly_builder()
    assert [r["status"] for r in plan_and_build(tree(), 2, build, clock=clock)] == ["built"] * 6  # unlimited


def test_max_hours_zero_stops_after_the_first_chain_even_on_a_frozen_clock():
    built, build, _ = hourly_builder()
    plan_and_build(tree(max_hours=0), 2, build, clock=lambda: 0.0)
    assert built == ["L1", "L1-onnx", "L1-dynamic"]
    # A dropped candidate ends its chain too: the next depth is not tried (monotone off, so not skipped).
    calls = []

    def dropping(name, stage, parent, settings):
        calls.append(name)
        return {"name": name, "stage": stage, "parent": parent, "status": "built", "drop_pts": 5.0}

    records = plan_and_build(tree(layers=[2, 1], prune=[{}], max_hours=0, monotone=False), 3, dropping,
                             clock=lambda: 0.0)
    assert calls == ["L2"] and [(r["name"], r["status"]) for r in records] == [
        ("L2", "dropped"), ("L1", "not tried"), ("L1-onnx", "not tried"), ("L1-dynamic", "not tried")]


def test_early_exit_is_a_branch_of_every_model_with_its_share_of_the_budget():
    seen = []

    def build(name, stage, parent, settings):
        seen.append((name, stage, parent, settings))
        return {"name": name, "stage": stage, "parent": parent, "status": "built",
                "drop_pts": {"L1": 0.4, "L1-p50-50": 0.9}.get(name, 0.0)}

    records = plan_and_build(tree(early_exit={"max_accuracy_drop": 0.5}, quantize=["dynamic", "static"],
                                  max_accuracy_drop=1.0), 2, build)
    names = [r["name"] for r in records]
    assert names == ["L1", "L1-onnx", "L1-dynamic", "L1-static", "L1-ee", "L1-ee-onnx", "L1-ee-dynamic",
                     "L1-ee-static", "L1-p50-50", "L1-p50-50-onnx", "L1-p50-50-dynamic", "L1-p50-50-static",
                     "L1-p50-50-ee", "L1-p50-50-ee-onnx", "L1-p50-50-ee-dynamic", "L1-p50-50-ee-static"]
    settings = {name: s for name, stage, parent, s in seen}
    parents = {name: parent for name, stage, parent, s in seen}
    # The exit heads' calibration gets the early_exit cap or what the model left of the budget, the lower.
    assert settings["L1-ee"] == {"max_accuracy_drop": 0.5} and parents["L1-ee"] == "L1"
    assert settings["L1-p50-50-ee"] == {"max_accuracy_drop": 0.1} and parents["L1-p50-50-ee"] == "L1-p50-50"
    assert parents["L1-ee-onnx"] == "L1-ee" and parents["L1-ee-dynamic"] == "L1-ee-onnx"
    static = next(r for r in records if r["name"] == "L1-ee-static")
    assert static["status"] == "skipped" and static["reason"] == ("skipped: static int8 is not available for "
                                                                  "early-exit bundles (dynamic and auto are)")
    finals = [r["name"] for r in records if r.get("final")]
    assert finals == ["L1-dynamic", "L1-static", "L1-ee-dynamic", "L1-p50-50-dynamic", "L1-p50-50-static",
                      "L1-p50-50-ee-dynamic"]
    # Without the block there is no early-exit branch (the default).
    assert not any(r["name"].endswith("-ee") for r in plan_and_build(tree(), 2, build))


# ----------------------------------------------------------------------------- tiny end-to-end runs

@pytest.fixture(scope="module")
def search_run(tmp_path_factory, tiny_model_dir, tiny_data):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("search-run")
    recipe = write_recipe(root / "tiny.yaml", tiny_model_dir, tiny_data["sst"])
    result = run_cli("run", str(recipe), "--out", str(root / "run"), "--json")
    assert result.code == 0, result
    out = root / "run"
    return {"root": root, "recipe": recipe, "out": out, "summary": json.loads(result.out),
            "search": json.loads((out / "search" / "search" / "search.json").read_text())}


def test_search_step_picks_the_fastest_candidate_within_budget(search_run):
    out, search = search_run["out"], search_run["search"]
    assert [c["name"] for c in search["candidates"]] == NAMES
    assert all(c["status"] == "built" and c["wall_time_s"] is not None for c in search["candidates"])
    timed = finals(search)
    assert [c["name"] for c in timed] == ["L1-dynamic", "L1-p50-50-dynamic"]
    within = [c for c in timed if c["within_budget"]]
    fastest = min(within, key=lambda c: c["p50_ms"])  # search.json's own measurements decide
    assert search["best"] == fastest["name"] and fastest["verdict"] == "chosen: fastest within the budget"
    steps = search_run["summary"]["steps"]
    assert [(s["name"], s["stage"]) for s in steps] == [("teacher", "finetune"), ("search", "search")]
    assert steps[1]["pick"] == fastest["name"]
    # The step's artifact is a copy of the pick: same payload, its manifest says what the search chose.
    manifest = json.loads((out / "artifacts" / "search" / "bertedge.json").read_text())
    candidate = json.loads((out / "search" / "search" / "candidates" / fastest["name"] / "bertedge.json").read_text())
    assert manifest["payload_sha256"] == candidate["payload_sha256"] and manifest["stage"] == "quantize"
    assert manifest["search"]["pick"] == fastest["name"] and manifest["search"]["p50_ms"] == fastest["p50_ms"]
    assert search["cost"]["counts"]["built"] == 6 and search["cost"]["wall_time_s"] > 0
    assert search["stopped"] is None


def test_report_takes_the_pick_as_final_and_shows_the_search(search_run):
    out, search = search_run["out"], search_run["search"]
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["name"] == "search" and report["final"]["search_pick"] == search["best"]
    assert report["budget"]["met"] is True and report["budget"]["from"] == "search step search"
    [section] = report["search"]
    assert section["picked"] == section["best"] == search["best"] and section["source"] == "teacher"
    assert section["pareto_front"] == search["pareto_front"] and search["best"] in section["pareto_front"]
    for shown, full in zip(section["candidates"], search["candidates"], strict=True):
        assert {k: shown.get(k) for k in ("name", "status", "verdict", "drop_pts", "size_bytes", "p50_ms")} == \
               {k: full.get(k) for k in ("name", "status", "verdict", "drop_pts", "size_bytes", "p50_ms")}
    assert section["cost"]["wall_time_s"] == search["cost"]["wall_time_s"]
    assert Path(report["plots"]["search"]["search"]).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "## Search: search (from teacher)" in md and f"**Picked: {search['best']}**" in md
    assert "| build (s) |" in md and "Search cost:" in md and "6 built" in md
    assert all(f"| {name} |" in md for name in NAMES)
    assert f"Final: search (the search's pick, {search['best']})" in md


def test_resume_keeps_the_search_and_a_changed_step_keeps_its_candidates(cli, search_run, tmp_path):
    out = search_run["out"]
    result = cli("run", str(search_run["recipe"]), "--out", str(out), "--resume", "--no-report", "--json")
    assert result.code == 0, result
    assert all(s["skipped"] for s in json.loads(result.out)["steps"])
    # A changed ranking (runs) redoes the step, but every candidate is kept: nothing is trained again.
    data = yaml.safe_load(search_run["recipe"].read_text())
    data["stages"][1]["runs"] = 4
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli("run", str(changed), "--out", str(out), "--resume", "--no-report", "--json")
    assert result.code == 0, result
    assert [s["skipped"] for s in json.loads(result.out)["steps"]] == [True, False]
    again = json.loads((out / "search" / "search" / "search.json").read_text())
    assert all(c["kept_from_earlier_run"] for c in again["candidates"]) and again["search"]["runs"] == 4


def test_over_budget_branches_are_dropped_and_skipped_with_their_reason(cli, tmp_path, tiny_model_dir, tiny_data,
                                                                        monkeypatch):
    import bertedge.search

    monkeypatch.setattr(bertedge.search, "_candidate_value", forced_drops({"L1-p50-50": 30.0}))
    prune = [{"ffn": 0, "heads": 0}, {"ffn": 0.5, "heads": 0.5}, {"ffn": 0.75, "heads": 0.75}]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tiny_data["sst"], budget={"max_accuracy_drop": 5.0},
                          search={"prune": prune})
    result = cli("run", str(recipe), "--out", str(tmp_path / "run"), "--no-report", "--json")
    assert result.code == 0, result
    search = json.loads((tmp_path / "run" / "search" / "search" / "search.json").read_text())
    by_name = {c["name"]: c for c in search["candidates"]}
    assert list(by_name) == ["L1", "L1-onnx", "L1-dynamic", "L1-p50-50", "L1-p75-75"]  # nothing under p50-50 built
    assert by_name["L1-p50-50"]["status"] == "dropped"
    assert by_name["L1-p50-50"]["reason"] == "dropped: loses 30.00 pts, over the 5 pt limit; not exported"
    assert by_name["L1-p75-75"] == {"name": "L1-p75-75", "stage": "prune", "parent": "L1", "status": "skipped",
                                    "reason": "skipped: pruning p50-50 of L1 already loses 30.00 pts (over the budget)"}
    assert not (tmp_path / "run" / "search" / "search" / "candidates" / "L1-p75-75").exists()
    assert search["best"] == "L1-dynamic" and search["budget"]["max_accuracy_drop"] == 5.0  # the recipe's budget
    md = (tmp_path / "run" / "search" / "search" / "search.md").read_text()
    assert "dropped: loses 30.00 pts" in md and "skipped: pruning p50-50" in md


def test_max_hours_zero_reports_the_first_candidate_and_lists_the_rest(cli, tmp_path, tiny_model_dir, tiny_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tiny_data["sst"], search={"max_hours": 0})
    result = cli("run", str(recipe), "--out", str(tmp_path / "run"), "--no-report", "--json")
    assert result.code == 0, result
    search = json.loads((tmp_path / "run" / "search" / "search" / "search.json").read_text())
    statuses = [(c["name"], c["status"]) for c in search["candidates"]]
    assert statuses == [("L1", "built"), ("L1-onnx", "built"), ("L1-dynamic", "built"),
                        ("L1-p50-50", "not tried"), ("L1-p50-50-onnx", "not tried"),
                        ("L1-p50-50-dynamic", "not tried")]
    assert all(c["reason"].startswith("not tried: wall-clock budget spent (") and "of max_hours 0 = 0 s)" in c["reason"]
               for c in search["candidates"][3:])
    assert search["best"] == "L1-dynamic" and json.loads(result.out)["steps"][1]["pick"] == "L1-dynamic"
    assert search["stopped"]["not_tried"] == 3 and search["stopped"]["first_not_tried"] == "L1-p50-50"
    assert search["cost"]["counts"] == {"built": 3, "dropped": 0, "skipped": 0, "not tried": 3,
                                        "kept_from_earlier_run": 0}
    assert not (tmp_path / "run" / "search" / "search" / "candidates" / "L1-p50-50").exists()
    md = (tmp_path / "run" / "search" / "search" / "search.md").read_text()
    assert "**Stopped by the wall-clock budget** (max_hours 0)" in md and "3 not tried" in md


def test_no_candidate_within_budget_has_no_final_artifact(cli, search_run, tmp_path, monkeypatch):
    """A rerun (--resume, new budget) of the finished run where every candidate is now over budget: the earlier
    pick is removed, the report has no final artifact and names the best within budget, and the run fails."""
    import bertedge.search

    out = tmp_path / "run"
    shutil.copytree(search_run["out"], out, symlinks=True)
    monkeypatch.setattr(bertedge.search, "_candidate_value", forced_drops({"L1": 30.0}))
    data = yaml.safe_load(search_run["recipe"].read_text())
    data["budget"] = {"max_accuracy_drop": 5.0}
    data["stages"][1].pop("max_accuracy_drop", None)  # the recipe's budget applies to the step again
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli("run", str(recipe), "--out", str(out), "--resume")
    search_dir = out / "search" / "search"
    assert assert_one_line_error(result) == (
        f"error: {search_dir}: step 'search': no candidate within budget (drop ≤ 5 pts vs the teacher's dev accuracy): "
        "no final candidate built; 1 dropped, 0 skipped, 0 not tried; no artifact written. "
        f"See {out / 'report.md'} (best within the budget: teacher) and {search_dir / 'search.md'}; loosen the budget "
        "or widen the search, then rerun with --resume (built candidates are kept)")
    assert not (out / "artifacts" / "search").exists()  # the earlier pick does not stand in
    search = json.loads((out / "search" / "search" / "search.json").read_text())
    assert search["best"] is None and [(c["name"], c["status"]) for c in search["candidates"]] == [("L1", "dropped")]
    assert search["candidates"][0]["kept_from_earlier_run"]  # resumed: not trained again
    report = json.loads((out / "report.json").read_text())
    assert report["final"] is None and report["budget"]["met"] is False
    assert report["budget"]["best_within_budget"] == "teacher"
    assert [a["name"] for a in report["artifacts"]] == ["teacher"]
    assert report["search"][0]["picked"] is None and report["search"][0]["best"] is None
    md = (out / "report.md").read_text()
    assert "**Final: none — no candidate within budget.** Best within budget: **teacher**." in md
    assert "**No candidate within budget**" in md and "dropped: loses 30.00 pts" in md


def test_early_exit_candidates_are_ranked_with_the_rest_on_dev_inputs(cli, tmp_path, tiny_model_dir, tiny_data,
                                                                      monkeypatch):
    """A search with the early-exit axis: each model also gets exit heads, and every final candidate (with
    exits or without) is timed at batch 1 over the same dev inputs in one run; that mean picks. The report then
    times the teacher, the peer and the (early-exit) final over the dev inputs in one run, and takes the final's
    speed-ups from it."""
    import bertedge.search

    # teacher-dynamic over the budget, so the pick is the early-exit bundle whatever the tiny models time
    monkeypatch.setattr(bertedge.search, "_candidate_value", forced_drops({"teacher-dynamic": 20.0}))
    ee = {"epochs": 1, "batch_size": 16, "eval_batch_size": 16, "max_accuracy_drop": 5.0}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tiny_data["sst"], budget={"max_accuracy_drop": 10.0},
                          search={"layers": [0], "prune": [{"ffn": 0, "heads": 0}], "early_exit": ee,
                                  "dev_timing_samples": 16,
                                  "dev_timing_rounds": 2})
    data = yaml.safe_load(recipe.read_text())
    data["bench"]["peer"] = True
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli("run", str(recipe), "--out", str(tmp_path / "run"), "--json")
    assert result.code == 0, result
    directory = tmp_path / "run" / "search" / "search"
    search = json.loads((directory / "search.json").read_text())
    assert [c["name"] for c in search["candidates"]] == ["teacher-onnx", "teacher-dynamic", "teacher-ee",
                                                         "teacher-ee-onnx", "teacher-ee-dynamic"]
    by_name = {c["name"]: c for c in search["candidates"]}
    assert by_name["teacher-ee"]["stage"] == "early-exit" and by_name["teacher-ee"]["parent"] == "teacher"
    assert by_name["teacher-ee"]["settings"] == {"max_accuracy_drop": 5.0}  # the cap, below the 10 pts left
    manifest = json.loads((directory / "candidates" / "teacher-ee-dynamic" / "bertedge.json").read_text())
    assert len(manifest["early_exit"]["segments"]) == 2  # the 2-layer teacher: one segment per layer
    assert search["ranking"]["key"] == "dev_mean_ms" and search["ranking"]["inputs"] == 16
    timed = finals(search)
    assert [c["name"] for c in timed] == ["teacher-dynamic", "teacher-ee-dynamic"]
    assert all(c["dev_mean_ms"] > 0 for c in timed)
    assert 1.0 <= by_name["teacher-ee-dynamic"]["mean_exit_layer"] <= 2.0
    assert by_name["teacher-dynamic"]["mean_exit_layer"] is None
    assert by_name["teacher-ee-dynamic"]["p50_ms"] is None and by_name["teacher-dynamic"]["p50_ms"] > 0
    assert [c["name"] for c in timed if c["within_budget"]] == ["teacher-ee-dynamic"]
    assert search["best"] == "teacher-ee-dynamic" and by_name["teacher-ee-dynamic"]["verdict"] == \
        "chosen: fastest within the budget"
    md = (directory / "search.md").read_text()
    assert "| dev mean (ms) | mean exit layer |" in md and "Ranked by mean batch-1 latency over 16 dev inputs" in md
    report_md = (tmp_path / "run" / "report.md").read_text()
    assert "Ranking: mean batch-1 latency over 16 dev inputs" in report_md and "| dev mean (ms) |" in report_md
    # The report: one dev-input run of teacher (PyTorch), peer (ORT int8) and the early-exit final.
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    dev = report["dev_inputs"]
    rows = {r["role"]: r for r in dev["rows"]}
    assert set(rows) == {"teacher", "peer", "final", "final, full depth"} and dev["rounds"] == 3
    assert rows["teacher"]["mode"] == rows["peer"]["mode"] == "plain" and rows["final"]["mode"] == "early-exit"
    assert len({r["n"] for r in dev["rows"]}) == 1  # the same dev inputs for every target
    assert 1.0 <= rows["final"]["mean_exit_layer"] <= 2.0 and rows["teacher"]["mean_exit_layer"] is None
    assert all(r["mean_ms"] > 0 and 0 <= r["accuracy"] <= 1 for r in dev["rows"])
    final = report["final"]
    assert final["search_pick"] == "teacher-ee-dynamic" and final["p50_ms_b1_s128"] is None
    assert final["speedup_basis"] == "dev_mean_ms" and final["dev_mean_ms"] == rows["final"]["mean_ms"]
    assert final["speedup_vs_teacher"] == round(rows["teacher"]["mean_ms"] / rows["final"]["mean_ms"], 3)
    assert final["speedup_vs_peer"] == round(rows["peer"]["mean_ms"] / rows["final"]["mean_ms"], 3)
    assert "Teacher, peer and final at batch 1 over the" in report_md
    assert f"{final['speedup_vs_teacher']:.2f}x† |" in report_md and "† an early-exit artifact" in report_md
