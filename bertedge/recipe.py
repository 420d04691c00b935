"""Recipes: an ordered list of stages with their configs, the accuracy budget, target and bench grid.

A recipe is a serialization of the same pydantic config objects the CLI builds: each step is the
stage's own config class plus three pipeline fields (`stage`, `name`, `source`). YAML and Python
build the same objects, and `Recipe.to_yaml()` round-trips. The whole recipe is validated before
any model loads; every error carries its path (`stages.3.quantize.method: ...`).

Step configs come from the stage modules (their heavy imports live inside functions, so importing
them here is cheap).

A `stage: search` step is `bertedge optimize` inside a recipe: its config is the SearchConfig, its budget
defaults to the recipe's `budget`, and its artifact is the candidate the search chose. Its depths are
checked against its teacher's depth, read from config.json files only (no model loads).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from .config import StrictModel, Task, format_validation_error, read_yaml
from .errors import ConfigError
from .tasks import get_task

# stage -> (module, stage function, config class)
STAGE_MODULES: dict[str, tuple[str, str, str]] = {
    "finetune": ("bertedge.stages.finetune", "finetune", "bertedge.config:FinetuneConfig"),
    "distill": ("bertedge.stages.distill", "distill", "bertedge.stages.distill:DistillConfig"),
    "prune": ("bertedge.stages.prune", "prune", "bertedge.stages.prune:PruneConfig"),
    "trim-vocab": ("bertedge.stages.vocab", "trim_vocab", "bertedge.stages.vocab:TrimVocabConfig"),
    "early-exit": ("bertedge.stages.early_exit", "early_exit", "bertedge.stages.early_exit:EarlyExitConfig"),
    "export": ("bertedge.stages.export", "export", "bertedge.stages.export:ExportConfig"),
    "quantize": ("bertedge.stages.quantize", "quantize", "bertedge.stages.quantize:QuantizeConfig"),
    "search": ("bertedge.search", "search_step", "bertedge.search:SearchConfig"),
}
PIPELINE_FIELDS = ("stage", "name", "source")
# Fields a step inherits from the recipe's top level when it has a field of that name and leaves it unset.
INHERITED = ("task",)
# A search step takes these from the recipe's `budget` unless it sets its own.
BUDGET_FIELDS = ("max_accuracy_drop", "max_size_mb", "metric")
# What a search step can start from (bertedge optimize's teacher): a fine-tuned PyTorch artifact.
SEARCH_SOURCES = ("finetune", "distill", "prune")


class Budget(StrictModel):
    metric: str | None = Field(None, description="Dev metric the budget is on (default: the task's primary metric)")
    max_accuracy_drop: float = Field(1.0, ge=0, description="Largest allowed drop vs the teacher, in points (0-100 scale)")
    max_size_mb: float | None = Field(None, gt=0, description="Largest allowed final artifact size in MB")


class Target(StrictModel):
    provider: Literal["cpu", "cuda", "tensorrt"] = Field("cpu", description="ONNX Runtime execution provider")
    threads: int | None = Field(None, ge=1, description="Intra-op threads (default: all usable cores)")


class BenchGrid(StrictModel):
    batch_sizes: list[int] = Field([1, 32], description="Batch sizes for fixed-shape latency")
    seq_lens: list[int] = Field([128], description="Sequence lengths for fixed-shape latency")
    real_lengths: bool = Field(True, description="Also time the dev set with dynamic padding (batch 1)")
    warmup: int = Field(5, ge=0, description="Untimed warmup calls per artifact and shape")
    runs: int = Field(30, ge=1, description="Timed calls per artifact and shape, interleaved across artifacts")
    duration: float | None = Field(None, gt=0, description="Instead of runs: seconds of timing per artifact and shape "
                                                           "(at least 5 rounds), so a grid with batch 64 x seq 512 "
                                                           "does not spend 30 rounds on its slowest shapes")
    peer: bool = Field(True, description="Measure the peer path: the teacher as the standard tools give it "
                                            "in int8 (optimum's where installed, else torch.onnx + ORT; `bertedge info`)")


def _load_object(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


@lru_cache(maxsize=None)
def step_model(stage: str):
    """The recipe step class of a stage: its config class plus `stage`, `name` and `source`."""
    _, _, config_spec = STAGE_MODULES[stage]
    base = _load_object(config_spec)
    return create_model(
        stage.title().replace("-", "") + "Step", __base__=base,
        stage=(Literal[stage], stage),  # type: ignore[valid-type,arg-type]
        name=(str | None, Field(None, description="Artifact name in the run directory (default: the stage name)")),
        source=(str | None, Field(None, description="Name of the earlier step whose artifact this step starts from "
                                                    "(default: the previous step)")),
    )


def stage_config(step) -> Any:
    """The plain stage config inside a recipe step (pipeline fields dropped)."""
    _, _, config_spec = STAGE_MODULES[step.stage]
    return _load_object(config_spec).model_validate(step.model_dump(exclude=set(PIPELINE_FIELDS)))


class Recipe(StrictModel):
    name: str = Field("run", description="Recipe name (used in the report)")
    model: str = Field("minilm-l6", description="Base model: alias, directory or hub id")
    task: Task = Field(..., description="text-classification, token-classification or question-answering")
    data: str = Field(..., description="Data directory, name under the data root, or hub:NAME[/CONFIG]")
    budget: Budget = Field(default_factory=Budget)
    target: Target = Field(default_factory=Target)
    bench: BenchGrid = Field(default_factory=BenchGrid)
    stages: list[Any] = Field(..., min_length=1, description="Ordered stages; each has `stage:` and its config")

    def step_names(self) -> list[str]:
        return [step_name(s, i, self.stages) for i, s in enumerate(self.stages)]

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json", exclude={"stages"})
        data["stages"] = [_step_dict(s) for s in self.stages]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _step_dict(step) -> dict:
    data = step.model_dump(mode="json", exclude_none=True)
    return {"stage": data.pop("stage"), **data}


def step_name(step, index: int, steps: list) -> str:
    if step.name:
        return step.name
    same = [i for i, s in enumerate(steps) if s.stage == step.stage and not s.name]
    return step.stage if len(same) == 1 else f"{step.stage}-{same.index(index) + 1}"


def step_hash(step) -> str:
    """Identity of a step's configuration, for --resume."""
    text = json.dumps(_step_dict(step), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _inject_defaults(raw: dict, recipe: dict, stage: str) -> dict:
    model = step_model(stage)
    fields = model.model_fields
    raw = dict(raw)
    for key in INHERITED:
        if key in fields and key not in raw and key in recipe:
            raw[key] = recipe[key]
    budget = recipe.get("budget")
    if stage == "search" and isinstance(budget, dict):
        for key in BUDGET_FIELDS:
            if key not in raw and budget.get(key) is not None:
                raw[key] = budget[key]
    # Stages that train (DataConfig) take the recipe's data unless the step names its own; stages with a
    # plain `data` string (export, quantize) default to the data their source artifact records.
    annotation = fields["data"].annotation if "data" in fields else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(recipe.get("data"), str):
        data = raw.get("data")
        if data is None:
            raw["data"] = {"data": recipe["data"]}
        elif isinstance(data, dict) and "data" not in data:
            raw["data"] = {**data, "data": recipe["data"]}
    return raw


def parse_recipe(data: Any, where: str = "recipe") -> Recipe:
    """Validate a recipe mapping; raise one path-qualified ConfigError on the first problem."""
    if not isinstance(data, dict):
        raise ConfigError("a recipe must be a mapping with model, task, data and stages", where=where,
                          fix="See recipes/sst2.yaml for the shape")
    top = {k: v for k, v in data.items() if k != "stages"}
    try:
        Recipe.model_validate({**top, "stages": [{}]})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc), fix="Fix the recipe (see recipes/sst2.yaml)") from None
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError("stages: expected a non-empty list of stages", fix="Add `stages:` with at least one stage")
    steps = []
    for i, raw in enumerate(raw_stages):
        if not isinstance(raw, dict):
            raise ConfigError(f"stages.{i}: expected a mapping with a `stage:` key", fix="Write `- stage: finetune`")
        stage = raw.get("stage")
        if stage not in STAGE_MODULES:
            raise ConfigError(f"stages.{i}.stage: unknown stage '{stage}'",
                              fix=f"Choose one of: {', '.join(STAGE_MODULES)}")
        try:
            model = step_model(stage)
        except (ImportError, AttributeError) as exc:  # a stage module missing from this install
            raise ConfigError(f"stages.{i}.stage: stage '{stage}' is not available ({exc})",
                              fix="Reinstall bertedge") from None
        help_text = ("`bertedge optimize --help` and docs/optimize.md" if stage == "search"
                     else f"`bertedge {stage} --help`")
        try:
            steps.append(model.model_validate(_inject_defaults(raw, data, stage)))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"stages.{i}.{stage}"),
                              fix=f"Fix the value (see {help_text} for each field)") from None
        if stage == "search":
            from .search_space import check_blocks

            check_blocks(steps[-1], f"stages.{i}.search")
    recipe = Recipe.model_construct(**Recipe.model_validate({**top, "stages": [{}]}).__dict__)
    recipe.stages = steps
    _check_flow(recipe)
    _check_search_depths(recipe)
    return recipe


