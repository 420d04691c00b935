"""`bertedge optimize`: the early-dropping search tree (with a fake build), the Pareto front, config errors
before any model loads, and one tiny end-to-end search with resume."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error

from bertedge.errors import ConfigError
from bertedge.search import PruneChoice, SearchConfig, pareto_front, parse_search, plan_and_build


def fake_builder(drops: dict[str, float]):
    calls = []

    def build(name, stage, parent, settings):
        calls.append((name, stage, parent, settings))
        return {"name": name, "stage": stage, "parent": parent, "status": "built", "drop_pts": drops.get(name, 0.0)}

    return calls, build


def search_config(**overrides) -> SearchConfig:
    base = {"layers": [3, 2, 1], "prune": [{"ffn": 0.7, "heads": 0.5}, {}, {"ffn": 0.5, "heads": 0.33}],
            "quantize": ["dynamic"], "max_accuracy_drop": 1.0}
    return SearchConfig.model_validate({**base, **overrides})


def test_failing_depth_and_ratio_cut_the_tree_without_building():
    config = search_config()
    # L3 fits; pruning it 50/33 fits (0.9), 70/50 does not (1.2); L2 loses 1.5 so L1 is never trained.
    calls, build = fake_builder({"L3": 0.5, "L3-p50-33": 0.9, "L3-p50-33-onnx": 0.9, "L3-p70-50": 1.2, "L2": 1.5,
                                 "L3-onnx": 0.5})
    records = plan_and_build(config, 6, build)
    built = [c[0] for c in calls]
    assert built == ["L3", "L3-onnx", "L3-dynamic", "L3-p50-33", "L3-p50-33-onnx", "L3-p50-33-dynamic",
                     "L3-p70-50", "L2"]
    by_name = {r["name"]: r for r in records}
    assert by_name["L3-p70-50"]["status"] == "dropped"
    assert by_name["L3-p70-50"]["reason"] == "dropped: loses 1.20 pts, over the 1 pt limit; not exported"
    assert by_name["L2"]["reason"] == "dropped: loses 1.50 pts, over the 1 pt limit; not pruned or quantized"
    assert by_name["L1"] == {"name": "L1", "stage": "distill", "parent": "teacher", "status": "skipped",
                             "reason": "skipped: the 2-layer student already loses 1.50 pts (over the budget)"}
    # Quantization gets what is left of the budget after distillation and pruning.
    quant = {c[0]: c[3] for c in calls if c[1] == "quantize"}
    assert quant == {"L3-dynamic": {"mode": "dynamic", "max_accuracy_drop": 0.5},
                     "L3-p50-33-dynamic": {"mode": "dynamic", "max_accuracy_drop": 0.1}}
    assert [r["name"] for r in records if r.get("final")] == ["L3-dynamic", "L3-p50-33-dynamic"]


def test_without_monotone_every_depth_is_tried_and_slack_keeps_a_near_miss():
    config = search_config(monotone=False, prune=[{}], quantize=["none"])
    calls, build = fake_builder({"L3": 0.5, "L2": 1.5, "L1": 3.0})
    plan_and_build(config, 6, build)
    assert [c[0] for c in calls] == ["L3", "L3-onnx", "L2", "L1"]
    slack = search_config(prune=[{}], quantize=["none"], slack=0.6)
    calls, build = fake_builder({"L3": 0.5, "L2": 1.5, "L1": 3.0})
    records = plan_and_build(slack, 6, build)
    assert [c[0] for c in calls] == ["L3", "L3-onnx", "L2", "L2-onnx", "L1"]
    assert [r["name"] for r in records if r.get("final")] == ["L3-onnx", "L2-onnx"]


def test_teacher_depth_means_no_distillation_and_deeper_is_refused():
    config = search_config(layers=[0], prune=[{}], quantize=["none", "auto"])
    calls, build = fake_builder({})
    plan_and_build(config, 6, build)
    assert [(c[0], c[2]) for c in calls] == [("teacher-onnx", "teacher"), ("teacher-auto", "teacher-onnx")]
    with pytest.raises(ConfigError, match="7 is deeper than the teacher"):
        plan_and_build(search_config(layers=[7]), 6, build)


def test_layer_dropping_and_trim_vocab_in_the_tree():
    # The teacher's own depth: pruned without distillation, and cheap students by dropping its top layers,
    # ordered least to most compressed; a trim-vocab step before every export.
    config = search_config(layers=[0], prune=[{"ffn": 0.5, "heads": 0.33}, {}, {"layers": 4},
                                              {"ffn": 0.5, "heads": 0.33, "layers": 4}, {"ffn": 0.5, "heads": 0.5, "layers": 2}],
                           trim_vocab={"keep_chars": "ascii"})
    calls, build = fake_builder({"teacher-d4": 0.4, "teacher-d4-p50-33": 1.3})
    records = plan_and_build(config, 6, build)
    built = [c[0] for c in calls]
    assert built == ["teacher-tv", "teacher-tv-onnx", "teacher-tv-dynamic",
                     "teacher-d4", "teacher-d4-tv", "teacher-d4-tv-onnx", "teacher-d4-tv-dynamic",
                     "teacher-p50-33", "teacher-p50-33-tv", "teacher-p50-33-tv-onnx", "teacher-p50-33-tv-dynamic",
                     "teacher-d4-p50-33"]
    settings = {c[0]: c[3] for c in calls}
    assert settings["teacher-d4"] == {"ffn": 0.0, "heads": 0.0, "drop_layers": [4, 5]}  # the top layers go
    assert settings["teacher-p50-33"] == {"ffn": 0.5, "heads": 0.33}
    assert {c[1] for c in calls if c[0].endswith("-tv")} == {"trim-vocab"}
    by_name = {r["name"]: r for r in records}
    # d4-p50-33 is over budget, so d2-p50-50 (fewer layers, no less pruned) is skipped without training
    assert by_name["teacher-d2-p50-50"]["status"] == "skipped"
    assert by_name["teacher-d2-p50-50"]["reason"] == ("skipped: pruning d4-p50-33 of teacher already loses 1.30 pts "
                                               "(over the budget)")
    # a student shallower than the kept depth cannot drop to it
    config = search_config(layers=[3], prune=[{"layers": 4}], quantize=["none"])
    calls, build = fake_builder({})
    records = plan_and_build(config, 6, build)
    assert records[1] == {"name": "L3-d4", "stage": "prune", "parent": "L3", "status": "skipped",
                          "reason": "skipped: keeps 4 layers, L3 has 3"}
    with pytest.raises(ConfigError, match=r"prune.0.layers: keeping 6 layers drops none of the teacher's 6 layers"):
        plan_and_build(search_config(prune=[{"layers": 6}]), 6, build)


def test_trim_first_prunes_the_trimmed_model_and_distills_from_the_trimmed_teacher():
    # SST-2: trimming after pruning cost 1.15 pts that no recovery saw; trim_first trims before pruning, so the
    # recovery trains on the trimmed tokens, with the trimmed teacher (same tokens) as its KD teacher
    config = search_config(layers=[0, 4], prune=[{}, {"ffn": 0.67, "heads": 0.5}], trim_vocab={}, trim_first=True)
    calls, build = fake_builder({"teacher-tv-p67-50": 1.4})
    records = plan_and_build(config, 6, build)
    assert [(c[0], c[1], c[2]) for c in calls] == [
        ("teacher-tv", "trim-vocab", "teacher"), ("teacher-tv-onnx", "export", "teacher-tv"),
        ("teacher-tv-dynamic", "quantize", "teacher-tv-onnx"), ("teacher-tv-p67-50", "prune", "teacher-tv"),
        ("L4", "distill", "teacher"), ("L4-tv", "trim-vocab", "L4"), ("L4-tv-onnx", "export", "L4-tv"),
        ("L4-tv-dynamic", "quantize", "L4-tv-onnx"), ("L4-tv-p67-50", "prune", "L4-tv"),
        ("L4-tv-p67-50-onnx", "export", "L4-tv-p67-50"), ("L4-tv-p67-50-dynamic", "quantize", "L4-tv-p67-50-onnx")]
    settings = {c[0]: c[3] for c in calls}
    assert settings["teacher-tv-p67-50"] == {"ffn": 0.67, "heads": 0.5, "distill_from": "teacher-tv"}
    assert settings["L4-tv-p67-50"]["distill_from"] == "teacher-tv"
    assert {r["name"]: r["status"] for r in records}["teacher-tv-p67-50"] == "dropped"
    # a trimmed teacher over the budget ends its branch before anything is pruned
    calls, build = fake_builder({"teacher-tv": 1.2})
    records = plan_and_build(search_config(layers=[0], prune=[{}, {"ffn": 0.5}], trim_vocab={}, trim_first=True),
                             6, build)
    assert [c[0] for c in calls] == ["teacher-tv"]
    assert records[0]["reason"] == "dropped: loses 1.20 pts, over the 1 pt limit; not pruned or exported"
    with pytest.raises(ConfigError, match=r"search.trim_first: there is no vocabulary trim to move before pruning"):
        parse_search({"trim_first": True})


def test_pareto_front_keeps_only_non_dominated_points():
    points = [{"name": "a", "p50_ms": 10.0, "value": 0.90}, {"name": "b", "p50_ms": 5.0, "value": 0.88},
              {"name": "c", "p50_ms": 6.0, "value": 0.87}, {"name": "d", "p50_ms": 3.0, "value": 0.80},
              {"name": "e", "p50_ms": 10.0, "value": 0.89}]
    assert [p["name"] for p in pareto_front(points)] == ["d", "b", "a"]


@pytest.mark.parametrize("data, fragment", [
    ({"layers": [3], "colour": 1}, "search.colour"),
    ({"quantize": ["int4"]}, "search.quantize.0"),
    ({"prune": [{"ffn": 1.5}]}, "search.prune.0.ffn"),
    ({"distill": {"layers": 2}}, "search.distill.layers: set by the search itself"),
    ({"distill": {"temperature": "hot"}}, "search.distill.temperature"),
    ({"quantize_options": {"method": "magic"}}, "search.quantize_options.method"),
    ({"prune": [{}, {}]}, "the same ratio is listed twice"),
    ({"prune": [{"layers": 0}]}, "search.prune.0.layers"),
    ({"trim_vocab": {"keep_chars": "latin"}}, "search.trim_vocab.keep_chars"),
    ({"prune_options": {"drop_layers": [5]}}, "search.prune_options.drop_layers: set by the search itself"),
])
def test_search_config_errors_name_the_path(data, fragment):
    with pytest.raises(ConfigError) as exc:
        parse_search(data)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_cli_errors_are_one_line(cli, tmp_path, tiny_artifacts, tiny_bundles):
    teacher = tiny_artifacts["sst"].path
    assert_one_line_error(cli("optimize", "--teacher", teacher, "--out", tmp_path / "a", "--prune", "half"),
                          "--prune", "expected FFN:HEADS fractions (optionally :LAYERS kept), got 'half'")
    assert_one_line_error(cli("optimize", "--teacher", teacher, "--out", tmp_path / "b", "--layers", "5"),
                          "5 is deeper than the teacher (2 layers)")
    assert_one_line_error(cli("optimize", "--teacher", tiny_bundles["sst"].path, "--out", tmp_path / "c"),
                          "the teacher must be a fine-tuned PyTorch artifact, not a export artifact")
    bad = tmp_path / "space.yaml"
    bad.write_text("layers: [1]\nquantize_options: {mode: static}\n")
    assert_one_line_error(cli("optimize", "--teacher", teacher, "--out", tmp_path / "d", "--config", bad),
                          f"{bad}.quantize_options.mode: set by the search itself")
    bad.write_text("layers: [0]\ntrim_first: true\n")
    assert_one_line_error(cli("optimize", "--teacher", teacher, "--out", tmp_path / "e", "--config", bad),
                          f"{bad}.trim_first: there is no vocabulary trim to move before pruning",
                          "Add trim_vocab (e.g. trim_vocab: {}), or drop trim_first")
    assert not (tmp_path / "e").exists()
    assert not (tmp_path / "b" / "candidates").exists() or not any((tmp_path / "b" / "candidates").iterdir())


def test_tiny_search_end_to_end_and_resume(cli, tmp_path, tiny_artifacts):
    teacher = tiny_artifacts["sst"]
    out = tmp_path / "search"
    args = ["optimize", "--teacher", teacher.path, "--out", out, "--layers", "1", "--prune", "0:0,0.5:0.5",
            "--quantize", "none,dynamic", "--max-accuracy-drop", "100", "--epochs", "1", "--recover-epochs", "1",
            "--json"]
    result = cli(*args)
    assert result.code == 0, result
    summary = json.loads(result.out)
    names = [r["name"] for r in summary["candidates"]]
    assert names == ["L1", "L1-onnx", "L1-dynamic", "L1-p50-50", "L1-p50-50-onnx", "L1-p50-50-dynamic"]
    finals = [r for r in summary["candidates"] if r.get("final")]
    assert [r["name"] for r in finals] == ["L1-onnx", "L1-dynamic", "L1-p50-50-onnx", "L1-p50-50-dynamic"]
    assert all(r["p50_ms"] > 0 and r["within_budget"] for r in finals)
    fastest = min(finals, key=lambda r: r["p50_ms"])
    assert summary["best"] == fastest["name"] and fastest["verdict"] == "chosen: fastest within the budget"
    assert fastest["pareto"] and fastest["name"] in summary["pareto_front"]
    assert (out / "best").resolve() == (out / "candidates" / fastest["name"]).resolve()
    # the pruned student really is smaller, and its quantized bundle smaller still
    sizes = {r["name"]: r["size_bytes"] for r in summary["candidates"]}
    assert sizes["L1-p50-50-onnx"] < sizes["L1-onnx"] and sizes["L1-p50-50-dynamic"] < sizes["L1-p50-50-onnx"]
    md = (out / "search.md").read_text()
    assert f"**Best: {fastest['name']}**" in md
    # an existing search needs --resume; with it, every candidate is kept
    assert_one_line_error(cli(*args), "search directory already exists", "--resume")
    again = json.loads(cli(*args, "--resume").out)
    assert all(r["kept_from_earlier_run"] for r in again["candidates"])


def test_export_candidates_are_scored_on_the_whole_dev_set():
    """The export stage checks its metric on a 1000-example subset by default; a search candidate compared with
    the teacher's full-dev metric must not be (CoNLL-2003: a 0.46-pt "drop" that was the subset, not ONNX)."""
    from bertedge.search import _make_config

    assert _make_config("export", {}, search_config(), None).metric_samples is None
    custom = search_config(export_options={"metric_samples": 200, "atol": 1e-3})
    assert _make_config("export", {}, custom, None).metric_samples == 200


