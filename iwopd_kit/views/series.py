"""A batch (and an objective result) as the per-token series the views show, under their names."""

from __future__ import annotations

from ..batch import Batch
from ..objective import ObjectiveResult
from .names import MEASURED


def per_token_series(batch: Batch, result: ObjectiveResult | None = None) -> dict[str, list[list[float | None]]]:
    """Ragged per-token series: rollout, student, teacher, gap = |rollout - student|, and with a
    result advantage, weight, loss (None off the mask). Token j of row b = the j-th generated token."""
    out: dict[str, list[list[float | None]]] = {}
    for s in MEASURED:
        if batch.has(s.field):
            out[s.name] = getattr(batch, s.field)
    if "rollout" in out and "student" in out:
        out["gap"] = [[None if r is None or s is None else abs(r - s) for r, s in zip(rr, ss)]
                      for rr, ss in zip(out["rollout"], out["student"])]
    if result is not None:
        valid = batch.valid()
        for name, t in (("advantage", result.advantages), ("weight", result.weights), ("loss", result.per_token_loss)):
            t = t.detach().double().masked_fill(~valid, float("nan"))
            out[name] = [[None if v != v else v for v in row[:n]] for row, n in zip(t.tolist(), batch.lengths)]
    return out
