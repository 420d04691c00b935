"""The side-by-side report of a run: every artifact against the PyTorch fp32 teacher and the peer path.

All timings come from ONE bench run (bertedge.bench.run_bench: each target in its own worker process,
alternating blocks), so ratios are measured
under the same conditions. Metrics come from the artifacts' manifests (dev split); an artifact whose
manifest was evaluated on a different number of dev examples than the teacher is re-evaluated on the
teacher's dev set, so every row compares the same examples.

A recipe with a `stage: search` step: the final artifact is the (last) search step's pick, never an
over-budget artifact. When the search found no candidate within the budget there is no final artifact; the
report says so and names the best artifact within the budget (the teacher, the peer, ...). Every search's
candidates (status, reason, verdict, drop, size, p50, build time), Pareto front, cost and plot are in the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import log
from .artifacts import Artifact, dev_metrics, load_artifact, write_json_atomic
from .errors import ArtifactError
from .log import number_or_dash as _fmt
from .recipe import Recipe, load_recipe

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PARETO_PNG = "pareto.png"
LATENCY_PNG = "latency.png"
KEY_BATCH, KEY_SEQ, THROUGHPUT_BATCH = 1, 128, 32


def _primary(recipe: Recipe, teacher: Artifact) -> str:
    from .tasks import get_task

    return recipe.budget.metric or teacher.manifest.get("primary_metric") or get_task(recipe.task).primary_metric


def _peer_metrics(peer_file: Path, tokenizer_dir: Path, teacher: Artifact) -> dict:
    """The peer's dev metric through the same evaluation loop bertedge uses for bundles."""
    from .evaluate import artifact_settings, load_eval_examples
    from .providers import make_session
    from .tasks import get_task
    from .tasks.base import evaluate_examples
    from .tokenization import TextEncoder

    session = make_session(peer_file)
    names = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]

    def forward(batch):
        return dict(zip(outputs, session.run(None, {k: v for k, v in batch.items() if k in names})))

    examples = load_eval_examples(teacher, None, "dev")
    metrics, _ = evaluate_examples(get_task(teacher.task), examples, TextEncoder.from_dir(tokenizer_dir), forward,
                                   artifact_settings(teacher), teacher.labels or None)
    return {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "n": len(examples)}


def _row(results: list[dict], name: str, mode: str, batch: int, seq: int | None) -> dict | None:
    for r in results:
        if r["artifact"] == name and r.get("mode", "fixed") == mode and r["batch_size"] == batch \
                and r["seq_len"] == seq:
            return r
    return None


