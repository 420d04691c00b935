"""ONNX Runtime int8: the schemes to try for a config, one quantization (dynamic or static QDQ; fp16 through
.fp16), graph counts, the calibration reader, the sensitivity analysis and an interleaved timer. No artifacts
or manifests here.

Every function takes and returns plain paths; callers run them inside the artifact's temp dir
(`work_dir`) so nothing ONNX Runtime writes (shape-inferred copies, the calibration-augmented
model) lands in the working directory or in /tmp.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ...errors import ConfigError, QuantizationError
from .fp16 import convert_fp16
from .schemes import (
    DYNAMIC_OP_TYPES,
    FP16_KEEP_FP32,
    PRESETS,
    QUANT_OP_TYPES,
    STATIC_OP_TYPES,
    STATIC_TAIL_OP_TYPES,
    Preset,
    Scheme,
    detect_preset,
)

# ----------------------------------------------------------------------------- graph facts


def op_counts(model_path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def runtime_scale_ops(counts: dict[str, int]) -> list[str]:
    """The ops of an op histogram that compute activation scales at run time (batch-dependent outputs)."""
    from ...runtime import RUNTIME_SCALE_OPS

    return sorted(op for op, n in counts.items() if n and op in RUNTIME_SCALE_OPS)


def quantized_node_counts(counts: dict[str, int]) -> dict[str, int]:
    """The quantization-related part of an op histogram, plus the number of QDQ pairs."""
    out = {op: n for op, n in counts.items() if op in QUANT_OP_TYPES or op.startswith("QLinear")}
    if counts.get("QuantizeLinear") or counts.get("DequantizeLinear"):
        out["qdq_pairs"] = min(counts.get("QuantizeLinear", 0), counts.get("DequantizeLinear", 0))
    return out


def fp16_initializers(model_path: Path) -> int:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return sum(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def graph_precision(model_path: Path) -> str | None:
    """'int8' or 'fp16' when the graph is already reduced-precision, else None."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if ops & QUANT_OP_TYPES:
        return "int8"
    types = collections.Counter(t.data_type for t in model.graph.initializer)
    if types[onnx.TensorProto.FLOAT16] > types[onnx.TensorProto.FLOAT]:
        return "fp16"
    return None


# Which input of each op type carries the weight that quantization turns into integers.
WEIGHT_INPUT = {"MatMul": (1,), "Gather": (0,), "Attention": (1,), "EmbedLayerNormalization": (2, 3, 4),
                "Gemm": (1,), "Conv": (1,)}


