"""Distil the fine-tuned minilm-l6 teacher into 3- and 2-layer students; compare with no-KD.

For one task (SST-2 by default) this runs, with the exact `bertedge distill` commands
recorded in the results:

1. a 3-layer student (teacher layers spread evenly, DistilBERT-style) trained with KD;
2. the same 3-layer student trained without KD (``--alpha 1``: same init, data and
   schedule, hard labels only) — the baseline that isolates what the soft targets add;
3. a 2-layer student trained with KD.

Every student records the teacher's dev metric on the same dev examples, so the deltas
compare like with like. The teacher comes from benchmarks/finetune_teachers.py
($BERTEDGE_CACHE/teachers/NAME). Usage:

    python benchmarks/distill_sst2.py                                  # full SST-2 (~15+ min per student on 2 cores)
    python benchmarks/distill_sst2.py --max-train-samples 8000 --epochs 1   # a labelled subset run
    python benchmarks/distill_sst2.py --task conll2003                 # or squad, mrpc, rte
    python benchmarks/distill_sst2.py --teacher RUN/artifacts/teacher --kd-student RUN/artifacts/student
        # reuse a recipe run's KD student: the other students take its schedule (epochs, lr, max
        # length, eval steps, temperature, alpha), so all three are trained alike
    python benchmarks/distill_sst2.py ... --continue-epochs 2 --continue-lr 5e-5
        # then train the first KD and no-KD students N more epochs each (`distill --student PREV`,
        # same loss as before, a fresh warmup/decay at the given lr): a longer schedule for both
    python benchmarks/distill_sst2.py ... --variant 'hidden-MSE=--hidden-weight 1'
        # one more KD student of the first size, alike but for these flags (intermediate-layer
        # transfer here); --continue-variant NAME continues it too. Every such student is in the table.
        # A variant's flag replaces the common one of the same name ('seed43=--seed 43').
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import cache_dir, write_results

# Per task: the dev metric the acceptance compares, and flags the teacher was trained with
# that the student should share (the rest is inherited from the teacher's manifest).
TASKS = {
    "sst2": {"metric": "accuracy", "flags": []},
    "mrpc": {"metric": "f1_positive", "flags": ["--metric", "f1_positive", "--batch-size", "16"]},
    "rte": {"metric": "accuracy", "flags": ["--batch-size", "16"]},
    "conll2003": {"metric": "f1", "flags": []},
    "squad": {"metric": "f1", "flags": ["--batch-size", "16"]},
}
TOLERANCE_POINTS = 1.5  # acceptance: the 3-layer KD student within 1.5 points of the teacher


def students(layers_kd: list[int], no_kd_layers: int) -> list[dict]:
    runs = [{"name": f"{n}-layer KD", "layers": n, "flags": ["--layers", str(n)]} for n in layers_kd]
    runs.insert(1, {"name": f"{no_kd_layers}-layer no KD", "layers": no_kd_layers,
                    "flags": ["--layers", str(no_kd_layers), "--alpha", "1"]})
    return runs


def variant(spec: str, layers: int) -> dict:
    """--variant NAME=FLAGS: a KD student of `layers` layers with extra distill flags."""
    name, sep, flags = spec.partition("=")
    if not sep or not name.strip() or not flags.strip():
        sys.exit(f"error: --variant {spec!r}: expected NAME=FLAGS, e.g. 'hidden-MSE=--hidden-weight 1'")
    extra = shlex.split(flags)
    clash = sorted({"--layers", "--layer-map", "--student", "--student-config", "--alpha"} & set(extra))
    if clash:
        sys.exit(f"error: --variant {spec!r}: {', '.join(clash)} would change the student or its loss weights; "
                 "a variant only adds flags to the KD student")
    return {"name": f"{layers}-layer KD {name.strip()}", "variant": name.strip(), "layers": layers,
            "flags": ["--layers", str(layers), *extra], "extra": extra}


def _without(flags: list[str], *names: str) -> list[str]:
    """`flags` less each named option and its value."""
    out, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag in names:
            skip = True
        else:
            out.append(flag)
    return out


def reuse_kd_student(args, teacher: Path, layers: int) -> dict:
    """Check that --kd-student is a KD student of this teacher as the script would train it; return its schedule."""
    m = json.loads((args.kd_student / "bertedge.json").read_text())
    c = m.get("config") or {}
    t = json.loads((teacher / "bertedge.json").read_text())
    problems = []
    if m.get("stage") != "distill":
        problems.append(f"stage is {m.get('stage')!r}, not 'distill'")
    if m.get("teacher", {}).get("sha256") != t.get("payload_sha256"):
        problems.append("its teacher is not --teacher (payload hashes differ)")
    if c.get("layers") != layers or c.get("layer_map") or c.get("student_config") or c.get("student"):
        problems.append(f"it is not a {layers}-layer student copied from teacher layers")
    if c.get("alpha") != args.alpha:
        problems.append(f"its alpha is {c.get('alpha')}, not --alpha {args.alpha:g}")
    if (c.get("data") or {}).get("max_train_samples") != args.max_train_samples:
        problems.append("it was trained on another train subset")
    if c.get("hidden_weight") or c.get("attention_weight") or c.get("unlabeled"):
        problems.append("it used intermediate-layer losses or unlabeled text")
    if problems:
        sys.exit(f"error: --kd-student {args.kd_student}: " + "; ".join(problems))
    train = c["train"]
    flags = ["--epochs", f"{train['epochs']:g}", "--lr", f"{train['lr']:g}", "--temperature", f"{c['temperature']:g}",
             "--max-length", str(c["max_length"]), "--batch-size", str(train["batch_size"]),
             "--seed", str(train["seed"])]
    if train.get("eval_steps"):
        flags += ["--eval-steps", str(train["eval_steps"])]
    return {"flags": flags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2", choices=sorted(TASKS))
    parser.add_argument("--teacher", type=Path, help="teacher artifact (default: $BERTEDGE_CACHE/teachers/TASK)")
    parser.add_argument("--max-train-samples", type=int, help="train on a seeded subset (the result is labelled a subset run)")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on a seeded dev subset")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="CE weight of the KD students")
    parser.add_argument("--students", default="3,2",
                        help="student layer counts trained with KD; the first is also trained without KD")
    parser.add_argument("--force", action="store_true", help="retrain students that already exist")
    parser.add_argument("--kd-student", type=Path,
                        help="an existing KD student of --teacher with the first --students layer count (e.g. a "
                             "recipe run's); it is used as is and its schedule is given to the other students")
    parser.add_argument("--extra", default="", help="extra distill flags for every student")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="another KD student of the first size, trained alike but for these extra distill "
                             "flags, e.g. 'hidden-MSE=--hidden-weight 1' (repeatable)")
    parser.add_argument("--continue-epochs", type=float,
                        help="then continue the first KD and no-KD students this many epochs (same loss each)")
    parser.add_argument("--continue-variant", action="append", default=[], metavar="NAME",
                        help="with --continue-epochs, continue the --variant of this NAME too (repeatable)")
    parser.add_argument("--continue-lr", type=float, default=5e-5, help="peak lr of the continuation")
    parser.add_argument("--notes", type=Path, help="a Markdown file appended as is (reading of the numbers)")
    args = parser.parse_args()

    teacher = args.teacher or cache_dir() / "teachers" / args.task
    if not (teacher / "bertedge.json").exists():
        sys.exit(f"error: no teacher at {teacher}: run benchmarks/finetune_teachers.py {args.task} first")
    spec = TASKS[args.task]
    sizes = [int(n) for n in args.students.split(",")]
    reused = reuse_kd_student(args, teacher, sizes[0]) if args.kd_student else None
    subset = args.max_train_samples is not None
    tag = f"{args.task}-subset{args.max_train_samples}" if subset else args.task
    work = cache_dir() / "distill-bench" / tag
    schedule = ["--epochs", f"{args.epochs:g}", "--lr", f"{args.lr:g}", "--temperature", f"{args.temperature:g}"]
    # the reused student's schedule goes last, so it wins over the task's defaults
    common = [*([] if reused else schedule), *spec["flags"], *shlex.split(args.extra), *(reused or {}).get("flags", [])]
    if subset:
        common += ["--max-train-samples", str(args.max_train_samples)]
    if args.max_eval_samples:
        common += ["--max-eval-samples", str(args.max_eval_samples)]

    runs = students(sizes, sizes[0])
    variants = [variant(spec_, sizes[0]) for spec_ in args.variant]
    runs += variants
    names = {v["variant"]: v for v in variants}
    unknown = sorted(set(args.continue_variant) - set(names))
    if unknown:
        sys.exit(f"error: --continue-variant {', '.join(unknown)}: no such --variant (have: {', '.join(names) or 'none'})")
    if args.continue_epochs:
        # the first KD student and its no-KD twin (and the variants asked for), trained on from where they ended
        for first in [*runs[:2], *(names[n] for n in args.continue_variant)]:
            runs.append({**first, "name": f"{first['name']} +{args.continue_epochs:g} epochs", "from": first["name"]})
    done: dict[str, dict] = {}  # row of each student by name: a continuation starts from its parent's artifact
    rows = []
    for index, run in enumerate(runs):
        out = work / run["name"].replace(" +", " plus").replace(" ", "-").lower()
        flags = list(run["flags"])
        if "--alpha" not in flags:
            flags += ["--alpha", f"{args.alpha:g}"]
        parent = done[run["from"]] if run.get("from") else None
        if parent:  # the student comes from the parent: no --layers; the continuation's own epochs and lr
            flags = ["--student", parent["artifact"], *_without(flags, "--layers")]
            run_flags = [*_without(common, "--epochs", "--lr"), "--epochs", f"{args.continue_epochs:g}",
                         "--lr", f"{args.continue_lr:g}"]
        else:
            run_flags = common
        # a variant's own flags (say --seed 43) win over the common ones: drop those from the common part
        run_flags = _without(run_flags, *(f for f in run.get("extra", []) if f.startswith("--")))
        command = ["bertedge", "distill", "--teacher", str(teacher), "--out", str(out), *flags, *run_flags, "--overwrite"]
        if index == 0 and reused:
            out = args.kd_student
            command = [*command[:4], "--out", str(out), *command[6:-1]]
        elif args.force or not (out / "bertedge.json").exists():
            print("$", " ".join(shlex.quote(c) for c in command), flush=True)
            start = time.time()
            subprocess.run([str(Path(sys.executable).parent / "bertedge"), *command[1:]], check=True)
            print(f"{run['name']}: {time.time() - start:.0f} s", flush=True)
        m = json.loads((out / "bertedge.json").read_text())
        metric = spec["metric"]
        value, teacher_value = m["metrics"]["dev"][metric], m["teacher"]["metrics"]["dev"][metric]
        rows.append({
            "student": run["name"], "layers": run["layers"], "kd": "--alpha" not in run["flags"],
            "command": ("(reused from the recipe run, trained as) " if index == 0 and reused else "")
            + " ".join(shlex.quote(c) for c in command), "artifact": str(out),
            "metric": metric, "dev": value, "teacher_dev": teacher_value,
            "delta_points": round(100 * (value - teacher_value), 2),
            "parameters": m["parameters"], "teacher_parameters": m["teacher"]["parameters"],
            "layer_map": m["layer_map"] or parent["layer_map"],  # a --student manifest records no map of its own
            "continued_from": parent["artifact"] if parent else None, "loss": m["loss"],
            "extra": run.get("extra", []),
            "train_examples": m["data"]["train_examples"],
            "dev_examples": m["data"]["dev_examples"], "train_runtime_s": m["training"]["train_runtime_s"],
            "wall_time_s": m["wall_time_s"], "best_step": m["training"]["best_step"],
            "dev_curve": [[e["step"], e[f"eval_{metric}"]] for e in m["history"] if f"eval_{metric}" in e],
        })
        done[run["name"]] = rows[-1]

    kd3 = rows[0]
    # every KD student of the first size is judged; with more than one, all are shown and counted
    judged = [r for r in rows if r["kd"] and r["layers"] == kd3["layers"]]
    for r in judged:
        r["within_tolerance"] = r["delta_points"] >= -TOLERANCE_POINTS
    passing = [r for r in judged if r["within_tolerance"]]
    verdict = bool(passing)
    title = (f"# Distillation on {args.task}: SUBSET RUN ({args.max_train_samples} train examples, "
             f"{args.epochs:g} epoch(s)) — not the acceptance run" if subset
             else f"# Distillation on {args.task}: fine-tuned teacher -> {args.students}-layer students")
    md = [title, "",
          (f"Teacher: `{teacher}` — dev {kd3['metric']} {kd3['teacher_dev']:.4f} on the same "
           f"{kd3['dev_examples']} dev examples, {kd3['teacher_parameters'] / 1e6:.1f}M parameters."), "",
          "| student | KD | layers (teacher layers copied) | params | dev " + kd3["metric"] + " | vs teacher (pt) | train time |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        kd = ("yes" + (f" + `{' '.join(r['extra'])}`" if r["extra"] else "")) if r["kd"] else "no (alpha=1)"
        md.append(f"| {r['student']} | {kd} | {r['layers']} {r['layer_map']} | "
                  f"{r['parameters'] / 1e6:.1f}M | {r['dev']:.4f} | {r['delta_points']:+.2f} | "
                  f"{r['train_runtime_s'] / 60:.1f} min |")
    lines = [f"- {r['student']}: **{'yes' if r['within_tolerance'] else 'no'}** ({r['delta_points']:+.2f} pt)"
             for r in judged]
    md += ["", f"{kd3['layers']}-layer KD students within {TOLERANCE_POINTS} pt of the teacher"
           + (" (subset run: indicative only)" if subset else "") + ":", "", *lines, ""]
    if len(judged) > 1:
        md += [(f"Every {kd3['layers']}-layer KD student trained for this file ({len(judged)}) is in the table, "
                "none left out; each kept its best checkpoint on the same dev set it is scored on (as `finetune` does), "
                "so the best of several is a slightly optimistic estimate."), ""]
    md += [
           ("Same init (teacher layers), data, schedule and seed for all students; the no-KD student "
            "differs only in its loss (hard labels, alpha=1)"
            + ("; a variant row differs from the KD student only by the flags in its KD column." if variants
               else "."))
           + (f" The '+{args.continue_epochs:g} epochs' rows start from the student of the same name (`--student`, its "
              f"weights and head) and train on with the same loss, lr {args.continue_lr:g} with a fresh warmup and "
              "decay; their train time is the continuation's alone." if args.continue_epochs else ""),
           "", "Commands:", ""]
    md += [f"- `{r['command']}`" for r in rows]
    md += ["", f"Dev {kd3['metric']} at each evaluation during training (step: value; the best is the row's):", ""]
    md += [f"- {r['student']}: " + ", ".join(f"{step}: {value:.4f}" for step, value in r["dev_curve"]) for r in rows]
    if args.notes:
        md += ["", args.notes.read_text().strip()]
    write_results(f"distill-{tag}", {"task": args.task, "subset": subset, "teacher": str(teacher),
                                     "tolerance_points": TOLERANCE_POINTS, "within_tolerance": verdict,
                                     "students_within_tolerance": [r["student"] for r in passing],
                                     "runs": rows}, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
