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
from pathlib import Path

from ... import log
from ...artifacts import Artifact, atomic_artifact, check_output_path, load_artifact
from ...errors import ArtifactError, BertEdgeError, ConfigError, QuantizationError
from . import fp16
from . import ort_int8 as oq
from .config import QuantizeConfig
from .gate import Candidate, candidate_verdict, choose_candidate
from .manifest import MODEL_FILE, manifest_record, report_markdown

REPORT_FILE = "quantize_report.md"

# The fp32 model files (ONNX and ORT format) are replaced; everything else (tokenizer, config.json) is copied.
_NOT_COPIED = {MODEL_FILE, "model.ort", "required_operators.config", "bertedge.json", REPORT_FILE,
               "model_with_tokenizer.onnx"}


def quantize(src: str | Path | Artifact, config: QuantizeConfig, out: str | Path, *,
             overwrite: bool = False) -> Artifact:
    """Quantize the fp32 bundle `src` into a new bundle at `out` (engine inc: the PyTorch artifact `src` into a
    Neural Compressor torch program)."""
    if config.engine == "inc":
        from .inc import quantize_torch

        return quantize_torch(src, config.inc_config(), out, overwrite=overwrite)
    out = check_output_path(out, overwrite=overwrite)
    parent = src if isinstance(src, Artifact) else load_artifact(src)
    if config.with_tokenizer and parent.manifest.get("early_exit"):
        raise ConfigError("does not support early-exit bundles (one graph per segment)", where="--with-tokenizer",
                          fix="Drop --with-tokenizer")
    if parent.has_exits:  # one graph per segment
        from ..early_exit_bundle import quantize_early_exit

        return quantize_early_exit(parent, config, out, overwrite=overwrite)
    source_model = _check_source(parent)
    with_tokenizer = (bool(parent.manifest.get("tokenizer_in_graph")) if config.with_tokenizer is None
                      else config.with_tokenizer)
    if with_tokenizer:
        from ..export import check_with_tokenizer

        check_with_tokenizer(parent)
    preset = oq.preset_for(config.preset)
    base = oq.base_schemes(config, preset, source_model)
    if config.mode == "static" and not config.calibration:
        raise QuantizationError("static quantization needs calibration data", where="--calibration",
                                fix="Pass --calibration DATA (e.g. --calibration sst2 reads its train split)")
    if Path(out).resolve() == parent.path.resolve():
        raise ArtifactError("output path is the input bundle", where=str(out), fix="Choose another --out")

    from ...evaluate import artifact_settings, calibration_features, load_eval_examples

    encoder = _encoder(parent)
    settings = artifact_settings(parent)
    dev = load_eval_examples(parent, config.data, "dev", config.eval_samples) if config.evaluate else []
    calibration = (calibration_features(parent, config.calibration, config.calibration_split,
                                        config.calibration_samples, encoder, settings)
                   if config.calibration else None)

    with atomic_artifact(out, stage="quantize", task=parent.task, overwrite=overwrite) as writer:
        work = writer.path / ".work"
        work.mkdir()
        session = QuantizeRun(parent, config, encoder, settings, dev, calibration, work, source_model)
        if config.mode == "auto":
            chosen, gate = session.gate(base)
        else:
            chosen, gate = session.single(base[0]), None
        chosen.batching = session.batching(chosen)
        shutil.copyfile(chosen.path, writer.path / MODEL_FILE)
        shutil.rmtree(work)
        for file in parent.path.iterdir():
            if file.is_file() and file.name not in _NOT_COPIED and not file.name.startswith("."):
                shutil.copy2(file, writer.path / file.name)
        record = manifest_record(parent, config, preset, chosen, gate, session)
        record["layout"] = _layout(parent, config, writer.path, chosen.scheme.mode, settings)
        if with_tokenizer:
            from ..export import write_tokenizer_graph

            record["tokenizer_in_graph"] = write_tokenizer_graph(writer.path, parent, encoder, settings.max_length,
                                                                 [e["text"] for e in dev])
        writer.manifest.update(record)
        (writer.path / REPORT_FILE).write_text(report_markdown(record), encoding="utf-8")
    return load_artifact(out)


