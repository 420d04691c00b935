"""Early exit on a fine-tuned teacher (and optionally a student): train the exits, export, int8, time per process.

Three phases (screen is optional):

  python benchmarks/early_exit.py screen --source ARTIFACT --suffix mrpc
      Frozen-mode head configs (SCREEN_GRID) from one teacher pass, each calibrated on dev in fp32: the mean exit
      layer per config -> benchmarks/results/early-exit-screen[-SUFFIX].json/.md. Minutes, not hours.

  nice -n 10 python benchmarks/early_exit.py build --source ARTIFACT --name sst2-teacher [--pairs]
      ARTIFACT is a fine-tuned text-classification PyTorch artifact (e.g. $BERTEDGE_CACHE/teachers/sst2).
      Writes into $BERTEDGE_CACHE/early-exit/NAME/: ee (exit heads, calibrated on dev within
      --max-accuracy-drop of full depth), bundle (segment graphs, validated against PyTorch), int8 (dynamic int8
      of every segment, recalibrated on the int8 graphs). Skips what exists.

  bash benchmarks/quiet_cpu.sh .venv/bin/python benchmarks/early_exit.py time --name sst2-teacher [--name ...]
      For each NAME's fp32 and int8 bundles: batch-1 latency of every dev input through bertedge.runtime.Bundle,
      early exit vs full depth, each (bundle, mode) in its own process, alternating blocks
      (bertedge.bench.early_exit). -> benchmarks/results/early-exit[-SUFFIX].json/.md with the exit histograms,
      dev accuracy at full depth and with exits, and the latency ratio (acceptance: <= 0.6x at <= 0.5 pt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import cache_dir, write_results


def root(name: str) -> Path:
    return cache_dir() / "early-exit" / name


def build(args) -> None:
    from bertedge import log
    from bertedge.artifacts import is_artifact, load_artifact
    from bertedge.stages.early_exit import EarlyExitConfig, early_exit
    from bertedge.stages.export import ExportConfig, export
    from bertedge.stages.quantize import QuantizeConfig, quantize

    log.setup()
    base = root(args.name)
    base.mkdir(parents=True, exist_ok=True)
    config = EarlyExitConfig(mode=args.mode, joint_epochs=args.joint_epochs, encoder_lr=args.encoder_lr,
                             rule=args.rule, max_accuracy_drop=args.max_accuracy_drop, epochs=args.epochs,
                             ce_weight=args.ce_weight, pooling=args.pooling, lr=args.lr,
                             data={"max_train_samples": args.max_train_samples})
    ee = load_artifact(base / "ee") if is_artifact(base / "ee") else early_exit(args.source, config, base / "ee")
    bundle = load_artifact(base / "bundle") if is_artifact(base / "bundle") else \
        export(ee, ExportConfig(metric_samples=None), base / "bundle")
    if not is_artifact(base / "int8"):
        quantize(bundle, QuantizeConfig(mode=args.int8_mode), base / "int8")
    for part in ("ee", "bundle", "int8"):
        manifest = load_artifact(base / part).manifest
        cal = manifest["early_exit"].get("dev") or manifest["early_exit"]["calibration"]
        per_layer = manifest["early_exit"].get("dev_accuracy_per_layer")
        if per_layer:
            print(f"{args.name}/{part}: dev accuracy per layer " + " ".join(f"{a:.4f}" for a in per_layer))
        print(f"{args.name}/{part}: {cal['rule']} {cal['threshold']:g}: accuracy {cal['accuracy']:.4f} vs full depth "
              f"{cal['accuracy_full_depth']:.4f}, mean exit layer {cal['mean_exit_layer']:.2f}, "
              f"exits {cal['exit_histogram']}")


def time_bundles(args) -> None:
    from bertedge.artifacts import load_artifact
    from bertedge.bench.early_exit import bench_early_exit, markdown

    bundles = [root(n) / part for n in args.name for part in ("bundle", "int8") if (root(n) / part).is_dir()]
    if not bundles:
        sys.exit("no bundles: run the build phase first")
    report = bench_early_exit(bundles, rounds=args.rounds, threads=args.threads, max_samples=args.max_samples)
    rows = []
    for path in bundles:
        manifest = load_artifact(path).manifest
        ratio = report["speedups"][str(path)]
        ee = next(t for t in report["targets"] if t["bundle"] == str(path) and t["mode"] == "early-exit")
        full = next(t for t in report["targets"] if t["bundle"] == str(path) and t["mode"] == "full-depth")
        drop = (full["accuracy"] - ee["accuracy"]) * 100
        rows.append({"bundle": str(path), "precision": "int8" if manifest.get("quantization") else "fp32",
                     "threshold": manifest["early_exit"]["threshold"], "rule": manifest["early_exit"]["rule"],
                     "accuracy_full_depth": full["accuracy"], "accuracy_early_exit": ee["accuracy"],
                     "drop_pts": round(drop, 4), "latency_ratio": ratio["latency_ratio"],
                     "meets_0.5pt_and_0.6x": drop <= 0.5 + 1e-9 and ratio["latency_ratio"] <= 0.6,
                     "exit_histogram": ee["exit_histogram"], "mean_exit_layer": ee["mean_exit_layer"],
                     "calibration": {k: v for k, v in manifest["early_exit"]["calibration"].items() if k != "curve"}})
    lines = ["# Early exit: batch-1 latency over the dev inputs, early exit vs full depth", "",
             f"Method: {report['method']}; {report['rounds']} rounds.", "",
             "| bundle | precision | rule | threshold | acc full | acc exit | drop pts | mean exit layer | "
             "latency ratio | meets 0.5 pt & 0.6x |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {Path(r['bundle']).parent.name}/{Path(r['bundle']).name} | {r['precision']} | {r['rule']} | "
                     f"{r['threshold']:g} | {r['accuracy_full_depth']:.4f} | {r['accuracy_early_exit']:.4f} | "
                     f"{r['drop_pts']:.2f} | {r['mean_exit_layer']:.2f} | {r['latency_ratio']:.3f} | "
                     f"{'yes' if r['meets_0.5pt_and_0.6x'] else 'no'} |")
    lines += ["", "## Every target", "", markdown(report)]
    name = "early-exit" + (f"-{args.suffix}" if args.suffix else "")
    json_path, md_path = write_results(name, {"rows": rows, "bench": report}, "\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")


SCREEN_GRID = [  # (pooling, ce_weight, kd_weight, epochs, lr, temperature); the first row is the stage's defaults
    ("mean", 0.0, 1.0, 5, 1e-4, 2.0), ("mean", 0.0, 1.0, 3, 1e-4, 2.0), ("mean", 1.0, 1.0, 3, 1e-4, 2.0),
    ("mean", 1.0, 0.0, 3, 1e-4, 2.0), ("mean", 0.0, 1.0, 10, 1e-4, 2.0), ("mean", 1.0, 1.0, 10, 1e-4, 2.0),
    ("mean", 0.0, 1.0, 5, 3e-4, 2.0), ("mean", 1.0, 1.0, 5, 3e-4, 2.0), ("mean", 0.0, 1.0, 3, 1e-4, 1.0),
    ("mean", 0.0, 1.0, 3, 1e-4, 4.0), ("cls", 0.0, 1.0, 3, 1e-4, 2.0), ("cls", 1.0, 1.0, 10, 1e-4, 2.0),
]


def screen(args) -> None:
    """Frozen-mode head configs from one teacher pass: every layer's pooled states are computed once per pooling,
    then each config's heads train on them (seconds) and are calibrated on dev (fp32, PyTorch). The mean exit
    layer is what the latency follows (about mean / layers of full depth at batch 1)."""
    import time

    import numpy as np
    import torch

    from bertedge import log
    from bertedge.artifacts import load_artifact
    from bertedge.config import DataConfig
    from bertedge.early_exit import calibrate
    from bertedge.evaluate import artifact_view, load_task_data, task_settings
    from bertedge.modeling import encoder_from_hf, load_torch_artifact
    from bertedge.stages import early_exit as ee
    from bertedge.tasks import get_task

    log.setup()
    parent = load_artifact(args.source)
    model, tokenizer = load_torch_artifact(parent)
    for p in model.parameters():
        p.requires_grad_(False)
    view = artifact_view(parent, DataConfig())
    data = load_task_data(view, need=("train", "dev"), labels=parent.labels or None)
    settings, task, encoder = task_settings(view), get_task(parent.task), encoder_from_hf(tokenizer)
    train, dev = data.split("train"), data.split("dev")
    gold = torch.tensor([ex["label"] for ex in train], dtype=torch.long)
    dev_gold = np.array([ex["label"] for ex in dev], dtype=np.int64)
    states, rows = {}, []
    for pooling in sorted({g[0] for g in SCREEN_GRID}):
        started = time.perf_counter()
        states[pooling] = (ee._layer_states(model, task.train_features(train, encoder, settings), encoder, 64, pooling),
                           ee._layer_states(model, task.eval_features(dev, encoder, settings), encoder, 64, pooling))
        print(f"{pooling}: teacher pass {time.perf_counter() - started:.0f} s", flush=True)
    for pooling, ce, kd, epochs, lr, temperature in SCREEN_GRID:
        (train_cls, train_logits), (dev_cls, dev_logits) = states[pooling]
        config = ee.EarlyExitConfig(pooling=pooling, ce_weight=ce, kd_weight=kd, epochs=epochs, lr=lr,
                                    temperature=temperature, seed=42)
        heads = ee.make_heads(model, pooling=pooling)
        started = time.perf_counter()
        ee._train_heads(heads, train_cls, train_logits, gold, config)
        train_s = time.perf_counter() - started
        logits = ee._layer_logits(heads, dev_cls, dev_logits)
        row = {"pooling": pooling, "ce_weight": ce, "kd_weight": kd, "epochs": epochs, "lr": lr,
               "temperature": temperature, "train_s": round(train_s, 2),
               "dev_accuracy_per_layer": [float((logits[:, k].argmax(-1) == dev_gold).mean())
                                          for k in range(logits.shape[1])]}
        for rule in ("max-prob", "entropy"):
            row[rule] = {k: v for k, v in calibrate(rule, logits, dev_gold, args.max_accuracy_drop).items()
                         if k != "curve"}
        rows.append(row)
        print(f"{pooling} ce {ce:g} kd {kd:g} epochs {epochs} lr {lr:g} T {temperature:g}: mean exit layer "
              f"{row['max-prob']['mean_exit_layer']:.2f} (max-prob), {row['entropy']['mean_exit_layer']:.2f} "
              f"(entropy)", flush=True)
    lines = [f"# Early exit: frozen exit-head configs screened on {Path(args.source).name} (fp32, calibrated on dev)",
             "", f"Source: `{args.source}` ({parent.task}, {len(train)} train, {len(dev)} dev). Budget: "
             f"{args.max_accuracy_drop} pts below full depth. One teacher pass per pooling; each config's heads "
             "train on the stored states with seed 42 and are calibrated on dev. Batch-1 latency follows the mean "
             "exit layer (about mean / layers of full depth); the chosen config is then built and timed through "
             "the bundle runtime (`build` and `time`). The first row is the stage's defaults.", "",
             "| pooling | ce_weight | kd_weight | epochs | lr | T | dev acc per layer | max-prob: threshold, acc, "
             "mean exit | entropy: threshold, acc, mean exit |", "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        cells = [f"{r[rule]['threshold']:.3f}, {r[rule]['accuracy']:.4f} "
                 f"(full {r[rule]['accuracy_full_depth']:.4f}), **{r[rule]['mean_exit_layer']:.2f}**"
                 for rule in ("max-prob", "entropy")]
        lines.append(f"| {r['pooling']} | {r['ce_weight']:g} | {r['kd_weight']:g} | {r['epochs']} | {r['lr']:g} | "
                     f"{r['temperature']:g} | {' '.join(f'{a:.3f}' for a in r['dev_accuracy_per_layer'])} | "
                     f"{cells[0]} | {cells[1]} |")
    name = "early-exit-screen" + (f"-{args.suffix}" if args.suffix else "")
    json_path, md_path = write_results(name, {"source": args.source, "rows": rows}, "\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="phase", required=True)
    b = sub.add_parser("build")
    b.add_argument("--source", required=True, help="fine-tuned text-classification artifact")
    b.add_argument("--name", required=True)
    b.add_argument("--rule", default="entropy", choices=["entropy", "max-prob", "patience"])
    b.add_argument("--max-accuracy-drop", type=float, default=0.5)
    b.add_argument("--epochs", type=float, default=5.0)
    b.add_argument("--ce-weight", type=float, default=0.0)
    b.add_argument("--pooling", default="cls", choices=["cls", "mean"])
    b.add_argument("--lr", type=float, default=1e-4)
    b.add_argument("--max-train-samples", type=int, default=None)
    b.add_argument("--mode", default="frozen", choices=["frozen", "joint"])
    b.add_argument("--joint-epochs", type=float, default=3.0)
    b.add_argument("--encoder-lr", type=float, default=2e-5)
    b.add_argument("--int8-mode", default="dynamic", choices=["dynamic", "auto"])
    t = sub.add_parser("time")
    t.add_argument("--name", action="append", required=True)
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--max-samples", type=int, default=None)
    t.add_argument("--suffix", default="", help="results file suffix (e.g. sst2, rte)")
    c = sub.add_parser("screen")
    c.add_argument("--source", required=True, help="fine-tuned text-classification artifact")
    c.add_argument("--max-accuracy-drop", type=float, default=0.5)
    c.add_argument("--suffix", default="", help="results file suffix (e.g. mrpc)")
    args = parser.parse_args()
    {"build": build, "time": time_bundles, "screen": screen}[args.phase](args)


if __name__ == "__main__":
    main()
