"""export: a fine-tuned PyTorch artifact -> a validated ONNX bundle.

The bundle is `model.onnx` (+ `model.ort` and `required_operators.config` with `ort_format`; +
`onnx/model.onnx` for transformers.js with `layout="transformers.js"`, see `bertedge.jslayout`),
the tokenizer files and a manifest that says everything a non-Python ONNX Runtime user needs
(inputs, dtypes, dynamic axes, outputs, padding side, truncation, labels, postprocessing).

Steps: export from a model loaded with eager attention (the SDPA graph does not match ONNX
Runtime's attention fusion patterns) with bertedge's own `torch.onnx.export` call, or optimum-onnx's
where it is installed and asked for (`bertedge.stages.exporters`), check that the batch and sequence
axes are symbolic, fuse with onnxruntime.transformers
(Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization), then validate twice on
real dev samples: max abs difference per output against PyTorch, and the task metric through
ONNX Runtime against PyTorch. Any failure raises inside `atomic_artifact`, so no bundle is left.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from .. import log
from ..artifacts import Artifact, atomic_artifact, check_output_path, load_artifact, parent_record, require_task_model
from ..config import StrictModel
from ..errors import ArtifactError, ConfigError, ExportError
from ..runtime import session_forward
from ..tasks import get_task
from ..tasks.base import run_forward
from .exporters import Exporter, export_onnx, exporter_record, graph_input_names, require_optimum, stdout_to_stderr
from .onnx_graph import (
    describe_graph,
    fuse_graph,
    interface_record,
    load_eager,
    share_embedding_rows,
    validation_examples,
)

DEFAULT_OPSET = 17
# BERT's export needs >= 14 (LayerNormalization is native from 17); the TorchScript
# exporter in torch 2.x stops at 20. ONNX Runtime's transformer fusions are tested on 14-20.
SUPPORTED_OPSETS = range(14, 21)
MODEL_FILE = "model.onnx"
ORT_FILE = "model.ort"
ORT_CONFIG_FILE = "required_operators.config"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")


class ExportConfig(StrictModel):
    exporter: Exporter = Field(
        "bertedge", description="bertedge: torch.onnx.export (TorchScript) called by bertedge, any transformers; "
                                "optimum: optimum-onnx's exporter (pip install 'bertedge[optimum]', transformers < 4.58)")
    opset: int = Field(DEFAULT_OPSET, description=f"ONNX opset ({SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1})")
    optimize: bool = Field(True, description="Fuse with ONNX Runtime's transformer optimizer (Attention, "
                                             "SkipLayerNormalization, BiasGelu, EmbedLayerNormalization)")
    embed_layer_norm: bool = Field(True, description="Also fuse the embeddings into EmbedLayerNormalization")
    raw_attention_mask: bool = Field(False, description="Fused attention reads the raw 0/1 mask (any padding side) "
                                                        "instead of a right-padding length index (faster)")
    ort_format: bool = Field(False, description="Also write model.ort + required_operators.config for ONNX Runtime "
                                                "mobile/minimal builds")
    layout: Literal["bertedge", "transformers.js"] = Field(
        "bertedge", description="transformers.js: also lay the bundle out for @huggingface/transformers "
                                "(onnx/model.onnx, a hard link; config.json with id2label and its dtype)")
    with_tokenizer: bool = Field(False, description="Also write model_with_tokenizer.onnx: the WordPiece tokenizer "
                                                    "as onnxruntime-extensions ops in front of the model, raw "
                                                    "string in, label and scores out (single-sentence "
                                                    "classification; needs bertedge[tokenizer])")
    atol: float = Field(1e-4, gt=0, description="Largest allowed |ONNX - PyTorch| per output on dev samples")
    metric_samples: int | None = Field(1000, ge=1, description="Dev examples for the metric check "
                                                               "(seeded subset; None = all)")
    min_agreement: float = Field(0.995, ge=0, le=1, description="Fraction of dev predictions ONNX and PyTorch "
                                                                 "must agree on")
    max_metric_delta: float = Field(0.001, ge=0, description="Largest |ONNX - PyTorch| primary metric "
                                                             "(0-1 scale: 0.001 = 0.1 point)")
    batch_size: int = Field(32, ge=1, description="Batch size of the validation passes")
    data: str | None = Field(None, description="Dev data for validation (default: the data the artifact records)")

    @field_validator("opset")
    @classmethod
    def _opset_supported(cls, value: int) -> int:
        if value not in SUPPORTED_OPSETS:
            raise ValueError(f"opset {value} is not supported (use {SUPPORTED_OPSETS.start} to "
                             f"{SUPPORTED_OPSETS.stop - 1}; default {DEFAULT_OPSET})")
        return value


# ----------------------------------------------------------------------------- public stage


def export(src: str | Path | Artifact, config: ExportConfig, out: str | Path, *, overwrite: bool = False) -> Artifact:
    """Export a fine-tuned artifact to a validated ONNX bundle at `out`."""
    from ..evaluate import artifact_settings
    from ..modeling import encoder_from_hf, save_tokenizer

    parent = src if isinstance(src, Artifact) else load_artifact(src)
    if parent.is_bundle:
        raise ArtifactError("this is already an ONNX bundle", where=str(parent.path),
                            fix="Export the PyTorch artifact it came from (its manifest's parent.path)")
    if not (parent.path / "config.json").is_file():
        raise ArtifactError("artifact has no config.json, so it is not a transformers model directory",
                            where=str(parent.path), fix="Pass an artifact written by finetune, distill or prune")
    require_task_model(parent)
    if config.with_tokenizer:
        check_with_tokenizer(parent)
    if config.exporter == "optimum":
        require_optimum("--exporter optimum")
    if parent.manifest.get("early_exit"):  # exit heads: one graph per segment (docs/early_exit.md)
        from .early_exit_bundle import export_early_exit

        return export_early_exit(parent, config, out, overwrite=overwrite)
    out = check_output_path(out, overwrite=overwrite)
    task = get_task(parent.task)
    settings = artifact_settings(parent)
    # Validation data first: a missing dataset must fail before minutes of export work.
    examples = validation_examples(parent, config)

    model, hf_tokenizer = load_eager(parent)
    encoder = encoder_from_hf(hf_tokenizer)
    with atomic_artifact(out, stage="export", task=parent.task, overwrite=overwrite) as writer, \
            tempfile.TemporaryDirectory(prefix="bertedge-export-") as scratch_dir:
        scratch = Path(scratch_dir)
        raw_path = export_onnx(model, task, graph_input_names(model, hf_tokenizer.model_input_names), config.opset,
                               scratch / "raw", config.exporter)
        model_path = writer.path / MODEL_FILE
        fused: dict[str, int] = {}
        if config.optimize:
            fused = fuse_graph(raw_path, model_path, model.config, config)
        else:
            shutil.copyfile(raw_path, model_path)
        # trim-vocab's shared rows (dropped: nearest / cluster) are stored once; the validation below runs on it
        shared_rows = share_embedding_rows(model_path, int(model.config.vocab_size))
        if shared_rows:
            log.info(f"export: {shared_rows['rows']:,} word-embedding rows stored as {shared_rows['distinct_rows']:,} "
                     "distinct rows and an index")
        save_tokenizer(hf_tokenizer, writer.path)
        model.config.save_pretrained(writer.path)  # lets optimum's ORTModelFor* load the bundle too

        log.info(f"export: validating on {len(examples)} dev examples against PyTorch")
        validation, ort_metrics, torch_metrics = _validate(model, model_path, encoder, task, examples, settings,
                                                           parent, config)
        onnx_io = describe_graph(model_path)
        ort_record = None
        if config.ort_format:
            ort_record = _write_ort_format(model_path, writer.path, encoder, task, examples, settings,
                                           config.batch_size, config.atol)
            validation["ort_format"] = ort_record["validation"]
        tokenizer_in_graph = None
        if config.with_tokenizer:
            tokenizer_in_graph = write_tokenizer_graph(writer.path, parent, encoder, settings.max_length,
                                                       [e["text"] for e in examples])
        layout = {"layout": "bertedge"}
        if config.layout == "transformers.js":
            from ..jslayout import write_transformers_js_layout

            layout = write_transformers_js_layout(writer.path, precision="fp32", max_length=settings.max_length,
                                                  task=parent.task, labels=parent.labels or None)
        writer.manifest.update({
            "labels": parent.labels or None,
            "settings": settings.record(),
            "primary_metric": validation["metric"]["name"],
            "config": config.model_dump(mode="json"),
            "model": {**(parent.manifest.get("model") or {}), **_architecture(model.config)},
            "parent": parent_record(parent),
            "data": parent.manifest.get("data"),
            "tokenizer": parent.manifest.get("tokenizer") or {},
            "onnx": {**onnx_io, "file": MODEL_FILE, "exporter": exporter_record(config.exporter),
                     "opset": config.opset, "optimized": config.optimize,
                     "fused_node_counts": fused, "shared_embedding_rows": shared_rows, "ort_format": ort_record and
                     {k: v for k, v in ort_record.items() if k != "validation"},
                     "attention_implementation_at_export": "eager"},
            "interface": interface_record(parent, task.name, settings, onnx_io, config),
            "layout": layout,
            "tokenizer_in_graph": tokenizer_in_graph,
            "validation": validation,
            "metrics": {"dev": {**ort_metrics, "n": len(examples)}, "dev_torch": {**torch_metrics, "n": len(examples)}},
        })
    bundle = load_artifact(out)
    log.info(f"export: wrote {bundle.path} (max abs diff "
             + ", ".join(f"{k} {v['max_abs_diff']:.1e}" for k, v in validation["outputs"].items())
             + f"; {validation['metric']['name']} onnx {validation['metric']['onnx']:.4f} vs torch "
               f"{validation['metric']['torch']:.4f})")
    return bundle


# ----------------------------------------------------------------------------- steps


def input_kind_of(artifact: Artifact) -> str:
    """single-sentence, sentence-pair, words or question-context (the manifest's interface.input_kind)."""
    recorded = (artifact.manifest.get("interface") or {}).get("input_kind")
    if recorded:
        return recorded
    return get_task(artifact.task).input_kind((artifact.manifest.get("data") or {}).get("columns") or {})


def check_with_tokenizer(artifact: Artifact) -> None:
    """Refuse --with-tokenizer up front (before minutes of work) where it cannot be built."""
    from .. import tokenizer_graph

    if artifact.manifest.get("early_exit"):
        raise ConfigError("does not support early-exit bundles (one graph per segment)", where="--with-tokenizer",
                          fix="Drop --with-tokenizer, or export the full-depth model")
    tokenizer_graph.require_extensions()
    kind = input_kind_of(artifact)
    if (artifact.path / "tokenizer.json").is_file() or kind != "single-sentence":
        tokenizer_graph.tokenizer_settings(artifact.path, artifact.task, kind)  # raises the one-line refusal


def write_tokenizer_graph(bundle_dir: Path, parent: Artifact, encoder, max_length: int, texts: list[str],
                          model_file: str = MODEL_FILE) -> dict:
    """model_with_tokenizer.onnx, checked against tokenizer.json + model_file on `texts` and odd inputs."""
    from .. import tokenizer_graph

    record = tokenizer_graph.build(bundle_dir, task=parent.task, input_kind=input_kind_of(parent),
                                   labels=parent.labels or None, max_length=max_length, model_file=model_file)
    if record["tokenizer"]["added_tokens_not_reproduced"]:
        log.warning(f"{tokenizer_graph.FILE}: tokenizer.json's added tokens "
                    f"{record['tokenizer']['added_tokens_not_reproduced']} have normalized or single_word set, which "
                    f"the graph does not reproduce; it reads them as text (docs/export.md)")
    checked = list(texts[:256]) + list(tokenizer_graph.ODD_TEXTS)
    record["validation"] = tokenizer_graph.validate(bundle_dir, checked, encoder, max_length,
                                                    parent.labels or None, model_file=model_file)
    v = record["validation"]
    if v["same_labels"] < v["texts"]:
        log.warning(f"{tokenizer_graph.FILE}: {v['texts'] - v['same_labels']} of {v['texts']} checked texts get "
                    f"another label than tokenizer.json + {model_file} (token ids differ on "
                    f"{v['texts'] - v['same_token_ids']}; e.g. {v['differing_examples'][:2]}); see docs/export.md")
    return record


def _architecture(hf_config) -> dict:
    return {"num_layers": hf_config.num_hidden_layers, "num_heads": hf_config.num_attention_heads,
            "hidden_size": hf_config.hidden_size, "pruned_heads": {str(k): sorted(v) for k, v in
                                                                  (getattr(hf_config, "pruned_heads", None) or {}).items()}}


# ----------------------------------------------------------------------------- validation


def _validate(model, model_path: Path, encoder, task, examples, settings, parent: Artifact, config: ExportConfig):
    from ..providers import make_session
    from ..train import torch_forward

    features = task.eval_features(examples, encoder, settings)
    session = make_session(model_path, "cpu")
    torch_outputs = run_forward(features, encoder, torch_forward(model), config.batch_size, task.per_token_outputs)
    ort_outputs = run_forward(features, encoder, session_forward(session), config.batch_size, task.per_token_outputs)
    outputs = compare_outputs(torch_outputs, ort_outputs, config.atol)

    labels = parent.labels or None
    torch_pred = task.postprocess(examples, features, torch_outputs, settings, labels)
    ort_pred = task.postprocess(examples, features, ort_outputs, settings, labels)
    torch_metrics = task.metrics(examples, torch_pred, labels)
    ort_metrics = task.metrics(examples, ort_pred, labels)
    metric_name = parent.manifest.get("primary_metric") or task.primary_metric
    if metric_name not in torch_metrics:
        metric_name = task.primary_metric
    agreement = task.prediction_agreement(torch_pred, ort_pred)
    metric = {"name": metric_name, "torch": torch_metrics.get(metric_name), "onnx": ort_metrics.get(metric_name)}
    metric["delta"] = (abs(metric["onnx"] - metric["torch"]) if isinstance(metric["onnx"], float)
                       and isinstance(metric["torch"], float) else None)
    validation = {
        "examples": len(examples), "features": len(features), "atol": config.atol, "outputs": outputs,
        "agreement": agreement, "min_agreement": config.min_agreement, "metric": metric,
        "max_metric_delta": config.max_metric_delta, "session_optimization": "all", "provider": "cpu",
    }
    failures = [f"{name} max abs diff {r['max_abs_diff']:.2e} > atol {config.atol:.0e}"
                for name, r in outputs.items() if not r["ok"]]
    if agreement < config.min_agreement:
        failures.append(f"predictions agree on {agreement:.2%} of dev (need {config.min_agreement:.2%})")
    if metric["delta"] is not None and metric["delta"] > config.max_metric_delta:
        failures.append(f"{metric_name} onnx {metric['onnx']:.4f} vs torch {metric['torch']:.4f} "
                        f"(delta {metric['delta']:.4f} > {config.max_metric_delta})")
    validation["passed"] = not failures
    if failures:
        report = "; ".join(f"{n} {r['max_abs_diff']:.2e}" for n, r in outputs.items())
        raise ExportError(f"validation failed: {'; '.join(failures)} (per output: {report})", where="export",
                          fix="Raise --atol if the difference is acceptable, try --no-optimize, or another --opset")
    return validation, ort_metrics, torch_metrics


def compare_outputs(reference: list[dict], candidate: list[dict], atol: float) -> dict[str, dict]:
    """Per output: max |a - b| over all features (per-token outputs over real tokens only)."""
    report: dict[str, dict] = {}
    for name in reference[0]:
        diff = max(float(np.max(np.abs(r[name].astype(np.float64) - c[name].astype(np.float64))))
                   for r, c in zip(reference, candidate))
        scale = max(float(np.max(np.abs(r[name]))) for r in reference)
        report[name] = {"max_abs_diff": diff, "max_abs_value": scale, "ok": diff <= atol}
    return report


# ----------------------------------------------------------------------------- ORT format


def _write_ort_format(model_path: Path, bundle_dir: Path, encoder, task, examples, settings, batch_size: int,
                      atol: float) -> dict:
    """model.ort + required_operators.config via onnxruntime.tools.convert_onnx_models_to_ort.

    Checked against model.onnx on the dev features: a model that does not load or predict the same fails.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from ..providers import make_session

    with tempfile.TemporaryDirectory(prefix="bertedge-ort-") as scratch_dir:
        scratch = Path(scratch_dir)
        shutil.copyfile(model_path, scratch / MODEL_FILE)
        try:
            with stdout_to_stderr():
                convert_onnx_models_to_ort(scratch / MODEL_FILE, output_dir=scratch / "out",
                                           optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:
            detail = " ".join(str(exc).split())[:240]
            raise ExportError(f"conversion to the ORT format failed ({detail})", where="--ort-format",
                              fix="Export without --ort-format, or rerun with --debug") from None
        shutil.copyfile(scratch / "out" / ORT_FILE, bundle_dir / ORT_FILE)
        configs = sorted((scratch / "out").glob("*.config"))
        shutil.copyfile(configs[0], bundle_dir / ORT_CONFIG_FILE)
    features = task.eval_features(examples[:64], encoder, settings)
    onnx_out = run_forward(features, encoder, session_forward(make_session(model_path)), batch_size,
                           task.per_token_outputs)
    ort_out = run_forward(features, encoder, session_forward(make_session(bundle_dir / ORT_FILE)), batch_size,
                          task.per_token_outputs)
    outputs = compare_outputs(onnx_out, ort_out, atol)
    if not all(r["ok"] for r in outputs.values()):
        raise ExportError("model.ort does not reproduce model.onnx (" + "; ".join(
            f"{n} {r['max_abs_diff']:.2e}" for n, r in outputs.items()) + ")", where="--ort-format",
            fix="Export without --ort-format")
    operators = [line.strip() for line in (bundle_dir / ORT_CONFIG_FILE).read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    import onnxruntime

    by_domain = ort_operators(operators)
    return {"file": ORT_FILE, "required_operators": ORT_CONFIG_FILE, "optimization_style": "Fixed",
            "optimization_level": "all (NCHWc layout excluded: portable across CPUs)",
            "size_bytes": (bundle_dir / ORT_FILE).stat().st_size,
            "onnx_size_bytes": model_path.stat().st_size,
            "operator_sets": operators, "operators": by_domain,
            "operator_count": sum(len(ops) for ops in by_domain.values()),
            "tested": f"loaded and run by Python onnxruntime {onnxruntime.__version__} (CPU) and compared with "
                      f"model.onnx on {len(features)} dev features; not run on a mobile device or a minimal build",
            "validation": {"features": len(features), "outputs": outputs}}


def ort_operators(lines: list[str]) -> dict[str, list[str]]:
    """required_operators.config lines ("domain;opset;Op1,Op2") -> {"domain opset": [ops]}."""
    result: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split(";")
        if len(parts) >= 3:
            key = f"{parts[0]} {parts[1]}"
            result[key] = sorted(set(result.get(key, [])) | {op for op in parts[2].split(",") if op})
    return result


# ----------------------------------------------------------------------------- manifest documentation


