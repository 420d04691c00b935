"""ONNX-level mechanics of the quantize stage: schemes, presets, one quantization, graph counts,
the calibration reader, and an interleaved timer. No artifacts or manifests here.

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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import QuantizationError

# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """Integer types per target CPU. Dynamic quantization always uses uint8 activations."""

    name: str
    weight_type: str  # "QUInt8" or "QInt8"
    static_weight_type: str
    static_activation_type: str
    reduce_range: bool
    requires_flags: tuple[str, ...]
    vnni: bool
    note: str


PRESETS: dict[str, Preset] = {
    # Without VNNI the AVX2 u8*s8 kernel (vpmaddubsw) can saturate its 16-bit sums; u8 weights
    # avoid that path and were measured closest to fp32 here (cosine 0.992 vs 0.965 for s8).
    "avx2": Preset("avx2", "QUInt8", "QInt8", "QUInt8", True, ("avx2",), False,
                   "AVX2 without VNNI: uint8 weights for dynamic; static uses int8 weights with reduce_range"),
    "avx512": Preset("avx512", "QInt8", "QInt8", "QUInt8", False, ("avx512f", "avx512bw"), False,
                     "AVX-512 without VNNI: int8 weights, uint8 activations"),
    "avx512_vnni": Preset("avx512_vnni", "QInt8", "QInt8", "QUInt8", False, ("avx512_vnni",), True,
                          "VNNI (AVX512-VNNI or AVX-VNNI): int8 weights, uint8 activations, full 8-bit range"),
    "arm64": Preset("arm64", "QInt8", "QInt8", "QUInt8", False, ("asimd",), False,
                    "ARM64 NEON (dot-product kernels where the CPU has asimddp): int8 weights"),
}

SPEEDUP_CAVEAT = (
    "int8 speed-ups depend on the CPU: VNNI/AMX (avx512_vnni, avx_vnni, amx_int8) or ARM dot-product "
    "CPUs gain the most; AVX2-only CPUs gain less; on a GPU use the fp16 mode instead. Re-run "
    "`bertedge bench` on the deployment CPU before relying on the numbers recorded here.")


def detect_preset(cpu_flags: list[str], machine: str) -> str:
    """The preset that matches this CPU: VNNI > AVX-512 > ARM64 > AVX2."""
    flags = set(cpu_flags)
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "avx512_vnni"
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512"
    if machine.lower() in ("aarch64", "arm64"):
        return "arm64"
    return "avx2"


# ----------------------------------------------------------------------------- schemes

# Dynamic: ONNX Runtime's integer-op registry. On a fused graph Attention -> QAttention and
# EmbedLayerNormalization -> QEmbedLayerNormalization (int8 embedding tables: most of the size).
DYNAMIC_OP_TYPES = ("MatMul", "Attention", "EmbedLayerNormalization", "Gather")
# Static QDQ: only weight MatMuls. ONNX Runtime's default QDQ list also fake-quantizes
# LayerNorm, Reshape/Transpose, Gather and activation x activation MatMuls, which leaves
# Q/DQ pairs running at inference time: slower and less accurate than dynamic here.
STATIC_OP_TYPES = ("MatMul", "Gather")
# The fused ops that QDQ cannot express (no QDQ form for com.microsoft Attention or
# EmbedLayerNormalization): after the static pass they get ONNX Runtime's dynamic integer form
# (QAttention, QEmbedLayerNormalization). Without this the QKV weights and the embedding tables
# (about 2/3 of MiniLM-L6's bytes) stayed fp32 and a "static int8" bundle was 67 MB, not 23.
STATIC_TAIL_OP_TYPES = ("Attention", "EmbedLayerNormalization")

QUANT_OP_TYPES = frozenset({
    "MatMulInteger", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLinear", "QuantizeLinear",
    "DequantizeLinear", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QGemm", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "ConvInteger", "QLinearConv", "MatMulNBits", "QOrderedMatMul",
})


@dataclass(frozen=True)
class Scheme:
    """One way to quantize a graph: what the gate compares, and what the manifest records."""

    mode: str  # dynamic | static | fp16
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: str = "QInt8"
    activation_type: str = "QUInt8"
    method: str = "minmax"
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    keep_fp32_ops: tuple[str, ...] = ()
    # static only: op types quantized dynamically after the QDQ pass, and their weight type
    tail_op_types: tuple[str, ...] = ()
    tail_weight_type: str = "QUInt8"

    @property
    def name(self) -> str:
        if self.mode == "fp16":
            return "fp16"
        parts = [self.mode]
        if self.mode == "static":
            parts.append(self.method)
        parts.append("per-channel" if self.per_channel else "per-tensor")
        if self.reduce_range:
            parts.append("reduce-range")
        name = " ".join(parts)
        if self.exclude_nodes:
            name += f" +{len(self.exclude_nodes)} fp32 node{'s' if len(self.exclude_nodes) > 1 else ''}"
        return name

    def record(self) -> dict:
        data = asdict(self)
        data["name"] = self.name
        for key in ("op_types", "exclude_nodes", "keep_fp32_ops", "tail_op_types"):
            data[key] = list(data[key])
        return data

    def with_exclusions(self, nodes: list[str]) -> Scheme:
        return replace(self, exclude_nodes=tuple(dict.fromkeys([*self.exclude_nodes, *nodes])))


# ----------------------------------------------------------------------------- graph facts


def op_counts(model_path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def runtime_scale_ops(counts: dict[str, int]) -> list[str]:
    """The ops of an op histogram that compute activation scales at run time (batch-dependent outputs)."""
    from ..runtime import RUNTIME_SCALE_OPS

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
        _convert_fp16(model_in, model_out, scheme)
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


FP16_KEEP_FP32 = ("LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax")


def _fp16_block_lists(scheme: Scheme) -> tuple[list[str], list[str]]:
    """The op types and node names the fp16 conversion keeps in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return list(DEFAULT_OP_BLOCK_LIST) + list(scheme.keep_fp32_ops), list(scheme.exclude_nodes)


