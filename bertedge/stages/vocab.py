"""trim-vocab: keep only the wordpieces a task's text uses, and their embedding rows.

A small BERT spends most of its bytes on the word embedding matrix: MiniLM-L6-H384 has 30,522 x 384 =
11.7M embedding parameters against 10.6M in its six layers, and a 3-layer int8 student of it is 2/3
embedding table. A classifier for one domain uses a fraction of the vocabulary. This stage counts the
token ids the task's own features use (train split by default, tokenized exactly as the model sees
them), keeps those plus the special tokens and (by default) every single-character piece, renumbers
them in their original order, slices the embedding matrix to the kept rows and rewrites the tokenizer
files to the new ids. Text made of kept pieces tokenizes to the same pieces as before, so the model
computes the same outputs on it; a word whose pieces were dropped falls back to shorter pieces (the
single characters are kept for that) or, at worst, [UNK]. The stage measures what that costs: the
dev metric before and after, the dev [UNK] rate before and after, and how many checked features
changed tokenization. The result is an ordinary PyTorch artifact: evaluate, export, quantize it.

`dropped` chooses what becomes of the tokens that are not kept. `split` (the default) is the above: the
tokenizer forgets them. `nearest` and `cluster` leave the tokenizer untouched, so every runtime tokenizes
exactly as before, and give each dropped token a shared embedding row instead: the row of its most
similar kept token (cosine), or one of `clusters` k-means centroids of the dropped rows (the rest of
`max_size` are kept tokens). The PyTorch model keeps its full-size matrix with repeated rows; export
stores each distinct row once with an index table in front of it (onnx_graph.share_embedding_rows), so
the bundle's embedding holds `max_size` rows either way. On SST-2 a dev word the train split never used
is better served by a shared row than by a split into characters (docs/optimize.md).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .. import log
from ..artifacts import (
    Artifact,
    atomic_artifact,
    check_output_path,
    derived_record,
    load_artifact,
    require_fp32_torch_artifact,
)
from ..config import DataConfig, StrictModel
from ..data import subsample
from ..errors import ArtifactError, ConfigError
from ..evaluate import artifact_view, evaluate_split, load_task_data, task_settings

CHECK_SAMPLES = 2000  # features re-tokenized with the new tokenizer to prove the id mapping


class TrimVocabConfig(StrictModel):
    splits: list[Literal["train"]] = Field(
        ["train"], description="Splits whose text is counted: train only (dev or test text would let the evaluation "
                               "data choose the vocabulary)")
    unlabeled: list[str] = Field(default_factory=list, description="Unlabeled in-domain text files counted besides "
                                 "train (.txt: one example a line, tab between a pair's fields; .jsonl: as distill "
                                 "--unlabeled); an example whose text equals a dev or test example's is left out")
    min_count: int = Field(1, ge=1, description="Keep a counted token seen at least this many times")
    max_size: int | None = Field(None, ge=1, description="Largest vocabulary, special and character tokens included "
                                                         "(the most frequent counted tokens fill the rest)")
    keep_chars: Literal["all", "ascii", "none"] = Field(
        "all", description="Also keep the single-character pieces (x and ##x) — all of them, the ASCII ones only "
                           "(English text; 136 instead of 1,994 in BERT's uncased vocabulary), or none — so that a "
                           "word outside the kept vocabulary splits into pieces rather than becoming [UNK]")
    dropped: Literal["split", "nearest", "cluster"] = Field(
        "split", description="Tokens not kept: split (the tokenizer forgets them; words fall back to kept pieces), "
                             "nearest (tokenizer unchanged; each shares the row of its most similar kept token) or "
                             "cluster (tokenizer unchanged; they share k-means centroid rows, `clusters` of max_size)")
    clusters: int | None = Field(None, ge=1, description="cluster: how many of the max_size rows are centroids of the "
                                                         "dropped rows (default: an eighth of max_size)")
    eval_batch_size: int = Field(64, ge=1, description="Batch size of the dev evaluations")
    data: DataConfig = Field(default_factory=DataConfig)

    @model_validator(mode="after")
    def _clusters_fit(self):
        if self.clusters is not None and self.dropped != "cluster":
            raise ValueError("clusters is the number of centroid rows of dropped: cluster; set dropped: cluster "
                             "or leave clusters out")
        if self.dropped == "cluster":
            if self.max_size is None:
                raise ValueError("dropped: cluster needs max_size (the rows kept tokens and centroids share)")
            if self.clusters is not None and self.clusters >= self.max_size:
                raise ValueError(f"clusters {self.clusters} leaves no row of max_size {self.max_size} to kept "
                                 "tokens; use fewer clusters than max_size")
        return self

    def centroid_rows(self) -> int:
        """Rows of max_size given to centroids of the dropped tokens (0 unless dropped is cluster)."""
        if self.dropped != "cluster" or self.max_size is None:
            return 0
        return self.clusters if self.clusters is not None else max(1, self.max_size // 8)

    @field_validator("splits", mode="before")
    @classmethod
    def _train_only(cls, value):
        for split in value if isinstance(value, list) else [value]:
            if split in ("dev", "test"):
                raise ValueError(f"{split} text is never counted: the evaluation data would choose the vocabulary; "
                                 "count train, plus unlabeled in-domain text (unlabeled / --unlabeled FILE)")
        return value


def _text_key(example: dict) -> tuple:
    """An example's text, whitespace- and case-normalised: how unlabeled text is matched against dev and test."""
    if "tokens" in example:
        return (" ".join(example["tokens"]).lower(),)
    return tuple(" ".join(str(example[k]).split()).lower() for k in ("text", "text_pair", "question", "context")
                 if example.get(k) is not None)


