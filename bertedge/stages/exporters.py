"""The two ways a task model becomes an ONNX graph: bertedge's own exporter and optimum-onnx's.

`bertedge` (the default) calls `torch.onnx.export` itself, with the TorchScript exporter chosen
explicitly (`dynamo=False`): torch 2.9 made the dynamo exporter the default, and that one takes
`dynamic_shapes`, not `dynamic_axes`, so code that relied on the default silently gets fixed shapes.
It needs nothing beyond torch, so it runs on any transformers. `optimum` goes through optimum-onnx's
`onnx_export_from_model`; optimum-onnx 0.1 requires transformers < 4.58, so it is an extra
(`pip install 'bertedge[optimum]'`, the legacy stack of constraints-legacy.txt).

Both give the graph optimum always gave: inputs `input_ids`, `attention_mask` (+ `token_type_ids`
where the tokenizer makes them) with axes `batch_size` and `sequence_length`, and the task's outputs
(`logits`, or `start_logits`/`end_logits`) with the same axes. `check_dynamic_axes` then proves that
those axes are symbolic in the file, whichever exporter wrote it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Literal, get_args

from ..errors import ConfigError, ExportError

Exporter = Literal["bertedge", "optimum"]
EXPORTERS: tuple[str, ...] = get_args(Exporter)
MODEL_FILE = "model.onnx"
BATCH_AXIS, SEQUENCE_AXIS = "batch_size", "sequence_length"
# What the tokenizer may feed, in the order BERT-family forward() signatures take them.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The dummy batch the graph is traced with (optimum's default shape): more than one sequence and more
# than one token, so that no size-1 axis can be specialised into the graph.
DUMMY_BATCH, DUMMY_SEQUENCE = 2, 16
OPTIMUM_FIX = "pip install 'bertedge[optimum]' (it needs transformers < 4.58: constraints-legacy.txt), " \
              "or use the default --exporter bertedge"


def require_optimum(where: str) -> None:
    """The one-line refusal where optimum-onnx is asked for and not installed."""
    from .. import env

    if not env.optimum_installed():
        raise ConfigError("optimum-onnx is not installed", where=where, fix=OPTIMUM_FIX)


def import_optimum(module: str, where: str):
    """Import an optimum module, or fail in one line (not installed, or installed beside a transformers it
    does not support)."""
    import importlib

    require_optimum(where)
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything on import
        detail = " ".join(str(exc).split())[:160]
        raise ConfigError(f"optimum-onnx is installed but does not import ({type(exc).__name__}: {detail})",
                          where=where, fix=OPTIMUM_FIX) from None


def export_onnx(model, task, input_names: list[str], opset: int, directory: Path, exporter: str = "bertedge") -> Path:
    """Export `model` (a transformers task model in eval mode) to `directory`/model.onnx and check its axes."""
    directory.mkdir(parents=True, exist_ok=True)
    if exporter == "optimum":
        path = _optimum_export(model, task.ort_task, opset, directory)
    else:
        path = torch_export(model, task, input_names, opset, directory / MODEL_FILE)
    check_dynamic_axes(path, task)
    return path


def exporter_record(exporter: str) -> dict:
    """What the manifest says about the exporter that wrote the graph."""
    from importlib import metadata

    import torch

    if exporter == "optimum":
        return {"name": "optimum", "function": "optimum.exporters.onnx.onnx_export_from_model",
                "optimum_onnx": metadata.version("optimum-onnx")}
    return {"name": "bertedge", "function": "torch.onnx.export", "torch_exporter": "torchscript (dynamo=False)",
            "torch": torch.__version__, "dummy_shape": [DUMMY_BATCH, DUMMY_SEQUENCE]}


def graph_input_names(model, tokenizer_input_names) -> list[str]:
    """The text inputs the tokenizer produces that the model's forward() takes, in forward()'s order."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    wanted = set(tokenizer_input_names) | {"input_ids"}
    return [name for name in accepted if name in TEXT_INPUTS and name in wanted]


def dynamic_axes(task, input_names: list[str]) -> dict[str, dict[int, str]]:
    """Batch and sequence on every input; batch on every output, and sequence on per-token outputs."""
    axes = {name: {0: BATCH_AXIS, 1: SEQUENCE_AXIS} for name in input_names}
    for name in task.output_names:
        axes[name] = {0: BATCH_AXIS, 1: SEQUENCE_AXIS} if name in task.per_token_outputs else {0: BATCH_AXIS}
    return axes


