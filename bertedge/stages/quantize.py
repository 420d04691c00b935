"""quantize: int8 (dynamic or static QDQ) or fp16 versions of an exported ONNX bundle, with an
accuracy gate (`mode="auto"`) that picks the fastest candidate within a metric budget.

The input is a bundle written by `bertedge export` (its model.onnx already carries ONNX
Runtime's transformer fusions, so Attention becomes QAttention). The output is a normal bundle:
same tokenizer files, a new model.onnx, manifest stage "quantize" with the fp32 bundle as
parent, the candidate table, and the CPU assumptions of the integer types it chose.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from .. import log
from ..artifacts import Artifact, atomic_artifact, check_output_path, load_artifact, parent_record
from ..config import StrictModel
from ..errors import ArtifactError, BertEdgeError, ConfigError, QuantizationError
from . import _onnx_quant as oq

MODEL_FILE = "model.onnx"
REPORT_FILE = "quantize_report.md"
# Manifest keys of the parent that describe the parent's own run, not the bundle's contents.
PARENT_ONLY_KEYS = {"format_version", "stage", "complete", "payload_sha256", "size_bytes", "environment",
                     "created_at", "wall_time_s", "metrics", "config", "parent", "history", "training",
                     "quantization", "validation", "tokenizer_in_graph"}


# The fp32 model files (ONNX and ORT format) are replaced; everything else (tokenizer, config.json) is copied.
_NOT_COPIED = {MODEL_FILE, "model.ort", "required_operators.config", "bertedge.json", REPORT_FILE,
               "model_with_tokenizer.onnx"}


# The fields both engines understand; every other field is ONNX Runtime's own.
SHARED_FIELDS = ("engine", "mode", "calibration", "calibration_split", "calibration_samples", "calibration_batch_size",
                 "max_accuracy_drop", "enforce_budget", "data", "eval_samples")


class QuantizeConfig(StrictModel):
    engine: Literal["onnxruntime", "inc"] = Field(
        "onnxruntime", description="onnxruntime: an exported ONNX bundle -> an int8/fp16 bundle; inc: Intel Neural "
                                   "Compressor on a PyTorch artifact -> an int8 torch program (bertedge[inc])")
    mode: Literal["dynamic", "static", "auto", "fp16"] = Field(
        "dynamic", description="dynamic int8, static int8 (QDQ, needs calibration), auto (accuracy gate over "
                               "candidates) or fp16 (GPU targets)")
    preset: Literal["avx2", "avx512", "avx512_vnni", "arm64"] | None = Field(
        None, description="Target CPU: integer types and reduce_range (default: detected from this CPU)")
    per_channel: bool = Field(False, description="Per-channel weight scales (auto tries both)")
    reduce_range: bool | None = Field(None, description="7-bit weights (default: the preset's choice)")
    calibration: str | None = Field(
        None, description="Calibration data for static int8: data directory, name under the data root, or hub:NAME")
    calibration_split: Literal["train", "dev", "test"] = Field("train", description="Split used for calibration")
    calibration_samples: int = Field(256, ge=1, description="Most calibration samples read (memory is one batch)")
    calibration_batch_size: int = Field(8, ge=1, description="Calibration batch size")
    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="Static calibration method")
    exclude_op_types: list[str] = Field(default_factory=list, description="Op types kept in float (e.g. Attention)")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names kept in float")
    max_accuracy_drop: float = Field(1.0, ge=0, description="Budget for the dev metric, in points (0-100 scale): "
                                                            "auto picks the fastest candidate within it; the other "
                                                            "modes warn when their drop is over it")
    enforce_budget: bool = Field(False, description="dynamic/static/fp16: fail (nothing written) instead of warning "
                                                    "when the dev drop is over max_accuracy_drop")
    fp32_nodes: int = Field(2, ge=0, le=10, description="auto: keep up to this many most sensitive nodes in fp32")
    sensitivity_samples: int = Field(64, ge=1, description="auto: dev samples for the per-node sensitivity analysis")
    data: str | None = Field(None, description="Evaluation data (default: the data recorded in the bundle)")
    eval_samples: int | None = Field(None, ge=1, description="Evaluate on a seeded subset of the dev split")
    evaluate: bool = Field(True, description="Evaluate fp32 and quantized on the dev split")
    timing_rounds: int = Field(30, ge=3, description="auto: interleaved timing rounds per candidate (b1)")
    timing_threads: int | None = Field(None, ge=1, description="auto: intra-op threads for timing (default: ORT's)")
    provider: str = Field("cpu", description="ONNX Runtime provider for evaluation (cuda for fp16)")
    fp16_tolerance: float = Field(0.05, gt=0, description="fp16: largest allowed |fp16 - fp32| per output, "
                                                          "relative to max(1, largest |fp32| value)")
    fp16_samples: int = Field(256, ge=1, description="fp16: dev samples checked for overflow and divergence")
    layout: Literal["bertedge", "transformers.js"] | None = Field(
        None, description="transformers.js: also lay the bundle out for @huggingface/transformers "
                          "(onnx/model_quantized.onnx or onnx/model_fp16.onnx); default: the input bundle's layout")
    with_tokenizer: bool | None = Field(
        None, description="Also write model_with_tokenizer.onnx for the quantized model (raw text in, label out; "
                          "needs bertedge[tokenizer]); default: when the input bundle has one")

    @model_validator(mode="after")
    def _check(self):
        if self.mode == "auto" and not self.evaluate:
            raise ValueError("mode=auto needs evaluate=True (the gate compares dev metrics)")
        if self.engine == "inc":
            if self.mode == "fp16":
                raise ValueError("engine inc quantizes to int8 only (fp16 is an ONNX Runtime mode)")
            fields = type(self).model_fields
            given = [name for name in fields if name not in SHARED_FIELDS
                     and getattr(self, name) != fields[name].get_default(call_default_factory=True)]
            if given:
                raise ValueError(f"{given[0]} applies to the onnxruntime engine only (Neural Compressor picks its "
                                 "own scheme); drop it, or use engine onnxruntime on the exported bundle")
        return self

    def inc_config(self):
        """The same request as Neural Compressor's config (its own calibration default when none was given)."""
        from .inc_quantize import IncQuantizeConfig

        shared = {k: getattr(self, k) for k in SHARED_FIELDS if k != "engine"}
        if "calibration_samples" not in self.model_fields_set:
            shared.pop("calibration_samples")
        return IncQuantizeConfig.model_validate(shared)


