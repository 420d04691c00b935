"""Each command's option defaults equal its config's field defaults, so the CLI never retypes one differently.

The stage configs are the single source of defaults (recipes and the search build the same objects). An
option whose default differs on purpose is listed in DIFFERENT with the reason; any other difference, or a
listed one that no longer differs, fails.
"""

from __future__ import annotations

import pytest
import typer.main

from bertedge.cli import app

NOT_GIVEN = "None means not given: the stage resolves it"
DIFFERENT = {
    ("quantize", "exclude_op_types"): "repeated or comma-separated on the command line; none given is []",
    ("quantize", "exclude_nodes"): "repeated or comma-separated on the command line; none given is []",
    ("quantize", "max_accuracy_drop"): "None: warn over the config's 1.0; given: enforce it (enforce_budget)",
    ("prune", "drop_layers"): "comma-separated on the command line; none given is []",
    ("trim-vocab", "splits"): "comma-separated on the command line ('train' is ['train'])",
    ("trim-vocab", "unlabeled"): "repeated on the command line; none given is []",
    ("bench", "batch_sizes"): "comma-separated on the command line ('1,8,32' is [1, 8, 32])",
    ("bench", "seq_lens"): "comma-separated on the command line ('32,128,512' is [32, 128, 512])",
    ("finetune", "task"): "required on the command line and in the config (click's None is no default)",
    ("finetune", "epochs"): NOT_GIVEN + " (the auto schedule picks it from the data size)",
    ("finetune", "lr"): NOT_GIVEN + " (the auto schedule picks it from the data size)",
    ("adapt", "text"): "required on the command line and in the config (click's None is no default)",
    ("adapt", "epochs"): "masked-LM adaptation defaults to 1 epoch, not fine-tuning's 3",
    ("adapt", "warmup_ratio"): "masked-LM adaptation defaults to warmup 0.06, not fine-tuning's 0.1",
}
# `data` on the command line names the data (DataConfig.data); the config field of that name is the whole
# DataConfig, so the two are not compared.
NESTED = {"data"}


def _configs():
    from bertedge.bench import BenchConfig
    from bertedge.config import DataConfig, FinetuneConfig, TrainConfig
    from bertedge.stages.adapt import AdaptConfig
    from bertedge.stages.distill import DistillConfig
    from bertedge.stages.early_exit import EarlyExitConfig
    from bertedge.stages.export import ExportConfig
    from bertedge.stages.prune import PruneConfig
    from bertedge.stages.quantize import QuantizeConfig
    from bertedge.stages.vocab import TrimVocabConfig

    return {"quantize": [QuantizeConfig], "export": [ExportConfig], "bench": [BenchConfig],
            "prune": [PruneConfig, TrainConfig, DataConfig], "distill": [DistillConfig, TrainConfig, DataConfig],
            "trim-vocab": [TrimVocabConfig, DataConfig], "early-exit": [EarlyExitConfig, TrainConfig, DataConfig],
            "finetune": [FinetuneConfig, TrainConfig, DataConfig], "adapt": [AdaptConfig, TrainConfig]}


def differences() -> dict[tuple[str, str], str]:
    """(command, option) -> 'cli X vs Config Y' for every option named like a field of the command's configs
    (the first config that has the field) whose default differs."""
    commands = typer.main.get_command(app).commands
    found = {}
    for name, configs in _configs().items():
        for param in commands[name].params:
            if param.name in NESTED:
                continue
            for config in configs:
                field = config.model_fields.get(param.name)
                if field is None:
                    continue
                default = field.get_default(call_default_factory=True)
                if param.default != default:
                    found[(name, param.name)] = f"cli {param.default!r} vs {config.__name__} {default!r}"
                break
    return found


@pytest.fixture(scope="module")
def found():
    return differences()


def test_cli_defaults_are_the_config_defaults(found):
    unexplained = {key: text for key, text in found.items() if key not in DIFFERENT}
    assert not unexplained, "\n".join(f"bertedge {c} --{p.replace('_', '-')}: {text}"
                                      for (c, p), text in unexplained.items())


def test_every_listed_difference_still_differs(found):
    stale = sorted(set(DIFFERENT) - set(found))
    assert not stale, f"no longer different, remove from DIFFERENT: {stale}"


def test_quantize_onnx_only_flags_come_from_the_config():
    """--engine inc refuses the onnxruntime engine's options by comparing them to QuantizeConfig's defaults."""
    from bertedge.cli.quantize import onnx_only_flags
    from bertedge.stages.quantize import SHARED_FIELDS, QuantizeConfig

    fields = QuantizeConfig.model_fields
    defaults = {name: fields[name].get_default(call_default_factory=True) for name in fields
                if name not in SHARED_FIELDS}
    assert onnx_only_flags(defaults) == []
    assert onnx_only_flags({**defaults, "with_tokenizer": False}) == []  # --no-with-tokenizer asks for nothing
    assert onnx_only_flags({**defaults, "fp32_nodes": 3, "evaluate": False}) == ["--fp32-nodes", "--no-eval"]
