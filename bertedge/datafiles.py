"""Data files without task knowledge: where data lives, UTF-8 lines, TSV/CSV/JSONL tables, text and label
columns.

The task families (bertedge.tasks) read their split files with these; bertedge.data puts the splits of a
dataset together. Every error names the file and line (or field) and what to do about it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

SPLIT_ALIASES = {
    "train": ("train",),
    "dev": ("dev", "valid", "validation", "val", "eval", "testa"),
    "test": ("test", "testb"),
}
# Known column layouts, tried in order: GLUE SST-2, MRPC, RTE/MNLI-style, QQP, QNLI, generic.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("#1 String", "#2 String"), ("question1", "question2"),
                ("question", "sentence"), ("premise", "hypothesis"), ("text", "text_pair"))
SINGLE_COLUMNS = ("sentence", "text", "review", "content", "document")
LABEL_COLUMNS = ("label", "Quality", "labels", "gold_label", "class", "target", "category", "intent")


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


def find_split_files(directory: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """Map split name -> file, by file stem (train.tsv, dev-v1.1.json, valid.txt, ...); `exts` are the
    file extensions a split may have, in the order tried."""
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


# ----------------------------------------------------------------------------- columns


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
