"""The stored notebooks read the way GitHub and nbviewer show them: no JavaScript, no output CSS.

Each notebook is exported with nbconvert's HTML exporter with ``sanitize_html=True`` (outputs' HTML
is cleaned: no ``<script>``, no ``<style>``, no ``style=""``), opened in headless Chromium with
JavaScript off and every non-file request refused, and every code cell whose stored outputs show a
plotly figure or a coloured HTML view (a token strip, the alignment view) must display an image
with visible colour in its box. Cell screenshots go to ``artifacts/static_render/`` (git-ignored).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from nbconvert import HTMLExporter
from nbformat import reads
from PIL import Image
from playwright.sync_api import sync_playwright

from iwopd_kit.views.chromium import launch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHOTS = ROOT / "artifacts" / "static_render"
#: A pixel is coloured when its channels spread by more than this (greys and black text do not).
CHROMA = 40
#: Coloured pixels an image needs in its box to count as showing colour.
MIN_COLOURED = 200
VIEW_MARKERS = ('class="iwv"', "class='iwopd-align'")


def shows_visual(cell) -> str | None:
    """What the cell's stored outputs show that needs colour: ``"figure"``, ``"token view"`` or None."""
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        if "application/vnd.plotly.v1+json" in data:
            return "figure"
        html = data.get("text/html", "")
        html = "".join(html) if isinstance(html, list) else html
        if any(m in html for m in VIEW_MARKERS):
            return "token view"
    return None


def sanitized_html(nb_text: str) -> str:
    exporter = HTMLExporter()
    exporter.sanitize_html = True
    body, _ = exporter.from_notebook_node(reads(nb_text, as_version=4))
    return body


def coloured_pixels(png: bytes) -> int:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return int((rgb.max(axis=-1) - rgb.min(axis=-1) > CHROMA).sum())


@pytest.fixture(scope="module")
def page():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(java_script_enabled=False, viewport={"width": 1100, "height": 900})
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                      else route.abort())
        pg = context.new_page()
        yield pg
        context.close()
        browser.close()


def render_cells(page, nb_text: str, out_html: Path, shot_prefix: str | None = None) -> dict[str, dict]:
    """Export, open and measure: ``{cell id: {"what", "images", "coloured"}}`` for each cell that needs colour."""
    nb = json.loads(nb_text)
    out_html.write_text(sanitized_html(nb_text))
    page.goto(out_html.as_uri(), wait_until="load")
    found = {}
    for i, cell in enumerate(nb["cells"]):
        what = shows_visual(cell)
        if cell["cell_type"] != "code" or what is None:
            continue
        box = page.locator(f'[id="cell-id={cell["id"]}"]')
        assert box.count() == 1, f"cell {i} ({cell['id']}) not found in the export"
        imgs = box.locator(".jp-OutputArea-output img")
        coloured = []
        for k in range(imgs.count()):
            img = imgs.nth(k)
            img.scroll_into_view_if_needed()
            if img.evaluate("e => e.complete && e.naturalWidth > 0") and img.bounding_box():
                coloured.append(coloured_pixels(img.screenshot()))
        if shot_prefix is not None:
            box.screenshot(path=str(SHOTS / f"{shot_prefix}_cell{i:02d}.png"))
        found[cell["id"]] = {"index": i, "what": what, "images": imgs.count(), "coloured": coloured}
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_and_token_view_shows_a_coloured_image(page, path, tmp_path):
    found = render_cells(page, path.read_text(), tmp_path / f"{path.stem}.html", shot_prefix=path.stem)
    bad = [f"cell {v['index']} ({v['what']}): {v['images']} image(s), coloured pixels {v['coloured']}"
           for v in found.values() if not any(c >= MIN_COLOURED for c in v["coloured"])]
    assert not bad, f"{path.name}: cells without a coloured image in the sanitised export:\n" + "\n".join(bad)


def test_the_notebooks_do_have_figures_and_token_views():
    kinds = [shows_visual(c) for p in NOTEBOOKS for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code"]
    assert kinds.count("figure") >= 10 and kinds.count("token view") >= 6, kinds


def test_the_check_fails_on_an_html_only_strip(page, tmp_path):
    """The same check on a strip stored without its PNG copy (what plain ``_repr_html_`` stores): no image."""
    from iwopd_kit.views import token_strip

    strip = token_strip([list("7+5=12")], {"advantage": [[0.0, -1.0, 0.5, -2.0, 1.0, 2.0]]})
    cell = {"cell_type": "code", "id": "htmlonly", "execution_count": 1, "metadata": {}, "source": "strip",
            "outputs": [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                         "data": {"text/html": strip.to_html(), "text/plain": strip.to_text()}}]}
    nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    found = render_cells(page, json.dumps(nb), tmp_path / "html_only.html")
    assert found["htmlonly"]["images"] == 0 and found["htmlonly"]["coloured"] == []


def test_the_check_report_renders_offline_without_scripts(page, tmp_path):
    """``iwopd-kit check --html``: self-contained (no script, no URL), coloured with JavaScript off and no network."""
    from iwopd_kit import toy
    from iwopd_kit.cli import main

    out = tmp_path / "report.html"
    rc = main(["check", str(toy.FIXTURES_DIR / "offset.jsonl"), "--student", str(toy.STUDENT_DIR),
               "--teacher", str(toy.TEACHER_DIR), "--html", str(out)])
    assert rc == 1                                     # the fixture's offset rows are errors
    html = out.read_text()
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    page.goto(out.as_uri(), wait_until="load")
    spans = page.locator("span[title]")
    assert spans.count() > 0
    shot = page.screenshot(full_page=True)
    (SHOTS / "check_report_offline.png").write_bytes(shot)
    assert coloured_pixels(shot) >= MIN_COLOURED, "the check report shows no colour offline"


def test_the_run_report_and_its_step_pages_render_offline(page, tmp_path):
    """``iwopd-kit scan``'s ``report.html`` and a per-step page: opened in headless Chromium with JavaScript off
    and every non-file request refused, no request beyond the pages themselves, the timeline's charts drawn in
    colour, a link to a step page resolving to a page with its token strips."""
    from run_fixtures import write_primerl_run

    from iwopd_kit.run import scan_run

    result = scan_run(write_primerl_run(tmp_path / "run", steps=range(1, 6), n_rows=4), workers=1, progress=False)
    report = result.store / "report.html"
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.as_uri(), wait_until="load")
    assert page.locator("svg").count() >= 3
    shot = page.screenshot(full_page=True)
    (SHOTS / "run_report_offline.png").write_bytes(shot)
    assert coloured_pixels(shot) >= MIN_COLOURED, "the run report shows no colour offline"
    links = [a.get_attribute("href") for a in page.locator("a[href^='steps/']").all()]
    assert links == [f"steps/step_{s}.html" for s in result.bad_steps] and links
    page.goto((result.store / links[-1]).as_uri(), wait_until="load")     # step 5: offset rows, one strip each
    assert page.locator("span[title]").count() > 0
    assert requests == [report.as_uri(), (result.store / links[-1]).as_uri()], requests