def test_prune_choice_tag():
    assert PruneChoice(ffn=0.5, heads=0.33).tag == "p50-33"


def test_shipped_search_config_validates():
    from pathlib import Path

    from bertedge.config import read_yaml

    path = Path(__file__).resolve().parent.parent / "recipes" / "search" / "sst2.yaml"
    config = parse_search(read_yaml(path, "search config", "recipes/search/sst2.yaml"), where=str(path))
    assert config.layers == [3, 2] and config.max_size_mb == 8 and len(config.prune) == 3


def tiny_layer_search(cli, tmp_path, teacher, extra: str = "", trim: str = "{}") -> tuple:
    """A tiny search of the teacher's own depth and its top layer dropped, vocabulary trimmed: (out, names)."""
    space = tmp_path / "space.yaml"
    space.write_text(f"layers: [0]\nprune: [{{}}, {{layers: 1}}]\nquantize: [dynamic]\ntrim_vocab: {trim}\n" + extra +
                     "max_accuracy_drop: 100\nprune_options: {recover_epochs: 1, importance_samples: 16}\n"
                     "runs: 3\nwarmup: 0\n")
    out = tmp_path / "search"
    result = cli("optimize", "--teacher", teacher.path, "--out", out, "--config", space, "--json")
    assert result.code == 0, result
    return out, [r["name"] for r in json.loads(result.out)["candidates"]]


