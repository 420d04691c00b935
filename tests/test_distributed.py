"""torchrun / DDP on CPU (gloo, 2 processes): one artifact, written by rank 0 only, the same training as one process.

Each launch runs `python -m torch.distributed.run --standalone --nproc_per_node 2` on the tiny model and data, with
its own TMPDIR, so the test sees everything the launch left behind (the Trainer's checkpoint directory included).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, child_env, finetune_tiny

TC = "text-classification"
PROBE = Path(__file__).with_name("ddp_probe.py")
LAUNCH_TIMEOUT_S = 600  # only stops a broken launch hanging the suite; nothing asserts on time


def torchrun(args: list, tmp: Path, name: str, *, script: Path | None = None) -> tuple[int, str, Path]:
    """(exit code, combined log, the launch's TMPDIR). `script`: run it instead of `-m bertedge`."""
    tmpdir = tmp / f"{name}-tmpdir"
    tmpdir.mkdir()
    probe_dir = tmp / f"{name}-probe"
    probe_dir.mkdir()
    target = [str(script)] if script else ["-m", "bertedge"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target,
               *map(str, args)]
    env = child_env(TMPDIR=str(tmpdir), OMP_NUM_THREADS="1", PROBE_DIR=str(probe_dir),
                    PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
                          timeout=LAUNCH_TIMEOUT_S)
    (tmp / f"{name}.log").write_text(done.stdout)
    return done.returncode, done.stdout, tmpdir


def probes(tmp: Path, name: str) -> list[dict]:
    return [json.loads((tmp / f"{name}-probe" / f"rank-{r}.json").read_text()) for r in (0, 1)]


def assert_one_clean_artifact(log: str, out: Path, tmpdir: Path):
    """Exactly one artifact at `out`, nothing else beside it, nothing left in the launch's TMPDIR; the logs name
    world size 2 (once: only rank 0 logs) and there is exactly one `wrote` line (only rank 0 prints it)."""
    from bertedge.artifacts import load_artifact

    artifact = load_artifact(out)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name], list(out.parent.iterdir())
    # No checkpoint directory of either rank, no temp file: only torchrun's own (empty) log directory.
    assert not [p for p in tmpdir.iterdir() if not p.name.startswith("torchelastic_")], list(tmpdir.iterdir())
    assert not [p for p in tmpdir.rglob("*") if p.is_file()], list(tmpdir.rglob("*"))
    wrote = [line for line in log.splitlines() if line.startswith("wrote ")]
    assert wrote == [f"wrote {out}"], log[-3000:]
    assert "world size 2" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    return artifact


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_model_dir, tiny_data):
    return finetune_tiny(tiny_model_dir, tiny_data["sst"], TC, tmp_path_factory.mktemp("ddp-teacher") / "t",
                         epochs=4.0, max_length=32)


