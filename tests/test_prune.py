"""prune: importance scores, physical removal, reload/export of pruned models, GMP, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TASK_OF, assert_one_line_error, finetune_tiny

from bertedge import pruning
from bertedge.artifacts import load_artifact
from bertedge.modeling import load_torch_artifact

FAST = ("--recover-epochs", "1", "--lr", "1e-3", "--batch-size", "16", "--importance-samples", "32", "--seed", "0")


@pytest.fixture(scope="module")
def sst(tmp_path_factory, tiny_model_dir, tiny_data):
    """Only the classification artifact (the shared fixture trains all four task kinds)."""
    return finetune_tiny(tiny_model_dir, tiny_data["sst"], TASK_OF["sst"], tmp_path_factory.mktemp("prune-src") / "sst")


def _model(sst):
    model, _ = load_torch_artifact(sst)
    return model


def _batch(seed=0, n=6, length=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(n) % 2}


def _logits(model, batch, head_mask=None):
    """Logits; `head_mask[layer, head] == 0` zeroes that head's context (what head_mask= did: transformers 5
    dropped the argument, so the mask is applied by hooks on the attention output projection's input)."""
    hooks = []
    if head_mask is not None:
        for layer, row in zip(model.bert.encoder.layer, head_mask):
            size = layer.attention.self.attention_head_size
            keep = torch.repeat_interleave(row, size)
            hooks.append(layer.attention.output.dense.register_forward_pre_hook(
                lambda _module, args, keep=keep: (args[0] * keep,)))
    try:
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        for hook in hooks:
            hook.remove()


# ----------------------------------------------------------------------------- mechanics on constructed cases


def test_pruning_masked_heads_and_dead_neurons_leaves_outputs_unchanged(sst):
    model = _model(sst)
    batch = _batch()
    head_mask = torch.ones(2, 4)
    head_mask[0, 1] = 0
    head_mask[1, [0, 3]] = 0
    masked = _logits(model, batch, head_mask=head_mask)
    # FFN neurons whose output column is zero contribute nothing: zero three of them in layer 1.
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[:, [5, 9, 40]] = 0
    masked_dead = _logits(model, batch, head_mask=head_mask)

    assert pruning.prune_heads(model, [[1], [0, 3]]) == 3
    assert pruning.heads_per_layer(model) == [3, 2]
    assert model.config.pruned_heads == {0: [1], 1: [0, 3]}
    torch.testing.assert_close(_logits(model, batch), masked_dead, rtol=0, atol=1e-6)
    assert pruning.prune_ffn(model, [[], [5, 9, 40]]) == 3
    assert pruning.intermediate_sizes(model) == [64, 61]
    assert model.bert.encoder.layer[1].intermediate.dense.weight.shape == (61, 32)
    assert model.bert.encoder.layer[1].output.dense.weight.shape == (32, 61)
    torch.testing.assert_close(_logits(model, batch), masked_dead, rtol=0, atol=1e-6)
    assert not torch.equal(masked, masked_dead)  # the neurons were live before zeroing: the check has teeth


def test_importance_ranks_dead_heads_and_neurons_last(sst):
    model = _model(sst)
    with torch.no_grad():
        # Head 2 of layer 0 and head 1 of layer 1 output nothing (zero value projection and bias).
        for layer, head in ((0, 2), (1, 1)):
            v = model.bert.encoder.layer[layer].attention.self.value
            v.weight[head * 8:(head + 1) * 8] = 0
            v.bias[head * 8:(head + 1) * 8] = 0
        # Neurons 3 and 17 of layer 0 never activate: GELU(0 * x + 0) = 0.
        inter = model.bert.encoder.layer[0].intermediate.dense
        inter.weight[[3, 17]] = 0
        inter.bias[[3, 17]] = 0
    scores = pruning.importance_scores(model, [_batch(0), _batch(1)])
    assert scores["heads"][0][2] == 0.0 and scores["heads"][1][1] == 0.0
    assert min(s for j, s in enumerate(scores["heads"][0]) if j != 2) > 0
    assert scores["ffn"][0][3] == 0.0 and scores["ffn"][0][17] == 0.0
    assert sum(s == 0.0 for s in scores["ffn"][0]) == 2
    normalised = pruning.normalise_per_layer(scores["heads"])
    assert pruning.select_to_remove(normalised, [3, 3], "per-layer") == [[2], [1]]
    assert pruning.select_to_remove(normalised, 6, "global") == [[2], [1]]
    assert pruning.select_to_remove(pruning.normalise_per_layer(scores["ffn"]), [62, 64], "per-layer")[0] == [3, 17]


