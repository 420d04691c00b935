"""Load task data from a directory of split files, a data-root name, or the datasets hub.

Examples are plain dicts, the same for every source:

- text-classification: ``{"text": str, "text_pair": str | None, "label": int | None}``
- token-classification: ``{"tokens": [str], "tags": [int] | None}``
- question-answering: ``{"id", "title", "question", "context", "answers": {"text": [...], "answer_start": [...]}}``

What differs between the tasks (split file formats, label sets, how a dev split is carved) is asked of the
task object (bertedge.tasks); the task-free file reading is bertedge.datafiles. Every error names the file and
line (or field) and what to do about it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# The task-free readers, also imported from here by the stages and the runtime.
from .datafiles import (  # noqa: F401
    LABEL_COLUMNS,
    PAIR_COLUMNS,
    SINGLE_COLUMNS,
    SPLIT_ALIASES,
    Columns,
    data_root,
    find_split_files,
    join_columns,
    pick_columns,
    read_lines,
    read_table,
    resolve_data_path,
)
from .errors import DataError
from .tasks import TASK_NAMES, get_task

TASKS = TASK_NAMES
T = TypeVar("T")


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


# ----------------------------------------------------------------------------- labels


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
    kind = get_task(task)
    columns = columns or Columns()
    if spec.startswith("hub:"):
        return load_hub(spec[4:], task, columns=columns, need=need, labels=labels)
    path = resolve_data_path(spec)
    if path.is_file():
        files = {"dev" if "train" not in need else "train": path}
    else:
        files = find_split_files(path, kind.data_extensions)
    source: dict[str, Any] = {"path": str(path.absolute()), "files": {k: str(v) for k, v in files.items()}}

    splits: dict[str, list[dict]] = {}
    line_numbers: dict[str, list[int]] = {}
    for split, file in files.items():
        read = kind.read_split(file, columns)
        if read.columns is not None:
            source["columns"] = read.columns
        if read.line_numbers is not None:
            line_numbers[split] = read.line_numbers
        splits[split] = read.examples

    # Only a dev file (SQuAD here): train and dev are always its disjoint article sets, so
    # evaluating an artifact later sees the same held-out articles it was selected on.
    if kind.splits_lone_dev_file and "train" not in splits and "dev" in splits and path.is_dir():
        source["files"]["train"] = source["files"]["dev"]
        if columns.dev_split is not None:  # the fraction asked for, by article, instead of the fixed 20%
            splits["train"] = splits.pop("dev")
            del source["files"]["dev"]
        else:
            splits["train"], splits["dev"], source["split"] = kind.split_lone_dev_file(splits["dev"])

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
        tables: tuple[dict[str, list[Any]], ...] = (splits, line_numbers) if line_numbers else (splits,)
        for table in tables:
            rows = table["train"]
            table["train"], table["dev"] = [rows[i] for i in train_index], [rows[i] for i in dev_index]

    for split in need:
        if split not in splits:
            have = ", ".join(f"{k}={Path(v).name}" for k, v in source["files"].items()) or "no split files"
            aliases = "/".join(SPLIT_ALIASES[split])
            hint = " or carve one out of train with --dev-split 0.1" if split == "dev" and "train" in splits else ""
            raise DataError(f"no {split} split found (found: {have})", where=str(path),
                            fix=f"Add a file named {aliases} with one of the extensions {', '.join(kind.data_extensions)}"
                                + hint)

    if kind.label_set:
        key = kind.gold_key
        if labels is None:
            if "train" not in splits:
                raise DataError("cannot derive labels without a train split", where=str(path),
                                fix="Add a train file, or evaluate an artifact that records its labels")
            values: set[str] = set()
            for ex in splits["train"]:
                if ex[key] is None:
                    if "columns" in source and not source["columns"].get("label"):  # read from a table
                        raise DataError("no label column found in the train split", where=str(files["train"]),
                                        fix="Pass --label-column NAME")
                    raise DataError("train split has an example without a label", where=str(files["train"]),
                                    fix="Label every training example")
                values.update(ex[key] if isinstance(ex[key], list) else [ex[key]])
            labels = kind.label_order(values)
        if columns.label_names is not None:
            if not kind.accepts_label_names:
                raise DataError("label names apply to classification labels only", where="--label-names",
                                fix="Drop --label-names (NER tags are names already)")
            labels = _apply_label_names(kind, splits, labels, columns.label_names, files, source)
        if len(labels) < kind.min_labels:
            raise DataError(f"only one label ({labels[0] if labels else 'none'}) in the train split",
                            where=str(files.get("train", path)), fix="Classification needs at least two labels")
        _map_labels(splits, labels, key, files, line_numbers or None)
    return TaskData(task=task, splits=splits, labels=labels, source=source)


def _apply_label_names(kind, splits: dict[str, list[dict]], labels: list[str], names, files: dict[str, Path],
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
            labels = kind.label_order(raw)
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
    dev_index, kind, extra = get_task(task).carve_dev(train, fraction, rng)
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


def subsample(examples: list[T], n: int | None, seed: int) -> list[T]:
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
    kind = get_task(task)
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
        splits[ours] = kind.hub_examples(ds[theirs], columns, f"hub:{name}[{theirs}]")
    files = {k: Path(f"hub:{name}[{split_map[k]}]") for k in splits}
    for split in need:
        if split not in splits:
            raise DataError(f"the hub dataset has no {split_map[split]} split", where=f"hub:{name}",
                            fix="Choose a dataset with train and validation splits")
    if kind.label_set:
        key = kind.gold_key
        if labels is None:
            values: set[str] = set()
            for ex in splits["train"]:
                values.update(ex[key] if isinstance(ex[key], list) else [ex[key]])
            values.discard(None)  # type: ignore[arg-type]
            labels = kind.label_order(values)
        _map_labels(splits, labels, key, files)
    return TaskData(task=task, splits=splits, labels=labels, source={"path": f"hub:{name}", "hub": name})
