import json

from conftest import TASK_OF


def test_tiny_artifacts_learn_something(tiny_artifacts):
    """The tiny fine-tuned models beat chance on their synthetic tasks, so downstream tests have signal."""
    sst = tiny_artifacts["sst"].metrics["dev"]
    assert sst["accuracy"] >= 0.75, sst
    conll = tiny_artifacts["conll"].metrics
    assert conll["dev"]["f1"] > 0.3 and "test" in conll
    for name, art in tiny_artifacts.items():
        assert art.task == TASK_OF[name]
        manifest = json.loads((art.path / "bertedge.json").read_text())
        assert manifest["complete"] is True and manifest["payload_sha256"]
        assert (art.path / "tokenizer.json").exists() and (art.path / "model.safetensors").exists()