def build_report(run_dir: str | Path, recipe: Recipe | None = None, *, peer: bool | None = None) -> str:
    """Bench every artifact of a run side by side and write report.json, report.md, pareto.png."""
    from .bench import BenchConfig, onnx_target, run_bench
    from .bench.report import plot_latency, plot_pareto

    run_dir = Path(run_dir).absolute()
    recipe = recipe or load_recipe(run_dir / "recipe.yaml")
    names = recipe.step_names()
    artifacts: list[tuple[str, Artifact]] = []
    for name, _step in zip(names, recipe.stages):
        path = run_dir / "artifacts" / name
        try:
            artifacts.append((name, load_artifact(path)))
        except ArtifactError:
            log.warning(f"report: {name} has no finished artifact ({path}); left out")
    teachers = [(n, a) for n, a in artifacts if a.stage == "finetune"]
    if not teachers:
        raise ArtifactError("the run has no finished finetune artifact to compare against", where=str(run_dir),
                            fix="Run the recipe (bertedge run) until its teacher step has finished")
    teacher_name, teacher = teachers[0]
    metric = _primary(recipe, teacher)
    teacher_dev = dev_metrics(teacher)

    # Early-exit bundles have no single graph for the fixed-shape grid: `bertedge bench` times them on dev inputs.
    targets: list = [str(a.path) for _, a in artifacts if not a.has_exits]
    if len(targets) < len(artifacts):
        log.warning("report: early-exit bundles are left out of the fixed-shape latency grid; a final one is timed "
                    "over the dev inputs with the teacher and the peer (others: `bertedge bench BUNDLE`)")
    peer_name = peer_method = None
    peer_files: dict = {}
    use_peer = recipe.bench.peer if peer is None else peer
    peer_metrics: dict = {}
    if use_peer:
        from .peer import PEER_METHODS, build_peer, default_peer

        kind = default_peer()
        log.info(f"report: building the peer path ({kind}: {PEER_METHODS[kind]})")
        peer_files = build_peer(teacher, run_dir / "peer", kind)
        peer_metrics = _peer_metrics(peer_files["int8"], run_dir / "peer", teacher)
        peer_name = peer_files["name"]
        peer_method = {"kind": kind, "name": peer_name, "method": peer_files["method"]}
        targets.append(onnx_target(peer_name, peer_files["int8"], task=teacher.task, tokenizer_dir=run_dir / "peer",
                                   metrics={"dev": peer_metrics}, stage="peer", data_artifact=teacher.path,
                                   settings=dict(teacher.manifest.get("settings") or {})))

    grid = recipe.bench
    batch_sizes = sorted({KEY_BATCH, THROUGHPUT_BATCH, *grid.batch_sizes})
    seq_lens = sorted({KEY_SEQ, *grid.seq_lens})
    config = BenchConfig(provider=recipe.target.provider, threads=recipe.target.threads, batch_sizes=batch_sizes,
                         seq_lens=seq_lens, warmup=grid.warmup, runs=None if grid.duration else grid.runs,
                         duration=grid.duration,
                         real_lengths=recipe.data if grid.real_lengths else None, real_batch_sizes=[KEY_BATCH])
    bench = run_bench(targets, config)
    results = bench["results"]
    by_path: dict[str, Any] = {}
    for record in bench["artifacts"]:
        by_path.setdefault(str(Path(record["path"]).absolute()), record["artifact"])

    def timing(name: str, mode: str, batch: int, seq: int | None, key: str = "p50_ms"):
        row = _row(results, name, mode, batch, seq)
        return row.get(key) if row else None

    teacher_target = by_path.get(str(teacher.path.absolute()), teacher_name)
    teacher_p50 = timing(teacher_target, "fixed", KEY_BATCH, KEY_SEQ)
    peer_p50 = timing(peer_name, "fixed", KEY_BATCH, KEY_SEQ) if peer_name else None

    rows = []
    for name, artifact in artifacts:
        dev = dev_metrics(artifact)
        if dev.get("n") is not None and teacher_dev.get("n") is not None and dev.get("n") != teacher_dev.get("n"):
            from .evaluate import evaluate_artifact

            log.info(f"report: re-evaluating {name} on the teacher's {teacher_dev['n']} dev examples")
            evaluated = evaluate_artifact(artifact.path)
            dev = {**{k: v for k, v in evaluated["metrics"].items() if isinstance(v, (int, float))},
                   "n": evaluated["n"]}
        rows.append(_artifact_row(name, artifact.stage, str(artifact.path), dev, by_path.get(
            str(artifact.path.absolute()), name), timing, teacher_p50, peer_p50, artifact.manifest.get("size_bytes")))
        if artifact.manifest.get("search"):
            rows[-1]["search_pick"] = artifact.manifest["search"].get("pick")
    if peer_name:
        peer_size = next(a["size_bytes"] for a in bench["artifacts"] if a["artifact"] == peer_name)
        rows.append(_artifact_row(peer_name, "peer", str(run_dir / "peer"), peer_metrics, peer_name, timing,
                                  teacher_p50, peer_p50, peer_size))
    for row in rows:
        value = row["metrics"].get(metric)
        base = teacher_dev.get(metric)
        row["metric_drop_pts"] = round((base - value) * 100, 3) if value is not None and base is not None else None

    searches = [(name, step) for name, step in zip(names, recipe.stages) if step.stage == "search"]
    budget = recipe.budget.model_dump(mode="json")
    budget["from"] = "recipe"
    if searches:  # the search's budget (the recipe's unless the step set its own) judges the final artifact
        last_name, last_step = searches[-1]
        budget.update(max_accuracy_drop=last_step.max_accuracy_drop, max_size_mb=last_step.max_size_mb,
                      **{"from": f"search step {last_name}"})
        final_index = next((i for i, (n, _) in enumerate(artifacts) if n == last_name), None)
    else:
        final_index = len(artifacts) - 1 if artifacts else None
    final = rows[final_index] if final_index is not None else None
    search_sections = [_search_section(run_dir, name, step, names, recipe) for name, step in searches]
    dev_inputs = None
    if final is not None:
        final["batching"] = _batching(artifacts[final_index][1])
        final_artifact = artifacts[final_index][1]
        ranked_on_dev = any((s.get("ranking") or {}).get("key") == "dev_mean_ms" for s in search_sections)
        if final_artifact.has_exits or ranked_on_dev:  # exits, or a search with the early-exit axis
            dev_inputs = _dev_input_bench(teacher, final, final_artifact, peer_name, peer_files, run_dir,
                                          recipe.target.threads)
    budget["metric"] = metric
    budget["final_drop_pts"] = budget["final_size_mb"] = None
    budget["met"] = False
    if final is not None:
        drop = final["metric_drop_pts"]
        size_mb = final["size_bytes"] / 1e6 if final["size_bytes"] else None
        budget["final_drop_pts"] = drop
        budget["final_size_mb"] = round(size_mb, 3) if size_mb else None
        budget["met"] = _within(final, budget)
    within = sorted((r for r in rows if _within(r, budget) and r["p50_ms_b1_s128"] is not None),
                    key=lambda r: r["p50_ms_b1_s128"])
    budget["best_within_budget"] = within[0]["name"] if within else None
    report = {
        "recipe": recipe.name,
        "task": recipe.task,
        "metric": metric,
        "teacher": next(r for r in rows if r["name"] == teacher_name),
        "final": final,
        "peer": next((r for r in rows if r["name"] == peer_name), None),
        "peer_path": peer_method,
        "artifacts": rows,
        "budget": budget,
        "machine": bench["machine"],
        "bench": {"config": bench["config"], "method": bench["method"], "results": results,
                  "artifacts": bench["artifacts"]},
        "speedup_grid": speedup_grid(results, teacher_target, final["bench_name"] if final else None, peer_name),
        "dev_inputs": dev_inputs,
        "search": search_sections,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run_dir),
    }
    for name in (PARETO_PNG, LATENCY_PNG):
        (run_dir / name).unlink(missing_ok=True)
    pareto = plot_pareto(bench, run_dir / PARETO_PNG)
    latency = plot_latency(bench, run_dir / LATENCY_PNG)
    report["plots"] = {"pareto": str(pareto) if pareto else None, "latency": str(latency) if latency else None,
                       "search": {s["step"]: s.get("plot") for s in report["search"]}}
    write_json_atomic(run_dir / REPORT_JSON, report)
    (run_dir / REPORT_MD).write_text(markdown(report), encoding="utf-8")
    log.info(f"report: {run_dir / REPORT_MD}")
    return str(run_dir / REPORT_JSON)


