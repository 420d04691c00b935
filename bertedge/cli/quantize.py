"""quantize: int8 / fp16 versions of an exported bundle, with an accuracy gate (--mode auto)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import Overwrite, emit_json, split_names
from .root import app


@app.command()
def quantize(
    bundle: Annotated[Path, typer.Argument(help="An fp32 ONNX bundle written by `bertedge export` "
                                                "(with --engine inc: a PyTorch artifact).")],
    out: Annotated[Path, typer.Option("--out", help="Output bundle directory.")],
    engine: Annotated[str, typer.Option(help="onnxruntime (ONNX bundles) or inc (Intel Neural Compressor, "
                                             "PyTorch int8 for torch deployments).")] = "onnxruntime",
    mode: Annotated[str, typer.Option(help="dynamic, static (needs --calibration), auto (accuracy gate) or fp16.")] = "dynamic",
    fp16: Annotated[bool, typer.Option("--fp16", help="Same as --mode fp16 (GPU targets).")] = False,
    preset: Annotated[str | None, typer.Option(help="Target CPU: avx2, avx512, avx512_vnni or arm64 (default: this CPU).")] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel", help="Per-channel weight scales.")] = False,
    reduce_range: Annotated[bool | None, typer.Option("--reduce-range/--no-reduce-range", help="7-bit weights (default: the preset's choice).")] = None,
    calibration: Annotated[str | None, typer.Option(help="Calibration data for static int8 (directory, name under the data root, hub:NAME).")] = None,
    calibration_split: Annotated[str, typer.Option(help="Calibration split: train, dev or test.")] = "train",
    calibration_samples: Annotated[int, typer.Option(help="Most calibration samples read.")] = 256,
    calibration_batch_size: Annotated[int, typer.Option(help="Calibration batch size (bounds memory).")] = 8,
    method: Annotated[str, typer.Option(help="Static calibration: minmax, entropy or percentile.")] = "minmax",
    exclude_op_types: Annotated[list[str] | None, typer.Option("--exclude-op-types", help="Op types kept in float (comma-separated or repeated).")] = None,
    exclude_nodes: Annotated[list[str] | None, typer.Option("--exclude-nodes", help="Node names kept in float (comma-separated or repeated).")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Accuracy budget in points of the dev metric: auto picks the fastest within it; dynamic, static and fp16 fail over it (without the option they warn over 1.0).")] = None,
    fp32_nodes: Annotated[int, typer.Option(help="auto: keep up to N most sensitive nodes in fp32.")] = 2,
    sensitivity_samples: Annotated[int, typer.Option(help="auto: dev samples for the sensitivity analysis.")] = 64,
    data: Annotated[str | None, typer.Option(help="Evaluation data (default: recorded in the bundle).")] = None,
    eval_samples: Annotated[int | None, typer.Option(help="Evaluate on a seeded subset of the dev split.")] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the dev evaluation (not with --mode auto).")] = False,
    timing_rounds: Annotated[int, typer.Option(help="auto: interleaved timing rounds per candidate.")] = 30,
    timing_threads: Annotated[int | None, typer.Option(help="auto: intra-op threads for timing.")] = None,
    provider: Annotated[str, typer.Option(help="ONNX Runtime provider for evaluation: cpu, cuda.")] = "cpu",
    fp16_tolerance: Annotated[float, typer.Option(help="fp16: largest allowed |fp16 - fp32| per output, relative to max(1, |fp32|).")] = 0.05,
    fp16_samples: Annotated[int, typer.Option(help="fp16: dev samples checked for overflow and divergence.")] = 256,
    layout: Annotated[str | None, typer.Option(help="bertedge, or transformers.js: also onnx/model_quantized.onnx "
                                                    "(fp16: onnx/model_fp16.onnx) for @huggingface/transformers "
                                                    "(default: the input bundle's layout).")] = None,
    with_tokenizer: Annotated[bool | None, typer.Option("--with-tokenizer/--no-with-tokenizer", help="Also write "
                              "model_with_tokenizer.onnx (raw text in, label out; onnxruntime-extensions ops; "
                              "default: when the input bundle has one).")] = None,
    overwrite: Overwrite = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Quantize a bundle: dynamic or static (QDQ) int8, fp16, or --mode auto with an accuracy gate."""
    from ..config import build
    from ..errors import ConfigError
    from ..stages.quantize import QuantizeConfig
    from ..stages.quantize import quantize as run_quantize

    if fp16 and mode not in ("dynamic", "fp16"):
        raise ConfigError(f"--fp16 conflicts with --mode {mode}", where="--fp16", fix="Pass one of them")
    if engine not in ("onnxruntime", "inc"):
        raise ConfigError(f"unknown engine '{engine}'", where="--engine", fix="Choose onnxruntime or inc")
    # The ONNX Runtime engine's own fields first, in the order an --engine inc refusal names them.
    onnx_options = {
        "preset": preset, "layout": layout, "per_channel": per_channel, "reduce_range": reduce_range,
        "method": method, "exclude_op_types": split_names(exclude_op_types), "exclude_nodes": split_names(exclude_nodes),
        "fp32_nodes": fp32_nodes, "sensitivity_samples": sensitivity_samples, "evaluate": not no_eval,
        "timing_rounds": timing_rounds, "timing_threads": timing_threads, "provider": provider,
        "fp16_tolerance": fp16_tolerance, "fp16_samples": fp16_samples, "with_tokenizer": with_tokenizer,
    }
    if engine == "inc":
        given = onnx_only_flags(onnx_options)
        if given:
            raise ConfigError(f"{given[0]} applies to the onnxruntime engine only", where="--engine inc",
                              fix="Drop it: Neural Compressor picks its own scheme (X86 Inductor quantizer); "
                                  "or quantize the exported bundle with --engine onnxruntime")
        _quantize_inc(bundle, out, mode="fp16" if fp16 else mode, calibration=calibration,
                      calibration_split=calibration_split, calibration_samples=calibration_samples,
                      calibration_batch_size=calibration_batch_size,
                      max_accuracy_drop=1.0 if max_accuracy_drop is None else max_accuracy_drop,
                      enforce_budget=max_accuracy_drop is not None,
                      data=data, eval_samples=eval_samples, overwrite=overwrite, json_out=json_out)
        return
    config = build(QuantizeConfig, {
        "mode": "fp16" if fp16 else mode, "calibration": calibration, "calibration_split": calibration_split,
        "calibration_samples": calibration_samples, "calibration_batch_size": calibration_batch_size,
        "max_accuracy_drop": 1.0 if max_accuracy_drop is None else max_accuracy_drop,
        "enforce_budget": max_accuracy_drop is not None, "data": data, "eval_samples": eval_samples,
        **onnx_options,
    })
    artifact = run_quantize(bundle, config, out, overwrite=overwrite)
    q = artifact.manifest["quantization"]
    metrics = artifact.metrics
    if json_out:
        emit_json({"artifact": str(artifact.path), "task": artifact.task, "mode": q["mode"],
                   "candidate": q["candidate"], "size_ratio": q["size_ratio"],
                   "quantized_nodes": q["quantized_nodes"], "metrics": metrics,
                   "batch_invariant": q.get("batch_invariant"), "b32_vs_b1": q.get("b32_vs_b1"),
                   "gate": q.get("gate"), "tokenizer_in_graph": artifact.manifest.get("tokenizer_in_graph")})
        return
    from ..log import points_change

    line = f"wrote {artifact.path} ({q['candidate']}, {q['size_ratio']}x smaller"
    if metrics:
        metric = artifact.manifest.get("primary_metric")
        line += (f", dev {metric} {metrics['dev'].get(metric):.4f} vs fp32 {metrics['fp32_dev'].get(metric):.4f}, "
                 f"{points_change(metrics.get('drop_pts'))}")
    if q.get("batch_invariant") is False:
        line += "; batch-dependent int8: runs one sequence at a time by default"
    typer.echo(line + ")")
    from .export import echo_tokenizer_graph

    echo_tokenizer_graph(artifact.manifest.get("tokenizer_in_graph"))


