"""Tests for the per-token views (iwopd_kit.views)."""

from __future__ import annotations

import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from iwopd_kit.views import DEFAULT_BOUNDS, ColorScale, html_page, html_table, text_table, token_strip
from iwopd_kit.views.tokens import NEGATIVE_RAMP, POSITIVE_RAMP, SEQUENTIAL_RAMP, is_dark

REPO = Path(__file__).resolve().parents[1]
WHITE = "#ffffff"


class _Spans(HTMLParser):
    """Collects token spans (class contains ``k``) as dicts: cls, style, title, text."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict] = []
        self._depth = 0  # >0 while inside a token span

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and "k" in (a.get("class") or "").split() and self._depth == 0:
            if "title" not in a:  # the legend's "missing" swatch
                return
            self.spans.append({"cls": a["class"], "style": a.get("style"), "title": a["title"], "text": ""})
            self._depth = 1
        elif self._depth and tag == "span":
            self._depth += 1

    def handle_endtag(self, tag):
        if self._depth and tag == "span":
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.spans[-1]["text"] += data


def spans(html_text: str) -> list[dict]:
    p = _Spans()
    p.feed(html_text)
    return p.spans


def bg(span: dict) -> str | None:
    style = span["style"]
    if style is None:
        return None
    assert style.startswith("background-color:")
    return style.split(":", 1)[1]


def small():
    tokens = [["7", "+", "5", "=", "12"], [" a", "\n"]]
    series = {
        "rollout": [[-0.5, -1.25, None, -0.001, -6.0], [-0.2, float("nan")]],
        "teacher": [[-0.25, -1.0, -0.75, -0.0001, -2.0], [-0.1, -3.0]],
        "advantage": [[0.25, 0.25, None, 0.0009, 4.0], [0.1, float("nan")]],
    }
    ids = [[22, 10, 20, 28, 717], [264, 198]]
    return tokens, series, ids


# ----------------------------------------------------------------- determinism


def test_html_deterministic_and_self_contained():
    tokens, series, ids = small()
    a = token_strip(tokens, series, token_ids=ids, prompts=["7+5+12=", "q"], title="t").to_html()
    b = token_strip(tokens, series, token_ids=ids, prompts=["7+5+12=", "q"], title="t").to_html()
    assert a == b
    page = token_strip(tokens, series, title="t").to_html(full_page=True)
    for text in (a, page):
        assert "<script" not in text.lower()
        assert "http" not in text.lower()
        assert "uuid" not in text.lower()
    assert page.startswith("<!doctype html>")


@pytest.mark.slow                   # fresh Python processes
def test_html_identical_across_processes():
    code = (
        "import sys\n"
        "from iwopd_kit.views import token_strip\n"
        "t = [['7', '+', ' 5', '\\n']]\n"
        "s = {'rollout': [[-0.5, None, -1.25, -6.0]], 'advantage': [[0.3, float('nan'), -1.0, 3.0]]}\n"
        "sys.stdout.write(token_strip(t, s, token_ids=[[1, 2, 3, 4]]).to_html(full_page=True))\n"
    )
    outs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, cwd=REPO,
                       env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}).stdout
        for seed in ("1", "2")
    ]
    assert outs[0] == outs[1]
    here = token_strip([["7", "+", " 5", "\n"]],
                       {"rollout": [[-0.5, None, -1.25, -6.0]], "advantage": [[0.3, float("nan"), -1.0, 3.0]]},
                       token_ids=[[1, 2, 3, 4]]).to_html(full_page=True)
    assert outs[0].decode() == here


# ----------------------------------------------------------------- content


def test_every_token_has_tooltip_with_all_values():
    tokens, series, ids = small()
    found = spans(token_strip(tokens, series, token_ids=ids).to_html())
    assert len(found) == 7
    flat = [(b, j) for b, row in enumerate(tokens) for j in range(len(row))]
    for (b, j), span in zip(flat, found):
        lines = span["title"].split("\n")
        assert lines[0] == f"j={j} id={ids[b][j]}"
        for name in ("rollout", "teacher", "advantage"):
            v = series[name][b][j]
            want = "—" if v is None or math.isnan(v) else f"{v:.3f}".replace("-0.000", "0.000")
            assert f"{name}={want}" in lines
    assert [s["text"] for s in found] == ["7", "+", "5", "=", "12", "·a", "⏎"]


def test_zero_maps_to_white_for_every_known_series():
    for name, (lo, hi) in DEFAULT_BOUNDS.items():
        neutral = {"weight": 1.0, "gap": 0.0}.get(name, 0.0)
        strip = token_strip([["x"]], {name: [[neutral]]}, color_by=name)
        assert bg(spans(strip.to_html())[0]) == WHITE, name


def test_bounds_map_to_endpoint_colours():
    strip = token_strip([["a", "b"]], {"advantage": [[-2.0, 2.0]]})
    lo, hi = spans(strip.to_html())
    assert bg(lo) == NEGATIVE_RAMP[-1] and bg(hi) == POSITIVE_RAMP[-1]
    strip = token_strip([["a", "b"]], {"teacher": [[-5.0, 0.0]]}, color_by="teacher")
    dark, light = spans(strip.to_html())
    assert bg(dark) == SEQUENTIAL_RAMP[-1] and bg(light) == WHITE
    strip = token_strip([["a", "b"]], {"gap": [[0.0, 0.5]]}, color_by="gap")
    assert [bg(s) for s in spans(strip.to_html())] == [WHITE, SEQUENTIAL_RAMP[-1]]
    strip = token_strip([["a", "b"]], {"advantage": [[-0.5, 0.5]]}, bounds=(-0.5, 0.5))
    assert [bg(s) for s in spans(strip.to_html())] == [NEGATIVE_RAMP[-1], POSITIVE_RAMP[-1]]


def test_values_beyond_bounds_clip_colour_only():
    strip = token_strip([["a", "b"]], {"advantage": [[-7.25, 9.5]]})
    lo, hi = spans(strip.to_html())
    assert bg(lo) == NEGATIVE_RAMP[-1] and bg(hi) == POSITIVE_RAMP[-1]
    assert "advantage=-7.250" in lo["title"] and "advantage=9.500" in hi["title"]
    assert "-7.250" in strip.to_text() and "9.500" in strip.to_text()


def test_dark_backgrounds_get_white_text():
    strip = token_strip([["a", "b", "c"]], {"advantage": [[-2.0, 0.0, 2.0]]})
    a, b, c = spans(strip.to_html())
    assert "w" in a["cls"].split() and "w" in c["cls"].split()
    assert "w" not in b["cls"].split()
    assert is_dark("#000000") and not is_dark(WHITE)


def test_scale_is_monotone_and_midpoints_are_between():
    s = ColorScale(-2.0, 2.0)
    assert s.color(0.0) == WHITE
    assert s.color(-2.0) == NEGATIVE_RAMP[-1] and s.color(2.0) == POSITIVE_RAMP[-1]
    assert s.color(1.0) == POSITIVE_RAMP[2] and s.color(-1.0) == NEGATIVE_RAMP[2]
    assert s.color(None) is None and s.color(float("nan")) is None
    # bounds that do not straddle 0: white at the bound nearest 0
    assert ColorScale(1.0, 3.0).color(1.0) == WHITE
    with pytest.raises(ValueError):
        ColorScale(1.0, 1.0)


def test_whitespace_visible():
    strip = token_strip([[" a", "\n", "\t", "", "x y"]], {"advantage": [[0, 0, 0, 0, 0]]})
    html_text = strip.to_html()
    assert [s["text"] for s in spans(html_text)] == ["·a", "⏎", "→", "∅", "x·y"]
    assert "<i>⏎</i></span><br>" in html_text
    assert [line.split()[2] for line in strip.to_text().splitlines()[2:]] == ["·a", "⏎", "→", "∅", "x·y"]


def test_missing_values_dash_and_uncoloured():
    tokens, series, _ = small()
    found = spans(token_strip(tokens, series).to_html())
    five = found[2]  # advantage None
    assert five["style"] is None and "m" in five["cls"].split()
    assert "advantage=—" in five["title"] and "rollout=—" in five["title"]
    nl = found[6]  # advantage NaN
    assert nl["style"] is None and "advantage=—" in nl["title"]


def test_html_escapes_tokens_and_prompts():
    strip = token_strip([["<b>", "&", '"']], {"advantage": [[0, 0, 0]]}, prompts=["<i>p</i>"], title="<t>")
    html_text = strip.to_html()
    assert "&lt;b&gt;" in html_text and "<b>" not in html_text.split("</style>", 1)[1].replace(
        "<b>advantage</b>", "")
    assert "&lt;i&gt;p&lt;/i&gt;" in html_text and "&lt;t&gt;" in html_text
    assert "<details><summary>prompt</summary><pre>&lt;i&gt;p&lt;/i&gt;</pre></details>" in html_text


# ----------------------------------------------------------------- validation


def test_mismatched_lengths_name_series_row_and_lengths():
    with pytest.raises(ValueError) as e:
        token_strip([["a", "b"], ["c", "d", "e"]], {"advantage": [[0, 0], [0, 0]], "teacher": [[0, 0], [0, 0, 0]]})
    msg = str(e.value)
    assert "'advantage'" in msg and "row 1" in msg and "2" in msg and "3" in msg
    with pytest.raises(ValueError, match=r"'teacher' row 0: padded width 1 .* 2 tokens"):
        token_strip([["a", "b"]], {"teacher": np.zeros((1, 1))}, color_by="teacher")
    with pytest.raises(ValueError, match="rows"):
        token_strip([["a"]], {"advantage": [[0], [0]]})
    with pytest.raises(ValueError, match=r"token_ids row 0 has 1 values but the row has 2 tokens"):
        token_strip([["a", "b"]], {"advantage": [[0, 0]]}, token_ids=[[1]])


def test_unknown_color_by_lists_series():
    with pytest.raises(ValueError, match=r"color_by='weight'.*rollout, advantage"):
        token_strip([["a"]], {"advantage": [[0]], "rollout": [[0]]}, color_by="weight")


def test_bad_arguments():
    with pytest.raises(ValueError):
        token_strip([["a"]], {"advantage": [[0]]}, rows=[1])
    with pytest.raises(ValueError):
        token_strip([["a"]], {"advantage": [[0]]}, window=(3, 1))
    with pytest.raises(ValueError):
        token_strip([["a"]], {"advantage": [[0]]}, prompts=["p", "q"])
    with pytest.raises(TypeError):
        token_strip(["ab"], {"advantage": [[0]]})
    with pytest.raises(TypeError):
        token_strip([["a"]], {"advantage": [["x"]]})


# ----------------------------------------------------------------- selection and inputs


def test_window_selects_positions():
    tokens = [[f"t{j}" for j in range(10)], ["u0", "u1"]]
    adv = [[float(j) / 10 for j in range(10)], [0.0, 0.0]]
    strip = token_strip(tokens, {"advantage": adv}, window=(3, 6))
    found = spans(strip.to_html())
    assert [s["text"] for s in found] == ["t3", "t4", "t5"]
    assert [s["title"].split("\n")[0] for s in found] == ["j=3", "j=4", "j=5"]
    assert [line.split()[1] for line in strip.to_text().splitlines()[2:]] == ["3", "4", "5"]
    assert strip.n_shown == 3
    assert "no positions in window" in strip.to_html()
    strip = token_strip(tokens, {"advantage": adv}, window=(8, None), rows=[0])
    assert [s["text"] for s in spans(strip.to_html())] == ["t8", "t9"]


def test_rows_subset_in_given_order():
    tokens = [["a"], ["b"], ["c"]]
    strip = token_strip(tokens, {"advantage": [[0], [0], [0]]}, rows=[2, 0])
    assert [s["text"] for s in spans(strip.to_html())] == ["c", "a"]
    assert [line.split()[0] for line in strip.to_text().splitlines()[2:]] == ["2", "0"]


def test_padded_numpy_and_torch_are_cut_per_row():
    tokens = [["a", "b", "c"], ["d"]]
    pad = np.array([[0.5, -0.5, 2.0], [1.0, 99.0, 99.0]])
    ids = torch.tensor([[1, 2, 3], [4, 0, 0]])
    for arr in (pad, torch.tensor(pad, dtype=torch.bfloat16), torch.tensor(pad)):
        strip = token_strip(tokens, {"advantage": arr}, token_ids=ids)
        assert strip.series["advantage"][1] == (1.0,)
        assert strip.token_ids == ((1, 2, 3), (4,))
        assert "99" not in strip.to_text()
    ragged = [np.array([0.5, -0.5, 2.0]), torch.tensor([1.0])]
    assert token_strip(tokens, {"advantage": ragged}).series["advantage"] == ((0.5, -0.5, 2.0), (1.0,))


def test_series_columns_in_canonical_order():
    strip = token_strip([["a"]], {"gap": [[0.1]], "extra": [[1]], "teacher": [[-1]], "advantage": [[0.5]]})
    assert list(strip.series) == ["teacher", "advantage", "gap", "extra"]
    assert strip.to_text().splitlines()[0].split() == ["row", "pos", "token", "teacher", "advantage", "gap", "extra"]


def test_no_colour_and_unknown_series():
    strip = token_strip([["a"]], {"foo": [[3.0]]}, color_by=None)
    (s,) = spans(strip.to_html())
    assert s["style"] is None and s["title"] == "j=0\nfoo=3.000"
    strip = token_strip([["a", "b"]], {"foo": [[3.0, -1.5]]}, color_by="foo")
    assert (strip.scale.lo, strip.scale.hi) == (-3.0, 3.0)


# ----------------------------------------------------------------- text


def test_text_table_small_example_exact():
    tokens, series, ids = small()
    strip = token_strip(tokens, series, token_ids=ids, title="demo")
    assert strip.to_text() == (
        "demo\n"
        "row  pos  token   id  rollout  teacher  advantage\n"
        "---  ---  -----  ---  -------  -------  ---------\n"
        "  0    0  7       22   -0.500   -0.250      0.250\n"
        "  0    1  +       10   -1.250   -1.000      0.250\n"
        "  0    2  5       20        —   -0.750          —\n"
        "  0    3  =       28   -0.001    0.000      0.001\n"
        "  0    4  12     717   -6.000   -2.000      4.000\n"
        "  1    0  ·a     264   -0.200   -0.100      0.100\n"
        "  1    1  ⏎      198        —   -3.000          —"
    )
    assert repr(strip) == strip.to_text()


def test_text_table_and_html_table():
    header = ["name", "value", "n"]
    rows = [["a<b", 0.123456, 3], ["c", None, 10], ["d", float("nan"), None]]
    assert text_table(header, rows, decimals=2) == (
        "name  value   n\n"
        "----  -----  --\n"
        "a<b    0.12   3\n"
        "c         —  10\n"
        "d         —   —"
    )
    t = html_table(header, rows, decimals=2)
    assert "<td>a&lt;b</td>" in t and '<td class="n">0.12</td>' in t and '<td class="n">—</td>' in t
    with pytest.raises(ValueError):
        text_table(["a", "b"], [[1]])


def test_html_page_self_contained_and_escaped():
    page = html_page("A & B", [("<h>", "<p>x</p>"), ("", "<p>y</p>")])
    assert page.startswith("<!doctype html>")
    assert "<title>A &amp; B</title>" in page and "<h2>&lt;h&gt;</h2><p>x</p>" in page
    assert "<section><p>y</p></section>" in page
    assert "<script" not in page and "http" not in page and "<link" not in page


# ----------------------------------------------------------------- size


def test_bytes_per_token_at_10k_tokens():
    rng = np.random.default_rng(0)
    B, L = 10, 1000
    toks = [[str(rng.integers(0, 100)) for _ in range(L)] for _ in range(B)]
    rollout = -rng.exponential(1.0, (B, L))
    teacher = -rng.exponential(1.0, (B, L))
    strip = token_strip(toks, {"rollout": rollout, "teacher": teacher, "advantage": teacher - rollout},
                        token_ids=rng.integers(0, 50000, (B, L)))
    html_text = strip.to_html()
    assert len(spans(html_text)) == 10_000
    assert len(html_text.encode()) / 10_000 < 150


def test_one_table_of_series_names():
    # every view reads a series' name, label, colour scale and line colour from views/names.py
    from iwopd_kit.batch.ragged import SERIES as FIELDS
    from iwopd_kit.views import colors, inputs, names, plots, widgets

    assert tuple(s.field for s in names.MEASURED) == FIELDS
    assert tuple(colors.DEFAULT_BOUNDS) == tuple(colors.SCALE_KINDS) == inputs.SERIES_ORDER == tuple(names.BY_NAME)
    assert all(plots._COLORS[s.name] == s.color for s in names.SERIES_NAMES if s.color)
    assert set(widgets.EXPLORER_SERIES) <= set(names.BY_NAME)
    assert names.series_label("gap") == "|rollout − student|" and names.series_label("other") == "other"
