"""How often int8 predictions depend on the rest of the batch, per task family, and what the batch-invariant
mode costs. Writes benchmarks/results/batch-invariance.{md,json}.

    python benchmarks/batch_invariance.py --teacher sst2=RUN/artifacts/teacher --teacher conll2003=DIR ...

For every teacher: export it (fp32 bundle), quantize it dynamically and statically (calibration: 256
train examples, minmax), then run the full dev set through each int8 bundle four ways, in the dev
file's (arrival) order:
  - b1:        one sequence at a time at its own length (the reference);
  - b32:       arrival-order batches of 32, each padded to its longest member;
  - b1-padded: one at a time, padded to 128 tokens (QA: to the model's max length);
  - invariant: the runtime's batch-invariant mode (`runtime.Bundle`'s default for bundles that compute
               activation scales at run time) asked for batches of 32.
Each is compared with b1: predictions that flip (label / any word's tag / answer span), the largest
output (logit) difference, and the dev metric. The dev metric of each mode is its own.
Bundles are cached under $BERTEDGE_CACHE/batch-invariance/NAME-{fp32,dynamic,static}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import ROOT, cache_dir, write_results

sys.path.insert(0, str(ROOT))

DEFAULT_TEACHERS = {"sst2": "runs/sst2/artifacts/teacher", "conll2003": "teachers/conll2003", "squad": "teachers/squad"}


def bundles(name: str, teacher: Path) -> dict:
    """fp32, dynamic and static int8 bundles of `teacher` (NAME is also the data name: static int8
    calibrates on 256 examples of its train split)."""
    from bertedge.artifacts import is_artifact, load_artifact
    from bertedge.stages.export import ExportConfig, export
    from bertedge.stages.quantize import QuantizeConfig, quantize

    root = cache_dir() / "batch-invariance"
    fp32 = root / f"{name}-fp32"
    if not is_artifact(fp32):
        export(load_artifact(teacher), ExportConfig(), fp32, overwrite=True)
    out = {"fp32": load_artifact(fp32)}
    for mode in ("dynamic", "static"):
        path = root / f"{name}-{mode}"
        if not is_artifact(path):
            quantize(out["fp32"], QuantizeConfig(mode=mode, calibration=name if mode == "static" else None),
                     path, overwrite=True)
        out[mode] = load_artifact(path)
    return out


def measure(artifact) -> dict:
    from bertedge.evaluate import load_eval_examples
    from bertedge.runtime import Bundle
    from bertedge.tasks.base import batch_dependence, outputs_in_order, run_forward

    bundle = Bundle(artifact.path)
    task, settings, labels = bundle.task, bundle.settings, bundle.labels
    examples = load_eval_examples(artifact, None, "dev")
    features = task.eval_features(examples, bundle.encoder, settings)
    per_token = task.per_token_outputs
    pad = max(128, settings.max_length) if task.name == "question-answering" else 128
    started = time.perf_counter()
    b1 = outputs_in_order(features, bundle.encoder, bundle.forward, 1, per_token)
    b1_s = time.perf_counter() - started
    started = time.perf_counter()
    b32 = outputs_in_order(features, bundle.encoder, bundle.forward, 32, per_token)
    b32_s = time.perf_counter() - started
    padded = outputs_in_order(features, bundle.encoder, bundle.forward, 1, per_token, pad_to=pad)
    started = time.perf_counter()
    invariant = run_forward(features, bundle.encoder, bundle.forward, bundle.inference_batch_size(32), per_token)
    invariant_s = time.perf_counter() - started
    row = {"bundle": str(artifact.path), "task": task.name, "batch_invariant": bundle.batch_invariant,
           "runtime_per_sequence": bundle.per_sequence,
           "runtime_scale_ops": (artifact.manifest.get("quantization") or {}).get("runtime_scale_ops"),
           "dev_examples": len(examples), "features": len(features), "pad_to": pad,
           "seconds": {"b1": round(b1_s, 2), "b32": round(b32_s, 2), "invariant_b32": round(invariant_s, 2)}}
    for key, other in (("b32", b32), ("b1_padded", padded), ("invariant_b32", invariant)):
        row[key] = batch_dependence(task, examples, features, b1, other, settings, labels)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["# int8 predictions vs batching: label flips against one-sequence-at-a-time (b1)", "",
             "Each int8 bundle runs the full dev set in the dev file's order. `b32`: arrival-order batches of 32, "
             "each padded to its longest member. `b1 padded`: one at a time, padded to `pad` tokens. `invariant`: "
             "the runtime's batch-invariant mode asked for batches of 32 (it runs a bundle with run-time activation "
             "scales one sequence at a time). Flips: predictions (label / any word's tag / answer span) that differ "
             "from b1. max diff: largest |output - b1 output| (logits). Metric: the dev metric of that mode.", "",
             "| task | int8 | batch-invariant graph | mode | flips | flip rate | max diff | metric (mode) | metric (b1) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for key, label in (("b32", "b32"), ("b1_padded", f"b1 padded to {r['pad_to']}"), ("invariant_b32", "invariant")):
            d = r[key]
            metric = d["metric"]
            extra = ""
            if r["task"] == "question-answering":
                extra = f" (EM {d['other'].get('exact_match', 0):.4f})"
            lines.append(f"| {r['name']} | {r['mode']} | {'yes' if r['batch_invariant'] else 'no'} | {label} | "
                         f"{d['flips']} / {d['n']} | {d['flip_rate'] * 100:.2f}% | {d['max_abs_diff']:.3g} | "
                         f"{metric} {d['other'].get(metric, float('nan')):.4f}{extra} | "
                         f"{d['reference'].get(metric, float('nan')):.4f} |")
    lines += ["", "Cost of the invariant mode (wall seconds for the whole dev set, same process, this machine; "
              "not a latency benchmark):", "", "| task | int8 | b1 | b32 | invariant (asked b32) |",
              "|---|---|---:|---:|---:|"]
    for r in rows:
        s = r["seconds"]
        lines.append(f"| {r['name']} | {r['mode']} | {s['b1']} | {s['b32']} | {s['invariant_b32']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", action="append", default=[], metavar="NAME=PATH",
                        help="a fine-tuned teacher per task (default: the cached sst2/conll2003/squad ones)")
    parser.add_argument("--notes", type=Path, help="Markdown appended to the results")
    args = parser.parse_args()
    teachers = dict(t.split("=", 1) for t in args.teacher) or {
        k: str(cache_dir() / v) for k, v in DEFAULT_TEACHERS.items()}
    rows = []
    for name, teacher in teachers.items():
        built = bundles(name, Path(teacher).expanduser())
        for mode in ("dynamic", "static"):
            print(f"{name} {mode}: measuring", file=sys.stderr)
            rows.append({"name": name, "mode": mode, "teacher": teacher, **measure(built[mode])})
    text = markdown(rows)
    if args.notes:
        text += "\n" + args.notes.read_text(encoding="utf-8")
    write_results("batch-invariance", {"rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
