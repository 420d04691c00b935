"""The quantized bundle's manifest record and its quantize_report.md."""

from __future__ import annotations

from ... import log
from ...artifacts import PARENT_ONLY_KEYS, Artifact, parent_record
from .config import QuantizeConfig
from .gate import Candidate
from .schemes import SPEEDUP_CAVEAT, Preset

MODEL_FILE = "model.onnx"


def manifest_record(parent: Artifact, config: QuantizeConfig, preset: Preset, chosen: Candidate, gate: dict | None,
                    session) -> dict:
    """The quantized bundle's manifest: the parent's bundle facts, the scheme, its target CPU and the gate."""
    from ...env import cpu_info

    scheme = chosen.scheme
    base = session.baseline
    inherited = {k: v for k, v in parent.manifest.items() if k not in PARENT_ONLY_KEYS}
    cpu = cpu_info()
    integer = scheme.mode != "fp16"
    fp32_size = session.source.stat().st_size
    quantization = {
        "mode": scheme.mode,
        "requested_mode": config.mode,
        "scheme": scheme.record(),
        "candidate": chosen.name,
        "quantized_nodes": chosen.quantized_nodes,
        "op_counts": chosen.op_counts,
        "fp32_nodes_kept": list(scheme.exclude_nodes),
        "model_size_bytes": chosen.size_bytes,
        "fp32_model_size_bytes": fp32_size,
        "size_ratio": round(fp32_size / chosen.size_bytes, 3),
        "target": {
            "preset": preset.name if integer else None,
            "device": "cpu" if integer else "gpu",
            "assumes_vnni": preset.vnni if integer else None,
            "requires_cpu_flags": list(preset.requires_flags) if integer else [],
            "note": preset.note if integer else "fp16 pays off on GPUs with tensor cores; CPUs run it slowly",
            "built_on_cpu": {"model": cpu["model"], "flags": cpu["flags"]},
            "built_cpu_has_vnni": bool({"avx512_vnni", "avx_vnni"} & set(cpu["flags"])),
            "speedup_caveat": SPEEDUP_CAVEAT if integer else
            "fp16 is checked against fp32 here; its speed-up shows only on the GPU provider",
        },
        "calibration": calibration_record(config, session),
        "gate": gate,
        "validation": chosen.validation,
        **(chosen.batching or {}),
    }
    metrics = {}
    if config.evaluate:
        metrics = {"dev": {**chosen.metrics, "n": len(session.dev)},
                   "fp32_dev": {**(base.metrics if base else {}), "n": len(session.dev)},
                   "drop_pts": chosen.drop_pts}
    onnx_record = {**(parent.manifest.get("onnx") or {}), "file": MODEL_FILE, "ort_format": None,
                   "precision": "fp16" if scheme.mode == "fp16" else "int8"}
    return {**inherited, "onnx": onnx_record, "primary_metric": session.metric, "config": config.model_dump(mode="json"),
            "parent": parent_record(parent), "quantization": quantization, "metrics": metrics}


def calibration_record(config: QuantizeConfig, session) -> dict | None:
    if session.calibration is None:
        return None
    reader = session.reader
    return {"data": config.calibration, "split": config.calibration_split, "method": config.method,
            "max_samples": config.calibration_samples, "batch_size": config.calibration_batch_size,
            "samples": len(reader.features) if reader else 0,
            "samples_read": reader.samples_seen if reader else 0,
            "batches_read": reader.batches_seen if reader else 0}


def report_markdown(record: dict) -> str:
    """quantize_report.md: the scheme, size, batching and the gate's table, from the manifest record."""
    q = record["quantization"]
    target = q["target"]
    nodes = ", ".join(f"{k} {v}" for k, v in q["quantized_nodes"].items()) or "none"
    size = (f"{q['model_size_bytes'] / 2**20:.2f} MiB vs fp32 {q['fp32_model_size_bytes'] / 2**20:.2f} MiB "
            f"({q['size_ratio']}x smaller)")
    lines = [f"# Quantization report: {q['candidate']}", "",
             f"- mode: {q['requested_mode']} -> {q['mode']}; preset {target['preset']}; "
             + f"VNNI assumed: {target['assumes_vnni']}",
             f"- size: {size}", f"- quantized nodes: {nodes}", f"- caveat: {target['speedup_caveat']}", ""]
    metrics = record.get("metrics") or {}
    if metrics:
        metric = record["primary_metric"]
        summary = (f"- dev {metric}: {metrics['dev'].get(metric)} (fp32 {metrics['fp32_dev'].get(metric)}, "
                   f"{log.points_change(metrics['drop_pts'])})")
        lines += [summary]
    if q.get("batch_invariant") is False:
        effect = q.get("b32_vs_b1")
        line = (f"- batch-dependent: {', '.join(q['runtime_scale_ops'])} compute activation scales at run time; "
                "the runtime runs one sequence at a time by default (predictions then never depend on the batch)")
        if effect:
            line += (f"; batched 32 at a time, {effect['flips']} of {effect['n']} dev predictions change "
                     f"(max |diff| {effect['max_abs_diff']:.3g})")
        lines += [line]
    elif q.get("batch_invariant"):
        lines += ["- batch-invariant: no op computes activation scales at run time"]
    lines += [""]
    gate = q.get("gate")
    if gate:
        verdict = "met" if gate["met"] else "NOT met (most accurate candidate saved)"
        lines += [f"## Accuracy gate: budget {gate['max_accuracy_drop']} pts of {gate['metric']}, {verdict}", "",
                  f"| candidate | verdict | {gate['metric']} | change (pts, loss < 0) | p50 ms (b1) | speed-up | MiB |",
                  "|---|---|---|---|---|---|---|"]
        for row in [gate["baseline"], *gate["candidates"]]:
            mark = " **(chosen)**" if row["name"] == gate["chosen"] else ""
            verdict = row.get("verdict") or ("reference" if row["name"] == "fp32" else row.get("status", "ok"))
            lines.append(f"| {row['name']}{mark} | {verdict} | {format_cell(row.get('score'))} | "
                         f"{format_cell(-row['drop_pts'] + 0.0 if row.get('drop_pts') is not None else None)} | {format_cell(row.get('p50_ms'))} | {format_cell(row.get('speedup'))} | "
                         f"{format_cell(row.get('size_bytes', 0) / 2**20)} |")
        if gate.get("sensitivity"):
            lines += ["", "Most sensitive nodes (output error removed when kept in fp32):", ""]
            lines += [f"- {s['node']}: {s['error_reduction']:.3g}" for s in gate["sensitivity"]["most_sensitive"]]
    return "\n".join(lines) + "\n"


def format_cell(value) -> str:
    """A table cell: '-' for None, floats to 4 places."""
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