def _check_flow(recipe: Recipe) -> None:
    """Cross-step checks that need no model: names, sources, what each stage can start from."""
    names = recipe.step_names()
    seen: dict[str, str] = {}
    for i, (step, name) in enumerate(zip(recipe.stages, names)):
        where = f"stages.{i}.{step.stage}"
        if name in seen:
            raise ConfigError(f"{where}.name: the name '{name}' is used twice", fix="Give each step a unique name")
        if step.source is not None and step.source not in seen:
            have = ", ".join(seen) or "none"
            raise ConfigError(f"{where}.source: no earlier step named '{step.source}' (earlier steps: {have})",
                              fix="Name an earlier step, or drop `source` to use the previous one")
        source_stage = seen.get(step.source) if step.source else (recipe.stages[i - 1].stage if i else None)
        source_name = step.source or (names[i - 1] if i else None)
        if step.stage == "distill" and source_stage is None:
            raise ConfigError(f"{where}.source: distillation needs a teacher",
                              fix="Put a finetune step before it, or name the teacher step with `source:`")
        if step.stage != "finetune" and source_stage is None:
            raise ConfigError(f"{where}: a {step.stage} step needs an earlier step to start from",
                              fix="Put a finetune step first (or set `source`)")
        if source_stage == "search" and (step.stage != "finetune" or step.source):
            raise ConfigError(f"{where}{'.source' if step.source else ''}: a {step.stage} step cannot start from "
                              f"the search step '{source_name}' (its pick is a final ONNX bundle)",
                              fix="Put the search step last, or set `source:` to an earlier step")
        if step.stage == "search" and source_stage not in SEARCH_SOURCES:
            raise ConfigError(f"{where}{'.source' if step.source else ''}: a search starts from a fine-tuned "
                              f"PyTorch teacher (a finetune, distill or prune step), not the {source_stage} step "
                              f"'{source_name}'",
                              fix="Put the search step right after its teacher, or name the teacher with `source:`")
        if step.stage == "search":
            from .search_space import check_early_exit_task

            check_early_exit_task(step, recipe.task, where)
        if step.stage == "early-exit" and not get_task(recipe.task).per_sequence:
            raise ConfigError(f"{where}: early exit needs a text-classification model; this recipe's task is "
                              f"{recipe.task}", fix="Drop the early-exit step for this task")
        if step.stage in ("distill", "prune", "trim-vocab", "export", "early-exit") and \
                source_stage in ("export", "quantize"):
            raise ConfigError(f"{where}: {step.stage} needs a PyTorch artifact but its source is a "
                              f"{source_stage} bundle",
                              fix="Order the stages finetune -> distill -> prune -> trim-vocab -> export -> quantize")
        if step.stage == "quantize" and step.engine == "inc" and source_stage not in SEARCH_SOURCES + ("trim-vocab",):
            raise ConfigError(f"{where}: quantize with engine inc needs a PyTorch artifact but its source is a "
                              f"{source_stage} step",
                              fix="Quantize the last PyTorch step (no export before it), or use engine onnxruntime")
        if step.stage == "quantize" and step.engine == "onnxruntime" and source_stage != "export":
            raise ConfigError(f"{where}: quantize needs an exported ONNX bundle but its source is a "
                              f"{source_stage} step", fix="Add an export step before quantize, or set engine: inc "
                                                          "to quantize a PyTorch step with Neural Compressor")
        if step.stage == "quantize" and step.mode == "static" and not step.calibration:
            raise ConfigError(f"{where}.calibration: static quantization needs calibration data",
                              fix="Set `calibration: DATA` (e.g. the recipe's data name), or use mode: dynamic")
        seen[name] = step.stage


