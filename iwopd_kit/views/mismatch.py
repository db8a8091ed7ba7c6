"""The rollout-vs-trainer mismatch of a check, drawn: the pooled metrics with their usual thresholds,
the |Δ| quantiles and a histogram of Δ (Δ = trainer − rollout log-prob, the kit's ``student − rollout``).

Text for the terminal, HTML for the report: a table and an inline SVG (no script, no URL), so the
page stays self-contained and renders the same offline and in a PNG copy. The metrics are the
report's own (``AlignmentReport.metrics``); the quantiles and the histogram are over the same
tokens (:func:`iwopd_kit.alignment.mismatch.pooled_delta`).
"""

from __future__ import annotations

import html
import math

import numpy as np
import torch

from ..alignment.mismatch import MISMATCH_KEYS, USUAL_THRESHOLDS, abs_delta_quantiles, beyond_usual
from ..alignment.mismatch import batch_delta as pooled_batch_delta
from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, Batch
from .report import html_table, text_table

METRIC_HEADER = ["metric", "value", "usual threshold", "vs usual"]
QUANTILE_HEADER = ["tokens", "p50", "p90", "p99", "p99.9", "max"]


def metric_text(x: float) -> str:
    """4 significant digits (metrics span 1e-12 to 1e2: fixed decimals would hide them); 6 decimals near 1,
    where a ratio's excess over 1 is what counts (``token_mult_prob_error`` 1.004512)."""
    if x != x:
        return "nan"
    return f"{x:.6f}" if 0.5 <= abs(x) <= 2 else f"{x:.4g}"


def metric_rows(metrics: dict[str, float]) -> list[list[str]]:
    """One ``[key, value, usual threshold, within/beyond]`` per metric of :data:`MISMATCH_KEYS` present."""
    rows = []
    for key in MISMATCH_KEYS:
        if key not in metrics:
            continue
        v = float(metrics[key])
        text, low, high = USUAL_THRESHOLDS[key]
        verdict = "" if low is None and high is None else ("beyond" if beyond_usual(key, v) else "within")
        rows.append([key, metric_text(v), text, verdict])
    return rows


def batch_delta(batch: Batch) -> torch.Tensor | None:
    """Δ = student − rollout over the valid tokens with both values finite (float64 [N]); None without them
    (:func:`iwopd_kit.alignment.mismatch.batch_delta`)."""
    if not (batch.has(ROLLOUT_LOGPROBS) and batch.has(STUDENT_LOGPROBS)):
        return None
    d = pooled_batch_delta(batch)
    return d if d.numel() else None


def quantile_row(delta: torch.Tensor) -> list:
    """``[tokens, p50, p90, p99, p99.9, max]`` of |Δ| (see :data:`QUANTILE_HEADER`)."""
    q = abs_delta_quantiles(delta)
    qs = [metric_text(q[k]) for k in ("p50", "p90", "p99", "p99.9")]
    return [int(delta.numel()), *qs, metric_text(float(delta.abs().max()))]


def mismatch_text(metrics: dict[str, float], delta: torch.Tensor | None, why: str | None = None) -> str:
    """The terminal block: one line per metric with its usual threshold, then the |Δ| quantiles."""
    if not metrics:
        return f"mismatch metrics: not computed ({why or 'needs rollout_logprobs and student_logprobs'})"
    lines = ["mismatch metrics (Δ = student − rollout log-prob, pooled over valid tokens):",
             text_table(METRIC_HEADER, metric_rows(metrics))]
    if delta is not None:
        lines += ["|Δ| quantiles:", text_table(QUANTILE_HEADER, [quantile_row(delta)])]
    return "\n".join(lines)


def histogram_svg(delta: torch.Tensor, bins: int = 41, width: int = 480, height: int = 120) -> str:
    """An inline ``<svg>`` histogram of Δ on a symmetric range [−max|Δ|, max|Δ|], log-scaled bar heights.

    Each bar has a ``<title>`` (its range and count) for a hover tooltip; no script, no URL.
    """
    d = delta.detach().to(torch.float64).numpy()
    m = float(np.abs(d).max()) if d.size else 0.0
    m = m if m > 0 else 1e-12                                     # all exact: one bar at 0
    counts, edges = np.histogram(d, bins=bins, range=(-m, m))
    top = math.log10(1 + int(counts.max())) or 1.0
    pad, axis = 4, 16
    bw = (width - 2 * pad) / bins
    bars = []
    for i, c in enumerate(counts.tolist()):
        if not c:
            continue
        h = (height - axis - pad) * math.log10(1 + c) / top
        x, y = pad + i * bw, height - axis - h
        tip = f"Δ in [{edges[i]:.3g}, {edges[i + 1]:.3g}): {c} token(s)"
        bars.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" fill="#6a51a3">'
                    f"<title>{html.escape(tip)}</title></rect>")
    base = height - axis
    labels = [(pad, "start", f"{-m:.3g}"), (width / 2, "middle", "0"), (width - pad, "end", f"{m:.3g}")]
    text = "".join(f'<text x="{x:.1f}" y="{height - 3}" font-size="11" text-anchor="{a}" fill="#444">{html.escape(t)}'
                   "</text>" for x, a, t in labels)
    return (f'<svg class="iwm-h" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="histogram of Δ over {d.size} tokens">'
            f'<line x1="{pad}" y1="{base}" x2="{width - pad}" y2="{base}" stroke="#888"/>'
            f'<line x1="{width / 2:.1f}" y1="{pad}" x2="{width / 2:.1f}" y2="{base}" stroke="#bbb" stroke-dasharray="3,2"/>'
            + "".join(bars) + text + "</svg>")


def mismatch_html(metrics: dict[str, float], delta: torch.Tensor | None, why: str | None = None) -> str:
    """The report's section: the metrics table, the |Δ| quantile table and the Δ histogram."""
    if not metrics:
        return f"<p>not computed: {html.escape(why or 'needs rollout_logprobs and student_logprobs')}</p>"
    parts = ["<p>Δ = student (trainer) − rollout log-prob of each sampled token, pooled over the tokens the "
             "writer's framework pools (loss-masked, sampled by the policy) where both exist; the names are the ones RL frameworks log (usual thresholds: docs/check.md).</p>",
             html_table(METRIC_HEADER, metric_rows(metrics))]
    if delta is not None:
        parts += ["<p>|Δ| quantiles</p>", html_table(QUANTILE_HEADER, [quantile_row(delta)]),
                  f"<p>histogram of Δ ({int(delta.numel())} tokens; bar height: log(1 + count); hover a bar for its "
                  "count)</p>", histogram_svg(delta)]
    return "".join(parts)


__all__ = ["METRIC_HEADER", "QUANTILE_HEADER", "batch_delta", "histogram_svg", "metric_rows", "metric_text",
           "mismatch_html", "mismatch_text", "quantile_row"]
