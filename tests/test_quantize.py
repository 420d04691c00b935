"""quantize: node counts in the output graph, exclusions, calibration bound, the accuracy gate,
fp16, the bundle contract (eval/runtime load it unchanged) and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest
from conftest import assert_one_line_error

from bertedge.stages.quantize import Candidate, QuantizeConfig, choose_candidate, quantize
from bertedge.stages.quantize import ort_int8 as oq
from bertedge.stages.quantize import stage as qstage


def ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def nodes(path: Path) -> dict[str, str]:
    return {n.name: n.op_type for n in onnx.load(str(path)).graph.node}


def weight_matmuls(path: Path) -> list[str]:
    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def no_leftovers(tmp_path: Path, name: str = "q") -> None:
    assert not (tmp_path / name).exists()
    assert not list(tmp_path.glob(f".{name}*")), list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def fp32(tiny_bundles):
    return tiny_bundles["sst"]


@pytest.fixture(scope="module")
def dynamic(fp32, tmp_path_factory):
    return quantize(fp32, QuantizeConfig(mode="dynamic", preset="avx2"), tmp_path_factory.mktemp("q") / "dyn")


def test_dynamic_turns_fused_graph_into_integer_ops(fp32, dynamic):
    src, out = ops(fp32.file("model.onnx")), ops(dynamic.file("model.onnx"))
    assert src["Attention"] == 2 and src["EmbedLayerNormalization"] == 1  # the fused input graph
    n_matmul = len(weight_matmuls(fp32.file("model.onnx")))
    assert out["QAttention"] == src["Attention"] and "Attention" not in out
    assert out["QEmbedLayerNormalization"] == 1 and "EmbedLayerNormalization" not in out
    assert out["MatMulInteger"] >= n_matmul and "MatMul" not in out
    q = dynamic.manifest["quantization"]
    assert q["quantized_nodes"]["QAttention"] == 2
    assert q["quantized_nodes"]["MatMulInteger"] == out["MatMulInteger"]
    assert q["scheme"]["weight_type"] == "QUInt8" and q["target"]["preset"] == "avx2"
    assert q["target"]["assumes_vnni"] is False and "VNNI" in q["target"]["speedup_caveat"]
    assert q["size_ratio"] == round(fp32.file("model.onnx").stat().st_size
                                    / dynamic.file("model.onnx").stat().st_size, 3)
    assert q["size_ratio"] > 1.5


def test_quantized_bundle_is_a_normal_bundle(fp32, dynamic, cli):
    from bertedge.runtime import Bundle

    m = dynamic.manifest
    assert m["stage"] == "quantize" and m["task"] == fp32.task and m["labels"] == fp32.labels
    assert m["parent"]["path"] == str(fp32.path.absolute()) and m["parent"]["stage"] == "export"
    for name in ("tokenizer.json", "vocab.txt"):
        assert dynamic.file(name).read_bytes() == fp32.file(name).read_bytes()
    assert m["settings"] == fp32.manifest["settings"] and m["onnx"]["precision"] == "int8"
    assert not list(dynamic.path.glob(".work*")) and not list(dynamic.path.glob("*.onnx.data"))
    # `bertedge eval` and the runtime load it unchanged, and agree with the recorded metric.
    result = cli("eval", str(dynamic.path), "--json")
    assert result.code == 0, result
    assert json.loads(result.out)["metrics"]["accuracy"] == m["metrics"]["dev"]["accuracy"]
    assert len(Bundle(dynamic.path).predict(["a good film"])) == 1
    assert "quantize_report.md" in {p.name for p in dynamic.path.iterdir()}


def test_exclusions_are_honoured(fp32, dynamic, tmp_path):
    keep = weight_matmuls(fp32.file("model.onnx"))[0]
    art = quantize(fp32, QuantizeConfig(mode="dynamic", exclude_op_types=["Attention"], exclude_nodes=[keep],
                                        evaluate=False), tmp_path / "q")
    out = nodes(art.file("model.onnx"))
    assert out[keep] == "MatMul"  # the excluded node is still there, in float
    counts = Counter(out.values())
    assert counts["Attention"] == 2 and "QAttention" not in counts
    assert counts["MatMul"] == 1
    assert counts["MatMulInteger"] == ops(dynamic.file("model.onnx"))["MatMulInteger"] - 1
    assert art.manifest["quantization"]["fp32_nodes_kept"] == [keep]


def test_static_qdq_calibration_is_bounded(fp32, tmp_path):
    art = quantize(fp32, QuantizeConfig(mode="static", calibration=str(Path(fp32.manifest["data"]["path"])),
                                        calibration_samples=5, calibration_batch_size=2, evaluate=False),
                   tmp_path / "q")
    out = ops(art.file("model.onnx"))
    n_matmul = len(weight_matmuls(fp32.file("model.onnx")))
    # One Q/DQ pair on each weight MatMul's activation, one DQ per int8 weight; no Q/DQ on
    # LayerNorm, Reshape/Transpose or attention (activation x activation) MatMuls.
    assert out["QuantizeLinear"] == n_matmul
    assert out["DequantizeLinear"] == 2 * n_matmul
    # The fused ops QDQ cannot express get the dynamic integer form: no fp32 QKV or embedding tables.
    assert out["QAttention"] == 2 and "Attention" not in out and out["SkipLayerNormalization"] == 4
    assert out["QEmbedLayerNormalization"] == 1 and "EmbedLayerNormalization" not in out
    assert art.manifest["quantization"]["scheme"]["tail_op_types"] == ["Attention", "EmbedLayerNormalization"]
    assert art.file("model.onnx").stat().st_size < 0.5 * fp32.file("model.onnx").stat().st_size
    cal = art.manifest["quantization"]["calibration"]
    assert (cal["samples"], cal["samples_read"], cal["batches_read"]) == (5, 5, 3)


def test_calibration_reader_streams_one_batch_per_range():
    class Enc:
        def collate(self, chunk):
            return {"input_ids": [f["i"] for f in chunk]}

    reader = oq.CalibrationReader([{"i": i} for i in range(10)], Enc(), max_samples=7, batch_size=3)
    assert len(reader) == 3
    reader.set_range(1, 2)
    assert reader.get_next() == {"input_ids": [3, 4, 5]} and reader.get_next() is None
    reader.rewind()
    assert [b["input_ids"] for b in reader] == [[0, 1, 2], [3, 4, 5], [6]]
    assert reader.samples_seen == 3 + 7 and reader.batches_seen == 1 + 3


def test_choose_candidate_rules():
    rows = [Candidate("a", drop_pts=2.0, p50_ms=1.0), Candidate("b", drop_pts=0.4, p50_ms=3.0),
            Candidate("c", drop_pts=0.5, p50_ms=2.0), Candidate("d", status="failed: x")]
    assert choose_candidate(rows, 0.5) == (rows[2], True)  # fastest within budget, boundary included
    assert choose_candidate(rows, 0.45) == (rows[1], True)
    assert choose_candidate(rows, 0.1) == (rows[1], False)  # none within: most accurate
    assert choose_candidate(rows, 5.0) == (rows[0], True)


def _contrive(monkeypatch, scores: dict[str, float], latency: dict[str, float]):
    """Fake dev scores and timings per candidate name; quantization and sensitivity stay real."""
    by_path: dict[Path, str] = {}
    build = qstage.QuantizeRun.build

    def tracking_build(self, scheme):
        row = build(self, scheme)
        by_path[row.path] = scheme.name
        return row

    def fake_evaluate(self, path):
        return {"accuracy": 0.90 if path == self.source else scores[by_path[path]]}

    def fake_time(paths, batch, **kw):
        return {k: {"p50_ms": latency[by_path.get(p, "fp32")], "p90_ms": 0.0, "runs": 1} for k, p in paths.items()}

    monkeypatch.setattr(qstage.QuantizeRun, "build", tracking_build)
    monkeypatch.setattr(qstage.QuantizeRun, "evaluate", fake_evaluate)
    monkeypatch.setattr(oq, "time_models", fake_time)


def test_gate_keeps_sensitive_node_in_fp32_when_that_is_fastest(fp32, tmp_path, monkeypatch):
    scores = {"dynamic per-tensor": 0.80, "dynamic per-channel": 0.86, "dynamic per-channel reduce-range": 0.89,
              "dynamic per-tensor +1 fp32 node": 0.88}
    latency = {"fp32": 4.0, "dynamic per-tensor": 1.0, "dynamic per-channel": 2.0,
               "dynamic per-channel reduce-range": 3.0, "dynamic per-tensor +1 fp32 node": 1.5}
    _contrive(monkeypatch, scores, latency)
    art = quantize(fp32, QuantizeConfig(mode="auto", max_accuracy_drop=5, fp32_nodes=1, preset="avx2"),
                   tmp_path / "q")
    gate = art.manifest["quantization"]["gate"]
    assert [r["name"] for r in gate["candidates"]] == list(scores)
    assert gate["met"] is True and gate["chosen"] == "dynamic per-tensor +1 fp32 node"
    assert [r["drop_pts"] for r in gate["candidates"]] == [10.0, 4.0, 1.0, 2.0]
    # Every candidate says why it was taken or left; the report shows it.
    assert [r["verdict"] for r in gate["candidates"]] == [
        "rejected: accuracy -10.00 pts (worse), over the 5.0 pt budget",
        "within budget, slower than dynamic per-tensor +1 fp32 node (2.00 vs 1.50 ms)",
        "within budget, slower than dynamic per-tensor +1 fp32 node (3.00 vs 1.50 ms)",
        "chosen: fastest within the budget"]
    assert "rejected: accuracy -10.00 pts (worse)" in art.file("quantize_report.md").read_text()
    kept = art.manifest["quantization"]["fp32_nodes_kept"]
    top = gate["sensitivity"]["most_sensitive"][0]["node"]
    out = nodes(art.file("model.onnx"))
    # Kept in float (dynamic quantization renames a Gemm "<name>_MatMul" + Add).
    assert kept == [top] and (out.get(top) or out.get(f"{top}_MatMul")) in ("MatMul", "Attention",
                                                                            "EmbedLayerNormalization")
    assert art.manifest["metrics"]["drop_pts"] == 2.0


def test_gate_saves_most_accurate_with_warning_when_budget_is_impossible(fp32, tmp_path, monkeypatch, caplog):
    scores = {"dynamic per-tensor": 0.80, "dynamic per-channel": 0.86, "dynamic per-channel reduce-range": 0.89,
              "dynamic per-tensor +1 fp32 node": 0.85}
    latency = {"fp32": 4.0, "dynamic per-tensor": 1.0, "dynamic per-channel": 2.0,
               "dynamic per-channel reduce-range": 3.0, "dynamic per-tensor +1 fp32 node": 1.5}
    _contrive(monkeypatch, scores, latency)
    art = quantize(fp32, QuantizeConfig(mode="auto", max_accuracy_drop=0.5, fp32_nodes=1), tmp_path / "q")
    gate = art.manifest["quantization"]["gate"]
    assert gate["met"] is False and gate["chosen"] == "dynamic per-channel reduce-range"
    assert art.manifest["quantization"]["scheme"]["reduce_range"] is True
    assert "NOT met" in art.file("quantize_report.md").read_text()


def test_fp16_keeps_norms_in_fp32(fp32, tmp_path):
    art = quantize(fp32, QuantizeConfig(mode="fp16"), tmp_path / "q")
    q = art.manifest["quantization"]
    assert q["mode"] == "fp16" and q["quantized_nodes"]["fp16_initializers"] > 0
    model = onnx.load(str(art.file("model.onnx")))
    fp16 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type in ("SkipLayerNormalization", "EmbedLayerNormalization"):
            assert not fp16 & set(node.input), node.name  # gamma/beta stay fp32
    assert [i.type.tensor_type.elem_type for i in model.graph.output] == [onnx.TensorProto.FLOAT]
    assert abs(art.manifest["metrics"]["drop_pts"]) <= 5.0


def test_cli_flags_map_onto_config(cli, monkeypatch, tmp_path):
    seen = {}

    def fake(bundle, config, out, overwrite=False):
        seen.update(config=config, out=out)
        raise SystemExit(0)

    monkeypatch.setattr("bertedge.stages.quantize.quantize", fake)  # what the command calls
    with pytest.raises(SystemExit):
        cli("quantize", "b", "--out", str(tmp_path / "o"), "--mode", "static", "--preset", "arm64",
            "--per-channel", "--no-reduce-range", "--calibration", "sst2", "--calibration-samples", "64",
            "--method", "entropy", "--exclude-op-types", "Attention,Gather", "--exclude-nodes", "n1",
            "--exclude-nodes", "n2", "--max-accuracy-drop", "0.25")
    c = seen["config"]
    assert (c.mode, c.preset, c.per_channel, c.reduce_range) == ("static", "arm64", True, False)
    assert (c.calibration, c.calibration_samples, c.method) == ("sst2", 64, "entropy")
    assert c.exclude_op_types == ["Attention", "Gather"] and c.exclude_nodes == ["n1", "n2"]
    assert c.max_accuracy_drop == 0.25


# ----------------------------------------------------------------------------- bad input


def test_static_without_calibration_data(cli, fp32, tmp_path):
    result = cli("quantize", str(fp32.path), "--out", str(tmp_path / "q"), "--mode", "static")
    assert_one_line_error(result, "--calibration", "static quantization needs calibration data")
    no_leftovers(tmp_path)


def test_already_quantized_bundle(cli, dynamic, tmp_path):
    result = cli("quantize", str(dynamic.path), "--out", str(tmp_path / "q"))
    assert_one_line_error(result, "already quantized", "fp32 bundle")
    no_leftovers(tmp_path)


def test_unknown_preset(cli, fp32, tmp_path):
    result = cli("quantize", str(fp32.path), "--out", str(tmp_path / "q"), "--preset", "sse4")
    assert_one_line_error(result, "preset: Input should be 'avx2', 'avx512', 'avx512_vnni' or 'arm64'")
    no_leftovers(tmp_path)


def test_negative_budget(cli, fp32, tmp_path):
    result = cli("quantize", str(fp32.path), "--out", str(tmp_path / "q"), "--mode", "auto",
                 "--max-accuracy-drop", "-1")
    assert_one_line_error(result, "max_accuracy_drop: Input should be greater than or equal to 0")
    no_leftovers(tmp_path)


def test_unknown_exclusions(cli, fp32, tmp_path):
    result = cli("quantize", str(fp32.path), "--out", str(tmp_path / "q"), "--exclude-nodes", "nope")
    assert_one_line_error(result, "--exclude-nodes", "no node named 'nope'")
    result = cli("quantize", str(fp32.path), "--out", str(tmp_path / "q"), "--exclude-op-types", "Softmax")
    assert_one_line_error(result, "--exclude-op-types", "'Softmax'")
    no_leftovers(tmp_path)


def test_pytorch_artifact_is_refused(cli, tiny_artifacts, tmp_path):
    result = cli("quantize", str(tiny_artifacts["sst"].path), "--out", str(tmp_path / "q"))
    assert_one_line_error(result, "expected an exported ONNX bundle", "bertedge export")
    no_leftovers(tmp_path)


# ----------------------------------------------------------------------------- budget on every mode, signs


def test_drops_print_with_one_sign_convention():
    from bertedge.log import points_change

    assert points_change(0.4) == "-0.40 pts (worse)"
    assert points_change(-0.6) == "+0.60 pts (better)"
    assert points_change(0.0) == "+0.00 pts (same)" and points_change(None) == "n/a"


def _fake_scores(monkeypatch, score: float):
    def fake_evaluate(self, path):
        return {"accuracy": 0.90 if path == self.source else score}

    monkeypatch.setattr(qstage.QuantizeRun, "evaluate", fake_evaluate)


def test_plain_dynamic_over_budget_warns(fp32, tmp_path, monkeypatch, caplog):
    _fake_scores(monkeypatch, 0.80)  # loses 10 points
    art = quantize(fp32, QuantizeConfig(mode="dynamic", preset="avx2"), tmp_path / "q")
    assert art.manifest["metrics"]["drop_pts"] == 10.0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("changes dev accuracy by -10.00 pts (worse), over the 1.0 pt budget" in w for w in warnings), warnings
    assert "-10.00 pts (worse)" in art.file("quantize_report.md").read_text()


def test_plain_dynamic_over_budget_fails_with_max_accuracy_drop(fp32, tmp_path, monkeypatch, cli):
    _fake_scores(monkeypatch, 0.895)  # loses 0.5 points
    result = cli("quantize", fp32.path, "--out", tmp_path / "q", "--mode", "dynamic", "--preset", "avx2",
                 "--max-accuracy-drop", "0.25")
    assert_one_line_error(result, "--max-accuracy-drop", "dynamic per-tensor changes dev accuracy by -0.50 pts (worse)",
                          "over the 0.25 pt budget", "--mode auto")
    no_leftovers(tmp_path)
    within = cli("quantize", fp32.path, "--out", tmp_path / "q", "--mode", "dynamic", "--preset", "avx2",
                 "--max-accuracy-drop", "0.5")
    assert within.code == 0 and "-0.50 pts (worse)" in within.out, within


# ----------------------------------------------------------------------------- batch-dependent int8


TEXTS = ["a good film", "the worst thing i have seen in years , dull and long", "fine", "great acting",
         "not good , not bad", "an utterly forgettable , tedious story with no redeeming moments at all"] * 6


def test_dynamic_int8_is_marked_batch_dependent_and_measured(dynamic):
    q = dynamic.manifest["quantization"]
    assert q["batch_invariant"] is False and "QAttention" in q["runtime_scale_ops"]
    assert q["deployed"] == "per-sequence"
    effect = q["b32_vs_b1"]
    assert effect["n"] == len(load_dev(dynamic)) and 0 <= effect["flips"] <= effect["n"]
    assert effect["max_abs_diff"] > 0  # dynamic scales over a batch of 32 do change the logits


def load_dev(artifact):
    from bertedge.evaluate import load_eval_examples

    return load_eval_examples(artifact, None, "dev", None)


def test_the_batch_invariant_mode_has_no_flips_and_no_logit_difference(dynamic):
    from bertedge.runtime import Bundle

    bundle = Bundle(dynamic.path)
    assert bundle.per_sequence and not bundle.batch_invariant
    alone = [bundle.predict([t])[0] for t in TEXTS]
    for batch_size in (1, 4, 32):
        batched = bundle.predict(TEXTS, batch_size=batch_size)
        assert [p["label"] for p in batched] == [p["label"] for p in alone]
        diff = max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(alone, batched) for k in a["scores"])
        assert diff == 0.0, (batch_size, diff)
    # the same file batched the plain way: its scores depend on the rest of the batch
    plain = Bundle(dynamic.path, per_sequence=False)
    batched = plain.predict(TEXTS, batch_size=32)
    assert max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(alone, batched) for k in a["scores"]) > 0


def test_fp32_and_static_bundles_are_batch_invariant(fp32, tmp_path, tiny_data):
    from bertedge.runtime import Bundle

    assert Bundle(fp32.path).batch_invariant and not Bundle(fp32.path).per_sequence
    static = quantize(fp32, QuantizeConfig(mode="static", preset="avx2", calibration=str(tiny_data["sst"]),
                                           calibration_samples=16), tmp_path / "s")
    q = static.manifest["quantization"]
    # static QDQ MatMuls have fixed scales, but the fused attention still gets ONNX Runtime's dynamic form
    assert q["batch_invariant"] is ("QAttention" not in ops(static.file("model.onnx")))


def test_eval_of_a_batch_dependent_bundle_runs_per_sequence(dynamic, cli):
    result = cli("eval", dynamic.path, "--json")
    assert result.code == 0, result
    record = json.loads(result.out)
    assert record["batch_invariant"] is False and record["batching"] == "per-sequence"
    assert record["metrics"]["accuracy"] == dynamic.manifest["metrics"]["dev"]["accuracy"]
