"""Recipes and `bertedge run`: validation before any model loads, round-trip, a tiny end-to-end run with
its report, and --resume after a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CLI_CHILD, ROOT, assert_one_line_error, child_env, start_child, stop_child, wait_for_marker

from bertedge.recipe import load_recipe, parse_recipe

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate_and_round_trip(path):
    recipe = load_recipe(path)
    again = parse_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again.to_yaml() == recipe.to_yaml()
    assert recipe.stages[0].stage == "finetune" and recipe.stages[-1].stage in ("quantize", "search")


def test_required_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"sst2", "mrpc", "rte", "conll2003", "squad"}


BASE = {"model": "minilm-l6", "task": "text-classification", "data": "sst2"}


@pytest.mark.parametrize("stages,fragments", [
    ([{"stage": "finetune"}, {"stage": "compress"}], ["stages.1.stage", "unknown stage 'compress'", "Choose one of"]),
    ([{"stage": "finetune", "train": {"epochz": 2}}], ["stages.0.finetune.train.epochz", "unknown key"]),
    ([{"stage": "finetune"}, {"stage": "export"}, {"stage": "quantize", "per_channel": "maybe"}],
     ["stages.2.quantize.per_channel", "boolean"]),
    ([{"stage": "finetune"}, {"stage": "export"}, {"stage": "quantize", "mode": "static"}],
     ["stages.2.quantize.calibration", "static quantization needs calibration data"]),
    ([{"stage": "distill", "layers": 3}], ["stages.0.distill.source", "distillation needs a teacher"]),
    ([{"stage": "finetune"}, {"stage": "quantize"}], ["stages.1.quantize", "needs an exported ONNX bundle"]),
    ([{"stage": "finetune"}, {"stage": "export", "source": "techer"}], ["stages.1.export.source", "techer"]),
])
def test_recipe_errors_are_path_qualified_one_liners(cli, tmp_path, stages, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "stages": stages}), encoding="utf-8")
    line = assert_one_line_error(cli("run", str(path), "--out", str(tmp_path / "run")), str(path), *fragments)
    assert "Traceback" not in line
    assert not (tmp_path / "run").exists()


def test_recipe_top_level_and_yaml_errors(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "task": "summarization", "stages": [{"stage": "finetune"}]}))
    assert_one_line_error(cli("run", str(path)), "task", "Input should be")
    path.write_text("model: minilm-l6\nstages: [\n")
    assert_one_line_error(cli("run", str(path)), f"{path}:", "invalid YAML")
    assert_one_line_error(cli("run", str(tmp_path / "none.yaml")), "no such recipe file")


def tiny_recipe(tmp_path: Path, model_dir: Path, data_dir: Path) -> Path:
    recipe = {
        "name": "tiny", "model": str(model_dir), "task": "text-classification", "data": str(data_dir),
        "budget": {"max_accuracy_drop": 100.0},
        "bench": {"batch_sizes": [1], "seq_lens": [32], "warmup": 1, "duration": 0.02, "peer": True},
        "stages": [
            {"stage": "finetune", "name": "teacher", "max_length": 32,
             "train": {"epochs": 6, "lr": 3e-3, "batch_size": 16, "seed": 0, "warmup_ratio": 0.0}},
            {"stage": "distill", "name": "student", "layers": 1,
             "train": {"epochs": 3, "lr": 3e-3, "batch_size": 16, "seed": 0}},
            {"stage": "trim-vocab"},
            {"stage": "export", "metric_samples": 32},
            {"stage": "quantize", "mode": "dynamic"},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_data):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("tiny-run")
    recipe = tiny_recipe(root, tiny_model_dir, tiny_data["sst"])
    result = run_cli("run", str(recipe), "--out", str(root / "run"), "--json")
    assert result.code == 0, result
    return {"recipe": recipe, "out": root / "run", "summary": json.loads(result.out)}


def test_tiny_recipe_runs_end_to_end_with_the_report(tiny_run):
    out = tiny_run["out"]
    assert [s["name"] for s in tiny_run["summary"]["steps"]] == ["teacher", "student", "trim-vocab", "export",
                                                                 "quantize"]
    report = json.loads((out / "report.json").read_text())
    assert {"teacher", "final", "artifacts", "budget", "machine"} <= set(report)
    names = [a["name"] for a in report["artifacts"]]
    assert names[:5] == ["teacher", "student", "trim-vocab", "export", "quantize"] and names[5].startswith("peer")
    for a in report["artifacts"]:
        assert {"name", "stage", "path", "metrics", "size_bytes", "p50_ms_b1_s128", "p50_ms_real",
                "throughput_b32", "speedup_vs_teacher", "speedup_vs_peer"} <= set(a)
        assert a["p50_ms_b1_s128"] > 0 and a["throughput_b32"] > 0 and a["p50_ms_real"] > 0
    assert report["final"]["name"] == "quantize" and report["final"]["stage"] == "quantize"
    assert report["teacher"]["speedup_vs_teacher"] == pytest.approx(1.0)
    assert report["peer"]["speedup_vs_peer"] == pytest.approx(1.0)
    # the report names the peer it measured: optimum's on the legacy stack, plain ONNX Runtime's without optimum
    from bertedge.peer import default_peer

    assert report["peer_path"]["kind"] == default_peer() and report["peer_path"]["name"] == report["peer"]["name"]
    assert report["budget"]["met"] is True
    assert report["speedup_grid"] and all(g["speedup_vs_peer"] > 0 and g["peer_p50_ms"] > 0
                                          for g in report["speedup_grid"])
    # the grid is time-boxed (bench.duration), not a fixed number of rounds; at least 5 rounds each
    assert report["bench"]["config"]["duration"] == 0.02 and report["bench"]["config"]["runs"] is None
    assert min(r["n"] for r in report["bench"]["results"]) >= 5
    assert (out / "report.md").read_text().count("|") > 20 and (out / "pareto.png").stat().st_size > 1000
    # how the timings were taken, and whether the final artifact depends on the batch, are in the report
    assert report["bench"]["method"]["isolation"] == "process"
    quantized = json.loads((out / "artifacts" / "quantize" / "bertedge.json").read_text())["quantization"]
    assert report["final"]["batching"]["batch_invariant"] is quantized["batch_invariant"] is False
    text = (out / "report.md").read_text()
    assert "Timing method: each target in its own worker process" in text and "**batch-dependent** int8" in text
    assert f"Peer ({report['peer']['name']}) = {report['peer_path']['method']}." in text


def test_run_refuses_an_existing_run_without_resume(cli, tiny_run):
    line = assert_one_line_error(cli("run", str(tiny_run["recipe"]), "--out", str(tiny_run["out"])),
                                 "run directory already exists", "--resume")
    assert str(tiny_run["out"]) in line


def _manifest_files(run_dir: Path) -> dict:
    # A rewritten manifest is a new file (written beside the old one, then renamed over it): a new inode,
    # whatever the clock and the filesystem's timestamp resolution say.
    return {p.name: ((p / "bertedge.json").stat().st_ino, (p / "bertedge.json").read_bytes())
            for p in (run_dir / "artifacts").iterdir()}


def test_resume_keeps_finished_steps(cli, tiny_run):
    before = _manifest_files(tiny_run["out"])
    result = cli("run", str(tiny_run["recipe"]), "--out", str(tiny_run["out"]), "--resume", "--no-report", "--json")
    assert result.code == 0, result
    assert all(s["skipped"] for s in json.loads(result.out)["steps"])
    assert _manifest_files(tiny_run["out"]) == before


def test_killed_run_resumes_to_the_same_final_metrics(tmp_path, tiny_run, tiny_model_dir, tiny_data):
    """SIGKILL `bertedge run` while the student trains; --resume keeps the teacher and ends where an
    uninterrupted run ends."""
    recipe = tiny_recipe(tmp_path, tiny_model_dir, tiny_data["sst"])
    out = tmp_path / "run"
    marker, log = tmp_path / "student-training", tmp_path / "child.log"
    args = ["run", str(recipe), "--out", str(out), "--no-report"]
    # The child stops before the student's first training step and cannot go on; the kill comes after it says so.
    child = start_child(CLI_CHILD, args, log, BLOCK_IN="distill", BLOCK_MARKER=str(marker))
    try:
        wait_for_marker(marker, child, log)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        stop_child(child)
    teacher_sha = json.loads((out / "artifacts" / "teacher" / "bertedge.json").read_text())["payload_sha256"]
    assert not (out / "artifacts" / "student").exists()
    assert (out / "artifacts" / f".student.partial-{child.pid}").is_dir()  # killed inside the student stage
    resumed = subprocess.run([sys.executable, "-c", CLI_CHILD, *args, "--resume", "--json"], env=child_env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = {s["name"]: s["skipped"] for s in json.loads(resumed.stdout)["steps"]}
    assert steps == {"teacher": True, "student": False, "trim-vocab": False, "export": False, "quantize": False}
    assert json.loads((out / "artifacts" / "teacher" / "bertedge.json").read_text())["payload_sha256"] == teacher_sha
    final = json.loads((out / "artifacts" / "quantize" / "bertedge.json").read_text())["metrics"]["dev"]
    reference = json.loads((tiny_run["out"] / "artifacts" / "quantize" / "bertedge.json").read_text())["metrics"]["dev"]
    assert final["accuracy"] == reference["accuracy"]
    assert not list(out.parent.glob(".run.lock*")) and not list((out / "artifacts").glob(".*"))
