"""Pruning mechanics: importance scores, physical slicing, layer dropping, magnitude masks.

Structured pruning removes whole attention heads and FFN neurons, so the saved matrices are
smaller and a dense runtime (ONNX Runtime) does less work. Heads go through transformers'
own `prune_heads` on transformers 4 (recorded in `config.pruned_heads`, which `from_pretrained`
replays); transformers 5 removed head pruning, so there the same slicing is done here, recorded
in the same `config.pruned_heads`, and `load_pretrained` replays it.
FFN neurons are removed by slicing `intermediate.dense` (rows) and `output.dense` (columns).
BertConfig has a single `intermediate_size`, so when the widths differ between layers they
are recorded as `config.bertedge_intermediate_sizes` and `load_pretrained` rebuilds those
shapes before loading the weights; uniform widths just become `intermediate_size`.

Unstructured pruning (gradual magnitude pruning, Zhu & Gupta 2017) keeps the shapes and
zeroes the smallest weights of the encoder's linear layers on a cubic schedule.

Everything here works on the encoder's layer list (`model.base_model.encoder.layer`): BERT
and the encoders that share its module layout.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ModelError

SIZES_KEY = "bertedge_intermediate_sizes"


# ----------------------------------------------------------------------------- model structure


def encoder_layers(model):
    """The encoder's layer list; refuses architectures without a BERT-style layout."""
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or not hasattr(layers[0], "attention") or not hasattr(layers[0], "intermediate"):
        raise ModelError(f"structured pruning needs a BERT-style encoder (encoder.layer[i].attention/intermediate); "
                         f"{model.config.model_type} has another layout", where=model.config.model_type,
                         fix="Use a bert/roberta-family model, or unstructured pruning (--sparsity)")
    return layers


def pruned_heads_of(config) -> dict[int, list[int]]:
    """config.pruned_heads with int layer keys (transformers 4 converts them on load; 5 keeps the JSON strings)."""
    return {int(k): sorted(v) for k, v in (getattr(config, "pruned_heads", None) or {}).items() if v}


def remaining_heads(model) -> list[list[int]]:
    """Per layer, the original ids of the heads still present (in their current order)."""
    total = model.config.num_attention_heads
    pruned = pruned_heads_of(model.config)
    return [[h for h in range(total) if h not in set(pruned.get(i, ()))]
            for i in range(model.config.num_hidden_layers)]


def heads_per_layer(model) -> list[int]:
    return [layer.attention.self.num_attention_heads for layer in encoder_layers(model)]


def intermediate_sizes(model) -> list[int]:
    return [layer.intermediate.dense.out_features for layer in encoder_layers(model)]


def structure(model) -> dict:
    """What the manifest records about the shapes."""
    return {"num_layers": model.config.num_hidden_layers, "heads_per_layer": heads_per_layer(model),
            "intermediate_sizes": intermediate_sizes(model),
            "pruned_heads": {str(k): sorted(v) for k, v in sorted(pruned_heads_of(model.config).items())}}


# ----------------------------------------------------------------------------- importance


def _gates(model, batch_size: int, want_heads: bool, want_ffn: bool):
    """Per-layer multiplicative gates (value 1) on head outputs and FFN activations.

    A gate of ones leaves the forward unchanged; d loss / d gate is then exactly the head-mask
    gradient of Michel et al. (2019) for heads — the mask multiplies attention probabilities,
    which enter the context linearly — and the first-order Taylor term sum(a * dL/da) for
    neurons. Hooks (not `head_mask=`) keep this valid for non-uniform heads and SDPA attention.
    """
    import torch

    handles, head_gates, ffn_gates = [], [], []
    device = next(model.parameters()).device
    for layer in encoder_layers(model):
        attn = layer.attention.self
        if want_heads:
            gate = torch.ones(batch_size, 1, attn.num_attention_heads, 1, device=device, requires_grad=True)
            head_gates.append(gate)

            def head_hook(module, args, output, gate=gate):
                context = output[0]
                b, t, _ = context.shape
                gated = (context.view(b, t, module.num_attention_heads, module.attention_head_size)
                         * gate[:b]).view(b, t, -1)
                return (gated, *output[1:])

            handles.append(attn.register_forward_hook(head_hook))
        if want_ffn:
            gate = torch.ones(batch_size, 1, layer.intermediate.dense.out_features, device=device,
                              requires_grad=True)
            ffn_gates.append(gate)
            handles.append(layer.intermediate.register_forward_hook(
                lambda module, args, output, gate=gate: output * gate[:output.shape[0]]))
    return handles, head_gates, ffn_gates


