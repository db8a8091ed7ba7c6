"""The run's pages and terminal summary, from the store's tables: ``STORE/report.html`` and ``summary_text``.

``report.html`` is self-contained (inline CSS and SVG from :mod:`iwopd_kit.run.svg`, no script, no URL):
the pooled mismatch metrics per step inside their healthy bands (the bounds of
:data:`iwopd_kit.alignment.mismatch.USUAL_THRESHOLDS`), the same per group, finding counts by kind per step,
and the flagged steps with their first finding, each linked to ``steps/step_N.html`` (the page of
``iwopd-kit check --html`` for that step).
"""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path

from ..alignment.kinds import KINDS
from ..views.report import html_page, html_table, text_table
from . import store as S
from .svg import legend, line_chart, stacked_bars

GROUP_METRICS = ("token_mult_prob_error", "k3_kl", "logp_abs_diff_mean", "is_ratio_max")
"""The metrics drawn per group."""

_CSS = ("<style>.charts{display:flex;flex-wrap:wrap;gap:.6em}.charts svg{border:1px solid #eee;background:#fff}"
        ".lg span{margin-right:1em;font-size:.85em}.bad{color:#b2182b;font-weight:bold}</style>")


def _rows(table) -> list[dict]:
    return [] if table is None else table.to_pylist()


def _flagged(steps: list[dict]) -> list[dict]:
    return [s for s in steps if s["errors"]]


def _metric_charts(steps: list[dict]) -> str:
    xs = [s["step"] for s in steps]
    marks = [s["step"] for s in _flagged(steps)]
    charts = [line_chart(m, xs, [("pooled", [s[m] for s in steps])], S.BANDS.get(m, (None, None)), marks)
              for m in S.METRICS]
    note = ("<p>Green: the healthy band (bounds from the kit's table of usual thresholds; none drawn where the field "
            "has no single bound). Red ticks: steps with an error-level finding.</p>")
    return note + '<div class="charts">' + "".join(charts) + "</div>"


def _group_charts(groups: list[dict], steps: list[dict]) -> str:
    if not groups:
        return "<p>no groups recorded (a reader fills them, or pass meta's key with the reader's group option)</p>"
    xs = [s["step"] for s in steps]
    names = sorted({g["group"] for g in groups})
    by = {(g["step"], g["group"]): g for g in groups}
    charts = []
    for m in GROUP_METRICS:
        series = [(n, [by[(x, n)][m] if (x, n) in by else None for x in xs]) for n in names]
        charts.append(line_chart(f"{m} by group", xs, series, S.BANDS.get(m, (None, None))))
    return legend(names) + '<div class="charts">' + "".join(charts) + "</div>"


def _kind_chart(steps: list[dict]) -> str:
    xs = [s["step"] for s in steps]
    layers = [(k, [s[f"n_{k}"] for s in steps]) for k in KINDS if any(s[f"n_{k}"] for s in steps)]
    return (legend([n for n, _ in layers]) if layers else "") + stacked_bars("findings by kind", xs, layers)


def _page_link(store: Path, step: int) -> str:
    name = f"step_{step}.html"
    return f'<a href="steps/{name}">{name}</a>' if (store / "steps" / name).exists() else "(scanned with --no-html)"


def _flagged_table(steps: list[dict], store: Path) -> str:
    bad = _flagged(steps)
    if not bad:
        return "<p>no step has an error-level finding</p>"
    kinds = lambda s: ", ".join(k for k in KINDS if s[f"n_{k}"])  # noqa: E731
    head = "".join(f"<th>{h}</th>" for h in ("step", "errors", "warnings", "kinds", "first finding", "where", "page"))
    body = "".join(
        f'<tr><td class="n">{s["step"]}</td><td class="n">{s["errors"]}</td><td class="n">{s["warnings"]}</td>'
        f'<td>{html.escape(kinds(s))}</td><td>[{html.escape(s["first_severity"] or "")}] '
        f'{html.escape(s["first_kind"] or "")}: {html.escape(_short(s["first_message"]))}</td>'
        f'<td>{html.escape(_where(s))}</td><td>{_page_link(store, s["step"])}</td></tr>'
        for s in bad)
    return f'<table class="iwr"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _short(text: str | None, n: int = 220) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _where(s: dict) -> str:
    return f'{s["first_file"]} row {s["first_row"]}' if s.get("first_file") else "whole step"