def _layout(parent: Artifact, config: QuantizeConfig, bundle_dir: Path, mode: str, settings) -> dict:
    """The transformers.js files for the quantized model (when asked, or when the fp32 bundle had them)."""
    layout = config.layout or (parent.manifest.get("layout") or {}).get("layout") or "bertedge"
    if layout == "transformers.js":
        from ...jslayout import write_transformers_js_layout

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


def _encoder(artifact: Artifact):
    """The bundle's own encoder (it builds exactly the inputs the graph declares)."""
    from ...runtime import Bundle

    return Bundle(artifact.path).encoder


# ----------------------------------------------------------------------------- the work


class QuantizeRun:
    """State shared by the candidates of one run: fp32 reference outputs, dev metric, timings."""

    def __init__(self, parent, config, encoder, settings, dev, calibration, work, source_model):
        from ...tasks import get_task

        self.parent, self.config, self.encoder, self.settings = parent, config, encoder, settings
        self.task = get_task(parent.task)
        self.metric = parent.manifest.get("primary_metric") or self.task.primary_metric
        self.dev, self.work, self.source = dev, work, source_model
        self.calibration = calibration
        self.reader = None
        self.calibration_cache = work / "calibration-ranges.json"
        self.baseline: Candidate | None = None
        self.sensitivity: oq.Sensitivity | None = None
        self._count = 0
        self._eval_batch: dict[Path, int] = {}  # candidate graph -> dev batch size (1: run-time scales)

    # -- one candidate
    def build(self, scheme: oq.Scheme) -> Candidate:
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
        return Candidate(scheme.name, scheme, path, size_bytes=path.stat().st_size, quantized_nodes=quantized,
                         op_counts=counts, quantize_s=round(time.perf_counter() - started, 2))

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
        from ...providers import make_session
        from ...runtime import session_forward
        from ...tasks.base import evaluate_examples

        forward = session_forward(make_session(path, self.config.provider))
        batch = self._eval_batch.get(path)
        if batch is None:  # the fp32 source (candidates were counted when built)
            batch = self._eval_batch[path] = 1 if oq.runtime_scale_ops(oq.op_counts(path)) else 64
        metrics, _ = evaluate_examples(self.task, self.dev, self.encoder, forward, self.settings,
                                       self.parent.labels or None, batch)
        return metrics

    def batching(self, row: Candidate) -> dict:
        """Whether `row`'s graph gives a text the same outputs whatever else is in its batch, and if not,
        by how much batching changes them: dev outputs one sequence at a time vs arrival-order batches of
        32, each padded to its longest member."""
        from ...providers import make_session
        from ...runtime import session_forward
        from ...tasks.base import batch_dependence, outputs_in_order

        ops = oq.runtime_scale_ops(row.op_counts)
        record = {"batch_invariant": not ops, "runtime_scale_ops": ops,
                  "deployed": "per-sequence" if ops else "batched"}
        if not ops or not self.dev:
            return record
        forward = session_forward(make_session(row.path, self.config.provider))
        features = self.task.eval_features(self.dev, self.encoder, self.settings)
        per_token = self.task.per_token_outputs
        alone = outputs_in_order(features, self.encoder, forward, 1, per_token)
        batched = outputs_in_order(features, self.encoder, forward, 32, per_token)
        effect = batch_dependence(self.task, self.dev, features, alone, batched, self.settings,
                                  self.parent.labels or None)
        record["b32_vs_b1"] = effect
        log.info(f"quantize: {row.name} computes activation scales at run time ({', '.join(ops)}): batched "
                 f"32 at a time it changes {effect['flips']} of {effect['n']} dev predictions (max |diff| "
                 f"{effect['max_abs_diff']:.3g}); the bundle runs one sequence at a time by default")
        return record

    def fp32(self) -> Candidate:
        if self.baseline is None:
            metrics = self.evaluate(self.source) if self.config.evaluate else {}
            self.baseline = Candidate("fp32", path=self.source, size_bytes=self.source.stat().st_size,
                                      metrics=metrics, score=metrics.get(self.metric))
        return self.baseline

    def score(self, row: Candidate) -> Candidate:
        row.metrics = self.evaluate(row.path)
        row.score = row.metrics.get(self.metric)
        base = self.fp32().score
        row.drop_pts = round((base - row.score) * 100, 4) if base is not None else None
        return row

    # -- modes
    def single(self, scheme: oq.Scheme) -> Candidate:
        log.info(f"quantize: {scheme.name} ({self.source.name})")
        row = self.build(scheme)
        if scheme.mode == "fp16":
            row.validation = self.validate_fp16(row)
        if self.config.evaluate:
            self.score(row)
            base = self.fp32()
            log.info(f"quantize: dev {self.metric} fp32 {base.score:.4f} -> {row.score:.4f} "
                     f"({log.points_change(row.drop_pts)})")
            if row.drop_pts > self.config.max_accuracy_drop + 1e-9:
                what = (f"{scheme.name} changes dev {self.metric} by {log.points_change(row.drop_pts)}, over "
                        f"the {self.config.max_accuracy_drop} pt budget")
                if self.config.enforce_budget:
                    raise QuantizationError(what, where="--max-accuracy-drop",
                                            fix="Try --mode auto (it keeps sensitive nodes in fp32), static int8 "
                                                "with --calibration, or raise --max-accuracy-drop")
                log.warning(f"{what}; try --mode auto, or pass --max-accuracy-drop to make this an error")
        return row

    def validate_fp16(self, row: Candidate) -> dict:
        """fp16 against fp32 on dev samples; raise if fp16 overflows, turns outputs non-finite or
        diverges beyond `fp16_tolerance`.

        Overflow is judged on the fp32 activations of every tensor the fp16 graph holds in float16
        (beyond +-65504 is inf in fp16 on any device), not only on the fp16 outputs: ONNX Runtime's
        CPU provider computes some fp16 ops in fp32 and can hide an overflow that a GPU would hit.
        """
        from ...providers import make_session
        from ...runtime import session_forward
        from ...tasks.base import run_forward

        config, scheme = self.config, row.scheme
        examples, inputs = self.dev[:config.fp16_samples], "dev"
        if not examples:
            examples, inputs = [self.task.text_example(LONG_TEXT)], "synthetic"
            log.warning("fp16: checking overflow on one synthetic input only (--no-eval skips the dev data)")
        features = self.task.eval_features(examples, self.encoder, self.settings)
        held = fp16.fp16_tensors(self.source, row.path, scheme)
        probe = fp16.Fp16RangeProbe(self.source, list(held), self.work, config.provider)
        per_token, batch = self.task.per_token_outputs, 8  # the probe exposes every activation: small batches
        reference = run_forward(features, self.encoder, probe.forward, batch, per_token)
        candidate = run_forward(features, self.encoder, session_forward(make_session(row.path, config.provider)),
                                batch, per_token)
        outputs = fp16.compare_fp16_outputs(reference, candidate, config.fp16_tolerance)
        overflow = probe.overflows(held)
        clipped = fp16.fp16_clipped_weights(self.source, row.path)
        floats = [v for n, v in probe.maxima.items() if n in held]
        validation = {"inputs": inputs, "samples": len(examples), "features": len(features),
                      "provider": config.provider, "tolerance": config.fp16_tolerance, "outputs": outputs,
                      "fp16_tensors": len(floats), "max_abs_activation": max(floats, default=0.0),
                      "overflowing_tensors": overflow, "clipped_weights": clipped}
        problems = []
        if overflow:
            problems.append(f"{len(overflow)} activation(s) beyond the fp16 range +-65504 (inf in fp16): "
                            + fp16.listing(overflow, "max |x|"))
        if clipped:
            problems.append(f"{len(clipped)} weight(s) beyond +-65504 clipped: " + fp16.listing(clipped, "max |w|"))
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
                f"(per output: {per_output})", where=str(self.source), fix=fp16.fp16_fix(held, overflow, clipped))
        log.info("fp16: no overflow (largest |activation| held in fp16 "
                 f"{validation['max_abs_activation']:.3g}); max |fp16 - fp32| "
                 + ", ".join(f"{n} {r['max_abs_diff']:.2e}" for n, r in outputs.items()))
        return validation

    def gate(self, schemes: list[oq.Scheme]) -> tuple[Candidate, dict]:
        budget = self.config.max_accuracy_drop
        base = self.fp32()
        log.info(f"quantize auto: fp32 dev {self.metric} {base.score:.4f}; budget {budget} pts; "
                 f"{len(schemes)} candidate schemes")
        rows = [self._try(s) for s in schemes]
        self._time(rows)
        # Keeping the most sensitive nodes in fp32 only helps if the fastest scheme fails the
        # budget: try it on that scheme when it is faster than every scheme that passes.
        ok = [r for r in rows if r.ok]
        passing = [r for r in ok if r.drop_pts <= budget]
        fastest = min(ok, key=lambda r: r.p50_ms) if ok else None
        if fastest and self.config.fp32_nodes and fastest.drop_pts > budget and \
                (not passing or fastest.p50_ms < min(r.p50_ms for r in passing)):
            extra = self._fallbacks(fastest)
            if extra:
                rows += extra
                self._time(rows)  # re-time everything together so the p50s stay comparable
        chosen, met = choose_candidate(rows, budget)
        if not met:
            log.warning(f"no candidate keeps dev {self.metric} within {budget} pts of fp32 "
                        f"({base.score:.4f}); saving the most accurate one, {chosen.name} "
                        f"({log.points_change(chosen.drop_pts)})")
        else:
            log.info(f"quantize auto: chose {chosen.name} ({log.points_change(chosen.drop_pts)}, "
                     f"p50 {chosen.p50_ms:.2f} ms vs fp32 {base.p50_ms:.2f} ms)")
        for row in rows:
            row.verdict = candidate_verdict(row, chosen, budget, self.metric)
            if row.verdict.startswith("rejected"):
                log.info(f"  {row.name}: {row.verdict}")
        gate = {"max_accuracy_drop": budget, "met": met, "metric": self.metric, "chosen": chosen.name,
                "baseline": base.record(), "candidates": [r.record() for r in rows],
                "sensitivity": self.sensitivity.record() if self.sensitivity else None,
                "timing": {"batch_size": 1, "sequence_length": self.settings.max_length,
                           "rounds": self.config.timing_rounds, "threads": self.config.timing_threads,
                           "note": "interleaved medians inside the quantize run; use `bertedge bench` for "
                                   "reportable latencies"}}
        return chosen, gate

    def _try(self, scheme: oq.Scheme) -> Candidate:
        try:
            row = self.score(self.build(scheme))
            row.status = "ok"
            log.info(f"  {row.name:<40} {self.metric} {row.score:.4f} ({log.points_change(row.drop_pts)}), "
                     f"{row.size_bytes / 2**20:.1f} MiB")
        except QuantizationError as exc:
            log.warning(f"candidate {scheme.name} failed: {exc}")
            row = Candidate(scheme.name, scheme, status=f"failed: {exc.what}")
        return row

    def _time(self, rows: list[Candidate]) -> None:
        ok = [r for r in rows if r.ok]
        feature = self.task.eval_features([self.task.text_example(LONG_TEXT)], self.encoder, self.settings)[0]
        batch = self.encoder.collate([feature], pad_to=self.settings.max_length)
        base = self.fp32()
        paths = {"fp32": base.path, **{str(i): r.path for i, r in enumerate(ok)}}
        timings = oq.time_models(paths, batch, rounds=self.config.timing_rounds,
                                 threads=self.config.timing_threads, provider=self.config.provider)
        base.set_timing(timings["fp32"])
        for i, row in enumerate(ok):
            row.set_timing(timings[str(i)])
            row.speedup = round(base.p50_ms / row.p50_ms, 3) if row.p50_ms else None

    def _fallbacks(self, row: Candidate) -> list[Candidate]:
        """Candidates that keep the most sensitive nodes of `row`'s scheme in fp32."""
        scheme = row.scheme
        nodes = oq.weighted_nodes(self.source, scheme)
        log.info(f"quantize auto: sensitivity of {len(nodes)} nodes under {scheme.name} "
                 f"({self.config.sensitivity_samples} samples)")
        probe = self.dev[:self.config.sensitivity_samples]
        features = self.task.eval_features(probe, self.encoder, self.settings)
        batches = [self.encoder.collate(features[i:i + 16]) for i in range(0, len(features), 16)]
        reference = self._outputs(self.source, batches)
        base_error = oq.output_error(reference, self._outputs(row.path, batches))
        gains = []
        for node in nodes:
            trial = self.build(scheme.with_exclusions([node]))
            error = oq.output_error(reference, self._outputs(trial.path, batches))
            gains.append((node, round(base_error - error, 8)))
            trial.path.unlink()
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
        from ...providers import make_session
        from ...runtime import session_forward

        forward = session_forward(make_session(path, self.config.provider))
        return [forward(b) for b in batches]


LONG_TEXT = " ".join(["the movie was very good and the story was great"] * 40)  # a synthetic long input
