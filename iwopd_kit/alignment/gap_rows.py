"""Gap-based detectors, row by row: a row's rollout values belong to other tokens or another row.

Class A (offset: the values are shifted by d tokens), L (ordering: they are another row's) and
F (padding: the student was scored under left padding with the wrong positions). Each is a
``find_*(ctx)`` over a :class:`~iwopd_kit.alignment.core.Context`; each reads the open policy tokens
(``ctx.open()``) and explains the tokens it reports (a shifted segment, a re-ordered or padded row's
tokens, a 0.0 padding value), so the later gap detectors leave those tokens out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..batch import ROLLOUT_LOGPROBS
from ..batch.blocks import masked, nanmean_rows, row_blocks, series_rows
from .context import Context
from .core import Finding, gap_text
from .lags import fit_shifts
from .tensors import first_true, row_mask
from .zeros import group_floors, lone_final_eos, placeholder_text, zero_ambiguous, zero_placeholders


def find_offset(ctx: Context) -> list[Finding]:
    """Class A: per segment of the policy mask, the shift d that best matches rollout to trainer log-probs.

    A segment shifted by d has token j carrying the log-prob of token j + d (the lag scan's internal lag
    is k = -d). Reads the open policy tokens; pairs never cross a masked hole (a multi-turn row's turns
    are fitted one by one). Candidates: every k in [-K, K] (``tol.max_lag``) and, per row, the shifts its
    prompt length suggests (``prompt_length_lags``), which catch slicing bugs of any size. The rule is
    :func:`~iwopd_kit.alignment.lags.fit_shifts`; its per-row summary goes to ``ctx.row_lags`` (the
    report's ``row_lags``, which the diff view shows). A flagged segment's tokens are explained.

    Tokens the scan leaves alone are still reported when they carry a rollout log-prob of exactly 0.0 that
    no certain or nucleus-of-one token explains (:func:`~iwopd_kit.alignment.zeros.zero_placeholders`,
    with the group's recorded or estimated top_p): the padding value of a rollout series that is shorter
    than, or shifted against, its completion (TRL pads rollout log-probs with 0.0); those tokens are
    explained as offsets. A row's final EOS is left to the BOS/EOS check when a tokenizer names it (an
    EOS appended by hand).
    """
    shifts = fit_shifts(ctx)
    ctx.row_lags = shifts.row_lags()
    p = ctx.batch.prompt_lengths
    turns: dict[int, list[int]] = {}
    for i, (b, _, _) in enumerate(shifts.segments):
        turns.setdefault(b, []).append(i)
    cols = torch.arange(ctx.batch.width)[None, :]
    rows = torch.arange(ctx.batch.size)[:, None]
    short = _adopted_text(shifts, turns)
    out = []
    for i in shifts.seg_flagged.nonzero().flatten().tolist():
        b, start, end = shifts.segments[i]
        d, e0, e_best = -int(shifts.seg_best_k[i]), float(shifts.seg_e0[i]), float(shifts.seg_e_best[i])
        where = ""
        if len(turns[b]) > 1:
            where = f" in turn {turns[b].index(i) + 1} of {len(turns[b])} (positions {start}-{end - 1}; pairs stay inside the turn)"
        spans = [(start, end)] + [(s0, e1) for s0, e1 in short.get(i, ([], ""))[0]]
        for s0, e1 in spans:
            ctx.mark("offset", ctx.policy & (rows == b) & (cols >= s0) & (cols < e1))
        out.append(Finding(
            "offset", b, start, "error",
            f"rollout log-probs are shifted by {d:+d} token(s){where}: token j carries the log-prob of token j{d:+d} "
            f"(mean gap {gap_text(e0)} as stored, {gap_text(e_best)} with the shift undone){short.get(i, ([], ''))[1]}; "
            f"{offset_fix(d, p[b], min(p), max(p))}",
        ))
    return sorted(out + _zero_padded_rows(ctx), key=lambda f: (f.row, f.position))


def _adopted_text(shifts, turns: dict[int, list[int]]) -> dict[int, tuple[list[tuple[int, int]], str]]:
    """The short turns that take their row's shift (``Shifts.seg_adopted``), per flagged segment they join (the
    row's largest one with that shift): ``{segment: ([(start, end), ...], message tail)}``. Such a turn's whole
    span is the finding's, its first (or last) token too, whose shifted partner lies outside the turn."""
    out: dict[int, tuple[list[tuple[int, int]], str]] = {}
    size = [e - s for _, s, e in shifts.segments]
    for i in shifts.seg_adopted.nonzero().flatten().tolist():
        b, start, end = shifts.segments[i]
        k = int(shifts.seg_best_k[i])
        host = max((j for j in turns[b] if bool(shifts.seg_flagged[j]) and int(shifts.seg_best_k[j]) == k),
                   key=lambda j: size[j])
        spans, text = out.get(host, ([], ""))
        text += (f"; turn {turns[b].index(i) + 1} of {len(turns[b])} (positions {start}-{end - 1}) is too short to fit a "
                 f"shift of its own and carries the same one (mean gap {gap_text(float(shifts.seg_e0[i]))} as stored, "
                 f"{gap_text(float(shifts.seg_e_best[i]))} on its pairs inside the turn with the shift undone; its "
                 "token whose shifted partner lies across the masked hole is this finding's too)")
        out[host] = (spans + [(start, end)], text)
    return out


def offset_fix(d: int, prompt: int, shortest: int, longest: int) -> str:
    """The suggested fix for a row shifted by ``d`` (token j carries the log-prob of token j + d).

    A shift equal to the row's prompt-length difference to the batch's shortest or longest prompt
    is a batch-wide prompt-length slice (TRL's review bug 1). A one-token shift that is not is most
    likely a next-token off-by-one (the log-prob of token t read from the logits at position t, which
    predict token t + 1, or the other way round) or a BOS missing on one side or added on the other.
    """
    fix = "index the rollout log-probs by completion position per row"
    below, above = prompt - shortest, longest - prompt
    if abs(d) in {x for x in (below, above) if x > 0}:
        which = (f"its prompt is {below} token(s) longer than the batch's shortest ({prompt} vs {shortest})"
                 if abs(d) == below else f"its prompt is {above} token(s) shorter than the batch's longest ({prompt} vs {longest})")
        return (f"the shift equals this row's prompt-length difference: {which}, so the rollout log-probs were "
                f"sliced at a batch-wide prompt length; {fix}, from each row's own prompt length")
    if abs(d) == 1:
        return ("a one-token shift is most likely a next-token off-by-one, not a prompt-length slice: the logits at "
                "position t score token t + 1 (a completion after a P-token prompt starts at logit P - 1), so scoring "
                "token t with the logits at position t instead of t - 1 (slicing from P instead of P - 1, or the other "
                "way round) moves every value by one, and so does a BOS missing on one side or added on the other; "
                f"check where each side's completion log-probs start and {fix}")
    return f"{fix}, and check how each row's completion span is found (prompt length, padding side, BOS/EOS)"


def _zero_padded_rows(ctx: Context) -> list[Finding]:
    """Offset findings for the open tokens that carry 0.0 padding values (errors) or a 0.0 that no recorded setting
    tells from a nucleus of one (warnings); those tokens are explained."""
    batch = ctx.batch
    zero = zero_placeholders(batch, ctx.tol, ctx=ctx)
    doubt = zero_ambiguous(ctx) & ~zero
    eos = getattr(ctx.tokenizer, "eos_token_id", None)
    if eos is not None:               # a lone 0.0 on the final EOS is the BOS/EOS check's (appended by hand)
        lone = zero & lone_final_eos(batch, zero, eos)[:, None]
        ctx.mark("bos_eos", lone)
        zero &= ~lone
    if not bool((zero | doubt).any()):
        return []
    floors = group_floors(ctx)
    group = {}
    for name, rows in ctx.groups():
        group.update({b: name for b in rows.nonzero().flatten().tolist()})
    ctx.mark("offset", zero | doubt)
    out = []
    for mask, sev in ((zero, "error"), (doubt, "warning")):
        first, count = first_true(mask), mask.sum(1)
        for b in (count > 0).nonzero().flatten().tolist():
            j = int(first[b])
            head = (f"{int(count[b])} valid token(s) carry a rollout log-prob of exactly 0.0 (first at position {j}, where "
                    f"the trainer gives {float(ctx.trainer_rows([b])[0, j]):.3g}; {placeholder_text(batch, floors[group[b]])})")
            if sev == "error":
                text = (f"{head}: padding values on real tokens, as when a rollout series shorter than its completion, or "
                        "shifted against it, is padded with 0.0 (TRL pads rollout log-probs with 0.0); index the rollout "
                        "log-probs by completion position per row and check each row's length against its completion")
            else:
                text = (f"{head}: a nucleus of one under top-p (healthy: p >= top_p) or a 0.0 padding value on a likely "
                        "token; record the sampling settings (top_p, top_k, logprobs_mode) with the dump to tell")
            out.append(Finding("offset", b, j, sev, text))
    return out


# ------------------------------------------------------------------------------------- L: ordering
PAIRWISE_ELEMENTS = 1 << 18
"""Elements per [c, B, probe] temporary of :func:`_pairwise_gap` (2 MB in float64)."""


def _pairwise_gap(rows: Tensor, student: Tensor, max_elems: int = PAIRWISE_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Mean |rows[i, j] - student[c, j]| over the j where both have values, for every pair (i, c).

    ``rows`` [C, L], ``student`` [B, L] (NaN = no value). Returns ``(err [C, B], n [C, B])``; the
    work is split into chunks of candidate rows so that no temporary exceeds ``max_elems``.
    """
    C, L = rows.shape
    B = student.shape[0]
    step = max(1, max_elems // max(1, B * L))
    errs, ns = [], []
    for i in range(0, C, step):
        d = (rows[i : i + step, None, :] - student[None, :, :]).abs_()  # [c, B, L]
        ok = ~d.isnan()
        n = ok.sum(-1)
        ns.append(n)
        errs.append(d.masked_fill_(~ok, 0.0).sum(-1) / n)
    return torch.cat(errs), torch.cat(ns)


def _confirm(ctx: Context, opened: Tensor, idx: Tensor, best: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Over the full rows, per candidate ``idx[i]`` against its partner ``best[i]``: the number of token pairs with
    both values, the mean and the max |rollout[idx] - trainer[best]| over them (``(n, mean, max)``, [C] each; NaN
    mean for none, 0 max), computed per block of rows (no [C, L] float64 copy of the batch)."""
    nan = float("nan")
    checked = ctx.checked
    ns, means, maxs = [], [], []
    for rows in row_blocks(ctx.batch.size, ctx.batch.width):
        here = ((idx >= rows.start) & (idx < rows.stop)).nonzero().flatten()
        if here.numel() == 0:
            continue
        c, p = idx[here], best[here]
        r = series_rows(ctx.batch, ROLLOUT_LOGPROBS, c.tolist()).masked_fill_(~opened[c], nan)
        d = r.sub_(ctx.trainer_rows(p.tolist()).masked_fill_(~checked[p], nan)).abs_()
        ns.append((~d.isnan()).sum(1))
        means.append(nanmean_rows(d))
        maxs.append(d.nan_to_num_(nan=0.0).max(dim=1).values)
    return torch.cat(ns), torch.cat(means), torch.cat(maxs)


def find_ordering(ctx: Context) -> list[Finding]:
    """Class L: rows re-ordered or regrouped between the rollout and the trainer.

    Reads the open policy tokens. Candidates are the rows whose rollout series disagrees with their own
    trainer series at lag 0
    (mean |gap| > ``tol.same``). A candidate is explained when the student series of *another* row
    matches its rollout series ``tol.lag_gain`` times better (and within ``tol.rounding`` on every token) over at
    least 90% of its values. Reported when at least two rows are explained (a re-order moves two
    rows at least); the message gives the mapping rollout row -> trainer row. Cost: a vectorised
    [C, B, 256] comparison on the first 256 positions, in chunks of :data:`PAIRWISE_ELEMENTS`, picks each
    candidate's best partner, one comparison of the full rows per block of rows confirms it (nothing on a
    healthy batch); no [B, L] float64 copy beyond the context's cached series.
    """
    batch, tol = ctx.batch, ctx.tol
    opened = ctx.open()
    n_r = opened.sum(1)
    e0 = ctx.row_abs_gap(opened)
    cand = (e0 > tol.same) & (n_r >= tol.min_tokens_for_lag)
    idx = cand.nonzero().flatten()
    if idx.numel() < 2:
        return []
    nan = float("nan")
    # every pair on the first `probe` columns picks each candidate's best partner; the full rows confirm it
    probe = min(batch.width, 256)
    r = series_rows(batch, ROLLOUT_LOGPROBS, idx.tolist(), width=probe).masked_fill_(~opened[idx, :probe], nan)
    s = ctx.trainer_rows(slice(None), width=probe).masked_fill_(~ctx.checked[:, :probe], nan)
    err, _ = _pairwise_gap(r, s)
    del r, s
    err[torch.arange(idx.numel()), idx] = float("inf")                      # not itself
    best = torch.nan_to_num(err, nan=float("inf")).argmin(dim=1)
    n, best_err, best_max = _confirm(ctx, opened, idx, best)
    need = torch.clamp(torch.ceil(0.9 * n_r[idx].double()), min=tol.min_tokens_for_lag)
    best_err = torch.where(best_err.isnan() | (n < need) | (best == idx), torch.full_like(best_err, float("inf")), best_err)
    # a moved row matches its partner token by token, within rounding (the *max*, not the mean: two confident rows
    # with mostly near-0 log-probs have a small mean gap without being the same series)
    matched = (best_err * tol.lag_gain <= e0[idx]) & (best_max <= tol.rounding)
    if int(matched.sum()) < 2:
        return []
    pairs = [(int(idx[i]), int(best[i]), float(e0[idx[i]]), float(best_err[i])) for i in matched.nonzero().flatten().tolist()]
    ctx.mark("ordering", opened & row_mask(batch.size, {b for b, _, _, _ in pairs})[:, None])
    targets = [c for _, c, _, _ in pairs]
    how = "a permutation" if len(set(targets)) == len(targets) else "regrouped: several rows map to one"
    mapping = ", ".join(f"{b}->{c}" for b, c, _, _ in pairs[:12]) + (", ..." if len(pairs) > 12 else "")
    return [Finding(
        "ordering", b, 0, "error",
        f"rollout row {b} carries the log-probs of row {c} (mean gap {gap_text(g0)} against its own student series, "
        f"{gap_text(gc)} against row {c}'s): rows were re-ordered between rollout and training ({how}; rollout row -> "
        f"trainer row: {mapping}); carry a row id (prompt uid + sample index) through gathering, grouping and "
        "sharding, and restore the order by it before pairing series",
    ) for b, c, g0, gc in pairs]


# -------------------------------------------------------------------------------------- F: padding
def find_padding(ctx: Context) -> list[Finding]:
    """Class F: a gap that appears only in rows whose prompt was left-padded, growing with the pad amount.

    Needs only the prompt lengths (of at least two sizes): row b is padded by ``pad_b = max(P) - P_b``
    tokens in a left-padded batch. Signature of a student scored under left padding without position
    ids (or a wrong next-token shift there): every row with ``pad_b = 0`` agrees, every row with
    ``pad_b > 0`` does not, and with two or more pad amounts the row gap is positively correlated with
    ``pad_b``. "Agrees" is judged at the batch's precision, which the unpadded rows show
    (:meth:`~iwopd_kit.alignment.core.Context.low_precision` on their tokens, or the recorded dtypes):
    at float32 an unpadded row agrees to ``tol.same / tol.lag_gain`` (healthy float32 rows: ~1e-7) and a
    padded row disagrees beyond ``tol.same``; under bf16 rounding every row has a gap of its own, so a
    padded row must exceed ``tol.lag_gain`` times the unpadded rows' mean gap (and ``tol.lag_gain *
    tol.same``): without that, a batch whose one unpadded row happens to hold near-certain tokens looks
    padded (seen on 4-row bf16 rollouts of the tiny student). Reads the open policy tokens; explains the
    padded rows' open tokens.
    """
    batch, tol = ctx.batch, ctx.tol
    P = torch.tensor(batch.prompt_lengths)
    pad_amt = P.max() - P
    valid = ctx.open()
    row_gap = ctx.row_abs_gap(valid)
    has = ~row_gap.isnan()
    zero, padded = has & (pad_amt == 0), has & (pad_amt > 0)
    if not (bool(zero.any()) and bool(padded.any())):
        return []
    ref = masked(ctx.full_gap(), valid & zero[:, None]).abs_()        # |gap| on the unpadded rows' tokens (finite)
    if ctx.low_precision(ref):
        noise = max(tol.same, float(ref.mean()))
        if not bool((row_gap[padded] > tol.lag_gain * noise).all()):
            return []
    elif bool((row_gap[zero] > tol.same / tol.lag_gain).any()) or not bool((row_gap[padded] > tol.same).all()):
        return []
    x, y = pad_amt[padded].double(), row_gap[padded]
    if x.unique().numel() >= 2:
        rho = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
        if not rho > 0:
            return []
    fg = ctx.full_gap()
    first = first_true(valid & torch.cat([fg[r].abs() > tol.same for r in row_blocks(batch.size, batch.width)]))
    n_zero = int(zero.sum())
    ctx.mark("padding", valid & padded[:, None])
    return [Finding(
        "padding", b, int(first[b]), "error",
        f"row {b} is left-padded by {int(pad_amt[b])} token(s) and its student log-probs differ from the rollout's "
        f"(mean gap {float(row_gap[b]):.3g}), while the {n_zero} unpadded row(s) agree and the gap grows with the pad "
        "amount: the student was scored under left padding with the wrong positions; pass position_ids = "
        "cumsum(attention_mask) - 1 (clamped at 0), or score right-padded rows, and take the logits of token j "
        "at column (first real column) + P_b + j - 1",
    ) for b in padded.nonzero().flatten().tolist()]


__all__ = ["find_offset", "find_ordering", "find_padding"]
