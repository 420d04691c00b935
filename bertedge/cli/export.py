"""export, predict."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import emit_json
from .root import app


@app.command()
def export(
    artifact: Annotated[Path, typer.Argument(help="Fine-tuned PyTorch artifact (finetune, distill or prune output).")],
    out: Annotated[Path, typer.Option("--out", help="Output bundle directory.")],
    exporter: Annotated[str, typer.Option(help="bertedge (torch.onnx.export, any transformers) or optimum "
                                               "(optimum-onnx; pip install 'bertedge[optimum]', legacy stack).")]
    = "bertedge",
    opset: Annotated[int, typer.Option(help="ONNX opset (14-20).")] = 17,
    optimize: Annotated[bool, typer.Option("--optimize/--no-optimize",
                                           help="Fuse Attention, SkipLayerNormalization, BiasGelu, "
                                                "EmbedLayerNormalization with ONNX Runtime's optimizer.")] = True,
    embed_layer_norm: Annotated[bool, typer.Option("--embed-layer-norm/--no-embed-layer-norm",
                                                   help="With --optimize: fuse the embeddings too.")] = True,
    raw_attention_mask: Annotated[bool, typer.Option(help="Fused attention reads the raw 0/1 mask (any padding "
                                                          "side) instead of a right-padding length.")] = False,
    ort_format: Annotated[bool, typer.Option("--ort-format", help="Also write model.ort + required_operators.config "
                                                                  "(ONNX Runtime mobile/minimal builds).")] = False,
    layout: Annotated[str, typer.Option(help="bertedge, or transformers.js: also onnx/model.onnx (a hard link) and "
                                             "config.json for @huggingface/transformers pipelines.")] = "bertedge",
    with_tokenizer: Annotated[bool, typer.Option("--with-tokenizer", help="Also write model_with_tokenizer.onnx: raw "
                                                 "text in, label and scores out (onnxruntime-extensions ops; "
                                                 "single-sentence classification; pip install 'bertedge[tokenizer]').")] = False,
    atol: Annotated[float, typer.Option(help="Largest allowed |ONNX - PyTorch| per output on dev samples.")] = 1e-4,
    metric_samples: Annotated[Optional[int], typer.Option(help="Dev examples for the metric check (seeded subset).")] = 1000,
    all_samples: Annotated[bool, typer.Option("--all-samples", help="Validate on the whole dev split.")] = False,
    min_agreement: Annotated[float, typer.Option(help="Fraction of dev predictions that must agree.")] = 0.995,
    max_metric_delta: Annotated[float, typer.Option(help="Largest metric difference (0.001 = 0.1 point).")] = 0.001,
    data: Annotated[Optional[str], typer.Option(help="Dev data (defaults to the one recorded in the manifest).")] = None,
    batch_size: Annotated[int, typer.Option(help="Validation batch size.")] = 32,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle at --out.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the bundle summary as JSON.")] = False,
) -> None:
    """Export to a validated ONNX bundle (model.onnx + tokenizer + manifest), fused for ONNX Runtime."""
    from ..config import build
    from ..stages.export import ExportConfig
    from ..stages.export import export as run_export

    config = build(ExportConfig, {
        "exporter": exporter, "opset": opset, "optimize": optimize, "embed_layer_norm": embed_layer_norm,
        "raw_attention_mask": raw_attention_mask, "ort_format": ort_format, "layout": layout,
        "with_tokenizer": with_tokenizer, "atol": atol,
        "metric_samples": None if all_samples else metric_samples, "min_agreement": min_agreement,
        "max_metric_delta": max_metric_delta, "batch_size": batch_size, "data": data,
    })
    bundle = run_export(artifact, config, out, overwrite=overwrite)
    if bundle.manifest.get("early_exit"):
        _early_exit_summary(bundle, json_out)
        return
    summary = {"bundle": str(bundle.path), "task": bundle.task,
               "fused_node_counts": bundle.manifest["onnx"]["fused_node_counts"],
               "validation": bundle.manifest["validation"], "metrics": bundle.metrics,
               "ort_format": bundle.manifest["onnx"].get("ort_format"),
               "tokenizer_in_graph": bundle.manifest.get("tokenizer_in_graph")}
    if json_out:
        emit_json(summary)
        return
    v = bundle.manifest["validation"]
    typer.echo(f"wrote {bundle.path}")
    for name, r in v["outputs"].items():
        typer.echo(f"  {name:<14} max abs diff {r['max_abs_diff']:.2e} (atol {v['atol']:.0e})")
    m = v["metric"]
    typer.echo(f"  {m['name']:<14} onnx {m['onnx']:.4f} torch {m['torch']:.4f} on {v['examples']} dev examples; "
               f"predictions agree {v['agreement']:.2%}")
    fused = summary["fused_node_counts"]
    if fused:
        typer.echo("  fused: " + ", ".join(f"{k} {n}" for k, n in fused.items()))
    ort = summary["ort_format"]
    if ort:
        typer.echo(f"  {ort['file']:<14} {ort['size_bytes'] / 2**20:.2f} MiB, {ort['operator_count']} operators ("
                   + "; ".join(f"{d}: {', '.join(ops)}" for d, ops in ort["operators"].items())
                   + f"); {ort['required_operators']} for a minimal build")
    echo_tokenizer_graph(summary["tokenizer_in_graph"])


def echo_tokenizer_graph(record: dict | None) -> None:
    """The --with-tokenizer line of the export and quantize summaries."""
    if not record:
        return
    v = record["validation"]
    typer.echo(f"  {record['file']} {record['size_bytes'] / 2**20:.2f} MiB (text in, label out): same token ids "
               f"on {v['same_token_ids']} of {v['texts']} checked texts, same labels on {v['same_labels']}")


def _early_exit_summary(bundle, json_out: bool) -> None:
    v, exits = bundle.manifest["validation"], bundle.manifest["early_exit"]
    if json_out:
        emit_json({"bundle": str(bundle.path), "task": bundle.task, "segments": v["segments"],
                   "early_exit": exits["dev"], "validation": v, "metrics": bundle.metrics})
        return
    typer.echo(f"wrote {bundle.path} ({exits['layers']} segment graphs)")
    for s in v["segments"]:
        typer.echo(f"  segment {s['segment']}: exit logits max abs diff {s['exit_logits_max_abs_diff']:.2e} "
                   f"(atol {v['atol']:.0e})")
    d = exits["dev"]
    typer.echo(f"  dev accuracy {d['accuracy']:.4f} with exits ({d['rule']} {d['threshold']:g}) vs "
               f"{d['accuracy_full_depth']:.4f} at full depth; mean exit layer {d['mean_exit_layer']:.2f}")


def _text_items(texts: list[str]) -> list[tuple[str, object]]:
    """TEXT arguments; one starting with '{' is a JSON object (pairs, QA)."""
    items = []
    for i, text in enumerate(texts, start=1):
        where = f"TEXT {i}"
        if text.lstrip().startswith("{"):
            from ..errors import DataError

            try:
                items.append((where, json.loads(text)))
            except json.JSONDecodeError as exc:
                raise DataError(f"looks like JSON but does not parse (column {exc.colno}: {exc.msg})", where=where,
                                fix='Quote it as one shell argument: \'{"question": "...", "context": "..."}\'') from None
        else:
            items.append((where, text))
    return items


ECHO_CHARS = 80


def _echo(item) -> str | None:
    """The input's text (a QA input: its question), cut to ECHO_CHARS characters, for the JSON line."""
    text = item if isinstance(item, str) else (item.get("text") or item.get("question")) if isinstance(item, dict) else None
    if text is None and isinstance(item, dict) and isinstance(item.get("tokens"), list):
        text = " ".join(str(t) for t in item["tokens"])
    if not isinstance(text, str):
        return None
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS - 1] + "…"


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="An exported bundle.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to predict; a JSON object for pairs or QA.")] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", help="Inputs: .txt (one text a line), .tsv or "
                                                                       ".jsonl (text/text_pair, question/context).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Write JSON lines here (default: stdout).")] = None,
    batch_size: Annotated[int, typer.Option(help="Inputs per ONNX Runtime call.")] = 32,
    provider: Annotated[str, typer.Option(help="cpu, cuda or tensorrt.")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads (default: ONNX Runtime's choice).")] = None,
    ort_format: Annotated[bool, typer.Option("--ort-format", help="Run model.ort instead of model.onnx.")] = False,
    logits: Annotated[bool, typer.Option("--logits", help="Add the raw model outputs of each input (\"outputs\": one object per model window) to its JSON line.")] = False,
    per_sequence: Annotated[Optional[bool], typer.Option("--per-sequence/--batched", help="Run one sequence per model call, so a prediction never depends on the batch (default: on for batch-dependent int8 bundles, off otherwise).")] = None,
    spinning: Annotated[Optional[bool], typer.Option("--spinning/--no-spinning", help="Let ONNX Runtime's idle threads busy-wait between calls (default: ORT's own, which spins).")] = None,
    cpu_mem_arena: Annotated[Optional[bool], typer.Option("--cpu-mem-arena/--no-cpu-mem-arena", help="ONNX Runtime's CPU memory arena (default: ORT's own, on; see benchmarks/results/soak-rss.md).")] = None,
    mem_pattern: Annotated[Optional[bool], typer.Option("--mem-pattern/--no-mem-pattern", help="ONNX Runtime's per-shape memory-pattern planning (default: ORT's own, on).")] = None,
    label_column: Annotated[Optional[str], typer.Option("--label-column", help="Score the predictions against this column of --input (a .tsv with a header, or a .jsonl field): adds \"gold\" to each line and prints the accuracy. Without it, extra columns are ignored.")] = None,
    full_depth: Annotated[bool, typer.Option("--full-depth", help="Early-exit bundles: run every layer (no early exit).")] = False,
) -> None:
    """Predict with a bundle (ONNX Runtime + tokenizers only); streams one JSON line per input."""
    from ..errors import ConfigError
    from ..runtime import Bundle, iter_input_file

    if batch_size < 1:
        raise ConfigError("must be at least 1", where="--batch-size", fix="Pass --batch-size 32")
    if not texts and input_file is None:
        raise ConfigError("no inputs", where="predict", fix="Pass TEXT arguments or --input FILE")
    if output is not None and (output.is_dir() or not output.absolute().parent.is_dir()):
        raise ConfigError("is a directory or its folder does not exist", where=f"--output {output}",
                          fix="Pass a file path in an existing directory")
    model = Bundle(bundle, provider=provider, threads=threads, model_file="model.ort" if ort_format else None,
                   per_sequence=per_sequence, spinning=spinning, cpu_mem_arena=cpu_mem_arena, mem_pattern=mem_pattern,
                   full_depth=full_depth)
    if not model.batch_invariant and not model.per_sequence:
        from .. import log

        log.warning("this int8 bundle computes activation scales over the whole batch: with --batched a "
                    "prediction can change with the rest of its batch (see quantization.b32_vs_b1 in bertedge.json)")

    if label_column is not None:
        if not model.task.per_sequence:
            raise ConfigError(f"scores classification bundles only (this one is {model.task.name})",
                              where="--label-column", fix="Score other tasks with `bertedge eval BUNDLE --data ...`")
        if input_file is None:
            raise ConfigError("needs an --input file with that column", where="--label-column",
                              fix="Pass --input FILE.tsv (with a header row) or FILE.jsonl")
    recorded = model.manifest.get("data") or {}
    names = {str(k): str(v) for k, v in (recorded.get("label_names") or {}).items()}

    def items():
        yield from _text_items(texts or [])
        if input_file is not None:
            yield from iter_input_file(input_file, model.input_kind, recorded, label_column)

    # First pass: read and check every input, so a bad line fails before anything is written.
    count = 0
    for where, item in items():
        model.normalize(_without_gold(item), where)
        if isinstance(item, dict) and "_gold" in item:
            gold = names.get(item["_gold"], item["_gold"])
            if model.labels and gold not in model.labels:
                from ..errors import DataError

                raise DataError(f"label '{item['_gold']}' is not one the model predicts ({', '.join(model.labels)})",
                                where=where, fix="Score against the label column of the data the model was trained on")
        count += 1
    scored = {"n": 0, "correct": 0}

    start = time.perf_counter()
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}") if output is not None else None
    sink = open(tmp, "w", encoding="utf-8") if tmp is not None else sys.stdout
    try:
        chunk: list[tuple[str, object]] = []

        def flush() -> None:
            predictions = model.predict([_without_gold(item) for _, item in chunk], batch_size=batch_size,
                                        where=[where for where, _ in chunk], logits=logits)
            for (where, item), prediction in zip(chunk, predictions):
                record = {}
                if isinstance(item, dict) and "_gold" in item:
                    gold = names.get(item["_gold"], item["_gold"])
                    prediction = {**prediction, "gold": gold, "correct": prediction["label"] == gold}
                    scored["n"] += 1
                    scored["correct"] += prediction["correct"]
                if isinstance(item, dict) and "id" in item:
                    record["id"] = item["id"]
                record["input"] = where
                text = _echo(item)
                if text is not None:
                    record["text"] = text
                record.update(prediction)
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            chunk.clear()

        for pair in items():
            chunk.append(pair)
            if len(chunk) >= batch_size:
                flush()
        if chunk:
            flush()
        if tmp is not None:
            sink.close()
            os.replace(tmp, output)
    except BaseException:
        if tmp is not None:
            sink.close()
            tmp.unlink(missing_ok=True)
        raise
    elapsed = time.perf_counter() - start
    typer.echo(f"predicted {count} input(s) in {elapsed:.2f}s" + (f" -> {output}" if output else ""), err=True)
    if scored["n"]:
        typer.echo(f"accuracy {scored['correct'] / scored['n']:.4f} ({scored['correct']} of {scored['n']} against "
                   f"column '{label_column}')", err=True)


def _without_gold(item):
    return {k: v for k, v in item.items() if k != "_gold"} if isinstance(item, dict) else item
