"""The console script: `iwopd-kit demo` (real vLLM) and `iwopd-kit check` (JSONL dumps)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import iwopd_kit as K
from iwopd_kit.cli import main

SCRIPT = shutil.which("iwopd-kit") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "iwopd-kit")


@pytest.mark.slow                   # real vLLM rollouts
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


def test_check_clean_and_broken_dumps(tmp_path, check_cli):
    clean = check_cli(_dump(tmp_path, False))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no findings" in clean.stdout
    findings = tmp_path / "f.json"
    broken_path = _dump(tmp_path, True)
    broken = check_cli(broken_path, "--json", findings)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    obj = json.loads(findings.read_text())
    assert set(obj) == {"schema", "path", "format", "step", "rows", "tokens", "ok", "exit_code", "findings", "metrics",
                        "groups", "unchecked", "provenance", "notes"}
    assert obj["schema"] == 2 and obj["format"] == "jsonl" and obj["path"] == str(broken_path)
    assert (obj["rows"], obj["tokens"], obj["ok"], obj["exit_code"]) == (2, 10, False, 1)
    rows = obj["findings"]
    assert [(f["kind"], f["row"], f["position"], f["severity"]) for f in rows] == [("offset", 1, 0, "error")]
    assert set(rows[0]) == {"kind", "row", "position", "severity", "message"}       # no group: the dump names none
    assert obj["metrics"]["mismatch/logp_abs_diff_max"] > 0.1 and obj["groups"] == {}
    assert isinstance(obj["unchecked"], dict) and all(isinstance(v, str) and v for v in obj["unchecked"].values())
    assert obj["provenance"] == {s: "dump" for s in ("rollout_logprobs", "student_logprobs", "teacher_logprobs")}
    assert obj == K.check_dump(broken_path).to_dict()                              # the CLI writes the library's object


def test_check_truncated_file_is_a_clear_error_not_a_traceback(tmp_path):
    path = _dump(tmp_path, False)
    text = path.read_text()
    path.write_text(text[: len(text) - 20])
    r = subprocess.run([SCRIPT, "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "line 2" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------ every input format, --html, exit codes
import pickle  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from iwopd_kit.formats import to_trl_batch, to_verl_batch  # noqa: E402


@pytest.fixture
def run(check_cli):
    return check_cli          # tests/conftest.py


def _shifted_batch() -> K.Batch:
    """Row 1 carries the log-prob of token j + 1 (class A); rows 0 and 2 are clean."""
    vals = [[-0.1, -0.5, -0.2, -0.9, -0.3], [-0.4, -0.05, -1.2, -0.7, -0.6], [-0.3, -0.8, -0.15, -1.1, -0.25]]
    roll = [list(r) for r in vals]
    roll[1] = vals[1][1:] + [-0.01]
    return K.Batch(prompt_ids=[[1, 4], [1, 5, 6], [1, 7]], completion_ids=[[3, 4, 5, 6, 2], [7, 8, 9, 3, 2], [4, 4, 5, 5, 2]],
                   rollout_logprobs=roll, student_logprobs=vals, teacher_logprobs=[[v - 0.1 for v in r] for r in vals])


def _write_all_formats(tmp_path, b: K.Batch) -> dict[str, Path]:
    paths = {"jsonl": tmp_path / "d.jsonl", "trl": tmp_path / "trl.pt", "verl": tmp_path / "verl.pt",
             "vllm": tmp_path / "out.pkl", "openai": tmp_path / "resp.json"}
    K.write_jsonl(b, paths["jsonl"])
    torch.save(to_trl_batch(b), paths["trl"])
    torch.save(to_verl_batch(b), paths["verl"])
    lp = lambda x: SimpleNamespace(logprob=x, rank=1, decoded_token=None)  # noqa: E731
    outs = [SimpleNamespace(prompt_token_ids=p, outputs=[SimpleNamespace(
        token_ids=c, finish_reason="stop", logprobs=[{t: lp(v)} for t, v in zip(c, r)])])
        for p, c, r in zip(b.prompt_ids, b.completion_ids, b.rollout_logprobs)]
    with paths["vllm"].open("wb") as f:
        pickle.dump(outs, f)
    paths["openai"].write_text(json.dumps([
        {"prompt_ids": p, "response": {"choices": [{"token_ids": c, "finish_reason": "stop",
                                                    "logprobs": {"token_logprobs": r}}]}}
        for p, c, r in zip(b.prompt_ids, b.completion_ids, b.rollout_logprobs)]))
    return paths


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama over the toy vocabulary (16 ids) with a real char-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", *"0123456789", "+", "=", ","])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tk.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(d)
    return d


def test_check_every_format_with_series(tmp_path, run):
    paths = _write_all_formats(tmp_path, _shifted_batch())
    for fmt in ("jsonl", "trl", "verl"):               # dumps that carry student and teacher series
        out = tmp_path / f"{fmt}.json"
        for how in ("auto", fmt):
            r = run(paths[fmt], "--format", how, "--json", out)
            assert r.returncode == 1, (fmt, how, r.stdout + r.stderr)
            assert [(f["kind"], f["row"], f["position"]) for f in json.loads(out.read_text())["findings"]] == \
                [("offset", 1, 0)], fmt
            assert "Traceback" not in r.stderr


def test_check_rollout_only_formats_recompute_with_local_models(tmp_path, tiny_model_dir, run):
    """vLLM pickles and OpenAI responses carry only rollout log-probs: --student/--teacher score the tokens."""
    import iwopd_kit.engines.scoring as S

    model = S.load_model(tiny_model_dir)
    src = _shifted_batch()
    healthy = src.with_series("rollout_logprobs", S.score(model, src))          # vLLM would give these
    paths = _write_all_formats(tmp_path, healthy)
    for fmt in ("vllm", "openai"):
        out = tmp_path / f"{fmt}.json"
        r = run(paths[fmt], "--student", tiny_model_dir, "--teacher", tiny_model_dir, "--json", out, "--allow-pickle")
        assert r.returncode == 0, (fmt, r.stdout + r.stderr)
        assert json.loads(out.read_text())["findings"] == [], fmt
        assert "tokenizer_mismatch" not in r.stdout and "bos_eos" not in r.stdout   # both checked (tokenizers given)
    # a shifted rollout through the same path is an error
    bad = healthy.with_series("rollout_logprobs", [r[1:] + [-0.01] if b == 1 else r
                                                   for b, r in enumerate(healthy.rollout_logprobs)])
    paths = _write_all_formats(tmp_path, bad)
    r = run(paths["vllm"], "--format", "vllm", "--student", tiny_model_dir, "--teacher", tiny_model_dir, "--allow-pickle")
    assert r.returncode == 1 and "offset" in r.stdout, r.stdout + r.stderr
    # without the flag the pickle is refused (exit 2) and the error says how to convert it
    r = run(paths["vllm"], "--student", tiny_model_dir, "--teacher", tiny_model_dir)
    assert r.returncode == 2 and "--allow-pickle" in r.stderr and "iwopd-kit convert" in r.stderr, r.stderr


def test_check_missing_model_dir_is_exit_2(tmp_path, run):
    paths = _write_all_formats(tmp_path, _shifted_batch())
    r = run(paths["vllm"], "--student", tmp_path / "nowhere", "--teacher", tmp_path / "nowhere", "--allow-pickle")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no student_logprobs" in r.stderr and "--student" in r.stderr


def test_check_html_report_and_summary_table(tmp_path, run):
    paths = _write_all_formats(tmp_path, _shifted_batch())
    html_path = tmp_path / "rep" / "report.html"
    r = run(paths["jsonl"], "--html", html_path)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("row"))
    assert lines[head].split() == ["row", "offset"]
    assert lines[head + 2].split() == ["1", "1"] and lines[head + 3].split() == ["all", "1"]
    page = html_path.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page
    assert "offset" in page and 'id="iwopd-align-row-1"' in page.replace("'", '"')
    assert page.count('<a href="#iwopd-align-row-1"') >= 1


@pytest.mark.slow                   # five fresh processes of the console script
def test_check_exit_codes_for_unreadable_inputs(tmp_path):
    paths = _write_all_formats(tmp_path, _shifted_batch())
    data = paths["trl"].read_bytes()
    paths["trl"].write_bytes(data[: len(data) // 3])
    text = paths["openai"].read_text()
    paths["openai"].write_text(text[: len(text) // 2])
    (tmp_path / "x.csv").write_text("a,b\n")
    script = lambda *a: subprocess.run([SCRIPT, "check", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    for p, needle in ((paths["trl"], "truncated"), (paths["openai"], "line 1"), (tmp_path / "x.csv", "--format"),
                      (tmp_path / "missing.jsonl", "no such file")):
        r = script(p)
        assert r.returncode == 2, (p, r.stdout + r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = script(paths["jsonl"], "--format", "verl")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_check_format_choices_match_load_any():
    """The CLI reads the readers' table; it does not repeat it."""
    from iwopd_kit.cli import build_parser
    from iwopd_kit.formats.registry import FORMATS, READERS

    assert FORMATS == ("auto", *(r.name for r in READERS))
    for command in ("check", "convert"):
        sub = build_parser()._subparsers._group_actions[0].choices[command]
        fmt = next(a for a in sub._actions if a.dest == "format")
        assert tuple(fmt.choices) == FORMATS
        assert all(r.name in fmt.help for r in READERS)


def test_check_progress_bar_only_for_long_dumps(tmp_path, run):
    def dump(n: int) -> Path:
        vals = [[-0.1, -0.2]] * n
        b = K.Batch(prompt_ids=[[1]] * n, completion_ids=[[3, 2]] * n, rollout_logprobs=vals, student_logprobs=vals,
                    teacher_logprobs=vals)
        return K.write_jsonl(b, tmp_path / f"{n}.jsonl")

    short = run(dump(10))
    assert short.returncode == 0 and short.stderr == ""          # stderr is not a terminal here
    long = run(dump(1001))
    assert long.returncode == 0 and "/1001 [" in long.stderr and "no findings" in long.stdout
