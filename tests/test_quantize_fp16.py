"""fp16 validation: `quantize --mode fp16` refuses a model whose activations overflow float16, whose
fp16 outputs turn non-finite or diverge from fp32: one line naming the tensors/outputs and the fix,
exit 1, nothing written. A model with a real overflow is built by hand (tiny BERT, one FFN scaled).
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, finetune_tiny

from bertedge.artifacts import PARTIAL_MARK, load_artifact
from bertedge.stages.export import ExportConfig, export
from bertedge.stages.quantize import fp16 as oq

OVERFLOW_TENSOR = "/bert/encoder/layer.0/output/dense/MatMul_output_0"
# Names follow the exporter's module scopes: /bert/... from optimum, /model/bert/... from bertedge's own exporter.
OVERFLOW_NODE = re.compile(r"--exclude-nodes ((?:/model)?/bert/encoder/layer\.0/output/dense/MatMul) \(or ")


@pytest.fixture(scope="module")
def artifact(tiny_model_dir, tiny_data, tmp_path_factory):
    return finetune_tiny(tiny_model_dir, tiny_data["sst"], "text-classification",
                         tmp_path_factory.mktemp("fp16") / "sst", epochs=1)


@pytest.fixture(scope="module")
def plain_bundle(artifact, tmp_path_factory):
    return export(artifact, ExportConfig(), tmp_path_factory.mktemp("fp16") / "plain")


@pytest.fixture(scope="module")
def overflow_bundle(artifact, tmp_path_factory):
    """Layer 0's FFN made to overflow fp16 while fp32 stays finite and exact.

    Every intermediate unit gets a +50 bias (GELU passes it through), and the output projection
    becomes +-100 per hidden unit: 64 x ~50 x 100 = ~3.2e5 > 65504 on every token. Each weight fits
    in fp16 (nothing is clipped); the residual LayerNorm right after brings fp32 back to unit scale.
    """
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("fp16")
    source = root / "overflow-artifact"
    shutil.copytree(artifact.path, source)
    model = AutoModelForSequenceClassification.from_pretrained(source)
    layer = model.bert.encoder.layer[0]
    seen = {}
    with torch.no_grad():
        layer.intermediate.dense.bias.fill_(50.0)
        sign = torch.where(torch.arange(layer.output.dense.out_features) % 2 == 0, 1.0, -1.0)
        layer.output.dense.weight.copy_(100.0 * sign[:, None].expand_as(layer.output.dense.weight))
        layer.output.dense.register_forward_hook(lambda m, i, o: seen.update(peak=float(o.abs().max())))
        logits = model(input_ids=torch.tensor([[2, 20, 30, 40, 3]])).logits
    assert seen["peak"] > 2 * oq.FP16_MAX and torch.isfinite(logits).all()  # fp32: huge but finite
    model.save_pretrained(source, safe_serialization=True)
    return export(load_artifact(source), ExportConfig(), root / "overflow")


def _leftovers(out):
    return list(out.parent.glob(f".{out.name}{PARTIAL_MARK}*"))


def test_fp16_overflow_is_one_line_error_naming_tensor_and_fix(overflow_bundle, cli, tmp_path):
    out = tmp_path / "fp16"
    result = cli("quantize", overflow_bundle.path, "--out", out, "--mode", "fp16")
    line = assert_one_line_error(
        result, str(overflow_bundle.file("model.onnx")), "fp16 validation failed on 32 dev samples",
        "1 activation(s) beyond the fp16 range +-65504 (inf in fp16): ", f"{OVERFLOW_TENSOR} (max |x| ",
        "(per output: logits max abs diff",
        "Keep more ops in fp32 with --exclude-nodes ", "/bert/encoder/layer.0/output/dense/MatMul (or --exclude-op-types MatMul)",
        "or stay with the fp32 bundle")
    assert OVERFLOW_NODE.search(line), line  # exactly the one MatMul
    assert "clipped" not in line  # the overflow is in an activation, not in a weight
    assert not out.exists() and not _leftovers(out)


def test_fp16_overflow_fix_from_the_message_works(overflow_bundle, cli, tmp_path):
    """The suggested --exclude-nodes keeps the overflowing MatMul in fp32 and the bundle validates."""
    out = tmp_path / "fp16"
    refused = cli("quantize", overflow_bundle.path, "--out", out, "--mode", "fp16")
    assert refused.code == 1, refused
    node = OVERFLOW_NODE.search(refused.err).group(1)
    result = cli("quantize", overflow_bundle.path, "--out", out, "--mode", "fp16", "--exclude-nodes", node)
    assert result.code == 0, result
    q = load_artifact(out).manifest["quantization"]
    v = q["validation"]
    assert v["passed"] is True and v["overflowing_tensors"] == {} and v["max_abs_activation"] <= oq.FP16_MAX
    assert q["fp32_nodes_kept"] == [node] and v["outputs"]["logits"]["non_finite"] == 0


def test_fp16_on_a_normal_model_records_the_validation(plain_bundle, tmp_path):
    from bertedge.stages.quantize import QuantizeConfig, quantize

    art = quantize(plain_bundle, QuantizeConfig(mode="fp16"), tmp_path / "fp16")
    v = art.manifest["quantization"]["validation"]
    assert v["passed"] and v["inputs"] == "dev" and v["samples"] == 32 and v["fp16_tensors"] > 10
    assert 0 < v["max_abs_activation"] < oq.FP16_MAX
    assert v["outputs"]["logits"]["max_abs_diff"] < 1e-3 and v["outputs"]["logits"]["non_finite"] == 0


def test_fp16_divergence_beyond_tolerance_is_an_error(plain_bundle, cli, tmp_path):
    out = tmp_path / "fp16"
    result = cli("quantize", plain_bundle.path, "--out", out, "--mode", "fp16", "--fp16-tolerance", "1e-12")
    assert_one_line_error(result, "fp16 validation failed", "output logits diverges: max |fp16 - fp32|",
                          "--fp16-tolerance 1e-12", "raise --fp16-tolerance if the difference is acceptable",
                          "--exclude-op-types (e.g. MatMul,Attention)", "or stay with the fp32 bundle")
    assert not out.exists() and not _leftovers(out)


def test_fp16_non_finite_outputs_are_an_error(plain_bundle, cli, tmp_path, monkeypatch):
    """Where the device really computes in fp16 (a GPU), an overflow shows as inf/NaN outputs."""
    import bertedge.runtime as runtime

    real = runtime.session_forward

    def nan_forward(session):
        forward = real(session)

        def run(batch):
            outputs = forward(batch)
            outputs["logits"][0, 0] = np.nan
            return outputs

        return run

    monkeypatch.setattr(runtime, "session_forward", nan_forward)
    out = tmp_path / "fp16"
    result = cli("quantize", plain_bundle.path, "--out", out, "--mode", "fp16")
    assert_one_line_error(result, "fp16 validation failed",
                          "output logits has 4 non-finite values (inf/NaN) where fp32 is finite",
                          "or stay with the fp32 bundle")
    assert not out.exists() and not _leftovers(out)


def test_compare_fp16_outputs():
    ref = [{"logits": np.array([1.0, -2.0]), "start": np.array([10.0, 0.0])}]
    cand = [{"logits": np.array([np.inf, -2.0]), "start": np.array([10.4, 0.0])}]
    report = oq.compare_fp16_outputs(ref, cand, tolerance=0.05)
    assert report["logits"]["non_finite"] == 1 and not report["logits"]["ok"]
    assert report["start"]["limit"] == pytest.approx(0.5) and report["start"]["ok"]
    assert not oq.compare_fp16_outputs(ref, cand, tolerance=0.01)["start"]["ok"]
