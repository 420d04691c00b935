"""Load task data from a directory of split files, a data-root name, or the datasets hub.

Examples are plain dicts, the same for every source:

- text-classification: ``{"text": str, "text_pair": str | None, "label": int | None}``
- token-classification: ``{"tokens": [str], "tags": [int] | None}``
- question-answering: ``{"id", "title", "question", "context", "answers": {"text": [...], "answer_start": [...]}}``

Every error names the file and line (or field) and what to do about it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

TASKS = ("text-classification", "token-classification", "question-answering")

SPLIT_ALIASES = {
    "train": ("train",),
    "dev": ("dev", "valid", "validation", "val", "eval", "testa"),
    "test": ("test", "testb"),
}
EXTENSIONS = {
    "text-classification": (".tsv", ".csv", ".jsonl", ".txt"),
    "token-classification": (".txt", ".conll", ".iob", ".tsv", ".jsonl"),
    "question-answering": (".json", ".jsonl"),
}
# Known column layouts, tried in order: GLUE SST-2, MRPC, RTE/MNLI-style, QQP, QNLI, generic.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("#1 String", "#2 String"), ("question1", "question2"),
                ("question", "sentence"), ("premise", "hypothesis"), ("text", "text_pair"))
SINGLE_COLUMNS = ("sentence", "text", "review", "content", "document")
LABEL_COLUMNS = ("label", "Quality", "labels", "gold_label", "class", "target", "category", "intent")

SQUAD_EVAL_EVERY = 5  # by-article split: article i goes to dev when i % 5 == 4 (20%)


@dataclass
class TaskData:
    task: str
    splits: dict[str, list[dict]]
    labels: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[dict]:
        if name not in self.splits:
            have = ", ".join(sorted(self.splits)) or "none"
            raise DataError(f"no '{name}' split (found: {have})", where=self.source.get("path", "data"),
                            fix=f"Add a {name} file (e.g. {name}.tsv) or choose --split from: {have}")
        return self.splits[name]


@dataclass(frozen=True)
class Columns:
    """How to read a dataset beyond its files: which columns hold the text and the label, label names,
    and a dev split carved out of train. The same object is rebuilt from a manifest's `data` record
    (`from_record`), so every later stage reads the data exactly as the first one did."""

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None
    # Several text columns joined into one text with `text_separator`; with two columns and no separator
    # they become a sentence pair (the tokenizer's [SEP] between them).
    text_columns: tuple[str, ...] | None = None
    text_separator: str | None = None
    # Names for the label values in label order (numeric labels sorted numerically), or an explicit
    # {raw value: name} mapping, as manifests record it.
    label_names: tuple[str, ...] | dict[str, str] | None = None
    dev_split: float | None = None  # fraction of train held out as dev (seeded; stratified for classification)
    split_seed: int = 42

    @classmethod
    def from_config(cls, d) -> Columns:
        """From a DataConfig."""
        return cls(d.text_column, d.text_pair_column, d.label_column,
                   tuple(d.text_columns) if d.text_columns else None, d.text_separator,
                   tuple(d.label_names) if d.label_names else None, d.dev_split, d.split_seed)

    @classmethod
    def from_record(cls, recorded: dict) -> Columns:
        """From the `data` record of a manifest (what load_data put in TaskData.source)."""
        columns = recorded.get("columns") or {}
        split = recorded.get("dev_split") or {}
        joined = columns.get("text_columns")
        return cls(None if joined else columns.get("text"), None if joined else columns.get("text_pair"),
                   columns.get("label"), tuple(joined) if joined else None, columns.get("text_separator"),
                   recorded.get("label_names") or None, split.get("fraction"), split.get("seed", 42))

    def joined_pair(self) -> bool:
        return bool(self.text_columns) and len(self.text_columns) == 2 and self.text_separator is None


# ----------------------------------------------------------------------------- locating data


def data_root() -> Path | None:
    """BERTEDGE_DATA_ROOT, else ../shared/data (from the cwd or the source checkout) if it exists."""
    env = os.environ.get("BERTEDGE_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent.parent
    for candidate in (Path.cwd().parent / "shared" / "data", here.parent / "shared" / "data",
                      Path.cwd() / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def resolve_data_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        return path
    root = data_root()
    if root is not None and "/" not in spec and (root / spec).exists():
        return root / spec
    where_root = f"data root {root}" if root else "no data root (set BERTEDGE_DATA_ROOT)"
    raise DataError(f"no such data directory or file (looked in the current directory and {where_root})",
                    where=spec, fix="Pass a directory of split files, a name under the data root, or hub:NAME")


def find_split_files(directory: Path, task: str) -> dict[str, Path]:
    """Map split name -> file, by file stem (train.tsv, dev-v1.1.json, valid.txt, ...)."""
    exts = EXTENSIONS[task]
    found: dict[str, Path] = {}
    files = sorted((p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in exts),
                   key=lambda p: (exts.index(p.suffix.lower()), p.name))
    for file in files:
        words = re.split(r"[-_.\s]+", file.stem.lower())
        for split, aliases in SPLIT_ALIASES.items():
            if split not in found and any(w in aliases for w in words):
                found[split] = file
                break
    return {split: found[split] for split in SPLIT_ALIASES if split in found}


# ----------------------------------------------------------------------------- reading text


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file (BOM dropped). A bad byte is reported as file:line."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError("file is empty", where=str(path), fix="Fill it or remove it from the data directory")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"line is not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})",
                            where=f"{path}:{number}", fix="Re-encode the file as UTF-8") from None
        if number == 1:
            text = text.lstrip("\ufeff")
        out.append(text.rstrip("\r"))
    return out


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and rows (with their 1-based line numbers) of a TSV, CSV or JSONL file."""
    suffix = path.suffix.lower()
    lines = read_lines(path)
    if suffix == ".jsonl":
        rows, header = [], []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON at column {exc.colno}: {exc.msg}", where=f"{path}:{number}",
                                fix="Write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError("expected a JSON object", where=f"{path}:{number}",
                                fix="Write one JSON object per line")
            for key in obj:
                if key not in header:
                    header.append(key)
            rows.append((number, obj))
        return header, rows
    if suffix == ".csv":
        reader = csv.reader(io.StringIO("\n".join(lines) + "\n"), strict=True)
        try:
            records = [(reader.line_num, rec) for rec in reader]
        except csv.Error as exc:
            raise DataError(f"CSV parse error: {exc}", where=f"{path}:{reader.line_num}",
                            fix="Quote fields that contain commas or quotes") from None
    else:  # TSV (GLUE style: no quoting, so '"' is literal)
        records = [(n, line.split("\t")) for n, line in enumerate(lines, start=1)]
    records = [(n, rec) for n, rec in records if any(cell.strip() for cell in rec)]
    if not records:
        raise DataError("file is empty", where=str(path), fix="Fill it or remove it")
    header = [h.strip() for h in records[0][1]]
    rows = []
    for number, rec in records[1:]:
        if len(rec) > len(header):
            # GLUE RTE train.tsv row 2164 has a stray empty field; drop empty extras, keep the last field.
            extra = len(rec) - len(header)
            middle = rec[1:-1]
            if sum(1 for c in middle if c == "") >= extra:
                cleaned, to_drop = [rec[0]], extra
                for cell in middle:
                    if cell == "" and to_drop:
                        to_drop -= 1
                        continue
                    cleaned.append(cell)
                rec = cleaned + [rec[-1]]
        if len(rec) != len(header):
            raise DataError(f"expected {len(header)} fields as in the header, found {len(rec)}",
                            where=f"{path}:{number}", fix="Fix the separators on that line")
        rows.append((number, dict(zip(header, rec))))
    return header, rows


