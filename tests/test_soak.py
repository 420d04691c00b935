"""Bounded memory under varying shapes: 10,000 predictions of random lengths through `runtime.Bundle`.

ONNX Runtime's CPU arena grows with each new input shape and keeps the memory (onnxruntime#11627). The soak runs
in a fresh spawned process (no torch, nothing else allocating) on a tiny random BERT with 512 positions, one text
per call, token counts drawn uniformly from 3..512 with a fixed seed (510 distinct shapes), RSS sampled every 50
calls. Measured here (benchmarks/results/soak-rss.md): +0.7 MB between the first window after warm-up and the last.
"""

from __future__ import annotations

import pytest
from conftest import build_tiny_bert, finetune_tiny, write_classification_dir

TC = "text-classification"
CALLS = 10_000
GROWTH_BOUND_MB = 8.0  # last-1000-calls max RSS <= first-post-warm-up-1000 max RSS + this


@pytest.fixture(scope="module")
def soak_bundle(tmp_path_factory):
    from bertedge.stages.export import ExportConfig, export

    root = tmp_path_factory.mktemp("soak")
    model = build_tiny_bert(root / "model", max_position=512)
    data = write_classification_dir(root / "sst")
    artifact = finetune_tiny(model, data, TC, root / "artifact", epochs=1.0, max_length=512)
    return export(artifact, ExportConfig(), root / "bundle")


def test_rss_stops_growing_after_warmup(soak_bundle):
    from bertedge.bench.soak import WARMUP_CALLS, WINDOW, soak_in_fresh_process

    result = soak_in_fresh_process(soak_bundle.path, {}, calls=CALLS, seed=0, sample_every=50, threads=1)
    s = result["summary"]
    assert result["calls"] == CALLS and result["max_tokens"] == 512
    assert result["distinct_lengths"] == 510  # every length 3..512 was sent (fixed seed)
    assert len(result["samples"]) == CALLS // 50
    assert (s["warmup_calls"], s["window"]) == (WARMUP_CALLS, WINDOW) == (1000, 1000)
    assert s["last_window_max_mb"] <= s["first_window_max_mb"] + GROWTH_BOUND_MB, result["summary"]


def test_memory_and_spinning_options_reach_the_session(soak_bundle):
    from bertedge.providers import make_session
    from bertedge.runtime import Bundle

    model = soak_bundle.path / "model.onnx"
    default = make_session(model).get_session_options()
    assert default.enable_cpu_mem_arena and default.enable_mem_pattern  # None: ORT's own defaults
    with pytest.raises(RuntimeError, match="allow_spinning"):  # not set at all: ORT spins by default
        default.get_session_config_entry("session.intra_op.allow_spinning")
    off = make_session(model, cpu_mem_arena=False, mem_pattern=False, spinning=False).get_session_options()
    assert not off.enable_cpu_mem_arena and not off.enable_mem_pattern
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"

    bundle = Bundle(soak_bundle.path, cpu_mem_arena=False, mem_pattern=False, spinning=False)
    options = bundle.session.get_session_options()
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert bundle.session_options == {"spinning": False, "cpu_mem_arena": False, "mem_pattern": False}
    assert bundle.predict(["good movie"])[0]["label"] in ("0", "1")
    assert Bundle(soak_bundle.path).session.get_session_options().enable_cpu_mem_arena


def test_bench_passes_the_memory_options_to_the_onnx_runtime_runner(soak_bundle, cli, tmp_path):
    from bertedge.bench import BenchConfig
    from bertedge.bench.backends import make_runner
    from bertedge.bench.targets import resolve_targets

    target = resolve_targets([soak_bundle.path], torch_int8=False)[0]
    runner = make_runner(target, "cpu", 1, cpu_mem_arena=False, mem_pattern=False, spinning=False)
    options = runner.session.get_session_options()
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert runner.session_options == {"spinning": False, "cpu_mem_arena": False, "mem_pattern": False}
    assert BenchConfig().cpu_mem_arena is None and BenchConfig().mem_pattern is None

    result = cli("bench", soak_bundle.path, "--batch-sizes", "1", "--seq-lens", "16", "--warmup", "0", "--runs", "2",
                 "--no-cpu-mem-arena", "--no-mem-pattern", "--isolation", "in-process", "--json")
    assert result.code == 0, result
    import json

    report = json.loads(result.out)
    assert report["config"]["cpu_mem_arena"] is False and report["config"]["mem_pattern"] is False
