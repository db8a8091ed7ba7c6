"""The console script: `iwopd-kit demo` (real vLLM) and `iwopd-kit check` (JSONL dumps)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import iwopd_kit as K
from iwopd_kit.cli import main

SCRIPT = shutil.which("iwopd-kit") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "iwopd-kit")


def test_demo_writes_a_self_contained_report(tmp_path, capsys):
    out = tmp_path / "demo.html"
    code = main(["demo", "--n", "4", "--html", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "IW-OPD loss" in printed and "iw_opd/mean_weight" in printed and "rollout" in printed
    html = out.read_text()
    assert html.startswith("<!doctype html>")
    assert "<script" not in html and "cdn" not in html.lower() and "http" not in html
    assert html.count("<span") >= 4 and 'title="' in html


def _dump(tmp_path, shift: bool) -> Path:
    vals = [[-0.1, -0.5, -0.2, -0.9, -0.3], [-0.4, -0.05, -1.2, -0.7, -0.6]]
    roll = [list(r) for r in vals]
    if shift:   # row 1 carries the log-prob of token j + 1 (class A)
        roll[1] = vals[1][1:] + [-0.01]
    b = K.Batch(prompt_ids=[[1, 4], [1, 5, 6]], completion_ids=[[3, 4, 5, 6, 2], [7, 8, 9, 3, 2]],
                rollout_logprobs=roll, student_logprobs=vals, teacher_logprobs=vals)
    return K.write_jsonl(b, tmp_path / ("shifted.jsonl" if shift else "clean.jsonl"))


def test_check_clean_and_broken_dumps(tmp_path):
    clean = subprocess.run([SCRIPT, "check", str(_dump(tmp_path, False))], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no findings" in clean.stdout
    findings = tmp_path / "f.json"
    broken = subprocess.run([SCRIPT, "check", str(_dump(tmp_path, True)), "--json", str(findings)],
                            capture_output=True, text=True)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    rows = json.loads(findings.read_text())
    assert [(f["kind"], f["row"], f["position"], f["severity"]) for f in rows] == [("offset", 1, 0, "error")]
    assert set(rows[0]) == {"kind", "row", "position", "severity", "message"}


def test_check_truncated_file_is_a_clear_error_not_a_traceback(tmp_path):
    path = _dump(tmp_path, False)
    text = path.read_text()
    path.write_text(text[: len(text) - 20])
    r = subprocess.run([SCRIPT, "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "line 2" in r.stderr and "Traceback" not in r.stderr