def _overview(steps: list[dict], scan: dict) -> str:
    bad = _flagged(steps)
    rows = [[s["step"], s["rows"], s["policy_tokens"], s["errors"], s["warnings"], s["token_mult_prob_error"], s["k3_kl"],
             s["logp_abs_diff_max"], ", ".join(k for k in KINDS if s[f"n_{k}"]) or "-"] for s in steps]
    head = (f"<p>{html.escape(scan.get('run', ''))}: {len(steps)} step(s) read, "
            f'<span class="{"bad" if bad else ""}">{len(bad)} with an error-level finding</span>'
            + (f"; first bad step {bad[0]['step']}" if bad else "") + "</p>")
    unread = scan.get("not_read", {})
    pend = scan.get("pending_steps", {})
    extra = ""
    if unread:
        extra += "<p>not read:</p>" + html_table(["file", "why"], [[k, v] for k, v in unread.items()])
    if pend:
        extra += "<p>not complete yet:</p>" + html_table(["step", "why"], [[k, v] for k, v in pend.items()])
    if scan.get("lacks"):
        extra += "<p>columns a source lacks (null in the store):</p>" + html_table(
            ["reader", "columns"], [[k, ", ".join(v)] for k, v in scan["lacks"].items()])
    table = html_table(["step", "rows", "policy tokens", "errors", "warnings", "token_mult_prob_error", "k3_kl",
                        "logp_abs_diff_max", "kinds"], rows, decimals=6)
    return head + extra + table


def report_html(store: str | Path) -> str:
    """The run's page (see the module docstring) from the tables in ``store``."""
    store = Path(store)
    steps = _rows(S.read_table(store, "steps"))
    groups = _rows(S.read_table(store, "groups"))
    scan_path = store / "scan.json"
    scan = json.loads(scan_path.read_text()) if scan_path.exists() else {}
    title = f"run scan: {Path(scan.get('run', store.parent)).name}"
    if not steps:
        return html_page(title, [("summary", _overview(steps, scan))])
    return html_page(title, [
        ("summary", _CSS + _overview(steps, scan)),
        ("flagged steps", _flagged_table(steps, store)),
        ("pooled mismatch per step", _metric_charts(steps)),
        ("per group", _group_charts(groups, steps)),
        ("findings by kind per step", _kind_chart(steps)),
    ])


def write_report(store: str | Path) -> Path:
    out = Path(store) / "report.html"
    out.write_text(report_html(store))
    return out


def drill_command(step: dict, run: str, files: list[str]) -> str:
    """The command that shows a flagged step's first finding token by token: its file, or for a finding of the
    whole step the step's folder (prime-rl's ``step_N``) or its first file."""
    target = step.get("first_file")
    if not target and files:
        parents = {str(Path(f).parent) for f in files}
        target = parents.pop() if len(parents) == 1 and parents != {"."} else files[0]
    return f"iwopd-kit check {shlex.quote(str(Path(run) / target))}" if target else "iwopd-kit check RUN"


def summary_text(result) -> str:
    """The terminal summary of a :class:`~iwopd_kit.run.scan.ScanResult`: steps read, the flagged ones with their
    kinds, the first bad step and the command that drills into it, what was not read."""
    store = Path(result.store)
    steps = _rows(S.read_table(store, "steps"))
    scan = json.loads((store / "scan.json").read_text()) if (store / "scan.json").exists() else {}
    lines = [f"{scan.get('run', '')}: {len(result.steps)} step(s) in the store, {len(result.scanned)} read now"]
    bad = _flagged(steps)
    if bad:
        rows = [[s["step"], s["errors"], s["warnings"], ", ".join(k for k in KINDS if s[f"n_{k}"]), s["first_kind"],
                 _where(s)] for s in bad[:20]]
        lines += [text_table(["step", "errors", "warnings", "kinds", "first", "where"], rows)]
        if len(bad) > 20:
            lines.append(f"... {len(bad) - 20} more flagged step(s): iwopd-kit sql STORE \"SELECT * FROM steps WHERE "
                         "errors > 0\"")
        first = bad[0]
        kinds = ", ".join(k for k in KINDS if first[f"n_{k}"])
        files = sorted(S.read_manifest(store)["steps"].get(str(first["step"]), {}).get("files", {}))
        lines.append(f"first bad step: {first['step']} ({kinds}); drill in: {drill_command(first, scan.get('run', ''), files)}")
        page = store / "steps" / f"step_{first['step']}.html"
        if page.exists():
            lines.append(f"its page: {page}")
    elif not result.steps:
        lines.append("no dump with a step found (expected prime-rl token_exports/step_N/, train_data_stepN.jsonl, "
                     "data_N.pt, step_N.jsonl, ...)" + (" yet" if result.pending else ""))
    else:
        lines.append("no step has an error-level finding")
    for f, why in list(result.not_read.items())[:10]:
        lines.append(f"not read: {f}: {why}")
    for s, why in list(result.pending.items())[:10]:
        lines.append(f"not complete: step {s}: {why}")
    lines.append(f"report: {store / 'report.html'}")
    return "\n".join(lines)


__all__ = ["report_html", "write_report", "summary_text", "drill_command"]