def _convert_fp16(model_in: Path, model_out: Path, scheme: Scheme) -> None:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(model_in)))
    op_block_list, node_block_list = _fp16_block_lists(scheme)
    model.convert_float_to_float16(keep_io_types=True, op_block_list=op_block_list, node_block_list=node_block_list)
    model.save_model_to_file(str(model_out))


# ----------------------------------------------------------------------------- fp16 validation

FP16_MAX = 65504.0  # the largest finite float16; anything larger becomes inf


@dataclass
class Fp16Tensor:
    """A tensor of the fp32 graph that the fp16 graph holds in float16."""

    name: str  # its name in the fp32 graph
    node: str | None  # the node that computes it in fp16 (None: an fp32 node's output cast to fp16)
    op_type: str | None
    consumers: list[str] = field(default_factory=list)  # the fp16 nodes that read it


def fp16_tensors(fp32_model: Path, fp16_model: Path, scheme: Scheme) -> dict[str, Fp16Tensor]:
    """Which tensors of the fp32 graph become float16 in `fp16_model` (converted by `scheme`).

    Outputs of converted nodes are matched to the fp32 graph by node name and output index (the
    converter renames graph outputs); a Cast to float16 inserted after an fp32 node carries that
    node's original output name. Non-float tensors are listed too: callers look at float values only.
    """
    import onnx

    source = onnx.load(str(fp32_model), load_external_data=False).graph
    converted = onnx.load(str(fp16_model), load_external_data=False).graph
    blocked_ops, blocked_nodes = (set(x) for x in _fp16_block_lists(scheme))
    originals = {n.name: n for n in source.node if n.name}
    produced = {o for n in source.node for o in n.output if o}

    def in_fp16(node) -> bool:
        return node.name in originals and node.op_type not in blocked_ops and node.name not in blocked_nodes

    held: dict[str, Fp16Tensor] = {}  # by name in the fp16 graph
    for node in converted.node:
        if in_fp16(node):
            source_outputs = originals[node.name].output
            for i, name in enumerate(node.output):
                if name and i < len(source_outputs) and source_outputs[i]:
                    held[name] = Fp16Tensor(source_outputs[i], node.name, node.op_type)
        elif node.op_type == "Cast" and node.name not in originals and node.output[0] in produced and \
                any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in node.attribute):
            held[node.output[0]] = Fp16Tensor(node.output[0], None, None)
    for node in converted.node:
        if in_fp16(node):
            for name in node.input:
                if name in held and node.name not in held[name].consumers:
                    held[name].consumers.append(node.name)
    return {t.name: t for t in held.values()}


