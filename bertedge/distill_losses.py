"""Distillation losses: pure torch functions over logits, hidden states and attention maps.

Every function takes plain tensors and masks, so each one is checked on hand-built tensors
in the tests. Conventions:

- ``kd = T² · KL(p_teacher ‖ p_student)`` with ``p = softmax(logits / T)`` (Hinton et al.);
  the T² keeps the gradient scale of the soft term independent of the temperature.
- ``loss = α · CE(labels) + (1 − α) · kd``.
- Masks are boolean; a masked-out row (padding, a ``-100`` label, an unlabeled example for
  the CE term) contributes nothing, and an all-masked batch gives a zero loss that still
  carries a graph (so ``backward`` works on it).
"""

from __future__ import annotations

IGNORE = -100


def _masked_mean(values, mask=None):
    """Mean of `values` over the True entries of `mask` (0 with a graph when none)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    total = mask.sum()
    return (values * mask).sum() / total.clamp(min=1.0)


def soft_kl(student_logits, teacher_logits, temperature: float, mask=None):
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)) over the last axis, averaged over unmasked rows.

    `mask` has the logits' shape minus the last axis (e.g. [batch] or [batch, tokens]).
    No teacher logits (alpha = 1, plain fine-tuning) gives a zero term.
    """
    import torch.nn.functional as F

    if teacher_logits is None:
        return student_logits.sum() * 0.0

    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return (t * t) * _masked_mean(kl, mask)


def masked_cross_entropy(logits, targets, mask=None):
    """Cross-entropy per row (last axis = classes), averaged over rows with mask True and target != -100."""
    import torch.nn.functional as F

    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1).clamp(min=0),
                           reduction="none").reshape(targets.shape)
    valid = targets != IGNORE
    if mask is not None:
        valid = valid & mask
    return _masked_mean(flat, valid)


def classification_loss(student_logits, teacher_logits, labels, *, temperature: float, alpha: float,
                        labeled=None) -> dict:
    """[batch, classes] logits. `labeled` [batch] marks examples with a gold label (CE only on those)."""
    ce = masked_cross_entropy(student_logits, labels, labeled)
    kd = soft_kl(student_logits, teacher_logits, temperature)
    return {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce, "kd": kd}


def token_loss(student_logits, teacher_logits, labels, *, temperature: float, alpha: float,
               labeled=None) -> dict:
    """[batch, tokens, classes] logits; both terms only on positions whose label is not -100.

    -100 marks padding, special tokens and the non-first pieces of a word, so the soft term
    is taken exactly where the hard labels are. `labeled` [batch] drops unlabeled examples
    from the CE term only (their positions still carry -100 elsewhere and a dummy label at
    first pieces).
    """
    positions = labels != IGNORE
    ce_mask = positions if labeled is None else positions & labeled[:, None]
    ce = masked_cross_entropy(student_logits, labels, ce_mask)
    kd = soft_kl(student_logits, teacher_logits, temperature, positions)
    return {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce, "kd": kd}


def qa_loss(student_start, student_end, teacher_start, teacher_end, start_positions, end_positions,
            attention_mask, *, temperature: float, alpha: float, labeled=None) -> dict:
    """[batch, tokens] start/end logits: softmax over the real tokens of each window (padding excluded).

    Each term is the mean of its start and end parts, as in the transformers QA heads.
    """
    real = attention_mask.bool()

    def over_tokens(logits):
        # A large finite value (not -inf, not finfo.min): stays finite after /T for any T,
        # so exp() gives exactly 0 at padding without NaN from inf - inf.
        return logits.float().masked_fill(~real, -1e9)

    s_start, s_end = over_tokens(student_start), over_tokens(student_end)
    t_start = None if teacher_start is None else over_tokens(teacher_start)
    t_end = None if teacher_end is None else over_tokens(teacher_end)
    ce = (masked_cross_entropy(s_start, start_positions, labeled)
          + masked_cross_entropy(s_end, end_positions, labeled)) / 2
    kd = (soft_kl(s_start, t_start, temperature) + soft_kl(s_end, t_end, temperature)) / 2
    return {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce, "kd": kd}


