"""``iwopd-kit``: the command line.

``iwopd-kit demo``  — the whole pipeline on the bundled tiny models with real vLLM rollouts;
prints a per-token table and a summary, writes a self-contained HTML report.
``iwopd-kit check`` — the alignment check on a dump or a directory of dumps (JSONL, prime-rl
token export, TRL or verl torch file, OpenAI / TRL-client JSON; pickles only with
``--allow-pickle``; a directory's layout and steps found by themselves); scores missing student /
teacher series with local models; exit 1 on an error finding, 2 on unreadable input. It parses its
arguments, calls :func:`iwopd_kit.check_dump` and prints the result.
``iwopd-kit convert IN OUT`` — any readable dump -> the kit's JSONL.
``iwopd-kit scan RUN`` / ``sql STORE QUERY`` / ``gates STORE|DUMP`` — a whole run (:mod:`iwopd_kit.run`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .apps.check_result import SCHEMA as JSON_SCHEMA  # noqa: F401  (the version of the ``check --json`` object)
from .batch.sampling import ROLLOUT_MAX_TOKENS, Sampling
from .engines.rescore import DTYPES  # the scoring dtypes


def _demo(args: argparse.Namespace) -> int:
    from .apps.pipeline import report_html, run_pipeline, summary_text, token_table

    result = run_pipeline(n_prompts=args.n, gamma=args.gamma,
                          sampling=Sampling(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed))
    print(f"row 0: prompt {result.prompts[0]!r} -> completion "
          f"{''.join(t for t in result.tokens[0])!r} ({'correct' if result.correct[0] else 'wrong'})")
    print(token_table(result, row=0))
    print()
    print(summary_text(result))
    for f in result.report.findings:
        print(f"[{f.severity}] {f.kind} row={f.row} position={f.position}: {f.message}")
    out = Path(args.html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_html(result))
    print(f"\nreport: {out.resolve()}")
    return 0 if result.report.ok else 1


class _Progress:
    """A tqdm bar on stderr over one file's rows, shown only when stderr is a terminal or the dump has > 1000 rows
    (:func:`iwopd_kit.check_dump` calls ``start`` once the file is read, ``step`` per pass, ``close`` at the end)."""

    def __init__(self) -> None:
        self.bar = None

    def start(self, total: int, rows: int) -> None:
        if sys.stderr.isatty() or rows > 1000:
            try:
                from tqdm import tqdm
            except ImportError:   # no bar, same results
                return
            self.bar = tqdm(total=total, file=sys.stderr, unit="row", leave=False, desc="check")

    def step(self, n: int, desc: str | None = None) -> None:
        if self.bar is not None:
            if desc:
                self.bar.set_description(desc)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _FileBar:
    """A tqdm bar over the files of a directory, on stderr when it is a terminal (no per-row bar inside)."""

    def __init__(self) -> None:
        self.bar = None

    def file(self, name: str) -> None:
        if self.bar is None and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(file=sys.stderr, unit="file", leave=False, desc="check")
        if self.bar is not None:
            self.bar.set_description(name[-40:])
            self.bar.update(1)

    def step(self, n: int, desc: str | None = None) -> None:
        pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_outputs(args: argparse.Namespace, obj: dict, html: str | None) -> int:
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(obj, indent=2))
        if args.html and html is not None:
            out = Path(args.html)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(html)
            print(f"report: {out.resolve()}")
    except OSError as e:
        print(f"error: cannot write the output ({e})", file=sys.stderr)
        return 2
    return 0


def _lean_malloc() -> None:
    """For the ``iwopd-kit check`` command's own process only (not when :func:`main` is called with
    arguments from Python, e.g. in a notebook): glibc serves every allocation of 1 MB or more with its own mmap, so the
    check's large temporaries go back to the system when freed (glibc's default raises that threshold to
    the largest block freed so far, up to 32 MB, and then keeps freed [B, L] buffers in the heap; measured
    in benchmarks/bench_memory.py). A no-op where glibc's ``mallopt`` is not available."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)             # M_MMAP_THRESHOLD (fixed: no dynamic adjustment)
    except (OSError, AttributeError):
        pass


def _check(args: argparse.Namespace) -> int:
    """Parse -> :func:`iwopd_kit.check_dump` -> print (a file: findings, metrics, notes; a directory: per file and step)."""
    from .apps.service import READ_ERRORS, check_dump

    is_dir = Path(args.path).is_dir()
    try:
        result = check_dump(args.path, student=args.student, teacher=args.teacher,
                            student_tokenizer=args.student_tokenizer, teacher_tokenizer=args.teacher_tokenizer,
                            group_by=args.group_by, format=args.format, allow_pickle=args.allow_pickle,
                            device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                            progress=_FileBar() if is_dir else _Progress())
    except READ_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _print_dir(args, result) if is_dir else _print_file(args, result)


