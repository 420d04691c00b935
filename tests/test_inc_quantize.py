"""quantize --engine inc: Intel Neural Compressor PT2E int8 of a PyTorch artifact — the program is
really int8 (quantize/dequantize ops in the graph), evaluates through `eval`, benchmarks with the
torch backend, and bad input is refused in one line."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error

from bertedge.artifacts import load_artifact
from bertedge.stages.quantize.inc import IncQuantizeConfig, quantize_torch


def quant_ops(artifact) -> dict[str, int]:
    """Counts of the quantize/dequantize ops in the saved program's graph."""
    import torch

    program = torch.export.load(str(artifact.file("model.pt2")))
    counts: dict[str, int] = {}
    for node in program.graph.nodes:
        name = str(node.target)
        if "quantize_per_tensor" in name or "dequantize_per" in name or "choose_qparams" in name:
            key = name.split(".")[-2] if name.count(".") >= 2 else name
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_inc_int8_program_is_quantized_and_close_to_fp32(tiny_artifacts, tmp_path, mode):
    src = tiny_artifacts["sst"]
    art = quantize_torch(src, IncQuantizeConfig(mode=mode, calibration_samples=16, calibration_batch_size=4),
                         tmp_path / "q")
    q = art.manifest["quantization"]
    assert (q["engine"], q["mode"], q["precision"]) == ("neural-compressor", mode, "int8")
    assert q["calibration"]["samples"] == 16
    assert set(art.manifest["torch_program"]["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert not art.file("model.safetensors").exists() and art.file("model.pt2").is_file()
    ops = quant_ops(art)
    assert sum(ops.values()) > 0, ops  # int8 Q/DQ in the program, not an fp32 copy
    if mode == "dynamic":
        assert any("choose_qparams" in k for k in ops), ops  # activation scales computed at run time
    metrics = art.manifest["metrics"]
    assert abs(metrics["drop_pts"]) <= 15.0 and set(metrics) == {"dev", "fp32_dev", "drop_pts"}


def test_inc_artifact_evaluates_and_benchmarks_through_the_cli(cli, tiny_artifacts, tmp_path):
    result = cli("quantize", str(tiny_artifacts["sst"].path), "--out", str(tmp_path / "q"), "--engine", "inc",
                 "--mode", "dynamic", "--calibration-samples", "8", "--json")
    assert result.code == 0, result
    record = json.loads(result.out)
    assert record["engine"] == "inc" and record["mode"] == "dynamic"
    ev = cli("eval", str(tmp_path / "q"), "--json")
    assert ev.code == 0, ev
    # The same dev examples through `eval` give the metric the quantize run recorded.
    assert json.loads(ev.out)["metrics"]["accuracy"] == pytest.approx(record["metrics"]["dev"]["accuracy"])
    bench = cli("bench", str(tmp_path / "q"), "--batch-sizes", "1", "--seq-lens", "16", "--runs", "3",
                "--warmup", "2", "--no-pareto", "--json")
    assert bench.code == 0, bench
    row = json.loads(bench.out)["results"][0]
    assert row["backend"] == "torch-inc" and row["p50_ms"] > 0


def test_inc_refuses_bundles_and_already_quantized(cli, tiny_artifacts, tiny_bundles, tmp_path):
    result = cli("quantize", str(tiny_bundles["sst"].path), "--out", str(tmp_path / "q"), "--engine", "inc")
    assert_one_line_error(result, str(tiny_bundles["sst"].path), "ONNX bundle", "PyTorch artifact")
    assert not (tmp_path / "q").exists()
    result = cli("quantize", str(tiny_artifacts["sst"].path), "--out", str(tmp_path / "q"), "--engine", "inc",
                 "--mode", "fp16")
    assert_one_line_error(result, "--mode", "int8 only")
    result = cli("quantize", str(tiny_artifacts["sst"].path), "--out", str(tmp_path / "q"), "--engine", "tvm")
    assert_one_line_error(result, "--engine", "unknown engine 'tvm'")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("flags, named", [(["--per-channel"], "--per-channel"), (["--preset", "avx512"], "--preset"),
                                          (["--exclude-nodes", "n1"], "--exclude-nodes"),
                                          (["--provider", "cuda"], "--provider")])
def test_inc_refuses_onnx_only_flags(cli, tiny_artifacts, tmp_path, flags, named):
    result = cli("quantize", str(tiny_artifacts["sst"].path), "--out", str(tmp_path / "q"), "--engine", "inc", *flags)
    assert_one_line_error(result, "--engine inc", f"{named} applies to the onnxruntime engine only")
    assert not (tmp_path / "q").exists()


def test_inc_auto_picks_within_budget_or_most_accurate(tiny_artifacts, tmp_path):
    art = quantize_torch(tiny_artifacts["sst"], IncQuantizeConfig(mode="auto", calibration_samples=8,
                                                                  max_accuracy_drop=100.0), tmp_path / "q")
    q = art.manifest["quantization"]
    # A budget nothing can break: the first config Neural Compressor tries (static) is taken.
    assert q["mode"] == "static" and [t["config"] for t in q["trials"]][:2] == ["fp32", "static"]
    assert next(t for t in q["trials"] if t["config"] == "static")["verdict"] == "chosen"
    assert load_artifact(tmp_path / "q").manifest["torch_program"]["file"] == "model.pt2"


def test_a_recipe_selects_the_inc_engine_in_one_config():
    """Issue 23: the engine is a QuantizeConfig field, so a recipe can choose Neural Compressor; fields only
    ONNX Runtime has are refused with it, and an inc step must start from a PyTorch step."""
    import pytest

    from bertedge.errors import ConfigError
    from bertedge.recipe import parse_recipe
    from bertedge.stages.quantize import QuantizeConfig

    base = {"model": "minilm-l6", "task": "text-classification", "data": "sst2"}
    recipe = parse_recipe({**base, "stages": [{"stage": "finetune"},
                                              {"stage": "quantize", "engine": "inc", "mode": "static",
                                               "calibration": "sst2"}]})
    step = recipe.stages[-1]
    assert step.engine == "inc" and step.inc_config().model_dump()["mode"] == "static"
    assert step.inc_config().calibration_samples == 128  # Neural Compressor's own default when none is given
    with pytest.raises(ConfigError, match="stages.1.quantize: Value error, per_channel applies to the onnxruntime "
                                          "engine only"):
        parse_recipe({**base, "stages": [{"stage": "finetune"},
                                         {"stage": "quantize", "engine": "inc", "per_channel": True}]})
    with pytest.raises(ConfigError, match="quantize with engine inc needs a PyTorch artifact but its source is a "
                                          "export step"):
        parse_recipe({**base, "stages": [{"stage": "finetune"}, {"stage": "export"},
                                         {"stage": "quantize", "engine": "inc"}]})
    assert QuantizeConfig().engine == "onnxruntime"