def dummy_inputs(model, input_names: list[str]):
    """A seeded batch of DUMMY_BATCH x DUMMY_SEQUENCE ids; the second row is padded, so the mask is traced as
    a real mask (an all-ones mask may take a shortcut that drops it from the graph)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    vocab = int(getattr(model.config, "vocab_size", 100) or 100)
    shape = (DUMMY_BATCH, DUMMY_SEQUENCE)
    values = {"input_ids": torch.randint(low=min(5, vocab - 1), high=vocab, size=shape, generator=generator),
              "attention_mask": torch.ones(shape, dtype=torch.int64),
              "token_type_ids": torch.zeros(shape, dtype=torch.int64)}
    values["attention_mask"][1, DUMMY_SEQUENCE // 2:] = 0
    if int(getattr(model.config, "type_vocab_size", 1) or 1) > 1:
        values["token_type_ids"][:, DUMMY_SEQUENCE // 2:] = 1
    return tuple(values[name] for name in input_names)


def _task_outputs_module(model, input_names: list[str], output_names: tuple[str, ...]):
    """The model as positional tensors in, the task's output tensors out (no hidden states, no loss)."""
    import torch

    class TaskOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            out = self.model(**dict(zip(input_names, tensors)), return_dict=True)
            return tuple(out[name] for name in output_names)

    return TaskOutputs().eval()


def torch_export(model, task, input_names: list[str], opset: int, path: Path) -> Path:
    """`torch.onnx.export` with the TorchScript exporter, named dynamic axes and constant folding."""
    import warnings

    import torch

    module = _task_outputs_module(model, input_names, task.output_names)
    args = dummy_inputs(model, input_names)
    try:
        with torch.no_grad(), warnings.catch_warnings(), stdout_to_stderr():
            # TracerWarnings (the export is checked against PyTorch right after) and the TorchScript exporter's
            # deprecation note: the choice is deliberate, see the module docstring.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(module, args, str(path), input_names=list(input_names),
                              output_names=list(task.output_names), dynamic_axes=dynamic_axes(task, input_names),
                              opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises anything
        detail = " ".join(str(exc).split())[:240]
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: {detail})", where="export",
                          fix="Try another --opset, or rerun with --debug for the traceback") from None
    if not path.is_file():
        raise ExportError("torch.onnx.export wrote no model.onnx", where=str(path.parent), fix="Rerun with --debug")
    return path


def check_dynamic_axes(path: Path, task, axes: dict[str, dict[int, str]] | None = None) -> None:
    """Every input's batch and sequence axes, and every output's declared ones, are symbolic in the file.

    A graph traced with fixed shapes runs only at its dummy batch and length; catching that here beats a
    shape error in the user's server. Raises ExportError naming the first fixed axis.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    expected = axes or dynamic_axes(task, [v.name for v in inputs])
    for value in [*inputs, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        for axis, name in (expected.get(value.name) or {}).items():
            dim = dims[axis] if axis < len(dims) else None
            if dim is None or not dim.dim_param:
                found = "missing" if dim is None else f"fixed at {dim.dim_value}" if dim.HasField("dim_value") \
                    else "unnamed"
                raise ExportError(f"{path.name}: axis {axis} ({name}) of '{value.name}' is {found}, not symbolic, "
                                  "so the graph would only run at the exported shape", where="export",
                                  fix="Report this with `bertedge info`; try --exporter optimum on the legacy stack")


def write_head_counts(path: Path, heads_per_layer: list[int], head_size: int) -> int:
    """Put each layer's head count into its attention Reshapes, in place; returns how many were changed.

    transformers 5 reshapes q/k/v with view(batch, seq, -1, head_size), so the traced Concat holds -1 where
    4.x had the head count. ONNX Runtime's attention fusion reads the count from there when it is not given
    one, which is the case for pruned models (a different count per layer): with -1 nothing is fused.
    """
    import re

    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: i for i in graph.initializer}

    def constant(name):
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    changed = 0
    for node in graph.node:
        match = re.search(r"/layer\.(\d+)/attention/self/", node.name)
        concat = producers.get(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if not match or concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads_part, size_part = constant(concat.input[2]), constant(concat.input[3])
        layer = int(match.group(1))
        if heads_part is None or size_part is None or layer >= len(heads_per_layer) \
                or heads_part.tolist() != [-1] or size_part.tolist() != [head_size]:
            continue
        name = f"{node.name}/bertedge_num_heads"
        graph.initializer.append(numpy_helper.from_array(np.array([heads_per_layer[layer]], dtype=np.int64), name))
        concat.input[2] = name
        changed += 1
    if changed:
        onnx.save(model, str(path))
    return changed


@contextlib.contextmanager
def stdout_to_stderr():
    """Libraries print progress on stdout; stdout belongs to --json output."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _optimum_export(model, ort_task: str, opset: int, directory: Path) -> Path:
    onnx_export_from_model = import_optimum("optimum.exporters.onnx", "exporter: optimum").onnx_export_from_model

    # optimum recommends opset 18 for BERT but 17 exports the same graph (native LayerNormalization);
    # its warning about that would only confuse.
    optimum_logger = logging.getLogger("optimum.exporters.onnx.convert")
    previous = optimum_logger.level
    optimum_logger.setLevel(logging.ERROR)
    try:
        with stdout_to_stderr():
            onnx_export_from_model(model, directory, opset=opset, task=ort_task, do_validation=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises anything
        detail = " ".join(str(exc).split())[:240]
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: {detail})", where="export",
                          fix="Try another --opset, or rerun with --debug for the traceback") from None
    finally:
        optimum_logger.setLevel(previous)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ExportError("the exporter wrote no model.onnx", where=str(directory), fix="Rerun with --debug")
    return path
