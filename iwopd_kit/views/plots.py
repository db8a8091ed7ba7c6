"""Plotly figures of one row's per-token series: log-probs, A and w, the cumulative |A| share.

Coordinate frame: every tensor is ``[B, L]`` in completion coordinates (token ``j`` = the ``j``-th
generated token of row ``b``; right-padded; ``mask`` bool ``[B, L]`` marks the tokens that count).
A figure shows one row ``b``; its x axis is the position ``j``.

Every function returns a plain :class:`plotly.graph_objects.Figure` (never a ``FigureWidget``,
whose random uid breaks notebook comparison) with a fixed size, data as rounded Python lists (no
binary ``bdata``) and no random parts, so the same input gives the same JSON. Embed one in HTML
with :func:`figure_html`, which uses a fixed div id and no ``<script src=...>``.

Conventions shared by the figures (docs/method.md, sections 5-6: advantage, prefix weights):

* ``T_b``: the row's number of valid tokens; ``r_j``: the rank of token ``j`` among them
  (``r_j = j`` when the row has no masked tokens before ``j``).
* ``S_<j = sum_{k<j, valid} |A_k|`` (exclusive), ``S = sum_{valid} |A_k|``;
  ``w_j = 1 + gamma * (1 - S_<j / max(S, eps))``.
* The paper's linear reference schedule is ``1 + gamma * (1 - r_j / T_b)``; it is what ``w`` would
  be if every token carried the same ``|A|``.
"""

from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from ..batch import Batch
from ..objective import exclusive_share, prefix_weights
from .names import SERIES_NAMES
from .text import visible_text

#: Figure size in pixels (fixed so the layout never depends on the notebook's width).
WIDTH = 900
HEIGHT = 380
#: Decimals kept in the figures' data.
DECIMALS = 6

_TEMPLATE = "plotly_white"
_COLORS = {**{s.name: s.color for s in SERIES_NAMES if s.color is not None},
           "reference": "#999999", "share": "#4393c3", "diff": "#d6604d"}
_GAMMA_COLORS = ("#999999", "#92c5de", "#4393c3", "#2166ac", "#053061", "#b2182b", "#d6604d")


# ----------------------------------------------------------------------------------------- helpers
def _round(v: float | None) -> float | None:
    """Round a float for the figure's data; None for missing / non-finite values."""
    if v is None or not math.isfinite(v):
        return None
    r = round(float(v), DECIMALS)
    return 0.0 if r == 0 else r


def _check_2d(name: str, x: Tensor, like: Tensor | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a torch.Tensor [B, L] (completion coordinates), "
                         f"got {getattr(x, 'shape', type(x).__name__)}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but mask has shape {tuple(like.shape)}; "
                         "expected equal [B, L]")


def _check_row(row: int, n_rows: int) -> int:
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < n_rows:
        raise ValueError(f"row must be an int in [0, {n_rows}), got {row!r}")
    return row


def _valid_positions(mask: Tensor, row: int) -> list[int]:
    """Positions j of row ``row`` with ``mask[row, j]`` True, in order."""
    return [int(j) for j in mask[row].bool().nonzero().flatten().tolist()]


def _row_values(x: Tensor, row: int, positions: Sequence[int]) -> list[float | None]:
    """``x[row, j]`` for each j in ``positions``, as rounded floats (None where not finite)."""
    vals = x[row].detach().to("cpu", torch.float64).tolist()
    return [_round(vals[j]) for j in positions]


def _base_layout(fig: go.Figure, title: str, xaxis_title: str = "position j (generated token)") -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        width=WIDTH, height=HEIGHT, template=_TEMPLATE,
        margin={"l": 60, "r": 60, "t": 70, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        hovermode="x unified",
    )
    fig.update_xaxes(title_text=xaxis_title)
    return fig