def weighted_nodes(model_path: Path, scheme: Scheme) -> list[str]:
    """Nodes with a constant weight that `scheme` turns into integer ops (MatMul with a constant B,
    Gather over an embedding table, Attention, EmbedLayerNormalization), excluded ones left out."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = []
    op_types = set(scheme.op_types)
    if scheme.mode == "dynamic" and "MatMul" in op_types:
        op_types.add("Gemm")  # dynamic quantization rewrites Gemm as MatMul + Add first
    for node in model.graph.node:
        if node.op_type not in op_types or node.name in scheme.exclude_nodes:
            continue
        slots = WEIGHT_INPUT.get(node.op_type, ())
        if any(i < len(node.input) and node.input[i] in weights for i in slots):
            names.append(node.name)
    return names


def node_names(model_path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {n.name: n.op_type for n in model.graph.node}


# Outputs of com.microsoft fusion ops that are not float (op type -> output index -> type).
_CONTRIB_NON_FLOAT = {"EmbedLayerNormalization": {1: "INT32"}}


def typed_copy(model_in: Path, model_out: Path) -> int:
    """Write `model_in` with a value_info for every tensor, including outputs of fused ops.

    ONNX shape inference does not know com.microsoft ops (Attention, SkipLayerNormalization,
    BiasGelu, ...), so their outputs get no type, and the static calibrator silently skips every
    tensor without one: MatMul activations behind a SkipLayerNormalization would never be
    quantized (weight-only DQ, no speed-up). Fusion outputs are float except the ones listed in
    `_CONTRIB_NON_FLOAT`. Returns the number of value_infos added.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_in)))
    known = {vi.name for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    known |= {t.name for t in model.graph.initializer}
    added = 0
    for node in model.graph.node:
        if node.domain != "com.microsoft":
            continue
        for index, name in enumerate(node.output):
            if not name or name in known:
                continue
            kind = _CONTRIB_NON_FLOAT.get(node.op_type, {}).get(index, "FLOAT")
            model.graph.value_info.append(
                onnx.helper.make_tensor_value_info(name, getattr(onnx.TensorProto, kind), None))
            known.add(name)
            added += 1
    onnx.save(model, str(model_out))
    return added


# ----------------------------------------------------------------------------- running ORT quietly


@contextlib.contextmanager
def ort_workspace(work_dir: Path) -> Iterator[None]:
    """Keep ONNX Runtime's quantizer inside `work_dir` and off stdout.

    Its temp directories follow `tempfile.tempdir`; it prints histogram progress to stdout (which
    carries --json) and logs a pre-processing hint on the root logger at WARNING.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    old_tempdir = tempfile.tempdir
    tempfile.tempdir = str(work_dir)
    old_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        tempfile.tempdir = old_tempdir
        logging.disable(old_disable)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return getattr(QuantType, name)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def quantize_model(model_in: Path, model_out: Path, scheme: Scheme, work_dir: Path, *,
                   calibration_reader=None, calibration_cache: Path | None = None) -> None:
    """Write `model_out`: `model_in` quantized (or converted to fp16) by `scheme`.

    The source graph is expected to be fused already (Attention, SkipLayerNormalization, ...):
    fusions first, so attention becomes QAttention. ONNX shape inference cannot type the outputs
    of com.microsoft ops, so `DefaultTensorType=FLOAT` tells the quantizer what they are (without
    it: "Unable to find data type for weight_name=..."). `quant_pre_process` is not used: its
    symbolic shape inference fails on fused graphs and leaves temp files in the working directory.
    """
    import onnx

    if scheme.mode == "fp16":
        convert_fp16(model_in, model_out, scheme)
        return
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True}
    with ort_workspace(work_dir):
        if scheme.mode == "dynamic":
            # The dynamic quantizer first rewrites each Gemm as "<name>_MatMul" + Add, so an
            # excluded Gemm must be named that way too.
            excluded = [*scheme.exclude_nodes, *(f"{n}_MatMul" for n in scheme.exclude_nodes)]
            quantize_dynamic(model_in, model_out, op_types_to_quantize=list(scheme.op_types),
                             per_channel=scheme.per_channel, reduce_range=scheme.reduce_range,
                             weight_type=_qtype(scheme.weight_type),
                             nodes_to_exclude=excluded, extra_options=extra)
        else:
            if calibration_reader is None and not (calibration_cache and calibration_cache.is_file()):
                raise QuantizationError("static quantization needs calibration data", where="--calibration",
                                        fix="Pass --calibration DATA (e.g. the training data)")
            # One calibration batch per collect pass: peak memory is one batch of activations,
            # whatever the number of samples (ranges and histograms are merged between passes).
            extra["CalibStridedMinMax"] = 1
            # No Q/DQ on MatMul outputs: DQ(A) + DQ(W) -> MatMul then runs as one
            # MatMulIntegerToFloat kernel instead of QLinearMatMul followed by a DequantizeLinear.
            extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
            # Only nodes with a constant weight: activation-only ops (Reshape, Transpose, LayerNorm,
            # activation Gathers) would get Q/DQ pairs that run at inference time.
            nodes = weighted_nodes(model_in, scheme)
            if not nodes:
                raise QuantizationError("no node left to quantize (every candidate node is excluded)",
                                        where="--exclude-nodes / --exclude-op-types",
                                        fix="Exclude fewer nodes or op types")
            quantize_static(model_in, model_out, calibration_reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(scheme.op_types), nodes_to_quantize=nodes,
                            per_channel=scheme.per_channel,
                            reduce_range=scheme.reduce_range, activation_type=_qtype(scheme.activation_type),
                            weight_type=_qtype(scheme.weight_type), nodes_to_exclude=list(scheme.exclude_nodes),
                            calibrate_method=_method(scheme.method), extra_options=extra,
                            calibration_cache_path=calibration_cache)
            _dynamic_tail(model_out, scheme, extra)


def _dynamic_tail(model_path: Path, scheme: Scheme, extra: dict) -> None:
    """Quantize the fused ops QDQ cannot express (`scheme.tail_op_types`) dynamically, in place."""
    from onnxruntime.quantization import quantize_dynamic

    tail = replace(scheme, mode="dynamic", op_types=scheme.tail_op_types)
    if not scheme.tail_op_types or not weighted_nodes(model_path, tail):
        return
    staged = model_path.with_name(model_path.stem + ".tail.onnx")
    quantize_dynamic(model_path, staged, op_types_to_quantize=list(scheme.tail_op_types),
                     per_channel=scheme.per_channel, reduce_range=scheme.reduce_range,
                     weight_type=_qtype(scheme.tail_weight_type), nodes_to_exclude=list(scheme.exclude_nodes),
                     extra_options={k: v for k, v in extra.items() if k == "DefaultTensorType"})
    staged.replace(model_path)


# ----------------------------------------------------------------------------- calibration


class CalibrationReader:
    """Feeds at most `max_samples` features to the calibrator, `batch_size` at a time.

    Features are tokenized lazily per batch. `set_range` + `__len__` let ONNX Runtime calibrate
    one batch per pass (see `CalibStridedMinMax` above); `samples_seen` counts what was served.
    """

    def __init__(self, features: list[dict], encoder, *, max_samples: int, batch_size: int):
        self.features = features[:max_samples]
        self.encoder = encoder
        self.batch_size = batch_size
        self.samples_seen = 0
        self.batches_seen = 0
        self._batches: Iterator[int] = iter(range(len(self)))

    def __len__(self) -> int:
        return (len(self.features) + self.batch_size - 1) // self.batch_size

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches = iter(range(start_index, min(end_index, len(self))))

    def rewind(self) -> None:
        self._batches = iter(range(len(self)))

    def get_next(self) -> dict | None:
        index = next(self._batches, None)
        if index is None:
            return None
        chunk = self.features[index * self.batch_size:(index + 1) * self.batch_size]
        self.samples_seen += len(chunk)
        self.batches_seen += 1
        return self.encoder.collate(chunk)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


# ----------------------------------------------------------------------------- running and timing


def time_models(paths: dict[str, Path], batch: dict[str, np.ndarray], *, rounds: int, warmup: int = 3,
                threads: int | None = None, provider: str = "cpu") -> dict[str, dict]:
    """p50/p90 latency (ms) of each model on `batch`, interleaved round by round (the bench
    harness's timer) so that load changes on a shared machine hit every model alike."""
    from ...bench.latency import interleaved_timings
    from ...bench.stats import summarize
    from ...providers import make_session

    calls: list[list[Callable[[], object]]] = []
    for path in paths.values():
        session = make_session(path, provider, threads=threads)
        feeds = {i.name: batch[i.name] for i in session.get_inputs()}
        calls.append([lambda s=session, f=feeds: s.run(None, f)])  # type: ignore[misc]
    timings = interleaved_timings(calls, warmup=warmup, runs=rounds, duration=None)
    out = {}
    for name, samples in zip(paths, timings):
        stats = summarize(samples)
        out[name] = {"p50_ms": round(stats["p50_ms"], 3), "p90_ms": round(stats["p90_ms"], 3), "runs": stats["n"]}
    return out


def output_error(reference: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]]) -> float:
    """Relative squared error of all outputs, summed over batches: ||q - f||^2 / ||f||^2."""
    num = den = 0.0
    for ref, cand in zip(reference, candidate):
        for key, value in ref.items():
            num += float(np.sum((cand[key].astype(np.float64) - value) ** 2))
            den += float(np.sum(value.astype(np.float64) ** 2))
    return num / den if den else num