def _step_depths(recipe: Recipe) -> dict[str, int | None]:
    """Each step's encoder depth, from config.json files and the step configs alone (None: not known here)."""
    names = recipe.step_names()
    depths: dict[str, int | None] = {}
    for i, (step, name) in enumerate(zip(recipe.stages, names)):
        source = depths.get(step.source or (names[i - 1] if i else ""))
        if step.stage == "finetune":  # init_from must have the base model's architecture
            depths[name] = _model_depth(recipe.model)
        elif step.stage == "distill":
            if step.layer_map:
                depths[name] = len(step.layer_map)
            elif step.layers:
                depths[name] = step.layers
            elif step.student_config and "num_hidden_layers" in step.student_config:
                value = step.student_config["num_hidden_layers"]
                depths[name] = value if isinstance(value, int) else None
            elif step.student:
                depths[name] = _model_depth(step.student)
            else:
                depths[name] = source
        elif step.stage == "prune":
            depths[name] = None if source is None else source - len(set(step.drop_layers))
        else:
            depths[name] = source
    return depths


def _model_depth(reference: str) -> int | None:
    """num_hidden_layers of a model reference, read from its config.json (no weights load); None if unknown."""
    from .errors import BertEdgeError
    from .models import resolve_model

    try:
        resolved = resolve_model(reference)
    except BertEdgeError:
        return None  # the step that loads it reports the problem
    config_file = Path(resolved.path) / "config.json"
    try:
        value = json.loads(config_file.read_text(encoding="utf-8")).get("num_hidden_layers")
    except (OSError, ValueError):
        return None  # a hub id: its depth is checked when the search runs
    return value if isinstance(value, int) else None


def _check_search_depths(recipe: Recipe) -> None:
    """A search step's depths must not exceed its teacher's (the source step's depth)."""
    if not any(step.stage == "search" for step in recipe.stages):
        return
    from .search_space import check_depths

    names = recipe.step_names()
    depths = _step_depths(recipe)
    for i, (step, _name) in enumerate(zip(recipe.stages, names)):
        if step.stage != "search":
            continue
        source = step.source or names[i - 1]
        if depths.get(source) is not None:
            check_depths(step, depths[source], path=f"stages.{i}.search.layers",
                         teacher=f"its teacher '{source}'")


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    data = read_yaml(path, "recipe", "recipes/sst2.yaml")
    try:
        return parse_recipe(data, where=str(path))
    except ConfigError as exc:
        raise ConfigError(exc.what, where=f"{path}: {exc.where}" if exc.where else str(path), fix=exc.fix) from None