def _no_tokens_note(fig: go.Figure, row: int) -> go.Figure:
    fig.add_annotation(text=f"row {row} has no valid tokens", showarrow=False,
                       xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def _prepare(advantages: Tensor, mask: Tensor, row: int) -> tuple[Tensor, list[int]]:
    _check_2d("mask", mask)
    _check_2d("advantages", advantages, mask)
    _check_row(row, mask.shape[0])
    mask = mask.bool()
    return mask, _valid_positions(mask, row)


def linear_reference(mask: Tensor, row: int, gamma: float) -> list[float]:
    """The paper's linear schedule ``1 + gamma * (1 - r_j / T_b)`` at the row's valid positions.

    ``mask``: bool [B, L]. Returns T_b floats, one per valid token j in order (``r_j`` = rank of j
    among the valid tokens, ``T_b`` = their count); the first is ``1 + gamma``.
    """
    n = len(_valid_positions(mask.bool(), row))
    return [1.0 + gamma * (1.0 - r / n) for r in range(n)]


# ----------------------------------------------------------------------------------------- figures
def logprob_figure(batch: Batch, row: int, tokens: list[str] | None = None) -> go.Figure:
    """Rollout / student / teacher log-prob of each completion token of row ``row``.

    Args:
        batch: the batch; every series it has (``rollout_logprobs``, ``student_logprobs``,
            ``teacher_logprobs``) becomes one line over positions j = 0..L_b-1.
        row: the row b to show.
        tokens: optional L_b token strings; used as x tick labels (whitespace made visible).

    Missing values (None) are gaps; tokens masked out of the loss are drawn with hollow markers.
    """
    _check_row(row, batch.size)
    n = batch.lengths[row]
    if tokens is not None and len(tokens) != n:
        raise ValueError(f"tokens has {len(tokens)} strings but row {row} has {n} completion tokens")
    valid = batch.valid()[row].tolist()
    positions = list(range(n))
    symbols = ["circle" if v else "circle-open" for v in valid]
    fig = go.Figure()
    for name in ("rollout", "student", "teacher"):
        key = f"{name}_logprobs"
        if not batch.has(key):
            continue
        ys = [None if v is None else _round(v) for v in getattr(batch, key)[row]]
        fig.add_trace(go.Scatter(
            x=positions, y=ys, name=name, mode="lines+markers",
            line={"color": _COLORS[name], "width": 2}, marker={"symbol": symbols, "size": 7},
            hovertemplate=f"{name}: %{{y:.4f}}<extra></extra>",
        ))
    _base_layout(fig, f"row {row}: log-prob of each sampled token ({n} tokens, {sum(valid)} valid)")
    fig.update_yaxes(title_text="log-prob of y_j")
    if tokens is not None:
        fig.update_xaxes(tickmode="array", tickvals=positions, ticktext=[visible_text(t) for t in tokens])
    if not fig.data:
        fig.add_annotation(text="the batch has no log-prob series yet", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def advantage_weight_figure(advantages: Tensor, weights: Tensor, mask: Tensor, row: int,
                            gamma: float) -> go.Figure:
    """A (bars, left axis) and w (line, right axis) at the valid positions of row ``row``.

    Args:
        advantages, weights: float [B, L] (A and w, completion coordinates).
        mask: bool [B, L].
        row: the row b to show.
        gamma: the gamma the weights were computed with; draws the linear reference
            ``1 + gamma * (1 - r_j / T_b)`` (dashed, right axis), which starts at ``1 + gamma``.

    Traces, in order: ``A`` (bar), ``w`` (line), ``linear 1+γ(1−j/T)`` (line).
    """
    mask, pos = _prepare(advantages, mask, row)
    _check_2d("weights", weights, mask)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=pos, y=_row_values(advantages, row, pos), name="A",
                         marker={"color": _COLORS["advantage"]},
                         hovertemplate="A: %{y:.4f}<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Scatter(x=pos, y=_row_values(weights, row, pos), name="w", mode="lines+markers",
                             line={"color": _COLORS["weight"], "width": 2},
                             hovertemplate="w: %{y:.4f}<extra></extra>"), secondary_y=True)
    ref = [_round(v) for v in linear_reference(mask, row, gamma)]
    fig.add_trace(go.Scatter(x=pos, y=ref, name="linear 1+γ(1−j/T)", mode="lines",
                             line={"color": _COLORS["reference"], "dash": "dash"},
                             hovertemplate="linear: %{y:.4f}<extra></extra>"), secondary_y=True)
    _base_layout(fig, f"row {row}: advantage A and prefix weight w (γ = {gamma:g}, T = {len(pos)} valid tokens)")
    fig.update_yaxes(title_text="A = teacher − rollout", secondary_y=False, zeroline=True)
    fig.update_yaxes(title_text="w", secondary_y=True, range=[0.95, 1.0 + gamma + 0.05], showgrid=False)
    return _no_tokens_note(fig, row) if not pos else fig


def cumulative_share_figure(advantages: Tensor, mask: Tensor, row: int) -> go.Figure:
    """``S_<j / S`` (exclusive cumulative |A| share) and the linear ``r_j / T_b`` of row ``row``.

    Args:
        advantages: float [B, L]; mask: bool [B, L]; row: the row b.

    ``w_j = 1 + gamma * (1 - share_j)``: where the share line rises faster than the linear one, the
    early tokens carry more than their share of |A| and the weights fall faster than a linear
    schedule. Traces: ``S_<j / S`` then ``linear j/T``. An all-zero row has share 0 everywhere.
    """
    mask, pos = _prepare(advantages, mask, row)
    share = exclusive_share(advantages.detach().to(torch.float64), mask)[row].tolist()
    n = len(pos)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=pos, y=[_round(share[j]) for j in pos], name="S_<j / S",
                             mode="lines+markers", line={"color": _COLORS["share"], "width": 2},
                             hovertemplate="S_<j/S: %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=pos, y=[_round(r / n) for r in range(n)], name="linear j/T", mode="lines",
                             line={"color": _COLORS["reference"], "dash": "dash"},
                             hovertemplate="j/T: %{y:.4f}<extra></extra>"))
    _base_layout(fig, f"row {row}: share of |A| before token j (exclusive), T = {n} valid tokens")
    fig.update_yaxes(title_text="share", range=[-0.02, 1.02])
    return _no_tokens_note(fig, row) if not pos else fig


