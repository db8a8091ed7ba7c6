"""Static PNG copies of the views, for front ends that show no JavaScript and no CSS.

GitHub's notebook viewer, nbviewer and a sanitised ``nbconvert --to html`` drop plotly's JSON
(no plotly.js) and strip ``<style>`` and ``style=""`` from HTML outputs, so a stored notebook that
has only those shows no plot and uncoloured token strips. Inside a Jupyter kernel, importing the kit
turns on two things (:func:`enable`; off with ``IWOPD_STATIC_IMAGES=0`` or :func:`disable`):

* **plotly figures**: a plotly renderer ``iwopd_png`` is registered and the default renderer becomes
  ``plotly_mimetype+iwopd_png`` (:data:`RENDERER`), so each figure's output carries the plotly JSON
  (JupyterLab and VS Code draw it interactively) *and* an ``image/png`` of the same figure (what the
  static front ends show: they have no renderer for the JSON).
* **HTML views** (token strips, the alignment view): :func:`display_html_view` shows the HTML, then
  a PNG screenshot of it as a second output. Static front ends pick an output's HTML over its image,
  which is why the copy is an output of its own. The HTML's stylesheet hides the copy wherever
  stylesheets work (JupyterLab, Notebook 7, the classic notebook, an unsanitised nbconvert export),
  so there the reader sees the interactive view once.

Both images are drawn by Debian's headless Chromium (the one :mod:`iwopd_kit.views.chromium` finds)
through Playwright: figures by the plotly.js copy inside the plotly package (``Plotly.toImage``,
read from disk, no CDN), HTML views by an element screenshot; both stored with a 256-colour palette
(Pillow, which vLLM already depends on). One browser per process, started on first
use and kept on its own thread (Playwright's sync API cannot run on the kernel's event-loop thread).
``IWOPD_STATIC_LOG=path`` appends one JSON line per image (kind, seconds, bytes), to measure the
cost. Without Playwright or Chromium, importing the kit changes nothing (:func:`available` says
why; :func:`enable` raises). The PNG bytes can differ across Chromium versions; nbval does not compare ``image/png``
(``conftest.py``), and the text outputs beside them stay compared.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

#: The plotly renderer name registered by :func:`enable`, and the default renderer it sets.
PNG_RENDERER = "iwopd_png"
RENDERER = f"plotly_mimetype+{PNG_RENDERER}"
#: CSS width (px) of the page HTML views are drawn in; the screenshot is cut to the view's box.
VIEW_WIDTH = 960
#: Seconds one image may take before it is an error.
TIMEOUT_S = 120.0

#: Hides the PNG copy that follows an HTML view, in front ends whose stylesheets apply.
HIDE_COPY_CSS = (
    ".jp-OutputArea-child:has(.iwv-pair)+.jp-OutputArea-child:has(>.jp-RenderedImage){display:none}"
    ".output_area:has(.iwv-pair)+.output_area:has(>.output_png){display:none}"
)

_state: dict[str, Any] = {"enabled": False, "previous_default": None}
_lock = threading.Lock()


# ------------------------------------------------------------------------------------ the browser
class _Chromium:
    """Headless Chromium on one worker thread; every Playwright call runs there."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iwopd-chromium")
        self._pw = self._browser = self._plot_page = self._html_page = self._tmp = None

    def call(self, fn: Callable[[], Any], what: str) -> Any:
        start = time.perf_counter()
        out = self._pool.submit(fn).result(timeout=TIMEOUT_S)
        log = os.environ.get("IWOPD_STATIC_LOG")      # measuring the cost: one JSON line per image
        if log:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"what": what, "seconds": round(time.perf_counter() - start, 4),
                                     "bytes": len(out)}) + "\n")
        return out

    def _start(self) -> None:
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            from .chromium import launch

            self._pw = sync_playwright().start()
            self._browser = launch(self._pw)

    def _page(self, which: str):
        self._start()
        page = getattr(self, which)
        if page is None:
            page = self._browser.new_page(viewport={"width": VIEW_WIDTH, "height": 600}, device_scale_factor=1)
            if which == "_plot_page":    # plotly.js read from disk by Chromium (not sent over the pipe)
                self._tmp = tempfile.TemporaryDirectory(prefix="iwopd-plotly-")
                wrapper = Path(self._tmp.name) / "plot.html"
                wrapper.write_text("<!doctype html><html><head><meta charset='utf-8'>"
                                   f"<script src='{_plotly_js_path().as_uri()}'></script></head>"
                                   "<body style='margin:0;background:#fff'><div id='fig'></div></body></html>",
                                   encoding="utf-8")
                page.goto(wrapper.as_uri(), wait_until="load")
            setattr(self, which, page)
        return page

    def figure_png(self, fig_json: str) -> bytes:
        def job() -> bytes:
            page = self._page("_plot_page")
            url = page.evaluate(
                """async (spec) => {
                    const fig = JSON.parse(spec);
                    const gd = document.getElementById('fig');
                    Plotly.purge(gd);
                    const layout = fig.layout || {};
                    await Plotly.newPlot(gd, fig.data || [], layout, {staticPlot: true});
                    return await Plotly.toImage(gd, {format: 'png', width: layout.width || 700,
                                                     height: layout.height || 450});
                }""", fig_json)
            return _compact(base64.b64decode(url.split(",", 1)[1]))
        return self.call(job, "figure")

    def html_png(self, fragment: str) -> bytes:
        def job() -> bytes:
            page = self._page("_html_page")
            page.set_content("<!doctype html><html><head><meta charset='utf-8'></head>"
                             "<body style='margin:0;padding:6px;background:#fff;font:14px system-ui,sans-serif'>"
                             f"<div id='view' style='display:inline-block;max-width:{VIEW_WIDTH - 12}px'>"
                             f"{fragment}</div></body></html>")
            page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")  # no clicks
            return _compact(page.locator("#view").screenshot(animations="disabled"))
        return self.call(job, "html view")


