"""The documentation site (``mkdocs.yml``, ``make docs``), built into a temporary folder and read offline.

The site is built with ``mkdocs build --strict`` and opened from ``file://`` in headless Chromium with
every request that is not a ``file:`` URL refused (and the test fails if one was attempted): no CDN,
no web font, no analytics. Then every page loads; every notebook page shows its stored figures (the
PNG copies of the plotly figures) and its token views, and typesets its math with the site's own
MathJax; search answers from the local files; and every relative link of every page resolves: the
file exists, and so does the ``#anchor`` in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest
from playwright.sync_api import sync_playwright

from iwopd_kit.views.chromium import launch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
VIEW_SELECTOR = ".iwv, .iwopd-align"
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"site built in {time.monotonic() - start:.1f} s")
    return out


@pytest.fixture(scope="module")
def browser_page():
    refused: list[str] = []

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context()
        context.route("**/*", route)
        page = context.new_page()
        yield page, refused
        browser.close()
    assert refused == [], f"the site asked the network for: {sorted(set(refused))}"


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("id", "name") and v:
                self.ids.add(v)


_IDS: dict[Path, set[str]] = {}


def _ids(path: Path) -> set[str]:
    if path not in _IDS:
        parser = _Ids()
        parser.feed(path.read_text(encoding="utf-8"))
        _IDS[path] = parser.ids
    return _IDS[path]


def _png_outputs(nb: Path) -> list[str]:
    """Per stored image/png output, in order: "figure" (a plotly figure's copy) or "copy" (a view's)."""
    kinds = []
    for cell in json.loads(nb.read_text())["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                kinds.append("figure" if "application/vnd.plotly.v1+json" in data else "copy")
    return kinds


def test_the_site_builds_with_a_page_per_doc_and_notebook(site):
    for md in (ROOT / "docs").glob("*.md"):
        assert (site / md.with_suffix(".html").name).is_file(), f"docs/{md.name} has no page"
    for nb in NOTEBOOKS:
        assert (site / "notebooks" / nb.with_suffix(".html").name).is_file(), f"{nb.name} has no page"
    assert (site / "CONTRIBUTING.html").is_file() and (site / "search" / "search_index.js").is_file()
    assert not list(site.rglob("*.ipynb")), "the notebooks are rendered, not copied"


def test_every_page_loads_offline_and_every_relative_link_resolves(site, browser_page):
    page, refused = browser_page
    pages = sorted(p for p in site.rglob("*.html") if "assets" not in p.relative_to(site).parts)
    assert len(pages) >= 20
    checked, broken = 0, []
    for path in pages:
        if path.name == "404.html":                        # served by a web server: absolute links by design
            continue
        url = path.as_uri()
        page.goto(url, wait_until="load")
        assert page.locator("article").count() >= 1 or path.name == "404.html", f"{path.name}: no article"
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        for href in hrefs:
            if urlparse(href).scheme or href.startswith("//"):
                continue                                   # an external link is a link, not a request
            target, anchor = urldefrag(urljoin(url, href))
            file = Path(unquote(urlparse(target).path))
            if not file.is_file():
                broken.append(f"{path.relative_to(site)}: {href} (no file)")
            elif anchor and file.suffix == ".html" and unquote(anchor) not in _ids(file):
                broken.append(f"{path.relative_to(site).as_posix()}: {href} (no #{anchor})")
            checked += 1
    assert broken == [], "broken links:\n" + "\n".join(broken)
    assert checked > 500
    assert refused == []


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_page_shows_its_figures_views_and_math(site, browser_page, nb):
    page, refused = browser_page
    page.goto((site / "notebooks" / nb.with_suffix(".html").name).as_uri(), wait_until="load")
    kinds = _png_outputs(nb)
    imgs = page.locator('.jupyter-wrapper img[src^="data:image/png"]')
    assert imgs.count() == len(kinds), f"{nb.name}: {imgs.count()} stored images on the page, {len(kinds)} in the notebook"
    for i, kind in enumerate(kinds):
        img = imgs.nth(i)
        assert img.evaluate("e => e.complete && e.naturalWidth > 0"), f"{nb.name}: image {i} did not decode"
        if kind == "figure":
            box = img.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, f"{nb.name}: figure {i} not shown ({box})"
    views = page.locator(VIEW_SELECTOR)
    n_views = sum(json.dumps(c.get("outputs", [])).count(m) for c in json.loads(nb.read_text())["cells"]
                  for m in ('class=\\"iwv\\"', "class='iwopd-align'"))
    assert views.count() >= n_views
    for i in range(views.count()):
        box = views.nth(i).bounding_box()
        assert box and box["width"] > 50 and box["height"] > 10, f"{nb.name}: token view {i} not shown"
    if "$" in "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown"):
        page.wait_for_function("() => window.MathJax && MathJax.Hub && document.querySelectorAll('.MathJax_CHTML, .MathJax').length > 0",
                               timeout=30_000)
    assert refused == []


def test_search_answers_from_the_local_files(site, browser_page):
    page, refused = browser_page
    page.goto((site / "index.html").as_uri(), wait_until="load")
    box = page.locator("input[data-md-component='search-query']")
    box.click()
    box.press_sequentially("prefix weights", delay=30)     # typed: the search listens to keys
    page.wait_for_selector(".md-search-result__item", timeout=30_000)
    assert page.locator(".md-search-result__item").count() >= 1
    assert refused == []
