"""Reports of a `run_bench` result: Markdown table, PNG plots (matplotlib Agg), files in --out.

- `markdown_table(report)`: one row per (target, grid point), with the speedup over the first target
  at the same point (p50 over p50, the ratio that survives a noisy machine).
- `plot_latency(report, path)`: p50 latency against sequence length, one line per target, one panel
  per batch size (whiskers up to p90).
- `plot_pareto(report, path)`: dev metric against p50 latency at one reference point, the
  accuracy-vs-latency trade-off; the Pareto frontier is drawn as a step line.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BenchError

REFERENCE_SEQ = 128


def primary_metric(task: str, metrics: dict) -> tuple[str, float] | None:
    """(name, value) of the task's primary dev metric in a manifest's metrics, if recorded."""
    from ..tasks import get_task

    name = get_task(task).primary_metric
    for scope in (metrics.get("dev"), metrics):
        if isinstance(scope, dict) and isinstance(scope.get(name), (int, float)):
            return name, float(scope[name])
    return None


def pareto_points(report: dict) -> list[dict]:
    """Targets that carry a dev metric, each with its p50 at the reference point."""
    ref = reference_point(report)
    points = []
    for art in report["artifacts"]:
        metric = primary_metric(art["task"], art.get("metrics") or {})
        row = next((r for r in report["results"] if r["artifact"] == art["artifact"] and _key(r) == ref), None)
        if metric and row:
            points.append({"artifact": art["artifact"], "task": art["task"], "metric": metric[0],
                           "value": metric[1], "p50_ms": row["p50_ms"], "p90_ms": row["p90_ms"]})
    return points


def check_pareto_tasks(artifacts: list[dict]) -> None:
    """One accuracy axis needs one task: refuse to mix tasks among targets that carry metrics."""
    by_task: dict[str, list[str]] = {}
    for art in artifacts:
        if primary_metric(art["task"], art.get("metrics") or {}):
            by_task.setdefault(art["task"], []).append(art["artifact"])
    if len(by_task) > 1:
        found = "; ".join(f"{task}: {', '.join(names)}" for task, names in by_task.items())
        raise BenchError(f"cannot put artifacts of different tasks on one accuracy-vs-latency plot ({found})",
                         where="ARTIFACT", fix="Benchmark one task per run, or pass --no-pareto")


def _key(row: dict) -> tuple:
    return (row["mode"], row["batch_size"], row["seq_len"], row.get("instances", 1))


def reference_point(report: dict) -> tuple:
    """The grid point the Pareto view uses: smallest batch, fixed length closest to 128, else real lengths."""
    rows = report["results"]
    if not rows:
        return ()
    batch = min(r["batch_size"] for r in rows)
    fixed = sorted({r["seq_len"] for r in rows if r["mode"] == "fixed" and r["batch_size"] == batch})
    if fixed:
        seq = min(fixed, key=lambda s: (abs(s - REFERENCE_SEQ), s))
        return ("fixed", batch, seq, rows[0].get("instances", 1))
    return ("real-length", batch, None, rows[0].get("instances", 1))


def _fmt(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def markdown_table(report: dict) -> str:
    machine = report["machine"]
    cpu = machine["cpu"]
    lines = [
        "# bertedge bench",
        "",
        (f"Provider {machine['provider']}, {machine['threads']} thread(s) x {machine.get('instances', 1)} instance(s); "
         f"CPU {cpu.get('model')} ({cpu.get('usable_cores')} usable cores, ISA class {cpu.get('isa', '?')}, "
         f"flags {' '.join(cpu.get('flags') or []) or 'none'}); "
         f"estimated peak {_fmt(machine['peak']['fp32']['peak_gflops'], '.1f')} GFLOP/s fp32, "
         f"{_fmt(machine['peak']['int8']['peak_gflops'], '.1f')} GOP/s int8."),
        "",
        ("| artifact | backend | precision | mode | batch | seq | p50 ms | p90 ms | p99 ms | stdev ms | seq/s "
         "| x first | GFLOP/s | % peak | size MB | params M | model RSS MB | peak RSS MB |"),
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    first: dict[tuple, float] = {}
    for row in report["results"]:
        first.setdefault(_key(row), row["p50_ms"])
    arts = {a["artifact"]: a for a in report["artifacts"]}
    for row in report["results"]:
        seq = str(row["seq_len"]) if row["seq_len"] is not None else f"real (~{row['mean_seq_len']:.0f})"
        params = row.get("parameters")
        rss = arts.get(row["artifact"], {}).get("model_rss_mb")
        lines.append(
            f"| {row['artifact']} | {row['backend']} | {row['precision']} | {row['mode']} | {row['batch_size']} | {seq} "
            f"| {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['stdev_ms']:.2f} "
            f"| {row['throughput']:.1f} | {first[_key(row)] / row['p50_ms']:.2f} | {_fmt(row.get('gflops'), '.1f')} "
            f"| {_fmt(row['peak_fraction'] * 100 if row.get('peak_fraction') is not None else None, '.1f')} "
            f"| {row['size_bytes'] / 2**20:.1f} | {_fmt(params / 1e6 if params else None, '.2f')} "
            f"| {_fmt(rss, '.0f')} | {row['peak_rss_mb']:.0f} |")
    points = pareto_points(report)
    if points:
        ref = reference_point(report)
        lines += ["", f"Accuracy vs latency (p50 at batch {ref[1]}, seq {ref[2] or 'real lengths'}):", "",
                  "| artifact | dev metric | p50 ms |", "|---|---:|---:|"]
        for p in points:
            lines.append(f"| {p['artifact']} | {p['metric']} {p['value']:.4f} | {p['p50_ms']:.2f} |")
    method = report.get("method") or {"description": "not recorded (before process isolation: in-process, "
                                                     "interleaved call by call)"}
    lines += ["", "x first: p50 of the first artifact over p50 of this one at the same grid point (above 1 = faster).",
              f"Timing method: {method['description']}. Compare ratios measured in the same run."]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subtitle(report: dict) -> str:
    machine = report["machine"]
    return (f"{machine['cpu'].get('model')}, {machine['provider']}, {machine['threads']} thread(s)"
            + (f" x {machine['instances']} instances" if machine.get("instances", 1) > 1 else ""))


def plot_latency(report: dict, path: str | Path) -> Path | None:
    """p50 latency vs sequence length per target, a panel per batch size; None without fixed rows."""
    rows = [r for r in report["results"] if r["mode"] == "fixed"]
    if not rows:
        return None
    plt = _pyplot()
    batches = sorted({r["batch_size"] for r in rows})
    names = list(dict.fromkeys(r["artifact"] for r in rows))
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for name in names:
            points = sorted((r["seq_len"], r["p50_ms"], r["p90_ms"]) for r in rows
                            if r["artifact"] == name and r["batch_size"] == batch)
            xs, p50, p90 = zip(*points)
            ax.errorbar(xs, p50, yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p90)]], marker="o",
                        capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        seqs = sorted({r["seq_len"] for r in rows})
        ax.set_xticks(seqs)
        ax.set_xticklabels([str(s) for s in seqs])
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("p50 latency per batch (ms, whisker to p90)")
        ax.set_title(f"batch size {batch}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Latency vs sequence length — {_subtitle(report)}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(report: dict, path: str | Path) -> Path | None:
    """Dev metric vs p50 at the reference point; None when no target carries a metric."""
    check_pareto_tasks(report["artifacts"])
    points = pareto_points(report)
    if not points:
        return None
    plt = _pyplot()
    ref = reference_point(report)
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, p in enumerate(sorted(points, key=lambda p: p["p50_ms"])):
        ax.scatter(p["p50_ms"], p["value"], s=45, zorder=3)
        # Staggered offsets keep labels of near-identical points readable.
        ax.annotate(p["artifact"], (p["p50_ms"], p["value"]), textcoords="offset points",
                    xytext=(6, 4 + 11 * (i % 4)), fontsize=8,
                    arrowprops={"arrowstyle": "-", "alpha": 0.4} if i % 4 else None)
    latencies = [p["p50_ms"] for p in points]
    if min(latencies) > 0 and max(latencies) / min(latencies) > 20:
        ax.set_xscale("log")
    frontier, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p["p50_ms"], -p["value"])):
        if p["value"] > best:
            frontier.append(p)
            best = p["value"]
    if len(frontier) > 1:
        ax.step([p["p50_ms"] for p in frontier], [p["value"] for p in frontier], where="post",
                color="gray", linestyle="--", alpha=0.7, label="Pareto frontier")
        ax.legend(fontsize=8)
    seq = f"seq {ref[2]}" if ref[2] else "real dev lengths"
    ax.set_xlabel(f"p50 latency (ms), batch {ref[1]}, {seq}")
    ax.set_ylabel(f"dev {points[0]['metric']} ({points[0]['task']})")
    ax.set_title(f"Accuracy vs latency — {_subtitle(report)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_out_dir(out: str | Path) -> Path:
    """Refuse an unusable --out before any benchmarking; creates nothing."""
    import os

    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise BenchError("output path exists and is a file", where=str(out), fix="Choose a directory for --out")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BenchError(f"cannot write here: {existing} is read-only", where=str(out), fix="Choose a writable --out")
    return out


def write_reports(report: dict, out: str | Path, *, pareto: bool = True) -> dict[str, str]:
    """bench.json, bench.md, latency_vs_seq.png and (with metrics) pareto.png in `out`."""
    import json

    out = check_out_dir(out)
    if pareto:
        check_pareto_tasks(report["artifacts"])
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "bench.json", "markdown": out / "bench.md"}
    files["json"].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    files["markdown"].write_text(markdown_table(report), encoding="utf-8")
    latency = plot_latency(report, out / "latency_vs_seq.png")
    if latency:
        files["latency_plot"] = latency
    if pareto:
        front = plot_pareto(report, out / "pareto.png")
        if front:
            files["pareto_plot"] = front
    return {k: str(v) for k, v in files.items()}
