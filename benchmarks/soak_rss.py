"""Resident memory of `runtime.Bundle` over 10,000 predictions of random lengths, per ONNX Runtime memory option.
Writes benchmarks/results/soak-rss.{json,md}.

    python benchmarks/soak_rss.py                      # a tiny random BERT (2 layers, hidden 32, 512 positions)
    python benchmarks/soak_rss.py --bundle DIR         # any exported bundle (lengths up to its max_length)

Every configuration (CPU arena on/off x memory patterns on/off; "default" is ORT's own, both on) runs in a fresh
spawned process: load the bundle, then one-text predictions whose token counts are drawn uniformly from
3..max_length (seeded, the same sequence for every configuration), RSS sampled every 100 calls. The table
compares the max RSS of the first 1,000 calls after a 1,000-call warm-up with the max RSS of the last 1,000
calls (growth = last - first), and the cost per call. The configurations run one after another, never at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import ROOT, write_results

sys.path.insert(0, str(ROOT))

CONFIGS = {
    "default (arena on, patterns on)": {},
    "arena off": {"cpu_mem_arena": False},
    "patterns off": {"mem_pattern": False},
    "arena off, patterns off": {"cpu_mem_arena": False, "mem_pattern": False},
}


def tiny_bundle(root: Path) -> Path:
    """The test suite's tiny random BERT (tests/conftest.py) with 512 positions, fine-tuned 1 epoch, exported."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_bert, finetune_tiny, write_classification_dir

    from bertedge.stages.export import ExportConfig, export

    model = build_tiny_bert(root / "model", max_position=512)
    data = write_classification_dir(root / "sst")
    artifact = finetune_tiny(model, data, "text-classification", root / "artifact", epochs=1.0, max_length=512)
    return export(artifact, ExportConfig(), root / "bundle").path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="An exported bundle (default: build the tiny one)")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="Intra-op threads of every session")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from bertedge.bench.soak import soak_in_fresh_process

    with tempfile.TemporaryDirectory(prefix="soak-rss-") as tmp:
        bundle = args.bundle or tiny_bundle(Path(tmp))
        rows = {}
        for name, options in CONFIGS.items():
            print(f"soak: {name} ...", file=sys.stderr, flush=True)
            rows[name] = soak_in_fresh_process(bundle, options, calls=args.calls, seed=args.seed, sample_every=100,
                                               threads=args.threads)
            s = rows[name]["summary"]
            print(f"soak: {name}: first {s['first_window_max_mb']} MB, last {s['last_window_max_mb']} MB, "
                  f"growth {s['growth_mb']} MB, {rows[name]['ms_per_call']} ms/call", file=sys.stderr, flush=True)
        bundle_name = "tiny random BERT (2 layers, hidden 32, 512 positions)" if args.bundle is None else str(bundle)

    first = next(iter(rows.values()))
    lines = ["# RSS over 10,000 predictions of random lengths, per ONNX Runtime memory option", "",
             f"Bundle: {bundle_name}. {args.calls:,} one-text `Bundle.predict` calls, lengths drawn uniformly from "
             f"3..{first['max_tokens']} tokens (seed {args.seed}, {first['distinct_lengths']} distinct lengths), "
             f"{args.threads} intra-op thread(s), each configuration in a fresh process. Warm-up: the first "
             f"{first['summary']['warmup_calls']:,} calls; 'first' is the max RSS of the next "
             f"{first['summary']['window']:,}, 'last' the max RSS of the final {first['summary']['window']:,}.", "",
             "| options | RSS after load MB | max in warm-up MB | first window max MB | last window max MB | "
             "growth MB | peak MB | ms per call |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        s = r["summary"]
        lines.append(f"| {name} | {r['rss_before_mb']:.1f} | {s['warmup_max_mb']:.1f} | {s['first_window_max_mb']:.1f} "
                     f"| {s['last_window_max_mb']:.1f} | {s['growth_mb']:+.1f} | {s['peak_mb']:.1f} | "
                     f"{r['ms_per_call']:.2f} |")
    lines += ["", "RSS curve (MB, every 1,000 calls):", "",
              "| options | " + " | ".join(f"{k:,}" for k in range(1000, args.calls + 1, 1000)) + " |",
              "|---|" + "---|" * (args.calls // 1000)]
    for name, r in rows.items():
        at = dict(r["samples"])
        lines.append(f"| {name} | " + " | ".join(f"{at.get(k, float('nan')):.1f}"
                                                for k in range(1000, args.calls + 1, 1000)) + " |")
    data = {"bundle": bundle_name, "calls": args.calls, "threads": args.threads, "seed": args.seed,
            "configs": {name: {**r, "options": CONFIGS[name]} for name, r in rows.items()}}
    json_path, md_path = write_results("soak-rss", data, "\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
