"""Whether two versions of the kit give the same ``AlignmentReport``s: findings (kind, row, position, severity, text,
group), ``token_kinds``, ``explained``, ``checked``, ``row_lags``, stats, metrics, group metrics and the unchecked
classes, bit for bit, on every fixture under data/fixtures/ (the JSONL fixtures with their tokenizers, and each step of
the framework fixture runs), on generated re-ordered batches and one with ``kept_logmass``, and on the runs given with ``--run`` (each step, e.g.
the large steps of ``probe_check.py --data DIR``).

    cd /tmp && PYTHONPATH=OLD:REPO python -m benchmarks.same_reports dump old.pkl [--run DIR ...]  # OLD: the old iwopd_kit
    cd /tmp && PYTHONPATH=REPO python -m benchmarks.same_reports dump new.pkl [--run DIR ...]

(from outside the checkout: ``-m`` puts the working directory first on the path). Tokenizers named by a path
that exists are loaded; the others (``mistral_common:...``) are left out, on both sides alike.
    python -m benchmarks.same_reports compare old.pkl new.pkl
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "data" / "fixtures"


def _summary(rep) -> dict:
    return {"findings": [f.to_dict() for f in rep.findings], "token_kinds": rep.token_kinds, "explained": rep.explained,
            "checked": rep.checked, "row_lags": list(rep.row_lags), "stats": rep.stats, "metrics": rep.metrics,
            "group_metrics": rep.group_metrics, "unchecked": rep.unchecked, "reasons": rep.unchecked_reasons}


def _reordered(n_rows: int, length: int, moved: int, seed: int):
    """A batch of ``n_rows`` rows of ``length`` tokens whose first ``moved`` rows' rollout series are rotated by one
    row (class L), with rollout = student up to float32 noise elsewhere, and one group shifted by a token."""
    import iwopd_kit as K

    rng = np.random.default_rng(seed)
    lp = np.minimum(-rng.exponential(1.0, (n_rows, length)), -1e-6).astype(np.float32).astype(np.float64)
    student = (lp + (rng.random(lp.shape) - 0.5) * 4e-6).astype(np.float32).astype(np.float64)
    roll = lp.copy()
    roll[:moved] = np.roll(lp[:moved], 1, axis=0)
    lengths = rng.integers(length // 2, length + 1, n_rows)
    lengths[:moved] = length
    cut = lambda a: [row[:n].tolist() for row, n in zip(a, lengths)]  # noqa: E731
    return K.Batch(prompt_ids=[[1] * int(rng.integers(3, 9)) for _ in range(n_rows)],
                   completion_ids=cut(rng.integers(0, 1000, (n_rows, length))), rollout_logprobs=cut(roll),
                   student_logprobs=cut(student), groups=["AB"[b % 2] for b in range(n_rows)])


def _kept(n_rows: int, length: int, seed: int):
    """A batch whose rollout log-probs are renormalised over a kept set with ``kept_logmass`` recorded on every other
    token (the trainer series is student - kept_logmass there), a few rollout values at exactly 0.0."""
    import iwopd_kit as K

    rng = np.random.default_rng(seed)
    lp = np.minimum(-rng.exponential(1.0, (n_rows, length)), -1e-6)
    kept = -rng.exponential(0.05, (n_rows, length))
    roll = np.minimum(lp - kept, -1e-7).astype(np.float32).astype(np.float64)
    roll[:, ::37] = 0.0
    kept_rows = [[float(k) if j % 2 == 0 else None for j, k in enumerate(row)] for row in kept]
    return K.Batch(prompt_ids=[[1, 2, 3]] * n_rows, completion_ids=rng.integers(0, 1000, (n_rows, length)).tolist(),
                   rollout_logprobs=roll.tolist(), student_logprobs=lp.tolist(), kept_logmass=kept_rows,
                   groups=["AB"[b % 2] for b in range(n_rows)])


def dump(out: Path, runs: list[str]) -> None:
    import iwopd_kit as K
    from iwopd_kit.run.batches import read_step
    from iwopd_kit.run.steps import find_steps

    print(f"iwopd_kit from {K.__file__}", file=sys.stderr)
    res = {}
    for path in sorted(FIXTURES.glob("*.jsonl")) + sorted((FIXTURES / "chat").glob("*.jsonl")):
        batch = K.read_jsonl(path)
        info = (batch.meta[0] or {}).get("fixture", {}) if batch.meta else {}
        extra = {k: K.load_tokenizer(ROOT / info[k]) for k in ("student_tokenizer", "teacher_tokenizer")
                 if k in info and (ROOT / info[k]).exists()}
        extra.update({k: info[k] for k in ("num_items", "reduction") if k in info})
        res[str(path.relative_to(ROOT))] = _summary(K.check_alignment(batch, **extra))
    dirs = [d for fw in ("nemorl", "primerl", "slime") for d in sorted((FIXTURES / fw).iterdir()) if d.is_dir()]
    for run in dirs + [Path(r) for r in runs]:
        for sf in find_steps(run)[0]:
            batch = read_step(list(sf.dumps), [str(d.path) for d in sf.dumps])[0]
            if batch is not None:
                res[f"{run} step {sf.step}"] = _summary(K.check_alignment(batch))
    for n_rows, length, moved in ((16, 40, 4), (96, 700, 40), (600, 300, 256)):
        res[f"reordered {n_rows}x{length} ({moved} moved)"] = _summary(K.check_alignment(_reordered(n_rows, length, moved, 0)))
    res["kept_logmass 40x300"] = _summary(K.check_alignment(_kept(40, 300, 0)))
    out.write_bytes(pickle.dumps(res))
    print(f"{len(res)} reports -> {out}", file=sys.stderr)


def compare(a: Path, b: Path) -> int:
    import torch

    old, new = pickle.loads(a.read_bytes()), pickle.loads(b.read_bytes())
    bad = 0
    if set(old) != set(new):
        print(f"different inputs: {sorted(set(old) ^ set(new))}")
        bad += 1
    for name in sorted(set(old) & set(new)):
        for key, x in old[name].items():
            y = new[name][key]
            same = (torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                    else pickle.dumps(x) == pickle.dumps(y))
            if not same:
                print(f"DIFFERENT {name}: {key}")
                bad += 1
    n_find = sum(len(r["findings"]) for r in old.values())
    print(json.dumps({"reports": len(old), "findings": n_find, "differences": bad}))
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out", type=Path)
    d.add_argument("--run", action="append", default=[])
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.cmd == "dump":
        dump(args.out, args.run)
    else:
        sys.exit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