# Global batch 8 both ways. With 96 train examples the length-grouped sampler forms the same megabatches for batch 4
# and batch 8 (24 examples each), and accelerate hands rank 0 and rank 1 the two halves of each global batch, so the
# two runs see the same examples at every step; dropout is off, so they differ only by float summation order.
SAME_RUN = ["--epochs", "6", "--lr", "3e-3", "--warmup-ratio", "0", "--max-length", "32", "--seed", "0",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--classifier-dropout", "0"]
WEIGHT_TOLERANCE = 1e-4  # max |w_ddp - w_single| over every weight; measured 2.4e-6
LOSS_TOLERANCE = 0.01  # final train loss (rank 0's share under DDP); measured 2e-4 apart


def test_torchrun_finetune_writes_one_artifact_matching_a_single_process_run(tmp_path, tiny_model_dir, tiny_data,
                                                                            cli):
    from safetensors.numpy import load_file

    common = ["finetune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], *SAME_RUN]
    out = tmp_path / "ddp" / "model"
    out.parent.mkdir()
    code, log, tmpdir = torchrun([*common, "--batch-size", "4", "--out", out], tmp_path, "finetune")
    assert code == 0, log[-4000:]
    ddp = assert_one_clean_artifact(log, out, tmpdir)
    assert "train: world size 2 (rank 0, gloo), per-device batch 4 x grad accum 1 -> global batch 8" in log
    assert log.count("finetune: dev accuracy") == 1  # rank 0 evaluates and logs; rank 1 stays quiet

    single = cli(*common, "--batch-size", "8", "--out", tmp_path / "single")
    assert single.code == 0, single
    from bertedge.artifacts import load_artifact

    one = load_artifact(tmp_path / "single")
    assert one.manifest["training"]["world_size"] == 1 and ddp.manifest["training"]["world_size"] == 2
    assert ddp.manifest["training"]["global_step"] == one.manifest["training"]["global_step"] == 72
    assert ddp.manifest["training"]["best_step"] == one.manifest["training"]["best_step"]
    assert ddp.metrics["dev"]["accuracy"] == one.metrics["dev"]["accuracy"] >= 0.9  # it learned, and both agree
    assert abs(ddp.manifest["training"]["train_loss"] - one.manifest["training"]["train_loss"]) <= LOSS_TOLERANCE
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "single" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= WEIGHT_TOLERANCE


@pytest.mark.parametrize("teacher_outputs", ["cached", "live"])
def test_torchrun_distill_teacher_per_rank_in_eval_mode_outside_ddp(tmp_path, teacher, teacher_outputs):
    """cached: rank 0 computes the teacher-logit cache, rank 1 reads it. live: hidden-state transfer into a narrower
    random student, so a projection (an extra module DDP does not wrap) trains too and must stay in sync."""
    out = tmp_path / "d" / "student"
    out.parent.mkdir()
    args = ["distill", "--teacher", teacher.path, "--out", out, "--epochs", "1", "--batch-size", "8",
            "--max-length", "32", "--teacher-cache", tmp_path / "cache"]
    if teacher_outputs == "live":
        args += ["--student-config", "num_hidden_layers=1,hidden_size=16,num_attention_heads=2,intermediate_size=32",
                 "--hidden-weight", "1"]
    else:
        args += ["--layers", "1"]
    code, log, tmpdir = torchrun(args, tmp_path, "distill", script=PROBE)
    assert code == 0, log[-4000:]
    artifact = assert_one_clean_artifact(log, out, tmpdir)
    assert artifact.manifest["training"]["world_size"] == 2
    assert artifact.manifest["loss"]["teacher_outputs"] == teacher_outputs
    assert artifact.manifest["loss"]["hidden_projection"] is (teacher_outputs == "live")
    ranks = probes(tmp_path, "distill")
    for record in ranks:
        assert record["world_size"] == 2 and record["steps"] > 0
        assert set(record["wrapped"]) == {"BertForSequenceClassification"} and len(record["wrapped"]) == 1
        assert set(record["trainer_model_wrapped"]) == {"DistributedDataParallel"}
        # the one loaded model is the teacher: at every step of every rank in eval mode, never wrapped, not trained
        assert {s["path"] for s in record["loaded"]} == {str(teacher.path)}
        assert len(record["loaded"]) == record["steps"]
        assert not any(s["training"] or s["wrapped"] or s["is_trained_model"] for s in record["loaded"])
    assert ranks[0]["trained"] == ranks[1]["trained"]  # the student (and the projection) identical on both ranks
    assert len(ranks[0]["trained"][0]["extra"]) == (1 if teacher_outputs == "live" else 0)
    cache = tmp_path / "cache"
    cache_dirs = list(cache.iterdir()) if cache.exists() else []
    assert len(cache_dirs) == (1 if teacher_outputs == "cached" else 0)  # one cache, no partial of either rank


def test_torchrun_prune_with_kd_recovery(tmp_path, teacher):
    out = tmp_path / "p" / "pruned"
    out.parent.mkdir()
    args = ["prune", teacher.path, "--out", out, "--ffn", "0.5", "--heads", "0.5", "--recover-epochs", "1",
            "--distill-from", teacher.path, "--batch-size", "8"]
    code, log, tmpdir = torchrun(args, tmp_path, "prune", script=PROBE)
    assert code == 0, log[-4000:]
    artifact = assert_one_clean_artifact(log, out, tmpdir)
    assert artifact.manifest["training"][0]["world_size"] == 2
    assert artifact.manifest["pruning"]["structure"]["heads_per_layer"] == [2, 2]
    ranks = probes(tmp_path, "prune")
    for record in ranks:
        assert record["world_size"] == 2 and record["steps"] > 0
        assert len(record["wrapped"]) == 1  # the pruned model, once (one recovery round)
        parent = [s for s in record["loaded"] if s["is_trained_model"]]
        kd_teacher = [s for s in record["loaded"] if not s["is_trained_model"]]
        assert len(parent) == len(kd_teacher) == record["steps"]
        assert all(s["training"] and s["wrapped"] for s in parent)
        assert not any(s["training"] or s["wrapped"] for s in kd_teacher)  # eval mode, outside DDP
    assert ranks[0]["trained"] == ranks[1]["trained"]  # same heads removed, same recovered weights on both ranks


def test_torchrun_refuses_bertedge_run_in_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: m\ntask: text-classification\ndata: d\nstages:\n  - stage: finetune\n")
    code, log, tmpdir = torchrun(["run", recipe, "--out", tmp_path / "run"], tmp_path, "run")
    assert code != 0
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    # Rank 0's line, and rank 1's (named as such) unless torchrun stopped rank 1 first when rank 0 failed:
    # on one core that race goes either way, so one or two lines, each whole and each the refusal.
    assert 1 <= len(errors) <= 2 and log.count("error:") == len(errors), log[-3000:]
    refusal = "run: `bertedge run` does not run under torchrun / accelerate launch (world size 2)"
    assert all(line.startswith((f"error: {refusal}", f"error: rank 1: {refusal}")) for line in errors), errors
    assert all(line.endswith("see docs/distributed.md") for line in errors), errors
    assert not (tmp_path / "run").exists() and not [p for p in tmpdir.rglob("*") if p.is_file()]


@pytest.fixture
def launched(monkeypatch):
    """This process as a rank of a 2-process launch (set RANK yourself). Logging is set up first, as rank 0 would,
    so the session's logger keeps its level; what a replica would set in the environment is undone."""
    from bertedge import log

    log.setup()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", os.environ.get("TRANSFORMERS_VERBOSITY", "warning"))
    return monkeypatch


@pytest.mark.parametrize("command", [["run", "recipe.yaml"], ["export", "a", "--out", "b"],
                                     ["tune", "--task", "x", "--data", "y"], ["optimize", "--teacher", "t", "--out", "o"]])
def test_only_training_commands_run_under_a_launcher(cli, launched, command):
    launched.setenv("RANK", "0")
    result = cli(*command)
    line = assert_one_line_error(result, "does not run under torchrun / accelerate launch (world size 2)")
    assert line.startswith(f"error: {command[0]}: ")


def test_finetune_seeds_is_refused_under_a_launcher(cli, launched, tmp_path, tiny_model_dir, tiny_data):
    launched.setenv("RANK", "1")
    result = cli("finetune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], "--seeds", "1,2",
                 "--out", tmp_path / "s")
    assert_one_line_error(result, "rank 1: --seeds: --seeds does not run under torchrun")
    assert not list(tmp_path.iterdir())
