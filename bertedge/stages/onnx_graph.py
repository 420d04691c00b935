"""The ONNX graph helpers that the plain export and the early-exit export share: the validation examples,
the eager model load, ONNX Runtime's transformer fusions, the graph's inputs/outputs and the interface record
of the manifest. Below stages/export.py and stages/early_exit_bundle.py, so neither imports the other's
helpers (export hands an early-exit artifact to export_early_exit)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import log
from ..artifacts import Artifact
from ..errors import ArtifactError, ConfigError
from ..tasks import get_task
from .exporters import stdout_to_stderr

if TYPE_CHECKING:
    from .export import ExportConfig

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "LayerNormalization")


def validation_examples(parent: Artifact, config) -> list[dict]:
    """The dev examples an export is validated on; an empty dev split fails here, before any export work."""
    from ..evaluate import load_eval_examples

    examples = load_eval_examples(parent, config.data, "dev", config.metric_samples)
    if not examples:
        raise ConfigError("the dev split is empty, so the export cannot be validated", where=str(parent.path),
                          fix="Pass --data with a non-empty dev split")
    return examples


def load_eager(parent: Artifact):
    from ..modeling import load_torch_artifact

    try:
        # Eager attention exports as plain MatMul/Softmax, the pattern ORT's fusion matches. The bertedge
        # loader also rebuilds per-layer FFN widths of pruned models.
        return load_torch_artifact(parent, attn_implementation="eager")
    except Exception as exc:
        raise ArtifactError(f"cannot load the PyTorch model ({str(exc).splitlines()[0][:200]})",
                            where=str(parent.path), fix="The artifact is damaged; rerun the stage that wrote it") from None


def fusion_options(config: ExportConfig):
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = config.embed_layer_norm
    options.use_raw_attention_mask(config.raw_attention_mask)
    return options


def fuse_graph(raw_path: Path, out_path: Path, hf_config, config: ExportConfig) -> dict[str, int]:
    """ONNX Runtime transformer fusions (offline, opt_level 0: portable, no hardware-specific nodes)."""
    from onnxruntime.transformers.optimizer import optimize_model

    from ..pruning import pruned_heads_of
    from .exporters import write_head_counts

    heads, hidden = hf_config.num_attention_heads, hf_config.hidden_size
    pruned = pruned_heads_of(hf_config)
    if pruned:
        # Pruned layers have different head counts: the optimizer reads each layer's from its graph, which
        # must hold them (transformers 5 traces -1 there).
        per_layer = [heads - len(pruned.get(i, ())) for i in range(hf_config.num_hidden_layers)]
        write_head_counts(raw_path, per_layer, hidden // heads)
        heads, hidden = 0, 0
    with stdout_to_stderr():
        optimized = optimize_model(str(raw_path), model_type="bert", num_heads=heads, hidden_size=hidden,
                                   optimization_options=fusion_options(config), opt_level=0)
        stats = optimized.get_fused_operator_statistics()
        optimized.save_model_to_file(str(out_path))
    counts = {op: int(stats.get(op, 0)) for op in FUSED_OPS if stats.get(op, 0)}
    attention = counts.get("Attention", 0) + counts.get("MultiHeadAttention", 0)
    if attention < hf_config.num_hidden_layers:
        log.warning(f"attention was fused in {attention} of {hf_config.num_hidden_layers} layers; the unfused "
                    "layers run as MatMul/Softmax (slower). Check that the model was exported with eager attention")
    return counts


def describe_graph(model_path: Path) -> dict:
    """Inputs and outputs of the ONNX graph: names, dtypes, shapes with named dynamic axes."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph

    def spec(value) -> dict:
        t = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
        return {"name": value.name, "dtype": dtype, "shape": dims,
                "dynamic_axes": {str(i): d for i, d in enumerate(dims) if isinstance(d, str)}}

    initializers = {i.name for i in graph.initializer}
    return {"inputs": [spec(v) for v in graph.input if v.name not in initializers],
            "outputs": [spec(v) for v in graph.output]}