DEV_ROUNDS = 3
DEV_METHOD = ("batch 1 over the real dev inputs, pre-tokenized, the same inputs for every target; each target in its "
              "own worker process (bundles through bertedge.runtime.Bundle with their exit rule, the teacher in "
              "PyTorch eager fp32, the peer in an ONNX Runtime session); alternating passes over the inputs, one "
              "process running at a time")


def _dev_input_bench(teacher: Artifact, final: dict, final_artifact: Artifact, peer_name: str | None,
                     peer_files: dict, run_dir: Path, threads: int | None) -> dict:
    """The teacher (PyTorch fp32), the peer and the final artifact at batch 1 over the same dev inputs, in one run
    (bench/early_exit.py: each in its own process, alternating passes). How deep an early-exit model goes depends on
    the input, so this is the one honest comparison for such a final; its ratios replace the fixed-shape ones."""
    from .bench.early_exit import PLAIN, bench_early_exit

    log.info("report: timing the teacher, the peer and the final artifact over the dev inputs (batch 1)")
    extra: list[dict] = [{"name": "teacher", "artifact": teacher.path}]
    if peer_name:
        extra.append({"name": peer_name, "onnx": peer_files["int8"], "task": teacher.task,
                      "tokenizer_dir": run_dir / "peer", "data_artifact": teacher.path})
    result = bench_early_exit([final_artifact.path], plain=True, targets=extra, rounds=DEV_ROUNDS, threads=threads)
    final_key = str(final_artifact.path)
    rows = []
    for t in result["targets"]:
        role = ("final" if t["mode"] in ("early-exit", PLAIN) else "final, full depth") if t["bundle"] == final_key \
            else ("teacher" if t["bundle"] == "teacher" else "peer")
        rows.append({"name": final["name"] if role.startswith("final") else t["bundle"], "role": role,
                     "mode": t["mode"], "n": t["n"], "mean_ms": round(t["mean_ms"], 3), "p50_ms": round(t["p50_ms"], 3),
                     "p90_ms": round(t["p90_ms"], 3), "mean_exit_layer": t["mean_exit_layer"],
                     "exit_histogram": t["exit_histogram"], "accuracy": t["accuracy"]})
    by_role = {r["role"]: r for r in rows}
    for r in rows:
        for other in ("teacher", "peer"):
            base = by_role.get(other)
            r[f"speedup_vs_{other}"] = round(base["mean_ms"] / r["mean_ms"], 3) if base and r["mean_ms"] else None
    if final_artifact.has_exits:  # no fixed-shape figure exists for it: these are its speed-ups
        final.update(speedup_vs_teacher=by_role["final"]["speedup_vs_teacher"],
                     speedup_vs_peer=by_role["final"]["speedup_vs_peer"], speedup_basis="dev_mean_ms")
    final["dev_mean_ms"] = by_role["final"]["mean_ms"]
    return {"method": DEV_METHOD, "rounds": DEV_ROUNDS, "split": "dev", "threads": threads, "rows": rows}


