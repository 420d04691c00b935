"""Timing of early-exit bundles on real dev inputs, each (bundle, mode) in a worker process of its own.

Fixed shapes with random tokens say nothing about exits: how deep an input goes depends on the input. So
every target times batch-1 calls over the dev inputs themselves, through `bertedge.runtime.Bundle` (the
deployed path: segment graphs, the exit rule, numpy between the segments), tokenized beforehand so that
only the model is timed. Targets are (bundle, "early-exit" | "full-depth"), each in its own `python -m
bertedge.bench.early_exit` worker with the bundle's deployed session options; the parent alternates
blocks between the workers (one pass over the dev inputs per block, one worker running at a time), so
drift hits every target alike, as bench/isolated.py does for the fixed-shape grid.

    from bertedge.bench.early_exit import bench_early_exit
    report = bench_early_exit(["bundles/sst2-ee", "bundles/sst2-ee-int8"], rounds=5)

The same harness times models without exits over the same inputs (mode "plain"): bundles (`plain=True`), and
with `targets` the PyTorch fp32 teacher or any ONNX file with a tokenizer (the peer path), so a run report can
put the teacher, the peer and an early-exit final side by side in one run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..errors import BenchError

METHOD = ("batch 1 over the real dev inputs (pre-tokenized) through bertedge.runtime.Bundle.forward; each (bundle, "
          "mode) in its own worker process; alternating blocks of one pass over the inputs each, one process "
          "running at a time")
MODES = ("early-exit", "full-depth")
PLAIN = "plain"  # a bundle without exits, every layer through Bundle.forward: the same harness can rank both


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ----------------------------------------------------------------------------- worker


def _worker(args: list[str]) -> None:
    """stdin: one JSON command a line ({"block": true} or {"stop": true}); stdout: one JSON answer a line."""
    spec = json.loads(args[0])
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries print; the pipe belongs to the protocol
    calls, batches, gold, predict, exit_layer, layers = (_target_calls if spec.get("target") else _bundle_calls)(spec)
    for call in calls[: spec.get("warmup", 20)]:
        call()
    outputs = [call() for call in calls]  # one pass gives the predictions and, with exits, where each input left
    exits = [exit_layer(o) for o in outputs] if exit_layer else []
    correct = [p == g for p, g in zip(map(predict, outputs), gold) if g is not None and p is not None]
    ready = {"n": len(calls), "exit_layers": exits, "layers": layers,
             "accuracy": sum(correct) / len(correct) if correct else None,
             "tokens": [int(b["input_ids"].shape[1]) for b in batches], "pid": os.getpid()}
    out.write(json.dumps(ready) + "\n")
    out.flush()
    clock = time.perf_counter_ns
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("stop"):
            break
        for call in calls[: spec.get("warm_per_block", 5)]:  # bring this target's weights back into cache
            call()
        timings = []
        for call in calls:
            t0 = clock()
            call()
            timings.append((clock() - t0) / 1e6)
        time.sleep(spec.get("settle_s", 0.2))  # let ORT's spinning threads go quiet before the next worker
        out.write(json.dumps({"timings_ms": timings}) + "\n")
        out.flush()


def _bundle_calls(spec: dict):
    """One batch-1 call per dev input through `bertedge.runtime.Bundle` (the exit rule, when it has exits)."""
    import numpy as np

    from ..evaluate import load_eval_examples
    from ..runtime import Bundle

    bundle = Bundle(spec["path"], full_depth=spec["mode"] == "full-depth", threads=spec.get("threads"))
    examples = load_eval_examples(bundle.artifact, spec.get("data"), spec.get("split", "dev"), spec.get("max_samples"))
    normalized = [bundle.normalize({"text": ex["text"], "text_pair": ex.get("text_pair")}
                                   if ex.get("text_pair") is not None else ex["text"]) for ex in examples]
    features = bundle.task.eval_features(normalized, bundle.encoder, bundle.settings)
    batches = [bundle.encoder.collate([f]) for f in features]
    calls = [lambda b=b: bundle.forward(b) for b in batches]
    classify = bundle.task.name == "text-classification"
    return (calls, batches, [ex.get("label") for ex in examples],
            lambda result: int(np.argmax(result["logits"][0])) if classify else None,
            (lambda result: int(result["exit_layer"][0])) if bundle.early_exit else None,
            len(bundle.segments) if bundle.early_exit else None)


def _target_calls(spec: dict):
    """One batch-1 call per dev input through a bench Target (bench/backends.py): the PyTorch fp32 artifact, or an
    ONNX file with its tokenizer (the peer path), in the session configuration the fixed-shape bench uses."""
    import numpy as np

    from ..artifacts import load_artifact
    from ..evaluate import artifact_settings, load_eval_examples
    from ..tasks import get_task
    from ..tokenization import DEFAULT_INPUT_NAMES, TextEncoder
    from .backends import make_runner
    from .targets import onnx_target, resolve_targets

    t = spec["target"]
    if t.get("onnx"):
        target = onnx_target(t["name"], t["onnx"], task=t["task"], tokenizer_dir=t["tokenizer_dir"],
                             data_artifact=t["data_artifact"])
    else:
        target = resolve_targets([t["artifact"]])[0]
    data_artifact = load_artifact(t.get("data_artifact") or t["artifact"])
    runner = make_runner(target, "cpu", spec.get("threads"))
    encoder = TextEncoder.from_dir(target.tokenizer_dir, model_input_names=DEFAULT_INPUT_NAMES)
    examples = load_eval_examples(data_artifact, spec.get("data"), spec.get("split", "dev"), spec.get("max_samples"))
    features = get_task(target.task).eval_features(examples, encoder, artifact_settings(data_artifact))
    batches = [encoder.collate([f]) for f in features]
    calls = [runner.prepare(b) for b in batches]
    classify = target.task == "text-classification"

    def predict(out) -> int | None:
        if not classify:
            return None
        logits = out.logits.numpy() if hasattr(out, "logits") else np.asarray(out[0])
        return int(np.argmax(logits[0]))

    return calls, batches, [ex.get("label") for ex in examples], predict, None, None


# ----------------------------------------------------------------------------- parent


def bench_early_exit(bundles: list[str | Path], *, data: str | None = None, split: str = "dev",
                     max_samples: int | None = None, rounds: int = 5, threads: int | None = None,
                     modes: tuple[str, ...] = MODES, warmup: int = 20, plain: bool = False,
                     targets: list[dict] | None = None) -> dict:
    """Per-input b1 latency over the dev inputs of each early-exit bundle, early exit vs full depth.

    With `plain`, bundles without exits are accepted too and timed once, in mode "plain" (a search ranks
    early-exit and ordinary candidates in one run). `targets` adds models that are not bundles, each timed in
    mode "plain" in the same alternating rounds: `{"name", "artifact"}` (a PyTorch artifact, eager fp32) or
    `{"name", "onnx", "task", "tokenizer_dir", "data_artifact"}` (an ONNX file; the dev data is the data
    artifact's). Returns {"method", "rounds", "targets": [{bundle, mode, n, mean_ms, p50_ms, p90_ms, p99_ms,
    accuracy, mean_exit_layer, exit_histogram, ...}], "speedups": {bundle: full-depth mean / early-exit mean}};
    a row of `targets` has its name as `bundle`.
    """
    from ..artifacts import load_artifact
    from ..early_exit import histogram

    for mode in modes:
        if mode not in MODES:
            raise BenchError(f"unknown mode '{mode}'", where="modes", fix=f"Use {', '.join(MODES)}")
    plan: list[tuple] = []
    protocols: dict[str, dict] = {}  # bundle path -> its manifest's early_exit ({} for a plain bundle)
    for path in bundles:
        artifact = load_artifact(path)
        protocols[str(path)] = artifact.manifest.get("early_exit") or {}
        if protocols[str(path)].get("segments"):
            plan.append((path, modes))
        elif plain and artifact.is_bundle:
            plan.append((path, (PLAIN,)))
        else:
            raise BenchError("not an early-exit bundle (its manifest has no early_exit.segments)", where=str(path),
                             fix="Pass a bundle exported from a `bertedge early-exit` artifact")
    for target in targets or []:
        protocols[target["name"]] = {}
        plan.append((target["name"], (PLAIN,), {"target": {k: str(v) for k, v in target.items()}}))
    workers = []
    try:
        for path, bundle_modes, *extra in plan:
            for mode in bundle_modes:
                spec = {"path": str(path), "mode": mode, "data": data, "split": split, "max_samples": max_samples,
                        "threads": threads, "warmup": warmup, **(extra[0] if extra else {})}
                proc = subprocess.Popen([sys.executable, "-m", "bertedge.bench.early_exit", json.dumps(spec)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                line = proc.stdout.readline()
                if not line:
                    raise BenchError(f"the worker for {path} ({mode}) exited ({proc.wait()})", where=str(path),
                                     fix="Run `bertedge eval` on it to see the error")
                workers.append({"path": str(path), "mode": mode, "proc": proc, "ready": json.loads(line),
                                "timings": [], "blocks": []})
        for _ in range(rounds):
            for w in workers:
                w["proc"].stdin.write(json.dumps({"block": True}) + "\n")
                w["proc"].stdin.flush()
                answer = json.loads(w["proc"].stdout.readline())
                w["timings"] += answer["timings_ms"]
                w["blocks"].append(statistics.fmean(answer["timings_ms"]))
    finally:
        for w in workers:
            try:
                w["proc"].stdin.write(json.dumps({"stop": True}) + "\n")
                w["proc"].stdin.close()
            except (BrokenPipeError, ValueError):
                pass
            try:
                w["proc"].wait(timeout=30)
            except subprocess.TimeoutExpired:
                w["proc"].kill()
    targets = []
    for w in workers:
        ready, times = w["ready"], w["timings"]
        exits = ready["exit_layers"]
        n = ready["n"]
        # the mean per input over rounds, then over inputs (= the mean of all calls)
        targets.append({
            "bundle": w["path"], "mode": w["mode"], "n": n, "calls": len(times),
            "mean_ms": statistics.fmean(times), "p50_ms": _percentile(times, 0.5), "p90_ms": _percentile(times, 0.9),
            "p99_ms": _percentile(times, 0.99), "block_means_ms": w["blocks"], "accuracy": ready["accuracy"],
            "layers": ready["layers"], "mean_exit_layer": statistics.fmean(exits) if exits else None,
            "exit_histogram": histogram(exits, ready["layers"]) if exits else {},
            "mean_tokens": statistics.fmean(ready["tokens"]),
            "manifest_threshold": protocols[w["path"]].get("threshold"), "rule": protocols[w["path"]].get("rule"),
        })
    speedups = {}
    for path in dict.fromkeys(w["path"] for w in workers):
        rows = {t["mode"]: t for t in targets if t["bundle"] == path}
        if "early-exit" in rows and "full-depth" in rows:
            speedups[path] = {"latency_ratio": rows["early-exit"]["mean_ms"] / rows["full-depth"]["mean_ms"],
                              "speedup": rows["full-depth"]["mean_ms"] / rows["early-exit"]["mean_ms"],
                              "accuracy_drop_pts": None if rows["early-exit"]["accuracy"] is None else
                              round((rows["full-depth"]["accuracy"] - rows["early-exit"]["accuracy"]) * 100, 4)}
    return {"method": METHOD, "rounds": rounds, "split": split, "threads": threads, "targets": targets,
            "speedups": speedups}


def markdown(report: dict) -> str:
    lines = ["| bundle | mode | n | accuracy | mean exit layer | mean ms | p50 ms | p90 ms | exits per layer |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for t in report["targets"]:
        acc = "-" if t["accuracy"] is None else f"{t['accuracy']:.4f}"
        hist = " ".join(f"{k}:{v}" for k, v in t["exit_histogram"].items())
        depth = "-" if t["mean_exit_layer"] is None else f"{t['mean_exit_layer']:.2f}"
        lines.append(f"| {Path(t['bundle']).name} | {t['mode']} | {t['n']} | {acc} | {depth} | "
                     f"{t['mean_ms']:.3f} | {t['p50_ms']:.3f} | {t['p90_ms']:.3f} | {hist} |")
    for path, s in report["speedups"].items():
        drop = "" if s["accuracy_drop_pts"] is None else f", accuracy {-s['accuracy_drop_pts']:+.2f} pts"
        lines.append(f"\n{Path(path).name}: early exit at {s['latency_ratio']:.3f}x the full-depth mean latency "
                     f"({s['speedup']:.2f}x faster){drop}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    _worker(sys.argv[1:])
