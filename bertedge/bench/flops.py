"""FLOPs per sequence, and the CPU's estimated peak, for achieved-GFLOP/s figures.

What is counted: matrix multiplications only (projections, attention scores and context,
FFN, pooler, task head), at 2 FLOPs per multiply-add. Element-wise work (LayerNorm, GELU,
softmax, embeddings lookups) is left out; it is well under 1% of a BERT encoder's FLOPs and
bandwidth-bound anyway. An int8 model does the same number of operations as its fp32 parent,
so its FLOPs are counted the same way (they are int8 ops, compared with the int8 peak).

FLOPs of one sequence of length s are exactly a quadratic in s (projections and FFN grow with
s, attention scores and context with s^2, the pooler and sequence head are constant), so we
count at three lengths and solve for the coefficients: `FlopModel(s) = a*s^2 + b*s + c`.

- PyTorch artifacts: `torch.utils.flop_counter.FlopCounterMode` over a real forward pass.
- ONNX bundles: the stored graph with the inputs fixed to [1, s], shapes propagated by ONNX
  Runtime's symbolic shape inference, then 2*M*N*K per MatMul-like node (MatMul, Gemm,
  MatMulInteger, DynamicQuantizeMatMul, QLinearMatMul, FusedMatMul, MatMulIntegerToFloat) and
  projections + 4*s^2*h per fused Attention/QAttention/MultiHeadAttention node.

Peak (documented estimate, per core per cycle, times cores used times clock):
  fp32 FLOPs/cycle = SIMD fp32 lanes (16 AVX-512, 8 AVX/AVX2, 4 SSE/NEON)
                     x 2 (a fused multiply-add is two FLOPs; without FMA one mul + one add issue per cycle)
                     x FMA units (assumed 2 with AVX2/AVX-512 on current server cores; 1 without FMA)
  int8 ops/cycle   = fp32 FLOPs/cycle x 4 with VNNI / dot-product instructions (avx512_vnni,
                     avx_vnni, asimddp: 4 int8 multiply-adds per 32-bit lane in one instruction)
                     x 4/3 with AVX2 only (vpmaddubsw + vpmaddwd + vpaddd: 4 multiply-adds per lane
                     in 3 instructions, against 1 per lane in one FMA)
The clock is /proc/cpuinfo's "cpu MHz" (base clock on most VMs; turbo makes the real peak higher,
so fractions above 1 are possible and mean the estimate is conservative).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import mul
from pathlib import Path

from .targets import ONNX, TORCH_INC, Target

FLOP_PROBE_LENGTHS = (8, 16, 32)


@dataclass(frozen=True)
class FlopModel:
    """FLOPs of one sequence of length s: a*s^2 + b*s + c."""

    a: float
    b: float
    c: float

    def __call__(self, seq_len: float) -> float:
        return self.a * seq_len * seq_len + self.b * seq_len + self.c

    @classmethod
    def fit(cls, points: dict[int, float]) -> FlopModel:
        """Exact quadratic through three (length, flops) points (Lagrange form, no numpy)."""
        if len(points) != 3:
            raise ValueError("a quadratic needs exactly three points")
        (x0, y0), (x1, y1), (x2, y2) = sorted(points.items())
        d0, d1, d2 = (x0 - x1) * (x0 - x2), (x1 - x0) * (x1 - x2), (x2 - x0) * (x2 - x1)
        a = y0 / d0 + y1 / d1 + y2 / d2
        b = -(y0 * (x1 + x2) / d0 + y1 * (x0 + x2) / d1 + y2 * (x0 + x1) / d2)
        c = y0 * x1 * x2 / d0 + y1 * x0 * x2 / d1 + y2 * x0 * x1 / d2
        return cls(round(a, 6), round(b, 6), round(c, 6))

    def record(self) -> dict:
        return {"a": self.a, "b": self.b, "c": self.c, "formula": "a*s^2 + b*s + c"}


# ----------------------------------------------------------------------------- PyTorch


def torch_flops(model, seq_len: int, input_names: tuple[str, ...] = ("input_ids", "attention_mask",
                                                                      "token_type_ids")) -> int:
    """Matmul FLOPs of one forward pass of a transformers model on one sequence of `seq_len` tokens."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.full((1, seq_len), 5, dtype=torch.long)
    inputs = {"input_ids": ids}
    if "attention_mask" in input_names:
        inputs["attention_mask"] = torch.ones_like(ids)
    if "token_type_ids" in input_names:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    with torch.no_grad(), counter:
        model(**inputs)
    return int(counter.get_total_flops())


def _cpu_attention_formulas() -> dict:
    """FlopCounterMode knows the CUDA fused-attention kernels but not the CPU one that sdpa picks."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_flash(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: cpu_flash} if op is not None else {}


def torch_flop_model(model, input_names=("input_ids", "attention_mask", "token_type_ids")) -> FlopModel:
    return FlopModel.fit({s: torch_flops(model, s, input_names) for s in FLOP_PROBE_LENGTHS})


# ----------------------------------------------------------------------------- ONNX

MATMUL_OPS = {"MatMul", "MatMulInteger", "FusedMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
ATTENTION_OPS = {"Attention", "QAttention"}


def _prod(values) -> int:
    return reduce(mul, values, 1)


def _infer_shapes(model):
    """ONNX Runtime's symbolic shape inference, taught the quantized twins of the ops it knows
    (same input layout for the inputs it reads), and without its habit of saving a temp model
    into the working directory when some shape stays unknown."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    class Inference(SymbolicShapeInference):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.dispatcher_.setdefault("QEmbedLayerNormalization", self._infer_EmbedLayerNormalization)
            self.dispatcher_.setdefault("QAttention", self._infer_Attention)
            for op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
                self.dispatcher_.setdefault(op, self._infer_MatMul)

    inference = Inference(2**31 - 1, True, True, 0)
    inference._preprocess(model)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_


