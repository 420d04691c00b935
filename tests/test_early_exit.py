"""Early exit on a tiny 3-layer BERT: training, calibration, segment export, the runtime's exits, refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, build_tiny_bert, finetune_tiny, write_classification_dir

from bertedge.early_exit import calibrate, exit_layers, normalised_entropy, probabilities
from bertedge.runtime import Bundle

LAYERS = 3
TEXTS = ["good movie", "the film was bad", "a very nice story", "awful plot", "it is the film", "worst actor",
         "love this", "the the the", "really quite fine but sad", "", "best best best movie ever", "plot"]


@pytest.fixture(scope="module")
def ee(tmp_path_factory):
    """A fine-tuned 3-layer classifier, its exit-head artifact, and both exported."""
    from bertedge.stages.early_exit import EarlyExitConfig, early_exit
    from bertedge.stages.export import ExportConfig, export

    root = tmp_path_factory.mktemp("early-exit")
    model = build_tiny_bert(root / "tiny3", layers=LAYERS)
    data = write_classification_dir(root / "sst", n_train=192, n_dev=48)
    plain = finetune_tiny(model, data, "text-classification", root / "ft", epochs=10)
    artifact = early_exit(plain, EarlyExitConfig(epochs=3), root / "ee")
    return {"root": root, "data": data, "plain": plain, "artifact": artifact,
            "plain_bundle": export(plain, ExportConfig(), root / "plain-bundle"),
            "bundle": export(artifact, ExportConfig(), root / "ee-bundle")}


def _logits(results):
    return np.array([list(r["scores"].values()) for r in results])


def test_never_exit_matches_plain_export(ee):
    plain = Bundle(ee["plain_bundle"].path).predict(TEXTS, logits=True)
    never = Bundle(ee["bundle"].path, rule="entropy", threshold=0.0).predict(TEXTS, logits=True)
    full = Bundle(ee["bundle"].path, full_depth=True).predict(TEXTS, logits=True)
    for a, b, c in zip(plain, never, full):
        np.testing.assert_allclose(b["outputs"][0]["logits"], a["outputs"][0]["logits"], atol=1e-4)
        np.testing.assert_allclose(c["outputs"][0]["logits"], a["outputs"][0]["logits"], atol=1e-4)
        assert b["label"] == a["label"] and b["exit_layer"] == LAYERS and c["exit_layer"] == LAYERS


def test_always_exit_runs_only_the_first_segment(ee):
    bundle = Bundle(ee["bundle"].path, rule="max-prob", threshold=0.0)
    results = bundle.predict(TEXTS, batch_size=4)
    assert [r["exit_layer"] for r in results] == [1] * len(TEXTS)
    assert bundle.segment_calls == [3, 0, 0]  # 12 texts in batches of 4: segment 0 three times, nothing else
    per_text = Bundle(ee["bundle"].path, rule="max-prob", threshold=0.0, per_sequence=True)
    per_text.predict(TEXTS)
    assert per_text.segment_calls == [len(TEXTS), 0, 0]


def test_mean_pooled_heads_read_the_mean_over_real_tokens(ee):
    """pooling=mean: the exported first segment's exit logits equal head 1 applied by hand to the mean of
    layer 1's hidden states over the real tokens (PyTorch, no bertedge segment code), padding included."""
    import torch

    from bertedge.artifacts import load_artifact
    from bertedge.modeling import load_torch_artifact
    from bertedge.stages.early_exit import EarlyExitConfig, early_exit, load_heads
    from bertedge.stages.export import ExportConfig, export

    root = ee["root"]
    artifact = early_exit(ee["plain"], EarlyExitConfig(epochs=1, pooling="mean"), root / "ee-mean")
    assert artifact.manifest["early_exit"]["exit_heads"]["pooling"] == "mean"
    bundle = Bundle(export(artifact, ExportConfig(), root / "ee-mean-bundle").path, full_depth=True)
    batch = bundle.encoder.collate(bundle.task.eval_features(
        [bundle.normalize(t) for t in TEXTS], bundle.encoder, bundle.settings))
    assert (batch["attention_mask"] == 0).any()  # some rows are padded
    exported = bundle.segments[0](batch)["exit_logits"]
    model, _ = load_torch_artifact(load_artifact(root / "ee-mean"))
    heads = load_heads(load_artifact(root / "ee-mean"), model)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_hidden_states=True)
        mask = torch.from_numpy(batch["attention_mask"]).float()[:, :, None]
        mean = (out.hidden_states[1] * mask).sum(1) / mask.sum(1)
        expected = heads[0](mean).numpy()
    np.testing.assert_allclose(exported, expected, atol=1e-4)
    cls = heads[0](out.hidden_states[1][:, 0]).detach().numpy()
    assert np.abs(cls - expected).max() > 1e-3  # the [CLS] state would give other logits


