"""The whole pipeline on one page: rollout -> score -> check -> advantage -> weights -> loss -> view.

Used by ``iwopd-kit demo`` and the tour notebook. Each step is a call into its own module; this
module only wires them in order and keeps the intermediate results for display.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import toy
from ..alignment import check_alignment
from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS, Batch
from ..batch.sampling import ROLLOUT_MAX_TOKENS, Sampling, SamplingSettings
from ..engines.scoring import load_model, load_tokenizer, score_batch
from ..objective import iw_opd_loss, opd_loss
from ..views.report import html_page, html_table, text_table
from ..views.results import PipelineResult
from ..views.series import per_token_series
from ..views.text import readable_tokens, token_style
from ..views.tokens import TokenStrip, token_strip


def decode_tokens(tokenizer, batch: Batch) -> list[list[str]]:
    """Completion token strings, one per id (special tokens spelled out; BPE tokens as the text they stand for)."""
    if token_style(tokenizer) != "plain":
        return [readable_tokens(tokenizer, row) for row in batch.completion_ids]
    return [tokenizer.convert_ids_to_tokens(row) for row in batch.completion_ids]


def strip(result: PipelineResult, color_by: str = "advantage", rows=None, window=None, title=None) -> TokenStrip:
    """The per-token strip of a pipeline result."""
    return token_strip(result.tokens, per_token_series(result.batch, result.iw_opd), color_by=color_by,
                       prompts=result.prompts, token_ids=result.batch.completion_ids, rows=rows,
                       window=window, title=title)


def run_pipeline(n_prompts: int = 8, student_dir: str | Path = toy.STUDENT_DIR, teacher_dir: str | Path = toy.TEACHER_DIR,
                 *, sampling: SamplingSettings | None = None, gamma: float = 0.5, engine=None,
                 prompts: list[str] | None = None) -> PipelineResult:
    """Run every step on the first ``n_prompts`` held-out prompts with real vLLM rollouts.

    ``sampling``: the rollout request, one :class:`~iwopd_kit.batch.sampling.SamplingSettings` (default
    ``Sampling()``: temperature 1, top_p 1, ``ROLLOUT_MAX_TOKENS``, seed 0); its
    ``stop_token_ids`` default to the tokenizer's EOS, an unset ``max_tokens`` or ``seed`` to those defaults.
    ``engine`` defaults to an in-process :class:`~iwopd_kit.engines.rollout.VLLMEngine` on the student
    (raw log-probs at T=1, the paper's setting: temperature 1, top_p 1).
    """
    from ..engines.rollout import VLLMEngine, rollout

    tok = load_tokenizer(student_dir)
    prompts = prompts if prompts is not None else toy.load_prompts(toy.EVAL_PROMPTS)[:n_prompts]
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    request = Sampling() if sampling is None else sampling
    request = replace(request, stop_token_ids=(tok.eos_token_id,) if request.stop_token_ids is None else request.stop_token_ids,
                      max_tokens=ROLLOUT_MAX_TOKENS if request.max_tokens is None else request.max_tokens,
                      seed=0 if request.seed is None else request.seed)
    temperature = request.temperature
    engine = engine or VLLMEngine(student_dir, logprobs_mode="raw_logprobs" if temperature == 1.0 else "processed_logprobs")
    batch = rollout(engine, prompt_ids, request)
    batch = score_batch(batch, student=load_model(student_dir), teacher=load_model(teacher_dir), temperature=temperature)
    report = check_alignment(batch)
    mask = batch.valid()
    student = batch.series(STUDENT_LOGPROBS)
    teacher = batch.series(TEACHER_LOGPROBS)
    roll = batch.series(ROLLOUT_LOGPROBS)
    iw = iw_opd_loss(student, teacher, mask, rollout_logprobs=roll, gamma=gamma)
    opd = opd_loss(student, teacher, mask, rollout_logprobs=roll)
    texts = [tok.decode(c, skip_special_tokens=True) for c in batch.completion_ids]
    correct = [toy.is_correct(p, t) for p, t in zip(prompts, texts)]
    settings = {"temperature": temperature, "max_tokens": request.max_tokens, "seed": request.seed,
                **({"top_p": request.top_p, "top_k": request.top_k} if request.truncates else {}), "gamma": gamma,
                "student": str(student_dir), "teacher": str(teacher_dir), "engine": batch.sampling.engine,
                "logprobs_mode": batch.sampling.logprobs_mode}
    return PipelineResult(batch=batch, report=report, iw_opd=iw, opd=opd, tokens=decode_tokens(tok, batch),
                          prompts=prompts, correct=correct, gamma=gamma, settings=settings)


def summary_rows(result: PipelineResult) -> list[list[Any]]:
    m = result.iw_opd.metrics
    rows = [
        ["rows", result.batch.size],
        ["valid tokens", int(result.batch.valid().sum())],
        ["student exact match (these rows)", f"{sum(result.correct)}/{len(result.correct)}"],
        ["alignment", "ok" if result.report.ok else "ERRORS"],
        ["findings", len(result.report.findings)],
        ["max |rollout - student|", result.report.stats.get("max_abs_gap", float("nan"))],
        [f"IW-OPD loss (gamma={result.gamma:g}, token_mean)", float(result.iw_opd.loss)],
        ["OPD loss (gamma=0, token_mean)", float(result.opd.loss)],
    ]
    rows += [[k, v] for k, v in m.items()]
    return rows


def token_table(result: PipelineResult, row: int = 0) -> str:
    """A compact per-token text table of one row."""
    series = per_token_series(result.batch, result.iw_opd)
    names = ["rollout", "student", "teacher", "advantage", "weight"]
    rows = [[j, result.tokens[row][j]] + [series[n][row][j] for n in names]
            for j in range(result.batch.lengths[row])]
    return text_table(["pos", "token", "rollout", "student", "teacher", "A", "w"], rows, decimals=4)


def summary_text(result: PipelineResult) -> str:
    return text_table(["quantity", "value"], summary_rows(result), decimals=6)


def report_html(result: PipelineResult) -> str:
    """A self-contained HTML report (inline CSS, no scripts, no CDN)."""
    findings = result.report.findings
    finding_rows = [[f.severity, f.kind, f.row, f.position, f.message] for f in findings] or [["—", "none", "—", "—", "no findings"]]
    sections = [
        ("Summary", html_table(["quantity", "value"], summary_rows(result), decimals=6)),
        ("Settings", html_table(["setting", "value"], [[k, v] for k, v in result.settings.items()])),
        ("Alignment check", html_table(["severity", "kind", "row", "position", "message"], finding_rows)),
        ("Advantage A = teacher − rollout, per token", strip(result, "advantage").to_html()),
        (f"Prefix weight w (gamma = {result.gamma:g})", strip(result, "weight").to_html()),
        ("Per-token loss contribution", strip(result, "loss").to_html()),
        ("|rollout − student| (alignment gap)", strip(result, "gap").to_html()),
    ]
    return html_page("iwopd_kit demo: IW-OPD on the tiny models", sections)


__all__ = ["PipelineResult", "run_pipeline", "per_token_series", "strip", "summary_text", "token_table",
           "report_html", "decode_tokens"]