def kept_ids(counts: Counter, vocab: dict[str, int], special: set[int],
              config: TrimVocabConfig) -> tuple[list[int], dict]:
    chars = {i for t, i in vocab.items() if (len(t) == 1 or (t.startswith("##") and len(t) == 3))
             and (config.keep_chars == "all" or t[-1].isascii())} if config.keep_chars != "none" else set()
    always = special | chars
    if config.max_size is not None and config.max_size - config.centroid_rows() < len(always):
        extra = f" plus {config.centroid_rows()} centroid rows" if config.centroid_rows() else ""
        raise ConfigError(f"max_size {config.max_size} is smaller than the {len(always)} special and single-character "
                          f"tokens that are always kept{extra}", where="max_size",
                          fix=f"Raise it above {len(always) + config.centroid_rows()}, or set keep_chars to ascii "
                              "or none" + (", or use fewer clusters" if extra else ""))
    room = None if config.max_size is None else config.max_size - config.centroid_rows() - len(always)
    ranked = [i for i, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
              if c >= config.min_count and i not in always]
    chosen = ranked if room is None else ranked[:room]
    kept = sorted(always | set(chosen))  # chosen: distinct ids (keys of counts)
    return kept, {"special": len(special), "single_characters": len(chars - special),
                  "counted_kept": len(chosen), "counted_distinct": len(counts),
                  "counted_dropped": len([i for i in counts if i not in always]) - len(chosen)}