def importance_scores(model, batches: Iterable[dict], *, heads: bool = True, ffn: bool = True,
                      loss_fn=None) -> dict:
    """Accumulated importance of every head and FFN neuron over labelled batches.

    heads: sum over batches of |dL/d head-gate| (batch-level, Michel et al. 2019).
    ffn:   sum over examples of |sum over tokens of a * dL/da| (first-order Taylor, Molchanov et al.).
    Returns raw (unnormalised) per-layer score lists; `normalise_per_layer` is separate so the
    ranking policy stays visible. `loss_fn(model, batch) -> loss` defaults to the model's own loss.
    """
    import torch

    batches = list(batches)
    if not batches:
        raise ValueError("importance_scores needs at least one batch")
    batch_size = max(b["input_ids"].shape[0] for b in batches)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: scores reflect the model that will be deployed
    trainable = [p.requires_grad for p in model.parameters()]  # restored after: frozen weights stay frozen
    for p in model.parameters():
        p.requires_grad_(False)
    handles, head_gates, ffn_gates = _gates(model, batch_size, heads, ffn)
    head_total = [torch.zeros(g.shape[2], device=g.device) for g in head_gates]
    ffn_total = [torch.zeros(g.shape[2], device=g.device) for g in ffn_gates]
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            b = batch["input_ids"].shape[0]
            out = model(**batch)
            loss = out.loss if loss_fn is None else loss_fn(model, batch, out)
            gates = head_gates + ffn_gates
            grads = torch.autograd.grad(loss, gates, allow_unused=True)
            for i, g in enumerate(grads[:len(head_gates)]):
                if g is not None:
                    head_total[i] += g[:b].sum(dim=0).view(-1).abs()
            for i, g in enumerate(grads[len(head_gates):]):
                if g is not None:
                    ffn_total[i] += g[:b].abs().sum(dim=(0, 1))
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(model.parameters(), trainable):
            p.requires_grad_(flag)
        model.train(was_training)
    return {"heads": [t.tolist() for t in head_total], "ffn": [t.tolist() for t in ffn_total]}


def normalise_per_layer(scores: list[list[float]]) -> list[list[float]]:
    """Divide each layer's scores by their L2 norm (Michel et al.) so layers compare globally."""
    out = []
    for layer in scores:
        norm = sum(s * s for s in layer) ** 0.5
        out.append([s / norm if norm > 0 else 0.0 for s in layer])
    return out


def select_to_remove(scores: list[list[float]], keep: list[int] | int, scope: str) -> list[list[int]]:
    """Indices (current positions) to remove in each layer, lowest scores first.

    per-layer: `keep[i]` units survive in layer i. global: `keep` units survive in total, chosen
    by score across layers, and each layer keeps at least its single best unit (a layer is never
    emptied by global ranking; emptying one is refused before this is called).
    """
    if scope == "per-layer":
        removed = []
        for layer, k in zip(scores, keep):  # type: ignore[arg-type] # per-layer: keep is a list
            order = sorted(range(len(layer)), key=lambda j: (layer[j], j))
            removed.append(sorted(order[:max(len(layer) - k, 0)]))
        return removed
    total = sum(len(layer) for layer in scores)
    n_remove = max(total - int(keep), 0)  # type: ignore[arg-type] # global: keep is one count
    protected = {(i, max(range(len(layer)), key=lambda j: (layer[j], -j))) for i, layer in enumerate(scores) if layer}
    candidates = sorted(((s, i, j) for i, layer in enumerate(scores) for j, s in enumerate(layer)
                         if (i, j) not in protected))
    removed = [[] for _ in scores]
    for _, i, j in candidates[:n_remove]:
        removed[i].append(j)
    return [sorted(r) for r in removed]


# ----------------------------------------------------------------------------- physical removal


