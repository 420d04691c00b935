"""What `bertedge optimize` can try and what it writes, apart from running it: the search config (SearchConfig,
PruneChoice) and its checks, the output file names, and the candidate table and cost line that search.md and
a recipe's report share. The recipe loader and the report read these without importing the search itself.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from .config import DataConfig, StrictModel, format_validation_error
from .errors import ConfigError
from .log import number_or_dash

SEARCH_JSON = "search.json"
SEARCH_MD = "search.md"
PARETO_PNG = "pareto.png"


class PruneChoice(StrictModel):
    ffn: float = Field(0.0, ge=0, lt=1, description="Fraction of FFN neurons removed per layer")
    heads: float = Field(0.0, ge=0, lt=1, description="Fraction of attention heads removed per layer")
    layers: int | None = Field(None, ge=1, description="Keep this many of the model's encoder layers (the bottom "
                                                       "ones; the top ones are dropped, as in Sajjad et al. 2020), "
                                                       "recovered with KD from the teacher: a cheap student")

    @property
    def is_identity(self) -> bool:
        return self.ffn == 0 and self.heads == 0 and self.layers is None

    @property
    def tag(self) -> str:
        depth = f"d{self.layers}-" if self.layers is not None else ""
        if self.ffn == 0 and self.heads == 0 and depth:
            return depth[:-1]
        return f"{depth}p{round(self.ffn * 100)}-{round(self.heads * 100)}"

    def kept_share(self, depth: int) -> float:
        """Rough share of the encoder's layer weights this choice keeps (FFN is 2/3 of a BERT layer's weights):
        the order of the search, least compressed first."""
        layers = min(self.layers or depth, depth)
        return layers / depth * (1 - (2 * self.ffn + self.heads) / 3)


class SearchConfig(StrictModel):
    layers: list[int] = Field([3, 2], min_length=1,
                              description="Student depths to distill (0 or the teacher's depth: the teacher itself)")
    prune: list[PruneChoice] = Field(default_factory=lambda: [PruneChoice(), PruneChoice(ffn=0.5, heads=0.33)],
                                     min_length=1, description="Structured prune ratios tried on every student "
                                                               "({ffn: 0, heads: 0} = unpruned)")
    quantize: list[Literal["none", "dynamic", "static", "auto"]] = Field(
        ["dynamic", "auto"], min_length=1, description="Quantization modes tried on every bundle (none = fp32 ONNX)")
    max_accuracy_drop: float = Field(1.0, ge=0, description="Budget: largest dev-metric drop vs the teacher, in points")
    max_size_mb: float | None = Field(None, gt=0, description="Budget: largest bundle size in MB")
    metric: str | None = Field(None, description="Dev metric of the budget (default: the task's primary metric)")
    slack: float = Field(0.0, ge=0, description="Points over the budget an intermediate candidate may lose and "
                                                "still be compressed further")
    monotone: bool = Field(True, description="A failing depth skips shallower ones; a failing prune ratio skips "
                                             "larger ones")
    data: DataConfig = Field(default_factory=DataConfig, description="Transfer data (default: the teacher's)")
    trim_vocab: dict[str, Any] | None = Field(None, description="Trim the vocabulary of every model before export "
                                              "(TrimVocabConfig fields, e.g. {keep_chars: ascii}; {} = defaults; "
                                              "default: no trimming)")
    trim_first: bool = Field(False, description="With trim_vocab: trim each model before it is pruned, so the "
                                                "recovery trains on the trimmed vocabulary (KD from the trimmed "
                                                "teacher); default: trim after pruning")
    early_exit: dict[str, Any] | None = Field(None, description="Also try every model with exit heads (EarlyExitConfig "
                                              "fields, e.g. {pooling: mean, ce_weight: 1}; {} = defaults; its "
                                              "max_accuracy_drop caps the calibration's share of the budget; "
                                              "text classification only; default: no early exit)")
    dev_timing_samples: int = Field(200, ge=1, description="With early_exit: dev inputs every final candidate is "
                                                           "timed over at batch 1 (how deep an input goes depends "
                                                           "on the input)")
    dev_timing_rounds: int = Field(3, ge=1, description="With early_exit: alternating passes over those inputs")
    distill: dict[str, Any] = Field(default_factory=dict, description="Extra distill settings (DistillConfig fields)")
    prune_options: dict[str, Any] = Field(default_factory=dict, description="Extra prune settings (PruneConfig fields)")
    export_options: dict[str, Any] = Field(default_factory=dict, description="Extra export settings (ExportConfig)")
    quantize_options: dict[str, Any] = Field(default_factory=dict, description="Extra quantize settings "
                                                                               "(QuantizeConfig fields)")
    batch_size: int = Field(1, ge=1, description="Batch size of the latency ranking")
    seq_len: int = Field(128, ge=2, description="Sequence length of the latency ranking")
    runs: int = Field(30, ge=3, description="Interleaved timing rounds")
    warmup: int = Field(5, ge=0, description="Untimed calls per candidate before timing")
    threads: int | None = Field(None, ge=1, description="Intra-op threads (default: the runtime's)")
    max_hours: float | None = Field(None, ge=0, description="Wall-clock budget of the search, in hours: once spent "
                                                            "(and the first candidate finished), no new candidate "
                                                            "is built and the rest are listed as `not tried` "
                                                            "(default: unlimited; 0 = stop after the first)")

    @model_validator(mode="after")
    def _check(self):
        if any(n < 0 for n in self.layers):
            raise ValueError("layers: depths must be 0 (the teacher) or positive")
        if len({(c.ffn, c.heads, c.layers) for c in self.prune}) != len(self.prune):
            raise ValueError("prune: the same ratio is listed twice")
        return self


# What the search sets in each block; a sample value lets the block validate on its own.
SAMPLE = {"distill": {"layers": 1}, "prune_options": {"ffn": 0.5}, "quantize_options": {"mode": "dynamic"},
          "export_options": {}, "trim_vocab": {}, "early_exit": {}}
FIXED = {"distill": {"layers", "layer_map", "student_config", "student", "task"},
         "prune_options": {"ffn", "heads", "sparsity", "target_ffn", "target_heads", "drop_layers"},
         "quantize_options": {"mode", "max_accuracy_drop"}, "export_options": set(), "trim_vocab": set(),
         "early_exit": set()}


def stage_configs():
    """The config class of each per-stage option block."""
    from .stages.distill import DistillConfig
    from .stages.early_exit import EarlyExitConfig
    from .stages.export import ExportConfig
    from .stages.prune import PruneConfig
    from .stages.quantize import QuantizeConfig
    from .stages.vocab import TrimVocabConfig

    return {"distill": DistillConfig, "prune_options": PruneConfig, "export_options": ExportConfig,
            "quantize_options": QuantizeConfig, "trim_vocab": TrimVocabConfig, "early_exit": EarlyExitConfig}


def parse_search(data: Any, where: str = "search") -> SearchConfig:
    """Validate a search config (and its per-stage option blocks) before any model loads."""
    if not isinstance(data, dict):
        raise ConfigError("a search config must be a mapping", where=where, fix="See docs/optimize.md for the shape")
    try:
        config = SearchConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where), fix="Fix the value (see `bertedge optimize --help`)") \
            from None
    check_blocks(config, where)
    return config


def check_blocks(config: SearchConfig, where: str = "search") -> None:
    """The per-stage option blocks (distill, prune_options, ...): no field the search varies, each valid."""
    if config.trim_first and config.trim_vocab is None:
        raise ConfigError(f"{where}.trim_first: there is no vocabulary trim to move before pruning",
                          fix="Add trim_vocab (e.g. trim_vocab: {}), or drop trim_first")
    for block, model in stage_configs().items():
        options = getattr(config, block)
        if options is None:  # trim_vocab, early_exit: off
            continue
        fixed = sorted(FIXED[block] & set(options))
        if fixed:
            raise ConfigError(f"{where}.{block}.{fixed[0]}: set by the search itself",
                              fix=f"Remove it from {block}; the search varies it (layers / prune / quantize)")
        try:
            model.model_validate({**options, **SAMPLE[block]})  # type: ignore[dict-item]
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{where}.{block}"),
                              fix="Fix the value (same fields as the stage's config)") from None


def check_early_exit_task(config: SearchConfig, task: str, where: str = "search") -> None:
    """Early exit as a search axis is for text classification: refused for other tasks before any model loads."""
    from .tasks import get_task

    if config.early_exit is not None and not get_task(task).per_sequence:
        raise ConfigError(f"{where}.early_exit: early exit needs a text-classification model; this search's task is "
                          f"{task}", fix="Remove early_exit from the search for this task")


def check_depths(config: SearchConfig, teacher_depth: int, path: str = "layers", teacher: str = "the teacher",
                 where: str | None = None) -> None:
    """Refuse a student depth above the teacher's, naming the list item (`layers.1: 7 is deeper ...`), and a
    prune choice that keeps as many layers as the teacher has or more (`prune.0.layers: 6 ...`)."""
    layers = f"{teacher_depth} layer" + ("s" if teacher_depth != 1 else "")
    for i, depth in enumerate(config.layers):
        if depth > teacher_depth:
            raise ConfigError(f"{path}.{i}: {depth} is deeper than {teacher} ({layers})", where=where,
                              fix=f"Use depths from 1 to {teacher_depth} (0 = the teacher itself)")
    prune_path = path[:-len("layers")] + "prune" if path.endswith("layers") else "prune"
    for i, choice in enumerate(config.prune):
        if choice.layers is not None and choice.layers >= teacher_depth:
            raise ConfigError(f"{prune_path}.{i}.layers: keeping {choice.layers} layers drops none of {teacher}'s "
                              f"{layers}", where=where,
                              fix=f"Keep fewer layers (1 to {teacher_depth - 1}), or leave `layers` out")


# ----------------------------------------------------------------------------- tables


def candidate_table(candidates: list[dict]) -> list[str]:
    """The candidates as a markdown table: status, verdict (or reason), drop, size, p50 and build wall time; with
    early-exit candidates also the mean batch-1 latency over dev inputs (what ranks them) and the mean exit layer."""
    dev = any(r.get("dev_mean_ms") is not None for r in candidates)
    lines = [("| candidate | stage | from | status | dev metric | drop (pts) | size (MB) | p50 (ms) | vs teacher "
              + ("| dev mean (ms) | mean exit layer " if dev else "") + "| build (s) | Pareto | verdict |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if dev else "")]
    for r in candidates:
        size = r.get("size_bytes")
        verdict = r.get("verdict") or r.get("reason") or ("intermediate" if r["status"] == "built" else r["status"])
        build = "kept" if r.get("kept_from_earlier_run") else number_or_dash(r.get("wall_time_s"), ".1f")
        speedup = r.get("speedup_vs_teacher")
        lines.append(f"| {r['name']} | {r['stage']} | {r.get('parent') or ''} | {r['status']} "
                     f"| {number_or_dash(r.get('metric_value'), '.4f')} | {number_or_dash(r.get('drop_pts'))} "
                     f"| {number_or_dash(size / 1e6 if size else None)} | {number_or_dash(r.get('p50_ms'))} "
                     f"| {number_or_dash(speedup)}{'x' if speedup else ''} "
                     + (f"| {number_or_dash(r.get('dev_mean_ms'), '.3f')} | {number_or_dash(r.get('mean_exit_layer'))} "
                        if dev else "")
                     + f"| {build} | {'yes' if r.get('pareto') else ''} "
                     f"| {verdict} |")
    return lines


def cost_line(result: dict) -> str:
    """What the search itself cost: wall time in all, building vs ranking, and how many candidates of each status."""
    cost = result.get("cost") or {}
    counts = cost.get("counts") or {}
    total = cost.get("wall_time_s", result.get("wall_time_s")) or 0.0
    line = (f"Search cost: {total / 60:.1f} min wall time ({cost.get('build_wall_time_s', 0):.0f} s building "
            f"candidates, {cost.get('rank_wall_time_s', 0):.0f} s ranking); {counts.get('built', 0)} built"
            f" ({counts.get('kept_from_earlier_run', 0)} kept from an earlier run), {counts.get('dropped', 0)} "
            f"dropped, {counts.get('skipped', 0)} skipped, {counts.get('not tried', 0)} not tried.")
    stopped = result.get("stopped")
    if stopped:
        line += (f" **Stopped by the wall-clock budget** (max_hours {stopped['max_hours']:g}) after "
                 f"{stopped['elapsed_s']:.0f} s: {stopped['not_tried']} candidates from {stopped['first_not_tried']} "
                 "on were not tried.")
    return line