def _print_file(args: argparse.Namespace, result) -> int:
    from .views.alignment import finding_counts
    from .views.mismatch import batch_delta, mismatch_text
    from .views.report import text_table

    batch, report = result.batch, result.report
    print(f"{args.path}: {batch.size} rows, {int(batch.valid().sum())} valid tokens")
    for note in result.notes:
        print(f"note: {note}")
    if report.findings:
        header, rows = finding_counts(report)
        print(text_table(header, rows))
        print()
        shown = result.finding_dicts()[: args.max_findings]
        grouped = any("group" in f for f in shown)
        print(text_table(["severity", "kind", "row", "position"] + (["group"] if grouped else []) + ["message"],
                         [[f["severity"], f["kind"], f["row"], f["position"]] + ([f.get("group")] if grouped else [])
                          + [f["message"]] for f in shown]))
        if len(report.findings) > len(shown):
            print(f"... {len(report.findings) - len(shown)} more finding(s); write them all with --json")
    else:
        print("no findings")
    print()
    print(mismatch_text(report.metrics, batch_delta(batch), report.unchecked_reasons.get("mismatch")))
    if result.groups:
        print()
        print(_group_table(result.groups))
    print()
    if report.unchecked:
        print("not checked (inputs missing): " + report.unchecked_text())
        if {"tokenizer_mismatch", "bos_eos"} & set(report.unchecked):
            print("(pass --student DIR and --teacher DIR, or --student-tokenizer DIR and --teacher-tokenizer DIR, "
                  "to check the tokenizers and BOS/EOS)")
    html = _check_html(args.path, batch, report, result.tokenizer, notes=result.notes) if args.html else None
    return _write_outputs(args, result.to_dict(), html) or result.exit_code


_GROUP_KEYS = ("rows", "tokens", "mismatch/k3_kl", "mismatch/token_mult_prob_error", "mismatch/logp_abs_diff_max")


def _group_table(groups: dict) -> str:
    """Per-group metrics (``--group-by`` or the reader's groups): the main ones when present, else all."""
    from .views.mismatch import metric_text
    from .views.report import text_table

    present = list(dict.fromkeys(k for m in groups.values() for k in m))
    keys = [k for k in _GROUP_KEYS if k in present] or present
    cell = lambda v: metric_text(v) if isinstance(v, float) else v  # noqa: E731
    return "per group:\n" + text_table(["group", *(k.removeprefix("mismatch/") for k in keys)],
                                        [[g, *(cell(m.get(k)) for k in keys)] for g, m in groups.items()])


def _print_dir(args: argparse.Namespace, result) -> int:
    """One summary row per file, one per step when the paths name steps; the worst exit code."""
    from .views.report import html_page, html_table, text_table

    for f in result.files:
        if f.error is not None:
            print(f"error: {f.error}", file=sys.stderr)
    layouts = f" ({', '.join(result.layouts)} layout)" if result.layouts else ""
    print(f"{args.path}: {len(result.files)} dump file(s){layouts}")
    files = result.file_table()
    print(text_table(*files))
    sections = [("files", html_table(*files))]
    if result.has_steps:
        steps = result.step_table()
        print()
        print(f"per step ({len(result.steps)}; metrics pooled over each step's files):")
        print(text_table(*steps))
        sections.append(("steps", html_table(*steps)))
    for note in result.notes:
        print(f"note: {note}")
    for note, names in result.file_notes().items():     # once per distinct note, not once per rank and step
        where = names[0] if len(names) == 1 else f"{len(names)} files, first {names[0]}"
        print(f"note ({where}): {note}")
    print("per-file findings: iwopd-kit check FILE, or all of them with --json")
    html = html_page(f"alignment check: {Path(args.path).name}", sections) if args.html else None
    return _write_outputs(args, result.to_dict(), html) or result.exit_code


def _convert(args: argparse.Namespace) -> int:
    """``iwopd-kit convert IN OUT``: any readable dump -> the kit's JSONL."""
    from .batch import BatchError, write_jsonl
    from .formats.registry import load_any

    try:
        batch = load_any(args.src, args.format, allow_pickle=args.allow_pickle)
        out = write_jsonl(batch, args.dst)
    except (BatchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out}: {batch.size} rows, {int(batch.valid().sum())} valid tokens")
    return 0


