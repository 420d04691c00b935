"""Shared fixtures: a tiny random BERT with its own WordPiece vocab, tiny datasets for every
task family, tiny fine-tuned artifacts, and a CLI runner. Nothing here touches the network.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Caches (distillation teacher outputs, ...) go to a per-session temp dir, never the user's ~/.cache.
os.environ["BERTEDGE_CACHE"] = tempfile.mkdtemp(prefix="bertedge-test-cache-")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

WORDS = ("good great fine nice happy love best bad awful poor sad hate worst movie film plot actor story "
         "the a an is was it this that and or but not very really quite so too of in on at to with by "
         "john mary paris london berlin google apple reuters monday city team game won lost said told "
         "who what where when why how which capital france germany england river long short").split()


def write_vocab(path: Path) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-\"()")
    vocab = list(dict.fromkeys(specials + sorted(set(WORDS)) + chars + pieces))  # no duplicates: holes in ids
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def wordpiece_tokenizer(vocab_file: Path, **kwargs):
    """A fast BERT tokenizer over `vocab_file` on either stack: transformers 4 reads `vocab_file=`; 5 ignores
    it (the tokenizer would hold only the five special tokens) and takes the vocabulary as `vocab=`."""
    import inspect

    from transformers import BertTokenizerFast

    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        tokens = [t for t in Path(vocab_file).read_text(encoding="utf-8").splitlines() if t]
        return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, **kwargs)
    return BertTokenizerFast(vocab_file=str(vocab_file), **kwargs)


def build_tiny_bert(directory: Path, *, layers: int = 2, hidden: int = 32, heads: int = 4,
                    intermediate: int = 64, seed: int = 0, max_position: int = 256) -> Path:
    """Save a randomly initialised BertModel + fast tokenizer as a transformers directory."""
    import torch
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(directory / "vocab.txt")
    tokenizer = wordpiece_tokenizer(vocab, do_lower_case=True)
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max_position)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


# ----------------------------------------------------------------------------- tiny datasets

POS = ["good", "great", "nice", "happy", "love", "best", "fine"]
NEG = ["bad", "awful", "poor", "sad", "hate", "worst"]
FILL = ["the", "movie", "film", "plot", "was", "is", "very", "really", "story", "actor", "this", "it"]


def synthetic_sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILL, 4) + [rng.choice(POS if label else NEG)]
    rng.shuffle(words)
    return " ".join(words)


def write_classification_dir(directory: Path, n_train: int = 96, n_dev: int = 32, seed: int = 0) -> Path:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            lines.append(f"{synthetic_sentence(rng, label)}\t{label}")
        (directory / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def write_pair_dir(directory: Path, n_train: int = 96, n_dev: int = 32, seed: int = 0) -> Path:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            a = synthetic_sentence(rng, 1)
            same = i % 2 == 0
            b = a if same else synthetic_sentence(rng, 0)
            lines.append(f"{i}\t{a}\t{b}\t{'entailment' if same else 'not_entailment'}")
        (directory / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


NAMES = {"PER": ["john", "mary"], "LOC": ["paris", "london", "berlin"], "ORG": ["google", "apple", "reuters"]}


def write_conll_dir(directory: Path, n_train: int = 64, n_dev: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    files = {"train": n_train, "valid": n_dev, "test": n_dev}
    for split, n in files.items():
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            etype = rng.choice(sorted(NAMES))
            words = [("the", "O"), ("team", "O")]
            name = rng.choice(NAMES[etype])
            words.insert(rng.randrange(3), (name, f"B-{etype}"))
            if etype == "ORG" and rng.random() < 0.5:
                idx = [w for w, _ in words].index(name)
                words.insert(idx + 1, ("city", f"I-{etype}"))
            words.append(("won", "O"))
            lines += [f"{w} NN O {t}" for w, t in words] + [""]
        (directory / f"{split}.txt").write_text("\n".join(lines), encoding="utf-8")
    return directory


def write_squad_dir(directory: Path, n_articles: int = 10, seed: int = 0) -> Path:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            city, country = rng.choice([("paris", "france"), ("berlin", "germany"), ("london", "england")])
            filler = " ".join(rng.choice(FILL) for _ in range(rng.randint(5, 30)))
            context = f"{filler} the capital of {country} is {city} . {filler}"
            start = context.index(f"is {city}") + 3
            paragraphs.append({"context": context, "qas": [
                {"id": f"q{a}-{p}", "question": f"what is the capital of {country} ?",
                 "answers": [{"text": city, "answer_start": start}]}]})
        data.append({"title": f"article {a}", "paragraphs": paragraphs})
    (directory / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-data")
    return {
        "sst": write_classification_dir(root / "sst"),
        "pair": write_pair_dir(root / "pair"),
        "conll": write_conll_dir(root / "conll"),
        "squad": write_squad_dir(root / "squad"),
    }


TASK_OF = {"sst": "text-classification", "pair": "text-classification",
           "conll": "token-classification", "squad": "question-answering"}


def finetune_tiny(model_dir: Path, data_dir: Path, task: str, out: Path, epochs: float = 8.0, **overrides):
    from bertedge.config import FinetuneConfig
    from bertedge.stages.finetune import finetune

    config = FinetuneConfig.model_validate({
        "task": task, "data": {"data": str(data_dir)},
        "train": {"epochs": epochs, "lr": 3e-3, "batch_size": 16, "seed": 0, "warmup_ratio": 0.0,
                  **overrides.pop("train", {})},
        "max_length": overrides.pop("max_length", 64 if task != "question-answering" else 96),
        **({"doc_stride": 32} if task == "question-answering" else {}),
        **overrides,
    })
    return finetune(str(model_dir), config, out)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory, tiny_model_dir, tiny_data) -> dict:
    """One small fine-tuned artifact per dataset kind (sst, pair, conll, squad)."""
    root = tmp_path_factory.mktemp("tiny-artifacts")
    return {name: finetune_tiny(tiny_model_dir, tiny_data[name], TASK_OF[name], root / name)
            for name in ("sst", "pair", "conll", "squad")}


# ----------------------------------------------------------------------------- CLI runner


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-400:]!r}, err={self.err[-400:]!r})"


def run_cli(*args: str) -> CliResult:
    """Run `bertedge ARGS` in-process through the same entry point as the console script."""
    from bertedge.cli import STATE, main

    STATE["debug"] = False
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: CliResult, *fragments: str, code: int = 1) -> str:
    """Exit code, a single 'error:' line carrying every fragment, and no traceback."""
    assert result.code == code, result
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def cli():
    return run_cli


# ----------------------------------------------------------------------------- child processes stopped at an event

# Code for `python -c` (CLI_CHILD runs the CLI after it). With BLOCK_IN=STAGE (a recipe stage: finetune, distill,
# prune, ...) the child stops at the BLOCK_STEP-th training step of that stage (default 1), before the step runs:
# it creates the file BLOCK_MARKER, then waits for ever (the test SIGKILLs it), or with BLOCK_UNTIL=stdin until
# the test closes the child's stdin. So a test acts on an event the child reports, never after a delay.
BLOCK_HOOK = r"""
import os, signal, sys
if os.environ.get("BLOCK_IN"):
    import importlib
    import transformers
    from bertedge.recipe import STAGE_MODULES

    def _block():
        open(os.environ["BLOCK_MARKER"], "x").close()
        if os.environ.get("BLOCK_UNTIL") == "stdin":
            sys.stdin.read()
        else:
            while True:
                signal.pause()

    _module_name, _function, _ = STAGE_MODULES[os.environ["BLOCK_IN"]]
    _module = importlib.import_module(_module_name)
    _real_stage, _real_step = getattr(_module, _function), transformers.Trainer.training_step
    _state = {"inside": 0, "steps": 0}

    def _stage(*args, **kwargs):
        _state["inside"] += 1
        try:
            return _real_stage(*args, **kwargs)
        finally:
            _state["inside"] -= 1

    def _training_step(self, *args, **kwargs):
        if _state["inside"]:
            _state["steps"] += 1
            if _state["steps"] == int(os.environ.get("BLOCK_STEP", "1")):
                _block()
        return _real_step(self, *args, **kwargs)

    setattr(_module, _function, _stage)
    transformers.Trainer.training_step = _training_step
