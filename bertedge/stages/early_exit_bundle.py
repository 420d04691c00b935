"""Early-exit bundles: the segment graphs of an early-exit artifact (export) and their int8 (quantize).

Segment 0 = embeddings + layer 1 + exit head 1; segment k = layer k+1 + its exit head on the hidden state
segment k-1 handed on; the last segment ends in the model's own pooler + classifier. Each is exported from
the same torch modules the validation runs, fused by ONNX Runtime's transformer optimizer and checked
against PyTorch. docs/early_exit.md has the protocol the manifest records.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import log
from ..artifacts import Artifact, atomic_artifact, check_output_path, load_artifact, parent_record
from ..early_exit import (
    EXIT_OUT,
    FINAL_OUT,
    HIDDEN_IN,
    HIDDEN_OUT,
    MASK_IN,
    calibrate,
    exit_layers,
    histogram,
    protocol_record,
    run_segments,
)
from ..errors import ConfigError, ExportError, QuantizationError
from .early_exit import SEGMENT_FILE, label_metrics, load_heads, require_early_exit_task, sorted_batches, torch_modules
from .exporters import check_dynamic_axes, exporter_record, stdout_to_stderr

# ----------------------------------------------------------------------------- export


def _segment_modules(model, heads, input_names: list[str]):
    _, Segment = torch_modules()
    layers = model.config.num_hidden_layers
    return [Segment(model, k, heads, input_names if k == 0 else [HIDDEN_IN, MASK_IN]).eval() for k in range(layers)]


def _torch_segment_fns(modules):
    import torch

    def wrap(module):
        def forward(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = module(*[torch.from_numpy(feeds[n]) for n in module.input_names])
            if module.last:
                return {FINAL_OUT: out.numpy()}
            return {HIDDEN_OUT: out[0].numpy(), EXIT_OUT: out[1].numpy()}
        return forward

    return [wrap(m) for m in modules]


def _export_segment(module, sample: dict[str, np.ndarray], path: Path, opset: int) -> None:
    import torch

    names = module.input_names
    outputs = [FINAL_OUT] if module.last else [HIDDEN_OUT, EXIT_OUT]
    axes = {n: {0: "batch", 1: "sequence"} for n in names if n != HIDDEN_IN}
    if HIDDEN_IN in names:
        axes[HIDDEN_IN] = {0: "batch", 1: "sequence"}
    axes.update({HIDDEN_OUT: {0: "batch", 1: "sequence"}} if not module.last else {})
    axes[outputs[-1]] = {0: "batch"}
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    try:
        with torch.no_grad():
            torch.onnx.export(module, args, str(path), input_names=names, output_names=outputs, dynamic_axes=axes,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - the exporter raises anything
        detail = " ".join(str(exc).split())[:240]
        raise ExportError(f"ONNX export of segment {module.k} failed ({type(exc).__name__}: {detail})",
                          where="export", fix="Try another --opset, or rerun with --debug") from None
    check_dynamic_axes(path, None, axes)


def export_early_exit(parent: Artifact, config, out: str | Path, *, overwrite: bool = False) -> Artifact:
    """The segment-graph bundle of an early-exit artifact, each segment validated against PyTorch."""
    import warnings

    from ..evaluate import artifact_settings
    from ..modeling import encoder_from_hf, save_tokenizer
    from ..providers import make_session
    from ..runtime import session_forward
    from ..tasks import get_task
    from .onnx_graph import describe_graph, fuse_graph, interface_record, load_eager, validation_examples

    if config.exporter != "bertedge":
        raise ConfigError("early-exit bundles are exported segment by segment with bertedge's exporter",
                          where=f"--exporter {config.exporter}", fix="Drop --exporter (the default is bertedge)")
    if config.ort_format:
        raise ConfigError("--ort-format is not available for early-exit bundles (they hold one graph per segment)",
                          where="--ort-format", fix="Export without --ort-format")
    require_early_exit_task(parent, where="bertedge export")
    out = check_output_path(out, overwrite=overwrite)
    task = get_task(parent.task)
    settings = artifact_settings(parent)
    examples = validation_examples(parent, config)
    model, hf_tokenizer = load_eager(parent)
    heads = load_heads(parent, model)
    record = parent.manifest["early_exit"]
    layers = model.config.num_hidden_layers
    probe = encoder_from_hf(hf_tokenizer)
    input_names: list[str] = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                   if n == "input_ids" or n in probe.model_input_names]
    if MASK_IN not in input_names:
        raise ExportError("the tokenizer produces no attention_mask, which the segments need", where=str(parent.path),
                          fix="Use a BERT-family tokenizer")
    encoder = encoder_from_hf(hf_tokenizer)
    encoder.model_input_names = tuple(input_names)
    modules = _segment_modules(model, heads, input_names)
    features = task.eval_features(examples, encoder, settings)
    files = [SEGMENT_FILE.format(k) for k in range(layers)]

    with atomic_artifact(out, stage="export", task=parent.task, overwrite=overwrite) as writer, \
            tempfile.TemporaryDirectory(prefix="bertedge-ee-export-") as scratch_dir:
        scratch = Path(scratch_dir)
        sample = encoder.collate(features[:2])
        fused: list[dict] = []
        hidden = None
        for k, module in enumerate(modules):
            feeds = sample if k == 0 else {HIDDEN_IN: hidden, MASK_IN: sample[MASK_IN]}
            raw = scratch / files[k]
            with warnings.catch_warnings(), stdout_to_stderr():
                warnings.simplefilter("ignore")
                _export_segment(module, feeds, raw, config.opset)
            if config.optimize:
                fused.append(fuse_graph(raw, writer.path / files[k], _one_layer(model.config), config))
            else:
                shutil.copyfile(raw, writer.path / files[k])
                fused.append({})
            if not module.last:
                hidden = _torch_segment_fns([module])[0](feeds)[HIDDEN_OUT]
        save_tokenizer(hf_tokenizer, writer.path)
        model.config.save_pretrained(writer.path)

        log.info(f"export: validating {layers} segments on {len(examples)} dev examples against PyTorch")
        sessions = [session_forward(make_session(writer.path / f, "cpu")) for f in files]
        validation = _validate_segments(model, modules, sessions, encoder, features, examples, settings, parent,
                                        config, record)
        onnx_io = [describe_graph(writer.path / f) for f in files]
        protocol = protocol_record(layers, len(parent.labels or []) or model.config.num_labels, files, input_names,
                                   record["rule"], record["threshold"], model.config.hidden_size)
        interface = interface_record(parent, task.name, settings, onnx_io[0], config)
        interface["outputs"] = [FINAL_OUT, "exit_layer"]
        interface["early_exit"] = "see early_exit (graph order, inputs and outputs, rule, threshold)"
        writer.manifest.update({
            "labels": parent.labels or None,
            "settings": settings.record(),
            "primary_metric": validation["metric"]["name"],
            "config": config.model_dump(mode="json"),
            "model": {**(parent.manifest.get("model") or {}), "num_layers": layers,
                      "num_heads": model.config.num_attention_heads, "hidden_size": model.config.hidden_size},
            "parent": parent_record(parent),
            "data": parent.manifest.get("data"),
            "tokenizer": parent.manifest.get("tokenizer") or {},
            "onnx": {"segments": [{**io, "file": f, "fused_node_counts": c} for io, f, c in zip(onnx_io, files, fused)],
                     "exporter": exporter_record("bertedge"), "opset": config.opset, "optimized": config.optimize,
                     "ort_format": None, "attention_implementation_at_export": "eager"},
            "interface": interface,
            "early_exit": {**protocol, "calibration": record.get("calibration"),
                           "training": record.get("training"), "exit_heads": record.get("exit_heads"),
                           "dev": validation["early_exit"]},
            "validation": validation,
            "metrics": {"dev": {**validation.pop("_ort_metrics"), "n": len(examples)},
                        "dev_full_depth": {**validation.pop("_ort_full_metrics"), "n": len(examples)},
                        "dev_torch": {**validation.pop("_torch_metrics"), "n": len(examples)}},
        })
    bundle = load_artifact(out)
    worst = max(s["exit_logits_max_abs_diff"] for s in validation["segments"])
    log.info(f"export: wrote {bundle.path} ({layers} segments; max abs diff of exit logits {worst:.1e}; dev accuracy "
             f"with exits {validation['early_exit']['accuracy']:.4f}, mean exit layer "
             f"{validation['early_exit']['mean_exit_layer']:.2f})")
    return bundle


def _one_layer(hf_config):
    """The config the transformer optimizer reads for one segment (heads/hidden as in the model)."""
    copy = hf_config.__class__.from_dict(hf_config.to_dict())
    copy.num_hidden_layers = 1
    return copy


def _per_layer(segments, features, encoder, batch_size: int, *, rule="entropy", threshold=0.0):
    """Full-depth per-layer logits [N, L, C] (feature order) and the final logits, through `segments`."""
    out = None
    for idx, batch in sorted_batches(features, encoder, batch_size):
        result = run_segments(segments, batch, rule, threshold, full_depth=True, collect=True)
        if out is None:
            out = np.zeros((len(features), *result["layer_logits"].shape[1:]), dtype=np.float64)
        out[idx] = result["layer_logits"]
    return out


def _validate_segments(model, modules, sessions, encoder, features, examples, settings, parent, config,
                       record) -> dict:
    import torch

    from ..tasks import get_task

    torch_fns = _torch_segment_fns(modules)
    layers = len(modules)
    rule, threshold = record["rule"], record["threshold"]
    # Per segment: its own outputs on the same (PyTorch) input, so errors do not compound in the comparison.
    segments = [{"segment": k, "exit_logits_max_abs_diff": 0.0, "hidden_state_max_abs_diff": 0.0}
                for k in range(layers)]
    plain_diff = 0.0
    for _, batch in sorted_batches(features, encoder, config.batch_size):
        feeds = batch
        with torch.no_grad():
            plain = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
        for k in range(layers):
            ref, got = torch_fns[k](feeds), sessions[k](feeds)
            name = FINAL_OUT if k == layers - 1 else EXIT_OUT
            segments[k]["exit_logits_max_abs_diff"] = max(segments[k]["exit_logits_max_abs_diff"],
                                                          float(np.max(np.abs(ref[name] - got[name]))))
            if k < layers - 1:
                mask = batch[MASK_IN].astype(bool)
                diff = np.abs(ref[HIDDEN_OUT] - got[HIDDEN_OUT])[mask]
                segments[k]["hidden_state_max_abs_diff"] = max(segments[k]["hidden_state_max_abs_diff"],
                                                               float(diff.max()) if diff.size else 0.0)
                feeds = {HIDDEN_IN: ref[HIDDEN_OUT], MASK_IN: batch[MASK_IN]}
            else:
                plain_diff = max(plain_diff, float(np.max(np.abs(ref[FINAL_OUT] - plain))))
    for s in segments:
        s["ok"] = s["exit_logits_max_abs_diff"] <= config.atol
        if s["segment"] == layers - 1:
            s.pop("hidden_state_max_abs_diff")
    gold = np.array([ex["label"] for ex in examples], dtype=np.int64)
    torch_layers = _per_layer(torch_fns, features, encoder, config.batch_size)
    ort_layers = _per_layer(sessions, features, encoder, config.batch_size)
    chained = float(np.max(np.abs(torch_layers - ort_layers)))
    torch_exits, ort_exits = exit_layers(rule, threshold, torch_layers), exit_layers(rule, threshold, ort_layers)
    pick = np.arange(len(gold))
    torch_pred = torch_layers[pick, torch_exits - 1].argmax(-1)
    ort_pred = ort_layers[pick, ort_exits - 1].argmax(-1)
    labels = parent.labels or None
    torch_metrics, ort_metrics = label_metrics(torch_pred, gold, labels), label_metrics(ort_pred, gold, labels)
    ort_full = label_metrics(ort_layers[:, -1].argmax(-1), gold, labels)
    agreement = get_task(parent.task).prediction_agreement([{"label_id": int(p)} for p in torch_pred],
                                     [{"label_id": int(p)} for p in ort_pred])
    metric = {"name": "accuracy", "torch": torch_metrics["accuracy"], "onnx": ort_metrics["accuracy"]}
    metric["delta"] = abs(metric["onnx"] - metric["torch"])
    early = {"rule": rule, "threshold": threshold, "n": len(gold), "accuracy": ort_metrics["accuracy"],
             "accuracy_full_depth": ort_full["accuracy"],
             "drop_pts": round((ort_full["accuracy"] - ort_metrics["accuracy"]) * 100, 4),
             "mean_exit_layer": float(ort_exits.mean()), "exit_histogram": histogram(ort_exits, layers),
             "exit_layer_agreement_with_torch": float((torch_exits == ort_exits).mean())}
    validation = {"examples": len(examples), "features": len(features), "atol": config.atol, "segments": segments,
                  "chained_layer_logits_max_abs_diff": chained,
                  "last_segment_vs_plain_model_max_abs_diff": plain_diff,
                  "agreement": agreement, "min_agreement": config.min_agreement, "metric": metric,
                  "max_metric_delta": config.max_metric_delta, "early_exit": early, "provider": "cpu",
                  "session_optimization": "all"}
    failures = [f"segment {s['segment']} exit logits max abs diff {s['exit_logits_max_abs_diff']:.2e} > atol "
                f"{config.atol:.0e}" for s in segments if not s["ok"]]
    if plain_diff > config.atol:
        failures.append(f"the last segment differs from the plain model by {plain_diff:.2e}")
    if agreement < config.min_agreement:
        failures.append(f"early-exit predictions agree on {agreement:.2%} of dev (need {config.min_agreement:.2%})")
    if metric["delta"] > config.max_metric_delta:
        failures.append(f"accuracy with exits onnx {metric['onnx']:.4f} vs torch {metric['torch']:.4f}")
    validation["passed"] = not failures
    if failures:
        raise ExportError(f"validation failed: {'; '.join(failures)}", where="export",
                          fix="Raise --atol if the difference is acceptable, try --no-optimize, or another --opset")
    validation["_ort_metrics"], validation["_torch_metrics"], validation["_ort_full_metrics"] = \
        ort_metrics, torch_metrics, ort_full
    return validation


# ----------------------------------------------------------------------------- quantize


def quantize_early_exit(parent: Artifact, config, out: str | Path, *, overwrite: bool = False) -> Artifact:
    """int8 of every segment of an early-exit bundle (dynamic, or auto over the dynamic schemes), then the exit
    rule recalibrated on the int8 segments (same rule and budget, against the int8 bundle's own full depth)."""
    from ..evaluate import artifact_settings, load_eval_examples
    from ..runtime import Bundle
    from ..tasks import get_task
    from .quantize import ort_int8 as oq

    if config.mode not in ("dynamic", "auto"):
        raise QuantizationError(f"--mode {config.mode} is not available for early-exit bundles",
                                where="--mode", fix="Use --mode dynamic or --mode auto")
    if parent.stage == "quantize":
        raise QuantizationError("the bundle is already quantized", where=str(parent.path),
                                fix="Quantize the fp32 bundle written by `bertedge export` (this one's parent)")
    if not config.evaluate:
        raise QuantizationError("early-exit bundles are recalibrated on dev after quantization", where="--no-eval",
                                fix="Drop --no-eval")
    out = check_output_path(out, overwrite=overwrite)
    protocol = parent.manifest["early_exit"]
    files = [s["file"] for s in protocol["segments"]]
    preset = oq.preset_for(config.preset)
    # Static int8 needs calibration inputs per segment (hidden states, not token ids): auto tries the dynamic
    # schemes only, even when calibration data is given (a search hands auto the train split for plain bundles).
    schemes = [s for s in oq.base_schemes(config, preset, parent.path / files[0]) if s.mode == "dynamic"]
    fp32 = Bundle(parent.path)
    task = get_task(parent.task)
    settings = artifact_settings(parent)
    dev = load_eval_examples(parent, config.data, "dev", config.eval_samples)
    gold = np.array([ex["label"] for ex in dev], dtype=np.int64)
    features = task.eval_features(dev, fp32.encoder, settings)
    budget = (parent.manifest.get("early_exit") or {}).get("calibration", {}).get("max_accuracy_drop", 0.5)

    def score(directory: Path) -> dict:
        from ..providers import make_session
        from ..runtime import session_forward

        sessions = [session_forward(make_session(directory / f, config.provider)) for f in files]
        per_layer = _per_layer(sessions, features, fp32.encoder, 1)  # b1: as the int8 bundle is deployed
        return {"layer_logits": per_layer,
                "calibration": calibrate(protocol["rule"], per_layer, gold, budget)}

    base = score(parent.path)
    rows = []
    with atomic_artifact(out, stage="quantize", task=parent.task, overwrite=overwrite) as writer:
        work = writer.path / ".work"
        work.mkdir()
        for i, scheme in enumerate(schemes):
            directory = work / f"candidate-{i}"
            directory.mkdir()
            counts: dict[str, int] = {}
            started = time.perf_counter()
            for f in files:
                try:
                    oq.quantize_model(parent.path / f, directory / f, scheme, work)
                except Exception as exc:  # noqa: BLE001 - ORT raises bare RuntimeError/ValueError
                    detail = " ".join(str(exc).split())[:240]
                    raise QuantizationError(f"{scheme.name} failed on {f} ({detail})", where=str(parent.path),
                                            fix="Try another --mode or preset") from None
                for op, n in oq.op_counts(directory / f).items():
                    counts[op] = counts.get(op, 0) + n
            result = score(directory)
            cal = result["calibration"]
            rows.append({"name": scheme.name, "directory": directory, "scheme": scheme, "op_counts": counts,
                         "layer_logits": result["layer_logits"],
                         "quantize_s": round(time.perf_counter() - started, 2),
                         "size_bytes": sum((directory / f).stat().st_size for f in files),
                         "calibration": cal,
                         "drop_full_depth_pts": round((base["calibration"]["accuracy_full_depth"]
                                                       - cal["accuracy_full_depth"]) * 100, 4)})
            log.info(f"quantize: {scheme.name}: full-depth dev accuracy {cal['accuracy_full_depth']:.4f} "
                     f"(fp32 {base['calibration']['accuracy_full_depth']:.4f}); recalibrated {protocol['rule']} "
                     f"threshold {cal['threshold']:g}: accuracy {cal['accuracy']:.4f}, mean exit layer "
                     f"{cal['mean_exit_layer']:.2f}")
        within = [r for r in rows if r["drop_full_depth_pts"] <= config.max_accuracy_drop + 1e-9]
        chosen = min(within or rows, key=lambda r: (-r["calibration"]["accuracy"], r["calibration"]["mean_exit_layer"]))
        if not within:
            what = (f"every int8 candidate's full-depth dev accuracy is more than {config.max_accuracy_drop} pts "
                    f"below fp32 ({chosen['drop_full_depth_pts']:+.2f} pts for the best)")
            if config.enforce_budget:
                raise QuantizationError(what, where="--max-accuracy-drop", fix="Raise --max-accuracy-drop")
            log.warning(what)
        for f in files:
            shutil.copyfile(chosen["directory"] / f, writer.path / f)
        shutil.rmtree(work)
        for file in parent.path.iterdir():
            if file.is_file() and not file.name.endswith(".onnx") and file.name != "bertedge.json" \
                    and not file.name.startswith("."):
                shutil.copy2(file, writer.path / file.name)
        cal = chosen["calibration"]
        ops = oq.runtime_scale_ops(chosen["op_counts"])
        keep = {k: v for k, v in parent.manifest.items() if k not in
                {"format_version", "stage", "complete", "payload_sha256", "size_bytes", "environment", "created_at",
                 "wall_time_s", "metrics", "config", "parent", "validation", "early_exit"}}
        chosen_logits = chosen["layer_logits"]
        exits = exit_layers(protocol["rule"], cal["threshold"], chosen_logits)
        predicted = chosen_logits[np.arange(len(gold)), exits - 1].argmax(-1)
        labels = parent.labels or None
        base_exits = exit_layers(protocol["rule"], protocol["threshold"], base["layer_logits"])
        base_pred = base["layer_logits"][np.arange(len(gold)), base_exits - 1].argmax(-1)
        candidates = [{**{k: v for k, v in r.items() if k not in ("directory", "scheme", "layer_logits", "calibration")},
                       "scheme": r["scheme"].record(),
                       "calibration": {k: v for k, v in r["calibration"].items() if k != "curve"}} for r in rows]
        writer.manifest.update({
            **keep,
            "config": config.model_dump(mode="json"),
            "parent": parent_record(parent),
            "quantization": {"mode": config.mode, "engine": "onnxruntime", "scheme": chosen["scheme"].record(),
                             "preset": preset.name, "per_segment": True, "op_counts": chosen["op_counts"],
                             "batch_invariant": not ops, "runtime_scale_ops": ops,
                             "deployed": "per-sequence" if ops else "batched", "candidates": candidates,
                             "candidate": chosen["name"], "quantized_nodes": oq.quantized_node_counts(chosen["op_counts"]),
                             "size_ratio": round(sum((parent.path / f).stat().st_size for f in files)
                                                 / chosen["size_bytes"], 2),
                             "choice": "auto: among the schemes whose full-depth dev accuracy is within "
                                       "max_accuracy_drop of fp32, the most accurate with exits (then the fewest "
                                       "layers); no timing (every scheme quantizes the same ops)"
                             if config.mode == "auto" else "dynamic"},
            "early_exit": {**protocol, "threshold": cal["threshold"],
                           "calibration": {**cal, "calibrated": True, "on": "the int8 segments, dev, batch 1"},
                           "calibration_fp32": protocol.get("calibration"),
                           "dev": {k: cal[k] for k in ("rule", "threshold", "n", "accuracy", "accuracy_full_depth",
                                                       "drop_pts", "mean_exit_layer", "exit_histogram")}},
            "metrics": {"dev": {**label_metrics(predicted, gold, labels), "n": len(gold)},
                        "fp32_dev": {**label_metrics(base_pred, gold, labels), "n": len(gold)},
                        "drop_pts": round((float((base_pred == gold).mean()) - float((predicted == gold).mean())) * 100, 4),
                        "dev_full_depth": {**label_metrics(chosen_logits[:, -1].argmax(-1), gold, labels), "n": len(gold)},
                        "dev_fp32_full_depth": {"accuracy": base["calibration"]["accuracy_full_depth"],
                                                "n": len(gold)}},
        })
    return load_artifact(out)