def test_global_selection_never_empties_a_layer():
    scores = [[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]]
    assert pruning.select_to_remove(scores, 2, "global") == [[0, 1], [1, 2]]  # layer 0 keeps its best
    assert pruning.select_to_remove(scores, 4, "global") == [[0, 1], []]


def test_cubic_schedule_and_magnitude_masks():
    assert pruning.cubic_sparsity(0, 0.8, 0, 100) == 0.0
    assert pruning.cubic_sparsity(50, 0.8, 0, 100) == pytest.approx(0.7)
    assert pruning.cubic_sparsity(100, 0.8, 0, 100) == 0.8
    assert pruning.cubic_sparsity(5, 0.8, 10, 100) == 0.0
    lin = torch.nn.Linear(4, 5)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(1, 21, dtype=torch.float).view(5, 4))
    masks = pruning.magnitude_masks([("a", lin)], 0.25, "per-layer")
    assert int((~masks["a"]).sum()) == 5 and not masks["a"].view(-1)[:5].any()


# ----------------------------------------------------------------------------- the stage through the CLI


def test_per_layer_prune_shrinks_matrices_and_reloads(cli, sst, tmp_path):
    out = tmp_path / "pruned"
    result = cli("prune", sst.path, "--out", out, "--heads", "0.5", "--ffn", "0.5", *FAST, "--json")
    assert result.code == 0, result
    info = json.loads(result.out)
    assert info["structure"]["heads_per_layer"] == [2, 2] and info["structure"]["intermediate_sizes"] == [32, 32]
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 32 and pruning.SIZES_KEY not in config
    assert {k: len(v) for k, v in config["pruned_heads"].items()} == {"0": 2, "1": 2}
    artifact = load_artifact(out)
    model, _ = load_torch_artifact(artifact)
    layer = model.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (16, 32)
    assert layer.attention.output.dense.weight.shape == (32, 16)
    assert layer.intermediate.dense.weight.shape == (32, 32)
    record = artifact.manifest["pruning"]
    assert record["parameters_after"] < record["parameters_before"]
    assert record["uniform_heads"] and record["uniform_ffn"]
    evaluated = cli("eval", out, "--json")
    assert evaluated.code == 0, evaluated
    assert json.loads(evaluated.out)["metrics"]["accuracy"] == artifact.metrics["dev"]["accuracy"]


def _export(src, out):
    from bertedge.stages.export import ExportConfig, export

    return export(src, ExportConfig(), out)


def _check_bundle(bundle, artifact):
    fused = bundle.manifest["onnx"]["fused_node_counts"]
    assert fused.get("Attention") == 2 and fused.get("BiasGelu") == 2  # every layer still fuses
    assert max(v["max_abs_diff"] for v in bundle.manifest["validation"]["outputs"].values()) < 1e-4
    assert bundle.metrics["dev"]["accuracy"] == artifact.metrics["dev"]["accuracy"]


def test_non_uniform_heads_export_and_validate(cli, sst, tmp_path):
    out = tmp_path / "heads"
    result = cli("prune", sst.path, "--out", out, "--global", "--target-heads", "5", "--recover-epochs", "0",
                 "--importance-samples", "32", "--json")
    assert result.code == 0, result
    heads = json.loads(result.out)["structure"]["heads_per_layer"]
    assert sorted(heads) == [2, 3]  # 5 heads over 2 layers: necessarily non-uniform
    artifact = load_artifact(out)
    assert artifact.manifest["pruning"]["uniform_heads"] is False
    _check_bundle(_export(out, tmp_path / "bundle"), artifact)


def test_non_uniform_ffn_widths_reload_eval_and_export(cli, sst, tmp_path):
    out = tmp_path / "ffn"
    result = cli("prune", sst.path, "--out", out, "--global", "--target-ffn", "80", "--recover-epochs", "0",
                 "--importance-samples", "32", "--json")
    assert result.code == 0, result
    sizes = json.loads(result.out)["structure"]["intermediate_sizes"]
    assert sum(sizes) == 80 and len(set(sizes)) == 2
    config = json.loads((out / "config.json").read_text())
    assert config[pruning.SIZES_KEY] == sizes
    artifact = load_artifact(out)
    model, _ = load_torch_artifact(artifact)
    assert pruning.intermediate_sizes(model) == sizes
    evaluated = json.loads(cli("eval", out, "--json").out)
    assert evaluated["metrics"]["accuracy"] == artifact.metrics["dev"]["accuracy"]
    # Needs export to load through bertedge.modeling.load_torch_artifact (per-layer FFN widths).
    _check_bundle(_export(out, tmp_path / "bundle"), artifact)


