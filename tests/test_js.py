"""The bundle in JavaScript: the transformers.js layout, Node parity (onnxruntime-node + @huggingface/tokenizers)
and transformers.js pipelines against `bertedge predict`, on tiny bundles of all four task families, fp32 and int8.

The Node tests need `node` and the example's packages (`cd examples/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci`,
which `make test` and .ci/run do); the browser test also needs Debian's chromium and examples/web's packages.
Without them they skip locally, with the reason; under CI=true they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_EXAMPLE = ROOT / "examples" / "node"
WEB_EXAMPLE = ROOT / "examples" / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FAMILIES = ("sst", "pair", "conll", "squad")
# The bigger the same batching is, the better the test: fp32 outputs may differ by float rounding with
# padding; int8 bundles run one sequence per call on both sides (their graphs scale over the batch).
FP32_ATOL = 1e-4

LONG = " ".join(["the movie was very good and the story was great"] * 12)  # > 64 tokens: truncated
INPUTS = {
    "sst": ["a good movie", "bad film", "The ACTOR was really GREAT!", "it was awful , not fine", "",
            "café crème: très bien 😀", "שלום good عالم", LONG, "john said   the plot\twas poor"],
    "pair": [{"text": "a good film", "text_pair": "a good film"}, {"text": "the plot was bad", "text_pair": "great"},
             {"text": LONG, "text_pair": "short one"}, {"text": "short", "text_pair": LONG},
             {"text": LONG, "text_pair": LONG}, {"text": "Émile loved it 😀", "text_pair": ""},
             {"text": "john won", "text_pair": "the team lost"}, {"text": "Paris!", "text_pair": "london ?"}],
    "conll": ["John won in Paris .", "the team of Google city lost on monday", "Mary told Reuters: berlin won!",
              "", "café 😀 london", {"tokens": ["mary", "won", "in", "london"]}, LONG + " paris"],
    "squad": [{"question": "what is the capital of france ?", "context": "the film the capital of france is paris ."},
              {"question": "  where is berlin ?", "context": "Berlin is the capital of GERMANY, said Mary."},
              {"question": "what is the capital of england ?",
               "context": LONG + " the capital of england is london . " + LONG},
              {"question": "who won ? " * 40, "context": "the team won . john won in paris ."},
              {"question": "what is 😀 ?", "context": "café 😀 is the capital of émile , not paris ."},
              {"question": "what ?", "context": ""}],
}


def node_skip_or_fail(reason: str):
    """Skip with the reason locally; fail under CI, where .ci/run installs node and the packages."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: .ci/run must install it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        node_skip_or_fail("node is not installed (apt-get install nodejs npm)")
    for package in ("onnxruntime-node", "@huggingface/tokenizers", "@huggingface/transformers"):
        if not (NODE_EXAMPLE / "node_modules" / package / "package.json").is_file():
            node_skip_or_fail(f"{package} is not installed in examples/node "
                              "(cd examples/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci)")
    return path


@pytest.fixture(scope="session")
def js_bundles(tmp_path_factory, tiny_artifacts) -> dict:
    """{(family, "fp32"|"int8"): bundle} written with --layout transformers.js (int8: dynamic, inherits it)."""
    from bertedge.stages.export import ExportConfig, export
    from bertedge.stages.quantize import QuantizeConfig, quantize

    root = tmp_path_factory.mktemp("js-bundles")
    bundles = {}
    for name in FAMILIES:
        fp32 = export(tiny_artifacts[name], ExportConfig(layout="transformers.js", metric_samples=16), root / name)
        bundles[name, "fp32"] = fp32
        bundles[name, "int8"] = quantize(fp32, QuantizeConfig(mode="dynamic", preset="avx2", evaluate=False),
                                         root / f"{name}-int8")
    return bundles


def write_inputs(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(item if isinstance(item, dict) else {"text": item}, ensure_ascii=False) + "\n"
                            for item in items), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def chromium(node) -> str:
    if not os.access(CHROMIUM, os.X_OK):
        node_skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    for package in ("onnxruntime-web", "@huggingface/tokenizers", "playwright-core"):
        if not (WEB_EXAMPLE / "node_modules" / package / "package.json").is_file():
            node_skip_or_fail(f"{package} is not installed in examples/web (cd examples/web && npm ci)")
    return CHROMIUM


