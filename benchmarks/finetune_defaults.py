"""The finetune defaults, old against new, on datasets of different shapes. Writes
benchmarks/results/finetune-defaults.{md,json}.

    python benchmarks/finetune_defaults.py [--datasets banking77,ncbi_disease,mrpc,rte] [--resume]

For every dataset, two `bertedge finetune` runs of the embedded MiniLM-L6 (22.7M parameters), each its own
process with the same seed:
  - old: the fixed defaults before issue #27, `--epochs 3 --lr 5e-5`, no early stopping;
  - new: no schedule flags, so the auto schedule applies (bertedge/stages/finetune.py `resolve_schedule`:
         lr from the model's size, epochs from the train set's size, early stopping on dev).
Every other option is the same (batch 32, max length 128, seed 42). The checkpoint kept is the best on dev
in both; the table reports dev, and test where the data has a labelled test split (that number is not used
to pick anything). BANKING77 has no dev split: both runs carve the same seeded, stratified 10% out of train
(`--dev-split 0.1`). Artifacts go to $BERTEDGE_CACHE/finetune-defaults/NAME-{old,new}; `--resume` keeps
finished ones.

`--reuse NAME[:SCHEDULE]` takes that row from the committed results file instead of training it again, for a
rule change that leaves it alone: a reused *new* row must be what the current rule would still choose (same LR
and epoch cap for its recorded size), or the script refuses. The results file lists every reused row with the
date, CPU and versions it was measured with.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, cache_dir, write_results

DATASETS = {
    # name: (task, extra finetune flags, primary metric, what the dataset is)
    "banking77": ("text-classification", ["--dev-split", "0.1"], "accuracy",
                  "77 intents, 9k train after the 10% dev split, test 3,080"),
    "ncbi_disease": ("token-classification", [], "f1", "biomedical NER, 5.4k sentences, 1 entity type"),
    "mrpc": ("text-classification", [], "f1_positive", "sentence pairs, 3.7k train, test 1,725"),
    "rte": ("text-classification", [], "accuracy", "sentence pairs, 2.5k train, dev 277 (no labelled test)"),
    "conll2003": ("token-classification", [], "f1", "news NER, 14k sentences, 4 entity types"),
    "sst2": ("text-classification", ["--max-length", "64"], "accuracy", "single sentences, 67k train"),
}
SCHEDULES = {"old": ["--epochs", "3", "--lr", "5e-5"], "new": []}


def run_one(name: str, schedule: str, out: Path, resume: bool, seed: int = 42) -> dict:
    task, extra, _, _ = DATASETS[name]
    manifest = out / "bertedge.json"
    command = [sys.executable, "-m", "bertedge", "finetune", "--model", "minilm-l6", "--task", task, "--data", name,
               "--out", str(out), "--overwrite", *extra, *SCHEDULES[schedule],
               *(["--seed", str(seed)] if seed != 42 else [])]
    if not (resume and manifest.is_file()):
        log = out.with_suffix(".log")
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            code = subprocess.call(command, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if code != 0:
            raise SystemExit(f"{name} {schedule}: finetune failed (exit {code}); see {log}")
        wall = time.perf_counter() - start
    else:
        wall = None
    data = json.loads(manifest.read_text(encoding="utf-8"))
    training = data.get("training") or {}
    return {"command": " ".join(command[1:]), "seed": seed, "metrics": data["metrics"], "schedule": data.get("schedule"),
            "global_step": training.get("global_step"), "best_step": training.get("best_step"),
            "stopped_early": training.get("stopped_early"),
            "train_runtime_s": training.get("train_runtime_s"), "wall_s": wall}


def scalar(metrics: dict | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def classes_never_predicted(metrics: dict | None) -> int | None:
    confusion = (metrics or {}).get("confusion_matrix")
    if not confusion:
        return None
    return sum(1 for c in range(len(confusion))
               if sum(row[c] for row in confusion) == 0 and sum(confusion[c]) > 0)


def mean_over_seeds(runs: dict, metric: str, schedules: list[str]) -> dict:
    """Fold extra-seed runs into the old/new rows: the row's dev/test metrics become the mean over every seed,
    and each seed's own value is kept under per_seed."""
    out = {}
    for schedule in schedules:
        all_runs = [runs[schedule], *runs["seeds"][schedule]]
        merged = dict(runs[schedule])
        merged["metrics"] = {}
        merged["per_seed"] = [{"seed": r["seed"], **{split: scalar(r["metrics"].get(split), metric)
                                                     for split in ("dev", "test")}} for r in all_runs]
        for split in ("dev", "test"):
            per = [r["metrics"].get(split) for r in all_runs]
            if all(per):
                merged["metrics"][split] = {key: sum(float(p[key]) for p in per) / len(per) for key in per[0]
                                            if all(isinstance(p.get(key), (int, float)) for p in per)}
        merged["global_step"] = sum((r["global_step"] or 0) for r in all_runs) / len(all_runs)
        merged["train_runtime_s"] = sum((r["train_runtime_s"] or 0) for r in all_runs) / len(all_runs)
        out[schedule] = merged
    return out


