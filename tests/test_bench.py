"""bench: statistics, interleaving, FLOPs, peak estimate, backends, JSON/Markdown/PNG reports, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import assert_one_line_error

from bertedge.bench import BenchConfig, run_bench
from bertedge.bench.flops import FlopModel, onnx_flops, peak_gflops, torch_flops
from bertedge.bench.latency import interleaved_timings
from bertedge.bench.stats import percentile, relative_difference, summarize
from bertedge.errors import BenchError

TINY = {"hidden": 32, "intermediate": 64, "layers": 2}  # conftest.build_tiny_bert


def tiny_bert_flops(seq_len: int, labels: int = 2) -> int:
    """Matmul FLOPs of the tiny BERT classifier, written out by hand."""
    h, i, layers = TINY["hidden"], TINY["intermediate"], TINY["layers"]
    per_layer = 2 * seq_len * (4 * h * h + 2 * h * i) + 2 * 2 * seq_len * seq_len * h  # QKVO+FFN, scores+context
    return layers * per_layer + 2 * h * h + 2 * h * labels  # pooler + classifier, once per sequence


# ----------------------------------------------------------------------------- statistics (synthetic timings)


def test_percentiles_match_linear_interpolation_on_known_data():
    values = list(range(100, 0, -1))  # 1..100, unsorted on purpose
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    for q in (50, 90, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_reports_exact_numbers_on_constructed_timings():
    timings = [10.0, 12.0, 11.0, 13.0, 14.0]  # ms per call of a batch of 4
    s = summarize(timings, items_per_call=4)
    assert s["n"] == 5 and s["p50_ms"] == 12.0 and s["min_ms"] == 10.0 and s["max_ms"] == 14.0
    assert s["mean_ms"] == pytest.approx(12.0)
    assert s["stdev_ms"] == pytest.approx(math.sqrt(2.5))  # sample stdev of 10..14
    assert s["p90_ms"] == pytest.approx(13.6) and s["p99_ms"] == pytest.approx(13.96)
    assert s["throughput"] == pytest.approx(4 * 5 / 0.060)  # 20 sequences in 60 ms
    assert relative_difference(100.0, 109.0) == pytest.approx(0.09)
    assert summarize([5.0])["stdev_ms"] == 0.0


def test_rounds_are_interleaved_across_targets_after_warmup():
    log: list[str] = []
    calls = [[lambda: log.append("A")], [lambda: log.append("B1"), lambda: log.append("B2")], [lambda: log.append("C")]]
    timings = interleaved_timings(calls, warmup=2, runs=3, duration=None)
    assert log[:6] == ["A", "A", "B1", "B2", "C", "C"]  # warmup, target by target
    assert log[6:] == ["A", "B1", "C", "A", "B2", "C", "A", "B1", "C"]  # rounds A B C, batches cycling
    assert [len(t) for t in timings] == [3, 3, 3] and all(x >= 0 for t in timings for x in t)
    timed = interleaved_timings([[lambda: None]], warmup=0, runs=None, duration=1e-9)
    assert len(timed[0]) == 5  # duration mode still takes MIN_ROUNDS


# ----------------------------------------------------------------------------- FLOPs and peak


def test_flop_model_is_the_exact_quadratic_through_three_points():
    model = FlopModel.fit({8: tiny_bert_flops(8), 16: tiny_bert_flops(16), 32: tiny_bert_flops(32)})
    assert (model.a, model.b, model.c) == (256.0, 32768.0, 2176.0)
    assert model(128) == tiny_bert_flops(128) and model(77) == tiny_bert_flops(77)


def test_torch_and_onnx_flop_counts_equal_the_hand_count(tiny_artifacts, tiny_bundles):
    from bertedge.modeling import load_torch_artifact

    model, _ = load_torch_artifact(tiny_artifacts["sst"])
    onnx_file = tiny_bundles["sst"].file("model.onnx")
    for seq in (8, 40):
        assert torch_flops(model, seq) == tiny_bert_flops(seq)
        assert onnx_flops(onnx_file, seq) == tiny_bert_flops(seq)  # fused Attention/EmbedLayerNorm graph


def test_int8_onnx_graph_counts_the_same_flops(int8_bundle):
    assert onnx_flops(int8_bundle / "model.onnx", 24) == tiny_bert_flops(24)


def test_peak_estimate_follows_the_documented_formula():
    avx2 = {"flags": ["avx", "avx2", "fma"], "mhz": 2500.0}
    fp32 = peak_gflops(avx2, 2)
    assert fp32["fp32_flops_per_cycle_per_core"] == 32 and fp32["peak_gflops"] == 160.0  # 2 x 2.5 x 8 lanes x 2 x 2
    assert peak_gflops(avx2, 2, int8=True)["peak_gflops"] == pytest.approx(213.3, abs=0.1)  # x 4/3
    vnni = {"flags": ["avx2", "fma", "avx512f", "avx512_vnni"], "mhz": 2000.0}
    assert peak_gflops(vnni, 1)["peak_gflops"] == 128.0  # 16 lanes x 2 x 2 units x 2 GHz
    assert peak_gflops(vnni, 1, int8=True)["peak_gflops"] == 512.0
    assert peak_gflops({"flags": [], "mhz": None}, 4)["peak_gflops"] is None
    assert peak_gflops(avx2, 2, fma_units=1)["peak_gflops"] == 80.0


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def int8_bundle(tiny_bundles, tmp_path_factory):
    """The sst bundle with its MatMuls dynamically quantized (a stand-in for the quantize stage's output)."""
    import shutil

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = tiny_bundles["sst"].path
    out = tmp_path_factory.mktemp("int8") / "sst-int8"
    shutil.copytree(src, out)
    quantize_dynamic(str(src / "model.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    manifest = json.loads((out / "bertedge.json").read_text())
    manifest["stage"] = "quantize"
    (out / "bertedge.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def report(tiny_artifacts, tiny_bundles, int8_bundle, tiny_data):
    config = BenchConfig(batch_sizes=[1, 4], seq_lens=[8, 32], warmup=1, runs=3, torch_int8=True,
                         real_lengths=str(tiny_data["sst"]), real_samples=16, threads=1)
    return run_bench([tiny_bundles["sst"].path, int8_bundle, tiny_artifacts["sst"].path], config,
                     progress=lambda _: None)


# ----------------------------------------------------------------------------- run_bench


def test_report_has_the_documented_shape(report, tiny_bundles, int8_bundle, tiny_artifacts):
    assert report["schema"] == "bertedge.bench/1"
    machine = report["machine"]
    assert {"cpu", "versions", "threads", "peak", "provider"} <= set(machine)
    assert machine["threads"] == 1 and machine["peak"]["fp32"]["cores"] == 1
    names = [a["artifact"] for a in report["artifacts"]]
    # Two directories named sst: told apart by their parent directories.
    bundle, artifact = (f"{tiny_bundles['sst'].path.parent.name}/sst", f"{tiny_artifacts['sst'].path.parent.name}/sst")
    assert names == [bundle, "sst-int8", artifact, f"{artifact}+torch-int8"]
    assert [a["backend"] for a in report["artifacts"]] == ["onnxruntime", "onnxruntime", "torch", "torch-int8"]
    assert [a["precision"] for a in report["artifacts"]] == ["fp32", "int8", "fp32", "int8"]
    rows = report["results"]
    assert len(rows) == 4 * (2 * 2 + 2)  # targets x (batch x seq + real-length per batch)
    types = {"artifact": str, "backend": str, "provider": str, "batch_size": int, "p50_ms": float, "p90_ms": float,
             "p99_ms": float, "throughput": float, "size_bytes": int, "peak_rss_mb": float}
    for row in rows:
        for key, kind in types.items():
            assert isinstance(row[key], kind), (key, row[key])
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["n"] == 3 and row["provider"] == "cpu"
    fixed = [r for r in rows if r["mode"] == "fixed"]
    real = [r for r in rows if r["mode"] == "real-length"]
    assert all(isinstance(r["seq_len"], int) for r in fixed) and all(r["seq_len"] is None for r in real)
    assert all(r["mean_seq_len"] == r["seq_len"] for r in fixed)
    assert all(r["mean_tokens"] <= r["mean_seq_len"] for r in real)
    onnx_row = next(r for r in fixed if r["artifact"] == bundle)
    assert onnx_row["active_providers"] == ["CPUExecutionProvider"]
    assert onnx_row["size_bytes"] == (tiny_bundles["sst"].path / "model.onnx").stat().st_size
    assert next(r for r in fixed if r["artifact"] == "sst-int8")["size_bytes"] == (int8_bundle / "model.onnx").stat().st_size


def test_flops_and_gflops_are_consistent_with_the_timings(report):
    for row in report["results"]:
        if row["mode"] == "fixed":
            assert row["flops_per_seq"] == tiny_bert_flops(row["seq_len"])
        expected = row["flops_per_seq"] * row["batch_size"] * row["n"] / (row["mean_ms"] * row["n"] / 1000) / 1e9
        if row["mode"] == "fixed":
            assert row["gflops"] == pytest.approx(expected, rel=1e-3, abs=1e-3)  # rounded to 3 decimals
        assert row["peak_fraction"] is None or row["peak_fraction"] > 0
    onnx_fp32, onnx_int8, torch_fp32, torch_int8 = (a["parameters"] for a in report["artifacts"])
    assert torch_fp32 == torch_int8
    assert onnx_fp32 == pytest.approx(torch_fp32, rel=0.02)  # ONNX initializers vs torch parameters
    assert onnx_int8 == pytest.approx(torch_fp32, rel=0.02)


def test_same_path_twice_is_two_targets(tiny_bundles):
    report = run_bench([tiny_bundles["sst"].path, tiny_bundles["sst"].path],
                       BenchConfig(batch_sizes=[1], seq_lens=[8], warmup=0, runs=2, flops=False), progress=print)
    assert [r["artifact"] for r in report["results"]] == ["sst", "sst#2"]
    assert report["results"][0]["flops_per_seq"] is None


def test_io_binding_path_gives_the_same_outputs_on_cpu(tiny_bundles):
    from bertedge.bench.backends import OrtRunner
    from bertedge.bench.latency import synthetic_batch
    from bertedge.bench.targets import resolve_targets
    from bertedge.tokenization import TextEncoder

    target = resolve_targets([tiny_bundles["sst"].path])[0]
    batch = synthetic_batch(TextEncoder.from_dir(target.tokenizer_dir), 2, 12, seed=0)
    plain = OrtRunner(target, "cpu", 1).prepare(batch)()
    bound = OrtRunner(target, "cpu", 1, io_binding=True)
    assert bound.io_binding and bound.device == "cpu"
    outputs = bound.prepare(batch)().copy_outputs_to_cpu()
    assert plain[0].shape == (2, 2)
    np.testing.assert_allclose(outputs[0], plain[0], rtol=1e-5, atol=1e-6)


def test_multi_instance_mode_pools_workers(tiny_bundles):
    report = run_bench([tiny_bundles["sst"].path],
                       BenchConfig(batch_sizes=[2], seq_lens=[8], warmup=1, runs=4, instances=2, threads=1),
                       progress=lambda _: None)
    (row,) = report["results"]
    assert row["instances"] == 2 and row["n"] == 8  # 2 workers x 4 rounds, pooled
    assert row["throughput"] > 0 and row["peak_rss_mb"] > 0
    assert report["machine"]["instances"] == 2


# ----------------------------------------------------------------------------- providers (no GPU here)


class FakeSession:
    """An InferenceSession that, like ONNX Runtime without GPU libraries, silently runs on CPU."""

    def __init__(self, path, sess_options=None, providers=None):
        self.requested = providers

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_a_gpu_provider_that_is_not_active_is_an_error(monkeypatch, tiny_bundles):
    import onnxruntime as ort

    from bertedge.bench.backends import OrtRunner
    from bertedge.bench.targets import resolve_targets

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    target = resolve_targets([tiny_bundles["sst"].path])[0]
    with pytest.raises(BenchError, match="provider 'cuda' was requested but the session runs on CPUExecutionProvider"):
        OrtRunner(target, "cuda", None)


def test_tensorrt_sessions_get_shape_profiles_and_the_engine_cache(monkeypatch, tiny_bundles, tmp_path):
    import onnxruntime as ort

    from bertedge.bench.backends import OrtRunner
    from bertedge.bench.targets import resolve_targets

    created = {}

    class TrtSession(FakeSession):
        def __init__(self, path, sess_options=None, providers=None):
            created["providers"] = providers

        def get_providers(self):
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_inputs(self):
            return []

        def get_outputs(self):
            return []

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider",
                                                                 "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", TrtSession)
    target = resolve_targets([tiny_bundles["sst"].path])[0]
    runner = OrtRunner(target, "tensorrt", None, max_batch=8, max_seq=128, trt_cache_dir=tmp_path / "trt")
    name, options = created["providers"][0]
    assert name == "TensorrtExecutionProvider" and created["providers"][1:] == ["CUDAExecutionProvider",
                                                                                "CPUExecutionProvider"]
    assert options["trt_engine_cache_enable"] is True and options["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert options["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1"
    assert options["trt_profile_max_shapes"] == "input_ids:8x128,attention_mask:8x128,token_type_ids:8x128"
    assert runner.io_binding and runner.device == "cuda"


# ----------------------------------------------------------------------------- CLI, reports, plots


def test_cli_json_prints_the_report(cli, tiny_bundles):
    result = cli("bench", tiny_bundles["sst"].path, "--batch-sizes", "1", "--seq-lens", "8,16", "--runs", "2",
                 "--warmup", "0", "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    assert set(data) >= {"machine", "results", "artifacts", "config"}
    assert [(r["batch_size"], r["seq_len"]) for r in data["results"]] == [(1, 8), (1, 16)]
    assert data["config"]["runs"] == 2


def test_cli_out_writes_json_markdown_and_plots(cli, tiny_bundles, int8_bundle, tmp_path):
    import matplotlib.image as mpimg

    out = tmp_path / "bench"
    result = cli("bench", tiny_bundles["sst"].path, int8_bundle, "--batch-sizes", "1,2", "--seq-lens", "8,16,32",
                 "--runs", "2", "--warmup", "0", "--out", out)
    assert result.code == 0, result
    assert "| sst | onnxruntime | fp32 | fixed | 1 | 8 |" in result.out
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "latency_vs_seq.png", "pareto.png"]
    for png in ("latency_vs_seq.png", "pareto.png"):
        image = mpimg.imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 400
    md = (out / "bench.md").read_text()
    assert "Accuracy vs latency (p50 at batch 1, seq 32)" in md and "| sst-int8 | accuracy" in md


def test_pareto_figure_labels_axes_and_every_artifact(report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bertedge.bench.report import plot_latency, plot_pareto

    captured = {}
    original = plt.Figure.savefig

    def grab(fig, *args, **kwargs):
        captured.setdefault("figs", []).append(fig)
        return original(fig, *args, **kwargs)

    import tempfile
    from pathlib import Path
    from unittest import mock

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(plt.Figure, "savefig", grab):
        plot_latency(report, Path(tmp) / "a.png")
        plot_pareto(report, Path(tmp) / "b.png")
    latency, pareto = captured["figs"]
    for ax in latency.axes:
        assert ax.get_xlabel() == "sequence length (tokens)" and ax.get_ylabel().startswith("p50 latency")
    names = [a["artifact"] for a in report["artifacts"]]
    legend = [t.get_text() for t in latency.axes[0].get_legend().get_texts()]
    assert legend == names
    ax = pareto.axes[0]
    assert ax.get_xlabel() == "p50 latency (ms), batch 1, seq 32" and ax.get_ylabel() == "dev accuracy (text-classification)"
    # Artifacts with dev metrics in their manifests; the torch-int8 variant carries none.
    assert sorted(t.get_text() for t in ax.texts) == sorted(names[:3])


# ----------------------------------------------------------------------------- bad input: one line, exit 1


def test_unknown_provider(cli, tiny_bundles):
    result = cli("bench", tiny_bundles["sst"].path, "--provider", "tpu")
    assert_one_line_error(result, "--provider: unknown provider 'tpu'", "cpu, cuda, tensorrt")


def test_provider_not_installed_names_the_package(cli, tiny_bundles, tmp_path):
    result = cli("bench", tiny_bundles["sst"].path, "--provider", "cuda", "--out", tmp_path / "o")
    assert_one_line_error(result, "provider 'cuda'", "not available", "Install onnxruntime-gpu")
    assert not (tmp_path / "o").exists()


def test_seq_len_above_max_positions(cli, tiny_bundles, tiny_artifacts, tmp_path):
    for path in (tiny_bundles["sst"].path, tiny_artifacts["sst"].path):
        result = cli("bench", path, "--seq-lens", "32,512", "--out", tmp_path / "o")
        assert_one_line_error(result, "--seq-lens", "sequence length 512 is above the model's max positions (256)",
                              "Use sequence lengths up to 256")
    assert not (tmp_path / "o").exists()


def test_empty_artifact_list(cli):
    assert_one_line_error(cli("bench"), "no artifacts to benchmark", "Pass one or more artifact directories")


def test_mixed_tasks_in_a_pareto_plot(cli, tiny_bundles, tiny_artifacts, tmp_path):
    result = cli("bench", tiny_bundles["sst"].path, tiny_artifacts["conll"].path, "--seq-lens", "8", "--out", tmp_path / "o")
    assert_one_line_error(result, "cannot put artifacts of different tasks on one accuracy-vs-latency plot",
                          "text-classification: sst", "token-classification: conll", "--no-pareto")
    assert not (tmp_path / "o").exists()


def test_runs_and_duration_together(cli, tiny_artifacts):
    result = cli("bench", tiny_artifacts["sst"].path, "--runs", "3", "--duration", "1")
    assert_one_line_error(result, "pass either runs or duration, not both")


def test_pytorch_artifacts_refuse_tensorrt(monkeypatch, cli, tiny_artifacts):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    result = cli("bench", tiny_artifacts["sst"].path, "--provider", "tensorrt")
    assert_one_line_error(result, "TensorRT runs ONNX bundles only", "is a PyTorch artifact", "bertedge export")


def test_real_batch_sizes_limit_the_real_length_mode(tiny_bundles, tiny_data):
    # 3 dev sequences are too few for batch 4 in real-length mode, but fixed shapes still run at batch 4.
    config = BenchConfig(batch_sizes=[1, 4], seq_lens=[8], warmup=0, runs=3, real_lengths=str(tiny_data["sst"]),
                         real_samples=3, real_batch_sizes=[1], threads=1, flops=False)
    rows = run_bench([tiny_bundles["sst"].path], config, progress=lambda _: None)["results"]
    assert sorted((r["mode"], r["batch_size"]) for r in rows) == [("fixed", 1), ("fixed", 4), ("real-length", 1)]
    with pytest.raises(BenchError, match="fewer than batch size 4"):
        run_bench([tiny_bundles["sst"].path], config.model_copy(update={"real_batch_sizes": None}),
                  progress=lambda _: None)


# ----------------------------------------------------------------------------- process isolation


def test_each_target_runs_in_a_worker_process_of_its_own(report):
    import os

    pids = [a["worker_pid"] for a in report["artifacts"]]
    assert len(set(pids)) == len(pids) == 4 and os.getpid() not in pids
    assert report["method"]["isolation"] == "process" and report["method"]["blocks"] == 5
    assert all(a["peak_rss_mb"] > 0 for a in report["artifacts"])


def test_in_process_mode_is_explicit_and_recorded(tiny_bundles):
    import os

    report = run_bench([tiny_bundles["sst"].path], BenchConfig(batch_sizes=[1], seq_lens=[8], warmup=0, runs=2,
                                                               flops=False, isolation="in-process"),
                       progress=lambda _: None)
    assert report["method"]["isolation"] == "in-process" and "distort" in report["method"]["description"]
    assert report["artifacts"][0]["worker_pid"] == os.getpid()


class _FakeWorker:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def time_block(self, *, calls=None, seconds=None, settle_s=0.0, warm=0):
        assert warm == 3  # every block re-warms its target first
        self.log.append((self.name, calls))
        return [1.0] * (calls or 2)


def test_alternating_blocks_run_one_target_at_a_time_in_turn():
    from bertedge.bench.isolated import alternating_timings

    log: list = []
    workers = [_FakeWorker("A", log), _FakeWorker("B", log)]
    timings = alternating_timings(workers, runs=7, duration=None, blocks=3, settle_s=0, block_warmup=3)
    assert log == [("A", 3), ("B", 3), ("A", 3), ("B", 3), ("A", 1), ("B", 1)]  # A's block, B's block, ...
    assert [len(t) for t in timings] == [7, 7]
    log.clear()
    timings = alternating_timings(workers, runs=None, duration=0.01, blocks=2, settle_s=0, block_warmup=3)
    assert [n for n, _ in log] == ["A", "B", "A", "B", "A", "B"]  # 2 blocks, then until MIN_ROUNDS (5) calls
    assert [len(t) for t in timings] == [6, 6]


def test_a_worker_that_fails_to_load_fails_the_bench_in_one_line(tiny_artifacts, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifacts["sst"].path, broken)
    (broken / "model.safetensors").write_bytes(b"not a weights file")  # found out only when the worker loads it
    with pytest.raises(BenchError, match="bench worker of broken failed") as info:
        run_bench([broken], BenchConfig(batch_sizes=[1], seq_lens=[8], warmup=0, runs=1, flops=False),
                  progress=lambda _: None)
    assert "\n" not in str(info.value)


def test_a_script_without_a_main_guard_can_run_the_bench(tiny_bundles, tmp_path):
    """Workers are fresh interpreters, not multiprocessing children: the caller's main module is never
    re-imported, so a plain script works (with multiprocessing's spawn it would fail)."""
    import subprocess
    import sys

    script = tmp_path / "plain.py"
    script.write_text("from bertedge.bench import BenchConfig, run_bench\n"
                      f"r = run_bench([{str(tiny_bundles['sst'].path)!r}], BenchConfig(batch_sizes=[1], seq_lens=[8], "
                      "warmup=0, runs=2, flops=False), progress=lambda _: None)\n"
                      "print('rows', len(r['results']))\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "rows 1", done.stderr[-2000:]