def run_node(node: str, script: str, *args, cwd: Path = NODE_EXAMPLE) -> list[dict]:
    result = subprocess.run([node, script, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def bertedge_predict(cli, bundle, inputs: Path, out: Path, *extra) -> list[dict]:
    result = cli("predict", bundle.path, "--input", inputs, "--logits", "--output", out, *extra)
    assert result.code == 0, result
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def prediction_key(task: str, p: dict):
    if task == "text-classification":
        return p["label"]
    if task == "token-classification":
        return [(e["entity"], e["first_word"], e["last_word"], e.get("start"), e.get("end"), e["text"])
                for e in p["entities"]]
    return p["start"], p["end"], p["answer"]


def max_output_diff(a: list[dict], b: list[dict]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        assert len(x["outputs"]) == len(y["outputs"]), (x, y)
        for wx, wy in zip(x["outputs"], y["outputs"]):
            assert wx.keys() == wy.keys()
            for name in wx:
                u, v = np.asarray(wx[name], dtype=np.float64), np.asarray(wy[name], dtype=np.float64)
                assert u.shape == v.shape, (name, u.shape, v.shape)
                if u.size:
                    worst = max(worst, float(np.max(np.abs(u - v))))
    return worst


# ----------------------------------------------------------------------------- the layout (Python only)


def test_transformers_js_layout_is_added_beside_the_bundle(js_bundles, tiny_bundles):
    from bertedge.runtime import Bundle

    for precision, name in (("fp32", "model.onnx"), ("int8", "model_quantized.onnx")):
        art = js_bundles["conll", precision]
        path = art.path
        linked = path / "onnx" / name
        assert linked.is_file() and linked.read_bytes() == (path / "model.onnx").read_bytes()
        assert os.path.samefile(linked, path / "model.onnx")  # a hard link: no second copy on disk
        assert art.manifest["layout"] == {"layout": "transformers.js", "model": f"onnx/{name}",
                                          "dtype": "fp32" if precision == "fp32" else "q8", "hard_link": True,
                                          "load": "pipeline('token-classification', BUNDLE_DIR, "
                                                  "{local_files_only: true})"}
        # the hard link is counted once
        assert art.manifest["size_bytes"] < sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        config = json.loads((path / "config.json").read_text())
        assert config["model_type"] == "bert"
        assert config["transformers.js_config"]["dtype"] == ("fp32" if precision == "fp32" else "q8")
        assert [config["id2label"][str(i)] for i in range(len(art.labels))] == art.labels
        assert {v: int(k) for k, v in config["id2label"].items()} == config["label2id"]
        tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
        assert tokenizer_config["model_max_length"] == art.manifest["settings"]["max_length"]

    # bertedge's own runtime reads it as any bundle, with the same predictions as the default layout.
    texts = ["john won in paris", "the team of google city lost"]
    assert Bundle(js_bundles["conll", "fp32"].path).predict(texts) == Bundle(tiny_bundles["conll"].path).predict(texts)
    assert tiny_bundles["conll"].manifest["layout"] == {"layout": "bertedge"}
    assert not (tiny_bundles["conll"].path / "onnx").exists()


def test_quantize_layout_bertedge_from_a_transformers_js_bundle_drops_its_dtype(js_bundles, tmp_path):
    from bertedge.stages.quantize import QuantizeConfig, quantize

    art = quantize(js_bundles["sst", "fp32"], QuantizeConfig(mode="dynamic", preset="avx2", evaluate=False,
                                                             layout="bertedge"), tmp_path / "q")
    assert art.manifest["layout"] == {"layout": "bertedge"} and not (art.path / "onnx").exists()
    assert "transformers.js_config" not in json.loads((art.path / "config.json").read_text())


def test_cli_layout_option(cli, tiny_artifacts, tmp_path):
    result = cli("export", tiny_artifacts["sst"].path, "--out", tmp_path / "b", "--layout", "transformers.js",
                 "--metric-samples", "8")
    assert result.code == 0, result
    assert (tmp_path / "b" / "onnx" / "model.onnx").is_file()
    bad = cli("export", tiny_artifacts["sst"].path, "--out", tmp_path / "c", "--layout", "tfjs")
    assert bad.code != 0 and "layout" in bad.err


# ----------------------------------------------------------------------------- Node parity


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("family", FAMILIES)
def test_node_matches_bertedge_predict(node, cli, js_bundles, tmp_path, family, precision):
    bundle = js_bundles[family, precision]
    inputs = write_inputs(tmp_path / "inputs.jsonl", INPUTS[family])
    reference = bertedge_predict(cli, bundle, inputs, tmp_path / "ref.jsonl", "--batch-size", "4")
    got = run_node(node, "predict.mjs", bundle.path, "--input", inputs, "--logits", "--batch-size", "4")
    assert len(got) == len(reference)
    task = bundle.task
    for g, r in zip(got, reference):
        assert prediction_key(task, g) == prediction_key(task, r), (g, r)
        if task == "text-classification":
            assert g["truncated"] == r["truncated"]
            assert g["scores"] == pytest.approx(r["scores"], abs=1e-6)
        elif task == "question-answering":
            assert (g["windows"], g["question_truncated"]) == (r["windows"], r["question_truncated"])
        else:
            assert (g["truncated_words"], g["words"]) == (r["truncated_words"], r["words"])
    diff = max_output_diff(got, reference)
    print(f"\nnode parity {family} {precision}: {len(got)} inputs, predictions equal, max |output diff| {diff:.3g}")
    assert diff <= (0.0 if precision == "int8" else FP32_ATOL), diff
    # The inputs exercise what they are meant to: truncation, several QA windows, a shortened question.
    if family == "sst":
        assert any(r["truncated"] for r in reference)
    if family == "squad":
        assert max(r["windows"] for r in reference) > 1 and any(r["question_truncated"] for r in reference)
    if family == "conll":
        assert any(r["truncated_words"] for r in reference)


def test_parity_script_reports_equal_predictions(node, cli, js_bundles, tmp_path):
    bundle = js_bundles["squad", "int8"]
    inputs = write_inputs(tmp_path / "inputs.jsonl", INPUTS["squad"])
    bertedge_predict(cli, bundle, inputs, tmp_path / "ref.jsonl")
    (summary,) = run_node(node, "parity.mjs", bundle.path, inputs, tmp_path / "ref.jsonl", "--atol", "0")
    assert summary["ok"] and summary["predictions_equal"] == len(INPUTS["squad"])
    assert summary["max_abs_output_diff"] == 0 and summary["batching"] == "per-sequence"


# ----------------------------------------------------------------------------- transformers.js


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_js_pipeline_matches_bertedge_predict(node, cli, js_bundles, tmp_path, family, precision):
    """transformers.js loads the bundle as a local model; its answers equal bertedge's where both define them.

    Where transformers.js differs by design, the inputs stay inside what both do the same way: its QA pipeline
    reads one window (no doc stride) and returns the decoded answer text, its NER pipeline tags word pieces;
    so QA contexts here fit one window and NER is compared at each word's first piece. Its tokenizer truncates
    after adding [CLS]/[SEP] (a truncated input loses its last [SEP]; bertedge and Python transformers keep it),
    so classification inputs over max_length are left out (checked below to differ) and NER ones are short.
    It also reads an empty text_pair as no pair (one [SEP] less), so such pairs are left out too.
    """
    from bertedge.runtime import Bundle

    bundle = js_bundles[family, precision]
    items = INPUTS[family]
    if family == "squad":
        items = [i for i in items if len(i["context"]) < 200 and len(i["question"]) < 50 and i["context"]]
    if family == "conll":
        items = [i for i in items if isinstance(i, str) and len(i) < 200]
    if family in ("sst", "pair"):
        full = bertedge_predict(cli, bundle, write_inputs(tmp_path / "all.jsonl", items), tmp_path / "all-ref.jsonl")
        items = [item for item, r in zip(items, full)
                 if not r["truncated"] and not (isinstance(item, dict) and item.get("text_pair") == "")]
        assert len(items) < len(full)
    inputs = write_inputs(tmp_path / "inputs.jsonl", items)
    reference = bertedge_predict(cli, bundle, inputs, tmp_path / "ref.jsonl")
    got = run_node(node, "transformers-js.mjs", bundle.path, "--input", inputs)
    assert len(got) == len(reference) == len(items)
    worst = 0.0
    if family in ("sst", "pair"):
        for g, r in zip(got, reference):
            assert g["label"] == r["label"], (g, r)
            worst = max(worst, abs(g["score"] - r["score"]))
    elif family == "conll":
        runtime = Bundle(bundle.path)
        added = json.loads((bundle.path / "tokenizer.json").read_text())["added_tokens"]
        special = {t["id"] for t in added if t["special"]}
        for item, g, r in zip(items, got, reference):
            example = runtime.normalize(item)
            (feature,) = runtime.task.eval_features([example], runtime.encoder, runtime.settings)
            # The pipeline lists the word pieces it tags other than O, except special ones ([UNK]) it cannot decode.
            raw = {t["index"]: t["entity"] for t in g["tokens"]}
            logits = np.asarray(r["outputs"][0]["logits"])
            for word, pos in enumerate(feature["first_piece"]):
                if pos is None or feature["input_ids"][pos] in special:
                    continue
                expected = runtime.labels[int(np.argmax(logits[pos]))]
                assert raw.get(pos, "O") == expected, (item, word, raw, expected)
            scores = {t["index"]: t["score"] for t in g["tokens"]}
            for pos in scores:
                worst = max(worst, abs(scores[pos] - float(np.max(np.exp(logits[pos]) / np.exp(logits[pos]).sum()))))
    else:
        for g, r in zip(got, reference):
            assert g["answer"] == " ".join(r["answer"].lower().split()), (g, r)
    print(f"\ntransformers.js {family} {precision}: {len(items)} inputs equal, max |score diff| {worst:.3g}")
    assert worst <= (1e-5 if precision == "int8" else 1e-4)


def test_node_matches_batched_int8_at_the_same_batching(node, cli, js_bundles, tmp_path):
    """int8 graphs scale activations over the whole batch: batched on both sides, the same batches give 0 too."""
    bundle = js_bundles["sst", "int8"]
    inputs = write_inputs(tmp_path / "inputs.jsonl", INPUTS["sst"])
    reference = bertedge_predict(cli, bundle, inputs, tmp_path / "ref.jsonl", "--batch-size", "4", "--batched")
    got = run_node(node, "predict.mjs", bundle.path, "--input", inputs, "--logits", "--batch-size", "4", "--batched")
    assert [g["label"] for g in got] == [r["label"] for r in reference]
    assert max_output_diff(got, reference) == 0


# ----------------------------------------------------------------------------- the web page, in Chromium


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_web_page_in_chromium_gives_bertedge_labels(node, chromium, cli, js_bundles, tmp_path, precision):
    """examples/web served on 127.0.0.1, onnxruntime-web's wasm EP in headless Chromium, three typed texts."""
    bundle = js_bundles["sst", precision]
    texts = ["a good movie", "The ACTOR was really GREAT!", "café crème: très bien 😀"]
    reference = bertedge_predict(cli, bundle, write_inputs(tmp_path / "inputs.jsonl", texts), tmp_path / "ref.jsonl")
    shot = tmp_path / "page.png"
    got = run_node(node, "browser-test.mjs", bundle.path, "--chromium", chromium, "--screenshot", shot, *texts,
                   cwd=WEB_EXAMPLE)
    assert [g["text"] for g in got] == texts
    assert [g["label"] for g in got] == [r["label"] for r in reference]
    for g, r in zip(got, reference):
        assert g["scores"] == pytest.approx(r["scores"], abs=1e-4)  # shown with 4 decimals
        assert g["latency_ms"] >= 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nweb page {precision}: labels {[g['label'] for g in got]} equal bertedge predict; "
          f"latency {[g['latency_ms'] for g in got]} ms")


# ----------------------------------------------------------------------------- early exit in Node

EE_LAYERS = 3
# Sentences of the toy sentiment set's words and others: 1 to 64 tokens (LONG is truncated), so the batches
# of 4 mix lengths and the exits cut padding columns as well as rows.
EE_TEXTS = INPUTS["sst"] + ["good movie", "the film was bad", "a very nice story", "awful plot", "it is the film",
                            "worst actor", "love this", "the the the", "really quite fine but sad",
                            "best best best movie ever", "plot", "john won in paris", "sad", "the story was fine"]


def exit_confidences(path: Path, texts: list, rule: str) -> list[float]:
    """Per text, run alone (as the int8 default does): the layer-1 exit's normalised entropy or max probability."""
    from bertedge.early_exit import normalised_entropy, probabilities, run_segments
    from bertedge.runtime import Bundle

    bundle = Bundle(path, full_depth=True)
    features = bundle.task.eval_features([bundle.normalize(t) for t in texts], bundle.encoder, bundle.settings)
    values = []
    for feature in features:
        out = run_segments(bundle.segments, bundle.encoder.collate([feature]), "entropy", 0.0, full_depth=True,
                           collect=True)
        probs = probabilities(out["layer_logits"][0, 0])
        values.append(float(normalised_entropy(probs) if rule == "entropy" else probs.max()))
    return values


def split_threshold(values: list[float]) -> float:
    """Halfway across the widest gap between the values of the middle half: a quarter to three quarters of
    the texts exit at layer 1, the rest go on."""
    ordered = sorted(values)
    n = len(ordered)
    gap, k = max((ordered[k + 1] - ordered[k], k) for k in range(n // 4, 3 * n // 4))
    assert gap > 1e-5, ordered  # far from every text's value, so float rounding cannot move an exit
    return (ordered[k] + ordered[k + 1]) / 2


def with_rule(artifact, rule: str, threshold: float, out: Path):
    """A copy of an early-exit bundle whose manifest carries `rule` and `threshold` (the payload is unchanged)."""
    from bertedge.artifacts import load_artifact
    from bertedge.early_exit import RULE_TEXT

    shutil.copytree(artifact.path, out)
    manifest = json.loads((out / "bertedge.json").read_text())
    manifest["early_exit"].update(rule=rule, threshold=threshold, rule_definition=RULE_TEXT[rule])
    (out / "bertedge.json").write_text(json.dumps(manifest, indent=2))
    return load_artifact(out)


@pytest.fixture(scope="module")
def ee_bundles(tmp_path_factory) -> dict:
    """A 3-layer classifier with exit heads, exported (fp32) and dynamic int8 (threshold recalibrated), each as
    written and with the entropy / max-prob rule at a threshold that splits EE_TEXTS, or patience 1."""
    from conftest import build_tiny_bert, finetune_tiny, write_classification_dir

    from bertedge.stages.early_exit import EarlyExitConfig, early_exit
    from bertedge.stages.export import ExportConfig, export
    from bertedge.stages.quantize import QuantizeConfig, quantize

    root = tmp_path_factory.mktemp("js-early-exit")
    model = build_tiny_bert(root / "tiny3", layers=EE_LAYERS)
    data = write_classification_dir(root / "sst", n_train=96, n_dev=32)
    plain = finetune_tiny(model, data, "text-classification", root / "ft", epochs=10)
    artifact = early_exit(plain, EarlyExitConfig(epochs=3), root / "ee")
    bundles = {"fp32": export(artifact, ExportConfig(metric_samples=16), root / "fp32")}
    bundles["int8"] = quantize(bundles["fp32"], QuantizeConfig(mode="dynamic", preset="avx2"), root / "int8")
    for precision in ("fp32", "int8"):
        for rule in ("entropy", "max-prob"):
            threshold = split_threshold(exit_confidences(bundles[precision].path, EE_TEXTS, rule))
            bundles[precision, rule] = with_rule(bundles[precision], rule, threshold, root / f"{precision}-{rule}")
        bundles[precision, "patience"] = with_rule(bundles[precision], "patience", 1.0, root / f"{precision}-patience")
    return bundles


def mixed_batches(path: Path, texts: list, reference: list[dict], batch_size: int) -> int:
    """How many of bertedge's length-sorted batches hold texts that exit at different layers."""
    from bertedge.runtime import Bundle

    bundle = Bundle(path)
    features = bundle.task.eval_features([bundle.normalize(t) for t in texts], bundle.encoder, bundle.settings)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(len({reference[i]["exit_layer"] for i in batch}) > 1 for batch in batches)


@pytest.mark.parametrize("precision, rule, batching", [
    ("fp32", "entropy", "batched"), ("fp32", "max-prob", "batched"), ("fp32", "patience", "batched"),
    ("int8", "entropy", "per-sequence"), ("int8", "entropy", "batched"), ("int8", "max-prob", "batched"),
    ("int8", "patience", "per-sequence")])
def test_node_runs_early_exit_bundles_like_bertedge_predict(node, cli, ee_bundles, tmp_path, precision, rule,
                                                            batching):
    """The exit protocol in lib/bertedge.mjs on real segment graphs: the labels, exit layers and logits of
    `bertedge predict`, at batches of 4 (int8: also one text per call, its default).

    int8 graphs scale activations over the whole tensor they get, so batched int8 gives 0 only if Node drops
    the decided rows and cuts the padding columns exactly where bertedge does. The tiny model's exits agree
    with each other on every text, so patience 1 sends every text out at layer 2: the patience counter's
    other paths are checked on synthetic segments (test_node_exit_protocol_on_synthetic_segments).
    """
    bundle = ee_bundles[precision, rule]
    inputs = write_inputs(tmp_path / "inputs.jsonl", EE_TEXTS)
    extra = ["--batch-size", "4"] + (["--batched"] if batching == "batched" else ["--per-sequence"])
    reference = bertedge_predict(cli, bundle, inputs, tmp_path / "ref.jsonl", *extra)
    got = run_node(node, "predict.mjs", bundle.path, "--input", inputs, "--logits", *extra)
    assert len(got) == len(reference) == len(EE_TEXTS)
    for g, r in zip(got, reference):
        assert (g["label"], g["exit_layer"], g["truncated"]) == (r["label"], r["exit_layer"], r["truncated"]), (g, r)
        assert g["scores"] == pytest.approx(r["scores"], abs=1e-6)
    diff = max_output_diff(got, reference)  # the logits, and exit_layer as an output too
    histogram = {k: sum(r["exit_layer"] == k for r in reference) for k in range(1, EE_LAYERS + 1)}
    print(f"\nnode early exit {precision} {rule} {bundle.manifest['early_exit']['threshold']:.6g} {batching}: "
          f"{len(got)} inputs, labels and exit layers equal, exit histogram {histogram}, max |logit diff| {diff:.3g}")
    assert diff <= (0.0 if precision == "int8" else FP32_ATOL), diff
    assert any(r["truncated"] for r in reference)
    if rule == "patience":
        assert histogram == {1: 0, 2: len(EE_TEXTS), 3: 0}, histogram
    else:
        assert sum(n > 0 for n in histogram.values()) > 1, histogram  # the threshold really splits the inputs
        if batching == "batched":
            assert mixed_batches(bundle.path, EE_TEXTS, reference, 4) > 0  # rows left batches mid-way


def test_node_early_exit_overrides_and_full_depth(node, cli, ee_bundles, tmp_path):
    """--rule/--threshold on the bundle as written = that rule in the manifest; --full-depth = every layer."""
    bundle = ee_bundles["fp32"]
    inputs = write_inputs(tmp_path / "inputs.jsonl", EE_TEXTS)
    other = ee_bundles["fp32", "max-prob"]
    reference = bertedge_predict(cli, other, inputs, tmp_path / "ref.jsonl", "--batch-size", "4")
    got = run_node(node, "predict.mjs", bundle.path, "--input", inputs, "--logits", "--batch-size", "4",
                   "--rule", "max-prob", "--threshold", repr(other.manifest["early_exit"]["threshold"]))
    assert [(g["label"], g["exit_layer"]) for g in got] == [(r["label"], r["exit_layer"]) for r in reference]
    override_diff = max_output_diff(got, reference)
    assert override_diff <= FP32_ATOL

    full = bertedge_predict(cli, bundle, inputs, tmp_path / "full.jsonl", "--batch-size", "4", "--full-depth")
    got = run_node(node, "predict.mjs", bundle.path, "--input", inputs, "--logits", "--batch-size", "4",
                   "--full-depth")
    assert [g["exit_layer"] for g in got] == [r["exit_layer"] for r in full] == [EE_LAYERS] * len(EE_TEXTS)
    assert [g["label"] for g in got] == [r["label"] for r in full]
    full_diff = max_output_diff(got, full)
    print(f"\nnode early exit fp32: --rule max-prob override max |logit diff| {override_diff:.3g}, "
          f"--full-depth {full_diff:.3g}")
    assert full_diff <= FP32_ATOL

    # parity.mjs compares the exit layers too, and reports their histogram
    (summary,) = run_node(node, "parity.mjs", other.path, inputs, tmp_path / "ref.jsonl", "--batch-size", "4")
    assert summary["ok"] and summary["predictions_equal"] == len(EE_TEXTS) and not summary["full_depth"]
    assert summary["exit_histogram"] == {str(k): sum(r["exit_layer"] == k for r in reference)
                                         for k in range(1, EE_LAYERS + 1)}
    (summary,) = run_node(node, "parity.mjs", bundle.path, inputs, tmp_path / "full.jsonl", "--batch-size", "4",
                          "--full-depth")
    assert summary["ok"] and summary["exit_histogram"] == {"1": 0, "2": 0, "3": len(EE_TEXTS)}


def test_node_early_exit_errors_are_one_line(node, ee_bundles, tmp_path):
    bundle = ee_bundles["fp32"]
    cases = [(["--rule", "patience"], "the bundle's threshold is for the entropy rule, not patience"),
             (["--rule", "max-prob", "--threshold", "1.5"], "threshold 1.5 is out of range for the max-prob rule"),
             (["--rule", "patience", "--threshold", "0.5"], "out of range for the patience rule"),
             (["--rule", "greedy", "--threshold", "0.5"], "unknown exit rule 'greedy'"),
             (["--threshold", "high"], "--threshold: 'high' is not a number")]
    broken = tmp_path / "broken"
    shutil.copytree(bundle.path, broken)
    (broken / "segment_1.onnx").unlink()
    cases.append(([], "the early-exit bundle has no segment_1.onnx"))
    for args, message in cases:
        result = subprocess.run([node, "predict.mjs", broken if not args else bundle.path, "a text", *args],
                                cwd=NODE_EXAMPLE, capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and result.stdout == "", (args, result)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.stderr)


# A Node program that runs BertedgeBundle.runSegments over fake segment sessions: segment k answers each row
# with table[row][k] (the row's number rides in input_ids[:, 0], then in the hidden state) and records which
# rows it got at which width.
SYNTHETIC_NODE = """
import { readFileSync } from "node:fs";
const { BertedgeBundle } = await import(process.argv[1]);
const { table, lengths, width, cases } = JSON.parse(readFileSync(0, "utf8"));
class Tensor { constructor(type, data, dims) { Object.assign(this, { type, data, dims }); } }
const [n, layers, labels, hidden] = [table.length, table[0].length, table[0][0].length, 2];
const results = [];
for (const c of cases) {
  const trace = [];
  const segments = table[0].map((_, k) => ({
    inputNames: k === 0 ? ["input_ids", "attention_mask", "token_type_ids"] : ["hidden_state", "attention_mask"],
    async run(feeds) {
      const [rows, w] = feeds.attention_mask.dims;
      const ids = Array.from({ length: rows }, (_, r) =>
        Number(k === 0 ? feeds.input_ids.data[r * w] : feeds.hidden_state.data[r * w * hidden]));
      if (k > 0 && feeds.hidden_state.dims.join() !== [rows, w, hidden].join()) throw new Error("hidden/mask shapes");
      trace.push([k, ids, w]);
      const logits = new Float32Array(rows * labels);
      ids.forEach((id, r) => logits.set(table[id][k], r * labels));
      if (k === layers - 1) return { logits: new Tensor("float32", logits, [rows, labels]) };
      const state = new Float32Array(rows * w * hidden);
      ids.forEach((id, r) => state.fill(id, r * w * hidden, (r + 1) * w * hidden));
      return { exit_logits: new Tensor("float32", logits, [rows, labels]),
        next_hidden_state: new Tensor("float32", state, [rows, w, hidden]) };
    },
  }));
  const manifest = { task: "text-classification", early_exit: { protocol_version: 1, rule: c.rule,
    threshold: c.threshold, segments: segments.map((_, k) => ({ index: k, file: `segment_${k}.onnx` })) } };
  const bundle = new BertedgeBundle({ manifest, tokenizer: null, tokenizerJson: {}, session: segments[0], segments,
    ort: { Tensor }, fullDepth: c.full_depth });
  const ids = new BigInt64Array(n * width);
  const mask = new BigInt64Array(n * width);
  lengths.forEach((len, r) => { ids[r * width] = BigInt(r); mask.fill(1n, r * width, r * width + len); });
  const out = await bundle.runSegments({ input_ids: new Tensor("int64", ids, [n, width]),
    attention_mask: new Tensor("int64", mask, [n, width]), token_type_ids: new Tensor("int64", new BigInt64Array(n * width), [n, width]) });
  results.push({ exit_layer: Array.from(out.exit_layer.data), logits: Array.from(out.logits.data), trace,
    segment_calls: bundle.segmentCalls });
}
console.log(JSON.stringify(results));
"""


def synthetic_segments(table: np.ndarray, trace: list):
    """numpy twins of SYNTHETIC_NODE's fake sessions, for bertedge.early_exit.run_segments."""
    layers = table.shape[1]

    def segment(k):
        def forward(feeds):
            rows, width = feeds["attention_mask"].shape
            ids = (feeds["input_ids"][:, 0] if k == 0 else feeds["hidden_state"][:, 0, 0]).astype(np.int64)
            assert k == 0 or feeds["hidden_state"].shape == (rows, width, 2)
            trace.append([k, ids.tolist(), width])
            if k == layers - 1:
                return {"logits": table[ids, k]}
            state = np.broadcast_to(ids.astype(np.float32)[:, None, None], (rows, width, 2)).copy()
            return {"exit_logits": table[ids, k], "next_hidden_state": state}
        return forward

    return [segment(k) for k in range(layers)]


def test_node_exit_protocol_on_synthetic_segments(node):
    """Every rule on exit logits made to disagree across layers (the tiny model's never do): the same exits,
    logits, segment calls, and the same rows at the same widths fed to every segment as bertedge's runner."""
    from bertedge.early_exit import exit_layers, normalised_entropy, probabilities, run_segments

    rng = np.random.default_rng(0)
    n, layers, labels = 16, 4, 3
    label = np.zeros((n, layers), dtype=np.int64)
    label[:, 0] = rng.integers(labels, size=n)
    for k in range(1, layers):  # the argmax keeps its layer-k label with probability 0.6
        label[:, k] = np.where(rng.random(n) < 0.6, label[:, k - 1], rng.integers(labels, size=n))
    table = (rng.normal(size=(n, layers, labels)) * rng.uniform(0.2, 2.0, size=(n, 1, 1))).astype(np.float32)
    table[np.arange(n)[:, None], np.arange(layers)[None, :], label] += rng.uniform(0.0, 3.0, size=(n, layers))
    table = table.astype(np.float32)
    lengths = rng.integers(1, 10, size=n).tolist()
    width = max(lengths) + 2  # trailing padding for every row: cut before segment 1 even if no row exits

    first = probabilities(table[:, 0])
    cases = [{"rule": "entropy", "threshold": float(np.median(normalised_entropy(first)))},
             {"rule": "max-prob", "threshold": float(np.median(first.max(axis=-1)))},
             {"rule": "patience", "threshold": 1.0}, {"rule": "patience", "threshold": 2.0},
             {"rule": "entropy", "threshold": 1.0}, {"rule": "max-prob", "threshold": 1.0},
             {"rule": "entropy", "threshold": 0.5, "full_depth": True}]
    cases = [{"full_depth": False, **c} for c in cases]
    result = subprocess.run([node, "--input-type=module", "-e", SYNTHETIC_NODE,
                             (NODE_EXAMPLE / "lib" / "bertedge.mjs").as_uri()], cwd=NODE_EXAMPLE,
                            input=json.dumps({"table": table.tolist(), "lengths": lengths, "width": width,
                                              "cases": cases}), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout)
    ids = np.zeros((n, width), dtype=np.int64)
    ids[:, 0] = np.arange(n)
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    for case, g in zip(cases, got):
        trace, calls = [], [0] * layers
        out = run_segments(synthetic_segments(table, trace), batch, case["rule"], case["threshold"],
                           full_depth=case["full_depth"], calls=calls)
        assert g["exit_layer"] == out["exit_layer"].tolist(), case
        assert np.array_equal(np.asarray(g["logits"], dtype=np.float32).reshape(n, labels), out["logits"]), case
        assert g["trace"] == trace and g["segment_calls"] == calls, case
        if not case["full_depth"]:
            assert out["exit_layer"].tolist() == exit_layers(case["rule"], case["threshold"], table).tolist()
        print(f"\nsynthetic {case}: exit histogram {np.bincount(out['exit_layer'], minlength=layers + 1)[1:].tolist()}")
    histograms = [set(g["exit_layer"]) for g in got]
    assert all(len(h) > 1 for h in histograms[:4]), histograms  # the split cases, patience included, do split
    assert histograms[4:] == [{1}, {layers}, {layers}]
