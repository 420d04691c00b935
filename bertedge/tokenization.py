"""A thin layer over `tokenizers.Tokenizer` shared by training, evaluation and the runtime.

It never imports torch or transformers, so the torch-free runtime tokenizes exactly the
way training did.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEFAULT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class TextEncoder:
    def __init__(self, tokenizer, *, pad_token_id: int = 0,
                 model_input_names: tuple[str, ...] | list[str] = DEFAULT_INPUT_NAMES):
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.pad_token_id = int(pad_token_id)
        self.model_input_names = tuple(model_input_names)
        self._truncation: tuple | None = None

    @classmethod
    def from_dir(cls, path: str | Path, *, pad_token_id: int | None = None,
                 model_input_names: tuple[str, ...] | list[str] | None = None) -> "TextEncoder":
        from tokenizers import Tokenizer

        path = Path(path)
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        if pad_token_id is None:
            pad_token_id = _guess_pad_id(path, tokenizer)
        return cls(tokenizer, pad_token_id=pad_token_id,
                   model_input_names=model_input_names or DEFAULT_INPUT_NAMES)

    def _truncate(self, max_length: int, strategy: str, stride: int) -> None:
        key = (max_length, strategy, stride)
        if self._truncation != key:
            self.tokenizer.enable_truncation(max_length, stride=stride, strategy=strategy)
            self._truncation = key

    def encode(self, first: list, second: list | None = None, *, max_length: int,
               strategy: str = "longest_first", stride: int = 0, pretokenized: bool = False):
        """Encodings for a batch; each keeps its extra windows in `.overflowing`."""
        self._truncate(max_length, strategy, stride)
        inputs = list(zip(first, second)) if second is not None else list(first)
        return self.tokenizer.encode_batch(inputs, is_pretokenized=pretokenized)

    def special_tokens_count(self, pair: bool) -> int:
        return self.tokenizer.num_special_tokens_to_add(pair)

    def collate(self, features: list[dict], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Pad a batch of feature dicts to its longest member (or `pad_to`)."""
        length = max(len(f["input_ids"]) for f in features)
        if pad_to is not None:
            length = max(length, pad_to)
        batch: dict[str, np.ndarray] = {}
        n = len(features)
        ids = np.full((n, length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        types = np.zeros((n, length), dtype=np.int64)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = f["input_ids"]
            mask[i, :k] = 1
            if "token_type_ids" in f:
                types[i, :k] = f["token_type_ids"]
        batch["input_ids"] = ids
        if "attention_mask" in self.model_input_names:
            batch["attention_mask"] = mask
        if "token_type_ids" in self.model_input_names:
            batch["token_type_ids"] = types
        return batch


def _guess_pad_id(path: Path, tokenizer) -> int:
    try:
        cfg = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        padding = cfg.get("padding") or {}
        if "pad_id" in padding:
            return int(padding["pad_id"])
    except (OSError, ValueError):
        pass
    for token in ("[PAD]", "<pad>", "<PAD>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0


def encoding_feature(enc) -> dict:
    return {"input_ids": list(enc.ids), "attention_mask": list(enc.attention_mask),
            "token_type_ids": list(enc.type_ids)}
