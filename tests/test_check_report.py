"""What `iwopd-kit check` shows: the per-finding strips of its HTML, the toy-model fallback named, `null` as
`null`, the mismatch metrics in the table, the HTML and the directory summary, and the rescoring options."""

from __future__ import annotations

import json
import math
import re
from argparse import Namespace

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.cli import main
from iwopd_kit.alignment.mismatch import MISMATCH_KEYS, USUAL_THRESHOLDS
from iwopd_kit.views import finding_strips, histogram_svg, mismatch_text, token_strip
from iwopd_kit.views.colors import scale_for
from iwopd_kit.views.mismatch import metric_rows, quantile_row

LN2 = math.log(2.0)
SPAN = re.compile(r'<span class="(k[^"]*)"(?: style="background-color:(#[0-9a-f]{6})")? title="([^"]*)">([^<]*)</span>')


@pytest.fixture
def run(check_cli):
    return check_cli          # tests/conftest.py


def _fixture(name: str, rows: int | None = None) -> K.Batch:
    b = K.read_jsonl(toy.FIXTURES_DIR / f"{name}.jsonl")
    return b if rows is None else b.select(list(range(rows)))


def _strip_html(page: str, kind: str, row: int) -> str:
    """The HTML of the strip of the ``kind`` finding at ``row`` (up to its caption)."""
    start = page.index(f"{kind}, row {row}")
    return page[start: page.index('<p class="iwf-c">', start) + 400]


# ------------------------------------------------------------------------------------------- A: the HTML
def test_teacher_coverage_strip_is_coloured_by_the_teacher_with_the_null_token_marked(tmp_path, run):
    out = tmp_path / "r.html"
    r = run(toy.FIXTURES_DIR / "teacher_coverage.jsonl", "--html", out)
    assert r.returncode == 1
    page = out.read_text()
    batch = _fixture("teacher_coverage")
    strip = _strip_html(page, "teacher_coverage", 6)
    assert "coloured by teacher log-prob" in strip and "colour: <b>teacher</b>" in strip
    spans = SPAN.findall(strip)
    assert [text for *_, text in spans] == [str(t) for t in batch.completion_ids[6]]       # ids, in order
    flagged = [s for s in spans if " x" in s[0]]
    assert len(flagged) == 1 and flagged[0][3] == str(batch.completion_ids[6][0])          # the finding's position 0
    assert " m" in flagged[0][0] and flagged[0][1] == ""                                    # teacher null: uncoloured
    assert flagged[0][2].startswith("flagged")
    scale = scale_for("teacher")
    for (cls, color, _, _), v in zip(spans[1:], batch.teacher_logprobs[6][1:]):              # the rest: by teacher value
        assert color == scale.color(v), (cls, color, v)
    assert "teacher = null" in strip and "nan" not in strip.lower()


def test_each_kind_is_coloured_by_its_series(tmp_path, run):
    for name, series in (("missing_token_ids", "rollout"), ("offset", "gap")):
        out = tmp_path / f"{name}.html"
        assert run(toy.FIXTURES_DIR / f"{name}.jsonl", "--html", out).returncode == 1
        page = out.read_text()
        first = page.index(f"[error] {name}, row ")
        assert f"colour: <b>{series}</b>" in page[first: first + 2000], name


def test_ids_are_separated_and_shown_as_ids_without_a_tokenizer():
    s = token_strip(None, {"gap": [[0.0, 0.3, 0.1]]}, color_by="gap", token_ids=[[4138, 149, 15]], mark=[(0, 1)])
    html = s.to_html()
    spans = SPAN.findall(html)
    assert [t for *_, t in spans if t in {"4138", "149", "15"}] == ["4138", "149", "15"]
    assert "4138</span> <span" in html and "149</span> <span" in html     # apart even without the stylesheet
    assert "413814915" not in re.sub(r"<[^>]+>", "", html)
    header, rows = s.text_rows()
    assert header == ["row", "pos", "id", "gap", "mark"] and [r[2] for r in rows] == ["4138", "149", "15"]
    assert [r[-1] for r in rows] == ["", "*", ""]
    plain = token_strip([["a", "b"]], {"gap": [[0.0, 0.1]]}, color_by="gap").to_html()   # stored notebook strips
    assert ".iwv .x" not in plain and ".iwv .d" not in plain and "</span> <span" not in plain and "flagged" not in plain
    with pytest.raises(ValueError, match="token_ids"):
        token_strip(None, {"gap": [[0.0]]})
    with pytest.raises(ValueError, match=r"mark: .*\(0, 5\)"):
        token_strip(None, {"gap": [[0.0]]}, color_by=None, token_ids=[[3]], mark=[(0, 5)])


