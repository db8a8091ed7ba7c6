"""iwopd_kit.views.static: PNG copies of plotly figures and HTML views, drawn by headless Chromium."""

from __future__ import annotations

import base64
import io

import plotly.graph_objects as go
import plotly.io as pio
import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image

from iwopd_kit.views import static, token_strip


def _coloured(png: bytes) -> int:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return int((rgb.max(axis=-1) - rgb.min(axis=-1) > 40).sum())


@pytest.fixture
def strip():
    return token_strip([list("7+5=13"), list("3+4=7")],
                       {"advantage": [[0.0, 0.0, 0.0, 0.0, 0.1, -2.0], [0.0, 0.2, 0.0, 0.0, 1.5]]},
                       prompts=["7+5=", "3+4="], title="probe")


@pytest.fixture
def shell():
    return InteractiveShell.instance()


@pytest.fixture
def turned_on():
    was = static.enabled()
    static.enable(set_default=False)
    yield
    if not was:
        static.disable()


def test_outside_a_kernel_importing_the_kit_changes_nothing():
    assert not static.in_kernel()
    assert pio.renderers.default != static.RENDERER


def test_html_png_draws_the_strip_with_its_colours(strip):
    png = static.html_png(strip.to_html())
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width > 100 and img.height > 40
    assert _coloured(png) > 50, "the strip's coloured boxes are missing from the PNG"
    blank = token_strip([list("7+5=13")], {"advantage": [[0.0] * 6]}).to_html()
    assert _coloured(static.html_png(blank)) < _coloured(png)   # colour comes from the values


def test_html_png_refuses_scripts():
    with pytest.raises(ValueError, match="script"):
        static.html_png("<div>x</div><script>alert(1)</script>")


def test_figure_png_and_the_combined_renderer(turned_on):
    fig = go.Figure(go.Bar(x=[0, 1, 2], y=[3.0, -1.0, 2.0], marker_color="#b2182b"))
    fig.update_layout(width=400, height=300, template="plotly_white")
    png = static.figure_png(fig)
    img = Image.open(io.BytesIO(png))
    assert (img.width, img.height) == (400, 300)
    assert _coloured(png) > 1000
    bundle = pio.renderers._build_mime_bundle(fig.to_dict(), static.RENDERER)
    assert set(bundle) == {"application/vnd.plotly.v1+json", "image/png"}
    assert _coloured(base64.b64decode(bundle["image/png"])) > 1000


def test_a_strip_displays_html_then_its_png_copy(shell, strip, turned_on):
    with capture_output() as cap:
        shell.display_formatter.ipython_display_formatter(strip)
    assert len(cap.outputs) == 2
    html, copy = cap.outputs[0].data, cap.outputs[1].data
    assert 'class="iwv-pair"' in html["text/html"] and static.HIDE_COPY_CSS in html["text/html"]
    assert html["text/plain"] == strip.to_text()
    assert set(copy) == {"image/png", "text/plain"} and "token strip" in copy["text/plain"]
    assert _coloured(base64.b64decode(copy["image/png"])) > 50


def test_turned_off_a_strip_displays_its_html_only(shell, strip):
    was = static.enabled()
    static.disable()
    try:
        with capture_output() as cap:
            shell.display_formatter.ipython_display_formatter(strip)
    finally:
        if was:
            static.enable(set_default=False)
    assert len(cap.outputs) == 1
    assert cap.outputs[0].data == {"text/html": strip.to_html(), "text/plain": strip.to_text()}


def test_enable_without_chromium_is_a_clear_error(monkeypatch):
    import iwopd_kit.views.chromium as browser

    def missing():
        raise FileNotFoundError("Chromium not found: install Debian's package")

    monkeypatch.setattr(browser, "chromium_path", missing)
    assert static.available() == (False, "Chromium not found: install Debian's package")
    with pytest.raises(RuntimeError, match="headless Chromium: Chromium not found"):
        static.enable()