# ----------------------------------------------------------------------------- per-task readers


def pick_columns(header: list[str], columns: Columns, path: Path) -> Columns:
    def require(name: str, what: str) -> str:
        if name not in header:
            raise DataError(f"{what} column '{name}' not found (columns: {', '.join(header)})", where=str(path),
                            fix=f"Pass --{what}-column with one of: {', '.join(header)}")
        return name

    if columns.text_columns:
        joined = tuple(require(name, "text") for name in columns.text_columns)
        label = require(columns.label, "label") if columns.label else next(
            (c for c in LABEL_COLUMNS if c in header and c not in joined), None)
        return Columns(None, None, label, joined, columns.text_separator)
    text = require(columns.text, "text") if columns.text else None
    pair = require(columns.text_pair, "text-pair") if columns.text_pair else None
    if text is None:
        for a, b in PAIR_COLUMNS:
            if a in header and b in header:
                text, pair = a, pair or b
                break
    if text is None:
        text = next((c for c in SINGLE_COLUMNS if c in header), None)
    if text is None:
        raise DataError(f"no text column found (columns: {', '.join(header)})", where=str(path),
                        fix="Pass --text-column (and --text-pair-column for pairs)")
    label = require(columns.label, "label") if columns.label else next((c for c in LABEL_COLUMNS if c in header), None)
    return Columns(text, pair, label)


