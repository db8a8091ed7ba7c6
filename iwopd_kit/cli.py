"""``iwopd-kit``: the command line.

``iwopd-kit demo``  — the whole pipeline on the bundled tiny models with real vLLM rollouts;
prints a per-token table and a summary, writes a self-contained HTML report.
``iwopd-kit check`` — the alignment check on a dump or a directory of dumps (JSONL, prime-rl
token export, TRL or verl torch file, OpenAI / TRL-client JSON; pickles only with
``--allow-pickle``); scores missing student / teacher series with local models; exit 1 on an
error finding, 2 on unreadable input.
``iwopd-kit convert IN OUT`` — any readable dump -> the kit's JSONL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .formats.registry import FORMATS as FORMAT_CHOICES  # the readers' table (the old name, kept)
from .rescore import DTYPES, device_error, recompute  # scoring a dump's missing series

JSON_SCHEMA = 1
"""Version of the ``check --json`` object."""


def _demo(args: argparse.Namespace) -> int:
    from .pipeline import report_html, run_pipeline, summary_text, token_table

    result = run_pipeline(n_prompts=args.n, temperature=args.temperature, seed=args.seed, gamma=args.gamma,
                          max_tokens=args.max_tokens)
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
    """A tqdm bar on stderr, shown only when stderr is a terminal or the dump has > 1000 rows."""

    def __init__(self, total: int, rows: int) -> None:
        self.bar = None
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


_recompute = recompute   # the old private name, kept


def _unchecked(report) -> dict[str, str]:
    """``{kind: reason}`` for the classes the report could not check."""
    if isinstance(report.unchecked, dict):
        return dict(report.unchecked)
    reasons = getattr(report, "unchecked_reasons", {}) or {}
    return {k: reasons.get(k, "inputs missing") for k in report.unchecked}


def check_object(report) -> dict:
    """One file's ``--json`` object: ``{"schema": 1, "findings", "metrics", "unchecked"}``."""
    return {"schema": JSON_SCHEMA, "findings": report.to_dicts(), "metrics": dict(getattr(report, "metrics", {}) or {}),
            "unchecked": _unchecked(report)}


def _check_file(path, args: argparse.Namespace, progress: _Progress | None, models: dict):
    """Read, rescore and check one dump: ``(exit code, batch, report, tokenizer, notes, error)``."""
    from .alignment import check_alignment
    from .batch import BatchError
    from .formats.load import load_any

    try:
        batch = load_any(path, args.format, allow_pickle=args.allow_pickle)
    except (BatchError, OSError) as e:
        return 2, None, None, None, [], str(e)
    passes = int(not batch.has("student_logprobs")) + int(not batch.has("teacher_logprobs"))
    own = progress is None
    progress = _Progress(total=batch.size * (passes + 1), rows=batch.size) if own else progress
    try:
        batch, student_tok, teacher_tok, notes = _recompute(batch, args, progress, models)
    except (BatchError, OSError, ValueError, RuntimeError) as e:
        if own:
            progress.close()
        return 2, batch, None, None, [], str(e)
    report = check_alignment(batch, student_tokenizer=student_tok, teacher_tokenizer=teacher_tok)
    if own:
        progress.step(batch.size, "checked")
        progress.close()
    return (0 if report.ok else 1), batch, report, student_tok or teacher_tok, notes, None


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
    error = device_error(args.device)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if Path(args.path).is_dir():
        return _check_dir(args)
    from .views.alignment import finding_counts
    from .views.mismatch import batch_delta, mismatch_text
    from .views.report import text_table

    code, batch, report, tokenizer, notes, error = _check_file(args.path, args, None, {})
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.path}: {batch.size} rows, {int(batch.valid().sum())} valid tokens")
    for note in notes:
        print(f"note: {note}")
    if report.findings:
        header, rows = finding_counts(report)
        print(text_table(header, rows))
        print()
        shown = report.findings[: args.max_findings]
        print(text_table(["severity", "kind", "row", "position", "message"],
                         [[f.severity, f.kind, f.row, f.position, f.message] for f in shown]))
        if len(report.findings) > len(shown):
            print(f"... {len(report.findings) - len(shown)} more finding(s); write them all with --json")
    else:
        print("no findings")
    print()
    print(mismatch_text(report.metrics, batch_delta(batch), report.unchecked_reasons.get("mismatch")))
    print()
    if report.unchecked:
        print("not checked (inputs missing): " + report.unchecked_text())
        if {"tokenizer_mismatch", "bos_eos"} & set(report.unchecked):
            print("(pass --student DIR and --teacher DIR, or --student-tokenizer DIR and --teacher-tokenizer DIR, "
                  "to check the tokenizers and BOS/EOS)")
    html = _check_html(args.path, batch, report, tokenizer, notes=notes) if args.html else None
    return _write_outputs(args, check_object(report), html) or code