def _within(row: dict, budget: dict) -> bool:
    """A report row within the budget: its drop vs the teacher and (if set) its size."""
    drop, size = row.get("metric_drop_pts"), row.get("size_bytes")
    return bool(drop is not None and drop <= budget["max_accuracy_drop"]
                and (budget.get("max_size_mb") is None or (size or 0) <= budget["max_size_mb"] * 1e6))


# What the report keeps of each search candidate (search.json has everything).
SEARCH_FIELDS = ("name", "stage", "parent", "status", "reason", "verdict", "final", "metric_value", "drop_pts",
                 "size_bytes", "p50_ms", "speedup_vs_teacher", "within_budget", "pareto", "wall_time_s",
                 "kept_from_earlier_run", "dev_mean_ms", "mean_exit_layer")


def _search_section(run_dir: Path, name: str, step, names: list[str], recipe: Recipe) -> dict:
    """A search step's candidates, verdicts, Pareto front and cost, from its search.json."""
    from .search_space import SEARCH_JSON, SEARCH_MD

    index = names.index(name)
    directory = run_dir / "search" / name
    section = {"step": name, "source": step.source or (names[index - 1] if index else None),
               "dir": str(directory), "ran": False,
               "budget": {"max_accuracy_drop": step.max_accuracy_drop, "max_size_mb": step.max_size_mb,
                          "max_hours": step.max_hours}}
    try:
        result = json.loads((directory / SEARCH_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning(f"report: the search step {name} has no search.json ({directory}); not run yet")
        return section
    artifact = run_dir / "artifacts" / name
    try:
        picked = (load_artifact(artifact).manifest.get("search") or {}).get("pick")
    except ArtifactError:  # no pick: the search found no candidate within the budget
        picked = None
    section.update(
        ran=True, best=result.get("best"), picked=picked, artifact=str(artifact) if picked else None,
        metric=result.get("metric"), teacher=result.get("teacher"), teacher_p50_ms=result.get("teacher_p50_ms"),
        pareto_front=result.get("pareto_front", []), wall_time_s=result.get("wall_time_s"),
        cost=result.get("cost"), stopped=result.get("stopped"), plot=result.get("plot"),
        search_md=str(directory / SEARCH_MD),
        ranking={**{k: (result.get("search") or {}).get(k) for k in ("batch_size", "seq_len", "runs")},
                 **(result.get("ranking") or {})},
        candidates=[{k: c.get(k) for k in SEARCH_FIELDS if k in c} for c in result.get("candidates", [])])
    return section


def _peer_sentence(report: dict) -> str:
    """Which peer the report measured (reports from before the ORT peer existed measured optimum's)."""
    path = report.get("peer_path")
    if path:
        return f"Peer ({path['name']}) = {path['method']}."
    if report.get("peer"):
        return ("Peer = optimum's ONNX export of the teacher quantized by optimum's ORTQuantizer (dynamic int8, "
                "avx2 preset).")
    return "No peer was measured."


def _artifact_row(name, stage, path, dev, bench_name, timing, teacher_p50, peer_p50, size_bytes) -> dict:
    p50 = timing(bench_name, "fixed", KEY_BATCH, KEY_SEQ)
    return {
        "name": name, "stage": stage, "path": path, "bench_name": bench_name, "metrics": dev,
        "size_bytes": size_bytes,
        "p50_ms_b1_s128": p50,
        "p90_ms_b1_s128": timing(bench_name, "fixed", KEY_BATCH, KEY_SEQ, "p90_ms"),
        "p50_ms_real": timing(bench_name, "real-length", KEY_BATCH, None),
        "throughput_b32": timing(bench_name, "fixed", THROUGHPUT_BATCH, KEY_SEQ, "throughput"),
        "speedup_vs_teacher": round(teacher_p50 / p50, 3) if p50 and teacher_p50 else None,
        "speedup_vs_peer": round(peer_p50 / p50, 3) if p50 and peer_p50 else None,
    }


def speedup_grid(results: list[dict], teacher: str, final: str | None, peer: str | None = None) -> list[dict]:
    """Final artifact vs teacher (and vs the peer, when measured) at every fixed (batch, seq) point of the grid."""
    if final is None:
        return []
    grid = []
    for r in results:
        if r["artifact"] != final or r.get("mode", "fixed") != "fixed":
            continue
        base = _row(results, teacher, "fixed", r["batch_size"], r["seq_len"])
        if base and r["p50_ms"]:
            other = _row(results, peer, "fixed", r["batch_size"], r["seq_len"]) if peer else None
            grid.append({"batch_size": r["batch_size"], "seq_len": r["seq_len"], "final_p50_ms": r["p50_ms"],
                         "teacher_p50_ms": base["p50_ms"], "speedup": round(base["p50_ms"] / r["p50_ms"], 3),
                         "peer_p50_ms": other["p50_ms"] if other else None,
                         "speedup_vs_peer": round(other["p50_ms"] / r["p50_ms"], 3) if other else None})
    return grid


def markdown(report: dict) -> str:
    metric = report["metric"]
    m = report["machine"]
    cpu = m.get("cpu", {})
    lines = [f"# bertedge report: {report['recipe']} ({report['task']})", "",
             f"CPU: {cpu.get('model')} ({cpu.get('usable_cores')} cores, ISA class {cpu.get('isa', 'not recorded')}, "
             f"flags {' '.join(cpu.get('flags', []))}), "
             f"provider {m.get('provider')}, threads {m.get('threads')}  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()), "",
             f"| artifact | stage | dev {metric} | vs teacher (pts, loss < 0) | size (MB) | p50 b1 s128 (ms) | p90 b1 s128 (ms) | "
             f"p50 real b1 (ms) | b32 s128 (seq/s) | vs teacher | vs peer |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["artifacts"]:
        value = r["metrics"].get(metric)
        size = r["size_bytes"] / 1e6 if r["size_bytes"] else None
        lines.append(f"| {r['name']} | {r['stage']} | {_fmt(value, '.4f')} | {_change(r['metric_drop_pts'])} | "
                     f"{_fmt(size)} | {_fmt(r['p50_ms_b1_s128'])} | {_fmt(r['p90_ms_b1_s128'])} | "
                     f"{_fmt(r['p50_ms_real'])} | {_fmt(r['throughput_b32'], '.1f')} | "
                     f"{_fmt(r['speedup_vs_teacher'])}x{_dagger(r)} | {_fmt(r['speedup_vs_peer'])}x{_dagger(r)} |")
    if any(_dagger(r) for r in report["artifacts"]):
        lines += ["", "† an early-exit artifact: ratio of mean batch-1 latency over the dev inputs (section below). "
                  "Fixed shapes with random tokens say nothing about exits, so it has no fixed-shape figures."]
    b = report["budget"]
    budget_text = (f"Budget: drop ≤ {b['max_accuracy_drop']} pts on dev {metric}"
                   + (f", size ≤ {b['max_size_mb']} MB" if b.get("max_size_mb") else "")
                   + (f" (from the {b['from']})" if b.get("from", "recipe") != "recipe" else ""))
    if report.get("final"):
        final = report["final"]
        picked = f" (the search's pick, {final['search_pick']})" if final.get("search_pick") else ""
        lines += ["", f"{budget_text}. Final: {final['name']}{picked}, {log.points_change(b.get('final_drop_pts'))}, "
                  f"{_fmt(b.get('final_size_mb'))} MB — " + ("**met**" if b.get("met") else "**not met**") + "."]
        lines += ["", _batching_line(final)]
    else:
        what = "no candidate within budget" if report.get("search") else "no final artifact"
        lines += ["", f"{budget_text}. **Final: none — {what}.** Best within budget: "
                  + (f"**{b['best_within_budget']}**." if b.get("best_within_budget") else "none.")]
    if report.get("speedup_grid"):
        lines += ["", "Final artifact vs PyTorch fp32 teacher and vs the peer across the grid (p50):", "",
                  "| batch | seq | final (ms) | teacher (ms) | peer (ms) | vs teacher | vs peer |",
                  "|---|---|---|---|---|---|---|"]
        for g in report["speedup_grid"]:
            vs_peer = g.get("speedup_vs_peer")
            lines.append(f"| {g['batch_size']} | {g['seq_len']} | {_fmt(g['final_p50_ms'])} | "
                         f"{_fmt(g['teacher_p50_ms'])} | {_fmt(g.get('peer_p50_ms'))} | {_fmt(g['speedup'])}x | "
                         + ("–" if vs_peer is None else f"{vs_peer:.2f}x") + " |")
    if report.get("dev_inputs"):
        lines += ["", *_dev_inputs_markdown(report["dev_inputs"])]
    for section in report.get("search") or []:
        lines += ["", *_search_markdown(section, metric, Path(report["run_dir"]))]
    lines += ["", "Teacher = the first finetune artifact, PyTorch eager fp32. " + _peer_sentence(report)
              + " The grid's timings come from one bench run on this machine; its speed-ups are ratios of p50 latency "
              "at batch 1, seq 128" + ("; the dev-input rows come from a second run of their own." if
                                       report.get("dev_inputs") else "."),
              "", f"Timing method: {timing_method(report)}. CPU ISA class: "
              f"{(report.get('machine') or {}).get('cpu', {}).get('isa', 'not recorded')}."]
    return "\n".join(lines) + "\n"


def _dagger(row: dict) -> str:
    return "†" if row.get("speedup_basis") == "dev_mean_ms" else ""


def _dev_inputs_markdown(dev: dict) -> list[str]:
    rows = dev["rows"]
    n = rows[0]["n"] if rows else 0
    lines = [f"Teacher, peer and final at batch 1 over the {n} dev inputs, one run ({dev['method']}; "
             f"{dev['rounds']} rounds):", "",
             "| artifact | role | mode | dev accuracy (this pass) | mean exit layer | mean (ms) | p50 (ms) | p90 (ms) | "
             "vs teacher (mean) | vs peer (mean) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['role']} | {r['mode']} | {_fmt(r['accuracy'], '.4f')} | "
                     f"{_fmt(r['mean_exit_layer'])} | {_fmt(r['mean_ms'])} | {_fmt(r['p50_ms'])} | {_fmt(r['p90_ms'])} | "
                     f"{_fmt(r['speedup_vs_teacher'])}x | {_fmt(r['speedup_vs_peer'])}x |")
    return lines


def _search_markdown(section: dict, metric: str, run_dir: Path) -> list[str]:
    from .search_space import candidate_table, cost_line

    def rel(path: str | None) -> str:
        if not path:
            return "none"
        try:
            return str(Path(path).relative_to(run_dir))
        except ValueError:
            return path

    lines = [f"## Search: {section['step']} (from {section['source']})", ""]
    if not section.get("ran"):
        return lines + [f"Not run yet (no search.json in {section['dir']})."]
    budget = section["budget"]
    ranking = section.get("ranking") or {}
    teacher = section.get("teacher") or {}
    lines += [f"Search teacher: {section['source']} ({teacher.get('layers')} layers, dev {section.get('metric')} "
              f"{_fmt(teacher.get('value'), '.4f')}, p50 {_fmt(section.get('teacher_p50_ms'))} ms). Search budget: "
              f"drop ≤ {budget['max_accuracy_drop']} pts"
              + (f", size ≤ {budget['max_size_mb']} MB" if budget.get("max_size_mb") else "")
              + (f", wall clock ≤ {budget['max_hours']:g} h" if budget.get("max_hours") is not None else "")
              + (f". Ranking: {ranking['description']} (early-exit candidates: how deep an input goes depends on the "
                 "input); the p50 column is the fixed-shape bench of the teacher and the candidates without exits."
                 if ranking.get("key") == "dev_mean_ms" else
                 f". Ranking: p50 at batch {ranking.get('batch_size')}, seq {ranking.get('seq_len')}, one bench run "
                 "of the teacher and every final candidate."), "",
              *candidate_table(section["candidates"]), ""]
    if section.get("picked"):
        lines.append(f"**Picked: {section['picked']}** (fastest within the budget), copied to the step's artifact "
                     f"{rel(section['artifact'])}.")
    else:
        lines.append("**No candidate within budget**: the search step wrote no artifact.")
    against = "dev-input mean latency" if ranking.get("key") == "dev_mean_ms" else "p50"
    lines += [f"Pareto front (dev {metric} vs {against}): {', '.join(section.get('pareto_front') or []) or 'none'}.", "",
              cost_line(section), "",
              (f"Plot (dev {metric} vs p50 of the search's bench): {rel(section.get('plot'))}; every candidate's "
               f"details: {rel(section.get('search_md'))}.")]
    return lines


def _batching(artifact: Artifact) -> dict:
    """Whether the artifact's predictions depend on the rest of the batch (quantize records it)."""
    from .runtime import batch_invariant

    q = artifact.manifest.get("quantization") or {}
    invariant = batch_invariant(artifact.manifest) if artifact.is_bundle else True
    return {"batch_invariant": invariant, "deployed": q.get("deployed") or ("batched" if invariant else "per-sequence"),
            "b32_vs_b1": q.get("b32_vs_b1")}


def _batching_line(final: dict) -> str:
    batching = final.get("batching") or {}
    if batching.get("batch_invariant", True):
        return "Final artifact: batch-invariant (its predictions do not depend on the rest of the batch)."
    effect = batching.get("b32_vs_b1")
    line = ("Final artifact: **batch-dependent** int8 (activation scales computed over the whole batch); the runtime "
            "runs it one sequence at a time, which the dev metric and the b1 timings above measure")
    if effect:
        line += (f"; batched 32 at a time {effect['flips']} of {effect['n']} dev predictions would change "
                 f"(max |diff| {effect['max_abs_diff']:.3g})")
    return line + "."


def _change(drop_pts) -> str:
    return "-" if drop_pts is None else f"{-drop_pts + 0.0:+.2f}"


def timing_method(report: dict) -> str:
    """How a run report's timings were taken, in words (reports before process isolation say so)."""
    method = (report.get("bench") or {}).get("method")
    if not method:
        return ("**in-process timing, understated**: every target in one process, rounds interleaved call by call "
                "(PyTorch's spinning OpenMP threads slow the ONNX Runtime call that follows); not yet re-measured")
    return method["description"]


def load_report(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / REPORT_JSON).read_text(encoding="utf-8"))
