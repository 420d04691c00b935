"""trim-vocab: keep only the wordpieces the task's text uses (the embedding matrix shrinks with them)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import EvalBatchSize, Overwrite, data_options, emit_json, split_names
from .root import app


@app.command("trim-vocab")
def trim_vocab(
    artifact: Annotated[Path, typer.Argument(help="PyTorch artifact (finetune, distill or prune output).")],
    out: Annotated[Path, typer.Option("--out", help="Output artifact directory.")],
    splits: Annotated[str, typer.Option(help="Splits whose text is counted: train (dev and test never are).")] = "train",
    unlabeled: Annotated[list[Path] | None, typer.Option(
        "--unlabeled", help="Unlabeled in-domain text also counted (.txt one example a line, or .jsonl); "
                            "repeatable. Examples equal to a dev or test example are left out.")] = None,
    min_count: Annotated[int, typer.Option(help="Keep a counted token seen at least this many times.")] = 1,
    max_size: Annotated[int | None, typer.Option(help="Largest vocabulary, special and character tokens "
                                                      "included (the most frequent tokens fill the rest).")] = None,
    keep_chars: Annotated[str, typer.Option(help="Single-character pieces kept so that unseen words split into "
                                                 "pieces instead of [UNK]: all, ascii (English text) "
                                                 "or none.")] = "all",
    dropped: Annotated[str, typer.Option(help="Tokens not kept: split (the tokenizer forgets them), nearest "
                                              "(tokenizer unchanged; each shares its most similar kept token's "
                                              "row) or cluster (they share k-means centroid rows).")] = "split",
    clusters: Annotated[int | None, typer.Option(help="With --dropped cluster: how many of the --max-size rows are "
                                                      "centroids (default: an eighth).")] = None,
    data: Annotated[str | None, typer.Option(help="Data (defaults to the one the artifact records).")] = None,
    max_train_samples: Annotated[int | None, typer.Option(help="Count a seeded subset of the train split.")] = None,
    max_eval_samples: Annotated[int | None, typer.Option(help="Evaluate on a seeded dev subset.")] = None,
    eval_batch_size: EvalBatchSize = 64,
    overwrite: Overwrite = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Trim the vocabulary to the tokens the task's text uses; the embedding matrix keeps only their rows."""
    from ..config import build
    from ..stages.vocab import TrimVocabConfig
    from ..stages.vocab import trim_vocab as run_trim

    config = build(TrimVocabConfig, {
        "splits": split_names([splits]), "unlabeled": [str(u) for u in unlabeled or []], "min_count": min_count,
        "max_size": max_size,
        "keep_chars": keep_chars, "dropped": dropped, "clusters": clusters, "eval_batch_size": eval_batch_size,
        "data": data_options(data, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples),
    })
    with contextlib.redirect_stdout(sys.stderr):
        result = run_trim(artifact, config, out, overwrite=overwrite)
    record = result.manifest["vocab"]
    metric = result.manifest.get("primary_metric")
    if json_out:
        emit_json({"artifact": str(result.path), "task": result.task, "vocab": record,
                   "metrics": result.manifest["metrics"], "parameters": result.manifest.get("parameters")})
        return
    before, after = result.manifest["metrics"]["dev_before"], result.manifest["metrics"]["dev"]
    typer.echo(f"wrote {result.path}")
    shared = record.get("shared_rows")
    kept_to = (f"{record['vocab_before']:,} tokens (tokenizer unchanged) sharing {record['embedding_rows']:,} rows"
               if shared else f"{record['vocab_before']:,} -> {record['vocab_after']:,} tokens")
    typer.echo(f"  vocabulary {kept_to} "
               f"({record['special']} special, {record['single_characters']} single characters, "
               f"{record['counted_kept']:,} counted in {', '.join(record['counted_splits'])}"
               + (f" + {record['unlabeled']['examples']:,} unlabeled examples" if record.get("unlabeled") else "")
               + ")"
               + (f"; {shared['dropped_tokens']:,} dropped tokens share "
                  + (f"{shared['centroids']:,} centroid rows" if shared["centroids"] else "their nearest kept row")
                  if shared else ""))
    typer.echo(f"  embedding parameters {record['embedding_parameters_before']:,} -> "
               f"{record['embedding_parameters_after']:,}" + (" once exported (export stores each row once)"
                                                              if shared else ""))
    typer.echo(f"  dev {metric} {before.get(metric, float('nan')):.4f} -> {after.get(metric, float('nan')):.4f}; "
               f"dev [UNK] rate {record['dev_unk_rate_before']:.2%} -> {record['dev_unk_rate_after']:.2%}")