def quantize(src: str | Path | Artifact, config: QuantizeConfig, out: str | Path, *,
             overwrite: bool = False) -> Artifact:
    """Quantize the fp32 bundle `src` into a new bundle at `out` (engine inc: the PyTorch artifact `src` into a
    Neural Compressor torch program)."""
    if config.engine == "inc":
        from .inc_quantize import quantize_torch

        return quantize_torch(src, config.inc_config(), out, overwrite=overwrite)
    out = check_output_path(out, overwrite=overwrite)
    parent = src if isinstance(src, Artifact) else load_artifact(src)
    if config.with_tokenizer and parent.manifest.get("early_exit"):
        raise ConfigError("does not support early-exit bundles (one graph per segment)", where="--with-tokenizer",
                          fix="Drop --with-tokenizer")
    if (parent.manifest.get("early_exit") or {}).get("segments"):  # one graph per segment
        from .early_exit_bundle import quantize_early_exit

        return quantize_early_exit(parent, config, out, overwrite=overwrite)
    source_model = _check_source(parent)
    with_tokenizer = (bool(parent.manifest.get("tokenizer_in_graph")) if config.with_tokenizer is None
                      else config.with_tokenizer)
    if with_tokenizer:
        from .export import check_with_tokenizer

        check_with_tokenizer(parent)
    preset = _preset(config)
    base = _base_schemes(config, preset, source_model)
    if config.mode == "static" and not config.calibration:
        raise QuantizationError("static quantization needs calibration data", where="--calibration",
                                fix="Pass --calibration DATA (e.g. --calibration sst2 reads its train split)")
    if Path(out).resolve() == parent.path.resolve():
        raise ArtifactError("output path is the input bundle", where=str(out), fix="Choose another --out")

    from ..evaluate import artifact_settings, calibration_features, load_eval_examples

    encoder = _encoder(parent)
    settings = artifact_settings(parent)
    dev = load_eval_examples(parent, config.data, "dev", config.eval_samples) if config.evaluate else []
    calibration = (calibration_features(parent, config.calibration, config.calibration_split,
                                        config.calibration_samples, encoder, settings)
                   if config.calibration else None)

    with atomic_artifact(out, stage="quantize", task=parent.task, overwrite=overwrite) as writer:
        work = writer.path / ".work"
        work.mkdir()
        session = _Session(parent, config, encoder, settings, dev, calibration, work, source_model)
        if config.mode == "auto":
            chosen, gate = session.gate(base)
        else:
            chosen, gate = session.single(base[0]), None
        chosen["batching"] = session.batching(chosen)
        shutil.copyfile(chosen["path"], writer.path / MODEL_FILE)
        shutil.rmtree(work)
        for file in parent.path.iterdir():
            if file.is_file() and file.name not in _NOT_COPIED and not file.name.startswith("."):
                shutil.copy2(file, writer.path / file.name)
        record = _manifest(parent, config, preset, chosen, gate, session)
        record["layout"] = _layout(parent, config, writer.path, chosen["scheme"].mode, settings)
        if with_tokenizer:
            from .export import write_tokenizer_graph

            record["tokenizer_in_graph"] = write_tokenizer_graph(writer.path, parent, encoder, settings.max_length,
                                                                 [e["text"] for e in dev])
        writer.manifest.update(record)
        (writer.path / REPORT_FILE).write_text(_report(record), encoding="utf-8")
    return load_artifact(out)


