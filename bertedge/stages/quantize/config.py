"""The quantize stage's config: one for both engines (ONNX Runtime on an exported bundle, Neural Compressor on a
PyTorch artifact), so a recipe, the search and the CLI choose the engine the same way."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...config import StrictModel

# The fields both engines understand; every other field is ONNX Runtime's own.
SHARED_FIELDS = ("engine", "mode", "calibration", "calibration_split", "calibration_samples", "calibration_batch_size",
                 "max_accuracy_drop", "enforce_budget", "data", "eval_samples")


class QuantizeConfig(StrictModel):
    engine: Literal["onnxruntime", "inc"] = Field(
        "onnxruntime", description="onnxruntime: an exported ONNX bundle -> an int8/fp16 bundle; inc: Intel Neural "
                                   "Compressor on a PyTorch artifact -> an int8 torch program (bertedge[inc])")
    mode: Literal["dynamic", "static", "auto", "fp16"] = Field(
        "dynamic", description="dynamic int8, static int8 (QDQ, needs calibration), auto (accuracy gate over "
                               "candidates) or fp16 (GPU targets)")
    preset: Literal["avx2", "avx512", "avx512_vnni", "arm64"] | None = Field(
        None, description="Target CPU: integer types and reduce_range (default: detected from this CPU)")
    per_channel: bool = Field(False, description="Per-channel weight scales (auto tries both)")
    reduce_range: bool | None = Field(None, description="7-bit weights (default: the preset's choice)")
    calibration: str | None = Field(
        None, description="Calibration data for static int8: data directory, name under the data root, or hub:NAME")
    calibration_split: Literal["train", "dev", "test"] = Field("train", description="Split used for calibration")
    calibration_samples: int = Field(256, ge=1, description="Most calibration samples read (memory is one batch)")
    calibration_batch_size: int = Field(8, ge=1, description="Calibration batch size")
    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="Static calibration method")
    exclude_op_types: list[str] = Field(default_factory=list, description="Op types kept in float (e.g. Attention)")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names kept in float")
    max_accuracy_drop: float = Field(1.0, ge=0, description="Budget for the dev metric, in points (0-100 scale): "
                                                            "auto picks the fastest candidate within it; the other "
                                                            "modes warn when their drop is over it")
    enforce_budget: bool = Field(False, description="dynamic/static/fp16: fail (nothing written) instead of warning "
                                                    "when the dev drop is over max_accuracy_drop")
    fp32_nodes: int = Field(2, ge=0, le=10, description="auto: keep up to this many most sensitive nodes in fp32")
    sensitivity_samples: int = Field(64, ge=1, description="auto: dev samples for the per-node sensitivity analysis")
    data: str | None = Field(None, description="Evaluation data (default: the data recorded in the bundle)")
    eval_samples: int | None = Field(None, ge=1, description="Evaluate on a seeded subset of the dev split")
    evaluate: bool = Field(True, description="Evaluate fp32 and quantized on the dev split")
    timing_rounds: int = Field(30, ge=3, description="auto: interleaved timing rounds per candidate (b1)")
    timing_threads: int | None = Field(None, ge=1, description="auto: intra-op threads for timing (default: ORT's)")
    provider: str = Field("cpu", description="ONNX Runtime provider for evaluation (cuda for fp16)")
    fp16_tolerance: float = Field(0.05, gt=0, description="fp16: largest allowed |fp16 - fp32| per output, "
                                                          "relative to max(1, largest |fp32| value)")
    fp16_samples: int = Field(256, ge=1, description="fp16: dev samples checked for overflow and divergence")
    layout: Literal["bertedge", "transformers.js"] | None = Field(
        None, description="transformers.js: also lay the bundle out for @huggingface/transformers "
                          "(onnx/model_quantized.onnx or onnx/model_fp16.onnx); default: the input bundle's layout")
    with_tokenizer: bool | None = Field(
        None, description="Also write model_with_tokenizer.onnx for the quantized model (raw text in, label out; "
                          "needs bertedge[tokenizer]); default: when the input bundle has one")

    @model_validator(mode="after")
    def _check(self):
        if self.mode == "auto" and not self.evaluate:
            raise ValueError("mode=auto needs evaluate=True (the gate compares dev metrics)")
        if self.engine == "inc":
            if self.mode == "fp16":
                raise ValueError("engine inc quantizes to int8 only (fp16 is an ONNX Runtime mode)")
            fields = type(self).model_fields
            given = [name for name in fields if name not in SHARED_FIELDS
                     and getattr(self, name) != fields[name].get_default(call_default_factory=True)]
            if given:
                raise ValueError(f"{given[0]} applies to the onnxruntime engine only (Neural Compressor picks its "
                                 "own scheme); drop it, or use engine onnxruntime on the exported bundle")
        return self

    def inc_config(self):
        """The same request as Neural Compressor's config (its own calibration default when none was given)."""
        from .inc import IncQuantizeConfig

        shared = {k: getattr(self, k) for k in SHARED_FIELDS if k != "engine"}
        if "calibration_samples" not in self.model_fields_set:
            shared.pop("calibration_samples")
        return IncQuantizeConfig.model_validate(shared)