def join_columns(row: dict, cols: Columns, where: str) -> tuple[str, str | None]:
    """(text, text_pair) of a row read with `text_columns`: two columns and no separator make a pair,
    otherwise the columns are joined into one text with the separator (default: a space)."""
    values = []
    for name in cols.text_columns or ():
        value = row.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise DataError(f"field '{name}' is not a string", where=where, fix="Every text column needs text")
        values.append(value.strip())
    if cols.joined_pair():
        return values[0], values[1]
    separator = " " if cols.text_separator is None else cols.text_separator
    return separator.join(v for v in values if v), None


def read_classification(path: Path, columns: Columns) -> tuple[list[dict], Columns, list[tuple[int, str]]]:
    header, rows = read_table(path)
    cols = pick_columns(header, columns, path)
    examples, raw_labels = [], []
    for number, row in rows:
        if cols.text_columns:
            text, pair = join_columns(row, cols, f"{path}:{number}")
        else:
            text = row.get(cols.text)
            if not isinstance(text, str):
                raise DataError(f"field '{cols.text}' is missing or not a string", where=f"{path}:{number}",
                                fix="Every row needs its text")
            pair = row.get(cols.text_pair) if cols.text_pair else None
        label = row.get(cols.label) if cols.label else None
        if label is not None:
            label = str(label).strip()
            if label == "":
                raise DataError(f"empty label in column '{cols.label}'", where=f"{path}:{number}",
                                fix="Give every row a label")
        raw_labels.append((number, label))
        examples.append({"text": text.strip(), "text_pair": pair.strip() if isinstance(pair, str) else None,
                         "label": label})
    return examples, cols, raw_labels


def read_conll(path: Path, label_field: int = -1) -> list[dict]:
    """Column text (token ... tag), blank line between sentences, -DOCSTART- lines skipped."""
    lines = read_lines(path)
    sentences, tokens, tags, n_fields = [], [], [], None
    for number, line in enumerate(lines, start=1):
        if line.startswith("-DOCSTART-"):
            continue
        if not line.strip():
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        parts = line.split()
        if n_fields is None:
            if len(parts) < 2:
                raise DataError(f"expected at least 2 fields (token and tag), found {len(parts)}",
                                where=f"{path}:{number}", fix="Use 'token ... tag' columns separated by spaces")
            n_fields = len(parts)
        if len(parts) != n_fields:
            raise DataError(f"expected {n_fields} fields, found {len(parts)}", where=f"{path}:{number}",
                            fix="Every token line needs the same columns; separate sentences with a blank line")
        tokens.append(parts[0])
        tags.append(parts[label_field])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    if not sentences:
        raise DataError("no sentences found", where=str(path), fix="Use CoNLL column format")
    return sentences


def read_token_jsonl(path: Path) -> list[dict]:
    _, rows = read_table(path)
    out = []
    for number, row in rows:
        tokens = row.get("tokens")
        tags = row.get("tags", row.get("ner_tags", row.get("labels")))
        if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
            raise DataError("expected 'tokens' and 'tags' lists of equal length", where=f"{path}:{number}",
                            fix='Write {"tokens": [...], "tags": [...]} per line')
        out.append({"tokens": [str(t) for t in tokens], "tags": [str(t) for t in tags]})
    return out