def teacher_logits(task, outputs):
    """The teacher's soft targets as one tensor: its logits, or start/end stacked on a last axis for a span head."""
    if task.output_kind == "span":
        import torch

        return torch.stack([outputs.start_logits, outputs.end_logits], -1)
    return outputs.logits


def kd_loss(task, outputs, soft_targets, gold: dict, attention_mask, *, temperature: float, alpha: float,
            labeled=None) -> dict:
    """The task's label + KD loss (distill and prune's KD recovery share it), by the head's output kind.

    `soft_targets` is `teacher_logits(task, teacher_outputs)` (or cached rows of it; None: labels only), `gold` the
    batch's labels (`labels`, or `start_positions`/`end_positions` for a span head).
    """
    kw = {"temperature": temperature, "alpha": alpha, "labeled": labeled}
    if task.output_kind == "span":
        t_start, t_end = (None, None) if soft_targets is None else (soft_targets[..., 0], soft_targets[..., 1])
        return qa_loss(outputs.start_logits, outputs.end_logits, t_start, t_end, gold["start_positions"],
                       gold["end_positions"], attention_mask, **kw)
    loss = token_loss if task.output_kind == "token" else classification_loss
    return loss(outputs.logits, soft_targets, gold["labels"], **kw)


def hidden_mse(student_hidden, teacher_hidden, attention_mask, projection=None):
    """MSE between [batch, tokens, width] hidden states on real tokens.

    `projection` maps the student's width onto the teacher's (a learned Linear when they differ).
    """
    if projection is not None:
        student_hidden = projection(student_hidden)
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(f"hidden widths differ ({student_hidden.shape[-1]} vs {teacher_hidden.shape[-1]}) "
                         "and no projection was given")
    per_token = ((student_hidden.float() - teacher_hidden.float()) ** 2).mean(-1)
    return _masked_mean(per_token, attention_mask.bool())


def attention_mse(student_attention, teacher_attention, attention_mask):
    """MSE between [batch, heads, tokens, tokens] attention maps over real query/key pairs.

    With different head counts both sides are averaged over heads first (one map per layer).
    """
    if student_attention.shape[1] != teacher_attention.shape[1]:
        student_attention = student_attention.mean(1, keepdim=True)
        teacher_attention = teacher_attention.mean(1, keepdim=True)
    real = attention_mask.bool()
    pairs = (real[:, :, None] & real[:, None, :])[:, None].expand(-1, student_attention.shape[1], -1, -1)
    diff = (student_attention.float() - teacher_attention.float()) ** 2
    return _masked_mean(diff, pairs)


def intermediate_loss(student_outputs, teacher_outputs, attention_mask, layer_map: list[int], *,
                      hidden_weight: float, attention_weight: float, projection=None) -> dict:
    """TinyBERT-style transfer: student layer j imitates teacher layer ``layer_map[j]``.

    Hidden states: the embedding outputs are matched too (index 0 on both sides); then the
    output of student layer j against teacher layer layer_map[j]. Attention maps: the same
    pairs of layers. Each part is averaged over its layer pairs, then weighted.
    """
    import torch

    zero = torch.zeros((), device=attention_mask.device)
    parts = {"hidden": zero, "attention": zero}
    if hidden_weight > 0:
        pairs = [(0, 0)] + [(j + 1, t + 1) for j, t in enumerate(layer_map)]
        parts["hidden"] = sum(hidden_mse(student_outputs.hidden_states[s], teacher_outputs.hidden_states[t],
                                         attention_mask, projection) for s, t in pairs) / len(pairs)
    if attention_weight > 0:
        parts["attention"] = sum(attention_mse(student_outputs.attentions[j], teacher_outputs.attentions[t],
                                               attention_mask) for j, t in enumerate(layer_map)) / len(layer_map)
    parts["loss"] = hidden_weight * parts["hidden"] + attention_weight * parts["attention"]
    return parts
