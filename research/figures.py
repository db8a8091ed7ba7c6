"""Plotly figures of the position-bias study (over the run dicts of :mod:`research.study`).

Same conventions as :mod:`iwopd_kit.views.plots`: plain ``go.Figure`` objects, fixed size, data as
rounded Python lists, no random parts, so the same results give the same JSON.
"""

from __future__ import annotations

import plotly.graph_objects as go

from research.study import LABELS, Run, mean_curve
from iwopd_kit.views.plots import HEIGHT, WIDTH, _base_layout, _round

#: One colour per objective (the paper's four first).
COLORS: dict[str, str] = {"opd": "#1b9e77", "iw_opd": "#d95f02", "prefix30": "#7570b3", "suffix30": "#e7298a",
                          "jsd": "#386cb0", "iw_opd_signed": "#a6761d"}
METRIC_TITLES: dict[str, str] = {"greedy_acc": "held-out exact match, greedy",
                                 "sampled_acc": "held-out exact match, T=1",
                                 "reverse_kl_per_token": "teacher-student reverse KL per token (held-out T=1 rollouts)"}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def study_curves_figure(runs: dict[str, list[Run]], metric: str = "greedy_acc", title: str | None = None) -> go.Figure:
    """Mean over seeds of one evaluation metric against training step, one line per objective,
    with a band of +- one standard deviation where there are several seeds."""
    fig = go.Figure()
    for objective, rs in runs.items():
        steps, mean, sd = mean_curve(rs, metric)
        color = COLORS.get(objective, "#666666")
        label = f"{LABELS.get(objective, objective)} ({len(rs)} seed{'s' if len(rs) > 1 else ''})"
        if len(rs) > 1:
            fig.add_trace(go.Scatter(
                x=steps + steps[::-1], y=[_round(m + s) for m, s in zip(mean, sd)]
                + [_round(m - s) for m, s in zip(mean[::-1], sd[::-1])],
                fill="toself", fillcolor=_rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
                showlegend=False, name=f"{objective} sd"))
        fig.add_trace(go.Scatter(x=steps, y=[_round(v) for v in mean], mode="lines+markers", name=label,
                                 line={"color": color, "width": 2}, marker={"size": 5}))
    _base_layout(fig, title or METRIC_TITLES.get(metric, metric), xaxis_title="training step")
    # the legend goes under the plot: with six objectives it would cover the title above it
    fig.update_layout(hovermode="closest", width=WIDTH, height=HEIGHT + 60, margin={"b": 110},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0.0})
    return fig


def position_profile_figure(profiles: dict[str, list[float]], title: str | None = None) -> go.Figure:
    """Mean |A| per normalised-position bin, one line per entry of ``profiles`` (e.g. per task)."""
    fig = go.Figure()
    palette = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")
    for i, (name, values) in enumerate(profiles.items()):
        n = len(values)
        x = [_round((k + 0.5) / n) for k in range(n)]
        fig.add_trace(go.Scatter(x=x, y=[_round(v) for v in values], mode="lines+markers", name=name,
                                 line={"color": palette[i % len(palette)], "width": 2}))
    _base_layout(fig, title or "mean |A| by normalised position j / L (step 0, held-out T=1 rollouts)",
                 xaxis_title="normalised position j / L (bin centre)")
    fig.update_yaxes(title_text="mean |A| (nats)", rangemode="tozero")
    fig.update_layout(hovermode="closest")
    return fig


def compression_figure(points: dict[str, list[tuple[float, float, float, float]]], title: str | None = None) -> go.Figure:
    """IW-OPD minus OPD against the compression ratio (teacher / student parameters, log axis), one
    line per entry of ``points`` (e.g. per task and step): ``[(ratio, mean, ci_low, ci_high), ...]``."""
    fig = go.Figure()
    palette = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")
    for i, (name, pts) in enumerate(points.items()):
        pts = sorted(pts)
        fig.add_trace(go.Scatter(
            x=[_round(p[0]) for p in pts], y=[_round(p[1]) for p in pts], mode="lines+markers", name=name,
            line={"color": palette[i % len(palette)], "width": 2},
            error_y={"type": "data", "symmetric": False, "array": [_round(p[3] - p[1]) for p in pts],
                     "arrayminus": [_round(p[1] - p[2]) for p in pts]}))
    _base_layout(fig, title or "IW-OPD minus OPD, greedy exact match (mean over seeds, 95% CI)",
                 xaxis_title="compression: teacher / student parameters")
    fig.update_xaxes(type="log")
    fig.update_yaxes(title_text="IW-OPD - OPD", zeroline=True)
    fig.update_layout(hovermode="closest")
    return fig


__all__ = ["COLORS", "METRIC_TITLES", "compression_figure", "position_profile_figure", "study_curves_figure"]
