"""The hard parts on the real datasets with the embedded model's real tokenizer (no training hub, no network).

- NER: every word inside max length gets exactly one label, on its first word piece.
- QA: for every SQuAD question whose answer lies inside a window, the token span maps back through the
  offsets to exactly the answer text.
- A short real fine-tune of the embedded model: `eval --json` reproduces the manifest's dev metrics.
"""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from bertedge.data import load_data
from bertedge.tasks import TaskSettings, get_task

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the checkout")]


@pytest.fixture(scope="module")
def minilm_encoder():
    from bertedge.modeling import encoder_from_hf, load_hf_tokenizer
    from bertedge.models import resolve_model

    resolved = resolve_model("minilm-l6")
    assert resolved.model_type == "bert" and resolved.source == "alias"
    return encoder_from_hf(load_hf_tokenizer(resolved.path))


def test_conll_alignment_labels_each_word_once(minilm_encoder):
    data = load_data("conll2003", "token-classification", need=("train", "dev"))
    examples = data.split("dev")
    settings = TaskSettings(max_length=128)
    features = get_task("token-classification").train_features(examples, minilm_encoder, settings)
    truncated = 0
    for ex, feature in zip(examples, features):
        labelled = [label for label in feature["labels"] if label != -100]
        if len(labelled) < len(ex["tokens"]):
            truncated += 1  # words past max length: only a prefix is labelled
            assert labelled == ex["tags"][:len(labelled)]
        else:
            assert labelled == ex["tags"]
    assert truncated <= len(examples) * 0.01


def test_squad_spans_map_back_to_the_answer_text(minilm_encoder):
    data = load_data("squad", "question-answering", need=("train", "dev"))
    examples = data.split("dev")[:1500]
    task = get_task("question-answering")
    settings = TaskSettings(max_length=256, doc_stride=96)
    windows = task.windows(examples, minilm_encoder, settings)
    from bertedge.tasks.qa import answer_token_span, normalize_answer

    checked = mismatched = 0
    for ex, wins in zip(examples, windows):
        start_char = ex["answers"]["answer_start"][0]
        end_char = start_char + len(ex["answers"]["text"][0])
        for w in wins:
            s, e = answer_token_span(w.sequence_ids, w.offsets, start_char, end_char)
            if (s, e) == (0, 0):
                continue
            checked += 1
            text = ex["context"][w.offsets[s][0]:w.offsets[e][1]]
            if normalize_answer(text) != normalize_answer(ex["answers"]["text"][0]):
                mismatched += 1
    assert checked >= len(examples)
    # WordPiece cannot split inside a token ("1990s" for the answer "1990"): such spans are a
    # known, tiny fraction; everything else maps back exactly.
    assert mismatched / checked < 0.02, (mismatched, checked)


def test_short_real_finetune_then_eval_reproduces_the_manifest(cli, tmp_path):
    out = tmp_path / "sst2"
    result = cli("finetune", "--model", "minilm-l6", "--task", "text-classification", "--data", "sst2",
                 "--max-train-samples", "128", "--max-eval-samples", "96", "--epochs", "1", "--max-length", "48",
                 "--batch-size", "16", "--out", str(out))
    assert result.code == 0, result
    manifest = json.loads((out / "bertedge.json").read_text())
    assert manifest["labels"] == ["0", "1"] and manifest["model"]["source"] == "alias"
    assert manifest["data"]["columns"] == {"text": "sentence", "text_pair": None, "label": "label"}
    evaluated = json.loads(cli("eval", str(out), "--json", "--max-samples", "96").out)
    assert evaluated["n"] == 96
    assert evaluated["metrics"]["accuracy"] == pytest.approx(manifest["metrics"]["dev"]["accuracy"])
