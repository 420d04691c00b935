"""The accuracy gate: the candidates one quantize run compares (`Candidate`), the fastest within the metric
budget (`choose_candidate`), and why each was taken or left (`candidate_verdict`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ... import log
from ...errors import QuantizationError
from .schemes import Scheme

# A candidate's fields the manifest's gate table records, in this order.
RECORDED_FIELDS = ("name", "status", "verdict", "score", "drop_pts", "p50_ms", "p90_ms", "speedup", "size_bytes",
                   "quantized_nodes", "quantize_s")


@dataclass(eq=False)
class Candidate:
    """One graph the gate compares, or the fp32 reference: how it was built, what it scores and how fast it
    runs. Fields stay None until the step that measures them ran (a failed candidate has a name, a scheme and
    a status only)."""

    name: str
    scheme: Scheme | None = None  # None: the fp32 reference
    path: Path | None = None
    status: str = "ok"  # or "failed: WHY"
    size_bytes: int | None = None
    quantized_nodes: dict[str, int] | None = None
    op_counts: dict[str, int] | None = None
    quantize_s: float | None = None
    metrics: dict = field(default_factory=dict)  # dev metrics
    score: float | None = None  # the gate's metric
    drop_pts: float | None = None  # fp32 score minus this one, in points
    p50_ms: float | None = None
    p90_ms: float | None = None
    runs: int | None = None
    speedup: float | None = None  # fp32 p50 / this p50
    verdict: str | None = None
    validation: dict | None = None  # fp16: the overflow and divergence checks
    batching: dict | None = None  # whether its outputs depend on the rest of the batch

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def set_timing(self, timing: dict) -> None:
        """p50_ms, p90_ms and runs from `time_models`."""
        self.p50_ms, self.p90_ms, self.runs = timing["p50_ms"], timing["p90_ms"], timing["runs"]

    def record(self) -> dict:
        """The gate table's row in the manifest (the measured fields, and the scheme)."""
        data = {name: getattr(self, name) for name in RECORDED_FIELDS if getattr(self, name) is not None}
        if self.scheme is not None:
            data["scheme"] = self.scheme.record()
        return data


def choose_candidate(rows: list[Candidate], max_drop: float) -> tuple[Candidate, bool]:
    """The fastest candidate within `max_drop` points; else the most accurate one (met=False)."""
    ok = [r for r in rows if r.ok]
    if not ok:
        reasons = "; ".join(f"{r.name}: {r.status}" for r in rows)
        raise QuantizationError(f"every quantization candidate failed ({reasons})",
                                fix="Exclude the failing op types with --exclude-op-types")
    within = [r for r in ok if r.drop_pts <= max_drop + 1e-9]
    if within:
        return min(within, key=lambda r: (r.p50_ms, r.drop_pts)), True
    return min(ok, key=lambda r: (r.drop_pts, r.p50_ms)), False


def candidate_verdict(row: Candidate, chosen: Candidate, max_drop: float, metric: str) -> str:
    """Why the gate took or left a candidate, in words the report shows."""
    if not row.ok:
        return f"rejected: {row.status}"
    within = row.drop_pts <= max_drop + 1e-9
    if row is chosen:
        return ("chosen: fastest within the budget" if within else
                f"chosen: most accurate, but {log.points_change(row.drop_pts)}, over the {max_drop} pt budget")
    if not within:
        return f"rejected: {metric} {log.points_change(row.drop_pts)}, over the {max_drop} pt budget"
    return f"within budget, slower than {chosen.name} ({row.p50_ms:.2f} vs {chosen.p50_ms:.2f} ms)"