@dataclass
class Sensitivity:
    """Leave-one-out sensitivity: error of the scheme minus error with one node kept in fp32."""

    base_error: float
    gains: list[tuple[str, float]] = field(default_factory=list)  # most sensitive first

    def top(self, k: int) -> list[str]:
        return [name for name, gain in self.gains[:k] if gain > 0]

    def record(self, limit: int = 10) -> dict:
        return {"base_error": self.base_error,
                "most_sensitive": [{"node": n, "error_reduction": g} for n, g in self.gains[:limit]]}


# ----------------------------------------------------------------------------- the schemes to try


def preset_for(preset: str | None) -> Preset:
    """The named preset, or the one that matches this CPU."""
    from ...env import cpu_info

    cpu = cpu_info()
    return PRESETS[preset or detect_preset(cpu["flags"], cpu["machine"])]


def base_schemes(config, preset: Preset, model: Path) -> list[Scheme]:
    """The schemes to try for a QuantizeConfig: one for dynamic/static/fp16, the candidate list for auto."""
    nodes = node_names(model)
    unknown = [n for n in config.exclude_nodes if n not in nodes]
    if unknown:
        sample = ", ".join(list(nodes)[:6])
        raise ConfigError(f"no node named {', '.join(repr(u) for u in unknown)} in the graph",
                          where="--exclude-nodes", fix=f"Use node names from model.onnx (e.g. {sample})")
    excluded = tuple(config.exclude_nodes)
    if config.mode == "fp16":
        keep = tuple(dict.fromkeys([*FP16_KEEP_FP32, *config.exclude_op_types]))
        return [Scheme("fp16", keep_fp32_ops=keep, exclude_nodes=excluded)]
    known = set(DYNAMIC_OP_TYPES) | set(STATIC_OP_TYPES) | set(STATIC_TAIL_OP_TYPES)
    bad = [t for t in config.exclude_op_types if t not in known]
    if bad:
        raise ConfigError(f"unknown or unquantized op type {', '.join(repr(b) for b in bad)}",
                          where="--exclude-op-types", fix=f"Choose from: {', '.join(sorted(known))}")

    def ops(default):
        return tuple(t for t in default if t not in config.exclude_op_types)

    reduce = preset.reduce_range if config.reduce_range is None else config.reduce_range
    dynamic = Scheme("dynamic", per_channel=config.per_channel,
                     reduce_range=False if config.reduce_range is None else config.reduce_range,
                     weight_type=preset.weight_type, op_types=ops(DYNAMIC_OP_TYPES), exclude_nodes=excluded)
    static = Scheme("static", per_channel=config.per_channel, reduce_range=reduce,
                    weight_type=preset.static_weight_type, activation_type=preset.static_activation_type,
                    method=config.method, op_types=ops(STATIC_OP_TYPES), exclude_nodes=excluded,
                    tail_op_types=ops(STATIC_TAIL_OP_TYPES), tail_weight_type=preset.weight_type)
    if config.mode == "dynamic":
        return [dynamic]
    if config.mode == "static":
        return [static]
    candidates = [replace(dynamic, per_channel=False), replace(dynamic, per_channel=True),
                  replace(dynamic, per_channel=True, reduce_range=True)]
    if config.calibration:
        candidates += [replace(static, per_channel=False), replace(static, per_channel=True)]
    return list(dict.fromkeys(candidates))