def _layout(parent: Artifact, config: QuantizeConfig, bundle_dir: Path, mode: str, settings) -> dict:
    """The transformers.js files for the quantized model (when asked, or when the fp32 bundle had them)."""
    layout = config.layout or (parent.manifest.get("layout") or {}).get("layout") or "bertedge"
    if layout == "transformers.js":
        from ..jslayout import write_transformers_js_layout

        return write_transformers_js_layout(bundle_dir, precision="fp16" if mode == "fp16" else "int8",
                                            max_length=settings.max_length, task=parent.task,
                                            labels=parent.labels or None)
    config_path = bundle_dir / "config.json"
    if config_path.is_file():  # an fp32 transformers.js parent's dtype would point at a file not here
        import json

        data = json.loads(config_path.read_text(encoding="utf-8"))
        if data.pop("transformers.js_config", None) is not None:
            config_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"layout": "bertedge"}


# ----------------------------------------------------------------------------- input checks


def _check_source(parent: Artifact) -> Path:
    if not parent.is_bundle:
        raise QuantizationError(
            "expected an exported ONNX bundle (model.onnx), got a PyTorch artifact", where=str(parent.path),
            fix="Run `bertedge export` first and quantize its output")
    model = parent.file(MODEL_FILE)
    precision = oq.graph_precision(model)
    if parent.stage == "quantize" or precision:
        what = (parent.manifest.get("quantization") or {}).get("mode") or precision or "quantized"
        raise QuantizationError(f"the bundle is already quantized ({what})", where=str(parent.path),
                                fix="Quantize the fp32 bundle written by `bertedge export` (this one's parent)")
    return model


def _preset(config: QuantizeConfig) -> oq.Preset:
    from ..env import cpu_info

    cpu = cpu_info()
    name = config.preset or oq.detect_preset(cpu["flags"], cpu["machine"])
    return oq.PRESETS[name]


def _base_schemes(config: QuantizeConfig, preset: oq.Preset, model: Path) -> list[oq.Scheme]:
    """The schemes to try: one for dynamic/static/fp16, the candidate list for auto."""
    nodes = oq.node_names(model)
    unknown = [n for n in config.exclude_nodes if n not in nodes]
    if unknown:
        sample = ", ".join(list(nodes)[:6])
        raise ConfigError(f"no node named {', '.join(repr(u) for u in unknown)} in the graph",
                          where="--exclude-nodes", fix=f"Use node names from model.onnx (e.g. {sample})")
    excluded = tuple(config.exclude_nodes)
    if config.mode == "fp16":
        keep = tuple(dict.fromkeys([*oq.FP16_KEEP_FP32, *config.exclude_op_types]))
        return [oq.Scheme("fp16", keep_fp32_ops=keep, exclude_nodes=excluded)]
    known = set(oq.DYNAMIC_OP_TYPES) | set(oq.STATIC_OP_TYPES) | set(oq.STATIC_TAIL_OP_TYPES)
    bad = [t for t in config.exclude_op_types if t not in known]
    if bad:
        raise ConfigError(f"unknown or unquantized op type {', '.join(repr(b) for b in bad)}",
                          where="--exclude-op-types", fix=f"Choose from: {', '.join(sorted(known))}")

    def ops(default):
        return tuple(t for t in default if t not in config.exclude_op_types)

    reduce = preset.reduce_range if config.reduce_range is None else config.reduce_range
    dynamic = oq.Scheme("dynamic", per_channel=config.per_channel,
                        reduce_range=False if config.reduce_range is None else config.reduce_range,
                        weight_type=preset.weight_type, op_types=ops(oq.DYNAMIC_OP_TYPES), exclude_nodes=excluded)
    static = oq.Scheme("static", per_channel=config.per_channel, reduce_range=reduce,
                       weight_type=preset.static_weight_type, activation_type=preset.static_activation_type,
                       method=config.method, op_types=ops(oq.STATIC_OP_TYPES), exclude_nodes=excluded,
                       tail_op_types=ops(oq.STATIC_TAIL_OP_TYPES), tail_weight_type=preset.weight_type)
    if config.mode == "dynamic":
        return [dynamic]
    if config.mode == "static":
        return [static]
    candidates = [replace(dynamic, per_channel=False), replace(dynamic, per_channel=True),
                  replace(dynamic, per_channel=True, reduce_range=True)]
    if config.calibration:
        candidates += [replace(static, per_channel=False), replace(static, per_channel=True)]
    return list(dict.fromkeys(candidates))


