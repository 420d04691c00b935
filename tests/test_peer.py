"""The peer path on each stack: what was built, that it is int8 with dynamic axes, and that reports name it."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from bertedge.env import optimum_installed
from bertedge.errors import ArtifactError


def op_counts(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _symbolic_inputs(path) -> dict[str, list]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}


def _peer_accuracy(files, teacher):
    """The peer's dev metrics through the loop the report uses."""
    from bertedge.report import _peer_metrics

    return _peer_metrics(files["int8"], files["int8"].parent, teacher)


def test_ort_peer_is_export_optimize_quantize_dynamic(tiny_artifacts, tmp_path):
    from bertedge.peer import PEER_METHODS, build_peer

    files = build_peer(tiny_artifacts["sst"], tmp_path / "peer", "ort")
    assert files["kind"] == "ort" and files["name"] == "peer: torch.onnx+ORT int8"
    assert files["method"] == PEER_METHODS["ort"]
    assert {p.name for p in (tmp_path / "peer").iterdir()} >= {"model.onnx", "model_quantized.onnx", "tokenizer.json"}
    fused = op_counts(files["fp32"])
    assert fused["SkipLayerNormalization"] > 0  # the transformer optimizer ran before quantization
    int8 = op_counts(files["int8"])
    assert int8["DynamicQuantizeMatMul"] + int8["MatMulInteger"] + int8["QAttention"] > 0
    assert int8["MatMul"] < op_counts(files["fp32"])["MatMul"] or int8["QAttention"] > 0
    for dims in _symbolic_inputs(files["int8"]).values():
        assert dims == ["batch_size", "sequence_length"]
    metrics = _peer_accuracy(files, tiny_artifacts["sst"])
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == tiny_artifacts["sst"].manifest["data"]["dev_examples"]


@pytest.mark.skipif(not optimum_installed(), reason="optimum-onnx is not installed (the legacy stack has it)")
def test_optimum_peer(tiny_artifacts, tmp_path):
    from bertedge.peer import build_peer, default_peer

    assert default_peer() == "optimum"
    files = build_peer(tiny_artifacts["sst"], tmp_path / "peer")
    assert files["kind"] == "optimum" and files["name"] == "peer: optimum+ORT int8"
    int8 = op_counts(files["int8"])
    assert int8["DynamicQuantizeLinear"] > 0 and int8["MatMulInteger"] > 0
    metrics = _peer_accuracy(files, tiny_artifacts["sst"])
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_default_peer_follows_the_stack(monkeypatch):
    import bertedge.env as env
    from bertedge.peer import default_peer

    monkeypatch.setattr(env, "optimum_installed", lambda: False)
    assert default_peer() == "ort"
    monkeypatch.setattr(env, "optimum_installed", lambda: True)
    assert default_peer() == "optimum"


def test_peer_starts_from_the_pytorch_teacher(tiny_bundles, tmp_path):
    from bertedge.peer import build_peer

    with pytest.raises(ArtifactError, match="starts from the PyTorch teacher"):
        build_peer(tiny_bundles["sst"], tmp_path / "peer", "ort")


def test_report_names_the_peer_it_measured():
    from bertedge.peer import PEER_METHODS, PEER_NAMES
    from bertedge.report import _peer_sentence

    ort = {"peer": {"name": PEER_NAMES["ort"]},
           "peer_path": {"kind": "ort", "name": PEER_NAMES["ort"], "method": PEER_METHODS["ort"]}}
    assert _peer_sentence(ort) == f"Peer (peer: torch.onnx+ORT int8) = {PEER_METHODS['ort']}."
    # Reports written before the ORT peer existed measured optimum's and did not say so.
    assert "optimum's ORTQuantizer" in _peer_sentence({"peer": {"name": PEER_NAMES["optimum"]}})
    assert _peer_sentence({"peer": None}) == "No peer was measured."
