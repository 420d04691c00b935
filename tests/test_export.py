"""export: bundle structure, fusions, dynamic axes, validation (atol and metric), ORT format, bad input."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error

from bertedge.artifacts import load_artifact

TINY_LAYERS = 2


def op_counts(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("name", ["sst", "pair", "conll", "squad"])
def test_bundle_files_and_manifest(tiny_bundles, tiny_artifacts, name):
    bundle, parent = tiny_bundles[name], tiny_artifacts[name]
    files = {p.name for p in bundle.path.iterdir()}
    assert {"model.onnx", "tokenizer.json", "vocab.txt", "special_tokens_map.json", "bertedge.json"} <= files
    assert "model.safetensors" not in files and "model.ort" not in files
    m = bundle.manifest
    assert m["stage"] == "export" and m["task"] == parent.task and bundle.is_bundle
    assert m["labels"] == (parent.labels or None)
    assert m["settings"] == parent.manifest["settings"]
    assert m["data"] == parent.manifest["data"]  # so `bertedge eval BUNDLE` needs no --data
    assert m["parent"] == {"path": str(parent.path.absolute()), "stage": "finetune",
                           "sha256": parent.manifest["payload_sha256"]}
    onnx_info = m["onnx"]
    assert onnx_info["opset"] == 17 and onnx_info["optimized"] is True
    assert m["config"]["exporter"] == "bertedge"
    assert onnx_info["exporter"]["name"] == "bertedge" and onnx_info["exporter"]["function"] == "torch.onnx.export"
    assert onnx_info["exporter"]["torch_exporter"] == "torchscript (dynamo=False)"
    inputs = {i["name"]: i for i in onnx_info["inputs"]}
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    for spec in inputs.values():
        assert spec["dtype"] == "int64"
        assert spec["shape"] == ["batch_size", "sequence_length"]
        assert spec["dynamic_axes"] == {"0": "batch_size", "1": "sequence_length"}
    outputs = {o["name"]: o for o in onnx_info["outputs"]}
    expected = {"sst": ["logits"], "pair": ["logits"], "conll": ["logits"], "squad": ["start_logits", "end_logits"]}
    assert sorted(outputs) == sorted(expected[name])
    if name == "conll":
        assert outputs["logits"]["shape"] == ["batch_size", "sequence_length", len(parent.labels)]
    if name in ("sst", "pair"):
        assert outputs["logits"]["shape"] == ["batch_size", 2]
    assert m["interface"]["input_kind"] == {"sst": "single-sentence", "pair": "sentence-pair", "conll": "words",
                                            "squad": "question-context"}[name]
    assert m["interface"]["max_length"] == parent.manifest["settings"]["max_length"]


@pytest.mark.parametrize("name", ["sst", "conll", "squad"])
def test_fused_graph_has_one_attention_per_layer(tiny_bundles, name):
    bundle = tiny_bundles[name]
    fused = bundle.manifest["onnx"]["fused_node_counts"]
    assert fused == {"Attention": TINY_LAYERS, "SkipLayerNormalization": 2 * TINY_LAYERS,
                     "EmbedLayerNormalization": 1, "BiasGelu": TINY_LAYERS}
    ops = op_counts(bundle.file("model.onnx"))
    assert ops["Attention"] == TINY_LAYERS and ops["Softmax"] == 0 and ops["Erf"] == 0
    assert ops["SkipLayerNormalization"] == 2 * TINY_LAYERS and ops["EmbedLayerNormalization"] == 1


@pytest.mark.parametrize("name", ["sst", "pair", "conll", "squad"])
def test_validation_recorded_and_metric_matches_torch(tiny_bundles, tiny_artifacts, name):
    m = tiny_bundles[name].manifest
    v = m["validation"]
    assert v["passed"] is True and v["atol"] == 1e-4
    assert v["examples"] == tiny_artifacts[name].manifest["data"]["dev_examples"]
    for report in v["outputs"].values():
        assert report["ok"] and report["max_abs_diff"] < 1e-5
    assert v["agreement"] == 1.0
    assert v["metric"]["onnx"] == pytest.approx(v["metric"]["torch"], abs=1e-9)
    # The PyTorch number the export measured is the one finetune recorded for the same dev split.
    primary = tiny_artifacts[name].manifest["primary_metric"]
    assert v["metric"]["torch"] == pytest.approx(tiny_artifacts[name].metrics["dev"][primary], abs=1e-9)
    assert m["metrics"]["dev"][primary] == v["metric"]["onnx"]


def test_dynamic_batch_and_sequence_axes(tiny_bundles):
    from bertedge.runtime import Bundle

    bundle = Bundle(tiny_bundles["squad"].path)
    for batch, length in ((1, 5), (3, 17), (2, 96)):
        ids = np.full((batch, length), 7, dtype=np.int64)
        ids[:, 0], ids[:, -1] = 2, 3
        out = bundle.forward({"input_ids": ids, "attention_mask": np.ones_like(ids),
                              "token_type_ids": np.zeros_like(ids)})
        assert out["start_logits"].shape == (batch, length) and out["end_logits"].shape == (batch, length)


def test_eval_accepts_a_bundle_without_data(cli, tiny_bundles, tiny_artifacts):
    for name in ("pair", "conll"):
        result = cli("eval", tiny_bundles[name].path, "--json")
        assert result.code == 0, result
        data = json.loads(result.out)
        assert data["backend"] == "onnxruntime"
        primary = tiny_artifacts[name].manifest["primary_metric"]
        assert data["metrics"][primary] == pytest.approx(tiny_artifacts[name].metrics["dev"][primary], abs=1e-9)


def test_no_optimize_and_ort_format(cli, tiny_artifacts, tiny_bundles, tmp_path):
    from bertedge.runtime import Bundle

    out = tmp_path / "plain"
    result = cli("export", tiny_artifacts["sst"].path, "--out", out, "--no-optimize", "--ort-format", "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    assert summary["fused_node_counts"] == {}
    ops = op_counts(out / "model.onnx")
    assert ops["Attention"] == 0 and ops["Softmax"] == TINY_LAYERS and ops["MatMul"] > 0
    manifest = load_artifact(out).manifest
    assert manifest["onnx"]["ort_format"]["file"] == "model.ort"
    assert (out / "model.ort").stat().st_size > 0
    config_lines = (out / "required_operators.config").read_text().splitlines()
    assert any(line.startswith("ai.onnx;") and "MatMul" in line for line in config_lines)
    assert all(r["max_abs_diff"] <= 1e-4 for r in manifest["validation"]["ort_format"]["outputs"].values())
    # size and operators are reported: manifest, and the --json summary
    record = manifest["onnx"]["ort_format"]
    assert record["size_bytes"] == (out / "model.ort").stat().st_size
    assert any("MatMul" in ops and domain.startswith("ai.onnx") for domain, ops in record["operators"].items())
    assert record["operator_count"] == sum(len(ops) for ops in record["operators"].values()) > 0
    assert "Python onnxruntime" in record["tested"] and "not run on a mobile device" in record["tested"]
    assert summary["ort_format"]["size_bytes"] == record["size_bytes"]

    texts = ["good movie", "the plot was awful and the actor was bad", "", "a " * 80]
    via_onnx = Bundle(out).predict(texts)
    via_ort = Bundle(out, model_file="model.ort").predict(texts)
    via_fused = Bundle(tiny_bundles["sst"].path).predict(texts)
    assert [p["label"] for p in via_ort] == [p["label"] for p in via_onnx] == [p["label"] for p in via_fused]
    for a, b, c in zip(via_onnx, via_ort, via_fused):
        assert a["score"] == pytest.approx(b["score"], abs=1e-6) and a["score"] == pytest.approx(c["score"], abs=1e-6)
        assert a["truncated"] == b["truncated"]
    # The predict command runs the ORT-format file too.
    result = cli("predict", out, "good movie", "--ort-format")
    assert result.code == 0, result
    assert json.loads(result.out)["label"] == via_ort[0]["label"]


def _shifted_torch_forward(shift):
    import bertedge.train as train

    original = train.torch_forward

    def patched(model, device=None):
        forward = original(model, device)
        return lambda batch: {k: shift(v) for k, v in forward(batch).items()}

    return patched


def test_atol_failure_reports_each_output_and_leaves_nothing(cli, tiny_artifacts, tmp_path, monkeypatch):
    import bertedge.train as train

    monkeypatch.setattr(train, "torch_forward", _shifted_torch_forward(lambda v: v + 1e-3))
    out = tmp_path / "b"
    result = cli("export", tiny_artifacts["squad"].path, "--out", out)
    line = assert_one_line_error(result, "validation failed", "start_logits max abs diff 1.00e-03 > atol 1e-04",
                                 "end_logits max abs diff 1.00e-03 > atol 1e-04", "Raise --atol")
    assert "per output: start_logits 1.00e-03; end_logits 1.00e-03" in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_metric_failure_leaves_nothing(cli, tiny_artifacts, tmp_path, monkeypatch):
    import bertedge.train as train

    monkeypatch.setattr(train, "torch_forward", _shifted_torch_forward(lambda v: -v))
    out = tmp_path / "b"
    result = cli("export", tiny_artifacts["sst"].path, "--out", out, "--atol", "100")
    assert_one_line_error(result, "validation failed", "predictions agree on 0.00% of dev (need 99.50%)",
                          "accuracy onnx")
    assert not list(tmp_path.iterdir())


def test_not_an_artifact(cli, tmp_path):
    (tmp_path / "plain").mkdir()
    result = cli("export", tmp_path / "plain", "--out", tmp_path / "b")
    assert_one_line_error(result, "not a bertedge artifact (no bertedge.json)")
    assert not (tmp_path / "b").exists()


def test_bundle_is_not_exportable(cli, tiny_bundles, tmp_path):
    result = cli("export", tiny_bundles["sst"].path, "--out", tmp_path / "b")
    assert_one_line_error(result, "this is already an ONNX bundle", "Export the PyTorch artifact")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("opset", ["9", "13", "21"])
def test_unsupported_opset(cli, tiny_artifacts, tmp_path, opset):
    result = cli("export", tiny_artifacts["sst"].path, "--out", tmp_path / "b", "--opset", opset)
    assert_one_line_error(result, f"opset: Value error, opset {opset} is not supported (use 14 to 20; default 17)")
    assert not (tmp_path / "b").exists()


def test_damaged_weights_fail_cleanly(cli, tiny_artifacts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifacts["sst"].path, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    result = cli("export", broken, "--out", tmp_path / "b")
    assert_one_line_error(result, "cannot load the PyTorch model", "rerun the stage that wrote it")
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- the exporters


def _bundle_outputs(bundle_path, artifact):
    """ONNX Runtime outputs and predictions of a bundle's model.onnx on its parent's dev split."""
    from bertedge.evaluate import artifact_settings, load_eval_examples
    from bertedge.providers import make_session
    from bertedge.runtime import session_forward
    from bertedge.tasks import get_task
    from bertedge.tasks.base import run_forward
    from bertedge.tokenization import TextEncoder

    task, settings = get_task(artifact.task), artifact_settings(artifact)
    examples = load_eval_examples(artifact, None, "dev")
    session = make_session(bundle_path / "model.onnx", "cpu")
    encoder = TextEncoder.from_dir(bundle_path, model_input_names=[i.name for i in session.get_inputs()])
    features = task.eval_features(examples, encoder, settings)
    outputs = run_forward(features, encoder, session_forward(session), 8, task.per_token_outputs)
    predictions = task.postprocess(examples, features, outputs, settings, artifact.labels or None)
    return outputs, [task.prediction_key(p) for p in predictions]


def _optimum_installed() -> bool:
    from bertedge.env import optimum_installed

    return optimum_installed()


@pytest.mark.skipif(not _optimum_installed(), reason="optimum-onnx is not installed (the legacy stack has it)")
@pytest.mark.parametrize("name", ["sst", "pair", "conll", "squad"])
def test_exporters_give_the_same_graph_and_predictions(tiny_bundles, tiny_artifacts, tmp_path, name):
    """bertedge's exporter against optimum-onnx's on one artifact: same interface, same fusions, same ops,
    same predictions (the parity the legacy CI job keeps)."""
    from bertedge.stages.export import ExportConfig, export

    ours, artifact = tiny_bundles[name], tiny_artifacts[name]
    theirs = export(artifact, ExportConfig(exporter="optimum"), tmp_path / "optimum")
    assert theirs.manifest["onnx"]["exporter"]["name"] == "optimum"
    assert theirs.manifest["config"]["exporter"] == "optimum"
    for key in ("inputs", "outputs", "fused_node_counts"):
        assert ours.manifest["onnx"][key] == theirs.manifest["onnx"][key], key
    assert op_counts(ours.file("model.onnx")) == op_counts(theirs.file("model.onnx"))
    assert ours.manifest["validation"]["metric"] == theirs.manifest["validation"]["metric"]
    our_outputs, our_predictions = _bundle_outputs(ours.path, artifact)
    their_outputs, their_predictions = _bundle_outputs(theirs.path, artifact)
    assert our_predictions == their_predictions
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for a, b in zip(our_outputs, their_outputs) for k in a)
    assert diff < 1e-5


@pytest.mark.skipif(not _optimum_installed(), reason="optimum-onnx is not installed (the legacy stack has it)")
def test_optimum_ortmodel_loads_a_bertedge_bundle(tiny_bundles):
    """The bundle bertedge's exporter writes loads with optimum's ORTModelFor* (the `optimum` extra's loading
    path) and gives the logits bertedge's runtime gives."""
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from bertedge.runtime import Bundle

    bundle = tiny_bundles["sst"]
    texts = ["good movie", "the film was bad and the plot thin"]
    model = ORTModelForSequenceClassification.from_pretrained(str(bundle.path), file_name="model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(str(bundle.path))
    batch = tokenizer(texts, padding=True, return_tensors="np")
    theirs = model(**{k: v for k, v in batch.items() if k in model.input_names}).logits
    ours = np.array([r["outputs"][0]["logits"] for r in Bundle(bundle.path).predict(texts, logits=True)])
    np.testing.assert_allclose(np.asarray(theirs), ours, atol=1e-5)


def test_optimum_exporter_without_optimum_is_one_line(cli, tiny_artifacts, tmp_path, monkeypatch):
    import bertedge.env as env

    monkeypatch.setattr(env, "optimum_installed", lambda: False)
    out = tmp_path / "b"
    result = cli("export", tiny_artifacts["sst"].path, "--out", out, "--exporter", "optimum")
    assert_one_line_error(result, "--exporter optimum", "optimum-onnx is not installed",
                          "pip install 'bertedge[optimum]'", "--exporter bertedge")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unknown_exporter(cli, tiny_artifacts, tmp_path):
    result = cli("export", tiny_artifacts["sst"].path, "--out", tmp_path / "b", "--exporter", "tf2onnx")
    assert_one_line_error(result, "exporter: Input should be 'bertedge' or 'optimum'")
    assert not (tmp_path / "b").exists()


def test_dynamic_axes_are_declared_for_every_input_and_output():
    from bertedge.stages.exporters import dynamic_axes
    from bertedge.tasks import get_task

    names = ["input_ids", "attention_mask", "token_type_ids"]
    both = {0: "batch_size", 1: "sequence_length"}
    assert dynamic_axes(get_task("text-classification"), names) == {**{n: both for n in names},
                                                                   "logits": {0: "batch_size"}}
    assert dynamic_axes(get_task("token-classification"), names[:2])["logits"] == both
    qa = dynamic_axes(get_task("question-answering"), names)
    assert qa["start_logits"] == qa["end_logits"] == both


def test_a_graph_with_fixed_shapes_is_refused(tiny_artifacts, tmp_path):
    """What an exporter without dynamic axes writes (the dynamo default's trap) fails the axis check."""
    import torch

    from bertedge.errors import ExportError
    from bertedge.modeling import load_torch_artifact
    from bertedge.stages.exporters import _task_outputs_module, check_dynamic_axes, dummy_inputs
    from bertedge.tasks import get_task

    task = get_task("question-answering")
    model, _ = load_torch_artifact(tiny_artifacts["squad"], attn_implementation="eager")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = tmp_path / "fixed.onnx"
    with torch.no_grad():
        torch.onnx.export(_task_outputs_module(model, names, task.output_names), dummy_inputs(model, names),
                          str(path), input_names=names, output_names=list(task.output_names), opset_version=17,
                          dynamo=False)
    with pytest.raises(ExportError) as error:
        check_dynamic_axes(path, task)
    assert "axis 0 (batch_size) of 'input_ids' is fixed at 2, not symbolic" in str(error.value)
