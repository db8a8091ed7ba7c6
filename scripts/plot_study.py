"""Render the study's figures to PNG under ``docs/results/`` (committed, viewable without a kernel).

The figures are the plotly figures of :mod:`research.figures`; they are drawn by plotly.js
(the copy inside the plotly package, inlined: no CDN) in Debian's headless Chromium driven by
Playwright, and screenshotted.

    .venv/bin/python scripts/plot_study.py            # every task with results
"""

from __future__ import annotations

from pathlib import Path

import plotly.io as pio

ROOT = Path(__file__).resolve().parents[1]

from research import study  # noqa: E402
from research import study_stats  # noqa: E402
from iwopd_kit.views.chromium import launch  # noqa: E402
from research.figures import compression_figure, position_profile_figure, study_curves_figure  # noqa: E402


def figures() -> dict[Path, object]:
    out: dict[Path, object] = {}
    profiles = {}
    for task_dir in sorted(p for p in study.RESULTS_DIR.iterdir() if p.is_dir()):
        task = task_dir.name
        runs = study.load_runs(task)
        if not runs:
            continue
        for metric in ("greedy_acc", "reverse_kl_per_token"):
            fig = study_curves_figure(runs, metric)
            fig.update_layout(title_text=f"task {task}: {fig.layout.title.text}", title_x=0.01)
            out[task_dir / f"{metric}.png"] = fig
        four = {k: v for k, v in runs.items() if k in ("opd", "iw_opd", "prefix30", "suffix30")}
        profiles[f"task {task}"] = study.position_profile([r for rs in four.values() for r in rs])
    if profiles:
        out[study.RESULTS_DIR / "abs_adv_by_position.png"] = position_profile_figure(profiles)
    out.update(when_figures())
    return out


def when_figures() -> dict[Path, object]:
    """The early-step curves (bundled students) and IW - OPD against compression (docs/results/when/)."""
    out: dict[Path, object] = {}
    points = {}
    for task in ("main", "answer_first"):
        runs = study_stats.when_runs(task, "200k")
        if {"opd", "iw_opd"} <= set(runs):
            fig = study_curves_figure(runs, "greedy_acc")
            fig.update_layout(title_text=f"task {task}, early-step protocol: {fig.layout.title.text}", title_x=0.01)
            out[study_stats.WHEN_DIR / task / "greedy_acc_200k.png"] = fig
        for step, name in ((10, "step 10"), (None, "end")):
            pts = study_stats.compression_points(task, step)
            if len(pts) > 1:
                points[f"{task}, {name}"] = pts
    if points:
        out[study_stats.WHEN_DIR / "compression.png"] = compression_figure(points)
    return out


def main() -> None:
    from playwright.sync_api import sync_playwright

    js = (Path(pio.__file__).resolve().parent.parent / "package_data" / "plotly.min.js").read_text()
    with sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 960, "height": 480}, device_scale_factor=1)
        for path, fig in figures().items():
            html = (f"<html><head><script>{js}</script></head><body style='margin:0'>"
                    f"{fig.to_html(full_html=False, include_plotlyjs=False, div_id='fig')}</body></html>")
            page.set_content(html, wait_until="load")
            page.wait_for_selector("#fig .main-svg")
            page.locator("#fig").screenshot(path=str(path))
            print(path.relative_to(ROOT))
        browser.close()


if __name__ == "__main__":
    main()
