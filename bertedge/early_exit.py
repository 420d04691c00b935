"""Early exit: the exit rules, their calibration, and the segment-by-segment runner. numpy only.

An early-exit classifier has one exit head after every encoder layer (the last one is the model's own
classifier). At inference the segments run in order, segment 0 = embeddings + layer 1 + exit head 1,
segment k = layer k+1 + exit head k+1 on the hidden state segment k-1 handed on, and a text stops at
the first layer whose exit is confident under the bundle's rule. docs/early_exit.md is the protocol.

This module is imported by `bertedge.runtime`, so it must never import torch: the stage that trains the
heads (`bertedge.stages.early_exit`) calls the same `exit_layers` and `calibrate` on PyTorch logits that
the bundle runtime applies to ONNX Runtime logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from .errors import ConfigError

Rule = Literal["entropy", "max-prob", "patience"]
RULES: tuple[str, ...] = ("entropy", "max-prob", "patience")
RULE_TEXT = {
    "entropy": "exit at the first layer whose normalised entropy H(p) / ln(num_labels) of softmax(exit_logits) "
               "is < threshold (0 = never exit early; 1 = exit unless p is uniform)",
    "max-prob": "exit at the first layer whose largest softmax(exit_logits) probability is > threshold "
                "(1 = never exit early; 0 = always exit at layer 1)",
    "patience": "PABEE: exit at layer k when the argmax of the exits of layers k - threshold .. k agree "
                "(threshold + 1 consecutive layers; threshold >= num_layers = never exit early)",
}
# Calibration grids, most aggressive first.
GRID_STEP = 0.001

HIDDEN_IN, MASK_IN = "hidden_state", "attention_mask"
HIDDEN_OUT, EXIT_OUT, FINAL_OUT = "next_hidden_state", "exit_logits", "logits"


def check_threshold(rule: str, threshold: float, *, where: str = "--threshold") -> float:
    """`threshold` if it is in range for `rule`; a one-line ConfigError otherwise."""
    if rule not in RULES:
        raise ConfigError(f"unknown exit rule '{rule}'", where="--rule", fix=f"Choose one of: {', '.join(RULES)}")
    value = float(threshold)
    if rule == "patience":
        if not math.isfinite(value) or value < 1 or value != int(value):
            raise ConfigError(f"threshold {threshold} is out of range for the patience rule (a whole number of "
                              "layers, 1 or more)", where=where, fix="Pass e.g. --threshold 2, or omit it to calibrate")
        return float(int(value))
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ConfigError(f"threshold {threshold} is out of range for the {rule} rule (0 to 1)", where=where,
                          fix="Pass a value from 0 to 1, or omit it to calibrate on dev")
    return value


def probabilities(logits: np.ndarray) -> np.ndarray:
    """softmax over the last axis, in float64 (what every rule reads)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    k = probs.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(probs), 0.0)
    return -terms.sum(axis=-1) / math.log(k) if k > 1 else np.zeros(probs.shape[:-1])


def confident(rule: str, threshold: float, logits: np.ndarray) -> np.ndarray:
    """Per row: does an entropy / max-prob exit fire on these exit logits? (patience: see PatienceState)"""
    probs = probabilities(logits)
    if rule == "entropy":
        return normalised_entropy(probs) < threshold
    if rule == "max-prob":
        return probs.max(axis=-1) > threshold
    raise ValueError(rule)


class PatienceState:
    """PABEE counters for the rows of a batch: how many consecutive layers have agreed on the argmax."""

    def __init__(self, n: int):
        self.previous = np.full(n, -1, dtype=np.int64)
        self.count = np.zeros(n, dtype=np.int64)

    def update(self, logits: np.ndarray, patience: float) -> np.ndarray:
        predicted = np.asarray(logits).argmax(axis=-1)
        self.count = np.where(predicted == self.previous, self.count + 1, 0)
        self.previous = predicted
        return self.count >= patience

    def keep(self, rows: np.ndarray) -> None:
        self.previous, self.count = self.previous[rows], self.count[rows]