def _check_dir(args: argparse.Namespace) -> int:
    """Every dump under a directory (many ranks and steps): one summary row per file, the worst exit code."""
    from .batch import BatchError
    from .formats.registry import dump_files
    from .views.report import html_page, html_table, text_table

    try:
        paths = dump_files(args.path)
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar = _FileBar(len(paths))
    inner = _Progress(total=0, rows=0)            # no per-row bar inside a directory run
    models: dict = {}
    rows, objs, worst = [], {}, 0
    noted: dict[str, list[str]] = {}
    for p in paths:
        name = str(p.relative_to(args.path))
        bar.step(name)
        code, batch, report, _, notes, error = _check_file(p, args, inner, models)
        worst = max(worst, code)
        if error is not None:
            objs[name] = {"schema": JSON_SCHEMA, "error": error, "findings": [], "metrics": {}, "unchecked": {}}
            rows.append([name, "-", "-", "-", "-", None, None, "unreadable", code])
            print(f"error: {error}", file=sys.stderr)
            continue
        objs[name] = check_object(report)
        errors = sum(f.severity == "error" for f in report.findings)
        kinds = sorted({f.kind for f in report.findings})
        m = report.metrics
        rows.append([name, batch.size, int(batch.valid().sum()), errors, len(report.findings) - errors,
                     _sci(m.get("mismatch/k3_kl")), _sci(m.get("mismatch/token_mult_prob_error")),
                     ", ".join(kinds) or "-", code])
        for note in notes:
            noted.setdefault(note, []).append(name)
    bar.close()
    header = ["file", "rows", "tokens", "errors", "warnings", "k3_kl", "token_mult_prob_error", "kinds", "exit"]
    print(f"{args.path}: {len(paths)} dump file(s)")
    print(text_table(header, rows))
    for note, names in noted.items():            # once per distinct note, not once per rank and step
        where = names[0] if len(names) == 1 else f"{len(names)} files, first {names[0]}"
        print(f"note ({where}): {note}")
    print("per-file findings: iwopd-kit check FILE, or all of them with --json")
    html = html_page(f"alignment check: {Path(args.path).name}", [("files", html_table(header, rows))]) if args.html else None
    return _write_outputs(args, {"schema": JSON_SCHEMA, "files": objs}, html) or worst


def _sci(x: float | None) -> str | None:
    """A metric cell as the single-file table writes it; None (drawn —) when not computed."""
    from .views.mismatch import metric_text

    return None if x is None else metric_text(x)


class _FileBar:
    """A tqdm bar over the files of a directory, on stderr when it is a terminal."""

    def __init__(self, total: int) -> None:
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, file=sys.stderr, unit="file", leave=False, desc="check")

    def step(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description(desc[-40:])
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _convert(args: argparse.Namespace) -> int:
    """``iwopd-kit convert IN OUT``: any readable dump -> the kit's JSONL."""
    from .batch import BatchError, write_jsonl
    from .formats.load import load_any

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
                   help="input layout (default: from the file suffix, then its keys / first record): " + formats_help())
    p.add_argument("--allow-pickle", action="store_true",
                   help="read pickles (vLLM RequestOutputs, verl DataProto) and torch files beyond plain tensors: "
                        "this RUNS CODE FROM THE FILE; only for files you trust (default: refused)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iwopd-kit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the whole pipeline on the bundled tiny models (real vLLM)")
    d.add_argument("--n", type=int, default=8, help="number of held-out prompts (default 8)")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--max-tokens", type=int, default=48)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--gamma", type=float, default=0.5)
    d.add_argument("--html", default="reports/demo.html", help="where to write the HTML report")
    d.set_defaults(func=_demo)
    c = sub.add_parser("check", help="check a dump, or every dump under a directory, for token misalignment; exit 1 "
                                      "on an error finding, 2 on unreadable input (a directory: the worst file's code)")
    c.add_argument("path", help="a dump file, or a directory of them (e.g. prime-rl's token_exports/: one row per file)")
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
    c.add_argument("--json", help='write {"schema": 1, "findings": [...], "metrics": {...}, "unchecked": {kind: '
                                  'reason}}; for a directory {"schema": 1, "files": {path: that object}}')
    c.add_argument("--html", help="write a self-contained HTML report with the per-token diff at each finding")
    c.add_argument("--max-findings", type=int, default=50, help="findings printed in the terminal (default 50)")
    c.set_defaults(func=_check)
    v = sub.add_parser("convert", help="convert a dump (any readable format) to the kit's JSONL")
    v.add_argument("src")
    v.add_argument("dst", help="the JSONL file to write")
    _input_args(v)
    v.set_defaults(func=_convert)
    from .replay_io import add_replay_command

    add_replay_command(sub, _input_args)            # replay: one row on vLLM and transformers
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if argv is None and args.func is _check:      # the `iwopd-kit check` command itself, not a call from Python
        _lean_malloc()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
