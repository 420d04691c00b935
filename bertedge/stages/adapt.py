"""adapt: domain-adaptive pretraining — continue masked-LM training on unlabeled in-domain text.

The output is a transformers model directory (encoder + MLM head + tokenizer) with a manifest
of stage "adapt" and task "fill-mask". It is a base model, not a task model: pass it to
`bertedge finetune --model OUT`. Masking is transformers' DataCollatorForLanguageModeling
(token or whole-word), applied per batch inside the shared training loop; special tokens and
padding are never masked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from .. import log
from ..artifacts import MASKED_LM_TASK, Artifact, atomic_artifact, check_output_path, load_artifact, parent_record
from ..config import StrictModel, TrainConfig
from ..data import subsample
from ..datafiles import SINGLE_COLUMNS, read_lines, read_table
from ..errors import ConfigError, DataError, ModelError
from ..models import resolve_model

ADAPT_TASK = MASKED_LM_TASK
METRIC = "masked_accuracy"
TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl")


def _adapt_train_defaults() -> TrainConfig:
    return TrainConfig(epochs=1.0, lr=5e-5, batch_size=32, warmup_ratio=0.06, metric=METRIC)


class AdaptConfig(StrictModel):
    text: list[str] = Field(..., min_length=1, description="Text files: .txt (one text per line) or .tsv/.csv/.jsonl with a text column")
    text_column: str | None = Field(None, description="Column of a .tsv/.csv/.jsonl file (auto: sentence, text, review, ...)")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Fraction of (non-special) tokens, or words, chosen for masking")
    whole_word_mask: bool = Field(False, description="Mask all word pieces of a word together (then every chosen piece becomes [MASK])")
    max_length: int = Field(128, ge=8, le=4096, description="Max tokens per text; longer texts are truncated")
    max_samples: int | None = Field(None, ge=1, description="Use a seeded random subset of this many texts")
    eval_samples: int = Field(500, ge=0, description="Texts held out to measure masked-token accuracy and perplexity (at most 10%)")
    train: TrainConfig = Field(default_factory=_adapt_train_defaults)


# ----------------------------------------------------------------------------- reading text


def read_texts(files: list[str], column: str | None = None) -> list[str]:
    """Non-empty texts of every file: lines of a .txt, or one column of a .tsv/.csv/.jsonl."""
    texts: list[str] = []
    for name in files:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError("no such text file", where=name, fix="Pass --text FILE (.txt with one text per line, or .tsv)")
        if path.suffix.lower() in TABLE_SUFFIXES:
            header, rows = read_table(path)
            col = column or next((c for c in SINGLE_COLUMNS if c in header), None)
            if col is None or col not in header:
                raise DataError(f"text column '{column or '?'}' not found (columns: {', '.join(header)})",
                                where=str(path), fix=f"Pass --text-column with one of: {', '.join(header)}")
            found = [str(row.get(col) or "").strip() for _, row in rows]
        else:
            found = [line.strip() for line in read_lines(path)]
        found = [t for t in found if t]
        if not found:
            raise DataError("file holds no text (only blank lines or empty cells)", where=str(path),
                            fix="Pass a file with one text per line")
        texts.extend(found)
    return texts


def split_texts(texts: list[str], eval_samples: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded held-out split: at most `eval_samples` and at most 10% of the texts go to eval."""
    n_eval = min(eval_samples, max(1, len(texts) // 10)) if len(texts) >= 2 else 0
    if n_eval == 0:
        return texts, []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    held = set(order[:n_eval].tolist())
    return ([t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held])


# ----------------------------------------------------------------------------- masking


def mlm_collator(hf_tokenizer, mlm_probability: float, whole_word_mask: bool):
    """transformers' masked-LM collator; whole-word masking replaces every chosen piece by [MASK]."""
    from transformers import DataCollatorForLanguageModeling

    if hf_tokenizer.mask_token is None:
        raise ModelError("the tokenizer has no mask token, so masked-LM training is impossible",
                         where="--model", fix="Use a masked-LM encoder (BERT, RoBERTa, ...)")
    extra = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if whole_word_mask else {}
    return DataCollatorForLanguageModeling(hf_tokenizer, mlm=True, mlm_probability=mlm_probability,
                                           whole_word_mask=whole_word_mask, return_tensors="pt", **extra)


class MaskingEncoder:
    """Pads like the TextEncoder, then masks: used as the batch collation of the shared loop.

    Special tokens ([CLS], [SEP], [UNK], ...) and padding are excluded from masking through the
    special-tokens mask handed to the collator.
    """

    def __init__(self, encoder, collator, special_ids: list[int]):
        self.encoder = encoder
        self.collator = collator
        self.pad_token_id = encoder.pad_token_id
        self.model_input_names = encoder.model_input_names
        self.special_ids = np.asarray(sorted(set(special_ids)), dtype=np.int64)

    def collate(self, features: list[dict], pad_to: int | None = None) -> dict[str, np.ndarray]:
        import torch

        batch = self.encoder.collate(features, pad_to=pad_to)
        ids = batch["input_ids"]
        padding = np.ones_like(ids, dtype=bool)
        offsets = np.zeros((*ids.shape, 2), dtype=np.int64)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            padding[i, :k] = False
            if "offsets" in f:
                offsets[i, :k] = f["offsets"]
        special = np.isin(ids, self.special_ids) | padding
        masked, labels = self.collator.torch_mask_tokens(
            torch.from_numpy(ids.copy()), special_tokens_mask=torch.from_numpy(special.astype(np.int64)),
            offset_mapping=offsets if self.collator.whole_word_mask else None)
        batch["input_ids"] = masked.numpy()
        batch["labels"] = labels.numpy()
        return batch


def text_features(texts: list[str], encoder, max_length: int, with_offsets: bool) -> list[dict]:
    features = []
    for enc in encoder.encode(texts, max_length=max_length):
        feature = {"input_ids": list(enc.ids), "token_type_ids": list(enc.type_ids)}
        if with_offsets:
            feature["offsets"] = [list(o) for o in enc.offsets]
        features.append(feature)
    return features


def mlm_metrics(model, batches: list[dict]) -> dict:
    """Masked-token accuracy, mean loss and perplexity over fixed (pre-masked) eval batches."""
    import torch

    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in batches:
            inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.items() if k != "labels"}
            labels = torch.from_numpy(batch["labels"]).to(device)
            logits = model(**inputs).logits
            chosen = labels != -100
            n = int(chosen.sum())
            if n == 0:
                continue
            loss = torch.nn.functional.cross_entropy(logits[chosen].float(), labels[chosen], reduction="sum")
            total_loss += float(loss)
            correct += int((logits[chosen].argmax(-1) == labels[chosen]).sum())
            count += n
    if was_training:
        model.train()
    if count == 0:
        return {METRIC: 0.0, "loss": float("nan"), "perplexity": float("nan"), "masked_tokens": 0}
    mean = total_loss / count
    return {METRIC: correct / count, "loss": mean, "perplexity": float(np.exp(min(mean, 50.0))),
            "masked_tokens": count}


# ----------------------------------------------------------------------------- the stage


def adapt(model: str | None, config: AdaptConfig, out: str | Path, *, overwrite: bool = False) -> Artifact:
    """Continue masked-LM training of `model` on unlabeled text; write a base-model artifact."""
    out = check_output_path(out, overwrite=overwrite)
    if not model:
        raise ConfigError("no model given", where="--model", fix="Pass --model minilm-l6, a directory or an artifact")
    if config.train.metric not in (None, METRIC):
        raise ConfigError(f"adapt selects checkpoints by '{METRIC}', not '{config.train.metric}'",
                          where="train.metric", fix=f"Leave it unset or use {METRIC}")
    resolved = resolve_model(model)
    parent = load_artifact(resolved.path) if resolved.source == "artifact" else None
    if parent is not None and parent.is_bundle:
        raise ModelError("adapt needs a PyTorch model, not an ONNX bundle", where=model,
                         fix="Pass the fine-tuned artifact the bundle was exported from, or a base model")
    texts = read_texts(config.text, config.text_column)
    texts = subsample(texts, config.max_samples, config.train.seed)
    train_texts, eval_texts = split_texts(texts, config.eval_samples, config.train.seed)
    log.info(f"adapt: masked-LM on {len(train_texts)} texts (held out {len(eval_texts)}), model "
             f"{resolved.reference}, mlm_probability {config.mlm_probability}"
             + (", whole-word masking" if config.whole_word_mask else ""))

    import torch
    from transformers import AutoModelForMaskedLM, set_seed

    from ..modeling import count_parameters, encoder_from_hf, load_hf_tokenizer, save_tokenizer, tokenizer_record
    from ..train import train_model

    hf_tokenizer = load_hf_tokenizer(resolved.path)
    collator = mlm_collator(hf_tokenizer, config.mlm_probability, config.whole_word_mask)
    encoder = encoder_from_hf(hf_tokenizer)
    masking = MaskingEncoder(encoder, collator, hf_tokenizer.all_special_ids)

    set_seed(config.train.seed)
    try:
        net, loading = AutoModelForMaskedLM.from_pretrained(resolved.path, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a masked-LM model ({str(exc).splitlines()[0][:200]})", where=resolved.path,
                         fix="Use a BERT-family encoder directory with model.safetensors or pytorch_model.bin") from None
    initialised_head = sorted(k for k in loading["missing_keys"] if not k.startswith(net.base_model_prefix + "."))
    initialised_other = sorted(k for k in loading["missing_keys"] if k.startswith(net.base_model_prefix + "."))
    if initialised_head:
        log.warning(f"adapt: the checkpoint has no MLM head weights for {', '.join(initialised_head)}; "
                    "they start from a random initialisation")

    with_offsets = config.whole_word_mask
    train_features = text_features(train_texts, encoder, config.max_length, with_offsets)
    eval_features = text_features(eval_texts, encoder, config.max_length, with_offsets)
    eval_batches = _fixed_eval_batches(eval_features, masking, hf_tokenizer, config)

    evaluations = []

    def evaluate(m) -> dict:
        evaluations.append(1)
        if eval_batches:
            return mlm_metrics(m, eval_batches)
        # Nothing held out: a rising stand-in makes the loop keep the last checkpoint.
        return {METRIC: float(len(evaluations))}

    before = evaluate(net) if eval_batches else None
    train_config = config.train.model_copy(update={"metric": METRIC})
    with atomic_artifact(out, stage="adapt", task=ADAPT_TASK, overwrite=overwrite) as writer:
        result = train_model(net, train_features, masking, train_config, evaluate, METRIC)  # type: ignore[arg-type]
        net.eval()
        after = evaluate(net) if eval_batches else None
        # Masked-LM classes drop the pooler; keep the source's pooler (and anything else the
        # plain encoder has) so a task model built on this directory starts from it, not from noise.
        kept = _save_with_base_extras(net, resolved.path, writer.path)
        save_tokenizer(hf_tokenizer, writer.path)
        writer.manifest.update({
            "labels": None,
            "config": config.model_dump(mode="json"),
            "model": resolved.record(),
            "parent": parent_record(parent),
            "mlm_head": {
                "initialised": initialised_head,
                "note": ("MLM head weights were missing from the checkpoint and were initialised randomly"
                         if initialised_head else "MLM head loaded from the checkpoint"),
            },
            "initialised_encoder_tensors": initialised_other,
            "kept_from_source": kept,
            "data": {"files": [str(Path(f).absolute()) for f in config.text], "text_column": config.text_column,
                     "texts": len(texts), "train_texts": len(train_texts), "eval_texts": len(eval_texts)},
            "tokenizer": tokenizer_record(hf_tokenizer),
            "parameters": count_parameters(net),
            "primary_metric": METRIC,
            "metrics": {"dev": after, "dev_before": before} if eval_batches else {},
            "training": {k: v for k, v in result.items() if k != "history"},
            "history": result["history"],
            "torch_threads": torch.get_num_threads(),
        })
        if eval_batches:
            log.info(f"adapt: held-out masked accuracy {before[METRIC]:.4f} -> {after[METRIC]:.4f}, "
                     f"perplexity {before['perplexity']:.1f} -> {after['perplexity']:.1f}")
    return load_artifact(out)


def _fixed_eval_batches(features: list[dict], masking: MaskingEncoder, hf_tokenizer, config: AdaptConfig) -> list[dict]:
    """Mask the held-out texts once, with a seeded generator, so every evaluation sees the same masks."""
    import torch

    if not features:
        return []
    fixed = MaskingEncoder(masking.encoder, mlm_collator(hf_tokenizer, config.mlm_probability, config.whole_word_mask),
                           list(masking.special_ids))
    fixed.collator.generator = torch.Generator().manual_seed(config.train.seed)
    size = config.train.eval_batch_size
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    return [fixed.collate([features[i] for i in order[s:s + size]]) for s in range(0, len(order), size)]


def _save_with_base_extras(net, source: str, directory: Path) -> list[str]:
    """save_pretrained of the MLM model plus base-encoder tensors it lacks (the pooler)."""
    from transformers import AutoModel

    prefix = net.base_model_prefix
    base_state = AutoModel.from_pretrained(source).state_dict()
    have = set(getattr(net, prefix).state_dict())
    extras = {f"{prefix}.{k}": v for k, v in base_state.items() if k not in have and "position_ids" not in k}
    if extras:
        state = {**net.state_dict(), **{k: v.detach().clone().contiguous() for k, v in extras.items()}}
        net.save_pretrained(directory, state_dict=state, safe_serialization=True)
    else:
        net.save_pretrained(directory, safe_serialization=True)
    return sorted(extras)
