"""What a quantization is: the integer types per target CPU (presets), the op types each mode quantizes, and
a `Scheme` (one way to quantize a graph, what the accuracy gate compares and the manifest records)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

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

# fp16: the op types kept in fp32 on top of ONNX Runtime's own block list (normalisations and softmax overflow).
FP16_KEEP_FP32 = ("LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax")
