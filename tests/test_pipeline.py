"""Recipes and `bertedge run`: validation before any model loads, round-trip, a tiny end-to-end run with
its report, and --resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bertedge.recipe import load_recipe, parse_recipe
from conftest import ROOT, assert_one_line_error

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate_and_round_trip(path):
    recipe = load_recipe(path)
    again = parse_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again.to_yaml() == recipe.to_yaml()
    assert recipe.stages[0].stage == "finetune" and recipe.stages[-1].stage == "quantize"


def test_required_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"sst2", "mrpc", "rte", "conll2003", "squad"}


BASE = {"model": "minilm-l6", "task": "text-classification", "data": "sst2"}


@pytest.mark.parametrize("stages,fragments", [
    ([{"stage": "finetune"}, {"stage": "compress"}], ["stages.1.stage", "unknown stage 'compress'", "Choose one of"]),
    ([{"stage": "finetune", "train": {"epochz": 2}}], ["stages.0.finetune.train.epochz", "unknown key"]),
    ([{"stage": "finetune"}, {"stage": "export"}, {"stage": "quantize", "per_channel": "maybe"}],
     ["stages.2.quantize.per_channel", "boolean"]),
    ([{"stage": "finetune"}, {"stage": "export"}, {"stage": "quantize", "mode": "static"}],
     ["stages.2.quantize.calibration", "static quantization needs calibration data"]),
    ([{"stage": "distill", "layers": 3}], ["stages.0.distill.source", "distillation needs a teacher"]),
    ([{"stage": "finetune"}, {"stage": "quantize"}], ["stages.1.quantize", "needs an exported ONNX bundle"]),
    ([{"stage": "finetune"}, {"stage": "export", "source": "techer"}], ["stages.1.export.source", "techer"]),
])
def test_recipe_errors_are_path_qualified_one_liners(cli, tmp_path, stages, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "stages": stages}), encoding="utf-8")
    line = assert_one_line_error(cli("run", str(path), "--out", str(tmp_path / "run")), str(path), *fragments)
    assert "Traceback" not in line
    assert not (tmp_path / "run").exists()


def test_recipe_top_level_and_yaml_errors(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "task": "summarization", "stages": [{"stage": "finetune"}]}))
    assert_one_line_error(cli("run", str(path)), "task", "Input should be")
    path.write_text("model: minilm-l6\nstages: [\n")
    assert_one_line_error(cli("run", str(path)), f"{path}:", "invalid YAML")
    assert_one_line_error(cli("run", str(tmp_path / "none.yaml")), "no such recipe file")


def tiny_recipe(tmp_path: Path, model_dir: Path, data_dir: Path) -> Path:
    recipe = {
        "name": "tiny", "model": str(model_dir), "task": "text-classification", "data": str(data_dir),
        "budget": {"max_accuracy_drop": 100.0},
        "bench": {"batch_sizes": [1], "seq_lens": [32], "warmup": 1, "duration": 0.02, "peer": True},
        "stages": [
            {"stage": "finetune", "name": "teacher", "max_length": 32,
             "train": {"epochs": 6, "lr": 3e-3, "batch_size": 16, "seed": 0, "warmup_ratio": 0.0}},
            {"stage": "distill", "name": "student", "layers": 1,
             "train": {"epochs": 3, "lr": 3e-3, "batch_size": 16, "seed": 0}},
            {"stage": "trim-vocab"},
            {"stage": "export", "metric_samples": 32},
            {"stage": "quantize", "mode": "dynamic"},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_data):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("tiny-run")
    recipe = tiny_recipe(root, tiny_model_dir, tiny_data["sst"])
    started = time.time()
    result = run_cli("run", str(recipe), "--out", str(root / "run"), "--json")
    assert result.code == 0, result
    return {"recipe": recipe, "out": root / "run", "summary": json.loads(result.out),
            "seconds": time.time() - started}


def test_tiny_recipe_runs_end_to_end_with_the_report(tiny_run):
    out = tiny_run["out"]
    assert [s["name"] for s in tiny_run["summary"]["steps"]] == ["teacher", "student", "trim-vocab", "export",
                                                                 "quantize"]
    report = json.loads((out / "report.json").read_text())
    assert {"teacher", "final", "artifacts", "budget", "machine"} <= set(report)
    names = [a["name"] for a in report["artifacts"]]
    assert names[:5] == ["teacher", "student", "trim-vocab", "export", "quantize"] and names[5].startswith("peer")
    for a in report["artifacts"]:
        assert {"name", "stage", "path", "metrics", "size_bytes", "p50_ms_b1_s128", "p50_ms_real",
                "throughput_b32", "speedup_vs_teacher", "speedup_vs_peer"} <= set(a)
        assert a["p50_ms_b1_s128"] > 0 and a["throughput_b32"] > 0 and a["p50_ms_real"] > 0
    assert report["final"]["name"] == "quantize" and report["final"]["stage"] == "quantize"
    assert report["teacher"]["speedup_vs_teacher"] == pytest.approx(1.0)
    assert report["peer"]["speedup_vs_peer"] == pytest.approx(1.0)
    assert report["budget"]["met"] is True
    assert report["speedup_grid"] and all(g["speedup_vs_peer"] > 0 and g["peer_p50_ms"] > 0
                                          for g in report["speedup_grid"])
    # the grid is time-boxed (bench.duration), not a fixed number of rounds; at least 5 rounds each
    assert report["bench"]["config"]["duration"] == 0.02 and report["bench"]["config"]["runs"] is None
    assert min(r["n"] for r in report["bench"]["results"]) >= 5
    assert (out / "report.md").read_text().count("|") > 20 and (out / "pareto.png").stat().st_size > 1000
    assert tiny_run["seconds"] < 240


def test_run_refuses_an_existing_run_without_resume(cli, tiny_run):
    line = assert_one_line_error(cli("run", str(tiny_run["recipe"]), "--out", str(tiny_run["out"])),
                                 "run directory already exists", "--resume")
    assert str(tiny_run["out"]) in line


def test_resume_keeps_finished_steps(cli, tiny_run):
    before = {p.name: (p / "bertedge.json").stat().st_mtime for p in (tiny_run["out"] / "artifacts").iterdir()}
    result = cli("run", str(tiny_run["recipe"]), "--out", str(tiny_run["out"]), "--resume", "--no-report", "--json")
    assert result.code == 0, result
    assert all(s["skipped"] for s in json.loads(result.out)["steps"])
    after = {p.name: (p / "bertedge.json").stat().st_mtime for p in (tiny_run["out"] / "artifacts").iterdir()}
    assert before == after


def test_killed_run_resumes_to_the_same_final_metrics(tmp_path, tiny_run, tiny_model_dir, tiny_data):
    """SIGKILL `bertedge run` while the student trains; --resume keeps the teacher and ends where an
    uninterrupted run ends."""
    recipe = tiny_recipe(tmp_path, tiny_model_dir, tiny_data["sst"])
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "bertedge.cli", "run", str(recipe), "--out", str(out), "--no-report"]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not list((out / "artifacts").glob(".student.partial-*")):
            time.sleep(0.1)
        assert child.poll() is None, "the run ended before the student stage started"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    teacher_sha = json.loads((out / "artifacts" / "teacher" / "bertedge.json").read_text())["payload_sha256"]
    assert not (out / "artifacts" / "student").exists()
    resumed = subprocess.run([*cmd, "--resume", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = {s["name"]: s["skipped"] for s in json.loads(resumed.stdout)["steps"]}
    assert steps == {"teacher": True, "student": False, "trim-vocab": False, "export": False, "quantize": False}
    assert json.loads((out / "artifacts" / "teacher" / "bertedge.json").read_text())["payload_sha256"] == teacher_sha
    final = json.loads((out / "artifacts" / "quantize" / "bertedge.json").read_text())["metrics"]["dev"]
    reference = json.loads((tiny_run["out"] / "artifacts" / "quantize" / "bertedge.json").read_text())["metrics"]["dev"]
    assert final["accuracy"] == reference["accuracy"]
