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