_chromium: _Chromium | None = None


def _browser() -> _Chromium:
    global _chromium
    with _lock:
        if _chromium is None:
            _chromium = _Chromium()
        return _chromium


def _plotly_js_path() -> Path:
    """The plotly.js bundled in the plotly package (the version plotly.py's figures are made for)."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise FileNotFoundError(f"plotly.js not found at {path}; is the plotly package complete?")
    return path


def _compact(png: bytes) -> bytes:
    """The PNG with a 256-colour palette (no dithering): 3-5x smaller, same look for flat colours and text."""
    from PIL import Image

    out = io.BytesIO()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, format="PNG",
                                                                                          optimize=True)
    return out.getvalue()


# ------------------------------------------------------------------------------------ public API
def available() -> tuple[bool, str]:
    """``(True, "")`` when Playwright and Chromium are there, else ``(False, why)``."""
    if importlib.util.find_spec("playwright") is None:
        return False, "playwright is not installed (pip install playwright; the dev extra has it)"
    try:
        from .chromium import chromium_path

        chromium_path()
    except FileNotFoundError as e:
        return False, str(e)
    return True, ""


def enabled() -> bool:
    """Whether HTML views and plotly figures get their PNG copies."""
    return bool(_state["enabled"])


def figure_png(fig: Any) -> bytes:
    """PNG bytes of a plotly figure (a ``Figure`` or its dict), drawn at its layout's width and height."""
    from plotly.io.json import to_json_plotly

    spec = fig.to_plotly_json() if hasattr(fig, "to_plotly_json") else fig
    return _browser().figure_png(to_json_plotly(spec))


def html_png(fragment: str) -> bytes:
    """PNG bytes of an HTML fragment (inline CSS only, no scripts) as headless Chromium draws it."""
    if "<script" in fragment.lower():
        raise ValueError("html_png draws static HTML: the fragment has a <script>")
    return _browser().html_png(fragment)


def _register_plotly_renderer() -> bool:
    """Register ``iwopd_png`` with plotly.io; False when plotly is not installed."""
    if importlib.util.find_spec("plotly") is None:
        return False
    import plotly.io as pio
    from plotly.io._base_renderers import MimetypeRenderer

    class StaticPngRenderer(MimetypeRenderer):
        """``image/png`` of the figure, drawn by plotly.js in headless Chromium."""

        def to_mimebundle(self, fig_dict):
            return {"image/png": base64.b64encode(figure_png(fig_dict)).decode("ascii")}

    pio.renderers[PNG_RENDERER] = StaticPngRenderer()
    return True


def enable(set_default: bool = True) -> None:
    """Turn the PNG copies on (raises when :func:`available` says no).

    ``set_default``: make :data:`RENDERER` plotly's default renderer when the default is the plain
    ``plotly_mimetype`` plotly picks in a kernel (another default the user chose is left alone).
    """
    ok, why = available()
    if not ok:
        raise RuntimeError(f"static images need headless Chromium: {why}")
    if _register_plotly_renderer() and set_default:
        import plotly.io as pio

        if pio.renderers.default in ("plotly_mimetype", "jupyterlab", "vscode", "nteract"):
            _state["previous_default"] = pio.renderers.default
            pio.renderers.default = RENDERER
    _state["enabled"] = True


def disable() -> None:
    """Turn the PNG copies off; plotly's default renderer goes back to what :func:`enable` replaced."""
    _state["enabled"] = False
    if _state["previous_default"] is not None and "plotly.io" in sys.modules:
        import plotly.io as pio

        if pio.renderers.default == RENDERER:
            pio.renderers.default = _state["previous_default"]
        _state["previous_default"] = None


def in_kernel() -> bool:
    """True inside a Jupyter kernel (an ipykernel shell), where outputs get stored in a notebook."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and type(shell).__module__.startswith("ipykernel.")


def auto_enable() -> None:
    """:func:`enable` inside a Jupyter kernel when Chromium is there and ``IWOPD_STATIC_IMAGES`` is not ``0``."""
    if os.environ.get("IWOPD_STATIC_IMAGES", "1") == "0" or not in_kernel() or not available()[0]:
        return
    enable()


def display_html_view(fragment: str, text: str, label: str = "view") -> None:
    """Show an HTML view in a notebook: the HTML (and its text), then, when enabled, its PNG copy.

    ``fragment``: the view's self-contained HTML; ``text``: its plain-text form (what terminals and
    text-only front ends show); ``label``: names the copy in its ``text/plain``.
    """
    from IPython.display import display

    if not enabled():
        display({"text/html": fragment, "text/plain": text}, raw=True)
        return
    paired = f'<div class="iwv-pair">{fragment}<style>{HIDE_COPY_CSS}</style></div>'
    display({"text/html": paired, "text/plain": text}, raw=True)
    png = base64.b64encode(html_png(fragment)).decode("ascii")
    display({"image/png": png, "text/plain": f"[static copy of the {label} above, as PNG]"}, raw=True)


__all__ = [
    "HIDE_COPY_CSS", "PNG_RENDERER", "RENDERER", "auto_enable", "available", "disable", "display_html_view",
    "enable", "enabled", "figure_png", "html_png", "in_kernel",
]