def _remap_backend(backend: dict, old2new: dict[int, int], tokens: list[str]) -> dict:
    """The tokenizer.json of the trimmed vocabulary: same pipeline, new ids."""
    backend = json.loads(json.dumps(backend))
    backend["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
    for added in backend.get("added_tokens") or []:
        added["id"] = old2new[added["id"]]
    post = backend.get("post_processor")
    processors = (post.get("processors") or [post]) if post else []
    for p in processors:
        if p.get("type") == "TemplateProcessing":
            for special in p["special_tokens"].values():
                special["ids"] = [old2new[i] for i in special["ids"]]
        elif p.get("type") == "BertProcessing":
            for key in ("sep", "cls"):
                p[key] = [p[key][0], old2new[p[key][1]]]
    if backend.get("padding"):
        backend["padding"]["pad_id"] = old2new[backend["padding"]["pad_id"]]
    return backend


def _rewrite_tokenizer_files(path: Path, backend: dict, old2new: dict[int, int], tokens: list[str]) -> None:
    (path / "tokenizer.json").write_text(json.dumps(backend, ensure_ascii=False), encoding="utf-8")
    if (path / "vocab.txt").exists():
        (path / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    config_file = path / "tokenizer_config.json"
    if config_file.exists():
        tok_config = json.loads(config_file.read_text(encoding="utf-8"))
        decoder = tok_config.get("added_tokens_decoder")
        if decoder:
            tok_config["added_tokens_decoder"] = {str(old2new[int(k)]): v for k, v in decoder.items()}
        config_file.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def shared_rows(weight, kept: list[int], config: TrimVocabConfig, *, iterations: int = 20, chunk: int = 4096):
    """The embedding matrix with every dropped token's row replaced by a shared one.

    nearest: the row of the kept token with the highest cosine similarity. cluster: the nearest of
    `config.centroid_rows()` k-means centroids (seeded, Euclidean) of the dropped rows. Kept rows are
    unchanged. Returns the new matrix and a record of how many distinct rows it has.
    """
    import torch

    vocab_rows = weight.shape[0]
    kept_index = torch.tensor(kept, dtype=torch.long)
    dropped = torch.ones(vocab_rows, dtype=torch.bool)
    dropped[kept_index] = False
    dropped_index = dropped.nonzero().flatten()
    rows = weight.clone()
    record: dict[str, Any] = {"mode": config.dropped, "kept": len(kept), "dropped_tokens": len(dropped_index)}
    if not len(dropped_index):
        return rows, {**record, "centroids": 0, "rows": len(kept)}
    if config.dropped == "nearest":
        targets = torch.nn.functional.normalize(weight[kept_index], dim=1)
        for start in range(0, len(dropped_index), chunk):
            ids = dropped_index[start:start + chunk]
            best = (torch.nn.functional.normalize(weight[ids], dim=1) @ targets.T).argmax(1)
            rows[ids] = weight[kept_index[best]]
        return rows, {**record, "centroids": 0, "rows": len(kept)}
    points = weight[dropped_index]
    k = min(config.centroid_rows(), len(points))
    generator = torch.Generator().manual_seed(0)
    centroids = points[torch.randperm(len(points), generator=generator)[:k]].clone()

    def assign() -> torch.Tensor:
        return torch.cat([torch.cdist(points[s:s + chunk], centroids).argmin(1)
                          for s in range(0, len(points), chunk)])

    for _ in range(iterations):
        labels = assign()
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        sizes = torch.bincount(labels, minlength=k)
        filled = sizes > 0  # an empty cluster keeps its previous centroid
        centroids[filled] = sums[filled] / sizes[filled].unsqueeze(1).to(sums.dtype)
    labels = assign()
    rows[dropped_index] = centroids[labels]
    used = int(torch.unique(labels).numel())
    return rows, {**record, "centroids": used, "rows": len(kept) + used}


def _ids(features: list[dict]) -> list[list[int]]:
    return [list(f["input_ids"]) for f in features]


def trim_vocab(src: str | Path | Artifact, config: TrimVocabConfig, out: str | Path, *,
               overwrite: bool = False) -> Artifact:
    """Write a copy of a PyTorch artifact whose vocabulary holds only the tokens its task's text uses."""
    parent = src if isinstance(src, Artifact) else load_artifact(src)
    require_fp32_torch_artifact(parent, "trim-vocab",
                                bundle_fix="Trim the artifact the bundle was exported from, then export the trimmed one",
                                program_fix="Trim the fp32 artifact first, then quantize it")
    out = check_output_path(out, overwrite=overwrite)

    import torch

    from ..modeling import (
        count_parameters,
        encoder_from_hf,
        load_hf_tokenizer,
        load_torch_artifact,
        save_tokenizer,
        tokenizer_record,
    )
    from ..tasks import get_task

    model, hf_tokenizer = load_torch_artifact(parent)
    backend = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    # The tokenizer.json on disk is what bundles and the runtime use. transformers 5 rebuilds a
    # BertTokenizer's pipeline from its vocabulary, so the loaded backend says WordPiece even when the file
    # holds another model: judge the file.
    on_disk = parent.path / "tokenizer.json"
    kind = ((json.loads(on_disk.read_text(encoding="utf-8")) if on_disk.is_file() else backend).get("model")
            or {}).get("type")
    if kind != "WordPiece":
        raise ConfigError(f"trim-vocab handles WordPiece (BERT-style) tokenizers; this artifact's tokenizer is {kind}",
                          where=str(parent.path), fix="Use a BERT-family artifact, or skip this stage")

    view = artifact_view(parent, config.data)
    spec = view.data.data
    data = load_task_data(view, labels=parent.labels or None, need=tuple(dict.fromkeys(["dev", *config.splits])))
    settings = task_settings(view)
    task = get_task(parent.task)
    encoder = encoder_from_hf(hf_tokenizer)

    counted: list[dict] = []
    for split in config.splits:
        limit = config.data.max_train_samples if split == "train" else config.data.max_eval_samples
        counted += subsample(data.split(split), limit, 0)
    if not counted:
        raise ConfigError(f"no text to count in {', '.join(config.splits)}", where=spec, fix="Count a non-empty split")
    unlabeled_record: dict[str, Any] | None = None
    if config.unlabeled:  # in-domain text besides train; never an example of the evaluation splits
        from .distill import read_unlabeled

        evaluation = {_text_key(ex) for split in ("dev", "test") for ex in data.splits.get(split) or []}
        pairs = any(ex.get("text_pair") is not None for ex in counted[:50])
        unlabeled_record = {"files": [str(Path(f).expanduser().absolute()) for f in config.unlabeled],
                            "examples": 0, "left_out_as_dev_or_test": 0}
        for file in config.unlabeled:
            for ex in read_unlabeled(file, parent.task, pairs):
                if _text_key(ex) in evaluation:
                    unlabeled_record["left_out_as_dev_or_test"] += 1
                    continue
                counted.append(task.with_dummy_gold(ex))
                unlabeled_record["examples"] += 1
        if unlabeled_record["left_out_as_dev_or_test"]:
            log.warning(f"trim-vocab: {unlabeled_record['left_out_as_dev_or_test']} unlabeled examples equal a dev "
                        "or test example and were not counted")
    counted_ids = _ids(task.eval_features(counted, encoder, settings))
    counts = Counter(i for ids in counted_ids for i in ids)

    vocab: dict[str, int] = backend["model"]["vocab"]
    special = {a["id"] for a in backend.get("added_tokens") or []} | set(hf_tokenizer.all_special_ids)
    kept, kept_record = kept_ids(counts, vocab, special, config)
    id_to_token = {i: t for t, i in vocab.items()}
    tokens = [id_to_token[i] for i in kept]
    old2new = {old: new for new, old in enumerate(kept)}

    dev_examples = subsample(data.split("dev"), config.data.max_eval_samples, 0)
    metric = parent.manifest.get("primary_metric") or task.primary_metric

    def evaluate(m, enc) -> dict:
        return evaluate_split(m, enc, parent.task, dev_examples, settings, data.labels, config.eval_batch_size)

    def unk_rate(enc, unk_id) -> float:
        ids = [i for f in _ids(task.eval_features(dev_examples, enc, settings)) for i in f]
        return round(sum(i == unk_id for i in ids) / max(len(ids), 1), 6)

    dev_before = evaluate(model, encoder)
    unk_before = unk_rate(encoder, hf_tokenizer.unk_token_id)
    params_before = count_parameters(model)
    old_embedding = model.get_input_embeddings()
    embedding_before = old_embedding.weight.numel()
    shared = config.dropped != "split"
    if shared:  # tokenizer unchanged; dropped tokens share rows, stored once by export
        with torch.no_grad():
            rows, shared_record = shared_rows(old_embedding.weight.detach(), kept, config)
            old_embedding.weight.copy_(rows)
        new_embedding = old_embedding
        embedding_rows = shared_record["rows"]
    else:
        pad_old = old_embedding.padding_idx
        new_embedding = torch.nn.Embedding(len(kept), old_embedding.embedding_dim,
                                           padding_idx=old2new.get(pad_old) if pad_old is not None else None)
        with torch.no_grad():
            new_embedding.weight.copy_(old_embedding.weight[torch.tensor(kept, dtype=torch.long)])
        model.set_input_embeddings(new_embedding)
        model.config.vocab_size = len(kept)
        if getattr(model.config, "pad_token_id", None) is not None and model.config.pad_token_id in old2new:
            model.config.pad_token_id = old2new[model.config.pad_token_id]
        embedding_rows, shared_record = len(kept), None

    with atomic_artifact(out, stage="trim-vocab", task=parent.task, overwrite=overwrite) as writer:
        model.save_pretrained(writer.path, safe_serialization=True)
        save_tokenizer(hf_tokenizer, writer.path)
        if shared:
            new_tokenizer, new_encoder, changed, checked = hf_tokenizer, encoder, 0, 0
        else:
            _rewrite_tokenizer_files(writer.path, _remap_backend(backend, old2new, tokens), old2new, tokens)
            new_tokenizer = load_hf_tokenizer(writer.path)
            expected_pad = old2new.get(hf_tokenizer.pad_token_id)
            if new_tokenizer.vocab_size != len(kept) or new_tokenizer.pad_token_id != expected_pad:
                raise ArtifactError(f"the rewritten tokenizer reads back with {new_tokenizer.vocab_size} tokens and "
                                    f"pad id {new_tokenizer.pad_token_id}, expected {len(kept)} and "
                                    f"{expected_pad}", where=str(parent.path),
                                    fix="Report this tokenizer layout as a bug; the untrimmed artifact is unchanged")
            new_encoder = encoder_from_hf(new_tokenizer)
            # Proof of the mapping: counted text re-tokenized with the new tokenizer gives the old ids renumbered
            # (exactly, unless min_count / max_size dropped some counted tokens).
            sample = subsample(counted, CHECK_SAMPLES, 0)
            old_ids, new_ids = _ids(task.eval_features(sample, encoder, settings)), \
                _ids(task.eval_features(sample, new_encoder, settings))
            changed = sum(1 for o, n in zip(old_ids, new_ids) if [old2new.get(i, -1) for i in o] != n)
            checked = len(old_ids)
            if kept_record["counted_dropped"] == 0 and changed:
                raise ArtifactError(f"{changed} of {len(old_ids)} counted features tokenize differently after "
                                    "trimming", where=str(parent.path),
                                    fix="Report this tokenizer as a bug; use the untrimmed artifact")
        model.eval()
        dev_after = evaluate(model, new_encoder)
        unk_id = new_tokenizer.unk_token_id
        hidden = new_embedding.weight.shape[1]
        record = {
            "vocab_before": len(vocab), "vocab_after": len(vocab) if shared else len(kept), **kept_record,
            "dropped": config.dropped, "embedding_rows": embedding_rows, "shared_rows": shared_record,
            "counted_splits": config.splits, "counted_examples": len(counted), "unlabeled": unlabeled_record,
            "counted_tokens": sum(counts.values()),
            "embedding_parameters_before": embedding_before,
            "embedding_parameters_after": embedding_rows * hidden,  # as the exported bundle stores them
            "dev_unk_rate_before": unk_before, "dev_unk_rate_after": unk_rate(new_encoder, unk_id),
            "checked_features": checked, "retokenized_features": changed,
        }
        derived = derived_record(parent, settings, metric, config)
        if shared:  # carried by later PyTorch stages (prune), which keep the shared rows frozen
            derived["model"] = {**(derived.get("model") or {}), "shared_embedding_rows": embedding_rows}
        writer.manifest.update({
            **derived,
            "data": {**data.source, "dev_examples": len(dev_examples)},
            "tokenizer": tokenizer_record(new_tokenizer),
            "parameters": count_parameters(model),
            "metrics": {"dev": dev_after, "dev_before": dev_before},
            "vocab": record,
            "torch_threads": torch.get_num_threads(),
        })
        how = (f"{len(vocab):,} tokens share {embedding_rows:,} embedding rows ({config.dropped})" if shared
               else f"{len(vocab):,} -> {len(kept):,} tokens")
        log.info(f"trim-vocab: {how} ({params_before:,} -> {count_parameters(model):,} parameters"
                 + (", before export shares the rows" if shared else "")
                 + f"); dev {metric} {dev_before.get(metric, float('nan')):.4f} "
                 f"-> {dev_after.get(metric, float('nan')):.4f}; dev [UNK] rate {unk_before:.2%} -> "
                 f"{record['dev_unk_rate_after']:.2%}")
    return load_artifact(out)