def read_squad(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError("file is empty", where=str(path), fix="Use the SQuAD JSON format")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError("file is not valid UTF-8", where=f"{path}:{line}", fix="Re-encode it as UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON (column {exc.colno}: {exc.msg})", where=f"{path}:{exc.lineno}",
                        fix="Use the SQuAD JSON format") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError("expected a SQuAD object with a 'data' list", where=str(path),
                        fix='Use {"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}')
    examples = []
    for a, article in enumerate(doc["data"]):
        title = article.get("title", f"article-{a}")
        for p, para in enumerate(article.get("paragraphs", [])):
            context = para.get("context")
            if not isinstance(context, str):
                raise DataError("paragraph has no 'context' string", where=f"{path}: data[{a}].paragraphs[{p}]",
                                fix="Every paragraph needs a context")
            for q, qa in enumerate(para.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}] (id {qa.get('id', '?')})"
                answers = qa.get("answers") or []
                for k, ans in enumerate(answers):
                    start, ans_text = ans.get("answer_start"), ans.get("text", "")
                    if not isinstance(start, int) or context[start:start + len(ans_text)] != ans_text:
                        found = context[start:start + len(ans_text)] if isinstance(start, int) else None
                        raise DataError(
                            f"answers[{k}] text {ans_text!r} does not match the context at answer_start={start} "
                            f"(context has {found!r} there)", where=where,
                            fix="Fix answer_start to the character offset of the answer in the context")
                if not isinstance(qa.get("question"), str):
                    raise DataError("question is missing", where=where, fix="Every qa needs a question")
                examples.append({
                    "id": str(qa.get("id", f"{a}-{p}-{q}")), "title": title, "article": a,
                    "question": qa["question"], "context": context,
                    "answers": {"text": [x["text"] for x in answers],
                                "answer_start": [x["answer_start"] for x in answers]},
                })
    if not examples:
        raise DataError("no questions found", where=str(path), fix="Use the SQuAD JSON format")
    return examples


def read_qa_jsonl(path: Path) -> list[dict]:
    _, rows = read_table(path)
    out = []
    for number, row in rows:
        if not isinstance(row.get("question"), str) or not isinstance(row.get("context"), str):
            raise DataError("expected 'question' and 'context' strings", where=f"{path}:{number}",
                            fix='Write {"question", "context", "answers": {"text": [...], "answer_start": [...]}}')
        answers = row.get("answers") or {"text": [], "answer_start": []}
        for t, s in zip(answers.get("text", []), answers.get("answer_start", [])):
            if row["context"][s:s + len(t)] != t:
                raise DataError(f"answer {t!r} does not match the context at answer_start={s}",
                                where=f"{path}:{number}", fix="Fix answer_start")
        out.append({"id": str(row.get("id", number)), "title": row.get("title", ""), "article": 0,
                    "question": row["question"], "context": row["context"], "answers": answers})
    return out


# ----------------------------------------------------------------------------- labels


def ner_label_order(tags: set[str]) -> list[str]:
    """O first, then each entity type's B- and I- tags, types sorted."""
    types = sorted({t.split("-", 1)[1] for t in tags if "-" in t})
    ordered = ["O"] if "O" in tags else []
    for t in types:
        ordered += [p for p in (f"B-{t}", f"I-{t}") if p in tags]
    ordered += sorted(tags - set(ordered))
    return ordered