def test_finding_strips_window_long_rows_and_anchor_each_row_once():
    n = 300
    vals = [[-0.1] * n, [-0.2] * 5]
    b = K.Batch(prompt_ids=[[1], [1]], completion_ids=[[3] * n, [4] * 5], rollout_logprobs=vals,
                student_logprobs=vals, teacher_logprobs=[[-0.1] * 150 + [None] + [-0.1] * 149, [-0.2] * 5])
    report = K.check_alignment(b)
    assert [(f.kind, f.row, f.position) for f in report.findings] == [("teacher_coverage", 0, 150)]
    strips, n_row = finding_strips(b, report, anchor=lambda r: f"a{r}")
    assert n_row == 1 and len(strips) == 1 and strips[0].count('id="a0"') == 1
    assert "positions 102–198" in strips[0]                               # 48 either side of 150
    assert len(SPAN.findall(strips[0])) == 97


@pytest.mark.slow                   # headless Chromium
def test_flagged_token_is_outlined_in_the_png_copy():
    static = pytest.importorskip("iwopd_kit.views.static")
    import io

    import numpy as np
    from PIL import Image

    ok, why = static.available()
    if not ok:
        pytest.skip(why)

    def dark(strip) -> int:
        rgb = np.asarray(Image.open(io.BytesIO(static.html_png(strip.to_html()))).convert("RGB"))
        return int((rgb.max(axis=-1) < 60).sum())

    args = dict(token_ids=[[11, 12, 13, 14]], color_by=None)
    plain = token_strip(None, {"gap": [[0.0] * 4]}, **args)
    marked = token_strip(None, {"gap": [[0.0] * 4]}, mark=[(0, 2)], **args)
    assert dark(marked) > dark(plain) + 40


# ----------------------------------------------------------------------------- A: notes and null in text
def test_the_toy_fallback_is_named_in_the_text_and_the_html(tmp_path, run):
    b = _fixture("healthy_fp32_t1", rows=3)
    dump = K.write_jsonl(b.replace(student_logprobs=None, teacher_logprobs=None), tmp_path / "ro.jsonl")
    r = run(dump, "--html", tmp_path / "ro.html")
    assert r.returncode == 0, r.stdout + r.stderr
    note = "student log-probs and teacher log-probs recomputed with the bundled toy student"
    assert note in r.stdout and "pass --student/--teacher DIR for your own models" in r.stdout
    assert note in (tmp_path / "ro.html").read_text()


def test_real_vocabulary_ids_say_the_fallback_does_not_fit(tmp_path, run):
    dump = tmp_path / "real.jsonl"
    dump.write_text(json.dumps({"prompt_ids": [151644, 872], "completion_ids": [30014, 11, 151645],
                                "rollout_logprobs": [-0.5, None, -0.01]}) + "\n")
    r = run(dump, "--html", tmp_path / "real.html")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "not scored" in r.stdout and "token ids (up to 151645, row 0, position 2)" in r.stdout
    assert "bundled toy models the check falls back to (student 16 ids" in r.stdout
    assert "pass --student DIR and --teacher DIR" in r.stdout
    page = (tmp_path / "real.html").read_text()
    assert "pass --student DIR and --teacher DIR" in page and "boxes show token ids" in page
    assert "30014</span> <span" in page
    # a model given by the user that does not fit either: exit 2, naming the token and the flag
    r = run(dump, "--student", toy.STUDENT_DIR)
    assert r.returncode == 2
    assert "token id 151645 (row 0, position 2) is outside the vocabulary of --student" in r.stderr
    assert "(16 ids)" in r.stderr


def test_a_null_in_the_file_is_written_null():
    b = _fixture("teacher_coverage")
    msgs = {f.row: f.message for f in K.check_alignment(b).findings}
    assert "value null" in msgs[6] and "nan" not in msgs[6]
    assert "value -inf" in msgs[2]                                     # a sentinel stays what it was


# -------------------------------------------------------------------------------- B: the mismatch metrics
def _golden_batch() -> K.Batch:
    """Δ = student - rollout = 0, +ln 2, -ln 2 (tests/test_mismatch.py's tiny batch)."""
    return K.Batch(prompt_ids=[[1], [1]], completion_ids=[[3, 4], [5]], rollout_logprobs=[[-1.0, -1.5], [-0.7]],
                   student_logprobs=[[-1.0, -1.5 + LN2], [-0.7 - LN2]], teacher_logprobs=[[-1.0, -1.0], [-1.0]])