def prune_heads(model, remove_current: list[list[int]]) -> int:
    """Remove heads given by their current position in each layer; returns how many went."""
    original = remaining_heads(model)
    to_prune = {i: [original[i][j] for j in idx] for i, idx in enumerate(remove_current) if idx}
    if to_prune and hasattr(model, "prune_heads"):
        model.prune_heads(to_prune)  # transformers 4: updates config.pruned_heads with original head ids
    elif to_prune:
        slice_heads(model, to_prune)
    return sum(len(v) for v in to_prune.values())


def slice_heads(model, to_prune: dict[int, list[int]]) -> None:
    """Remove heads (original ids per layer) the way transformers 4's BertAttention.prune_heads did: rows of
    query/key/value, columns of attention.output.dense; config.pruned_heads gets the union of original ids."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    pruned = {i: set(v) for i, v in pruned_heads_of(model.config).items()}
    total = model.config.num_attention_heads
    layers = encoder_layers(model)
    for i, heads in to_prune.items():
        attention, drop = layers[i].attention, set(heads)
        present = [h for h in range(total) if h not in pruned.get(i, set())]  # original ids, current order
        keep = [pos for pos, h in enumerate(present) if h not in drop]
        size = attention.self.attention_head_size
        index = torch.tensor([pos * size + j for pos in keep for j in range(size)], dtype=torch.long)
        for name in ("query", "key", "value"):
            setattr(attention.self, name, prune_linear_layer(getattr(attention.self, name), index))
        attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
        attention.self.num_attention_heads = len(keep)
        attention.self.all_head_size = size * len(keep)
        pruned[i] = pruned.get(i, set()) | drop
    model.config.pruned_heads = {i: sorted(v) for i, v in sorted(pruned.items())}


def _slice_ffn(layer, keep_index) -> None:
    from transformers.pytorch_utils import prune_linear_layer

    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep_index, dim=0)
    layer.output.dense = prune_linear_layer(layer.output.dense, keep_index, dim=1)


def prune_ffn(model, remove_current: list[list[int]]) -> int:
    """Slice FFN neurons out of each layer (rows of intermediate.dense, columns of output.dense)."""
    import torch

    removed = 0
    for layer, idx in zip(encoder_layers(model), remove_current):
        if not idx:
            continue
        width = layer.intermediate.dense.out_features
        drop = set(idx)
        keep = torch.tensor([j for j in range(width) if j not in drop], dtype=torch.long)
        _slice_ffn(layer, keep)
        removed += len(drop)
    record_intermediate_sizes(model)
    return removed


def record_intermediate_sizes(model) -> None:
    """Uniform widths become `intermediate_size` (plain from_pretrained loads them); others are listed."""
    sizes = intermediate_sizes(model)
    if len(set(sizes)) == 1:
        model.config.intermediate_size = sizes[0]
        if hasattr(model.config, SIZES_KEY):
            delattr(model.config, SIZES_KEY)
    else:
        setattr(model.config, SIZES_KEY, sizes)


def drop_layers(model, drop: list[int]) -> None:
    """Remove whole encoder layers and renumber what the config records about the rest."""
    import torch

    layers = encoder_layers(model)
    keep = [i for i in range(len(layers)) if i not in set(drop)]
    model.base_model.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    pruned = pruned_heads_of(model.config)
    model.config.pruned_heads = {new: sorted(pruned[old]) for new, old in enumerate(keep) if pruned.get(old)}
    model.config.num_hidden_layers = len(keep)
    for new, layer in enumerate(model.base_model.encoder.layer):
        attn = layer.attention.self
        if hasattr(attn, "layer_idx"):
            attn.layer_idx = new
    record_intermediate_sizes(model)


def load_pretrained(model_cls, path: str | Path, **kwargs):
    """`model_cls.from_pretrained(path, **kwargs)`, also for per-layer FFN widths written by `prune`.

    `kwargs` other than `attn_implementation` and `torch_dtype` only reach `from_pretrained`.
    """
    from transformers import AutoConfig, PreTrainedModel

    config = AutoConfig.from_pretrained(str(path))
    sizes = getattr(config, SIZES_KEY, None)
    heads = pruned_heads_of(config)
    replay_heads = bool(heads) and not hasattr(PreTrainedModel, "prune_heads")  # transformers 5 does not replay them
    if not sizes and not replay_heads:
        return model_cls.from_pretrained(str(path), **kwargs)
    import torch
    from safetensors.torch import load_file

    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise ModelError("a pruned model (per-layer FFN widths or pruned heads) needs model.safetensors", where=str(path),
                         fix="Re-save the model with save_pretrained(safe_serialization=True)")
    build = {k: v for k, v in kwargs.items() if k in ("attn_implementation", "torch_dtype")}
    # Auto classes build through from_config, concrete ones through _from_config; both run post_init,
    # which replays config.pruned_heads on transformers 4. On 5 slice_heads replays them.
    factory = getattr(model_cls, "from_config", None) or model_cls._from_config
    if replay_heads:
        config.pruned_heads = {}
    model = factory(config, **build)
    if replay_heads:
        slice_heads(model, heads)
    layers = encoder_layers(model)
    sizes = sizes or [layer.intermediate.dense.out_features for layer in layers]
    if len(sizes) != len(layers):
        raise ModelError(f"{SIZES_KEY} lists {len(sizes)} layers but the model has {len(layers)}",
                         where=str(Path(path) / "config.json"), fix="The artifact is damaged; rerun prune")
    for layer, size in zip(layers, sizes):
        _slice_ffn(layer, torch.arange(size))
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"weights do not match the recorded shapes (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})", where=str(weights), fix="The artifact is damaged; rerun prune")
    return model


# ----------------------------------------------------------------------------- unstructured


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3 within [t0, t1]."""
    if step < start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


