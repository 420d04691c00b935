"""What gets benchmarked: a `Target` is one model on one backend (an ONNX bundle on ONNX Runtime,
a PyTorch artifact eager fp32, or its torch dynamic-int8 variant), with the facts reports need
(task, dev metrics, file size, max positions). Built from artifact paths, or directly for models
that are not bertedge artifacts (the optimum peer path in benchmarks/baseline_sst2.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import Artifact, dir_size, load_artifact, require_task_model
from ..errors import BenchError

ONNX = "onnxruntime"
TORCH = "torch"
TORCH_INT8 = "torch-int8"
TORCH_INC = "torch-inc"  # a Neural Compressor int8 program (quantize --engine inc), run under torch.compile
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INT8_OPS = {"MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "QLinearMatMul", "QGemm",
            "MatMulIntegerToFloat", "QEmbedLayerNormalization", "DequantizeLinear"}


@dataclass
class Target:
    name: str
    backend: str  # onnxruntime | torch | torch-int8
    path: Path  # artifact (or model) directory
    task: str
    model_file: Path | None = None  # the .onnx file of an ONNX target
    tokenizer_dir: Path | None = None
    metrics: dict = field(default_factory=dict)
    stage: str = "?"
    settings: dict = field(default_factory=dict)
    data_artifact: Path | None = None  # whose manifest names the dev data for --real-lengths
    size_bytes: int = 0
    artifact_bytes: int = 0
    max_positions: int | None = None
    precision: str = "fp32"
    parameters: int | None = None

    def record(self) -> dict[str, Any]:
        return {"artifact": self.name, "path": str(self.path), "backend": self.backend, "task": self.task,
                "stage": self.stage, "precision": self.precision, "model_file": str(self.model_file or ""),
                "size_bytes": self.size_bytes, "artifact_bytes": self.artifact_bytes,
                "max_positions": self.max_positions, "parameters": self.parameters, "metrics": self.metrics}


def onnx_model_bytes(model_file: Path) -> int:
    """The .onnx file plus any external-data files next to it that it references."""
    import onnx

    size = model_file.stat().st_size
    model = onnx.load(str(model_file), load_external_data=False)
    seen = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                external = model_file.parent / entry.value
                if external.exists():
                    size += external.stat().st_size
    return size


def onnx_facts(model_file: Path) -> dict:
    """Max positions (from the position-embedding table) and precision of an ONNX graph."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    dims = {init.name: list(init.dims) for init in model.graph.initializer}
    max_positions = None
    for node in model.graph.node:  # fused graphs: EmbedLayerNormalization(ids, segment, word, position, ...)
        fused = node.op_type in ("EmbedLayerNormalization", "QEmbedLayerNormalization")
        if fused and len(node.input) > 3 and node.input[3] in dims:
            max_positions = dims[node.input[3]][0]
    if max_positions is None:
        for name, shape in dims.items():
            if "position_embeddings" in name and len(shape) == 2:
                max_positions = shape[0]
    weight_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    parameters = 0
    for init in model.graph.initializer:  # weights and biases; scalars (scales, zero points) are not parameters
        numel = 1
        for d in init.dims:
            numel *= d
        if init.data_type in weight_types and len(init.dims) >= 1 and numel > 1:
            parameters += numel
    ops = {node.op_type for node in model.graph.node}
    precision = "int8" if ops & INT8_OPS else "fp32"
    if precision == "fp32" and any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        precision = "fp16"
    return {"max_positions": max_positions, "precision": precision, "parameters": parameters}


