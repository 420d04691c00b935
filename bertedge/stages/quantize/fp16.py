"""fp16: the conversion of an fp32 graph, and the checks that it neither overflows nor diverges.

Overflow is judged on the fp32 activations of every tensor the fp16 graph holds in float16 (beyond +-65504
is inf in fp16 on any device), not only on the fp16 outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .schemes import Scheme


def fp16_block_lists(scheme: Scheme) -> tuple[list[str], list[str]]:
    """The op types and node names the fp16 conversion keeps in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return list(DEFAULT_OP_BLOCK_LIST) + list(scheme.keep_fp32_ops), list(scheme.exclude_nodes)


def convert_fp16(model_in: Path, model_out: Path, scheme: Scheme) -> None:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(model_in)))
    op_block_list, node_block_list = fp16_block_lists(scheme)
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
    blocked_ops, blocked_nodes = (set(x) for x in fp16_block_lists(scheme))
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

        from ...providers import make_session

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


def listing(values: dict[str, float], label: str, limit: int = 3) -> str:
    """'a (max |x| 7e+04), b (...) and 3 more': the first `limit` of `values` for a one-line message."""
    shown = ", ".join(f"{name} ({label} {value:.3g})" for name, value in list(values.items())[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def fp16_fix(held: dict[str, Fp16Tensor], overflow: dict[str, float], clipped: dict[str, float]) -> str:
    """What to keep in fp32: the nodes around the overflowing tensors when they are few, else op types."""
    nodes = fp16_nodes_to_keep(held, list(overflow))
    op_types = list(dict.fromkeys(t.op_type for t in held.values() if t.node in nodes))
    if nodes and len(nodes) <= 8:
        keep = f"--exclude-nodes {','.join(nodes)} (or --exclude-op-types {','.join(op_types)})"
    elif op_types:
        keep = f"--exclude-op-types {','.join(op_types)}"
    else:
        keep = "--exclude-op-types (e.g. MatMul,Attention) or --exclude-nodes"
    text = f"Keep more ops in fp32 with {keep}"
    if not overflow and not clipped:
        text += ", raise --fp16-tolerance if the difference is acceptable"
    return text + ", or stay with the fp32 bundle"