GOLDEN_TEXT = {   # by hand: 5/3, 1/6, 2 ln2 / 3, ln 2, 7/6, 1/2, 2, 7/9, 3/4
    "mismatch/token_mult_prob_error": "1.666667", "mismatch/k3_kl": "0.1667", "mismatch/logp_abs_diff_mean": "0.4621",
    "mismatch/logp_abs_diff_max": "0.693147", "mismatch/is_ratio_mean": "1.166667", "mismatch/is_ratio_min": "0.500000",
    "mismatch/is_ratio_max": "2.000000", "mismatch/is_ess": "0.777778", "mismatch/chi2_token": "0.750000",
}


def test_the_text_table_has_one_line_per_metric_with_its_threshold(tmp_path, run):
    dump = K.write_jsonl(_golden_batch(), tmp_path / "g.jsonl")
    r = run(dump)
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("mismatch/")}
    assert list(lines) == list(MISMATCH_KEYS)
    for key, value in GOLDEN_TEXT.items():
        cells = re.split(r"\s{2,}", lines[key].strip())
        assert cells[1] == value, (key, cells)
        assert cells[2] == USUAL_THRESHOLDS[key][0]
    verdict = {k: re.split(r"\s{2,}", v.strip())[3:] for k, v in lines.items()}
    assert verdict["mismatch/token_mult_prob_error"] == ["beyond"] and verdict["mismatch/is_ess"] == ["within"]
    assert verdict["mismatch/chi2_token"] == ["within"] and verdict["mismatch/logp_abs_diff_max"] == []
    q = r.stdout.splitlines()[r.stdout.splitlines().index("|Δ| quantiles:") + 3].split()
    assert q == ["3", "0.693147", "0.693147", "0.693147", "0.693147", "0.693147"]


def test_thresholds_are_the_check_pages():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "check.md").read_text()
    rows = [re.split(r"(?<!\\)\|", line) for line in readme.splitlines() if line.startswith("| `mismatch/")]
    cell = {}
    for r in rows:
        names = re.findall(r"`([^`]+)`", r[1])
        for n in names:
            full = n if n.startswith("mismatch/") else names[0].rsplit("_", 1)[0] + n
            cell[full] = r[4].strip()
    assert set(cell) == set(MISMATCH_KEYS)
    assert {k: USUAL_THRESHOLDS[k][0] for k in MISMATCH_KEYS} == cell


def test_metric_rows_quantiles_and_histogram_by_hand():
    rows = metric_rows({"mismatch/token_mult_prob_error": 1.06, "mismatch/k3_kl": 2e-4, "mismatch/is_ess": 0.2})
    assert rows == [["mismatch/token_mult_prob_error", "1.060000", USUAL_THRESHOLDS["mismatch/token_mult_prob_error"][0], "beyond"],
                    ["mismatch/k3_kl", "0.0002", USUAL_THRESHOLDS["mismatch/k3_kl"][0], "within"],
                    ["mismatch/is_ess", "0.2", USUAL_THRESHOLDS["mismatch/is_ess"][0], "beyond"]]
    d = torch.tensor([0.0, -1.0, 2.0, -3.0, 4.0], dtype=torch.float64)
    assert quantile_row(d) == [5, "2.000000", "3.6", "3.96", "3.996", "4"]        # |Δ| = 0..4, linear
    svg = histogram_svg(d, bins=8)
    counts = [int(c) for c in re.findall(r": (\d+) token\(s\)", svg)]
    assert sum(counts) == 5 and len(counts) == svg.count("<rect") == 5
    assert svg.startswith("<svg") and "script" not in svg and "http" not in svg
    assert "not computed (needs rollout_logprobs" in mismatch_text({}, None)


def test_the_html_shows_the_metrics_and_the_delta_view(tmp_path, run):
    dump = K.write_jsonl(_golden_batch(), tmp_path / "g.jsonl")
    run(dump, "--html", tmp_path / "g.html")
    page = (tmp_path / "g.html").read_text()
    section = page[page.index("rollout vs trainer mismatch"): page.index("findings and per-token view")]
    for key, value in GOLDEN_TEXT.items():
        assert f"<td>{key}</td><td>{value}</td>" in section, key
    assert "<th>p99.9</th>" in section and section.count("<rect") == 3            # Δ in {−ln2, 0, +ln2}: 3 bins
    assert "<script" not in page and "http" not in page