def test_iterations_and_drop_layers(cli, sst, tmp_path):
    out = tmp_path / "iter"
    result = cli("prune", sst.path, "--out", out, "--heads", "0.5", "--iterations", "2",
                 "--drop-layers", "1", *FAST)
    assert result.code == 0, result
    artifact = load_artifact(out)
    rounds = artifact.manifest["training"]
    assert [r["structure"]["heads_per_layer"] for r in rounds] == [[3], [2]]
    assert all(r["global_step"] > 0 for r in rounds)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    model, _ = load_torch_artifact(artifact)
    assert len(model.bert.encoder.layer) == 1 and model.config.pruned_heads and len(model.config.pruned_heads[0]) == 2


def test_recovery_can_distill_from_the_unpruned_model(cli, sst, tmp_path, monkeypatch):
    import bertedge.distill_losses as losses

    calls = []
    original = losses.classification_loss

    def spy(student, teacher, labels, **kw):
        calls.append((teacher.shape, kw))
        return original(student, teacher, labels, **kw)

    monkeypatch.setattr(losses, "classification_loss", spy)
    src = sst.path
    out = tmp_path / "kd"
    result = cli("prune", src, "--out", out, "--ffn", "0.25", "--distill-from", src, "--alpha", "0.3", *FAST)
    assert result.code == 0, result
    manifest = load_artifact(out).manifest
    assert manifest["distilled_from"]["path"] == str(src.absolute())
    assert len(calls) == manifest["training"][0]["global_step"]
    assert calls[0][0][-1] == 2 and calls[0][1] == {"temperature": 2.0, "alpha": 0.3, "labeled": None}


def test_recovery_teacher_outputs_are_computed_once(cli, sst, tmp_path, monkeypatch):
    """Two prune ratios recovered from the same teacher: the first computes its logits over the train
    features, the second reads them from the cache and never runs the teacher while training."""
    import bertedge.distill_losses as losses

    monkeypatch.setenv("BERTEDGE_CACHE", str(tmp_path / "cache"))
    src = sst.path
    first = cli("prune", src, "--out", tmp_path / "a", "--ffn", "0.25", "--distill-from", src, *FAST)
    assert first.code == 0, first
    record = load_artifact(tmp_path / "a").manifest["teacher_cache"]
    assert record["hit"] is False and Path(record["path"]).is_relative_to(tmp_path / "cache")
    live = []  # every live teacher pass goes through teacher_logits
    monkeypatch.setattr(losses, "teacher_logits", lambda task, out: live.append(1) or out.logits)
    second = cli("prune", src, "--out", tmp_path / "b", "--ffn", "0.5", "--distill-from", src, *FAST)
    assert second.code == 0, second
    manifest = load_artifact(tmp_path / "b").manifest
    assert manifest["teacher_cache"] == {**record, "hit": True}
    assert manifest["training"][0]["global_step"] > 0 and live == []


def test_recovery_with_intermediate_kd_matches_kept_layers(cli, sst, tmp_path, monkeypatch):
    """--hidden-weight: the teacher runs live every step (no cache), and the layer left after dropping the top
    one imitates the teacher's own bottom layer."""
    import bertedge.distill_losses as losses

    monkeypatch.setenv("BERTEDGE_CACHE", str(tmp_path / "cache"))
    calls = []
    original = losses.intermediate_loss

    def spy(student, teacher, mask, layer_map, **kw):
        calls.append((len(student.hidden_states), len(teacher.hidden_states), list(layer_map), kw))
        return original(student, teacher, mask, layer_map, **kw)

    monkeypatch.setattr(losses, "intermediate_loss", spy)
    src = sst.path
    out = tmp_path / "hidden"
    result = cli("prune", src, "--out", out, "--drop-layers", "1", "--distill-from", src, "--hidden-weight", "2",
                 *FAST)
    assert result.code == 0, result
    manifest = load_artifact(out).manifest
    assert manifest["intermediate_kd"] == {"hidden_weight": 2.0, "layer_map": [0]}
    assert manifest["teacher_cache"] is None  # the live teacher gives the logits too
    assert len(calls) == manifest["training"][0]["global_step"] > 0
    assert calls[0] == (2, 3, [0], {"hidden_weight": 2.0, "attention_weight": 0.0})


def test_hidden_layer_map():
    from bertedge.stages.prune import hidden_layer_map

    assert hidden_layer_map(6, 6, [4, 5]) == [0, 1, 2, 3]
    assert hidden_layer_map(6, 6, [0]) == [1, 2, 3, 4, 5]
    assert hidden_layer_map(12, 6, [4, 5]) == [2, 5, 8, 11]  # a deeper teacher: TinyBERT's uniform map