def onnx_flops(model_path: str | Path, seq_len: int) -> int:
    """Matmul FLOPs of the stored ONNX graph for one sequence of `seq_len` tokens."""
    import onnx

    model = onnx.load(str(model_path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            dim.ClearField("dim_param")
            dim.dim_value = 1 if i == 0 else seq_len
    inferred = _infer_shapes(model)
    shapes: dict[str, list[int] | None] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)

    def shape(name: str) -> list[int]:
        found = shapes.get(name)
        if not found or any(d is None for d in found):
            raise ValueError(f"no static shape for '{name}'")
        return found

    total = 0
    for node in graph.node:
        op = node.op_type
        if op in MATMUL_OPS or op == "QLinearMatMul":
            a_name, b_name = (node.input[0], node.input[3]) if op == "QLinearMatMul" else node.input[:2]
            a, b = shape(a_name), shape(b_name)
            k = a[-1]
            rows = _prod(a[:-1]) if len(a) > 1 else 1
            # Batched activation x activation (attention): batch dims broadcast from both sides.
            batch = max(_prod(a[:-2]), _prod(b[:-2])) if len(a) > 2 or len(b) > 2 else 1
            if len(a) > 2 or len(b) > 2:
                rows = a[-2] * batch if len(a) >= 2 else batch
            total += 2 * rows * k * b[-1]
        elif op == "Gemm":
            a, b = shape(node.input[0]), shape(node.input[1])
            attrs = {at.name: at.i for at in node.attribute if at.name in ("transA", "transB")}
            m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
            n = b[0] if attrs.get("transB") else b[1]
            total += 2 * m * k * n
        elif op in ATTENTION_OPS:
            x, w = shape(node.input[0]), shape(node.input[1])
            batch, seq, hidden = x
            sizes = [at.ints for at in node.attribute if at.name == "qkv_hidden_sizes"]
            q_h, _k_h, v_h = list(sizes[0]) if sizes and sizes[0] else [w[1] // 3] * 3
            total += 2 * batch * seq * hidden * w[1]  # the fused Q, K, V projection
            total += 2 * batch * seq * seq * q_h + 2 * batch * seq * seq * v_h  # scores + context
        elif op == "MultiHeadAttention":
            q = shape(node.input[0])
            kv = shape(node.input[1]) if len(node.input) > 1 and node.input[1] else q
            total += 2 * q[0] * q[1] * kv[1] * q[2] * 2
    return int(total)


def onnx_flop_model(model_path: str | Path) -> FlopModel:
    return FlopModel.fit({s: onnx_flops(model_path, s) for s in FLOP_PROBE_LENGTHS})


# ----------------------------------------------------------------------------- peak


def peak_gflops(cpu: dict, cores: int, *, int8: bool = False, fma_units: int | None = None) -> dict:
    """Estimated peak GFLOP/s (fp32) or GOP/s (int8) of `cores` cores; see the module docstring."""
    flags = set(cpu.get("flags") or [])
    if "avx512f" in flags:
        lanes, isa = 16, "avx512"
    elif "avx2" in flags or "avx" in flags:
        lanes, isa = 8, "avx2" if "avx2" in flags else "avx"
    else:
        lanes, isa = 4, "sse/neon"
    has_fma = "fma" in flags or "asimd" in flags or "avx512f" in flags
    units = fma_units if fma_units is not None else (2 if has_fma and lanes >= 8 else 1)
    per_cycle = lanes * 2 * units
    factor, int8_path = 1.0, None
    if int8:
        if flags & {"avx512_vnni", "avx_vnni", "asimddp"}:
            factor, int8_path = 4.0, "vnni/dot-product: 4x fp32"
        elif "avx2" in flags or "avx512bw" in flags:
            factor, int8_path = 4.0 / 3.0, "avx2 vpmaddubsw+vpmaddwd+vpaddd: 4/3 x fp32"
        else:
            factor, int8_path = 1.0, "no int8 SIMD dot product: 1x fp32"
    ghz = (cpu.get("mhz") or 0) / 1000.0
    peak = cores * ghz * per_cycle * factor if ghz else None
    return {
        "precision": "int8" if int8 else "fp32",
        "isa": isa,
        "fp32_lanes": lanes,
        "fma_units": units,
        "fp32_flops_per_cycle_per_core": per_cycle,
        "int8_factor": factor if int8 else None,
        "int8_path": int8_path,
        "ghz": round(ghz, 3) if ghz else None,
        "cores": cores,
        "peak_gflops": round(peak, 1) if peak else None,
    }


def flop_model_of(target: Target, runner):
    """The target's FLOP model (None when it cannot be counted: a compiled int8 program, or an error)."""
    from .. import log

    try:
        if target.backend == ONNX:
            return onnx_flop_model(target.model_file)
        if target.backend == TORCH_INC:
            return None  # a compiled int8 program: FlopCounterMode does not see its kernels
        return getattr(runner, "flop_model", None) or torch_flop_model(runner.model)
    except Exception as exc:  # noqa: BLE001 - FLOPs are a nice-to-have; never fail a benchmark over them
        log.warning(f"bench: cannot count FLOPs of {target.name} ({type(exc).__name__}: {exc}); reported as null")
        return None