def class_label_order(values: set[str]) -> list[str]:
    """Numeric labels in numeric order, otherwise alphabetical."""
    if all(re.fullmatch(r"-?\d+", v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def _map_labels(split_examples: dict[str, list[dict]], labels: list[str], key: str, files: dict[str, Path],
                lines: dict[str, list[int]] | None = None) -> None:
    index = {name: i for i, name in enumerate(labels)}
    for split, examples in split_examples.items():
        for i, ex in enumerate(examples):
            value = ex[key]
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v not in index:
                    where = f"{files[split]}:{lines[split][i]}" if lines else f"{files[split]} (sentence {i + 1})"
                    raise DataError(f"label '{v}' does not occur in the train split (train labels: "
                                    f"{', '.join(labels)})", where=where,
                                    fix="Fix the label, or add training examples for it")
            ex[key] = [index[v] for v in value] if isinstance(value, list) else index[value]


# ----------------------------------------------------------------------------- entry point


def load_data(spec: str, task: str, *, columns: Columns | None = None, need: tuple[str, ...] = ("train", "dev"),
              labels: list[str] | None = None) -> TaskData:
    """Load the splits of `spec` for `task`.

    `labels`, when given (e.g. from a fine-tuned artifact), fixes the label order instead of
    deriving it from the train split.
    """
    if task not in TASKS:
        raise DataError(f"unknown task '{task}'", where="--task", fix=f"Choose one of: {', '.join(TASKS)}")
    columns = columns or Columns()
    if spec.startswith("hub:"):
        return load_hub(spec[4:], task, columns=columns, need=need, labels=labels)
    path = resolve_data_path(spec)
    if path.is_file():
        files = {"dev" if "train" not in need else "train": path}
    else:
        files = find_split_files(path, task)
    source: dict[str, Any] = {"path": str(path.absolute()), "files": {k: str(v) for k, v in files.items()}}

    splits: dict[str, list[dict]] = {}
    line_numbers: dict[str, list[int]] = {}
    for split, file in files.items():
        if task == "text-classification":
            examples, cols, raw = read_classification(file, columns)
            source["columns"] = {"text": cols.text, "text_pair": cols.text_pair, "label": cols.label}
            if cols.text_columns:
                source["columns"].update({"text_columns": list(cols.text_columns),
                                          "text_separator": cols.text_separator})
            line_numbers[split] = [n for n, _ in raw]
        elif task == "token-classification":
            examples = read_token_jsonl(file) if file.suffix == ".jsonl" else read_conll(file)
        else:
            examples = read_qa_jsonl(file) if file.suffix == ".jsonl" else read_squad(file)
        splits[split] = examples

    # Only a dev file (SQuAD here): train and dev are always its disjoint article sets, so
    # evaluating an artifact later sees the same held-out articles it was selected on.
    if task == "question-answering" and "train" not in splits and "dev" in splits and path.is_dir():
        source["files"]["train"] = source["files"]["dev"]
        if columns.dev_split is not None:  # the fraction asked for, by article, instead of the fixed 20%
            splits["train"] = splits.pop("dev")
            del source["files"]["dev"]
        else:
            splits["train"], splits["dev"], source["split"] = split_by_article(splits["dev"])

    if columns.dev_split is not None:
        if "train" not in splits:
            raise DataError("--dev-split carves dev out of train, but there is no train split", where=str(path),
                            fix="Add a train file, or drop --dev-split")
        if "dev" in splits:
            raise DataError(f"the data already has a dev split ({Path(source['files']['dev']).name}); --dev-split "
                            "only carves one out of train when there is none", where=str(path),
                            fix="Drop --dev-split to use the dev file")
        train_index, dev_index, source["dev_split"] = carve_dev_split(
            splits["train"], task, columns.dev_split, columns.split_seed)
        source["files"]["dev"] = source["files"]["train"]
        # The same indices split the examples and their line numbers (for file:line errors).
        for table in (splits, line_numbers) if line_numbers else (splits,):
            rows = table["train"]
            table["train"], table["dev"] = [rows[i] for i in train_index], [rows[i] for i in dev_index]

    for split in need:
        if split not in splits:
            have = ", ".join(f"{k}={Path(v).name}" for k, v in source["files"].items()) or "no split files"
            aliases = "/".join(SPLIT_ALIASES[split])
            hint = " or carve one out of train with --dev-split 0.1" if split == "dev" and "train" in splits else ""
            raise DataError(f"no {split} split found (found: {have})", where=str(path),
                            fix=f"Add a file named {aliases} with one of the extensions {', '.join(EXTENSIONS[task])}"
                                + hint)

    if task != "question-answering":
        key = "label" if task == "text-classification" else "tags"
        if labels is None:
            if "train" not in splits:
                raise DataError("cannot derive labels without a train split", where=str(path),
                                fix="Add a train file, or evaluate an artifact that records its labels")
            values = set()
            for ex in splits["train"]:
                if ex[key] is None:
                    if task == "text-classification" and not (source.get("columns") or {}).get("label"):
                        raise DataError("no label column found in the train split", where=str(files["train"]),
                                        fix="Pass --label-column NAME")
                    raise DataError("train split has an example without a label", where=str(files["train"]),
                                    fix="Label every training example")
                values.update(ex[key] if isinstance(ex[key], list) else [ex[key]])
            labels = ner_label_order(values) if task == "token-classification" else class_label_order(values)
        if columns.label_names is not None:
            if task != "text-classification":
                raise DataError("label names apply to classification labels only", where="--label-names",
                                fix="Drop --label-names (NER tags are names already)")
            labels = _apply_label_names(splits, labels, columns.label_names, files, source)
        if task == "text-classification" and len(labels) < 2:
            raise DataError(f"only one label ({labels[0] if labels else 'none'}) in the train split",
                            where=str(files.get("train", path)), fix="Classification needs at least two labels")
        _map_labels(splits, labels, key, files, line_numbers or None)
    return TaskData(task=task, splits=splits, labels=labels, source=source)


def _apply_label_names(splits: dict[str, list[dict]], labels: list[str], names, files: dict[str, Path],
                       source: dict) -> list[str]:
    """Rename raw label values (e.g. 1..4) to `names` in label order, or by an explicit {raw: name} map.

    Returns the label list in names; `labels` may already be names (an artifact's) when `names` is a map.
    """
    if isinstance(names, dict):
        mapping = {str(k): str(v) for k, v in names.items()}
    else:
        names = [str(n) for n in names]
        raw = {ex["label"] for ex in splits.get("train", []) if ex["label"] is not None}
        if raw and not raw & set(names):  # `labels` may be an artifact's names: name the raw values in order
            labels = class_label_order(raw)
        if len(names) != len(labels):
            raise DataError(f"--label-names gives {len(names)} names but the train split has {len(labels)} labels "
                            f"({', '.join(labels)})", where="--label-names",
                            fix=f"Give exactly {len(labels)} names, in the order {', '.join(labels)}")
        if len(set(names)) != len(names):
            dupe = next(n for n in names if names.count(n) > 1)
            raise DataError(f"label name '{dupe}' is given twice", where="--label-names", fix="Give distinct names")
        mapping = dict(zip(labels, names))
    for split, examples in splits.items():
        for ex in examples:
            value = ex["label"]
            if value is None:
                continue
            if value not in mapping:
                if value in mapping.values():  # already a name
                    continue
                raise DataError(f"label '{value}' has no name (named: {', '.join(mapping)})",
                                where=f"{files.get(split, 'data')}", fix="Name every label value in --label-names")
            ex["label"] = mapping[value]
    source["label_names"] = mapping
    return [mapping.get(v, v) for v in labels]


def carve_dev_split(train: list[dict], task: str, fraction: float, seed: int) -> tuple[list[int], list[int], dict]:
    """(train indices, dev indices, the manifest record): `fraction` of train held out as dev, seeded:
    stratified by label for classification (every label with two or more examples keeps at least one in each
    part), by sentence for NER, by article for QA (so no context is in both parts, as the SQuAD split does)."""
    if not 0 < fraction < 1:
        raise DataError(f"--dev-split must be a fraction between 0 and 1, got {fraction}", where="--dev-split",
                        fix="Pass e.g. --dev-split 0.1")
    rng = random.Random(seed)
    if task == "question-answering":
        def group_of(ex):  # the article when the reader knows it, else the title, else the context
            for key in ("article", "title"):
                if ex.get(key) not in (None, ""):
                    return key, ex[key]
            return "context", ex["context"]
        groups: dict = {}
        for i, ex in enumerate(train):
            groups.setdefault(group_of(ex), []).append(i)
        order = sorted(groups, key=lambda g: min(groups[g]))
        rng.shuffle(order)
        target, dev_index = fraction * len(train), []
        for g in order:
            if len(dev_index) >= target:
                break
            dev_index.extend(groups[g])
        held_groups = {group_of(train[i]) for i in dev_index}
        kind, extra = "by article", {"dev_articles": len(held_groups), "train_articles": len(groups) - len(held_groups)}
    elif task == "text-classification":
        by_label: dict = {}
        for i, ex in enumerate(train):
            by_label.setdefault(ex["label"], []).append(i)
        dev_index = []
        for label in sorted(by_label, key=str):
            members = by_label[label]
            rng.shuffle(members)
            take = round(fraction * len(members))
            if len(members) >= 2:
                take = min(max(take, 1), len(members) - 1)
            dev_index.extend(members[:take])
        kind, extra = "stratified by label", {}
    else:
        indices = list(range(len(train)))
        rng.shuffle(indices)
        dev_index = indices[:round(fraction * len(train))]
        kind, extra = "random by sentence", {}
    if not dev_index or len(dev_index) == len(train):
        raise DataError(f"--dev-split {fraction} of {len(train)} training examples leaves an empty split",
                        where="--dev-split", fix="Use a fraction that leaves examples on both sides, e.g. 0.1")
    held = set(dev_index)
    train_index = [i for i in range(len(train)) if i not in held]
    dev_index = sorted(held)
    info = {"kind": kind, "fraction": fraction, "seed": seed, "train_examples": len(train_index),
            "dev_examples": len(dev_index), **extra,
            "note": "dev carved out of the train file with --dev-split; later stages re-derive the same split"}
    return train_index, dev_index, info


def split_by_article(examples: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """Deterministic 80/20 split by article: article i goes to dev when i % 5 == 4."""
    articles = sorted({ex["article"] for ex in examples})
    dev_articles = {a for a in articles if a % SQUAD_EVAL_EVERY == SQUAD_EVAL_EVERY - 1}
    train = [ex for ex in examples if ex["article"] not in dev_articles]
    dev = [ex for ex in examples if ex["article"] in dev_articles]
    info = {
        "kind": "by-article", "rule": f"article index % {SQUAD_EVAL_EVERY} == {SQUAD_EVAL_EVERY - 1} -> dev",
        "train_articles": len(articles) - len(dev_articles), "dev_articles": len(dev_articles),
        "train_questions": len(train), "dev_questions": len(dev),
        "note": "Only the SQuAD dev file is available here; train and dev are disjoint sets of its articles.",
    }
    return train, dev, info


def subsample(examples: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded random subset of n examples (all of them when n is None or larger)."""
    if n is None or n >= len(examples):
        return examples
    rng = random.Random(seed)
    return [examples[i] for i in sorted(rng.sample(range(len(examples)), n))]


def data_fingerprint(data: TaskData) -> str:
    digest = hashlib.sha256()
    for name in sorted(data.source.get("files", {})):
        digest.update(name.encode())
        file = Path(data.source["files"][name])
        if file.exists():
            digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()[:16]


def load_hub(name: str, task: str, *, columns: Columns, need: tuple[str, ...], labels: list[str] | None) -> TaskData:
    """Load a datasets-hub dataset (`NAME` or `NAME/CONFIG`); needs the optional `datasets` package."""
    try:
        import datasets
    except ImportError:
        raise DataError("the datasets package is not installed", where=f"hub:{name}",
                        fix="pip install 'bertedge[hub]', or pass a local data directory") from None
    ds_name, _, config = name.partition("/")
    try:
        ds = datasets.load_dataset(ds_name, config or None)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear line
        raise DataError(f"cannot load from the datasets hub ({str(exc).splitlines()[0][:160]})",
                        where=f"hub:{name}", fix="Check the name and your network, or pass a local data directory") from None
    split_map = {"train": "train", "dev": "validation", "test": "test"}
    splits = {}
    for ours, theirs in split_map.items():
        if theirs not in ds:
            continue
        rows = ds[theirs]
        if task == "text-classification":
            header = list(rows.column_names)
            cols = pick_columns(header, columns, Path(f"hub:{name}[{theirs}]"))
            names = rows.features[cols.label].names if cols.label and hasattr(rows.features[cols.label], "names") else None
            splits[ours] = [{"text": r[cols.text], "text_pair": r[cols.text_pair] if cols.text_pair else None,
                             "label": (names[r[cols.label]] if names else str(r[cols.label]))
                             if cols.label and r[cols.label] is not None and r[cols.label] >= 0 else None}
                            for r in rows]
        elif task == "token-classification":
            tag_col = columns.label or "ner_tags"
            names = rows.features[tag_col].feature.names
            splits[ours] = [{"tokens": r["tokens"], "tags": [names[t] for t in r[tag_col]]} for r in rows]
        else:
            splits[ours] = [{"id": r["id"], "title": r.get("title", ""), "article": 0, "question": r["question"],
                             "context": r["context"], "answers": r["answers"]} for r in rows]
    files = {k: Path(f"hub:{name}[{split_map[k]}]") for k in splits}
    for split in need:
        if split not in splits:
            raise DataError(f"the hub dataset has no {split_map[split]} split", where=f"hub:{name}",
                            fix="Choose a dataset with train and validation splits")
    if task != "question-answering":
        key = "label" if task == "text-classification" else "tags"
        if labels is None:
            values = set()
            for ex in splits["train"]:
                values.update(ex[key] if isinstance(ex[key], list) else [ex[key]])
            values.discard(None)
            labels = ner_label_order(values) if task == "token-classification" else class_label_order(values)
        _map_labels(splits, labels, key, files)
    return TaskData(task=task, splits=splits, labels=labels, source={"path": f"hub:{name}", "hub": name})