def test_hidden_weight_needs_a_teacher(cli, sst, tmp_path):
    result = cli("prune", sst.path, "--out", tmp_path / "x", "--ffn", "0.5", "--hidden-weight", "1", *FAST)
    assert result.code == 1
    assert "hidden_weight is intermediate KD from a teacher: give distill_from too" in result.err, result
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("scope", ["per-layer", "global"])
def test_gradual_magnitude_pruning_reaches_the_sparsity(cli, sst, tmp_path, scope):
    out = tmp_path / scope
    result = cli("prune", sst.path, "--out", out, "--sparsity", "0.8", "--sparsity-every", "2",
                 f"--{scope}", "--recover-epochs", "2", "--lr", "1e-3", "--batch-size", "16", "--json")
    assert result.code == 0, result
    record = load_artifact(out).manifest["pruning"]
    assert record["end_step"] == 8 and record["training_steps"] == 12
    assert record["sparsity"]["encoder_linear_sparsity"] == pytest.approx(0.8, abs=1e-3)
    if scope == "per-layer":
        assert all(v == pytest.approx(0.8, abs=2e-3) for v in record["sparsity"]["per_module"].values())
    model, _ = load_torch_artifact(load_artifact(out))
    weights = torch.cat([m.weight.flatten() for _, m in pruning.prunable_linears(model)])
    assert float((weights == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)
    # 52% of this tiny model's weights are encoder linears; 80% of those zipped to nearly nothing.
    assert record["compressed_bytes"]["ratio"] < 0.7


# ----------------------------------------------------------------------------- flags and bad input


def test_flags_map_onto_config(cli, monkeypatch, tmp_path):
    import bertedge.stages.prune as stage
    from bertedge.artifacts import Artifact

    seen = {}

    def fake(src, config, out, overwrite=False):
        seen.update(src=src, config=config)
        return Artifact(path=tmp_path, manifest={"task": "text-classification", "stage": "prune", "metrics": {}})

    monkeypatch.setattr(stage, "prune", fake)
    result = cli("prune", "a", "--out", tmp_path / "o", "--target-heads", "8", "--ffn", "0.5", "--drop-layers", "1,3",
                 "--global", "--iterations", "3", "--recover-epochs", "2.5", "--distill-from", "t", "--lr", "1e-4",
                 "--max-train-samples", "100", "--seed", "3", "--data", "sst2")
    assert result.code == 0, result
    c = seen["config"]
    assert (c.target_heads, c.ffn, c.drop_layers, c.scope, c.iterations) == (8, 0.5, [1, 3], "global", 3)
    assert (c.recover_epochs, c.distill_from, c.train.lr, c.train.seed) == (2.5, "t", 1e-4, 3)
    assert (c.data.data, c.data.max_train_samples) == ("sst2", 100)


@pytest.mark.parametrize("args,fragments", [
    (("--heads", "1.0"), ("heads: Input should be less than 1",)),
    (("--heads", "-0.1"), ("heads: Input should be greater than or equal to 0",)),
    (("--ffn", "1.5"), ("ffn: Input should be less than 1",)),
    (("--sparsity", "1"), ("sparsity: Input should be less than 1",)),
    (("--heads", "0.9"), ("--heads", "would remove every attention head of layer 0 (keeps 0 of 4)", "refuses")),
    (("--target-heads", "0"), ("--target-heads", "every attention head of layer 0", "--drop-layers 0")),
    (("--global", "--target-ffn", "1"), ("--target-ffn", "keep 1 FFN neurons for 2 layers",)),
    (("--drop-layers", "2"), ("--drop-layers", "layer 2 is out of range: the model has 2 layers (0-1)")),
    (("--drop-layers", "-1"), ("--drop-layers", "layer -1 is out of range")),
    (("--drop-layers", "0,1"), ("--drop-layers", "would drop all 2 layers")),
    (("--drop-layers", "x"), ("--drop-layers", "expected comma-separated integers")),
    (("--heads", "0.5", "--target-heads", "2"), ("not both",)),
    (("--sparsity", "0.5", "--heads", "0.5"), ("cannot be combined",)),
    ((), ("nothing to prune",)),
])
def test_bad_input_is_one_line_and_leaves_nothing(cli, sst, tmp_path, args, fragments):
    out = tmp_path / "o"
    result = cli("prune", sst.path, "--out", out, *args)
    assert_one_line_error(result, *fragments)
    assert not out.exists() and not list(tmp_path.glob(".o*"))


def test_sparsity_end_past_training_is_refused(cli, sst, tmp_path):
    out = tmp_path / "o"
    result = cli("prune", sst.path, "--out", out, "--sparsity", "0.5", "--sparsity-end-step", "99",
                 "--recover-epochs", "1", "--batch-size", "16")
    assert_one_line_error(result, "--sparsity-end-step", "past the last training step (6)")
    assert not out.exists() and not list(tmp_path.glob(".o*"))
