"""Building a distillation student: from chosen teacher layers, from a smaller config, or pretrained.

- Teacher layers (DistilBERT-style): the student is the teacher's own class and config with
  fewer layers; embeddings, the chosen encoder layers, pooler and task head are copied
  bit for bit.
- A smaller config: the teacher's config with overrides (layers, hidden size, FFN size,
  heads), randomly initialised; it keeps the teacher's vocabulary and tokenizer.
- Another pretrained model: loaded with a new task head; it must tokenize exactly like the
  teacher, since per-token teacher outputs are matched position by position.
"""

from __future__ import annotations

import copy
import json
import math
import re

from .errors import ConfigError, ModelError

LAYER_KEY = re.compile(r"\.layers?\.(\d+)\.")
# Config keys a student config may not change: they are fixed by the tokenizer and the task.
FIXED_CONFIG_KEYS = ("vocab_size", "model_type", "num_labels", "id2label", "label2id", "type_vocab_size",
                     "pad_token_id")


def even_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """`student_layers` teacher layers spread evenly, first and last included.

    12 -> 6 gives [0, 2, 4, 7, 9, 11] (DistilBERT's choice); 6 -> 3 gives [0, 3, 5]; 6 -> 2 gives [0, 5].
    """
    if student_layers == 1:
        return [0]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [math.floor(i * step + 0.5) for i in range(student_layers)]


def uniform_transfer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """TinyBERT's mapping for a student not copied from the teacher: student layer j imitates
    teacher layer (j + 1) * L / N - 1, so the last student layer matches the last teacher layer."""
    return [math.floor((j + 1) * teacher_layers / student_layers + 0.5) - 1 for j in range(student_layers)]


def check_layer_map(layer_map: list[int], teacher_layers: int, where: str) -> None:
    bad = [i for i in layer_map if not 0 <= i < teacher_layers]
    if bad:
        raise ConfigError(f"layer index {bad[0]} is out of range for the {teacher_layers}-layer teacher "
                          f"(valid: 0-{teacher_layers - 1})", where=where,
                          fix=f"Use teacher layer indices from 0 to {teacher_layers - 1}")


# Written by `prune` into config.json: per-layer FFN widths (see bertedge.pruning).
PRUNED_SIZES_KEY = "bertedge_intermediate_sizes"


def is_pruned(config) -> bool:
    return bool(getattr(config, "pruned_heads", None)) or bool(getattr(config, PRUNED_SIZES_KEY, None))


def copy_teacher_layers(teacher, layer_map: list[int]):
    """A student of the teacher's class whose layer j is an exact copy of teacher layer layer_map[j]."""
    if is_pruned(teacher.config):
        raise ModelError("copying layers of a pruned teacher (removed heads or FFN neurons) is not supported",
                         where="--layers", fix="Distill from the unpruned model and prune the student afterwards, "
                                               "or build the student with --student-config")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layer_map)
    student = type(teacher)(config)
    source = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        match = LAYER_KEY.search(key)
        src = key if match is None else f"{key[:match.start(1)]}{layer_map[int(match.group(1))]}{key[match.end(1):]}"
        state[key] = source[src].detach().clone()
    student.load_state_dict(state, strict=True)
    return student


def parse_value(text: str):
    """'6' -> 6, '0.1' -> 0.1, 'true' -> True, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def student_config_from(teacher_config, overrides: dict, where: str = "--student-config"):
    config = copy.deepcopy(teacher_config)
    config.pruned_heads = {}  # a fresh student is dense even when the teacher was pruned
    if hasattr(config, PRUNED_SIZES_KEY):
        delattr(config, PRUNED_SIZES_KEY)
    for key, value in overrides.items():
        if key in FIXED_CONFIG_KEYS:
            raise ConfigError(f"'{key}' cannot be changed: the student shares the teacher's tokenizer and labels",
                              where=where, fix="Change layers, hidden_size, intermediate_size or num_attention_heads")
        if not hasattr(config, key):
            raise ConfigError(f"unknown {config.model_type} config key '{key}'", where=where,
                              fix="Use keys of the teacher's config.json, e.g. num_hidden_layers, hidden_size, "
                                  "intermediate_size, num_attention_heads")
        setattr(config, key, value)
    hidden, heads = config.hidden_size, config.num_attention_heads
    if not isinstance(hidden, int) or not isinstance(heads, int) or heads < 1 or hidden % heads:
        raise ConfigError(f"hidden_size ({hidden}) must be a multiple of num_attention_heads ({heads})",
                          where=where, fix="Pick a head count that divides the hidden size")
    if not isinstance(config.num_hidden_layers, int) or config.num_hidden_layers < 1:
        raise ConfigError(f"num_hidden_layers must be a positive integer (got {config.num_hidden_layers})",
                          where=where, fix="Example: --student-config num_hidden_layers=3")
    return config


def random_student(teacher, overrides: dict):
    """The teacher's class with a smaller config, randomly initialised (seed set by the caller)."""
    return type(teacher)(student_config_from(teacher.config, overrides))


def tokenizer_signature(tokenizer) -> dict:
    """What decides token ids: vocabulary, normaliser (lower-casing, accents) and pre-tokeniser."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    return {"vocab": tokenizer.get_vocab(), "normalizer": spec.get("normalizer"),
            "pre_tokenizer": spec.get("pre_tokenizer")}


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, where: str) -> None:
    student, teacher = tokenizer_signature(student_tokenizer), tokenizer_signature(teacher_tokenizer)
    if student["vocab"] != teacher["vocab"]:
        only_student = len(set(student["vocab"]) - set(teacher["vocab"]))
        only_teacher = len(set(teacher["vocab"]) - set(student["vocab"]))
        what = (f"the student's tokenizer has a different vocabulary from the teacher's "
                f"({len(student['vocab'])} vs {len(teacher['vocab'])} tokens; {only_student} only in the student, "
                f"{only_teacher} only in the teacher)")
        if only_student == only_teacher == 0:
            what = "the student's tokenizer maps tokens to different ids than the teacher's"
        raise ModelError(what, where=where,
                         fix="Distill into a student with the teacher's tokenizer (--layers, --layer-map or "
                             "--student-config), or pick a pretrained student of the same model family")
    for part in ("normalizer", "pre_tokenizer"):
        if student[part] != teacher[part]:
            raise ModelError(f"the student's tokenizer {part.replace('_', '-')} differs from the teacher's "
                             "(e.g. cased vs uncased)", where=where,
                             fix="Pick a student that tokenizes like the teacher")


def pretrained_student(reference: str, task: str, labels: list[str] | None, teacher_tokenizer,
                       attn_implementation: str | None = None):
    """(model, hf_tokenizer, resolved) of another pretrained encoder with a fresh task head."""
    from transformers import AutoConfig

    from .modeling import load_hf_tokenizer, model_class
    from .models import resolve_model
    from .tasks import get_task

    resolved = resolve_model(reference)
    tokenizer = load_hf_tokenizer(resolved.path)
    check_same_tokenizer(tokenizer, teacher_tokenizer, where=f"--student {reference}")
    config = AutoConfig.from_pretrained(resolved.path)
    config.update(get_task(task).head_config(labels))
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = model_class(task).from_pretrained(resolved.path, config=config, ignore_mismatched_sizes=True,
                                                  **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the student's weights ({str(exc).splitlines()[0][:200]})",
                         where=resolved.path, fix="Check the directory holds model.safetensors or pytorch_model.bin") from None
    return model, tokenizer, resolved
