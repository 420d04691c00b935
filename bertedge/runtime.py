"""Torch-free inference over an exported bundle: onnxruntime + tokenizers + numpy only.

    from bertedge.runtime import Bundle
    bundle = Bundle("bundles/sst2")
    bundle.predict(["a gripping film", "dull"])            # [{"label": "1", "score": 0.97, ...}, ...]
    bundle.predict([{"question": "...", "context": "..."}])   # answers with character spans

Importing this module and predicting never imports torch or transformers (a test checks
sys.modules), so a deployment needs only `pip install onnxruntime tokenizers numpy` plus
bertedge itself. Pre- and postprocessing are the task modules' own code, the same code that
evaluated the PyTorch model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import Artifact, load_artifact
from .errors import ArtifactError, ConfigError, DataError
from .tasks import TaskSettings, get_task
from .tasks.base import run_forward
from .tasks.classification import softmax
from .tasks.token import get_entities
from .tokenization import TextEncoder

# Raw NER text is split into words the way CoNLL data is: runs of letters/digits, and every
# other non-space character (punctuation, symbols, emoji) on its own.
WORD_PATTERN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of `text` and their [start, end) character spans."""
    matches = list(WORD_PATTERN.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def session_forward(session):
    """numpy-in, numpy-out forward over an InferenceSession, feeding only the inputs it declares."""
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]

    def forward(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = session.run(output_names, {name: batch[name] for name in input_names})
        return dict(zip(output_names, values))

    return forward


# Ops that compute their activation scale at run time, over the whole input tensor: the batch and its
# padding. A graph with any of them gives a sequence different outputs depending on what else is in
# its batch (ONNX Runtime's dynamic int8: one scale per tensor, not per sequence).
RUNTIME_SCALE_OPS = frozenset({"DynamicQuantizeLinear", "QAttention", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


def batch_invariant(manifest: dict) -> bool:
    """Whether a bundle's predictions for one input are independent of the rest of its batch.

    Read from the manifest (quantize records it; older bundles: from the op counts it recorded), so
    another language binding can read the same field.
    """
    quantization = manifest.get("quantization") or {}
    if "batch_invariant" in quantization:
        return bool(quantization["batch_invariant"])
    ops = quantization.get("op_counts") or {}
    return not any(ops.get(op) for op in RUNTIME_SCALE_OPS)


def _settings(artifact: Artifact) -> TaskSettings:
    recorded = artifact.manifest.get("settings") or {}
    return TaskSettings(**{k: v for k, v in recorded.items() if k in TaskSettings.__dataclass_fields__})


_SURROGATES = re.compile("[\ud800-\udfff]")


def tokenizable(text: str) -> str:
    """`text` with lone UTF-16 surrogates (which no UTF-8 tokenizer accepts) replaced by U+FFFD.

    One code point for one, so character offsets into the result are offsets into the original.
    """
    return _SURROGATES.sub("\ufffd", text)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


class Bundle:
    """An exported bundle loaded for inference.

    `encoder` tokenizes exactly as training did; `forward(batch)` runs the ONNX model on
    numpy inputs; `predict(items)` goes from raw inputs to labels / entities / answers.
    `model_file="model.ort"` loads the ORT-format model written by `export --ort-format`.

    `per_sequence`: run every sequence on its own, at its own length (no padding), so that a text's
    prediction never depends on the rest of the batch. Default (None): on for bundles whose graph
    computes activation scales at run time (dynamic int8, see `batch_invariant`), off otherwise
    (their outputs do not depend on the batch, and batching is faster).

    `spinning`, `cpu_mem_arena`, `mem_pattern`: ONNX Runtime session options (`providers.make_session`);
    None keeps ORT's default (spinning, arena and memory patterns on). Measured over 10,000 one-text
    predictions of random lengths 3-512 (benchmarks/results/soak-rss.md, tests/test_soak.py), ORT's
    defaults stop growing after warm-up and use the least memory; the arena off alone costs ~30 MB more.

    Early-exit bundles (manifest `early_exit.segments`, docs/early_exit.md) run segment by segment and stop
    at the first confident exit; outputs gain `exit_layer`. `full_depth=True` runs every layer (the
    full-depth model's logits); `rule` and `threshold` override the manifest's. `segment_calls[k]` counts the runs of
    segment k.
    """

    def __init__(self, path: str | Path, *, provider: str = "cpu", threads: int | None = None,
                 model_file: str | None = None, optimization: str = "all", per_sequence: bool | None = None,
                 spinning: bool | None = None, cpu_mem_arena: bool | None = None, mem_pattern: bool | None = None,
                 full_depth: bool = False, rule: str | None = None, threshold: float | None = None):
        from .providers import make_session

        self.artifact = load_artifact(path)
        self.path = self.artifact.path
        if not self.artifact.is_bundle:
            raise ArtifactError("not an ONNX bundle (no model.onnx)", where=str(self.path),
                                fix="Pass a directory written by `bertedge export` (or quantize)")
        self.manifest = self.artifact.manifest
        self.task = get_task(self.artifact.task)
        self.labels = self.artifact.labels or None
        self.settings = _settings(self.artifact)
        exits = self.manifest.get("early_exit") or {}
        self.early_exit: dict | None = exits if exits.get("segments") else None
        self.full_depth = bool(full_depth)
        self.segment_calls: list[int] = []
        if self.early_exit and model_file:
            raise ArtifactError(f"an early-exit bundle has no {model_file}", where=str(self.path),
                                fix="Load it without model_file / --ort-format")
        model_path = self.path / (self.early_exit["segments"][0]["file"] if self.early_exit
                                  else model_file or "model.onnx")
        if not model_path.is_file():
            raise ArtifactError(f"bundle has no {model_path.name}", where=str(self.path),
                                fix="Re-export with --ort-format to get model.ort" if model_path.suffix == ".ort"
                                else "Re-export the bundle")
        if not (self.path / "tokenizer.json").is_file():
            raise ArtifactError("bundle has no tokenizer.json", where=str(self.path), fix="Re-export the bundle")
        self.session_options: dict[str, Any] = {"spinning": spinning, "cpu_mem_arena": cpu_mem_arena, "mem_pattern": mem_pattern}
        self.session = make_session(model_path, provider, threads=threads, optimization=optimization,
                                    **self.session_options)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        tokenizer = self.manifest.get("tokenizer") or {}
        # The encoder builds exactly the inputs the graph declares.
        self.encoder = TextEncoder.from_dir(self.path, pad_token_id=tokenizer.get("pad_token_id"),
                                            model_input_names=self.input_names)
        self._forward = session_forward(self.session)
        if self.early_exit:
            self._setup_early_exit(provider, threads, optimization, rule, threshold)
        self.batch_invariant = batch_invariant(self.manifest)
        self.per_sequence = (not self.batch_invariant) if per_sequence is None else bool(per_sequence)
        interface = self.manifest.get("interface") or {}
        self.input_kind = interface.get("input_kind") or self.task.input_kind({})

    def _setup_early_exit(self, provider, threads, optimization, rule, threshold) -> None:
        from .early_exit import check_threshold, run_segments
        from .providers import make_session

        segments = self.early_exit["segments"]
        sessions = [self.session] + [make_session(self.path / s["file"], provider, threads=threads,
                                                  optimization=optimization, **self.session_options)
                                     for s in segments[1:]]
        self.segments = [session_forward(s) for s in sessions]
        self.rule = rule or self.early_exit["rule"]
        if threshold is None and self.rule != self.early_exit["rule"]:
            raise ConfigError(f"the bundle's threshold is for the {self.early_exit['rule']} rule, not {self.rule}",
                              where="rule", fix="Pass a threshold with the rule")
        self.threshold = check_threshold(self.rule, self.early_exit["threshold"] if threshold is None else threshold)
        self.segment_calls = [0] * len(segments)
        self.output_names = ["logits", "exit_layer"]

        def forward(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = run_segments(self.segments, batch, self.rule, self.threshold, full_depth=self.full_depth,
                               calls=self.segment_calls)
            return {"logits": out["logits"], "exit_layer": out["exit_layer"]}

        self._forward = forward

    # ------------------------------------------------------------------ raw model

    def forward(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in batch]
        if missing:
            raise DataError(f"batch lacks the model inputs {', '.join(missing)}", where="forward",
                            fix=f"Pass {', '.join(self.input_names)}")
        return self._forward(batch)

    # ------------------------------------------------------------------ predictions

    def predict(self, items: Iterable[Any], *, batch_size: int = 32,
                where: Iterable[str] | None = None, logits: bool = False) -> list[dict]:
        """Predictions for raw inputs, in order.

        text-classification: a string, or {"text", "text_pair"} (pair models need text_pair);
        token-classification: a string (split into words here) or {"text"} or {"tokens": [...]};
        question-answering: {"question", "context"}. `where` names each item in errors (file:line).
        `logits=True` adds the raw model outputs of each input under "outputs": one dict per model call
        window (classification and NER: one; QA: one per context window), output name -> nested lists
        (per-token outputs trimmed to the window's real tokens), so any binding can be checked against it.
        """
        items = list(items)
        places = list(where) if where is not None else [f"input {i + 1}" for i in range(len(items))]
        examples = [self.normalize(item, place) for item, place in zip(items, places)]
        results: list[dict] = []
        for start in range(0, len(examples), batch_size):
            results.extend(self._predict_batch(examples[start:start + batch_size], batch_size, logits))
        return results

    def normalize(self, item: Any, where: str = "input") -> dict:
        """One raw input -> the task's example dict; bad inputs raise a DataError naming `where`."""
        kind = self.input_kind
        if kind in ("single-sentence", "sentence-pair"):
            if isinstance(item, str):
                item = {"text": item}
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise DataError("expected a text (a string, or an object with a 'text' string)", where=where,
                                fix='Give {"text": "..."}' + (', "text_pair": "..."' if kind == "sentence-pair" else ""))
            pair = item.get("text_pair")
            if kind == "sentence-pair" and not isinstance(pair, str):
                raise DataError("this model classifies sentence pairs but got one text", where=where,
                                fix='Give both texts: {"text": ..., "text_pair": ...} in JSONL, or two '
                                    'tab-separated columns in TSV')
            if kind == "single-sentence" and pair is not None:
                raise DataError("this model classifies single texts but got a text_pair", where=where,
                                fix="Drop text_pair, or use a model trained on sentence pairs")
            return {"text": tokenizable(item["text"]),
                    "text_pair": tokenizable(pair) if kind == "sentence-pair" else None, "label": None}
        if kind == "words":
            if isinstance(item, str):
                item = {"text": item}
            if isinstance(item, dict) and isinstance(item.get("tokens"), list):
                tokens = [tokenizable(str(t)) for t in item["tokens"]]
                return {"tokens": tokens, "tags": None, "_text": None, "_spans": None}
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise DataError("expected a text (a string, {\"text\": ...} or {\"tokens\": [...]})", where=where,
                                fix='Give {"text": "..."}')
            words, spans = split_words(tokenizable(item["text"]))
            return {"tokens": words, "tags": None, "_text": item["text"], "_spans": spans}
        # question-answering
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise DataError("question answering needs a question and a context", where=where,
                            fix='Give {"question": "...", "context": "..."} in JSONL, or question<TAB>context in TSV')
        if not isinstance(item.get("context"), str):
            raise DataError("question answering needs a context, none was given", where=where,
                            fix='Give {"question": "...", "context": "..."} in JSONL, or question<TAB>context in TSV')
        question, cut = self._fit_question(tokenizable(item["question"]))
        return {"id": str(item.get("id", "")), "question": question, "context": tokenizable(item["context"]),
                "answers": {"text": [], "answer_start": []}, "_question_truncated": cut, "_context": item["context"]}

    def _fit_question(self, question: str) -> tuple[str, bool]:
        """Shorten a question that leaves no room for a context window (the tokenizer would refuse it)."""
        s = self.settings
        budget = s.max_length - self.encoder.special_tokens_count(True) - s.doc_stride - 1
        enc = self.encoder.encode([question.lstrip()], max_length=10**9)[0]
        pieces = [o for o, t in zip(enc.offsets, enc.special_tokens_mask) if not t]
        if len(pieces) <= budget:
            return question, False
        end = pieces[max(budget, 1) - 1][1]
        stripped = len(question) - len(question.lstrip())
        return question[:stripped + end], True

    def inference_batch_size(self, requested: int) -> int:
        """The batch the model really runs: 1 in per-sequence mode, else what was asked."""
        return 1 if self.per_sequence else requested

    def _predict_batch(self, examples: list[dict], batch_size: int, logits: bool = False) -> list[dict]:
        results, features, outputs = self._predictions(examples, batch_size)
        if logits:
            raw: list[list[dict]] = [[] for _ in examples]
            for feature, out in zip(features, outputs):
                raw[feature["example_index"]].append({k: v.tolist() for k, v in out.items()})
            for result, windows in zip(results, raw):
                result["outputs"] = windows
        return results

    def _predictions(self, examples: list[dict], batch_size: int) -> tuple[list[dict], list[dict], list[dict]]:
        """(one result per example, the model features, the model outputs per feature)."""
        task, settings = self.task, self.settings
        features = task.eval_features(examples, self.encoder, settings)
        outputs = run_forward(features, self.encoder, self._forward, self.inference_batch_size(batch_size),
                              task.per_token_outputs)
        predictions = task.postprocess(examples, features, outputs, settings, self.labels)
        if task.output_kind == "sequence":
            results = [self._classification(p, o) for p, o in zip(predictions, outputs)]
        elif task.output_kind == "token":
            results = [self._entities(ex, f, p, o) for ex, f, p, o in zip(examples, features, predictions, outputs)]
        else:
            results = [{"answer": ex["_context"][p["start"]:p["end"]], "start": p["start"], "end": p["end"],
                        "score": _finite(p["score"]),
                        "windows": p["windows"], "question_truncated": ex["_question_truncated"]}
                       for ex, p in zip(examples, predictions)]
        return results, features, outputs

    def _classification(self, prediction: dict, output: dict) -> dict:
        probs = softmax(output["logits"].astype(np.float64))
        names = self.labels or [str(i) for i in range(len(probs))]
        result = {"label": prediction["label"], "score": prediction["score"],
                  "scores": {name: float(p) for name, p in zip(names, probs)},
                  "truncated": prediction["truncated"]}
        if "exit_layer" in output:
            result["exit_layer"] = int(output["exit_layer"])
        return result

    def _entities(self, example: dict, feature: dict, prediction: dict, output: dict) -> dict:
        """Entities as character spans of the raw text (word indices for pre-split tokens)."""
        probs = softmax(output["logits"].astype(np.float64))
        word_scores = [float(probs[pos].max()) if pos is not None else None for pos in feature["first_piece"]]
        entities = []
        for etype, first, last in get_entities(prediction["tags"]):
            scores = [s for s in word_scores[first:last + 1] if s is not None]
            entity = {"entity": etype, "score": float(np.mean(scores)) if scores else None,
                      "first_word": first, "last_word": last}
            if example["_spans"] is not None:
                start, end = example["_spans"][first][0], example["_spans"][last][1]
                entity.update({"text": example["_text"][start:end], "start": start, "end": end})
            else:
                entity["text"] = " ".join(example["tokens"][first:last + 1])
            entities.append(entity)
        return {"entities": entities, "truncated": prediction["truncated_words"] > 0,
                "truncated_words": prediction["truncated_words"], "words": len(example["tokens"])}


def load_bundle(path: str | Path, **kwargs) -> Bundle:
    return Bundle(path, **kwargs)


# ----------------------------------------------------------------------------- input files

FIELDS = frozenset({"id", "text", "text_pair", "question", "context", "tokens"})
POSITIONAL = {"single-sentence": ("text",), "sentence-pair": ("text", "text_pair"), "words": ("text",),
              "question-context": ("question", "context")}


def _tsv_header(cells: list[str], input_kind: str, recorded: dict | None) -> Callable[[dict, str], dict] | None:
    """When `cells` is a header row, a function (row as {column: cell}, file:line) -> input item; else None.

    A header of the input fields themselves (text, text_pair, question, context, id) maps one to one. For
    classification a header of dataset columns works too (sentence, #1 String / #2 String, the columns the
    bundle was trained on, ...), and the columns it does not need (a label, an index) are ignored.
    """
    names = [c.strip() for c in cells]
    if all(n in FIELDS for n in names):
        return lambda row, where: dict(row)
    if input_kind not in ("single-sentence", "sentence-pair"):
        return None
    from .data import Columns, pick_columns

    attempts = []
    if recorded:
        attempts.append(Columns.from_record(recorded))
    attempts.append(Columns())
    for columns in attempts:
        try:
            picked = pick_columns(names, columns, Path("input"))
        except DataError:
            continue
        if picked.text_columns:
            from .data import join_columns

            def joined(row, where, picked=picked):
                text, pair = join_columns(row, picked, where)
                return {"text": text, **({"text_pair": pair} if pair is not None else {})}
            return joined
        mapping = {picked.text: "text"}
        if picked.text_pair and input_kind == "sentence-pair":
            mapping[picked.text_pair] = "text_pair"
        if "id" in names:
            mapping["id"] = "id"
        return lambda row, where, mapping=mapping: {field: row[column] for column, field in mapping.items()}  # type: ignore[misc]
    return None


def iter_input_file(path: str | Path, input_kind: str, recorded: dict | None = None,
                    label_column: str | None = None) -> Iterator[tuple[str, Any]]:
    """(file:line, raw item) for every input in a .jsonl, .tsv or .txt file, streamed.

    JSONL: one object per line (fields text/text_pair, question/context, tokens, optional id) or a
    JSON string; other fields are ignored. TSV: columns named by a header row (those fields, or for
    classification the dataset's own columns, e.g. sentence and label: the columns not needed are
    ignored), or positional (text[, text_pair]; question, context). Anything else: one text per line.
    Blank lines are skipped in JSONL and TSV. With `label_column`, each item carries that column's value
    as "_gold" (for scoring); `recorded` is the bundle's data record (its columns).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such input file", where=str(path), fix="Check the --input path")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".tsv") and input_kind == "question-context":
        raise DataError("question answering needs structured input (question and context)", where=str(path),
                        fix="Use a .jsonl file with question/context fields, or a .tsv file: question<TAB>context")
    header: tuple[str, ...] | None = None
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                                where=where, fix="Re-encode the file as UTF-8") from None
            line = line.rstrip("\n").rstrip("\r")
            if number == 1:
                line = line.lstrip("\ufeff")
            if suffix == ".jsonl":
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"invalid JSON at column {exc.colno}: {exc.msg}", where=where,
                                    fix="Write one JSON object (or string) per line") from None
                if not isinstance(item, (dict, str)):
                    raise DataError(f"expected a JSON object or string, found {type(item).__name__}", where=where,
                                    fix='Write e.g. {"text": "..."} per line')
                if label_column is not None:
                    if not isinstance(item, dict) or item.get(label_column) is None:
                        raise DataError(f"no '{label_column}' field to score against", where=where,
                                        fix=f"Give every line a \"{label_column}\" field, or drop --label-column")
                    item = {**item, "_gold": str(item[label_column])}
                yield where, item
            elif suffix == ".tsv":
                if not line.strip():
                    continue
                cells = line.split("\t")
                if header is None and number == 1:
                    to_item = _tsv_header(cells, input_kind, recorded)
                    if to_item is not None:
                        header = tuple(c.strip() for c in cells)
                        if label_column is not None and label_column not in header:
                            raise DataError(f"no column '{label_column}' to score against (columns: "
                                            f"{', '.join(header)})", where=where,
                                            fix="Pass --label-column with one of the header's columns")
                        continue
                if header is not None:
                    if len(cells) != len(header):
                        raise DataError(f"expected {len(header)} tab-separated columns as in the header, found "
                                        f"{len(cells)}", where=where, fix="Fix the tabs on that line")
                    row = dict(zip(header, cells))
                    item = to_item(row, where)
                    if label_column is not None:
                        item["_gold"] = row[label_column].strip()
                    yield where, item
                    continue
                if label_column is not None:
                    raise DataError("--label-column needs a header row naming the columns", where=where,
                                    fix="Add a header row (e.g. sentence<TAB>label)")
                names = POSITIONAL[input_kind]
                if len(cells) > len(names):
                    raise DataError(f"expected at most {len(names)} tab-separated columns ({', '.join(names)}), "
                                    f"found {len(cells)}", where=where,
                                    fix="Fix the tabs on that line, or add a header row naming the columns "
                                        "(extra columns are then ignored)")
                yield where, dict(zip(names, cells))
            else:
                if label_column is not None:
                    raise DataError("--label-column needs a .tsv or .jsonl input", where=str(path),
                                    fix="Use a .tsv with a header row, or .jsonl with the label field")
                yield where, line
