"""Write the headline result (benchmarks/results/sst2-headline.md/.json) from one finished SST-2 run.

    python benchmarks/sst2_headline.py RUN_DIR --command "bertedge run recipes/sst2.yaml --out RUN_DIR"

Everything comes from the run's report.json — one interleaved bench of every artifact, the PyTorch
fp32 teacher and the peer path (optimum export + ORT dynamic int8 of the teacher) on this machine — so
the speed-ups compare like with like. The script checks the four headline targets on the final
artifact (>= 10x the teacher and >= 5x the peer at batch 1 x seq 128, <= 1.0 dev point below the
teacher, <= 8 MB), says by how much each one is missed, and tabulates the speed-up over every
batch x seq point of the run's grid (the recipe's grid is batch 1-64 x seq 32-512).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import ROOT, write_results

sys.path.insert(0, str(ROOT))
from bertedge.report import timing_method  # noqa: E402

TARGETS = {"speedup_vs_teacher": 10.0, "speedup_vs_peer": 5.0, "max_drop_pts": 1.0, "max_size_mb": 8.0}


def grid(report: dict) -> list[dict]:
    """The report's speed-up grid, recomputed with the report's own function from its stored bench results
    (a report written before the grid carried the peer columns gets them too)."""
    from bertedge.report import speedup_grid

    names = {a["name"]: a.get("bench_name") or a["name"] for a in report["artifacts"]}
    peer = names.get(report["peer"]["name"]) if report.get("peer") else None
    return speedup_grid(report["bench"]["results"], names[report["teacher"]["name"]], report["final"]["bench_name"],
                         peer)


def checks(report: dict) -> list[dict]:
    final = report["final"]
    size_mb = final["size_bytes"] / 1e6
    drop = final["metric_drop_pts"]
    out = [
        {"target": "speed-up vs PyTorch fp32 teacher, b1 s128", "want": f">= {TARGETS['speedup_vs_teacher']:g}x",
         "got": f"{final['speedup_vs_teacher']:.2f}x", "met": final["speedup_vs_teacher"] >= TARGETS["speedup_vs_teacher"],
         "short_by": f"{TARGETS['speedup_vs_teacher'] / final['speedup_vs_teacher']:.2f}x more speed needed"},
        {"target": "speed-up vs peer (optimum + ORT dynamic int8), b1 s128", "want": f">= {TARGETS['speedup_vs_peer']:g}x",
         "got": f"{final['speedup_vs_peer']:.2f}x", "met": final["speedup_vs_peer"] >= TARGETS["speedup_vs_peer"],
         "short_by": f"{TARGETS['speedup_vs_peer'] / final['speedup_vs_peer']:.2f}x more speed needed"},
        {"target": f"dev {report['metric']} below the teacher", "want": f"<= {TARGETS['max_drop_pts']:g} pt",
         "got": f"{drop:.2f} pt", "met": drop <= TARGETS["max_drop_pts"],
         "short_by": f"{drop - TARGETS['max_drop_pts']:.2f} pt too many lost"},
        {"target": "model size", "want": f"<= {TARGETS['max_size_mb']:g} MB", "got": f"{size_mb:.2f} MB",
         "met": size_mb <= TARGETS["max_size_mb"], "short_by": f"{size_mb - TARGETS['max_size_mb']:.2f} MB too large"},
    ]
    for c in out:
        if c["met"]:
            c["short_by"] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--command", required=True, help="the exact command that produced the run")
    parser.add_argument("--name", default="sst2-headline", help="results file name (default: sst2-headline)")
    parser.add_argument("--notes", type=Path, help="markdown appended as '## Reading the result' (the analysis)")
    args = parser.parse_args()
    report = json.loads((args.run_dir / "report.json").read_text())
    rows, verdicts = grid(report), checks(report)
    met = all(c["met"] for c in verdicts)
    teacher, final, peer = report["teacher"], report["final"], report.get("peer") or {}
    metric = report["metric"]

    md = [f"# Headline: {report['recipe']} ({report['task']}) — {'all targets met' if met else 'targets NOT all met'}", "",
          (f"Run: `{args.command}`; report built {report['created_at']} (one bench of every artifact, the teacher "
           f"and the peer). Full report: benchmarks/results/recipes/{report['recipe']}/report.md."), "",
          f"Timing method: {timing_method(report)}.  ",
          f"CPU ISA class: **{(report.get('machine') or {}).get('cpu', {}).get('isa', 'not recorded')}** "
          "(int8 gains differ a lot between AVX2 without VNNI and AVX-512 with VNNI).", "",
          "| target | want | measured | met | short by |", "|---|---|---|---|---|"]
    md += [f"| {c['target']} | {c['want']} | {c['got']} | {'yes' if c['met'] else 'NO'} | {c['short_by'] or '–'} |"
           for c in verdicts]
    md += ["", "| artifact | stage | dev " + metric + " | size | p50 b1 s128 | vs teacher | vs peer |",
           "|---|---|---|---|---|---|---|"]
    for a in report["artifacts"]:
        value = (a.get("metrics") or {}).get(metric)
        md.append(f"| {a['name']} | {a['stage']} | {value:.4f} | {a['size_bytes'] / 1e6:.1f} MB | "
                  f"{a['p50_ms_b1_s128']:.2f} ms | {a['speedup_vs_teacher']:.2f}x | "
                  f"{a['speedup_vs_peer']:.2f}x |" if value is not None and a.get("p50_ms_b1_s128") else
                  f"| {a['name']} | {a['stage']} | – | – | – | – | – |")
    md += ["", f"Speed-up of the final artifact (`{final['name']}`) over the grid, p50 latency:", "",
           "| batch | seq | final | teacher (PyTorch fp32) | peer | vs teacher | vs peer |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['batch_size']} | {r['seq_len']} | {r['final_p50_ms']:.2f} ms | {r['teacher_p50_ms']:.2f} ms | "
                  + (f"{r['peer_p50_ms']:.2f} ms" if r["peer_p50_ms"] else "–") + f" | {r['speedup']:.2f}x | "
                  + (f"{r['speedup_vs_peer']:.2f}x" if r["speedup_vs_peer"] else "–") + " |")
    md += ["", (f"Teacher dev {metric} {(teacher.get('metrics') or {}).get(metric, float('nan')):.4f}; final "
                f"{(final.get('metrics') or {}).get(metric, float('nan')):.4f}; peer "
                f"{(peer.get('metrics') or {}).get(metric, float('nan')):.4f}.")]
    if args.notes:
        md += ["", "## Reading the result", "", args.notes.read_text().strip()]
    write_results(args.name, {"run_command": args.command, "run_dir": str(args.run_dir), "all_met": met,
                              "targets": TARGETS, "checks": verdicts, "grid": rows,
                              "final": final, "teacher": teacher, "peer": peer,
                              "report_created_at": report["created_at"], "timing_method": timing_method(report),
                              "isa": (report.get("machine") or {}).get("cpu", {}).get("isa")},
                  "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
