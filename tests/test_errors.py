"""One error model across every command: bad input -> one line naming where and the fix, exit 1,
no traceback, and no output directory left behind.

Each case builds its bad input in a fresh directory, runs the CLI with `--out` pointing at a path
that must still not exist afterwards, and checks the message's location and fix fragments. The
stage-specific test modules hold more cases; this table spans all commands and recipes in one place.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, write_classification_dir


def _sst(tmp: Path, tiny_data) -> str:
    return str(tiny_data["sst"])


def _finetune(tmp: Path, model: str, data: str, *extra: str) -> list[str]:
    return ["finetune", "--model", model, "--task", "text-classification", "--data", data,
            "--out", str(tmp / "out"), "--epochs", "1", *extra]


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _recipe(tmp: Path, model: str, data: str, stages: list) -> str:
    return str(_write(tmp / "recipe.yaml", yaml.safe_dump({"model": model, "task": "text-classification",
                                                           "data": data, "stages": stages})))


def case_unknown_task(tmp, env):
    return ["finetune", "--model", env["model"], "--task", "summarization", "--data", env["sst"],
            "--out", str(tmp / "out")], ["task", "Input should be"]


def case_no_train_split(tmp, env):
    _write(tmp / "d" / "dev.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    return _finetune(tmp, env["model"], str(tmp / "d")), ["no train split", "found: dev"]


def case_missing_column(tmp, env):
    _write(tmp / "d" / "train.tsv", "text\tstars\ngood\t1\nbad\t0\n")
    _write(tmp / "d" / "dev.tsv", "text\tstars\ngood\t1\n")
    return _finetune(tmp, env["model"], str(tmp / "d"), "--label-column", "label"), ["column 'label' not found",
                                                                                        "columns: text, stars"]


def case_dev_label_unseen(tmp, env):
    _write(tmp / "d" / "train.tsv", "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    _write(tmp / "d" / "dev.tsv", "sentence\tlabel\nmeh\tneutral\n")
    return _finetune(tmp, env["model"], str(tmp / "d")), ["dev.tsv:2", "'neutral' does not occur in the train split"]


def case_empty_file(tmp, env):
    write_classification_dir(tmp / "d")
    _write(tmp / "d" / "dev.tsv", "")
    return _finetune(tmp, env["model"], str(tmp / "d")), ["dev.tsv", "file is empty"]


def case_non_utf8_line(tmp, env):
    write_classification_dir(tmp / "d")
    _write(tmp / "d" / "train.tsv", b"sentence\tlabel\ngood\t1\nbad \xff\xfe\t0\n")
    return _finetune(tmp, env["model"], str(tmp / "d")), ["train.tsv:3", "not valid UTF-8"]


def case_conll_wrong_fields(tmp, env):
    _write(tmp / "d" / "train.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP\n\n")
    _write(tmp / "d" / "valid.txt", "EU NNP B-NP B-ORG\n\n")
    return ["finetune", "--model", env["model"], "--task", "token-classification", "--data", str(tmp / "d"),
            "--out", str(tmp / "out")], ["train.txt:2", "expected 4 fields"]


def case_squad_answer_mismatch(tmp, env):
    context = "the capital of france is paris ."
    data = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "1", "question": "capital?", "answers": [{"text": "paris", "answer_start": 3}]}]}]}]}
    _write(tmp / "d" / "dev-v1.1.json", json.dumps(data))
    return ["finetune", "--model", env["model"], "--task", "question-answering", "--data", str(tmp / "d"),
            "--out", str(tmp / "out")], ["does not match", "answer_start"]


def case_model_without_config(tmp, env):
    (tmp / "m").mkdir()
    return _finetune(tmp, str(tmp / "m"), env["sst"]), [str(tmp / "m"), "no config.json"]


def case_decoder_only_model(tmp, env):
    _write(tmp / "m" / "config.json", json.dumps({"model_type": "gpt2"}))
    return _finetune(tmp, str(tmp / "m"), env["sst"]), ["gpt2", "not a supported encoder", "BERT-family"]


def case_unknown_data_name(tmp, env):
    return _finetune(tmp, env["model"], "no-such-dataset"), ["no-such-dataset", "no such data directory"]


def case_negative_lr(tmp, env):
    return _finetune(tmp, env["model"], env["sst"], "--lr", "-1"), ["train.lr", "greater than 0"]


def case_out_is_a_file(tmp, env):
    _write(tmp / "out", "not a directory")
    return _finetune(tmp, env["model"], env["sst"]), ["output path exists and is a file", "--out"]


def case_out_inside_an_artifact(tmp, env):
    return ["finetune", "--model", env["model"], "--task", "text-classification", "--data", env["sst"],
            "--out", str(Path(env["artifact"]) / "out")], ["inside the artifact", "next to each other"]


def case_eval_not_an_artifact(tmp, env):
    (tmp / "empty").mkdir()
    return ["eval", str(tmp / "empty")], [str(tmp / "empty"), "not a bertedge artifact"]


def case_eval_incomplete_artifact(tmp, env):
    _write(tmp / "half" / "bertedge.json", json.dumps({"stage": "finetune", "task": "text-classification",
                                                       "complete": False}))
    return ["eval", str(tmp / "half")], ["incomplete", "--resume"]


def case_eval_damaged_manifest(tmp, env):
    _write(tmp / "bad" / "bertedge.json", "{not json")
    return ["eval", str(tmp / "bad")], ["bertedge.json", "not valid JSON", "rerun the stage"]


def case_export_unsupported_opset(tmp, env):
    return ["export", env["artifact"], "--out", str(tmp / "out"), "--opset", "9"], ["opset", "not supported",
                                                                                  "use 14 to 20"]


def case_export_a_bundle(tmp, env):
    return ["export", env["bundle"], "--out", str(tmp / "out")], ["already an ONNX bundle", "PyTorch artifact"]


def case_predict_torch_artifact(tmp, env):
    return ["predict", env["artifact"], "good movie"], ["not an ONNX bundle", "bertedge export"]


def case_predict_invalid_utf8_input(tmp, env):
    _write(tmp / "in.txt", b"good movie\nbad \xed\xa0\x80 surrogate\n")
    return ["predict", env["bundle"], "--input", str(tmp / "in.txt"), "--output", str(tmp / "out")], \
        ["in.txt:2", "UTF-8"]


def case_quantize_torch_artifact(tmp, env):
    return ["quantize", env["artifact"], "--out", str(tmp / "out")], ["expected an exported ONNX bundle",
                                                                      "bertedge export"]


def case_quantize_unknown_preset(tmp, env):
    return ["quantize", env["bundle"], "--out", str(tmp / "out"), "--preset", "avx9"], ["preset", "avx2"]


def case_quantize_negative_budget(tmp, env):
    return ["quantize", env["bundle"], "--out", str(tmp / "out"), "--mode", "auto", "--max-accuracy-drop", "-1"], \
        ["max_accuracy_drop", "greater than or equal to 0"]


def case_quantize_static_without_calibration(tmp, env):
    return ["quantize", env["bundle"], "--out", str(tmp / "out"), "--mode", "static"], \
        ["--calibration", "static quantization needs calibration data"]


def case_bench_unknown_provider(tmp, env):
    return ["bench", env["bundle"], "--provider", "tpu", "--out", str(tmp / "out")], \
        ["--provider", "unknown provider 'tpu'", "cpu, cuda, tensorrt"]


def case_bench_provider_not_installed(tmp, env):
    return ["bench", env["bundle"], "--provider", "cuda", "--out", str(tmp / "out")], \
        ["provider 'cuda'", "Install onnxruntime-gpu"]


def case_bench_no_artifacts(tmp, env):
    return ["bench", "--out", str(tmp / "out")], ["no artifacts to benchmark"]


def case_prune_fraction_out_of_range(tmp, env):
    return ["prune", env["artifact"], "--out", str(tmp / "out"), "--heads", "1.5"], ["heads", "less than 1"]


def case_distill_layer_map_out_of_range(tmp, env):
    return ["distill", "--teacher", env["artifact"], "--out", str(tmp / "out"), "--layer-map", "0,7"], \
        ["--layer-map", "out of range"]


def case_adapt_empty_text(tmp, env):
    _write(tmp / "empty.txt", "")
    return ["adapt", "--model", env["model"], "--text", str(tmp / "empty.txt"), "--out", str(tmp / "out")], \
        [str(tmp / "empty.txt"), "empty"]


def case_recipe_unknown_stage(tmp, env):
    return ["run", _recipe(tmp, env["model"], env["sst"], [{"stage": "finetune"}, {"stage": "shrink"}]),
            "--out", str(tmp / "out")], ["stages.1.stage", "unknown stage 'shrink'"]


def case_recipe_misspelled_key(tmp, env):
    return ["run", _recipe(tmp, env["model"], env["sst"], [{"stage": "finetune", "max_lenght": 64}]),
            "--out", str(tmp / "out")], ["stages.0.finetune.max_lenght", "unknown key"]


def case_recipe_distill_without_teacher(tmp, env):
    return ["run", _recipe(tmp, env["model"], env["sst"], [{"stage": "distill", "layers": 1}]),
            "--out", str(tmp / "out")], ["stages.0.distill.source", "needs a teacher"]


CASES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


def test_at_least_25_distinct_cases():
    assert len(CASES) >= 25


@pytest.fixture(scope="module")
def env(tiny_model_dir, tiny_data, tiny_artifacts, tiny_bundles):
    return {"model": str(tiny_model_dir), "sst": str(tiny_data["sst"]),
            "artifact": str(tiny_artifacts["sst"].path), "bundle": str(tiny_bundles["sst"].path)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_1_nothing_written(cli, tmp_path, env, name):
    args, fragments = CASES[name](tmp_path, env)
    before = {p for p in Path(env["artifact"]).parent.iterdir()}
    out_existed = (tmp_path / "out").exists()
    line = assert_one_line_error(cli(*args), *fragments)
    assert line.startswith("error: ")
    if not out_existed:
        assert not (tmp_path / "out").exists(), "an output was left behind"
    assert not list(tmp_path.glob(".out.partial-*"))
    assert {p for p in Path(env["artifact"]).parent.iterdir()} == before


@pytest.mark.parametrize("command, extra, message, fix", [
    ("prune", ["--ffn", "0.5"], "prune cannot prune a Neural Compressor int8 program",
     "Prune the fp32 artifact, then quantize the pruned one"),
    ("trim-vocab", [], "trim-vocab cannot edit a Neural Compressor int8 program",
     "Trim the fp32 artifact first, then quantize it"),
    ("early-exit", [], "early-exit cannot add heads to a Neural Compressor int8 program",
     "Add the exits to the fp32 artifact, then export and quantize"),
])
def test_stages_that_edit_weights_refuse_an_inc_program(cli, tmp_path, tiny_artifacts, command, extra, message,
                                                         fix):
    """One refusal for the three stages that edit fp32 PyTorch weights, before anything loads or is written."""
    import shutil

    program = tmp_path / "inc"
    shutil.copytree(tiny_artifacts["sst"].path, program)
    manifest = json.loads((program / "bertedge.json").read_text())
    manifest["torch_program"] = {"file": "model.pt2"}  # what `quantize --engine inc` records
    (program / "bertedge.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    assert_one_line_error(cli(command, str(program), "--out", str(out), *extra), message, fix)
    assert not out.exists()