def _encoder(artifact: Artifact):
    """The bundle's own encoder (it builds exactly the inputs the graph declares)."""
    from ..runtime import Bundle

    return Bundle(artifact.path).encoder


# ----------------------------------------------------------------------------- the work


class _Session:
    """State shared by the candidates of one run: fp32 reference outputs, dev metric, timings."""

    def __init__(self, parent, config, encoder, settings, dev, calibration, work, source_model):
        from ..tasks import get_task

        self.parent, self.config, self.encoder, self.settings = parent, config, encoder, settings
        self.task = get_task(parent.task)
        self.metric = parent.manifest.get("primary_metric") or self.task.primary_metric
        self.dev, self.work, self.source = dev, work, source_model
        self.calibration = calibration
        self.reader = None
        self.calibration_cache = work / "calibration-ranges.json"
        self.baseline: dict | None = None
        self.sensitivity: oq.Sensitivity | None = None
        self._count = 0
        self._eval_batch: dict[Path, int] = {}  # candidate graph -> dev batch size (1: run-time scales)

    # -- one candidate
    def build(self, scheme: oq.Scheme) -> dict:
        self._count += 1
        path = self.work / f"candidate-{self._count}.onnx"
        started = time.perf_counter()
        try:
            oq.quantize_model(self._input(scheme), path, scheme, self.work, calibration_reader=self._reader(scheme),
                              calibration_cache=self._cache(scheme))
        except BertEdgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises bare RuntimeError/ValueError
            detail = " ".join(str(exc).split())[:240]
            raise QuantizationError(f"{scheme.name} failed in onnxruntime.quantization ({detail})",
                                    where=str(self.source),
                                    fix="Exclude the failing op type with --exclude-op-types, or try another --mode") \
                from None
        counts = oq.op_counts(path)
        self._eval_batch[path] = 1 if oq.runtime_scale_ops(counts) else 64
        quantized = oq.quantized_node_counts(counts)
        if scheme.mode == "fp16":
            quantized = {"fp16_initializers": oq.fp16_initializers(path), "Cast": counts.get("Cast", 0)}
        return {"name": scheme.name, "scheme": scheme, "path": path, "size_bytes": path.stat().st_size,
                "quantized_nodes": quantized, "op_counts": counts,
                "quantize_s": round(time.perf_counter() - started, 2)}

    def _input(self, scheme: oq.Scheme) -> Path:
        """The static calibrator needs a type on every tensor (see `typed_copy`)."""
        if scheme.mode != "static":
            return self.source
        typed = self.work / "typed.onnx"
        if not typed.exists():
            oq.typed_copy(self.source, typed)
        return typed

    def _reader(self, scheme):
        if scheme.mode != "static" or self.calibration is None:
            return None
        if self.reader is None:
            self.reader = oq.CalibrationReader(self.calibration, self.encoder, max_samples=self.config.calibration_samples,
                                               batch_size=self.config.calibration_batch_size)
        self.reader.rewind()
        return self.reader

    def _cache(self, scheme):
        # Static candidates share one calibration pass: the ranges are cached in the temp dir.
        return self.calibration_cache if scheme.mode == "static" else None

    def evaluate(self, path: Path) -> dict:
        """Dev metrics as the bundle is deployed: a graph with run-time activation scales (dynamic int8)
        one sequence at a time (what `runtime.Bundle` does with it, and what the report times at b1)."""
        from ..providers import make_session
        from ..runtime import session_forward
        from ..tasks.base import evaluate_examples

        forward = session_forward(make_session(path, self.config.provider))
        batch = self._eval_batch.get(path)
        if batch is None:  # the fp32 source (candidates were counted when built)
            batch = self._eval_batch[path] = 1 if oq.runtime_scale_ops(oq.op_counts(path)) else 64
        metrics, _ = evaluate_examples(self.task, self.dev, self.encoder, forward, self.settings,
                                       self.parent.labels or None, batch)
        return metrics

    def batching(self, row: dict) -> dict:
        """Whether `row`'s graph gives a text the same outputs whatever else is in its batch, and if not,
        by how much batching changes them: dev outputs one sequence at a time vs arrival-order batches of
        32, each padded to its longest member."""
        from ..providers import make_session
        from ..runtime import session_forward
        from ..tasks.base import batch_dependence, outputs_in_order

        ops = oq.runtime_scale_ops(row["op_counts"])
        record = {"batch_invariant": not ops, "runtime_scale_ops": ops,
                  "deployed": "per-sequence" if ops else "batched"}
        if not ops or not self.dev:
            return record
        forward = session_forward(make_session(row["path"], self.config.provider))
        features = self.task.eval_features(self.dev, self.encoder, self.settings)
        per_token = self.task.per_token_outputs
        alone = outputs_in_order(features, self.encoder, forward, 1, per_token)
        batched = outputs_in_order(features, self.encoder, forward, 32, per_token)
        effect = batch_dependence(self.task, self.dev, features, alone, batched, self.settings,
                                  self.parent.labels or None)
        record["b32_vs_b1"] = effect
        log.info(f"quantize: {row['name']} computes activation scales at run time ({', '.join(ops)}): batched "
                 f"32 at a time it changes {effect['flips']} of {effect['n']} dev predictions (max |diff| "
                 f"{effect['max_abs_diff']:.3g}); the bundle runs one sequence at a time by default")
        return record

    def fp32(self) -> dict:
        if self.baseline is None:
            metrics = self.evaluate(self.source) if self.config.evaluate else {}
            self.baseline = {"name": "fp32", "path": self.source, "size_bytes": self.source.stat().st_size,
                             "metrics": metrics, "score": metrics.get(self.metric)}
        return self.baseline

    def score(self, row: dict) -> dict:
        row["metrics"] = self.evaluate(row["path"])
        row["score"] = row["metrics"].get(self.metric)
        base = self.fp32()["score"]
        row["drop_pts"] = round((base - row["score"]) * 100, 4) if base is not None else None
        return row

    # -- modes
    def single(self, scheme: oq.Scheme) -> dict:
        log.info(f"quantize: {scheme.name} ({self.source.name})")
        row = self.build(scheme)
        if scheme.mode == "fp16":
            row["validation"] = self.validate_fp16(row)
        if self.config.evaluate:
            self.score(row)
            base = self.fp32()
            log.info(f"quantize: dev {self.metric} fp32 {base['score']:.4f} -> {row['score']:.4f} "
                     f"({log.points_change(row['drop_pts'])})")
            if row["drop_pts"] > self.config.max_accuracy_drop + 1e-9:
                what = (f"{scheme.name} changes dev {self.metric} by {log.points_change(row['drop_pts'])}, over "
                        f"the {self.config.max_accuracy_drop} pt budget")
                if self.config.enforce_budget:
                    raise QuantizationError(what, where="--max-accuracy-drop",
                                            fix="Try --mode auto (it keeps sensitive nodes in fp32), static int8 "
                                                "with --calibration, or raise --max-accuracy-drop")
                log.warning(f"{what}; try --mode auto, or pass --max-accuracy-drop to make this an error")
        return row

    def validate_fp16(self, row: dict) -> dict:
        """fp16 against fp32 on dev samples; raise if fp16 overflows, turns outputs non-finite or
        diverges beyond `fp16_tolerance`.

        Overflow is judged on the fp32 activations of every tensor the fp16 graph holds in float16
        (beyond +-65504 is inf in fp16 on any device), not only on the fp16 outputs: ONNX Runtime's
        CPU provider computes some fp16 ops in fp32 and can hide an overflow that a GPU would hit.
        """
        from ..providers import make_session
        from ..runtime import session_forward
        from ..tasks.base import run_forward

        config, scheme = self.config, row["scheme"]
        examples, inputs = self.dev[:config.fp16_samples], "dev"
        if not examples:
            examples, inputs = [self.task.text_example(LONG_TEXT)], "synthetic"
            log.warning("fp16: checking overflow on one synthetic input only (--no-eval skips the dev data)")
        features = self.task.eval_features(examples, self.encoder, self.settings)
        held = oq.fp16_tensors(self.source, row["path"], scheme)
        probe = oq.Fp16RangeProbe(self.source, list(held), self.work, config.provider)
        per_token, batch = self.task.per_token_outputs, 8  # the probe exposes every activation: small batches
        reference = run_forward(features, self.encoder, probe.forward, batch, per_token)
        candidate = run_forward(features, self.encoder, session_forward(make_session(row["path"], config.provider)),
                                batch, per_token)
        outputs = oq.compare_fp16_outputs(reference, candidate, config.fp16_tolerance)
        overflow = probe.overflows(held)
        clipped = oq.fp16_clipped_weights(self.source, row["path"])
        floats = [v for n, v in probe.maxima.items() if n in held]
        validation = {"inputs": inputs, "samples": len(examples), "features": len(features),
                      "provider": config.provider, "tolerance": config.fp16_tolerance, "outputs": outputs,
                      "fp16_tensors": len(floats), "max_abs_activation": max(floats, default=0.0),
                      "overflowing_tensors": overflow, "clipped_weights": clipped}
        problems = []
        if overflow:
            problems.append(f"{len(overflow)} activation(s) beyond the fp16 range +-65504 (inf in fp16): "
                            + _listing(overflow, "max |x|"))
        if clipped:
            problems.append(f"{len(clipped)} weight(s) beyond +-65504 clipped: " + _listing(clipped, "max |w|"))
        for name, r in outputs.items():
            if r["non_finite"]:
                problems.append(f"output {name} has {r['non_finite']} non-finite values (inf/NaN) where fp32 is finite")
            elif not r["ok"]:
                problems.append(f"output {name} diverges: max |fp16 - fp32| {r['max_abs_diff']:.2e} > "
                                f"{r['limit']:.2e} (--fp16-tolerance {config.fp16_tolerance} x max(1, |fp32| "
                                f"{r['max_abs_value']:.3g}))")
        validation["passed"] = not problems
        if problems:
            per_output = ", ".join(f"{n} max abs diff {r['max_abs_diff']:.2e} with {r['non_finite']} non-finite"
                                   for n, r in outputs.items())
            raise QuantizationError(
                f"fp16 validation failed on {len(examples)} {inputs} samples: {'; '.join(problems)} "
                f"(per output: {per_output})", where=str(self.source), fix=_fp16_fix(held, overflow, clipped))
        log.info("fp16: no overflow (largest |activation| held in fp16 "
                 f"{validation['max_abs_activation']:.3g}); max |fp16 - fp32| "
                 + ", ".join(f"{n} {r['max_abs_diff']:.2e}" for n, r in outputs.items()))
        return validation

    def gate(self, schemes: list[oq.Scheme]) -> tuple[dict, dict]:
        budget = self.config.max_accuracy_drop
        base = self.fp32()
        log.info(f"quantize auto: fp32 dev {self.metric} {base['score']:.4f}; budget {budget} pts; "
                 f"{len(schemes)} candidate schemes")
        rows = [self._try(s) for s in schemes]
        self._time(rows)
        # Keeping the most sensitive nodes in fp32 only helps if the fastest scheme fails the
        # budget: try it on that scheme when it is faster than every scheme that passes.
        ok = [r for r in rows if r["status"] == "ok"]
        passing = [r for r in ok if r["drop_pts"] <= budget]
        fastest = min(ok, key=lambda r: r["p50_ms"]) if ok else None
        if fastest and self.config.fp32_nodes and fastest["drop_pts"] > budget and \
                (not passing or fastest["p50_ms"] < min(r["p50_ms"] for r in passing)):
            extra = self._fallbacks(fastest)
            if extra:
                rows += extra
                self._time(rows)  # re-time everything together so the p50s stay comparable
        chosen, met = choose_candidate(rows, budget)
        if not met:
            log.warning(f"no candidate keeps dev {self.metric} within {budget} pts of fp32 "
                        f"({base['score']:.4f}); saving the most accurate one, {chosen['name']} "
                        f"({log.points_change(chosen['drop_pts'])})")
        else:
            log.info(f"quantize auto: chose {chosen['name']} ({log.points_change(chosen['drop_pts'])}, "
                     f"p50 {chosen['p50_ms']:.2f} ms vs fp32 {base['p50_ms']:.2f} ms)")
        for row in rows:
            row["verdict"] = candidate_verdict(row, chosen, budget, self.metric)
            if row["verdict"].startswith("rejected"):
                log.info(f"  {row['name']}: {row['verdict']}")
        gate = {"max_accuracy_drop": budget, "met": met, "metric": self.metric, "chosen": chosen["name"],
                "baseline": _row_record(base), "candidates": [_row_record(r) for r in rows],
                "sensitivity": self.sensitivity.record() if self.sensitivity else None,
                "timing": {"batch_size": 1, "sequence_length": self.settings.max_length,
                           "rounds": self.config.timing_rounds, "threads": self.config.timing_threads,
                           "note": "interleaved medians inside the quantize run; use `bertedge bench` for "
                                   "reportable latencies"}}
        return chosen, gate

    def _try(self, scheme: oq.Scheme) -> dict:
        try:
            row = self.score(self.build(scheme))
            row["status"] = "ok"
            log.info(f"  {row['name']:<40} {self.metric} {row['score']:.4f} ({log.points_change(row['drop_pts'])}), "
                     f"{row['size_bytes'] / 2**20:.1f} MiB")
        except QuantizationError as exc:
            log.warning(f"candidate {scheme.name} failed: {exc}")
            row = {"name": scheme.name, "scheme": scheme, "status": f"failed: {exc.what}"}
        return row

    def _time(self, rows: list[dict]) -> None:
        ok = [r for r in rows if r["status"] == "ok"]
        feature = self.task.eval_features([self.task.text_example(LONG_TEXT)], self.encoder, self.settings)[0]
        batch = self.encoder.collate([feature], pad_to=self.settings.max_length)
        base = self.fp32()
        paths = {"fp32": base["path"], **{str(i): r["path"] for i, r in enumerate(ok)}}
        timings = oq.time_models(paths, batch, rounds=self.config.timing_rounds,
                                 threads=self.config.timing_threads, provider=self.config.provider)
        base.update(timings["fp32"])
        for i, row in enumerate(ok):
            row.update(timings[str(i)])
            row["speedup"] = round(base["p50_ms"] / row["p50_ms"], 3) if row["p50_ms"] else None

    def _fallbacks(self, row: dict) -> list[dict]:
        """Candidates that keep the most sensitive nodes of `row`'s scheme in fp32."""
        scheme: oq.Scheme = row["scheme"]
        nodes = oq.weighted_nodes(self.source, scheme)
        log.info(f"quantize auto: sensitivity of {len(nodes)} nodes under {scheme.name} "
                 f"({self.config.sensitivity_samples} samples)")
        probe = self.dev[:self.config.sensitivity_samples]
        features = self.task.eval_features(probe, self.encoder, self.settings)
        batches = [self.encoder.collate(features[i:i + 16]) for i in range(0, len(features), 16)]
        reference = self._outputs(self.source, batches)
        base_error = oq.output_error(reference, self._outputs(row["path"], batches))
        gains = []
        for node in nodes:
            trial = self.build(scheme.with_exclusions([node]))
            error = oq.output_error(reference, self._outputs(trial["path"], batches))
            gains.append((node, round(base_error - error, 8)))
            trial["path"].unlink()
        gains.sort(key=lambda g: -g[1])
        self.sensitivity = oq.Sensitivity(base_error=base_error, gains=gains)
        extra, seen = [], set()
        for k in range(1, self.config.fp32_nodes + 1):
            keep = tuple(self.sensitivity.top(k))
            if not keep or keep in seen:
                continue
            seen.add(keep)
            extra.append(self._try(scheme.with_exclusions(list(keep))))
        return extra

    def _outputs(self, path: Path, batches: list[dict]) -> list[dict]:
        from ..providers import make_session
        from ..runtime import session_forward

        forward = session_forward(make_session(path, self.config.provider))
        return [forward(b) for b in batches]