def exit_layers(rule: str, threshold: float, layer_logits: np.ndarray) -> np.ndarray:
    """1-based exit layer of each example, from the logits of every exit: [N, L, C] -> [N].

    The same decisions the runtime takes layer by layer (the last layer always answers).
    """
    n, layers = layer_logits.shape[:2]
    exits = np.full(n, layers, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    state = PatienceState(n)
    for k in range(layers - 1):
        if rule == "patience":
            fire = state.update(layer_logits[:, k], threshold)
        else:
            fire = confident(rule, threshold, layer_logits[:, k])
        newly = undecided & fire
        exits[newly] = k + 1
        undecided &= ~fire
    return exits


def _grid(rule: str, layers: int) -> list[float]:
    """Candidate thresholds, most aggressive (earliest exits) first."""
    steps = round(1 / GRID_STEP)
    if rule == "entropy":
        return [round(1 - i * GRID_STEP, 6) for i in range(steps + 1)]
    if rule == "max-prob":
        return [round(i * GRID_STEP, 6) for i in range(steps + 1)]
    return [float(p) for p in range(1, max(layers, 1) + 1)]


def evaluate_rule(rule: str, threshold: float, layer_logits: np.ndarray, gold: np.ndarray | None) -> dict:
    """Accuracy (when gold is given), mean exit layer and exit histogram of one threshold."""
    layers = layer_logits.shape[1]
    exits = exit_layers(rule, threshold, layer_logits)
    chosen = layer_logits[np.arange(len(exits)), exits - 1]
    predicted = chosen.argmax(axis=-1)
    record = {"threshold": threshold, "mean_exit_layer": float(exits.mean()) if len(exits) else float(layers),
              "exit_histogram": histogram(exits, layers)}
    if gold is not None:
        record["accuracy"] = float((predicted == gold).mean()) if len(gold) else 0.0
    return record


def histogram(exits: Sequence[int] | np.ndarray, layers: int) -> dict[str, int]:
    """{"1": n1, ..., "L": nL}: how many inputs left at each layer."""
    counts = np.bincount(np.asarray(exits, dtype=np.int64), minlength=layers + 1)
    return {str(k): int(counts[k]) for k in range(1, layers + 1)}


def calibrate(rule: str, layer_logits: np.ndarray, gold: np.ndarray, max_accuracy_drop: float) -> dict:
    """The threshold with the lowest mean exit layer whose dev accuracy is within `max_accuracy_drop` points
    of full depth (ties: the more conservative threshold). Never-exit always qualifies, so there is always one.

    `layer_logits`: [N, L, C] exit logits of every layer (the last: the model's own classifier).
    """
    layer_logits = np.asarray(layer_logits, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    layers = layer_logits.shape[1]
    full = float((layer_logits[:, -1].argmax(axis=-1) == gold).mean()) if len(gold) else 0.0
    floor = full - max_accuracy_drop / 100 - 1e-12
    best = None
    curve = []
    for threshold in _grid(rule, layers):
        row = evaluate_rule(rule, threshold, layer_logits, gold)
        curve.append(row)
        # the grid runs from aggressive to conservative: on a tie the later (more conservative) threshold wins
        if row["accuracy"] >= floor and (best is None or row["mean_exit_layer"] <= best["mean_exit_layer"] + 1e-12):
            best = row
    if best is None:  # unreachable: the most conservative threshold exits at the last layer
        best = curve[-1]
    sample = curve[:: max(1, len(curve) // 20)]
    if sample[-1] is not curve[-1]:
        sample.append(curve[-1])
    return {"rule": rule, "threshold": best["threshold"], "max_accuracy_drop": max_accuracy_drop,
            "n": len(gold), "accuracy_full_depth": full, "accuracy": best["accuracy"],
            "drop_pts": round((full - best["accuracy"]) * 100, 4), "mean_exit_layer": best["mean_exit_layer"],
            "layers": layers, "exit_histogram": best["exit_histogram"],
            "curve": [{k: r[k] for k in ("threshold", "accuracy", "mean_exit_layer")} for r in sample]}


# ----------------------------------------------------------------------------- the runner

Segment = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def run_segments(segments: Sequence[Segment], batch: dict[str, np.ndarray], rule: str, threshold: float, *,
                 full_depth: bool = False, collect: bool = False, calls: list[int] | None = None) -> dict:
    """Run one batch through the segments until each row's exit fires.

    Returns {"logits": [B, C] float32, "exit_layer": [B] int64} (+ "layer_logits": [B, L, C] with
    `collect`, which needs `full_depth`). Decided rows leave the batch; the rest go on trimmed to their
    longest remaining sequence, so a row's result does not depend on which rows were decided beside it.
    `calls[k]` is incremented each time segment k runs.
    """
    layers = len(segments)
    mask = np.asarray(batch[MASK_IN])
    n = mask.shape[0]
    logits: np.ndarray | None = None
    exit_layer = np.full(n, layers, dtype=np.int64)
    collected: list[np.ndarray] = []
    active = np.arange(n)
    state = PatienceState(n)
    feeds: dict[str, np.ndarray] = batch
    for k, segment in enumerate(segments):
        if calls is not None:
            calls[k] += 1
        out = segment(feeds)
        last = k == layers - 1
        current = out[FINAL_OUT if last else EXIT_OUT]
        if logits is None:
            logits = np.zeros((n, current.shape[-1]), dtype=current.dtype)
        if collect:
            collected.append(current)
        if last:
            logits[active] = current
            break
        if full_depth:
            fire = np.zeros(len(active), dtype=bool)
        elif rule == "patience":
            fire = state.update(current, threshold)
        else:
            fire = confident(rule, threshold, current)
        if fire.any():
            logits[active[fire]] = current[fire]
            exit_layer[active[fire]] = k + 1
        if fire.all():
            break
        keep = np.flatnonzero(~fire)
        hidden = out[HIDDEN_OUT]
        if len(keep) < len(active):
            active, hidden, mask = active[keep], hidden[keep], mask[keep]
            state.keep(keep)
        used = np.flatnonzero(mask.any(axis=0))
        width = int(used[-1]) + 1 if len(used) else mask.shape[1]
        if width < mask.shape[1]:
            hidden, mask = hidden[:, :width], mask[:, :width]
        feeds = {HIDDEN_IN: np.ascontiguousarray(hidden), MASK_IN: np.ascontiguousarray(mask)}
    result = {"logits": logits, "exit_layer": exit_layer}
    if collect:
        result["layer_logits"] = np.stack(collected, axis=1)
    return result


def protocol_record(layers: int, num_labels: int, segment_files: list[str], input_names: list[str], rule: str,
                    threshold: float, hidden_size: int) -> dict:
    """The manifest's description of the exit protocol: enough for another language binding."""
    segments = []
    for k, file in enumerate(segment_files):
        inputs = input_names if k == 0 else [HIDDEN_IN, MASK_IN]
        outputs = [FINAL_OUT] if k == layers - 1 else [HIDDEN_OUT, EXIT_OUT]
        segments.append({"index": k, "file": file, "layer": k + 1,
                         "computes": ("embeddings + " if k == 0 else "") + f"encoder layer {k + 1} + "
                                     + ("the model's own classifier (pooler + classifier)" if k == layers - 1
                                        else f"exit head {k + 1}"),
                         "inputs": inputs, "outputs": outputs})
    return {
        "protocol_version": 1,
        "layers": layers,
        "segments": segments,
        "rule": rule,
        "threshold": threshold,
        "rule_definition": RULE_TEXT[rule],
        "shapes": {HIDDEN_IN: ["batch", "sequence", hidden_size], HIDDEN_OUT: ["batch", "sequence", hidden_size],
                   MASK_IN: ["batch", "sequence"], EXIT_OUT: ["batch", num_labels], FINAL_OUT: ["batch", num_labels]},
        "dtypes": {HIDDEN_IN: "float32", HIDDEN_OUT: "float32", EXIT_OUT: "float32", FINAL_OUT: "float32",
                   MASK_IN: "int64", "other inputs": "int64"},
        "steps": [
            "Tokenize as for the plain bundle (interface.*); feed segment 0 its inputs.",
            (f"After segment k < {layers - 1}: p = softmax({EXIT_OUT}) in float64; if the rule fires, the "
            f"prediction is argmax(p) and the exit layer is k + 1: stop."),
            (f"Otherwise feed segment k + 1 {HIDDEN_IN} = segment k's {HIDDEN_OUT} and the same {MASK_IN} "
            "(rows already decided may be dropped from the batch; trailing all-padding columns may be cut "
            "from both)."),
            f"Segment {layers - 1} (the last) outputs {FINAL_OUT}, the full-depth classifier's; it always answers.",
            "full depth (for comparison): ignore the rule and run every segment.",
        ],
    }