def _mixed_threshold(ee) -> float:
    """An entropy threshold between the layer-1 entropies of the texts, so some exit early and some do not."""
    bundle = Bundle(ee["bundle"].path, full_depth=True)
    batch = bundle.encoder.collate(bundle.task.eval_features(
        [bundle.normalize(t) for t in TEXTS], bundle.encoder, bundle.settings))
    first = bundle.segments[0](batch)["exit_logits"]
    return float(np.median(normalised_entropy(probabilities(first))))


def test_batch_predictions_equal_batch_one(ee):
    threshold = _mixed_threshold(ee)
    alone = Bundle(ee["bundle"].path, threshold=threshold, per_sequence=True).predict(TEXTS)
    batched_bundle = Bundle(ee["bundle"].path, threshold=threshold, per_sequence=False)
    batched = batched_bundle.predict(TEXTS, batch_size=5)
    layers = [r["exit_layer"] for r in alone]
    assert 1 in layers and max(layers) > 1, layers  # the threshold really splits the inputs
    assert [r["label"] for r in batched] == [r["label"] for r in alone]
    assert [r["exit_layer"] for r in batched] == layers
    np.testing.assert_allclose(_logits(batched), _logits(alone), atol=1e-5)
    # decided members left the batch: later segments ran on fewer rows, never more calls than batches
    assert batched_bundle.segment_calls[0] == 3 and batched_bundle.segment_calls[1] <= 3