def test_the_directory_summary_has_k3_kl_and_token_mult_prob_error(tmp_path, run):
    d = tmp_path / "dumps"
    d.mkdir()
    K.write_jsonl(_golden_batch(), d / "a.jsonl")
    b = _golden_batch()
    K.write_jsonl(b.replace(student_logprobs=None, teacher_logprobs=None, completion_ids=[[30014, 4], [5]]), d / "b.jsonl")
    r = run(d, "--json", tmp_path / "o.json")
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("file"))
    assert lines[head].split()[5:7] == ["k3_kl", "token_mult_prob_error"]
    a = next(line for line in lines if line.startswith("a.jsonl ")).split()
    assert a[5:7] == ["0.1667", "1.666667"]
    bl = next(line for line in lines if line.startswith("b.jsonl ")).split()
    assert bl[5:7] == ["—", "—"]
    assert "note (b.jsonl): student_logprobs and teacher_logprobs not scored" in r.stdout


# ------------------------------------------------------------------------------ C: the rescoring options
def _args(**kw) -> Namespace:
    base = dict(student=None, teacher=None, device="cpu", dtype="float32", batch_size=32)
    base.update(kw)
    return Namespace(**base)


class _NoBar:
    def step(self, n, desc=None):
        pass


def test_batch_size_does_not_change_the_recomputed_values():
    from iwopd_kit.engines.rescore import recompute

    b = _fixture("healthy_fp32_t1", rows=9).replace(student_logprobs=None, teacher_logprobs=None)
    one, *_ = recompute(b, _args(batch_size=1), _NoBar())
    eight, *_ = recompute(b, _args(batch_size=8), _NoBar())
    s1, s8 = one.series("student_logprobs", torch.float64), eight.series("student_logprobs", torch.float64)
    assert torch.allclose(s1, s8, atol=1e-5, equal_nan=True)
    assert torch.allclose(one.series("teacher_logprobs", torch.float64), eight.series("teacher_logprobs", torch.float64),
                          atol=1e-5, equal_nan=True)
    assert one.meta[0]["trainer_dtype"] == "float32"


def test_dtype_changes_the_values_and_bf16_is_a_numerics_warning(tmp_path, run):
    b = _fixture("healthy_fp32_t1", rows=6)
    dump = K.write_jsonl(b.replace(student_logprobs=None, teacher_logprobs=None), tmp_path / "ro.jsonl")
    res = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.json"
        r = run(dump, "--device", "cpu", "--dtype", dtype, "--batch-size", "4", "--json", out)
        res[dtype] = (r, json.loads(out.read_text()))
    r32, o32 = res["float32"]
    r16, o16 = res["bfloat16"]
    assert r32.returncode == 0 and o32["findings"] == [], r32.stdout
    assert o32["metrics"]["mismatch/logp_abs_diff_max"] < 1e-4               # the toy student made these rollouts
    assert r16.returncode == 0, r16.stdout                                   # not an error
    assert o16["metrics"]["mismatch/logp_abs_diff_max"] > 1e-3               # bf16 changed the values
    assert [(f["kind"], f["severity"]) for f in o16["findings"]] == [("numerics", "warning")]
    assert "trainer bf16" in o16["findings"][0]["message"] and "in bfloat16" in r16.stdout


def test_bad_rescoring_options_are_clear_errors(tmp_path, run, capsys):
    dump = K.write_jsonl(_golden_batch(), tmp_path / "g.jsonl")
    for flag, value, needle in (("--dtype", "float8", "invalid choice: 'float8'"),
                                ("--batch-size", "0", "expected a whole number >= 1, got '0'")):
        with pytest.raises(SystemExit) as e:
            main(["check", str(dump), flag, value])
        assert e.value.code == 2 and needle in capsys.readouterr().err
    r = run(dump, "--device", "gpu7")
    assert r.returncode == 2 and "--device 'gpu7' is not a torch device" in r.stderr and "Traceback" not in r.stderr
    if not torch.cuda.is_available():
        r = run(dump, "--device", "cuda:0")
        assert r.returncode == 2 and "no CUDA device is available here" in r.stderr


def test_every_link_of_the_check_page_lands_on_a_strip_it_draws(tmp_path):
    from iwopd_kit.views.check_page import check_html

    batch = K.read_jsonl(toy.FIXTURES_DIR / "offset.jsonl")
    report = K.check_alignment(batch)
    rows = sorted({f.row for f in report.findings if f.row is not None})
    assert len(rows) > 3
    page = check_html(tmp_path / "offset.jsonl", batch, report, max_strips=3)
    targets = set(re.findall(r'href="#([^"]+)"', page))
    ids = set(re.findall(r"""id=["']([^"']+)["']""", page))
    assert targets and targets <= ids, f"links to strips not on the page: {sorted(targets - ids)}"
    assert f"row {rows[-1]}" in page                                       # the rest still named, as text