class Fp16RangeProbe:
    """The fp32 model with every tensor that fp16 would hold exposed as an extra output.

    `forward` returns the model's own outputs (the fp32 reference) and records the largest
    |value| of each exposed float tensor: values beyond `FP16_MAX` overflow to inf in fp16 on any
    device, even where a CPU run of the fp16 graph hides it by computing some ops in fp32.
    """

    def __init__(self, fp32_model: Path, tensors: list[str], work_dir: Path, provider: str = "cpu"):
        import onnx

        from ..providers import make_session

        model = onnx.load(str(fp32_model))
        self.outputs = [o.name for o in model.graph.output]
        self.tensors = [t for t in dict.fromkeys(tensors) if t not in self.outputs]
        for name in self.tensors:
            model.graph.output.append(onnx.ValueInfoProto(name=name))  # ORT infers the type
        path = work_dir / "fp16-range-probe.onnx"
        onnx.save(model, str(path))
        self.session = make_session(path, provider)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.maxima: dict[str, float] = {}

    def forward(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs + self.tensors, {n: batch[n] for n in self.inputs})
        own, exposed = values[:len(self.outputs)], values[len(self.outputs):]
        for name, value in zip(self.outputs + self.tensors, own + exposed):
            if value.dtype.kind == "f":
                magnitude = np.abs(value[~np.isnan(value)].astype(np.float64))
                self.maxima[name] = max(self.maxima.get(name, 0.0), float(np.max(magnitude, initial=0.0)))
        return dict(zip(self.outputs, own))

    def overflows(self, held: dict[str, Fp16Tensor]) -> dict[str, float]:
        """Tensors held in fp16 whose fp32 values went beyond the fp16 range, largest first."""
        over = {n: v for n, v in self.maxima.items() if n in held and v > FP16_MAX}
        return dict(sorted(over.items(), key=lambda kv: -kv[1]))


def fp16_nodes_to_keep(held: dict[str, Fp16Tensor], overflowing: list[str]) -> list[str]:
    """The fp16 nodes that must run in fp32 so that no overflowing tensor is ever stored in fp16:
    each one's producer and every fp16 node that reads it (it would be cast back to fp16 for them)."""
    nodes: list[str] = []
    for name in overflowing:
        tensor = held[name]
        nodes += ([tensor.node] if tensor.node else []) + tensor.consumers
    return list(dict.fromkeys(nodes))


def fp16_clipped_weights(fp32_model: Path, fp16_model: Path) -> dict[str, float]:
    """Float weights beyond the fp16 range that the conversion clipped to +-FP16_MAX (name -> max |w|)."""
    import onnx
    from onnx import numpy_helper

    halves = {t.name for t in onnx.load(str(fp16_model)).graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT16}
    clipped = {}
    for tensor in onnx.load(str(fp32_model)).graph.initializer:
        if tensor.name in halves and tensor.data_type == onnx.TensorProto.FLOAT:
            peak = float(np.max(np.abs(numpy_helper.to_array(tensor)), initial=0.0))
            if peak > FP16_MAX:
                clipped[tensor.name] = peak
    return clipped


def compare_fp16_outputs(reference: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]],
                         tolerance: float) -> dict[str, dict]:
    """Per output: values fp16 made non-finite where fp32 is finite, and the largest |fp16 - fp32|
    over the rest, allowed up to `tolerance` x max(1, largest |fp32|)."""
    report: dict[str, dict] = {}
    for name in reference[0]:
        diff = scale = 0.0
        non_finite = 0
        for ref, cand in zip(reference, candidate):
            r, c = ref[name].astype(np.float64), cand[name].astype(np.float64)
            finite = np.isfinite(r)
            broken = finite & ~np.isfinite(c)
            non_finite += int(broken.sum())
            both = finite & ~broken
            if both.any():
                diff = max(diff, float(np.max(np.abs(r[both] - c[both]))))
            if finite.any():
                scale = max(scale, float(np.max(np.abs(r[finite]))))
        limit = tolerance * max(1.0, scale)
        report[name] = {"max_abs_diff": diff, "max_abs_value": scale, "non_finite": non_finite,
                        "limit": limit, "ok": non_finite == 0 and diff <= limit}
    return report


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
    from ..bench.latency import interleaved_timings
    from ..bench.stats import summarize
    from ..providers import make_session

    calls = []
    for path in paths.values():
        session = make_session(path, provider, threads=threads)
        feeds = {i.name: batch[i.name] for i in session.get_inputs()}
        calls.append([lambda s=session, f=feeds: s.run(None, f)])
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