def test_bundle_runs_without_torch(ee):
    script = f"""
import json, sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
sys.modules["transformers"] = None
from bertedge.runtime import Bundle
bundle = Bundle({str(ee["bundle"].path)!r})
out = bundle.predict(["good movie", "bad", ""], batch_size=2)
full = Bundle({str(ee["bundle"].path)!r}, full_depth=True).predict(["good movie"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum")
               and sys.modules[m] is not None)
print(json.dumps({{"heavy": heavy, "exits": [r["exit_layer"] for r in out], "full": full[0]["exit_layer"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["heavy"] == [] and len(data["exits"]) == 3 and data["full"] == LAYERS


def test_token_classification_is_refused(cli, tiny_model_dir, tiny_data, tmp_path):
    ner = finetune_tiny(tiny_model_dir, tiny_data["conll"], "token-classification", tmp_path / "ner", epochs=1)
    result = cli("early-exit", ner.path, "--out", tmp_path / "out")
    line = assert_one_line_error(result)
    assert line == ("error: bertedge early-exit: early exit needs a text-classification model (single sentences or "
                    "pairs); this artifact is token-classification. Pass a text-classification artifact, or drop "
                    "the early-exit step for this task")
    assert not (tmp_path / "out").exists()


def test_threshold_out_of_range_is_one_line(cli, ee, tmp_path):
    result = cli("early-exit", ee["plain"].path, "--out", tmp_path / "out", "--threshold", "1.5")
    assert_one_line_error(result, "--threshold", "out of range for the entropy rule (0 to 1)")
    result = cli("early-exit", ee["plain"].path, "--out", tmp_path / "out", "--rule", "patience", "--threshold", "0")
    assert_one_line_error(result, "--threshold", "patience rule")
    with pytest.raises(Exception, match="out of range"):
        Bundle(ee["bundle"].path, threshold=-0.1)
    result = cli("early-exit", ee["plain"].path, "--out", tmp_path / "out", "--mode", "both")
    line = assert_one_line_error(result, "mode")
    assert "'frozen' or 'joint'" in line, line
    result = cli("early-exit", ee["plain"].path, "--out", tmp_path / "out", "--mode", "joint", "--encoder-lr", "0")
    assert_one_line_error(result, "encoder_lr", "greater than 0")
    assert not (tmp_path / "out").exists()


def test_recipe_refuses_early_exit_for_qa():
    from bertedge.errors import ConfigError
    from bertedge.recipe import parse_recipe

    recipe = parse_recipe({"task": "text-classification", "data": "sst2", "stages": [
        {"stage": "finetune"}, {"stage": "early-exit", "rule": "patience", "max_accuracy_drop": 1.0},
        {"stage": "export"}, {"stage": "quantize"}]})
    assert recipe.stages[1].rule == "patience" and recipe.stages[1].data.data == "sst2"
    with pytest.raises(ConfigError, match="stages.1.early-exit.*out of range"):
        parse_recipe({"task": "text-classification", "data": "sst2",
                      "stages": [{"stage": "finetune"}, {"stage": "early-exit", "threshold": 2}]})

    with pytest.raises(ConfigError, match="stages.1.early-exit: early exit needs a text-classification model"):
        parse_recipe({"task": "question-answering", "data": "squad",
                      "stages": [{"stage": "finetune"}, {"stage": "early-exit"}]})


def test_calibration_picks_the_expected_threshold():
    # 4 examples, 3 layers, 2 labels, gold label 0. Layer 1: ex 0 very sure and right, ex 1 fairly sure and wrong,
    # ex 2-3 unsure and wrong. Layer 2: sure and right everywhere (surer than ex 1 at layer 1). Last layer: right.
    layer1 = [[5.0, -5.0], [-2.0, 2.0], [0.0, 0.1], [0.0, 0.1]]
    layer2 = [[3.0, -3.0]] * 4
    final = [[1.0, 0.0]] * 4
    logits = np.array([layer1, layer2, final], dtype=np.float64).transpose(1, 0, 2)
    gold = np.zeros(4, dtype=np.int64)
    h_wrong = float(normalised_entropy(probabilities(np.array([-2.0, 2.0]))))
    h_layer2 = float(normalised_entropy(probabilities(np.array([3.0, -3.0]))))
    grid_above = lambda h: np.floor(h * 1000) / 1000 + 0.001  # noqa: E731 - smallest grid value > h
    # No drop allowed: ex 1 must not exit at layer 1 (threshold <= h_wrong); layer 2 exits need threshold > h_layer2.
    # Every threshold in between costs 1.75 layers; the most conservative one wins the tie.
    strict = calibrate("entropy", logits, gold, 0.0)
    assert strict["threshold"] == pytest.approx(grid_above(h_layer2))
    assert strict["accuracy"] == 1.0 and strict["exit_histogram"] == {"1": 1, "2": 3, "3": 0}
    assert strict["mean_exit_layer"] == pytest.approx(1.75)
    # 25 points allowed: ex 1 may exit (wrong) at layer 1, the unsure ones may not (that would cost 75 points).
    loose = calibrate("entropy", logits, gold, 25.0)
    assert loose["threshold"] == pytest.approx(grid_above(h_wrong))
    assert loose["accuracy"] == 0.75 and loose["exit_histogram"] == {"1": 2, "2": 2, "3": 0}
    assert loose["accuracy_full_depth"] == 1.0 and loose["drop_pts"] == pytest.approx(25.0)
    # patience 1: layer 1 and 2 agree only for ex 0; the rest answer at the last layer.
    assert exit_layers("patience", 1, logits).tolist() == [2, 3, 3, 3]
    assert calibrate("patience", logits, gold, 0.0)["threshold"] == 1.0
    # max-prob: 0 always exits at layer 1, 1 never exits early
    assert exit_layers("max-prob", 0.0, logits).tolist() == [1, 1, 1, 1]
    assert exit_layers("max-prob", 1.0, logits).tolist() == [3, 3, 3, 3]
    assert exit_layers("entropy", 0.0, logits).tolist() == [3, 3, 3, 3]


def test_manifests_document_the_protocol(ee):
    record = ee["artifact"].manifest["early_exit"]
    cal = record["calibration"]
    for key in ("threshold", "accuracy", "accuracy_full_depth", "mean_exit_layer", "exit_histogram", "rule",
                "max_accuracy_drop", "curve"):
        assert key in cal, key
    assert cal["max_accuracy_drop"] == 0.5 and cal["calibrated"] is True
    assert cal["accuracy"] >= cal["accuracy_full_depth"] - 0.005
    assert sum(cal["exit_histogram"].values()) == cal["n"]
    training = record["training"]
    assert (training["mode"], training["temperature"], training["kd_weight"], training["ce_weight"]) == \
        ("frozen", 2.0, 1.0, 0.0)
    assert ee["artifact"].manifest["config"]["temperature"] == 2.0
    bundle = ee["bundle"].manifest
    protocol = bundle["early_exit"]
    assert [s["file"] for s in protocol["segments"]] == ["segment_0.onnx", "segment_1.onnx", "segment_2.onnx"]
    assert protocol["segments"][0]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert protocol["segments"][1]["inputs"] == ["hidden_state", "attention_mask"]
    assert protocol["segments"][1]["outputs"] == ["next_hidden_state", "exit_logits"]
    assert protocol["segments"][2]["outputs"] == ["logits"]
    assert protocol["rule"] == "entropy" and protocol["threshold"] == cal["threshold"]
    assert protocol["rule_definition"] and protocol["steps"]
    assert all(s["ok"] for s in bundle["validation"]["segments"])
    assert bundle["validation"]["last_segment_vs_plain_model_max_abs_diff"] <= 1e-4
    assert sum(protocol["dev"]["exit_histogram"].values()) == protocol["dev"]["n"]
    for segment in bundle["onnx"]["segments"]:
        assert segment["fused_node_counts"].get("Attention") == 1


def test_joint_mode_trains_the_encoder_with_the_exits(ee, tmp_path):
    from safetensors.numpy import load_file

    from bertedge.stages.early_exit import EarlyExitConfig, early_exit
    from bertedge.stages.export import ExportConfig, export

    joint = early_exit(ee["plain"], EarlyExitConfig(mode="joint", epochs=1, joint_epochs=2, encoder_lr=1e-3),
                       tmp_path / "joint")
    parent, frozen, trained = (load_file(str(a.path / "model.safetensors"))
                               for a in (ee["plain"], ee["artifact"], joint))
    key = next(k for k in parent if "layer.0." in k and "query.weight" in k)
    assert np.array_equal(frozen[key], parent[key])  # frozen mode leaves the encoder as it was
    assert not np.allclose(trained[key], parent[key])  # joint mode moved it
    training = joint.manifest["early_exit"]["training"]
    assert training["mode"] == "joint" and joint.manifest["config"]["mode"] == "joint"
    assert (training["joint"]["encoder_lr"], training["joint"]["epochs"]) == (1e-3, 2.0)
    assert [h["epoch"] for h in training["joint"]["history"]] == [1.0, 2.0]
    record = joint.manifest["early_exit"]
    assert record["exit_heads"]["last_layer"].endswith("trained jointly with the exits")
    assert record["dev_accuracy_parent_full_depth"] == pytest.approx(
        ee["artifact"].manifest["early_exit"]["calibration"]["accuracy_full_depth"])
    assert record["calibration"]["accuracy_full_depth"] == pytest.approx(
        joint.manifest["metrics"]["dev_full_depth"]["accuracy"])
    # the bundle's last segment is the jointly trained model, and "never exit" is its plain output
    bundle = export(joint, ExportConfig(), tmp_path / "bundle")
    assert bundle.manifest["validation"]["last_segment_vs_plain_model_max_abs_diff"] <= 1e-4
    never = Bundle(bundle.path, rule="entropy", threshold=0.0).predict(TEXTS, logits=True)
    old = Bundle(ee["bundle"].path, full_depth=True).predict(TEXTS, logits=True)
    assert all(r["exit_layer"] == LAYERS for r in never)
    assert not np.allclose([r["outputs"][0]["logits"] for r in never], [r["outputs"][0]["logits"] for r in old],
                           atol=1e-3)


def test_eval_and_predict_full_depth(cli, ee, tmp_path):
    result = cli("eval", ee["bundle"].path, "--json")
    assert result.code == 0, result
    early = json.loads(result.out)
    result = cli("eval", ee["bundle"].path, "--json", "--full-depth")
    full = json.loads(result.out)
    assert full["early_exit"]["full_depth"] is True and full["early_exit"]["mean_exit_layer"] == LAYERS
    assert early["early_exit"]["exit_histogram"] == ee["bundle"].manifest["early_exit"]["dev"]["exit_histogram"]
    assert early["metrics"]["accuracy"] == pytest.approx(ee["bundle"].manifest["early_exit"]["dev"]["accuracy"])
    result = cli("predict", ee["bundle"].path, "good movie", "--full-depth")
    assert result.code == 0, result
    assert json.loads(result.out.splitlines()[0])["exit_layer"] == LAYERS


def test_dynamic_int8_quantizes_every_segment(ee):
    from bertedge.stages.quantize import QuantizeConfig, quantize

    out = quantize(ee["bundle"], QuantizeConfig(mode="dynamic"), ee["root"] / "int8")
    manifest = out.manifest
    assert manifest["quantization"]["per_segment"] and manifest["quantization"]["op_counts"].get("QAttention") == LAYERS
    assert manifest["early_exit"]["calibration"]["on"].startswith("the int8 segments")
    assert manifest["quantization"]["batch_invariant"] is False
    bundle = Bundle(out.path)
    assert bundle.per_sequence  # dynamic int8: one sequence at a time
    results = bundle.predict(TEXTS)
    assert all(1 <= r["exit_layer"] <= LAYERS for r in results)


def test_auto_int8_tries_the_dynamic_schemes_even_with_calibration_data(ee, tiny_data):
    """A search hands auto the train split as calibration data; static segments would fail, so auto on an
    early-exit bundle compares the three dynamic schemes and never a static one."""
    from bertedge.stages.quantize import QuantizeConfig, quantize

    out = quantize(ee["bundle"], QuantizeConfig(mode="auto", calibration=str(tiny_data["sst"]),
                                                max_accuracy_drop=100.0), ee["root"] / "auto-cal")
    tried = [c["scheme"] for c in out.manifest["quantization"]["candidates"]]
    assert [(s["mode"], s["per_channel"], s["reduce_range"]) for s in tried] == \
        [("dynamic", False, False), ("dynamic", True, False), ("dynamic", True, True)]
    assert Bundle(out.path).predict(TEXTS[:1])[0]["exit_layer"] >= 1


def test_pair_classification(tmp_path, tiny_model_dir, tiny_data):
    from bertedge.stages.early_exit import EarlyExitConfig, early_exit
    from bertedge.stages.export import ExportConfig, export

    plain = finetune_tiny(tiny_model_dir, tiny_data["pair"], "text-classification", tmp_path / "pair", epochs=2)
    artifact = early_exit(plain, EarlyExitConfig(epochs=1, rule="patience"), tmp_path / "ee")
    bundle = Bundle(export(artifact, ExportConfig(), tmp_path / "bundle").path)
    assert bundle.input_kind == "sentence-pair" and bundle.rule == "patience"
    result = bundle.predict([{"text": "good movie", "text_pair": "good movie"}])[0]
    assert 2 <= result["exit_layer"] <= 2  # 2 layers: patience can fire at layer 2 at the earliest = the last


def test_bench_times_real_dev_inputs_in_worker_processes(cli, ee, tmp_path):
    result = cli("bench", ee["bundle"].path, "--runs", "2", "--json", "--out", tmp_path / "bench")
    assert result.code == 0, result
    report = json.loads(result.out)
    modes = {t["mode"]: t for t in report["targets"]}
    assert set(modes) == {"early-exit", "full-depth"}
    for t in modes.values():
        assert t["n"] == 48 and t["calls"] == 96 and t["p50_ms"] <= t["p90_ms"]
        assert sum(t["exit_histogram"].values()) == 48
    assert modes["full-depth"]["exit_histogram"] == {"1": 0, "2": 0, "3": 48}
    assert modes["early-exit"]["exit_histogram"] == ee["bundle"].manifest["early_exit"]["dev"]["exit_histogram"]
    assert str(ee["bundle"].path) in report["speedups"] and (tmp_path / "bench" / "bench.md").is_file()
    mixed = cli("bench", ee["bundle"].path, ee["plain_bundle"].path)
    assert_one_line_error(mixed, "early-exit bundles are timed on real dev inputs")


def test_cli_export_and_quantize(cli, ee, tmp_path):
    result = cli("export", ee["artifact"].path, "--out", tmp_path / "bundle")
    assert result.code == 0, result
    assert "3 segment graphs" in result.out and "mean exit layer" in result.out
    result = cli("quantize", tmp_path / "bundle", "--out", tmp_path / "int8", "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    assert summary["quantized_nodes"].get("QAttention") == LAYERS and summary["size_ratio"] > 1
    result = cli("quantize", tmp_path / "bundle", "--out", tmp_path / "fp16", "--mode", "fp16")
    assert_one_line_error(result, "--mode", "not available for early-exit bundles")
    result = cli("export", ee["artifact"].path, "--out", tmp_path / "ort", "--ort-format")
    assert_one_line_error(result, "--ort-format")