# The flag of a QuantizeConfig field where it is not "--" + the field name with dashes.
FLAGS = {"evaluate": "--no-eval", "reduce_range": "--reduce-range/--no-reduce-range"}


def onnx_only_flags(options: dict) -> list[str]:
    """The flags among `options` (QuantizeConfig fields that only the onnxruntime engine reads) that were given:
    set to something other than the config's default. --no-with-tokenizer is no request, so it is never one."""
    from ..stages.quantize import SHARED_FIELDS, QuantizeConfig

    fields = QuantizeConfig.model_fields
    given = []
    for name, value in options.items():
        if name in SHARED_FIELDS or (name == "with_tokenizer" and not value):
            continue
        if value != fields[name].get_default(call_default_factory=True):
            given.append(FLAGS.get(name, "--" + name.replace("_", "-")))
    return given


def _quantize_inc(src: Path, out: Path, *, mode: str, overwrite: bool, json_out: bool, **options) -> None:
    from ..config import build
    from ..errors import ConfigError
    from ..stages.quantize import QuantizeConfig
    from ..stages.quantize import quantize as run_quantize

    if mode == "fp16":
        raise ConfigError("--engine inc quantizes to int8 only", where="--mode",
                          fix="Use --mode dynamic, static or auto with --engine inc (fp16 is an ONNX Runtime mode)")
    config = build(QuantizeConfig, {"engine": "inc", "mode": mode, **options})
    artifact = run_quantize(src, config, out, overwrite=overwrite)
    q, metrics = artifact.manifest["quantization"], artifact.metrics
    metric = artifact.manifest.get("primary_metric")
    if json_out:
        emit_json({"artifact": str(artifact.path), "task": artifact.task, "engine": "inc", "mode": q["mode"],
                   "metrics": metrics, "trials": q["trials"]})
        return
    typer.echo(f"wrote {artifact.path} (Neural Compressor {q['mode']} int8, dev {metric} "
               f"{metrics['dev'].get(metric):.4f} vs fp32 {metrics['fp32_dev'].get(metric):.4f}); "
               "run it under torch.compile")
