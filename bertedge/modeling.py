"""Loading and saving transformers task models for artifacts (torch side)."""

from __future__ import annotations

from pathlib import Path

from .artifacts import Artifact, require_task_model
from .errors import ArtifactError
from .tasks import get_task
from .tokenization import TextEncoder


def model_class(task_name: str):
    import transformers

    return getattr(transformers, get_task(task_name).auto_model)


def load_hf_tokenizer(path: str | Path):
    from .models import load_tokenizer

    return load_tokenizer(str(path))


def encoder_from_hf(tokenizer) -> TextEncoder:
    """A TextEncoder with its own copy of the fast tokenizer's Rust tokenizer."""
    from tokenizers import Tokenizer

    return TextEncoder(Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
                       pad_token_id=tokenizer.pad_token_id or 0,
                       model_input_names=tuple(tokenizer.model_input_names))


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """`tokenizer.save_pretrained`, plus the files transformers 5 stopped writing.

    transformers 4 wrote vocab.txt and special_tokens_map.json beside tokenizer.json; 5 writes only
    tokenizer.json and tokenizer_config.json. Bundles keep both files whichever stack made them: ports
    that build a WordPiece tokenizer from vocab.txt (e.g. BertTokenizer.Create in Microsoft.ML.Tokenizers)
    read the first, older loaders the second.
    """
    import json

    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    vocab_file, specials_file = directory / "vocab.txt", directory / "special_tokens_map.json"
    if not vocab_file.exists():
        model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model") or {}
        if model.get("type") == "WordPiece" and isinstance(model.get("vocab"), dict):
            tokens = sorted(model["vocab"], key=model["vocab"].get)
            vocab_file.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if not specials_file.exists():
        specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        specials_file.write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def tokenizer_record(tokenizer) -> dict:
    return {
        "pad_token_id": tokenizer.pad_token_id or 0,
        "model_input_names": list(tokenizer.model_input_names),
        "cls_token": tokenizer.cls_token,
        "sep_token": tokenizer.sep_token,
        "do_lower_case": bool(getattr(tokenizer, "do_lower_case", False)),
        "vocab_size": tokenizer.vocab_size,
    }


def load_torch_artifact(artifact: Artifact, **kwargs):
    """(model, hf_tokenizer) of a transformers-directory artifact, in eval mode.

    `kwargs` go to from_pretrained (e.g. attn_implementation="eager" for ONNX export).
    """
    if artifact.is_bundle:
        raise ArtifactError("this is an ONNX bundle, not a PyTorch artifact", where=str(artifact.path),
                            fix="Pass the PyTorch artifact it was exported from")
    require_task_model(artifact)
    if artifact.manifest.get("torch_program"):  # Neural Compressor int8 (quantize --engine inc)
        from .torch_program import ProgramModel

        return ProgramModel(artifact), load_hf_tokenizer(artifact.path)
    from .pruning import load_pretrained  # also rebuilds per-layer FFN widths written by `prune`

    model = load_pretrained(model_class(artifact.task), artifact.path, **kwargs)
    model.eval()
    return model, load_hf_tokenizer(artifact.path)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def head_module_names(model) -> list[str]:
    """Top-level children that are not the base encoder (the task head)."""
    prefix = model.base_model_prefix
    return [name for name, _ in model.named_children() if name != prefix]


def reinit_head(model) -> list[str]:
    names = head_module_names(model)
    for name in names:
        head = getattr(model, name)
        # transformers 5's init functions skip tensors marked as loaded (_is_hf_initialized): unmark the head's,
        # or "re-initialised" would keep the loaded weights.
        for module in head.modules():
            if getattr(module, "_is_hf_initialized", False):
                module._is_hf_initialized = False
            for param in module.parameters(recurse=False):
                if getattr(param, "_is_hf_initialized", False):
                    param._is_hf_initialized = False
        head.apply(model._init_weights)
    return names