def interface_record(parent: Artifact, task_name: str, settings, onnx_io: dict, config: ExportConfig) -> dict:
    """How to call the model without bertedge: preprocessing, inputs, outputs, postprocessing."""
    tokenizer = parent.manifest.get("tokenizer") or {}
    columns = (parent.manifest.get("data") or {}).get("columns") or {}
    task = get_task(task_name)
    kind = task.input_kind(columns)
    pair = kind == "sentence-pair"
    record = {
        "input_kind": kind,
        "tokenizer": "tokenizer.json (HuggingFace tokenizers format: normalisation, pre-tokenisation, "
                     "WordPiece/BPE model, [CLS]/[SEP] template; load it with the tokenizers library or "
                     "any port of it, e.g. Microsoft.ML.Tokenizers, tokenizers.js, DJL tokenizers)",
        "padding": {"side": "right", "pad_token_id": tokenizer.get("pad_token_id", 0),
                    "note": "attention_mask is 1 for real tokens then 0 for padding"
                            + ("" if config.raw_attention_mask or not config.optimize else
                               "; the fused graph requires right padding (it reads the mask as a length)")},
        "input_dtype": "int64 for every input",
        "max_length": settings.max_length,
    }
    record.update(task.interface_notes(settings, pair))
    record["inputs"] = [i["name"] for i in onnx_io["inputs"]]
    record["outputs"] = [o["name"] for o in onnx_io["outputs"]]
    return record


def share_embedding_rows(model_path: Path, vocab_size: int) -> dict | None:
    """Store a word-embedding table with repeated rows once: distinct rows plus an index table in front.

    trim-vocab's `nearest` / `cluster` modes keep the tokenizer and give dropped tokens shared rows, so the
    (vocab_size x hidden) initializer repeats rows. This rewrites it, in place, as its distinct rows in
    first-seen order and adds `Gather(row_index, ids)` before the node that reads it (a plain Gather, or
    EmbedLayerNormalization's word_embedding input), so the graph computes exactly what it did. The
    quantizer then sees the small table. Returns what changed, or None when no table repeats rows.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    tables = {i.name: i for i in graph.initializer if len(i.dims) == 2 and i.dims[0] == vocab_size
              and i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    slots = [(node, slot) for node in graph.node for slot, name in enumerate(node.input) if name in tables
             and ((node.op_type == "Gather" and slot == 0) or (node.op_type == "EmbedLayerNormalization" and slot == 2))]
    if len(slots) != 1 or sum(name == slots[0][0].input[slots[0][1]] for n in graph.node for name in n.input) != 1:
        return None  # no word-embedding table, or one shared with other nodes (tied weights): left alone
    node, slot = slots[0]
    table = tables[node.input[slot]]
    weights = numpy_helper.to_array(table)
    _, first, inverse = np.unique(weights, axis=0, return_index=True, return_inverse=True)
    if len(first) == len(weights):
        return None
    order = np.argsort(first)  # distinct rows in the order they first appear (row 0 stays row 0)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    index = rank[inverse.reshape(-1)].astype(np.int32)
    if not np.array_equal(weights[first[order]][index], weights):
        raise ArtifactError("sharing the embedding rows changed the table", where=str(model_path),
                            fix="Export without trim-vocab's shared rows (dropped: split) and report this")
    table.CopyFrom(numpy_helper.from_array(weights[first[order]], table.name))
    index_name, ids_name = f"{table.name}.row_index", f"{table.name}.row_ids"
    graph.initializer.append(numpy_helper.from_array(index, index_name))
    ids_slot = 1 if node.op_type == "Gather" else 0
    gather = helper.make_node("Gather", [index_name, node.input[ids_slot]], [ids_name], name=f"{table.name}.rows")
    node.input[ids_slot] = ids_name
    position = list(graph.node).index(node)
    graph.node.insert(position, gather)
    onnx.save(model, str(model_path))
    return {"table": table.name, "rows": int(len(weights)), "distinct_rows": int(len(first)),
            "index": index_name}