def hf_max_positions(directory: Path) -> int | None:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def onnx_target(name: str, model_file: str | Path, *, task: str, tokenizer_dir: str | Path | None = None,
                metrics: dict | None = None, stage: str = "?", data_artifact: str | Path | None = None,
                settings: dict | None = None) -> Target:
    """A target for any ONNX model with a tokenizer.json next to it (or in `tokenizer_dir`)."""
    model_file = Path(model_file)
    if not model_file.is_file():
        raise BenchError("no such ONNX file", where=str(model_file), fix="Check the path")
    facts = onnx_facts(model_file)
    max_positions = hf_max_positions(model_file.parent) or facts["max_positions"]
    return Target(name=name, backend=ONNX, path=model_file.parent, task=task, model_file=model_file,
                  tokenizer_dir=Path(tokenizer_dir) if tokenizer_dir else model_file.parent,
                  metrics=dict(metrics or {}), stage=stage, settings=dict(settings or {}),
                  data_artifact=Path(data_artifact) if data_artifact else None,
                  size_bytes=onnx_model_bytes(model_file), artifact_bytes=dir_size(model_file.parent),
                  max_positions=max_positions, precision=facts["precision"], parameters=facts["parameters"])


def artifact_targets(artifact: Artifact, name: str, *, torch_int8: bool = False) -> list[Target]:
    """The targets of one artifact: its ONNX model, or its torch fp32 (+ int8) variants."""
    common: dict[str, Any] = {"task": artifact.task, "metrics": artifact.metrics, "stage": artifact.stage,
              "settings": dict(artifact.manifest.get("settings") or {}), "data_artifact": artifact.path}
    if artifact.is_bundle:
        return [onnx_target(name, artifact.file("model.onnx"), tokenizer_dir=artifact.path, **common)]
    program = artifact.manifest.get("torch_program")
    if program:
        model_file = artifact.file(program["file"])
        return [Target(name=name, backend=TORCH_INC, path=artifact.path, tokenizer_dir=artifact.path,
                       max_positions=hf_max_positions(artifact.path), precision="int8",
                       size_bytes=model_file.stat().st_size if model_file.exists() else 0,
                       artifact_bytes=dir_size(artifact.path), **common)]
    weights = [artifact.file(f) for f in WEIGHT_FILES if artifact.file(f).exists()]
    if not weights:
        raise BenchError("the artifact has neither model.onnx nor transformers weights "
                         f"({' or '.join(WEIGHT_FILES)})", where=str(artifact.path),
                         fix="Pass a bundle (bertedge export) or a PyTorch artifact (bertedge finetune)")
    base: dict[str, Any] = {"path": artifact.path, "tokenizer_dir": artifact.path, "max_positions": hf_max_positions(artifact.path),
            "size_bytes": sum(w.stat().st_size for w in weights), "artifact_bytes": dir_size(artifact.path), **common}
    targets = [Target(name=name, backend=TORCH, **base)]
    if torch_int8:
        # Size is measured after quantization (serialised state dict), see backends.TorchRunner.
        targets.append(Target(name=f"{name}+torch-int8", backend=TORCH_INT8, precision="int8",
                              **{**base, "metrics": {}}))
    return targets


def unique_names(paths: list[Path]) -> list[str]:
    """Directory names; repeated ones get their parent's name, then #2, #3 for true duplicates."""
    names = [p.name or str(p) for p in paths]
    for i, name in enumerate(names):
        if names.count(name) > 1 and paths[i].parent.name:
            clashes = [j for j, n in enumerate(names) if n == name]
            parents = {paths[j].absolute().parent.name for j in clashes}
            if len(parents) == len(clashes):
                for j in clashes:
                    names[j] = f"{paths[j].absolute().parent.name}/{name}"
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return result


def resolve_targets(items: list, *, torch_int8: bool = False) -> list[Target]:
    """Targets from artifact paths (str/Path) and ready-made `Target`s, in the given order."""
    if not items:
        raise BenchError("no artifacts to benchmark", where="ARTIFACT",
                         fix="Pass one or more artifact directories (bundles or PyTorch artifacts)")
    paths = [Path(item) for item in items if not isinstance(item, Target)]
    names = iter(unique_names(paths))
    targets: list[Target] = []
    for item in items:
        if isinstance(item, Target):
            targets.append(item)
        else:
            artifact = load_artifact(item)
            require_task_model(artifact)
            targets.extend(artifact_targets(artifact, next(names), torch_int8=torch_int8))
    return targets
