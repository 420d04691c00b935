"""`bertedge optimize`: search student depth x prune ratios x quantization modes under an accuracy budget.

From one fine-tuned teacher the search builds a tree of candidates with the ordinary stages::

    teacher ──distill(L layers)──▶ student ──prune(ffn, heads)──▶ pruned ──export──▶ fp32 bundle ──quantize(mode)──▶ int8

and returns the fastest artifact within the budget (dev-metric drop vs the teacher, optional size) plus the
Pareto front of dev metric against latency. What it adds over running the stages by hand:

- **Early dropping.** A candidate whose dev metric already loses more than the budget (plus `slack`) is not
  compressed further: later stages only remove capacity (quantization rarely gives accuracy back). With
  `monotone` (the default), a depth that fails also rules out every shallower depth, and a prune ratio that
  fails rules out every larger ratio of the same student — they are recorded as skipped, never trained.
- **Budget hand-down.** Quantization runs with what is left of the budget after distillation and pruning,
  so the quantizer's own accuracy gate (mode auto) can only choose schemes that keep the whole chain in budget.
- **One bench** of the teacher (PyTorch fp32) and every bundle at the chosen batch and sequence length, each
  in its own worker process with alternating blocks, so the ranking compares latencies taken under the same
  conditions.
- **Resume.** Every candidate is an ordinary artifact under OUT/candidates/NAME with a state file holding
  its config hash and its parent's payload hash; a rerun keeps the ones that match.
- **Wall-clock budget.** With `max_hours`, once the first chain has ended (a final candidate built, or a
  candidate dropped) no new candidate is started after the budget is spent; the rest are listed as
  `not tried` with the reason, and the best within-budget candidate so far is chosen. The clock is
  injectable (`optimize(..., clock=)`), so `max_hours: 0` means "stop after the first candidate".

Outputs: OUT/search.json (every candidate with status, reason, metric, drop, size, p50, speed-up, Pareto
flag, build wall time; the search's own cost), OUT/search.md, OUT/pareto.png, and OUT/best (a symlink to the
chosen candidate). In a recipe, a `stage: search` step runs the same search (`search_step`) and copies the
chosen candidate to the step's artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from . import log
from .artifacts import Artifact, dev_metrics, is_artifact, load_artifact, write_json_atomic
from .errors import ArtifactError, BudgetError, ConfigError
from .log import number_or_dash
from .search_space import (  # noqa: F401 - the search's config, also imported from here
    PARETO_PNG,
    SEARCH_JSON,
    SEARCH_MD,
    PruneChoice,
    SearchConfig,
    candidate_table,
    check_blocks,
    check_depths,
    check_early_exit_task,
    cost_line,
    parse_search,
    stage_configs,
)

# ----------------------------------------------------------------------------- size before building


def weight_count(shape: dict, depth: int, choice: PruneChoice, vocab_size: int) -> int:
    """Weight-matrix entries of a BERT of `shape` (config.json fields) at `depth` layers after `choice`, with a
    vocabulary of `vocab_size`: what int8 stores at one byte each (biases and LayerNorms left out, so a lower bound
    of the bundle's size)."""
    hidden, heads, ffn = shape["hidden_size"], shape["num_attention_heads"], shape["intermediate_size"]
    head_dim = hidden // heads
    layers = min(choice.layers or depth, depth)
    kept_heads = heads - round(choice.heads * heads)
    kept_ffn = ffn - round(choice.ffn * ffn)
    per_layer = 4 * hidden * kept_heads * head_dim + 2 * hidden * kept_ffn
    embeddings = (vocab_size + shape.get("max_position_embeddings", 512) + shape.get("type_vocab_size", 2)) * hidden
    return layers * per_layer + embeddings + hidden * hidden  # + the pooler


# ----------------------------------------------------------------------------- the search tree


def plan_and_build(config: SearchConfig, teacher_depth: int,
                   build: Callable[[str, str, str | None, dict], dict],
                   clock: Callable[[], float] | None = None, shape: dict | None = None) -> list[dict]:
    """Walk the candidate tree, calling `build(name, stage, parent_name, settings)` for each candidate.

    `build` returns a record with at least `drop_pts` (vs the teacher; None when unknown). Candidates over
    the budget (+ slack) are not compressed further; with `monotone`, shallower depths after a failing depth
    and larger prune ratios after a failing ratio are recorded as skipped without being built. Separated from
    the stages so the dropping logic is testable with a fake `build`.

    With `max_hours`, `clock()` (seconds, default time.monotonic) is read before each build once the first
    chain has ended (a final candidate built, or a candidate dropped): when the budget is spent, that
    candidate and every later one are recorded as `not tried` without being built.

    With `max_size_mb` and the teacher's config.json fields in `shape`, a prune choice whose weights alone
    (`weight_count`, one byte each under int8, four with only `none`) exceed the size budget is skipped
    before it is trained. The vocabulary counted is the teacher's, or with `trim_vocab` the size the first
    trimmed candidate reached (a trim-vocab record's `vocab_size`; every trim counts the same text); before
    one exists only the always-kept tokens are counted, so the bound never skips a candidate that could fit.
    """
    check_depths(config, teacher_depth, where="--layers")
    limit = config.max_accuracy_drop + config.slack
    records: list[dict] = []
    clock = clock or time.monotonic
    started = clock()
    limit_s = None if config.max_hours is None else config.max_hours * 3600
    stop: dict = {}  # set once the wall-clock budget is spent: the reason every later candidate carries

    def chain_ended() -> bool:
        return any(r["status"] == "dropped" or (r.get("final") and r["status"] == "built") for r in records)

    def attempt(name: str, stage: str, parent: str | None, settings: dict) -> dict:
        if not stop and limit_s is not None and chain_ended():
            elapsed = clock() - started
            if elapsed >= limit_s:
                stop.update(elapsed_s=round(elapsed, 1),
                            reason=f"not tried: wall-clock budget spent ({elapsed:.0f} s used of max_hours "
                                   f"{config.max_hours:g} = {limit_s:.0f} s)")
                log.info(f"optimize: {stop['reason'][len('not tried: '):]}; no new candidate is built")
        if stop:
            return {"name": name, "stage": stage, "parent": parent, "settings": settings, "status": "not tried",
                    "reason": stop["reason"], "elapsed_s": stop["elapsed_s"]}
        return build(name, stage, parent, settings)

    def build_or_drop(name: str, stage: str, parent: str, settings: dict, consequence: str) -> dict | None:
        """Build one candidate; None when it loses more than the limit (recorded as dropped)."""
        record = attempt(name, stage, parent, settings)
        records.append(record)
        if record.get("drop_pts") is None or record["drop_pts"] <= limit:
            return record
        record.update(status="dropped", reason=f"dropped: loses {record['drop_pts']:.2f} pts, over the "
                                               f"{limit:g} pt limit; {consequence}")
        return None

    def skip(name: str, stage: str, parent: str | None, reason: str) -> None:
        records.append({"name": name, "stage": stage, "parent": parent, "status": "skipped", "reason": reason})

    bytes_per_weight = 4 if set(config.quantize) == {"none"} else 1

    def too_big(depth: int, choice: PruneChoice) -> str | None:
        """The reason to skip a choice whose weights alone break the size budget, else None."""
        if config.max_size_mb is None or shape is None or shape.get("pruned_heads") \
                or shape.get("bertedge_intermediate_sizes"):
            return None  # no budget, or a pruned teacher: its config's widths would overstate it
        if config.trim_vocab is None:
            vocab = shape["vocab_size"]
        else:
            vocab = next((r["vocab_size"] for r in reversed(records) if r.get("vocab_size")), 0)
        size = weight_count(shape, depth, choice, vocab) * bytes_per_weight
        if size <= config.max_size_mb * 1e6:
            return None
        return (f"skipped: its weights alone take {size / 1e6:.1f} MB ({'int8' if bytes_per_weight == 1 else 'fp32'}"
                f", vocabulary {vocab:,}), over the {config.max_size_mb:g} MB budget")

    def export_and_quantize(source: str, exits: bool = False) -> None:
        """The fp32 bundle of `source` and its quantized bundles: the final candidates of this branch (`exits`:
        `source` has exit heads)."""
        bundle = f"{source}-onnx"
        record = attempt(bundle, "export", source, {})
        records.append(record)
        for mode in config.quantize:
            if mode == "none":
                record["final"] = True
                continue
            if mode == "static" and exits:
                skip(f"{source}-{mode}", "quantize", bundle, "skipped: static int8 is not available for early-exit "
                                                             "bundles (dynamic and auto are)")
                continue
            left = config.max_accuracy_drop - max(record.get("drop_pts") or 0.0, 0.0)
            records.append(attempt(f"{source}-{mode}", "quantize", bundle,
                                   {"mode": mode, "max_accuracy_drop": round(max(left, 0.0), 4)}))
            records[-1]["final"] = True

    def trimmed_teacher() -> dict | None:
        """With trim_first: the record of the trimmed teacher, every pruned model's KD teacher (it reads the same
        tokens); built once (dropped when over budget, still a KD teacher), None when it could not be built."""
        record = next((r for r in records if r["name"] == "teacher-tv"), None)
        if record is None:
            build_or_drop("teacher-tv", "trim-vocab", "teacher", {}, "not pruned or exported")
            record = records[-1]
        return record if record["status"] in ("built", "dropped") else None

    trim_first = config.trim_vocab is not None and config.trim_first
    depths = sorted({teacher_depth if d in (0, teacher_depth) else d for d in config.layers}, reverse=True)
    failed_depth: tuple[int, float] | None = None
    for depth in depths:
        student = "teacher" if depth == teacher_depth else f"L{depth}"
        if student != "teacher":
            if config.monotone and failed_depth is not None:
                skip(student, "distill", "teacher", f"skipped: the {failed_depth[0]}-layer student already loses "
                                                    f"{failed_depth[1]:.2f} pts (over the budget)")
                continue
            record = build_or_drop(student, "distill", "teacher", {"layers": depth}, "not pruned or quantized")
            if record is None:
                failed_depth = (depth, records[-1]["drop_pts"])
                continue
        base, kd_teacher = student, None
        if trim_first:  # prune the trimmed model: the recovery then learns the trimmed tokenization
            kd = trimmed_teacher()
            if kd is None:
                continue
            kd_teacher, base = kd["name"], f"{student}-tv"
            if student == "teacher":
                if kd["status"] == "dropped":
                    continue
            elif build_or_drop(base, "trim-vocab", student, {}, "not pruned or exported") is None:
                continue
        failed_ratios: list[tuple[PruneChoice, float]] = []
        for choice in sorted(config.prune, key=lambda c: (-c.kept_share(depth), c.ffn)):
            source = base
            if not choice.is_identity:
                name = f"{base}-{choice.tag}"
                if choice.layers is not None and choice.layers >= depth:
                    skip(name, "prune", base, f"skipped: keeps {choice.layers} layers, {base} has {depth}")
                    continue
                worse = next((f for f in failed_ratios if choice.ffn >= f[0].ffn and choice.heads >= f[0].heads
                              and (choice.layers or depth) <= (f[0].layers or depth)), None)
                if config.monotone and worse is not None:
                    skip(name, "prune", base, f"skipped: pruning {worse[0].tag} of {base} already "
                                              f"loses {worse[1]:.2f} pts (over the budget)")
                    continue
                reason = too_big(depth, choice)
                if reason:
                    skip(name, "prune", base, reason)
                    continue
                settings: dict[str, Any] = {"ffn": choice.ffn, "heads": choice.heads}
                if choice.layers is not None:
                    settings["drop_layers"] = list(range(choice.layers, depth))  # the top ones
                if kd_teacher is not None:
                    settings["distill_from"] = kd_teacher  # a candidate's name; build() resolves it
                record = build_or_drop(name, "prune", base, settings, "not exported")
                if record is None:
                    failed_ratios.append((choice, records[-1]["drop_pts"]))
                    continue
                source = name
            if config.trim_vocab is not None and not trim_first:
                trimmed = f"{source}-tv"
                record = build_or_drop(trimmed, "trim-vocab", source, {}, "not exported")
                if record is None:
                    continue
                source = trimmed
            source_drop = next((r.get("drop_pts") or 0.0 for r in reversed(records) if r["name"] == source), 0.0)
            export_and_quantize(source)
            if config.early_exit is not None:  # the same model with exit heads, its own branch
                default = stage_configs()["early_exit"].model_fields["max_accuracy_drop"].default  # the stage's own
                cap = float(config.early_exit.get("max_accuracy_drop", default))
                left = config.max_accuracy_drop - max(source_drop, 0.0)
                ee = f"{source}-ee"
                record = build_or_drop(ee, "early-exit", source, {"max_accuracy_drop": round(max(min(cap, left), 0.0), 4)},
                                       "not exported")
                if record is not None:
                    export_and_quantize(ee, exits=True)
    return records


def pareto_front(points: list[dict]) -> list[dict]:
    """Non-dominated points: no other point is at least as fast and at least as accurate, and better in one."""
    front = []
    for p in points:
        dominated = any(q is not p and q["p50_ms"] <= p["p50_ms"] and q["value"] >= p["value"]
                        and (q["p50_ms"] < p["p50_ms"] or q["value"] > p["value"]) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p["p50_ms"])


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _candidate_value(artifact: Artifact, metric: str) -> float | None:
    """A candidate's dev metric as the search judges it (its manifest's). One place, so tests can force drops."""
    return dev_metrics(artifact).get(metric)


def optimize(teacher_path: str | Path, config: SearchConfig, out: str | Path, *, resume: bool = False,
             clock: Callable[[], float] | None = None) -> dict:
    """Run the search from the teacher artifact into `out`; returns the search.json content.

    `clock` (seconds; default time.monotonic) is what `max_hours` is checked against.
    """
    from .pipeline import read_state, stage_function
    from .tasks import get_task

    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise ArtifactError("search output path exists and is a file", where=str(out), fix="Choose a directory")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise ArtifactError("search directory already exists", where=str(out),
                            fix="Pass --resume to continue it (finished candidates are kept), or choose another --out")
    teacher = load_artifact(teacher_path)
    if teacher.is_bundle or teacher.stage not in ("finetune", "distill", "prune"):
        raise ArtifactError(f"the teacher must be a fine-tuned PyTorch artifact, not a {teacher.stage} artifact",
                            where=str(teacher.path), fix="Pass the output of `bertedge finetune`")
    metric = config.metric or teacher.manifest.get("primary_metric") or get_task(teacher.task).primary_metric
    teacher_value = dev_metrics(teacher).get(metric)
    if teacher_value is None:
        raise ConfigError(f"the teacher's manifest has no dev '{metric}'", where=str(teacher.path),
                          fix=f"Choose --metric among: {', '.join(sorted(dev_metrics(teacher))) or 'none recorded'}")
    teacher_depth = _depth(teacher)
    check_depths(config, teacher_depth, where="--layers")  # before anything is written
    check_early_exit_task(config, teacher.task)
    (out / "candidates").mkdir(parents=True, exist_ok=True)
    (out / "state").mkdir(exist_ok=True)
    paths: dict[str, Path] = {"teacher": teacher.path}
    started = time.time()

    def build(name: str, stage: str, parent: str | None, settings: dict) -> dict:
        if settings.get("distill_from") in paths:  # trim_first: the KD teacher is a candidate built earlier
            settings = {**settings, "distill_from": str(paths[settings["distill_from"]])}
        stage_config = _make_config(stage, settings, config, teacher)
        source = paths[parent]
        parent_sha = load_artifact(source).manifest.get("payload_sha256")
        dest = out / "candidates" / name
        state_file = out / "state" / f"{name}.json"
        config_hash = _hash({"stage": stage, "config": stage_config.model_dump(mode="json")})
        state = read_state(state_file)
        t0 = time.time()
        if (resume and state and is_artifact(dest) and state.get("config_hash") == config_hash
                and state.get("parent_sha") == parent_sha):
            artifact = load_artifact(dest)
            log.info(f"optimize: {name}: kept ({dest})")
            kept = True
        else:
            log.info(f"optimize: {name}: {stage} from {parent} {settings or ''} "
                     f"(search {time.time() - started:.0f} s so far)")
            artifact = stage_function(stage)(str(source), stage_config, dest, overwrite=True)
            write_json_atomic(state_file, {"config_hash": config_hash, "parent_sha": parent_sha,
                                           "payload_sha": artifact.manifest.get("payload_sha256")})
            kept = False
        paths[name] = dest
        value = _candidate_value(artifact, metric)
        record = {"name": name, "stage": stage, "parent": parent, "settings": settings, "path": str(dest),
                  "status": "built", "metric_value": value,
                  "drop_pts": round((teacher_value - value) * 100, 3) if value is not None else None,
                  "size_bytes": artifact.manifest.get("size_bytes"), "kept_from_earlier_run": kept,
                  "wall_time_s": None if kept else round(time.time() - t0, 1)}
        if stage == "quantize":
            record["quantize_choice"] = (artifact.manifest.get("quantization") or {}).get("candidate")
        if stage == "trim-vocab":
            vocab = artifact.manifest.get("vocab") or {}
            record["vocab_size"] = vocab.get("embedding_rows") or vocab.get("vocab_after")  # rows the bundle stores
        log.info(f"optimize: {name}: dev {metric} {value if value is None else round(value, 4)} "
                 f"(drop {record['drop_pts']} pts)")
        return record

    shape = json.loads((teacher.path / "config.json").read_text(encoding="utf-8"))
    records = plan_and_build(config, teacher_depth, build, clock=clock, shape=shape)
    finals = [r for r in records if r.get("final") and r["status"] == "built"]
    built_s = time.time() - started
    if not finals:
        log.warning("optimize: no final candidate was built (every branch dropped, skipped or not tried)")
    result = _rank(finals, records, teacher, metric, config, out)
    not_tried = [r for r in records if r["status"] == "not tried"]
    counts = {status: sum(r["status"] == status for r in records)
              for status in ("built", "dropped", "skipped", "not tried")}
    counts["kept_from_earlier_run"] = sum(bool(r.get("kept_from_earlier_run")) for r in records)
    total_s = time.time() - started
    result.update(search=config.model_dump(mode="json"), teacher={"path": str(teacher.path), "metric": metric,
                                                                  "value": teacher_value, "layers": teacher_depth},
                  wall_time_s=round(total_s, 1),
                  cost={"wall_time_s": round(total_s, 1), "build_wall_time_s": round(built_s, 1),
                        "rank_wall_time_s": round(total_s - built_s, 1),
                        "candidates_wall_time_s": round(sum(r.get("wall_time_s") or 0 for r in records), 1),
                        "counts": counts},
                  stopped=({"reason": "max_hours", "max_hours": config.max_hours,
                            "elapsed_s": not_tried[0]["elapsed_s"], "not_tried": len(not_tried),
                            "first_not_tried": not_tried[0]["name"]} if not_tried else None),
                  created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json_atomic(out / SEARCH_JSON, result)
    (out / SEARCH_MD).write_text(markdown(result), encoding="utf-8")
    log.info(f"optimize: {out / SEARCH_MD}")
    return result


def _rank(finals: list[dict], records: list[dict], teacher: Artifact, metric: str, config: SearchConfig,
          out: Path) -> dict:
    """Time the teacher and every final candidate in one bench run (a process each); choose; mark the Pareto front.

    With early-exit candidates, fixed shapes say nothing about their speed (how deep an input goes depends on
    the input), so every final candidate is also timed at batch 1 over real dev inputs in one run of
    bench/early_exit.py (a process each, alternating passes), and that mean is what ranks them all."""
    from .bench import BenchConfig, run_bench
    from .bench.report import plot_pareto

    exits = {r["name"] for r in finals if load_artifact(r["path"]).has_exits}
    fixed = [r for r in finals if r["name"] not in exits]  # an early-exit bundle has no one-graph fixed-shape run
    bench = run_bench([str(teacher.path), *[r["path"] for r in fixed]],
                      BenchConfig(batch_sizes=[config.batch_size], seq_lens=[config.seq_len], runs=config.runs,
                                  warmup=config.warmup, threads=config.threads, flops=False))
    by_path = {str(Path(a["path"]).absolute()): a["artifact"] for a in bench["artifacts"]}
    p50 = {r["artifact"]: r["p50_ms"] for r in bench["results"]}
    teacher_p50 = p50.get(by_path.get(str(teacher.path.absolute())))
    for r in finals:
        r["p50_ms"] = p50.get(by_path.get(str(Path(r["path"]).absolute())))
        r["speedup_vs_teacher"] = round(teacher_p50 / r["p50_ms"], 3) if r["p50_ms"] and teacher_p50 else None
    ranking = {"key": "p50_ms", "description": f"p50 at batch {config.batch_size}, seq {config.seq_len}"}
    if exits:
        from .bench.early_exit import METHOD as DEV_METHOD
        from .bench.early_exit import bench_early_exit

        dev = bench_early_exit([r["path"] for r in finals], data=config.data.data, max_samples=config.dev_timing_samples,
                               rounds=config.dev_timing_rounds, threads=config.threads, modes=("early-exit",),
                               plain=True)
        timed = {str(Path(t["bundle"]).absolute()): t for t in dev["targets"]}
        for r in finals:
            t = timed[str(Path(r["path"]).absolute())]
            r["dev_mean_ms"] = round(t["mean_ms"], 4)
            r["mean_exit_layer"] = t["mean_exit_layer"]
        ranking = {"key": "dev_mean_ms", "description": f"mean batch-1 latency over {dev['targets'][0]['n']} dev "
                                                        f"inputs, {config.dev_timing_rounds} alternating rounds, "
                                                        "each candidate in its own process",
                   "inputs": dev["targets"][0]["n"], "method": DEV_METHOD}
    key = ranking["key"]
    for r in finals:
        size_ok = config.max_size_mb is None or (r["size_bytes"] or 0) <= config.max_size_mb * 1e6
        drop_ok = r["drop_pts"] is not None and r["drop_pts"] <= config.max_accuracy_drop
        r["within_budget"] = bool(size_ok and drop_ok)
        if not drop_ok:
            r["verdict"] = f"over budget: loses {r['drop_pts']} pts"
        elif not size_ok:
            r["verdict"] = f"over budget: {r['size_bytes'] / 1e6:.1f} MB > {config.max_size_mb:g} MB"
    points = [{"name": r["name"], "p50_ms": r[key], "value": r["metric_value"]} for r in finals
              if r.get(key) is not None and r["metric_value"] is not None]
    front = {p["name"] for p in pareto_front(points)}
    for r in finals:
        r["pareto"] = r["name"] in front
    within = sorted((r for r in finals if r["within_budget"] and r.get(key) is not None), key=lambda r: r[key])
    best = within[0] if within else None
    for r in finals:
        if r is best:
            r["verdict"] = "chosen: fastest within the budget"
        elif r["within_budget"]:
            r["verdict"] = f"within budget, slower than {best['name']}"
    (out / PARETO_PNG).unlink(missing_ok=True)
    pareto = plot_pareto(bench, out / PARETO_PNG)
    best_link = out / "best"
    if best_link.is_symlink() or best_link.exists():
        best_link.unlink()
    if best:
        best_link.symlink_to(Path("candidates") / best["name"])
    return {"metric": metric, "teacher_p50_ms": teacher_p50, "best": best["name"] if best else None,
            "best_path": best["path"] if best else None,
            "pareto_front": [r["name"] for r in sorted(finals, key=lambda r: r.get(key) or 0) if r["pareto"]],
            "ranking": ranking,
            "candidates": records, "budget": {"max_accuracy_drop": config.max_accuracy_drop,
                                              "max_size_mb": config.max_size_mb, "met": best is not None},
            "machine": bench["machine"], "timing_method": bench["method"], "plot": str(pareto) if pareto else None}


# ----------------------------------------------------------------------------- the search as a recipe step

SEARCH_RECORD_KEYS = ("payload_sha256", "size_bytes", "environment", "created_at", "wall_time_s", "complete")


def search_step(teacher_path: str | Path, config: SearchConfig, out: str | Path, *, search_dir: str | Path,
                fresh: bool = False, overwrite: bool = True, clock: Callable[[], float] | None = None) -> Artifact:
    """A recipe's `stage: search`: run the search into `search_dir` (finished candidates whose hashes match are
    kept), then copy the chosen candidate to the artifact `out`, its manifest marked with what the search chose.

    With no candidate within the budget, `out` is removed (an earlier pick never stands in for this search's)
    and BudgetError is raised after search.json / search.md are written. `fresh` starts the search over.
    """
    from .artifacts import MANIFEST, atomic_artifact

    search_dir, out = Path(search_dir).absolute(), Path(out).absolute()
    if fresh and search_dir.exists():
        shutil.rmtree(search_dir)
    result = optimize(teacher_path, config, search_dir, resume=True, clock=clock)
    if not result["best"]:
        if out.exists() and is_artifact(out):
            # Moved aside as a temp dir first: a crash before the rmtree leaves one the next writer removes.
            aside = out.with_name(f".{out.name}.partial-{os.getpid()}")
            out.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        finals = [r for r in result["candidates"] if r.get("final") and r["status"] == "built"]
        budget = f"drop ≤ {config.max_accuracy_drop:g} pts" + (
            f", size ≤ {config.max_size_mb:g} MB" if config.max_size_mb is not None else "")
        counts = result["cost"]["counts"]
        built = (f"{len(finals)} final candidate{'s' if len(finals) != 1 else ''} built, all over it" if finals
                 else "no final candidate built")
        raise BudgetError(f"no candidate within budget ({budget} vs the teacher's dev {result['metric']}): {built}; "
                          f"{counts['dropped']} dropped, {counts['skipped']} skipped, {counts['not tried']} not tried; "
                          "no artifact written",
                          where=str(search_dir),
                          fix=f"See {search_dir / SEARCH_MD}; loosen the budget or widen the search, then rerun "
                              "with --resume (built candidates are kept)")
    pick = load_artifact(result["best_path"])
    chosen = next(r for r in result["candidates"] if r["name"] == result["best"])
    with atomic_artifact(out, stage=pick.stage, task=pick.task, overwrite=overwrite) as writer:
        for item in pick.path.iterdir():
            if item.name == MANIFEST:
                continue
            if item.is_dir():
                shutil.copytree(item, writer.path / item.name)
            else:
                shutil.copy2(item, writer.path / item.name)
        writer.manifest.update({k: v for k, v in pick.manifest.items() if k not in SEARCH_RECORD_KEYS})
        writer.manifest["complete"] = False
        writer.manifest["search"] = {
            "pick": result["best"], "candidate": str(pick.path), "search_dir": str(search_dir),
            "verdict": chosen.get("verdict"), "drop_pts": chosen.get("drop_pts"), "p50_ms": chosen.get("p50_ms"),
            "candidate_sha256": pick.manifest.get("payload_sha256"), "wall_time_s": result["wall_time_s"]}
    log.info(f"search: picked {result['best']} (fastest within the budget) -> {out}")
    return load_artifact(out)


def _depth(artifact: Artifact) -> int:
    config = json.loads((artifact.path / "config.json").read_text(encoding="utf-8"))
    return int(config["num_hidden_layers"])


def _make_config(stage: str, settings: dict, config: SearchConfig, teacher: Artifact):
    models = stage_configs()

    def data(block: dict) -> dict:
        """The search's data, with the block's own `data` fields on top (e.g. a train subset for recovery only)."""
        return {**config.data.model_dump(exclude_unset=True), **(block.get("data") or {})}

    if stage == "distill":
        return models["distill"].model_validate({**config.distill, **settings, "data": data(config.distill)})
    if stage == "prune":
        options = {"distill_from": str(teacher.path), **config.prune_options, **settings}
        return models["prune_options"].model_validate({**options, "data": data(config.prune_options)})
    if stage == "export":  # every dev example: a candidate's metric is judged against the teacher's full-dev one
        return models["export_options"].model_validate({"metric_samples": None, **config.export_options})
    if stage == "early-exit":
        block = config.early_exit or {}
        return models["early_exit"].model_validate({**block, **settings, "data": data(block)})
    if stage == "trim-vocab":
        return models["trim_vocab"].model_validate({**(config.trim_vocab or {}), "data": config.data.model_dump()})
    options = dict(config.quantize_options)
    if settings["mode"] in ("static", "auto") and not options.get("calibration"):
        from .evaluate import artifact_data_spec

        options["calibration"] = artifact_data_spec(teacher, config.data.data)[0]
    if config.data.max_eval_samples and "eval_samples" not in options:
        options["eval_samples"] = config.data.max_eval_samples
    return models["quantize_options"].model_validate({**options, **settings})


def markdown(result: dict) -> str:
    t = result["teacher"]
    m = result["machine"]
    cpu = m.get("cpu", {})
    s = result["search"]
    lines = [f"# bertedge optimize: {t['path']}", "",
             f"Teacher: {t['layers']} layers, dev {t['metric']} {t['value']:.4f}, p50 "
             f"{number_or_dash(result['teacher_p50_ms'])} ms (PyTorch fp32, batch {s['batch_size']}, seq {s['seq_len']}).  ",
             f"Budget: drop ≤ {s['max_accuracy_drop']} pts" + (f", size ≤ {s['max_size_mb']} MB" if s['max_size_mb']
                                                               else "")
             + (f", wall clock ≤ {s['max_hours']:g} h" if s.get("max_hours") is not None else "")
             + f". Search: layers {s['layers']}, prune {[tuple(v for v in (p['ffn'], p['heads'], p.get('layers')) if v is not None) for p in s['prune']]}, "
               f"quantize {s['quantize']}" + (", vocabulary trimmed" if s.get("trim_vocab") is not None else "")
             + (", and each model with early exit" if s.get("early_exit") is not None else "")
             + ".  ",
             f"CPU: {cpu.get('model')} ({cpu.get('usable_cores')} cores), threads {m.get('threads')}; "
             f"wall time {result['wall_time_s'] / 60:.1f} min.", "", *candidate_table(result["candidates"])]
    lines += ["", (f"**Best: {result['best']}** ({result['best_path']})." if result["best"]
                   else "**No candidate meets the budget.**"),
              f"Ranked by {(result.get('ranking') or {}).get('description', 'p50')}.",
              f"Pareto front (dev metric vs that latency): {', '.join(result['pareto_front']) or 'none'}.", "",
              cost_line(result), "",
              "Intermediate candidates (students, pruned models; fp32 bundles unless `none` is a quantize mode) carry "
              "their dev metric; only final candidates are timed, all in one bench run with the teacher (each target "
              "in its own worker process, alternating blocks)"
              + ("; early-exit bundles have no fixed-shape run, so every final candidate is also timed over the same "
                 "dev inputs, and that mean ranks them" if (result.get("ranking") or {}).get("key") == "dev_mean_ms"
                 else "")
              + ". Build (s) is each candidate's own wall time."]
    return "\n".join(lines) + "\n"
