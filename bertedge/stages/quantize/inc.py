"""quantize --engine inc: PyTorch int8 through Intel Neural Compressor 3.x (PT2E), for users who
deploy with PyTorch rather than ONNX Runtime.

The fine-tuned model is exported with torch.export (dynamic batch and sequence axes), prepared
with Neural Compressor's `DynamicQuantConfig` or `INT8StaticQuantConfig` (X86 Inductor
quantizer), calibrated on a bounded number of train samples, converted, and saved as a
`torch.export` program (`model.pt2`). `mode="auto"` is Neural Compressor's `autotune` over
[static, dynamic] with the accuracy budget turned into its relative `tolerable_loss`: the first
config (static is tried first: it is the faster one under inductor) whose dev metric stays within
the budget wins.

What to know before deploying it (recorded in the manifest too): a PT2E program is reference
int8 (quantize/dequantize around fp32 ops). Eager PyTorch runs it *slower* than fp32; the int8
kernels come from `torch.compile` (inductor, with freezing), which lowers the Q/DQ patterns to
oneDNN int8 GEMMs. `bertedge bench` compiles it that way (`--torch-compile`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from ... import log
from ...artifacts import Artifact, atomic_artifact, check_output_path, load_artifact, parent_record, require_task_model
from ...config import StrictModel
from ...errors import QuantizationError
from ...torch_program import PROGRAM_FILE, program_forward

# Files of the parent that the program replaces (the fp32 weights) or that describe the parent.
_NOT_COPIED = {"model.safetensors", "pytorch_model.bin", "bertedge.json", "training_args.bin"}
COMPILE_NOTE = ("PT2E reference int8: eager PyTorch runs it slower than fp32; run it under "
                "torch.compile (inductor, torch._inductor.config.freezing = True) for int8 kernels")


class IncQuantizeConfig(StrictModel):
    mode: Literal["dynamic", "static", "auto"] = Field(
        "dynamic", description="dynamic (DynamicQuantConfig), static (INT8StaticQuantConfig, needs calibration) "
                               "or auto (Neural Compressor autotune over static, dynamic within the budget)")
    calibration: str | None = Field(None, description="Calibration data for static/auto (default: the artifact's data)")
    calibration_split: Literal["train", "dev", "test"] = Field("train", description="Split used for calibration")
    calibration_samples: int = Field(128, ge=1, description="Most calibration samples read")
    calibration_batch_size: int = Field(8, ge=1, description="Calibration batch size")
    max_accuracy_drop: float = Field(1.0, ge=0, description="Budget in points of the dev metric: auto tunes within "
                                                            "it; dynamic and static warn when over it")
    enforce_budget: bool = Field(False, description="dynamic/static: fail (nothing written) instead of warning when "
                                                    "the dev drop is over max_accuracy_drop")
    data: str | None = Field(None, description="Evaluation data (default: the data recorded in the artifact)")
    eval_samples: int | None = Field(None, ge=1, description="Evaluate on a seeded subset of the dev split")


@contextlib.contextmanager
def _quiet_inc():
    """Neural Compressor logs every step at INFO and prints tables; keep stdout for --json."""
    loggers = [logging.getLogger(n) for n in ("neural_compressor", "neural_compressor.common")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class TaskProgram:
    """A task model as a function of positional input tensors returning a tuple of outputs.

    torch.export matches `dynamic_shapes` to named parameters, so the forward takes exactly the
    model's inputs (two for DistilBERT-like models, three with token_type_ids), not *args.
    """

    def __init__(self, model, input_names: list[str], output_names: list[str]):
        import torch

        if len(input_names) not in (2, 3):
            raise QuantizationError(f"unsupported model inputs {input_names}", where="--engine inc",
                                    fix="Use the ONNX Runtime engine (the default)")

        def run(inner, values):
            out = inner(**dict(zip(input_names, values)))
            return tuple(out[name] for name in output_names)

        class _Two(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, first, second):
                return run(self.inner, (first, second))

        class _Three(_Two):
            def forward(self, first, second, third):
                return run(self.inner, (first, second, third))

        self.module = (_Two if len(input_names) == 2 else _Three)(model).eval()
        self.input_names, self.output_names = input_names, output_names


def output_names(task: str) -> list[str]:
    from ...tasks import get_task

    return list(get_task(task).output_names)


def quantize_torch(src: str | Path | Artifact, config: IncQuantizeConfig, out: str | Path, *,
                   overwrite: bool = False) -> Artifact:
    """Quantize the PyTorch artifact `src` with Neural Compressor into a torch-program artifact at `out`."""
    out = check_output_path(out, overwrite=overwrite)
    parent = src if isinstance(src, Artifact) else load_artifact(src)
    require_task_model(parent)
    if parent.is_bundle:
        raise QuantizationError("--engine inc quantizes PyTorch artifacts, and this is an ONNX bundle",
                                where=str(parent.path),
                                fix="Pass the PyTorch artifact the bundle was exported from, or drop --engine inc")
    if parent.manifest.get("torch_program"):
        raise QuantizationError("the artifact is already quantized (Neural Compressor int8)", where=str(parent.path),
                                fix="Quantize its fp32 parent instead")
    try:
        import neural_compressor.torch.quantization as inc  # noqa: F401
    except ImportError:
        raise QuantizationError("Intel Neural Compressor is not installed", where="--engine inc",
                                fix="pip install 'bertedge[inc]' (neural-compressor-pt)") from None

    import torch

    from ...evaluate import artifact_settings, load_eval_examples
    from ...modeling import encoder_from_hf, load_torch_artifact
    from ...tasks import get_task
    from ...tasks.base import evaluate_examples
    from ...train import torch_forward

    started = time.perf_counter()
    task = get_task(parent.task)
    model, tokenizer = load_torch_artifact(parent)
    encoder, settings = encoder_from_hf(tokenizer), artifact_settings(parent)
    metric = parent.manifest.get("primary_metric") or task.primary_metric
    dev = load_eval_examples(parent, config.data, "dev", config.eval_samples)
    calibration = _calibration_batches(parent, config, encoder, settings)
    inputs = [n for n in encoder.model_input_names if n in calibration[0]]
    program = TaskProgram(model, inputs, output_names(parent.task))
    example = tuple(torch.from_numpy(calibration[0][n]) for n in inputs)
    max_positions = int(getattr(model.config, "max_position_embeddings", 512))

    def evaluate(forward) -> dict:
        metrics, _ = evaluate_examples(task, dev, encoder, forward, settings, parent.labels or None)
        return metrics

    log.info(f"quantize --engine inc: {config.mode} on {parent.path} ({len(dev)} dev examples)")
    fp32 = evaluate(torch_forward(model))
    trials: list[dict] = []
    with torch.no_grad(), _quiet_inc():
        quantized, chosen = _run_inc(program, example, calibration, inputs, config, fp32.get(metric), metric,
                                     evaluate, trials, max_positions)
        metrics = evaluate(program_forward(quantized, inputs, program.output_names))
        exported = torch.export.export(quantized, example, dynamic_shapes=_dynamic_shapes(inputs, max_positions))
    drop = round((fp32[metric] - metrics[metric]) * 100, 4)
    if drop > config.max_accuracy_drop + 1e-9:
        what = (f"inc {chosen} changes dev {metric} by {log.points_change(drop)}, over the "
                f"{config.max_accuracy_drop} pt budget")
        if config.enforce_budget and config.mode != "auto":
            raise QuantizationError(what, where="--max-accuracy-drop",
                                    fix="Try --mode auto, or raise --max-accuracy-drop")
        log.warning(what)
    log.info(f"quantize --engine inc: {chosen}: dev {metric} {fp32[metric]:.4f} -> {metrics[metric]:.4f} "
             f"({log.points_change(drop)})")

    with atomic_artifact(out, stage="quantize", task=parent.task, overwrite=overwrite) as writer:
        torch.export.save(exported, str(writer.path / PROGRAM_FILE))
        for file in parent.path.iterdir():
            if file.is_file() and file.name not in _NOT_COPIED and not file.name.startswith("."):
                shutil.copy2(file, writer.path / file.name)
        from importlib.metadata import version

        inc_version = version("neural-compressor-pt")

        from ...artifacts import PARENT_ONLY_KEYS

        writer.manifest.update({k: v for k, v in parent.manifest.items() if k not in PARENT_ONLY_KEYS})
        writer.manifest.update({
            "parent": parent_record(parent),
            "config": config.model_dump(),
            "metrics": {"dev": metrics, "fp32_dev": fp32, "drop_pts": drop},
            "torch_program": {"file": PROGRAM_FILE, "inputs": inputs, "outputs": program.output_names,
                              "format": "torch.export (ExportedProgram)", "run_note": COMPILE_NOTE},
            "quantization": {"engine": "neural-compressor", "engine_version": inc_version, "mode": chosen,
                             "requested_mode": config.mode, "precision": "int8", "trials": trials,
                             "max_accuracy_drop": config.max_accuracy_drop,
                             "calibration": {"samples": sum(len(next(iter(b.values()))) for b in calibration),
                                             "split": config.calibration_split},
                             "quantize_s": round(time.perf_counter() - started, 2)},
        })
    return load_artifact(out)


def _run_inc(program: TaskProgram, example, calibration, inputs, config: IncQuantizeConfig, baseline, metric,
             evaluate, trials: list[dict], max_positions: int):
    import torch
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import (
        DynamicQuantConfig,
        INT8StaticQuantConfig,
        TuningConfig,
        autotune,
        convert,
        prepare,
    )

    def run_fn(prepared) -> None:
        for batch in calibration:
            prepared(*(torch.from_numpy(batch[n]) for n in inputs))

    def exported():
        model = export(program.module, example, dynamic_shapes=_dynamic_shapes(inputs, max_positions))
        if model is None:
            raise QuantizationError("torch.export could not capture the model", where="--engine inc",
                                    fix="Use the ONNX Runtime engine (the default)")
        return model

    try:
        if config.mode in ("dynamic", "static"):
            quant_config = DynamicQuantConfig() if config.mode == "dynamic" else INT8StaticQuantConfig()
            prepared = prepare(exported(), quant_config)
            run_fn(prepared)  # dynamic: one pass traces the observers; static: the calibration ranges
            return convert(prepared), config.mode
        # auto: Neural Compressor's tuner; its eval_fn is our dev metric (first call: the fp32 model).
        names = ["fp32", "static", "dynamic"]

        def eval_fn(model) -> float:
            score = evaluate(program_forward(model, inputs, program.output_names))[metric]
            trials.append({"config": names[min(len(trials), 2)], metric: score,
                           "drop_pts": round((baseline - score) * 100, 4)})
            return score

        relative = (config.max_accuracy_drop / 100) / baseline if baseline else 0.0
        tuned = autotune(exported(), TuningConfig(config_set=[INT8StaticQuantConfig(), DynamicQuantConfig()],
                                                  tolerable_loss=relative),
                         eval_fn=eval_fn, run_fn=run_fn, example_inputs=example)
        tried = [t for t in trials if t["config"] != "fp32"]
        within = [t for t in tried if t["drop_pts"] <= config.max_accuracy_drop + 1e-9]
        chosen = within[0]["config"] if within else max(tried, key=lambda t: t[metric])["config"]
        for t in tried:
            t["verdict"] = ("chosen" if t["config"] == chosen else
                            "rejected: over the budget" if t["drop_pts"] > config.max_accuracy_drop else "not needed")
        return tuned, chosen
    except QuantizationError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export / INC raise many kinds
        detail = " ".join(str(exc).split())[:240]
        raise QuantizationError(f"Neural Compressor {config.mode} failed ({type(exc).__name__}: {detail})",
                                where="--engine inc",
                                fix="Try another --mode, or the ONNX Runtime engine (the default)") from None


def _dynamic_shapes(inputs: list[str], max_positions: int) -> tuple:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=2, max=max_positions)
    return tuple({0: batch, 1: seq} for _ in inputs)


def _calibration_batches(parent: Artifact, config: IncQuantizeConfig, encoder, settings) -> list[dict]:
    from ...evaluate import artifact_data_spec, calibration_features

    features = calibration_features(parent, config.calibration, config.calibration_split, config.calibration_samples,
                                    encoder, settings)
    if len(features) < 2:
        spec, _ = artifact_data_spec(parent, config.calibration)
        raise QuantizationError("calibration needs at least 2 examples", where=f"--calibration {spec}",
                                fix="Use a split with more examples")
    size = max(2, config.calibration_batch_size)  # batch 1 would make torch.export specialise the batch axis
    return [encoder.collate(features[i:i + size]) for i in range(0, len(features) - 1, size)
            if len(features[i:i + size]) >= 2]