"""
CLI_MAIN = "from bertedge.cli import main\nsys.exit(main(sys.argv[1:]))\n"
CLI_CHILD = BLOCK_HOOK + CLI_MAIN


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def start_child(code: str, args: list[str], log: Path, *, stdin=None, **env: str) -> subprocess.Popen:
    """`python -c CODE ARGS` in the background, stdout and stderr into `log`."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=child_env(**env), stdin=stdin,
                                stdout=fh, stderr=subprocess.STDOUT)


def wait_for_marker(marker: Path, child: subprocess.Popen, log: Path, guard_s: float = 300) -> None:
    """Wait until the child creates `marker`. The time limit only stops a broken child hanging the suite."""
    def tail() -> str:
        return log.read_text(errors="replace")[-3000:]

    deadline = time.monotonic() + guard_s
    while not marker.exists():
        assert child.poll() is None, f"the child exited ({child.returncode}) before the event: {tail()}"
        assert time.monotonic() < deadline, f"no event from the child in {guard_s} s: {tail()}"
        time.sleep(0.05)


def stop_child(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()


sys.path.insert(0, str(Path(__file__).parent))


# ----------------------------------------------------------------------------- exported bundles


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory, tiny_artifacts) -> dict:
    """Each tiny artifact exported to a validated, fused ONNX bundle (opset 17, model.onnx only)."""
    from bertedge.stages.export import ExportConfig, export

    root = tmp_path_factory.mktemp("tiny-bundles")
    return {name: export(artifact, ExportConfig(), root / name) for name, artifact in tiny_artifacts.items()}
