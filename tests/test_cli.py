"""CLI: flags -> config mapping, JSON shapes, help, exit codes."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys

import pytest
from conftest import assert_one_line_error

import bertedge.stages.finetune as finetune_stage
from bertedge.artifacts import Artifact


def test_finetune_flags_map_onto_config(cli, monkeypatch, tmp_path):
    seen = {}

    def fake_finetune(model, config, out, overwrite=False):
        seen.update(model=model, config=config, out=out, overwrite=overwrite)
        return Artifact(path=tmp_path, manifest={"task": config.task, "stage": "finetune", "metrics": {}})

    monkeypatch.setattr(finetune_stage, "finetune", fake_finetune)
    result = cli("finetune", "--model", "minilm-l6", "--task", "question-answering", "--data", "squad",
                 "--out", str(tmp_path / "o"), "--epochs", "2.5", "--lr", "3e-5", "--batch-size", "8",
                 "--max-length", "256", "--doc-stride", "64", "--warmup-ratio", "0.06", "--scheduler", "cosine",
                 "--weight-decay", "0.1", "--hidden-dropout", "0.2", "--attention-dropout", "0.15",
                 "--classifier-dropout", "0.3", "--early-stopping", "2", "--eval-steps", "100",
                 "--max-train-samples", "500", "--seed", "7", "--layerwise-lr-decay", "0.9",
                 "--freeze-embeddings", "--freeze-layers", "2", "--grad-accum", "4", "--overwrite",
                 "--init-from", "/some/artifact", "--reinit-head", "always")
    assert result.code == 0, result
    c = seen["config"]
    assert seen["model"] == "minilm-l6" and seen["overwrite"] is True
    assert c.task == "question-answering" and c.data.data == "squad" and c.data.max_train_samples == 500
    assert (c.max_length, c.doc_stride) == (256, 64)
    assert (c.hidden_dropout, c.attention_dropout, c.classifier_dropout) == (0.2, 0.15, 0.3)
    t = c.train
    assert (t.epochs, t.lr, t.batch_size, t.grad_accum) == (2.5, 3e-5, 8, 4)
    assert (t.warmup_ratio, t.scheduler, t.weight_decay) == (0.06, "cosine", 0.1)
    assert (t.early_stopping_patience, t.eval_steps, t.seed) == (2, 100, 7)
    assert (t.layerwise_lr_decay, t.freeze_embeddings, t.freeze_layers) == (0.9, True, 2)
    assert (c.init_from, c.reinit_head) == ("/some/artifact", "always")


def test_task_dependent_defaults():
    from bertedge.config import FinetuneConfig

    assert FinetuneConfig(task="question-answering").max_length == 384
    assert FinetuneConfig(task="text-classification").max_length == 128


@pytest.mark.parametrize("flag,value,fragment", [
    ("--lr", "-1", "train.lr: Input should be greater than 0"),
    ("--scheduler", "step", "train.scheduler: Input should be 'linear', 'cosine' or 'constant'"),
    ("--warmup-ratio", "1.5", "train.warmup_ratio"),
])
def test_invalid_option_values_name_the_field(cli, tmp_path, flag, value, fragment):
    result = cli("finetune", "--model", "minilm-l6", "--task", "text-classification", "--data", "sst2",
                 "--out", str(tmp_path / "o"), flag, value)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "o").exists()


def test_doc_stride_must_be_below_max_length(cli, tmp_path):
    result = cli("finetune", "--model", "minilm-l6", "--task", "question-answering", "--data", "squad",
                 "--out", str(tmp_path / "o"), "--max-length", "64", "--doc-stride", "64")
    assert_one_line_error(result, "doc_stride (64) must be smaller than max_length (64)")


def test_usage_error_exits_2(cli):
    result = cli("finetune", "--task", "text-classification")
    assert result.code == 2 and "Missing option" in result.err


def test_info_json_shape(cli):
    result = cli("info", "--json")
    assert result.code == 0, result
    info = json.loads(result.out)
    assert {"versions", "cpu", "onnxruntime_providers", "gpus", "data_root", "model_aliases"} <= set(info)
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    assert isinstance(info["cpu"]["flags"], list) and info["versions"]["bertedge"]


def test_info_names_the_stack_and_the_peer(cli, monkeypatch):
    import bertedge.env as env

    info = json.loads(cli("info", "--json").out)
    optimum = env.optimum_installed()
    assert info["stack"]["transformers"] == info["versions"]["transformers"]
    assert info["stack"]["exporters"] == (["bertedge", "optimum"] if optimum else ["bertedge"])
    assert info["peer"]["kind"] == ("optimum" if optimum else "ort")
    text = cli("info").out
    assert f"stack: {info['stack']['name']}: transformers {info['versions']['transformers']}, " in text
    assert f"{info['peer']['name']} = {info['peer']['method']}" in text
    # Without the optimum extra: the current stack, bertedge's exporter only, the plain ONNX Runtime peer.
    monkeypatch.setattr(env, "optimum_installed", lambda: False)
    info = json.loads(cli("info", "--json").out)
    assert info["stack"]["name"] == "current" and info["stack"]["exporters"] == ["bertedge"]
    assert info["peer"] == {"kind": "ort", "name": "peer: torch.onnx+ORT int8", "method": info["peer"]["method"]}
    assert "quantize_dynamic" in info["peer"]["method"] and "transformer optimizer" in info["peer"]["method"]
    assert "optimum-onnx not installed (pip install 'bertedge[optimum]'" in cli("info").out


def test_eval_json_contract(cli, tiny_artifacts):
    result = cli("eval", str(tiny_artifacts["sst"].path), "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    assert data["task"] == "text-classification" and data["split"] == "dev" and data["n"] == 32
    assert {"accuracy", "precision", "recall", "f1"} <= set(data["metrics"])
    assert data["metrics"]["accuracy"] == pytest.approx(tiny_artifacts["sst"].metrics["dev"]["accuracy"])
    ner = json.loads(cli("eval", str(tiny_artifacts["conll"].path), "--split", "test", "--json").out)
    assert ner["split"] == "test" and {"precision", "recall", "f1"} <= set(ner["metrics"])
    qa = json.loads(cli("eval", str(tiny_artifacts["squad"].path), "--json").out)
    assert {"exact_match", "f1"} <= set(qa["metrics"]) and 0 <= qa["metrics"]["f1"] <= 1


def test_eval_of_a_non_artifact(cli, tmp_path):
    assert_one_line_error(cli("eval", str(tmp_path)), str(tmp_path), "not a bertedge artifact")


def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys; from bertedge.cli import main; "
            "rc = main(['--help']); assert 'torch' not in sys.modules, 'torch imported'; print(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "finetune" in out.stdout


def test_python_m_bertedge_is_the_console_script():
    """`python -m bertedge` runs the same entry point as `bertedge`: its help, its commands, its exit codes."""
    import typer

    from bertedge.cli import app

    commands = sorted(typer.main.get_command(app).commands)
    assert {"finetune", "distill", "prune", "trim-vocab", "export", "quantize", "bench", "run"} <= set(commands)
    helped = subprocess.run([sys.executable, "-m", "bertedge", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: bertedge ")
    for command in commands:
        assert re.search(rf"^  {re.escape(command)} ", helped.stdout, re.M), (command, helped.stdout)
    usage = subprocess.run([sys.executable, "-m", "bertedge", "finetune", "--task", "text-classification"],
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "Missing option" in usage.stderr, usage


def test_out_of_space_anywhere_is_one_line_naming_the_file(cli, monkeypatch, tmp_path):
    """A disk-full OSError wrapped by a library, outside any artifact write: still the one disk-full line."""
    full = tmp_path / "state.json"

    def fake_finetune(model, config, out, overwrite=False):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(full))
        except OSError as exc:
            raise RuntimeError("a library's own wrapper") from exc

    monkeypatch.setattr(finetune_stage, "finetune", fake_finetune)
    result = cli("finetune", "--model", "minilm-l6", "--task", "text-classification", "--data", "sst2",
                 "--out", str(tmp_path / "o"))
    assert_one_line_error(result, f"{full}: disk full or file too large", "No space left on device")