def _listing(values: dict[str, float], label: str, limit: int = 3) -> str:
    shown = ", ".join(f"{name} ({label} {value:.3g})" for name, value in list(values.items())[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _fp16_fix(held: dict[str, oq.Fp16Tensor], overflow: dict[str, float], clipped: dict[str, float]) -> str:
    """What to keep in fp32: the nodes around the overflowing tensors when they are few, else op types."""
    nodes = oq.fp16_nodes_to_keep(held, list(overflow))
    op_types = list(dict.fromkeys(t.op_type for t in held.values() if t.node in nodes))
    if nodes and len(nodes) <= 8:
        keep = f"--exclude-nodes {','.join(nodes)} (or --exclude-op-types {','.join(op_types)})"
    elif op_types:
        keep = f"--exclude-op-types {','.join(op_types)}"
    else:
        keep = "--exclude-op-types (e.g. MatMul,Attention) or --exclude-nodes"
    text = f"Keep more ops in fp32 with {keep}"
    if not overflow and not clipped:
        text += ", raise --fp16-tolerance if the difference is acceptable"
    return text + ", or stay with the fp32 bundle"


def choose_candidate(rows: list[dict], max_drop: float) -> tuple[dict, bool]:
    """The fastest candidate within `max_drop` points; else the most accurate one (met=False)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        reasons = "; ".join(f"{r['name']}: {r['status']}" for r in rows)
        raise QuantizationError(f"every quantization candidate failed ({reasons})",
                                fix="Exclude the failing op types with --exclude-op-types")
    within = [r for r in ok if r["drop_pts"] <= max_drop + 1e-9]
    if within:
        return min(within, key=lambda r: (r["p50_ms"], r["drop_pts"])), True
    return min(ok, key=lambda r: (r["drop_pts"], r["p50_ms"])), False


def candidate_verdict(row: dict, chosen: dict, max_drop: float, metric: str) -> str:
    """Why the gate took or left a candidate, in words the report shows."""
    if row.get("status") != "ok":
        return f"rejected: {row.get('status')}"
    within = row["drop_pts"] <= max_drop + 1e-9
    if row is chosen:
        return ("chosen: fastest within the budget" if within else
                f"chosen: most accurate, but {log.points_change(row['drop_pts'])}, over the {max_drop} pt budget")
    if not within:
        return f"rejected: {metric} {log.points_change(row['drop_pts'])}, over the {max_drop} pt budget"
    return f"within budget, slower than {chosen['name']} ({row['p50_ms']:.2f} vs {chosen['p50_ms']:.2f} ms)"


LONG_TEXT = " ".join(["the movie was very good and the story was great"] * 40)  # a synthetic long input


# ----------------------------------------------------------------------------- manifest and report


def _row_record(row: dict) -> dict:
    keep = ("name", "status", "verdict", "score", "drop_pts", "p50_ms", "p90_ms", "speedup", "size_bytes",
            "quantized_nodes", "quantize_s")
    data = {k: row[k] for k in keep if k in row}
    if "scheme" in row:
        data["scheme"] = row["scheme"].record()
    data.setdefault("status", "ok")
    return data


def _manifest(parent: Artifact, config: QuantizeConfig, preset: oq.Preset, chosen: dict, gate: dict | None,
              session: _Session) -> dict:
    from ..env import cpu_info

    scheme: oq.Scheme = chosen["scheme"]
    base = session.baseline or {}
    inherited = {k: v for k, v in parent.manifest.items() if k not in PARENT_ONLY_KEYS}
    cpu = cpu_info()
    integer = scheme.mode != "fp16"
    fp32_size = session.source.stat().st_size
    quantization = {
        "mode": scheme.mode,
        "requested_mode": config.mode,
        "scheme": scheme.record(),
        "candidate": chosen["name"],
        "quantized_nodes": chosen["quantized_nodes"],
        "op_counts": chosen["op_counts"],
        "fp32_nodes_kept": list(scheme.exclude_nodes),
        "model_size_bytes": chosen["size_bytes"],
        "fp32_model_size_bytes": fp32_size,
        "size_ratio": round(fp32_size / chosen["size_bytes"], 3),
        "target": {
            "preset": preset.name if integer else None,
            "device": "cpu" if integer else "gpu",
            "assumes_vnni": preset.vnni if integer else None,
            "requires_cpu_flags": list(preset.requires_flags) if integer else [],
            "note": preset.note if integer else "fp16 pays off on GPUs with tensor cores; CPUs run it slowly",
            "built_on_cpu": {"model": cpu["model"], "flags": cpu["flags"]},
            "built_cpu_has_vnni": bool({"avx512_vnni", "avx_vnni"} & set(cpu["flags"])),
            "speedup_caveat": oq.SPEEDUP_CAVEAT if integer else
            "fp16 is checked against fp32 here; its speed-up shows only on the GPU provider",
        },
        "calibration": _calibration_record(config, session),
        "gate": gate,
        "validation": chosen.get("validation"),
        **chosen["batching"],
    }
    metrics = {}
    if config.evaluate:
        metrics = {"dev": {**chosen["metrics"], "n": len(session.dev)},
                   "fp32_dev": {**base.get("metrics", {}), "n": len(session.dev)},
                   "drop_pts": chosen["drop_pts"]}
    onnx_record = {**(parent.manifest.get("onnx") or {}), "file": MODEL_FILE, "ort_format": None,
                   "precision": "fp16" if scheme.mode == "fp16" else "int8"}
    return {**inherited, "onnx": onnx_record, "primary_metric": session.metric, "config": config.model_dump(mode="json"),
            "parent": parent_record(parent), "quantization": quantization, "metrics": metrics}


def _calibration_record(config: QuantizeConfig, session: _Session) -> dict | None:
    if session.calibration is None:
        return None
    reader = session.reader
    return {"data": config.calibration, "split": config.calibration_split, "method": config.method,
            "max_samples": config.calibration_samples, "batch_size": config.calibration_batch_size,
            "samples": len(reader.features) if reader else 0,
            "samples_read": reader.samples_seen if reader else 0,
            "batches_read": reader.batches_seen if reader else 0}


def _report(record: dict) -> str:
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
            lines.append(f"| {row['name']}{mark} | {verdict} | {_fmt(row.get('score'))} | "
                         f"{_fmt(-row['drop_pts'] + 0.0 if row.get('drop_pts') is not None else None)} | {_fmt(row.get('p50_ms'))} | {_fmt(row.get('speedup'))} | "
                         f"{_fmt(row.get('size_bytes', 0) / 2**20)} |")
        if gate.get("sensitivity"):
            lines += ["", "Most sensitive nodes (output error removed when kept in fp32):", ""]
            lines += [f"- {s['node']}: {s['error_reduction']:.3g}" for s in gate["sensitivity"]["most_sensitive"]]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
