"""What trimming the vocabulary costs, by what becomes of the dropped tokens (trim-vocab's --dropped).

    python benchmarks/trim_modes.py ARTIFACT --runs split:8000,nearest:8000,cluster:8000 --name trim-modes-sst2

Each run is `trim-vocab --keep-chars ascii --dropped MODE --max-size ROWS [--clusters N]` (MODE:ROWS[:N]) on
the same artifact, counted on its train split; the table gives the dev metric before and after and the
embedding rows the exported bundle stores. Nothing is timed. `split` re-tokenizes dropped words into kept
pieces; `nearest` and `cluster` keep the tokenizer and share rows (docs/vocab.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import ROOT, write_results

sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="a PyTorch artifact")
    parser.add_argument("--runs", default="split:8000,nearest:8000,cluster:8000")
    parser.add_argument("--keep-chars", default="ascii")
    parser.add_argument("--name", default="trim-modes")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    from bertedge.artifacts import load_artifact
    from bertedge.stages.vocab import TrimVocabConfig, trim_vocab

    art = load_artifact(args.artifact)
    metric = art.manifest.get("primary_metric") or "accuracy"
    rows = []
    for spec in args.runs.split(","):
        mode, size, *clusters = spec.split(":")
        config = TrimVocabConfig(keep_chars=args.keep_chars, dropped=mode, max_size=int(size),
                                 clusters=int(clusters[0]) if clusters else None)
        with tempfile.TemporaryDirectory(prefix="bertedge-trim-") as tmp:
            out = trim_vocab(art, config, Path(tmp) / "tv")
            vocab, metrics = out.manifest["vocab"], out.manifest["metrics"]
        shared = vocab.get("shared_rows") or {}
        rows.append({"dropped": mode, "max_size": int(size), "embedding_rows": vocab["embedding_rows"],
                     "kept_tokens": shared.get("kept", vocab["vocab_after"]), "centroids": shared.get("centroids", 0),
                     "dev_before": round(metrics["dev_before"][metric], 4), "dev_after": round(metrics["dev"][metric], 4),
                     "cost_pts": round((metrics["dev_before"][metric] - metrics["dev"][metric]) * 100, 2),
                     "dev_unk_rate_after": vocab["dev_unk_rate_after"]})
        print(rows[-1], flush=True)
    lines = [f"# Vocabulary trim by dropped-token mode ({art.path.name})", "",
             f"Artifact: `{args.artifact}`, dev {metric} untrimmed {rows[0]['dev_before']:.4f}; every run keeps "
             f"`--keep-chars {args.keep_chars}` and counts the train split. Rows = the word-embedding rows the "
             "exported bundle stores (kept tokens + centroids)." + (f"\n\n**Note:** {args.note}" if args.note else ""),
             "", f"| dropped | max_size | kept tokens | centroids | dev {metric} | cost (pts) | dev [UNK] rate |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['dropped']} | {r['max_size']:,} | {r['kept_tokens']:,} | {r['centroids']:,} | "
              f"{r['dev_after']:.4f} | {r['cost_pts']:.2f} | {r['dev_unk_rate_after']:.2%} |" for r in rows]
    write_results(args.name, {"artifact": str(args.artifact), "metric": metric, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