def parse_reuse(items: list[str], names: list[str]) -> set[tuple[str, str]]:
    reuse = set()
    for item in (i.strip() for chunk in items for i in chunk.split(",")):
        if not item:
            continue
        name, _, schedule = item.partition(":")
        if name not in names or (schedule and schedule not in SCHEDULES):
            raise SystemExit(f"--reuse {item!r}: expected NAME[:SCHEDULE] with NAME one of {', '.join(names)} and "
                             f"SCHEDULE one of {', '.join(SCHEDULES)}")
        reuse |= {(name, s) for s in ([schedule] if schedule else SCHEDULES)}
    return reuse


def reused_row(previous: dict, name: str, schedule: str) -> dict:
    """One row of the committed results, checked against the current rule when it is the new schedule's."""
    from bertedge.stages.finetune import auto_epochs, auto_lr

    try:
        row = dict(previous["runs"][name][schedule])
    except KeyError:
        raise SystemExit(f"--reuse {name}:{schedule}: the committed results file has no such row; train it") from None
    sched = row.get("schedule") or {}
    if schedule == "new":
        steps, params = sched.get("steps_per_epoch"), sched.get("parameters")
        batch = 32  # every run here uses the default batch
        features = sched.get("train_features")
        bounds = [features] if features else [(steps - 1) * batch + 1, steps * batch]
        lrs = {auto_lr(params, f) for f in bounds}
        if lrs != {sched.get("lr")} or float(auto_epochs(steps)) != sched.get("epochs"):
            raise SystemExit(f"--reuse {name}:new: the rule now picks lr {', '.join(f'{x:g}' for x in sorted(lrs))} "
                             f"and {auto_epochs(steps)} epochs (the committed run had lr {sched.get('lr'):g}, "
                             f"{sched.get('epochs'):g} epochs); train it again")
    machine = previous.get("machine") or {}
    row["reused"] = {"date": previous.get("date"), "cpu": (machine.get("cpu") or {}).get("model"),
                     "isa": (machine.get("cpu") or {}).get("isa"),
                     "transformers": (machine.get("versions") or {}).get("transformers")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="banking77,ncbi_disease,mrpc,rte")
    parser.add_argument("--resume", action="store_true", help="Keep finished runs.")
    parser.add_argument("--seeds", action="append", default=[], metavar="NAME=S1,S2,...",
                        help="Extra seeds for one dataset (its row becomes the mean over seed 42 and these), "
                             "e.g. rte=43,44 for a dev split too small for one seed to tell.")
    parser.add_argument("--reuse", action="append", default=[], metavar="NAME[:SCHEDULE]",
                        help="Take this row from the committed results file instead of training it (comma list; "
                             "a NAME alone means both schedules).")
    parser.add_argument("--note", default="", help="A line for the results file (e.g. how the runs were made).")
    args = parser.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    extra_seeds: dict[str, list[int]] = {}
    for item in args.seeds:
        key, _, values = item.partition("=")
        if key not in names or not values:
            raise SystemExit(f"--seeds {item!r}: expected NAME=S1,S2 with NAME one of {', '.join(names)}")
        extra_seeds[key] = [int(v) for v in values.split(",")]
    reuse = parse_reuse(args.reuse, names)
    previous = {}
    if reuse:
        committed = ROOT / "benchmarks" / "results" / "finetune-defaults.json"
        previous = json.loads(committed.read_text(encoding="utf-8"))
    root = cache_dir() / "finetune-defaults"
    root.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in names:
        kept = {s: reused_row(previous, name, s) for s in SCHEDULES if (name, s) in reuse}
        trained = [s for s in SCHEDULES if s not in kept]
        rows[name] = {s: run_one(name, s, root / f"{name}-{s}", args.resume) for s in trained}
        for seed in extra_seeds.get(name, []):
            for s in trained:
                rows[name].setdefault("seeds", {}).setdefault(s, []).append(
                    run_one(name, s, root / f"{name}-{s}-seed{seed}", args.resume, seed))
        if name in extra_seeds:
            rows[name] = mean_over_seeds(rows[name], DATASETS[name][2], trained)
        rows[name].update(kept)
        rows[name].pop("seeds", None)
        print(f"{name}: done", flush=True)

    from bertedge.stages.finetune import AUTO_EPOCHS, AUTO_LR, AUTO_PATIENCE, AUTO_SMALL_TRAIN, AUTO_TARGET_STEPS

    lines = ["# Finetune defaults: the old fixed schedule against the auto schedule",
             "",
             "The embedded MiniLM-L6 (22.7M parameters) fine-tuned with the old defaults (`--epochs 3 --lr 5e-5`, no "
             "early stopping) and with the new ones (no schedule flags: the auto schedule), one process each, seed "
             "42, batch 32. The checkpoint kept is the best on dev in both. *test* is a labelled test split that "
             "picks nothing; RTE has none, so its row is dev only. Produced by `benchmarks/finetune_defaults.py`.",
             "",
             f"The rule (bertedge/stages/finetune.py): peak LR {', '.join(f'{lr:g} under {lim / 1e6:g}M parameters' for lim, lr in AUTO_LR[:-1])}, "
             f"else {AUTO_LR[-1][1]:g}, times {AUTO_SMALL_TRAIN[1]:g} for a train set under {AUTO_SMALL_TRAIN[0]:,} "
             f"features; epochs = ceil({AUTO_TARGET_STEPS} / steps per epoch) kept within "
             f"{AUTO_EPOCHS[0]}..{AUTO_EPOCHS[1]}, with early stopping after {AUTO_PATIENCE} evaluations (epochs) "
             "without a better dev metric. A flag the user gives (`--lr`, `--epochs`, `--early-stopping`) is kept.",
             *(["", f"**Note:** {args.note}"] if args.note else []),
             "",
             "| dataset | shape | metric | old dev | new dev | old test | new test | change (test, else dev) | "
             "old: classes never predicted | new | new schedule (epochs run / cap, lr) | train time old / new |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for name, runs in rows.items():
        task, _, metric, shape = DATASETS[name]
        old, new = runs["old"], runs["new"]
        od, nd = scalar(old["metrics"].get("dev"), metric), scalar(new["metrics"].get("dev"), metric)
        ot, nt = scalar(old["metrics"].get("test"), metric), scalar(new["metrics"].get("test"), metric)
        ref_old, ref_new = (ot, nt) if ot is not None and nt is not None else (od, nd)
        change = f"{(ref_new - ref_old) * 100:+.2f} pts" if ref_old is not None and ref_new is not None else "n/a"
        sched = new["schedule"] or {}
        steps_epoch = sched.get("steps_per_epoch") or 1
        ran = (new["global_step"] or 0) / steps_epoch
        def fmt(v):
            return f"{v:.4f}" if v is not None else "—"

        never_old = classes_never_predicted(old["metrics"].get("test") or old["metrics"].get("dev"))
        never_new = classes_never_predicted(new["metrics"].get("test") or new["metrics"].get("dev"))
        def time_s(r):
            return f"{r['train_runtime_s']:.0f}s" if r.get("train_runtime_s") else "—"

        lines.append(f"| {name} | {shape} | {metric} | {fmt(od)} | {fmt(nd)} | {fmt(ot)} | {fmt(nt)} | {change} | "
                     f"{never_old if never_old is not None else '—'} | {never_new if never_new is not None else '—'} | "
                     f"{ran:.1f} / {sched.get('epochs', 0):g}, {sched.get('lr', 0):g} | "
                     f"{time_s(old)} / {time_s(new)} |")
        for split in ("dev", "test"):
            for run in (old, new):
                macro = scalar(run["metrics"].get(split), "f1")
                run.setdefault("macro_f1", {})[split] = macro
    lines += ["", "Macro-F1 (classification) / entity F1 (NER) on test, else dev:", "",
              "| dataset | old | new |", "| --- | ---: | ---: |"]
    for name, runs in rows.items():
        def pick(run):
            m = run["macro_f1"]
            return m.get("test") if m.get("test") is not None else m.get("dev")
        lines.append(f"| {name} | {pick(runs['old']):.4f} | {pick(runs['new']):.4f} |")
    seeded = {name: runs for name, runs in rows.items() if "per_seed" in runs["old"]}
    if seeded:
        lines += ["", "Rows with several seeds are the mean over the seeds; each seed's own dev metric:", "",
                  "| dataset | schedule | per seed (dev) | mean | min..max |", "| --- | --- | --- | ---: | --- |"]
        for name, runs in seeded.items():
            for schedule in SCHEDULES:
                per = [p for p in runs[schedule]["per_seed"] if p["dev"] is not None]
                values = [p["dev"] for p in per]
                lines.append(f"| {name} | {schedule} | " + ", ".join(f"{p['seed']}: {p['dev']:.4f}" for p in per)
                             + f" | {sum(values) / len(values):.4f} | {min(values):.4f}..{max(values):.4f} |")
    reused = [(name, s, runs[s]["reused"]) for name, runs in rows.items() for s in SCHEDULES if runs[s].get("reused")]
    if reused:
        lines += ["", "Rows taken from an earlier run of this script (`--reuse`; a reused *new* row is checked to be "
                      "what the current rule still picks), not trained again here:", ""]
        lines += [f"- {name} {s}: measured {r['date']} on {r['cpu']} (ISA {r['isa']}), transformers {r['transformers']}"
                  for name, s, r in reused]
    lines += ["", "Commands (each run's own): see finetune-defaults.json (`runs.NAME.old.command`)."]
    json_path, md_path = write_results("finetune-defaults", {"runs": rows}, "\n".join(lines) + "\n")
    print(f"wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