def weights_for_gammas_figure(advantages: Tensor, mask: Tensor, row: int,
                              gammas: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
                              eps: float = 1e-8) -> go.Figure:
    """w of row ``row`` for several gamma (one line each, named ``γ=<gamma>``).

    Args:
        advantages: float [B, L]; mask: bool [B, L]; row: the row b.
        gammas: the gammas, one trace each in this order (gamma = 0 is plain OPD: all ones).
        eps: the guard in ``max(S, eps)``.

    Weights come from :func:`iwopd_kit.objective.prefix_weights`.
    """
    mask, pos = _prepare(advantages, mask, row)
    fig = go.Figure()
    for i, g in enumerate(gammas):
        w = prefix_weights(advantages.detach().to(torch.float64), mask, gamma=float(g), eps=eps)
        fig.add_trace(go.Scatter(x=pos, y=_row_values(w, row, pos), name=f"γ={g:g}", mode="lines+markers",
                                 line={"color": _GAMMA_COLORS[i % len(_GAMMA_COLORS)], "width": 2},
                                 hovertemplate=f"γ={g:g}: %{{y:.4f}}<extra></extra>"))
    _base_layout(fig, f"row {row}: prefix weight w for several γ (eps = {eps:g})")
    fig.update_yaxes(title_text="w", range=[0.95, 1.0 + max(gammas, default=0.0) + 0.05])
    return _no_tokens_note(fig, row) if not pos else fig


def alignment_diff_figure(rollout: Tensor, student: Tensor, mask: Tensor, row: int) -> go.Figure:
    """Rollout vs recomputed student log-prob (top) and their difference (bottom) for row ``row``.

    Args:
        rollout, student: float [B, L] log-probs of the sampled tokens (NaN where missing).
        mask: bool [B, L]; row: the row b.

    Traces: ``rollout``, ``student`` (top panel), ``rollout − student`` (bars, bottom panel).
    A healthy row has differences near 0 (rounding); an offset row has a large, position-dependent
    difference; a constant non-zero difference points to temperature or processed log-probs.
    """
    _check_2d("mask", mask)
    _check_2d("rollout", rollout, mask)
    _check_2d("student", student, mask)
    _check_row(row, mask.shape[0])
    pos = _valid_positions(mask.bool(), row)
    r = _row_values(rollout, row, pos)
    s = _row_values(student, row, pos)
    d = [None if a is None or b is None else _round(a - b) for a, b in zip(r, s)]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4])
    for name, ys in (("rollout", r), ("student", s)):
        fig.add_trace(go.Scatter(x=pos, y=ys, name=name, mode="lines+markers",
                                 line={"color": _COLORS[name], "width": 2},
                                 hovertemplate=f"{name}: %{{y:.4f}}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=pos, y=d, name="rollout − student", marker={"color": _COLORS["diff"]},
                         hovertemplate="rollout − student: %{y:.2e}<extra></extra>"), row=2, col=1)
    finite = [abs(v) for v in d if v is not None]
    gap = max(finite, default=float("nan"))
    _base_layout(fig, f"row {row}: rollout vs recomputed student log-prob (max |diff| = {gap:.3g})", xaxis_title="")
    fig.update_layout(height=HEIGHT + 120)
    fig.update_xaxes(title_text="position j (generated token)", row=2, col=1)
    fig.update_yaxes(title_text="log-prob", row=1, col=1)
    fig.update_yaxes(title_text="difference", row=2, col=1, zeroline=True)
    return _no_tokens_note(fig, row) if not pos else fig


def figure_html(fig: go.Figure, div_id: str) -> str:
    """HTML fragment of ``fig`` with a fixed div id and no plotly.js ``<script src>`` (the page loads it once).

    ``div_id`` must be a non-empty string without spaces or quotes; the same figure and id give the
    same bytes every time.
    """
    if not isinstance(div_id, str) or not div_id or any(c in div_id for c in " \t\n\"'<>"):
        raise ValueError(f"div_id must be a non-empty string without spaces, quotes or angle brackets, got {div_id!r}")
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)


__all__ = [
    "DECIMALS", "HEIGHT", "WIDTH", "advantage_weight_figure", "alignment_diff_figure",
    "cumulative_share_figure", "figure_html", "linear_reference", "logprob_figure",
    "weights_for_gammas_figure",
]