def test_tiny_search_drops_layers_and_trims_the_vocabulary(cli, tmp_path, tiny_artifacts):
    """The teacher's own depth, a cheap student by dropping its top layer, and a trim-vocab step before export."""
    teacher = tiny_artifacts["sst"]
    out, names = tiny_layer_search(cli, tmp_path, teacher)
    assert names == ["teacher-tv", "teacher-tv-onnx", "teacher-tv-dynamic",
                     "teacher-d1", "teacher-d1-tv", "teacher-d1-tv-onnx", "teacher-d1-tv-dynamic"]
    config = json.loads((out / "candidates" / "teacher-d1" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    vocab = json.loads((out / "candidates" / "teacher-d1-tv" / "config.json").read_text())["vocab_size"]
    assert vocab < json.loads((teacher.path / "config.json").read_text())["vocab_size"]
    assert "vocabulary trimmed" in (out / "search.md").read_text()


def test_tiny_search_with_shared_rows_counts_the_rows_the_bundle_stores(cli, tmp_path, tiny_artifacts):
    """trim_vocab {dropped: nearest} with trim_first: the tokenizer is kept, the search records the distinct rows
    as the trimmed vocabulary its size bound uses, and the student pruned from the trimmed teacher keeps the
    shared rows frozen, so its bundle stores them once too."""
    import torch
    from safetensors.torch import load_file

    teacher = tiny_artifacts["sst"]
    out, names = tiny_layer_search(cli, tmp_path, teacher, "trim_first: true\n",
                                   trim="{dropped: nearest, keep_chars: none}")
    assert names == ["teacher-tv", "teacher-tv-onnx", "teacher-tv-dynamic",
                     "teacher-tv-d1", "teacher-tv-d1-onnx", "teacher-tv-d1-dynamic"]
    full = json.loads((teacher.path / "config.json").read_text())["vocab_size"]
    assert json.loads((out / "candidates" / "teacher-tv" / "config.json").read_text())["vocab_size"] == full
    rows = json.loads((out / "candidates" / "teacher-tv" / "bertedge.json").read_text())["vocab"]["embedding_rows"]
    record = next(r for r in json.loads((out / "search.json").read_text())["candidates"] if r["name"] == "teacher-tv")
    assert record["vocab_size"] == rows < full

    def words(name):
        weights = load_file(str(out / "candidates" / name / "model.safetensors"))
        return next(v for k, v in weights.items() if k.endswith("word_embeddings.weight"))

    assert torch.equal(words("teacher-tv-d1"), words("teacher-tv"))  # recovery left the shared rows as trimmed
    for bundle in ("teacher-tv-onnx", "teacher-tv-d1-onnx"):
        onnx_record = json.loads((out / "candidates" / bundle / "bertedge.json").read_text())["onnx"]
        assert onnx_record["shared_embedding_rows"]["distinct_rows"] == rows, bundle


def test_tiny_search_with_trim_first_recovers_on_the_trimmed_tokens(cli, tmp_path, tiny_artifacts):
    """trim_first: the dropped-layer student grows from the trimmed teacher and distills from it."""
    teacher = tiny_artifacts["sst"]
    out, names = tiny_layer_search(cli, tmp_path, teacher, "trim_first: true\n")
    assert names == ["teacher-tv", "teacher-tv-onnx", "teacher-tv-dynamic",
                     "teacher-tv-d1", "teacher-tv-d1-onnx", "teacher-tv-d1-dynamic"]
    pruned = json.loads((out / "candidates" / "teacher-tv-d1" / "bertedge.json").read_text())
    assert pruned["config"]["distill_from"] == str(out / "candidates" / "teacher-tv")
    assert pruned["parent"]["path"] == str(out / "candidates" / "teacher-tv")
    vocab = json.loads((out / "candidates" / "teacher-tv-d1" / "config.json").read_text())["vocab_size"]
    assert vocab == json.loads((out / "candidates" / "teacher-tv" / "config.json").read_text())["vocab_size"]
    assert vocab < json.loads((teacher.path / "config.json").read_text())["vocab_size"]


MINILM = {"hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512,
          "type_vocab_size": 2, "vocab_size": 30522}


def test_weight_count_matches_a_bert_of_that_shape():
    from transformers import BertConfig, BertForSequenceClassification

    from bertedge.search import weight_count

    model = BertForSequenceClassification(BertConfig(**{**MINILM, "num_hidden_layers": 2, "vocab_size": 1000}))
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "classifier" not in n)
    assert weight_count(MINILM, 2, PruneChoice(), 1000) == matrices
    # 4 of 12 heads and half the FFN gone, top layer dropped: what is left of one layer's matrices
    pruned = weight_count(MINILM, 2, PruneChoice(ffn=0.5, heads=0.33, layers=1), 1000)
    assert pruned == 4 * 384 * 8 * 32 + 2 * 384 * 768 + (1000 + 514) * 384 + 384 * 384


def test_size_budget_skips_what_cannot_fit_once_the_trimmed_vocabulary_is_known():
    config = search_config(layers=[0], max_size_mb=8, trim_vocab={},
                           prune=[{}, {"ffn": 0.5, "heads": 0.33}, {"ffn": 0.5, "heads": 0.33, "layers": 3},
                                  {"ffn": 0.67, "heads": 0.5, "layers": 4}])
    calls = []

    def build(name, stage, parent, settings):
        calls.append(name)
        record = {"name": name, "stage": stage, "parent": parent, "status": "built", "drop_pts": 0.0}
        if stage == "trim-vocab":
            record["vocab_size"] = 11_800
        return record

    records = plan_and_build(config, 6, build, shape=MINILM)
    by_name = {r["name"]: r for r in records}
    # the unpruned teacher is built first (it tells the trimmed vocabulary size); then 6 layers at p50-33 are
    # 10.8 MB of weights and never trained, while the 3- and 4-layer choices may fit and are built
    assert by_name["teacher-p50-33"]["status"] == "skipped"
    assert by_name["teacher-p50-33"]["reason"] == ("skipped: its weights alone take 10.8 MB (int8, vocabulary 11,800), "
                                                   "over the 8 MB budget")
    assert "teacher-d3-p50-33" in calls and "teacher-d4-p67-50" in calls and "teacher-p50-33" not in calls
    # with no size budget, or a pruned teacher whose config overstates it, nothing is skipped for size
    assert all(r["status"] == "built" for r in plan_and_build(search_config(layers=[0], prune=[{"ffn": 0.5}]), 6,
                                                              build, shape=MINILM))
    pruned_teacher = {**MINILM, "pruned_heads": {"0": [1]}}
    assert all(r["status"] == "built" for r in plan_and_build(config, 6, build, shape=pruned_teacher))
