"""How much a low-rank word-embedding matrix costs a text classifier before any recovery training.

    python benchmarks/embedding_rank.py ARTIFACT --ranks 384,256,192,128,96,64 --name embedding-rank-sst2

The word-embedding matrix E (vocab x hidden) is replaced by its best rank-r approximation (truncated SVD),
which is what a factorized embedding (vocab x r, then r x hidden) would start from; the dev accuracy is
measured with the artifact's own tokenizer and dev split. It answers whether factorizing the embedding
(every token kept) is a better way to meet a size budget than trimming the vocabulary (tokens dropped).
For each rank it also gives the int8 bytes of a factorized embedding of the full and the train-only
vocabulary (`--train-vocab`), so the size side is in the same table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import ROOT, write_results

sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="a text-classification PyTorch artifact")
    parser.add_argument("--ranks", default="384,256,192,128,96,64")
    parser.add_argument("--train-vocab", type=int, default=None, help="tokens the train split uses, for sizes")
    parser.add_argument("--name", default="embedding-rank")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    import torch

    from bertedge.artifacts import load_artifact
    from bertedge.data import load_data
    from bertedge.evaluate import artifact_data_spec, artifact_settings, evaluate_split
    from bertedge.modeling import encoder_from_hf, load_torch_artifact

    art = load_artifact(args.artifact)
    model, tok = load_torch_artifact(art)
    model.eval()
    spec, columns = artifact_data_spec(art, None)  # the dev split the artifact was judged on
    data = load_data(spec, art.task, columns=columns, labels=art.labels)
    dev = data.split("dev")
    encoder, settings = encoder_from_hf(tok), artifact_settings(art)
    weight = model.base_model.embeddings.word_embeddings.weight
    u, s, vh = torch.linalg.svd(weight.data.clone(), full_matrices=False)
    vocab, hidden = weight.shape

    def int8_mb(tokens: int | None, rank: int) -> float | None:
        """Bytes of an int8 embedding of `tokens` rows: factorized (tokens x rank + rank x hidden) below full rank."""
        if tokens is None:
            return None
        return round(((tokens + hidden) * rank if rank < hidden else tokens * hidden) / 1e6, 2)

    rows = []
    for r in [int(x) for x in args.ranks.split(",")]:
        weight.data = (u[:, :r] * s[:r]) @ vh[:r]
        metrics = evaluate_split(model, encoder, art.task, dev, settings, data.labels, 64)
        rows.append({"rank": r, "dev_accuracy": round(metrics["accuracy"], 4),
                     "int8_mb_full_vocab": int8_mb(vocab, r), "int8_mb_train_vocab": int8_mb(args.train_vocab, r)})
        print(rows[-1], flush=True)
    lines = [f"# Low-rank word embeddings: dev accuracy before any recovery ({art.path.name})", "",
             f"Artifact: `{args.artifact}` ({vocab:,} x {hidden} word embeddings, dev {len(dev)} examples). "
             "Rank = hidden size is the artifact unchanged. Sizes are the factorized embedding's int8 bytes "
             "((vocab + hidden) x rank), full vocabulary and train-only vocabulary."
             + (f"\n\n**Note:** {args.note}" if args.note else ""), "",
             "| rank | dev accuracy | int8 MB, full vocab | int8 MB, train vocab |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['rank']} | {r['dev_accuracy']:.4f} | {r['int8_mb_full_vocab']} | {r['int8_mb_train_vocab']} |"
              for r in rows]
    write_results(args.name, {"artifact": str(args.artifact), "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
