"""The two peer paths side by side on the SST-2 teacher, in one run: optimum's (ORTModelFor* export +
ORTQuantizer avx2 dynamic int8, the legacy stack's peer) and plain ONNX Runtime's (torch.onnx.export +
the transformer optimizer + quantize_dynamic, the current stack's peer), with the PyTorch fp32 teacher as
the common reference. So the change of peer that comes with transformers 5 is measured, not assumed:
latency, size and dev accuracy of each.

Needs both peers on one machine, i.e. the legacy stack (`make setup-legacy`; optimum-onnx needs
transformers < 4.58). Usage (timings only through quiet_cpu.sh, which pauses background training):

    .venv-legacy/bin/python benchmarks/peers_sst2.py --prepare-only     # build both peers + dev accuracy (cached)
    bash benchmarks/quiet_cpu.sh .venv-legacy/bin/python benchmarks/peers_sst2.py

Results: benchmarks/results/peers_sst2.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import ROOT, cache_dir, write_results

sys.path.insert(0, str(ROOT))

from bertedge import log
from bertedge.artifacts import load_artifact
from bertedge.bench import BenchConfig, markdown_table, onnx_target, run_bench
from bertedge.bench.stats import speedup
from bertedge.bench.targets import resolve_targets
from bertedge.env import optimum_installed
from bertedge.peer import PEERS, build_peer

KEY_POINT = (1, 128)


def prepare(teacher) -> dict:
    """Both peers of `teacher` with their dev metrics and sizes, cached per teacher payload."""
    from bertedge.report import _peer_metrics

    root = cache_dir() / "bench" / f"peers-sst2-{teacher.manifest.get('payload_sha256', 'x')[:12]}"
    record_path = root / "peers.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    record = {}
    for kind in PEERS:
        started = time.time()
        log.info(f"peers: building the {kind} peer")
        files = build_peer(teacher, root / kind, kind)
        record[kind] = {"name": files["name"], "method": files["method"], "fp32": str(files["fp32"]),
                        "int8": str(files["int8"]), "int8_size_bytes": files["int8"].stat().st_size,
                        "build_s": round(time.time() - started, 1),
                        "dev": _peer_metrics(files["int8"], files["int8"].parent, teacher)}
    record_path.write_text(json.dumps(record, indent=2, default=str))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare-only", action="store_true", help="Build both peers and their dev accuracy only")
    parser.add_argument("--runs", type=int, default=60, help="Timed rounds at the key point b1 seq128")
    parser.add_argument("--grid-runs", type=int, default=15, help="Timed rounds at the other grid points")
    parser.add_argument("--threads", type=int, default=None, help="Threads per model (default: all cores)")
    args = parser.parse_args()
    log.setup()
    if not optimum_installed():
        sys.exit("error: both peers need optimum-onnx, which needs transformers < 4.58: run this on the legacy "
                 "stack (make setup-legacy; .venv-legacy/bin/python benchmarks/peers_sst2.py)")
    teacher_path = cache_dir() / "teachers" / "sst2"
    if not (teacher_path / "bertedge.json").exists():
        sys.exit(f"error: the SST-2 teacher is not ready ({teacher_path}/bertedge.json missing); "
                 "run benchmarks/finetune_teachers.py sst2 first")
    teacher = load_artifact(teacher_path)
    peers = prepare(teacher)
    if args.prepare_only:
        print(json.dumps(peers, indent=2, default=str))
        return

    targets = resolve_targets([teacher.path])
    targets[0].name = "teacher-torch-fp32"
    common = {"task": teacher.task, "data_artifact": teacher.path, "settings": teacher.manifest.get("settings")}
    for kind, peer in peers.items():
        targets.append(onnx_target(peer["name"], peer["int8"], stage=f"peer ({kind})",
                                   metrics={"dev": peer["dev"]}, tokenizer_dir=Path(peer["int8"]).parent, **common))
    started = time.time()
    key = run_bench(targets, BenchConfig(batch_sizes=[KEY_POINT[0]], seq_lens=[KEY_POINT[1]], warmup=10,
                                         runs=args.runs, threads=args.threads))
    grid = run_bench(targets, BenchConfig(batch_sizes=[1, 8], seq_lens=[32, 128], warmup=3, runs=args.grid_runs,
                                          threads=args.threads, real_lengths="sst2", real_samples=256))
    wall = round(time.time() - started, 1)
    p50 = {r["artifact"]: r["p50_ms"] for r in key["results"]}
    optimum_name, ort_name = peers["optimum"]["name"], peers["ort"]["name"]
    rows = [f"| {p['name']} | {p['method']} | {p['dev']['accuracy']:.4f} | {p['int8_size_bytes'] / 1e6:.2f} | "
            f"{p50[p['name']]:.2f} |" for p in peers.values()]
    summary = [
        "# The two peer paths on the SST-2 teacher (minilm-l6): optimum vs plain ONNX Runtime",
        "",
        f"Teacher dev accuracy {teacher.metrics['dev']['accuracy']:.4f}; key point batch {KEY_POINT[0]}, seq "
        f"{KEY_POINT[1]}, {args.runs} timed runs; grid b1/b8 x seq 32/128 + real SST-2 dev lengths, "
        f"{args.grid_runs} runs; every target in its own process, in alternating blocks. Timing wall time {wall} s.",
        "",
        "| peer | recipe | dev accuracy | int8 size (MB) | p50 b1 s128 (ms) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"**Change of peer:** the ONNX Runtime peer is {speedup(p50[optimum_name], p50[ort_name]):.2f}x the speed of "
        f"optimum's at b1 seq128 (above 1 = faster), so speed-ups 'vs peer' from the two stacks differ by that "
        "factor.",
        "",
        markdown_table({"machine": key["machine"], "artifacts": key["artifacts"], "method": key["method"],
                        "results": key["results"] + grid["results"]}).split("\n", 1)[1],
    ]
    write_results("peers_sst2", {"teacher": {"path": str(teacher.path), "payload_sha256":
                                             teacher.manifest.get("payload_sha256")},
                                 "peers": peers, "p50_ms_b1_s128": p50, "timing_wall_s": wall, "key": key,
                                 "grid": grid}, "\n".join(summary))
    print("\n".join(summary[:10]))


if __name__ == "__main__":
    main()