def _check_html(path: str, batch, report, tokenizer, max_rows: int = 20, notes=()) -> str:
    """The self-contained page (:func:`iwopd_kit.views.check_page.check_html`)."""
    from .views.check_page import check_html

    return check_html(path, batch, report, tokenizer, notes=notes, max_strips=max_rows)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _input_args(p: argparse.ArgumentParser) -> None:
    from .formats.registry import FORMATS, formats_help

    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="input layout (default: from the file suffix, then its keys / first record; a directory: "
                        "its framework's layout, else each file so; a format given reads every file of its "
                        "suffixes with it): " + formats_help())
    p.add_argument("--allow-pickle", action="store_true",
                   help="read pickles (vLLM RequestOutputs, verl DataProto) and torch files beyond plain tensors: "
                        "this RUNS CODE FROM THE FILE; only for files you trust (default: refused)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iwopd-kit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the whole pipeline on the bundled tiny models (real vLLM)")
    d.add_argument("--n", type=int, default=8, help="number of held-out prompts (default 8)")
    d.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default %(default)s)")
    d.add_argument("--max-tokens", type=int, default=ROLLOUT_MAX_TOKENS,
                   help="completion length limit (default %(default)s: ROLLOUT_MAX_TOKENS)")
    d.add_argument("--seed", type=int, default=0, help="rollout seed, row i uses seed + i (default %(default)s)")
    d.add_argument("--gamma", type=float, default=0.5, help="prefix-weight strength, 0 is plain OPD (default %(default)s)")
    d.add_argument("--html", default="reports/demo.html", help="where to write the HTML report")
    d.set_defaults(func=_demo)
    c = sub.add_parser("check", help="check a dump, or every dump under a directory, for token misalignment; exit 1 "
                                      "on an error finding, 2 on unreadable input (a directory: the worst file's code)")
    c.add_argument("path", help="a dump file, or a directory of them: a step directory or a run's export root (prime-rl "
                                "token_exports/step_N/rank_R.jsonl, the kit's step_N.jsonl, ...; one row per file and "
                                "per step)")
    _input_args(c)
    c.add_argument("--student", help="model dir that scores missing student log-probs and gives the student "
                                     "tokenizer (default for a missing series: the bundled tiny student)")
    c.add_argument("--teacher", help="model dir that scores missing teacher log-probs and gives the teacher "
                                     "tokenizer (default for a missing series: the bundled tiny teacher)")
    c.add_argument("--student-tokenizer", metavar="DIR",
                   help="a folder of tokenizer files only (tokenizer.json, tokenizer_config.json): the student's tokenizer "
                        "for the tokenizer and BOS/EOS checks, in place of the one in --student")
    c.add_argument("--teacher-tokenizer", metavar="DIR",
                   help="a folder of tokenizer files only: the teacher's tokenizer for the tokenizer check")
    c.add_argument("--device", default="cpu", help="device for --student/--teacher scoring (default cpu; e.g. cuda:0)")
    c.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the scoring models (default float32)")
    c.add_argument("--batch-size", type=_positive_int, default=32, help="rows per scoring forward pass (default 32)")
    c.add_argument("--group-by", metavar="KEY", help="group rows by meta[KEY] (per-group metrics, each finding's group); "
                                                      "default: the reader's groups (e.g. prime-rl's env_name)")
    c.add_argument("--json", help='write iwopd_kit.CheckResult.to_dict(): {"schema": 2, "format", "findings": [...], '
                                  '"metrics": {...}, "groups": {group: {...}}, "unchecked": {kind: reason}, "provenance": '
                                  '{series: source}, ...}; for a directory {"schema": 2, "steps": {...}, "files": '
                                  '{path: that object}}')
    c.add_argument("--html", help="write a self-contained HTML report with the per-token diff at each finding")
    c.add_argument("--max-findings", type=int, default=50, help="findings printed in the terminal (default 50)")
    c.set_defaults(func=_check)
    v = sub.add_parser("convert", help="convert a dump (any readable format) to the kit's JSONL")
    v.add_argument("src")
    v.add_argument("dst", help="the JSONL file to write")
    _input_args(v)
    v.set_defaults(func=_convert)
    from .run.cli import add_run_commands

    add_run_commands(sub, _input_args)              # scan, sql, gates
    from .apps.replay_io import add_replay_command

    add_replay_command(sub, _input_args)            # replay: one row on vLLM and transformers
    return p


def main(argv: list[str] | None = None) -> int:
    from .engines.envdefaults import RUN_ENV_DEFAULTS

    os.environ.setdefault("TOKENIZERS_PARALLELISM", RUN_ENV_DEFAULTS["TOKENIZERS_PARALLELISM"])
    args = build_parser().parse_args(argv)
    if argv is None and args.func is _check:      # the `iwopd-kit check` command itself, not a call from Python
        _lean_malloc()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
