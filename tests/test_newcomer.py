"""A newcomer's first hour (issue #27): --dev-split, --text-columns, --label-names, predict on files with extra
columns, the plain per-class table, the auto schedule and its hints, and logs without progress-bar spam."""

from __future__ import annotations

import collections
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, child_env, synthetic_sentence

ROOT = Path(__file__).resolve().parent.parent


def write_train_only(directory: Path, n: int = 120, seed: int = 0, labels=("0", "1", "2")) -> Path:
    """train.csv + test.csv with three unbalanced classes (no dev file), columns title,body,category."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    weights = [0.5, 0.3, 0.2]
    for split, count in (("train", n), ("test", 30)):
        lines = ["title,body,category"]
        for _ in range(count):
            label = rng.choices(range(len(labels)), weights)[0]
            lines.append(f"{synthetic_sentence(rng, label % 2)},{synthetic_sentence(rng, label % 2)} {'x' * label},{labels[label]}")
        (directory / f"{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


# ----------------------------------------------------------------------------- --dev-split


def test_dev_split_is_seeded_stratified_and_disjoint(tmp_path):
    from bertedge.data import Columns, load_data

    data_dir = write_train_only(tmp_path / "d", n=200)
    columns = Columns(text="title", dev_split=0.2)
    a = load_data(str(data_dir), "text-classification", columns=columns)
    b = load_data(str(data_dir), "text-classification", columns=columns)
    train_all = load_data(str(data_dir), "text-classification", columns=Columns(text="title"), need=("train",))
    assert a.splits["dev"] == b.splits["dev"] and a.splits["train"] == b.splits["train"]  # deterministic
    assert len(a.splits["train"]) + len(a.splits["dev"]) == 200
    # stratified: each class holds round(20%) of its members out
    totals = collections.Counter(ex["label"] for ex in train_all.splits["train"])
    held = collections.Counter(ex["label"] for ex in a.splits["dev"])
    assert {k: round(0.2 * v) for k, v in totals.items()} == dict(held)
    record = a.source["dev_split"]
    assert record["kind"] == "stratified by label" and record["fraction"] == 0.2 and record["seed"] == 42
    assert (record["train_examples"], record["dev_examples"]) == (len(a.splits["train"]), len(a.splits["dev"]))
    other = load_data(str(data_dir), "text-classification", columns=Columns(text="title", dev_split=0.2, split_seed=7))
    assert other.splits["dev"] != a.splits["dev"]


def test_dev_split_keeps_qa_articles_whole(tiny_data):
    from bertedge.data import Columns, load_data

    data = load_data(str(tiny_data["squad"]), "question-answering", columns=Columns(dev_split=0.3))
    train_articles = {ex["article"] for ex in data.splits["train"]}
    dev_articles = {ex["article"] for ex in data.splits["dev"]}
    assert train_articles and dev_articles and not train_articles & dev_articles
    assert data.source["dev_split"]["kind"] == "by article"


def test_dev_split_errors_name_the_option(cli, tmp_path, tiny_model_dir, tiny_data):
    data_dir = write_train_only(tmp_path / "d")
    result = cli("finetune", "--model", tiny_model_dir, "--task", "text-classification", "--data", data_dir,
                 "--text-column", "title", "--out", tmp_path / "a")
    assert_one_line_error(result, "no dev split found", "or carve one out of train with --dev-split 0.1")
    result = cli("finetune", "--model", tiny_model_dir, "--task", "text-classification", "--data",
                 tiny_data["sst"], "--dev-split", "0.1", "--out", tmp_path / "b")
    assert_one_line_error(result, "the data already has a dev split (dev.tsv)", "Drop --dev-split")
    assert not (tmp_path / "b").exists()


def test_dev_split_is_recorded_and_reused_downstream(cli, tmp_path, tiny_model_dir):
    data_dir = write_train_only(tmp_path / "d", n=150)
    out = tmp_path / "teacher"
    result = cli("finetune", "--model", tiny_model_dir, "--task", "text-classification", "--data", data_dir,
                 "--text-column", "title", "--dev-split", "0.2", "--epochs", "1", "--lr", "3e-3", "--out", out)
    assert result.code == 0, result
    manifest = json.loads((out / "bertedge.json").read_text())
    split = manifest["data"]["dev_split"]
    n_dev = split["dev_examples"]
    assert split["fraction"] == 0.2 and manifest["data"]["dev_examples"] == n_dev and abs(n_dev - 30) <= 2
    assert split["train_examples"] + n_dev == 150
    # eval and export re-derive the same dev split from the record, without --dev-split
    result = cli("eval", out, "--json")
    assert result.code == 0, result
    assert json.loads(result.out)["n"] == n_dev
    bundle = tmp_path / "bundle"
    assert cli("export", out, "--out", bundle).code == 0
    exported = json.loads((bundle / "bertedge.json").read_text())
    assert exported["data"]["dev_split"]["dev_examples"] == n_dev
    assert json.loads(cli("eval", bundle, "--json").out)["n"] == n_dev
    accuracy = json.loads(cli("eval", out, "--json").out)["metrics"]["accuracy"]
    assert accuracy == pytest.approx(manifest["metrics"]["dev"]["accuracy"], abs=1e-9)
    result = cli("eval", out, "--split", "test", "--json")
    assert json.loads(result.out)["n"] == 30  # the test file is untouched


# ----------------------------------------------------------------------------- --text-columns, --label-names


def test_text_columns_join_or_pair(tmp_path):
    from bertedge.data import Columns, load_data

    data_dir = write_train_only(tmp_path / "d", n=20)
    raw = (data_dir / "train.csv").read_text().splitlines()[1].split(",")
    joined = load_data(str(data_dir), "text-classification",
                       columns=Columns(text_columns=("title", "body"), text_separator=" | "), need=("train",))
    first = joined.splits["train"][0]
    assert first["text"] == f"{raw[0]} | {raw[1]}" and first["text_pair"] is None
    assert joined.source["columns"]["text_columns"] == ["title", "body"]
    pair = load_data(str(data_dir), "text-classification", columns=Columns(text_columns=("title", "body")),
                     need=("train",))
    assert (pair.splits["train"][0]["text"], pair.splits["train"][0]["text_pair"]) == (raw[0], raw[1])


def test_text_columns_name_the_missing_column(cli, tmp_path, tiny_model_dir):
    data_dir = write_train_only(tmp_path / "d")
    result = cli("finetune", "--model", tiny_model_dir, "--task", "text-classification", "--data", data_dir,
                 "--text-columns", "title,summary", "--dev-split", "0.2", "--out", tmp_path / "a")
    assert_one_line_error(result, "text column 'summary' not found (columns: title, body, category)")


def test_label_names_name_numeric_labels_end_to_end(cli, tmp_path, tiny_model_dir):
    data_dir = write_train_only(tmp_path / "d", n=150, labels=("1", "2", "3"))
    out = tmp_path / "teacher"
    result = cli("finetune", "--model", tiny_model_dir, "--task", "text-classification", "--data", data_dir,
                 "--text-columns", "title,body", "--text-separator", " | ", "--label-names", "World,Sports,Business",
                 "--dev-split", "0.2", "--epochs", "1", "--lr", "3e-3", "--out", out)
    assert result.code == 0, result
    manifest = json.loads((out / "bertedge.json").read_text())
    assert manifest["labels"] == ["World", "Sports", "Business"]
    assert manifest["data"]["label_names"] == {"1": "World", "2": "Sports", "3": "Business"}
    assert set(manifest["metrics"]["dev"]["per_class"]) == {"World", "Sports", "Business"}
    bundle = tmp_path / "bundle"
    assert cli("export", out, "--out", bundle).code == 0
    # predict joins the same columns from a TSV with a header, ignores the rest, and scores with names
    tsv = tmp_path / "in.tsv"
    rows = [line.split(",") for line in (data_dir / "test.csv").read_text().splitlines()]
    tsv.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    result = cli("predict", bundle, "--input", tsv, "--label-column", "category")
    assert result.code == 0, result
    records = [json.loads(line) for line in result.out.splitlines()]
    assert len(records) == 30
    assert records[0]["text"].startswith(f"{rows[1][0]} | {rows[1][1]}"[:40])
    names = {"1": "World", "2": "Sports", "3": "Business"}
    assert [r["gold"] for r in records] == [names[r[2]] for r in rows[1:]]
    correct = sum(r["correct"] for r in records)
    assert f"accuracy {correct / 30:.4f} ({correct} of 30 against column 'category')" in result.err


def test_label_names_count_must_match(cli, tmp_path, tiny_model_dir):
    data_dir = write_train_only(tmp_path / "d")
    result = cli("finetune", "--model", tiny_model_dir, "--task", "text-classification", "--data", data_dir,
                 "--text-column", "title", "--label-names", "A,B", "--dev-split", "0.2", "--out", tmp_path / "a")
    assert_one_line_error(result, "--label-names gives 2 names but the train split has 3 labels (0, 1, 2)",
                          "Give exactly 3 names, in the order 0, 1, 2")
    names = tmp_path / "names.txt"
    names.write_text("neg\n\npos\nmid\n")
    from bertedge.cli.common import parse_label_names

    assert parse_label_names(str(names)) == ["neg", "pos", "mid"]


# ----------------------------------------------------------------------------- predict on dataset files


def test_predict_ignores_extra_columns_and_scores_a_label_column(cli, tiny_bundles, tiny_data):
    dev = tiny_data["sst"] / "dev.tsv"  # sentence<TAB>label, with a header
    plain = cli("predict", tiny_bundles["sst"].path, "--input", dev)
    assert plain.code == 0, plain
    records = [json.loads(line) for line in plain.out.splitlines()]
    first = dev.read_text().splitlines()[1].split("\t")
    assert len(records) == 32 and records[0]["text"] == first[0] and "gold" not in records[0]
    scored = cli("predict", tiny_bundles["sst"].path, "--input", dev, "--label-column", "label")
    rows = [json.loads(line) for line in scored.out.splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in records]
    assert rows[0]["gold"] == first[1]
    assert_one_line_error(cli("predict", tiny_bundles["sst"].path, "--input", dev, "--label-column", "gold"),
                          f"{dev}:1: no column 'gold' to score against (columns: sentence, label)")
    assert_one_line_error(cli("predict", tiny_bundles["conll"].path, "a text", "--label-column", "label"),
                          "--label-column: scores classification bundles only (this one is token-classification)")


# ----------------------------------------------------------------------------- plain eval output


def test_plain_eval_prints_per_class_and_per_type_tables(cli, tiny_artifacts):
    result = cli("eval", tiny_artifacts["sst"].path)
    assert result.code == 0, result
    lines = result.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["class", "precision"])
    metrics = json.loads(cli("eval", tiny_artifacts["sst"].path, "--json").out)["metrics"]
    for offset, (name, row) in enumerate(metrics["per_class"].items(), start=1):
        cells = lines[header + offset].split()
        assert cells[0] == name and float(cells[3]) == pytest.approx(row["f1"], abs=1e-4)
        assert int(cells[4]) == row["support"]
    result = cli("eval", tiny_artifacts["conll"].path)
    types = json.loads(cli("eval", tiny_artifacts["conll"].path, "--json").out)["metrics"]["per_type"]
    assert any(line.split()[:2] == ["entity", "type"] for line in result.out.splitlines())
    for name in types:
        assert any(line.split()[:1] == [name] for line in result.out.splitlines())


def test_plain_eval_marks_a_class_never_predicted():
    from bertedge.cli.core import metric_lines
    from bertedge.tasks.classification import classification_metrics

    lines = metric_lines(classification_metrics([0, 1, 2, 2], [0, 0, 2, 2], ["a", "b", "c"]))
    row = next(line for line in lines if line.split()[:1] == ["b"])
    assert row.split()[-4:] == ["1", "0", "<-", "never"] or "<- never predicted" in row


# ----------------------------------------------------------------------------- the auto schedule, hints, logs


def test_auto_schedule_from_model_and_data_size():
    from bertedge.stages.finetune import auto_epochs, auto_lr

    assert auto_lr(22_700_000) == 1e-4 and auto_lr(110_000_000) == 5e-5 and auto_lr(340_000_000) == 2e-5
    # A train set under 3,000 features halves it (RTE's 2,490 pairs); MRPC's 3,668 keep the full LR.
    assert auto_lr(22_700_000, 2490) == 5e-5 and auto_lr(22_700_000, 3668) == 1e-4
    assert auto_lr(110_000_000, 2999) == 2.5e-5 and auto_lr(110_000_000, 3000) == 5e-5
    assert auto_epochs(2105) == 3  # SST-2: the old 3 epochs
    assert auto_epochs(282) == 8  # BANKING77 after a 10% dev split
    assert auto_epochs(78) == 10  # RTE: the cap


def test_auto_schedule_is_recorded_and_a_given_flag_is_kept(cli, tmp_path, tiny_model_dir, tiny_data):
    out = tmp_path / "auto"
    result = cli("finetune", "--model", tiny_model_dir, "--task", "text-classification", "--data", tiny_data["sst"],
                 "--out", out)
    assert result.code == 0, result
    schedule = json.loads((out / "bertedge.json").read_text())["schedule"]
    assert schedule["auto"] == ["lr", "epochs", "early_stopping_patience"]
    assert (schedule["lr"], schedule["epochs"], schedule["early_stopping_patience"]) == (5e-5, 10.0, 2)
    assert schedule["steps_per_epoch"] == 3 and schedule["train_features"] == 96  # 96 examples / batch 32
    assert schedule["summary"].startswith("auto schedule: lr 5e-05 (0.0M parameters, 96 train features < 3000); "
                                          "up to 10 epochs (3 steps an epoch")
    fixed = tmp_path / "fixed"
    assert cli("finetune", "--model", tiny_model_dir, "--task", "text-classification", "--data", tiny_data["sst"],
               "--epochs", "1", "--lr", "3e-3", "--out", fixed).code == 0
    schedule = json.loads((fixed / "bertedge.json").read_text())["schedule"]
    assert schedule["auto"] == [] and (schedule["lr"], schedule["epochs"]) == (3e-3, 1.0)
    assert schedule["early_stopping_patience"] is None


def test_hints_for_a_class_never_predicted_and_a_rising_metric():
    from bertedge.config import FinetuneConfig
    from bertedge.stages.finetune import training_hints
    from bertedge.tasks.classification import classification_metrics

    config = FinetuneConfig(task="text-classification", train={"epochs": 2, "lr": 5e-5})
    dev = classification_metrics([0, 1, 1], [0, 0, 0], ["neg", "pos"])
    history = [{"eval_accuracy": 0.5}, {"eval_accuracy": 0.6}]
    hints = training_hints(history, "accuracy", dev, config)
    assert hints == ["dev accuracy was still rising at the last evaluation (0.5000 -> 0.6000); more training may "
                     "help (--epochs 4)",
                     "1 class(es) never predicted on dev (pos); train longer or with a higher --lr (now 5e-05), or "
                     "check their training examples"]
    assert training_hints([{"eval_accuracy": 0.6}, {"eval_accuracy": 0.6}], "accuracy",
                          classification_metrics([0, 1], [0, 1], ["neg", "pos"]), config) == []


def test_a_finetune_log_has_no_progress_bars_and_no_known_warnings(tmp_path, tiny_model_dir, tiny_data):
    """`bertedge finetune ... > log 2>&1`: stderr is not a terminal, so no tqdm bar, and the known library
    warnings are filtered; --verbose shows them again."""
    log = tmp_path / "finetune.log"
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("BERTEDGE_PROGRESS", None)
    command = [sys.executable, "-m", "bertedge", "finetune", "--model", str(tiny_model_dir), "--task",
               "text-classification", "--data", str(tiny_data["sst"]), "--epochs", "2", "--lr", "3e-3",
               "--out", str(tmp_path / "a")]
    with open(log, "w") as fh:
        assert subprocess.call(command, stdout=fh, stderr=subprocess.STDOUT, env=env) == 0
    text = log.read_text()
    assert "\r" not in text
    for noise in ("Some weights of", "You should probably TRAIN", "LOAD REPORT", "Warning", "warnings.warn", "it/s]",
                  "Loading weights"):
        assert noise not in text, (noise, text)
    assert "eval: step 3/6 (epoch 1.00) accuracy" in text and "finetune: dev accuracy" in text
    # a head without a pooler (token classification, QA): transformers 5 also reports the checkpoint's pooler
    ner_log = tmp_path / "ner.log"
    with open(ner_log, "w") as fh:
        assert subprocess.call([*command[:7], "token-classification", "--data", str(tiny_data["conll"]),
                                "--epochs", "1", "--out", str(tmp_path / "ner")],
                               stdout=fh, stderr=subprocess.STDOUT, env=env) == 0
    ner_text = ner_log.read_text()
    assert "\r" not in ner_text and "LOAD REPORT" not in ner_text and "UNEXPECTED" not in ner_text, ner_text
    assert "finetune: dev f1" in ner_text
    verbose = subprocess.run([sys.executable, "-m", "bertedge", "--verbose", *command[3:-1], str(tmp_path / "b")],
                             capture_output=True, text=True, env=env)
    # the new head's note: "Some weights of ..." from transformers 4, a "LOAD REPORT" table from 5
    assert verbose.returncode == 0 and ("Some weights of" in verbose.stderr or "LOAD REPORT" in verbose.stderr)


def test_an_export_log_has_no_known_warnings(tmp_path, tiny_artifacts):
    """`bertedge export ... > log 2>&1` of a QA model: transformers 5's padding mask exports through advanced
    indexing, which torch.onnx warns about; the warning is filtered and --verbose shows it again."""
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "bertedge", "export", str(tiny_artifacts["squad"].path), "--out"]
    quiet = subprocess.run([*command, str(tmp_path / "a")], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    for noise in ("Warning", "warnings.warn", "aten::index", "opset9.index"):
        assert noise not in quiet.stderr, (noise, quiet.stderr)
    assert "export: wrote" in quiet.stderr
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        verbose = subprocess.run([sys.executable, "-m", "bertedge", "--verbose", *command[3:], str(tmp_path / "b")],
                                 capture_output=True, text=True, env=env)
        assert verbose.returncode == 0 and "aten::index operator of advanced indexing" in verbose.stderr


def test_a_load_report_that_says_more_than_a_new_head_is_shown():
    """transformers 5's load report is dropped only when it lists the new task head and an unused pooler."""
    import logging

    from bertedge.log import quiet_known_noise

    quiet_known_noise()
    target = logging.getLogger("transformers.modeling_utils")

    def shown(rows: str) -> bool:
        message = (f"\x1b[1mBertForTokenClassification LOAD REPORT\x1b[0m from: /m\nKey                 | Status     | \n"
                   f"--------------------+------------+-\n{rows}\nNotes:\n- UNEXPECTED:\tcan be ignored\n"
                   f"- MISSING:\tthose params were newly initialized")
        record = logging.LogRecord(target.name, logging.WARNING, __file__, 1, message, None, None)
        return all(f.filter(record) for f in target.filters)

    assert not shown("pooler.dense.weight | UNEXPECTED | \npooler.dense.bias   | UNEXPECTED | \n"
                     "classifier.weight   | MISSING    | \nclassifier.bias     | MISSING    | ")
    assert shown("encoder.layer.0.attention.self.query.weight | UNEXPECTED | \nclassifier.weight | MISSING | ")
    assert shown("encoder.layer.0.output.dense.weight | MISSING | \nclassifier.weight | MISSING | ")