def prunable_linears(model) -> list[tuple[str, Any]]:
    """The encoder's linear layers: what unstructured pruning masks (not embeddings, pooler or head)."""
    import torch

    prefix = model.base_model_prefix
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith(f"{prefix}.encoder.")]


def magnitude_masks(modules: list[tuple[str, Any]], sparsity: float, scope: str) -> dict:
    """Boolean keep-masks zeroing the `sparsity` fraction of smallest |w| (globally or per module)."""
    import torch

    masks = {}
    if sparsity <= 0:
        return {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in modules}
    if scope == "global":
        flat = torch.cat([m.weight.detach().abs().flatten() for _, m in modules])
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[:round(sparsity * flat.numel())]] = False  # exact count with ties
        offset = 0
        for name, m in modules:
            masks[name] = keep[offset:offset + m.weight.numel()].view_as(m.weight)
            offset += m.weight.numel()
        return masks
    for name, m in modules:
        w = m.weight.detach().abs().flatten()
        k = round(sparsity * w.numel())
        keep = torch.ones_like(w, dtype=torch.bool)
        if k > 0:
            keep[torch.argsort(w, stable=True)[:k]] = False  # exact count even with ties
        masks[name] = keep.view_as(m.weight)
    return masks


def apply_masks(modules: list[tuple[str, Any]], masks: dict) -> None:
    import torch

    with torch.no_grad():
        for name, m in modules:
            m.weight.mul_(masks[name])


def sparsity_report(model) -> dict:
    """Fraction of exact zeros per encoder layer and per linear module, and overall."""
    import re

    per_module: dict[str, float] = {}
    per_layer: dict[str, tuple[int, int]] = {}
    zeros, total = 0, 0
    for name, m in prunable_linears(model):
        z, n = int((m.weight == 0).sum()), m.weight.numel()
        per_module[name] = round(z / n, 4)
        match = re.search(r"\.layer\.(\d+)\.", name)
        key = f"layer.{match.group(1)}" if match else name
        lz, ln = per_layer.get(key, (0, 0))
        per_layer[key] = (lz + z, ln + n)
        zeros, total = zeros + z, total + n
    all_params = sum(p.numel() for p in model.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    return {"encoder_linear_sparsity": round(zeros / total, 4) if total else 0.0,
            "model_sparsity": round(all_zeros / all_params, 4),
            "per_layer": {k: round(z / n, 4) for k, (z, n) in per_layer.items()},
            "per_module": per_module}


def zipped_size(path: str | Path) -> int:
    """Bytes of `path` in a deflate zip (level 9): what sparsity buys on disk or over the wire."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.write(str(path), arcname=Path(path).name)
    return buffer.tell()
