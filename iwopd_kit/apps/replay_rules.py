"""The verdict of a replayed row (:func:`diagnose`): where the engines and the stored series first part, and why.

Inputs are per-token series [L] in completion coordinates (position j = the j-th generated token), float64,
NaN where a value is missing: the vLLM replay (T = 1), the transformers replays at the settings the batch
mentions, the stored rollout / trainer series, the tokens that count. :mod:`iwopd_kit.apps.replay` computes them;
this module only decides, so its rules are tested on synthetic rows.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..alignment.lags import lag_scan
from ..alignment.tolerances import Tolerances

RAW = (1.0, 1.0, 0)
"""Replay settings (temperature, top_p, top_k) of an untempered, untruncated log-prob."""
FIT_RANGE = (0.05, 4.0)
"""Temperatures :func:`fit_temperature` searches."""
FIT_TOKENS = 64
"""Tokens a fit uses (the first counted ones); the fitted temperature is then checked on every counted token."""


def settings_text(s: dict[str, Any]) -> str:
    text = f"T={s['temperature']:g}"
    if s.get("top_p", 1.0) < 1.0:
        text += f",top_p={s['top_p']:g}"
    if s.get("top_k", 0):
        text += f",top_k={s['top_k']}"
    return text


# ----------------------------------------------------------------------------------- the decision
def _first(mask: torch.Tensor) -> int | None:
    idx = mask.nonzero()
    return int(idx[0]) if len(idx) else None


def _shift(x: torch.Tensor, ref: torch.Tensor, start: int, tolerance: float, tol: Tolerances) -> int | None:
    """The shift d (token j carries the value of token j + d, |d| <= max_lag) that makes ``x[j >= start]``
    match ``ref``: mean |gap| within ``tolerance``, ``lag_gain`` x better than unshifted, at least
    ``min_tokens_for_lag`` pairs; None when none does."""
    x = x.clone()
    x[:start] = float("nan")
    lags, err = lag_scan(x[None], ref[None], torch.ones(1, len(x), dtype=torch.bool), tol.max_lag)
    err = err[0]
    at0 = float(err[lags == 0])
    best, best_err = None, math.inf
    for k, e in zip(lags.tolist(), err.tolist()):
        if k == 0 or math.isnan(e) or abs(k) >= len(x):
            continue
        a, b = (x[k:], ref[: len(x) - k]) if k >= 0 else (x[: len(x) + k], ref[-k:])
        pairs = int((a.isfinite() & b.isfinite()).sum())
        if pairs >= tol.min_tokens_for_lag and e < best_err:
            best, best_err = -k, e
    if best is None or best_err > tolerance or not at0 >= tol.lag_gain * best_err:
        return None
    return best


def fit_temperature(x: torch.Tensor, replay_at: Callable[[float], torch.Tensor]) -> float:
    """The temperature T in :data:`FIT_RANGE` whose replay ``replay_at(T)`` (the same tokens as ``x``) is nearest
    ``x`` in mean |gap|: a geometric grid of 41 points, then golden-section search between the best one's neighbours."""
    def err(t: float) -> float:
        return float((x - replay_at(t)).abs().mean())

    lo, hi = (math.log(v) for v in FIT_RANGE)
    grid = [math.exp(lo + (hi - lo) * i / 40) for i in range(41)]
    errs = [err(t) for t in grid]
    i = min(range(len(grid)), key=errs.__getitem__)
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = err(c), err(d)
    for _ in range(40):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = err(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = err(d)
    return c if fc <= fd else d


def diagnose(vllm: torch.Tensor, replays: dict[tuple, torch.Tensor], stored: dict[str, torch.Tensor | None],
             counted: torch.Tensor, recorded: dict[str, tuple], tolerance: float, tol: Tolerances = Tolerances(),
             sampling_temperature: float | None = None,
             replay_at: Callable[[float, torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """The verdict on one row: ``{"first_divergence", "cause", "side", "verdict", "shift"}``.

    ``vllm`` [L]: vLLM's replay at T = 1; ``replays``: the transformers replay [L] per setting
    (temperature, top_p, top_k), :data:`RAW` among them; ``stored``: the stored ``rollout`` / ``trainer``
    series [L] (NaN = missing; None = not stored); ``counted`` [L] bool: the tokens a stored series is
    compared on; ``recorded``: each stored series' settings; ``sampling_temperature``: the rollout's.
    Rules, in order: the engines part -> ``numerics`` (engines). A stored series parts from both engines
    at its recorded settings -> ``plumbing:temperature`` when it matches the replay at another setting
    the batch mentions or at a temperature fitted with ``replay_at(T, positions)`` (the transformers replay
    at T on those tokens); else ``plumbing:padding`` (a 0.0, a non-finite value or a repeated constant
    where the engines give another); ``plumbing:shift d``; ``numerics`` (stored side: a structureless gap
    within ``rounding`` while every engine is float32); else ``plumbing:unexplained``. Both series agree
    with the engines at their own recorded settings, but those differ in temperature and the series part
    -> ``plumbing:temperature``. Else ``agree``.
    """
    raw = replays[RAW]
    drift = (vllm - raw).abs()
    j = _first(drift > tolerance)
    if j is not None:
        return dict(first_divergence=j, cause="numerics", side="engines", shift=None, verdict=(
            f"the engines part at position {j}: vLLM {vllm[j]:.6f} vs transformers {raw[j]:.6f} (|drift| "
            f"{drift[j]:.3g} > {tolerance:g}, max {drift.max():.3g}): numerics (engines), whatever the stored data say"))
    drift_text = f"the engines agree (max |drift| {drift.max():.3g} <= {tolerance:g})"
    gaps, apart = {}, {}
    for name, x in stored.items():
        if x is not None:
            refs = [vllm, raw] if recorded[name] == RAW else [replays[recorded[name]]]
            gaps[name] = torch.stack([(x - r).abs() for r in refs]).min(0).values
            first = _first(counted & (gaps[name] > tolerance))     # NaN (not stored) never parts; +-inf always does
            if first is not None:
                apart[name] = first
    if not apart:
        return _pair_check(stored, counted, recorded, tolerance, drift_text, sampling_temperature)
    name = min(apart, key=lambda n: (apart[n], n != "rollout"))
    j, x, s = apart[name], stored[name], recorded[name]
    ref = vllm if s == RAW and name == "rollout" else replays[s]
    where = _stext(s)
    both = f"vLLM {vllm[j]:.6f}, transformers {raw[j]:.6f}" if s == RAW else f"transformers at {where} {ref[j]:.6f}"
    others = "".join(f" (the stored {n} too, from position {p})" for n, p in apart.items() if n != name)
    head = f"{drift_text}; the stored {name} parts from them at position {j}: stored {x[j]:.6f} vs {both}{others}"
    base = dict(first_divergence=j, side=f"stored {name}", shift=None)
    use = counted & x.isfinite()
    for c, r in replays.items():                                   # a temperature the batch mentions
        if c != s and not bool(((x - r).abs() > tolerance)[use].any()):
            return dict(base, cause="plumbing:temperature", verdict=(
                f"{head}: the stored {name} matches the replay at {_stext(c)}, but the batch records it at {where}: "
                "plumbing (temperature)"))
    if replay_at is not None and s[1:] == RAW[1:] and int(use.sum()) >= tol.min_tokens_for_lag:
        idx = use.nonzero().flatten()
        t = fit_temperature(x[idx[:FIT_TOKENS]], lambda T: replay_at(T, idx[:FIT_TOKENS]))
        if abs(t - s[0]) > 1e-3 and not bool(((x[idx] - replay_at(t, idx)).abs() > tolerance).any()):
            return dict(base, cause="plumbing:temperature", verdict=(
                f"{head}: the stored {name} matches the replay at T={t:.3f} (fitted: no temperature the batch records "
                f"gives it), but the batch records it at {where}: plumbing (temperature)"))
    nxt = _first(counted[j + 1:] & (gaps[name][j + 1:] > tolerance))
    if x[j] == 0.0 or x[j].isinf() or (nxt is not None and x[j] == x[j + 1 + nxt]):
        d = _shift(x, ref, j + 1, tolerance, tol)
        tail = f"; after it the series is shifted by {d:+d} (a value inserted, not overwritten)" if d else ""
        return dict(base, cause="plumbing:padding", verdict=(
            f"{head}: a padding value ({float(x[j]):g}) on a real token: plumbing (padding){tail}"))
    d = _shift(x, ref, j, tolerance, tol)
    if d is not None:
        return dict(base, cause=f"plumbing:shift {d:+d}", shift=d, verdict=(
            f"{head}: token j carries the {name} log-prob of token j{d:+d} from there on: plumbing (shift {d:+d})"))
    worst = float(gaps[name][use].max())
    if tolerance < tol.rounding and worst <= tol.rounding:
        return dict(base, cause="numerics", verdict=(
            f"{head}: a structureless gap of at most {worst:.3g} (<= rounding {tol.rounding:g}; no shift, padding value "
            f"or temperature): the stored {name} looks computed in low precision (bf16) while both replays ran in "
            "float32: numerics (stored side); replay with --dtype / --trainer-dtype bfloat16 to confirm"))
    return dict(base, cause="plumbing:unexplained", verdict=(
        f"{head}: the stored values disagree with both engines at {where}, by up to {worst:.3g}; no shift (|d| <= "
        f"{tol.max_lag}), padding value or recorded temperature explains it (another checkpoint, e.g. a stale trainer; "
        "attended padding or shifted positions; another model?)"))


def _stext(s: tuple) -> str:
    return settings_text(dict(zip(("temperature", "top_p", "top_k"), s)))


def _pair_check(stored, counted, recorded, tolerance, drift_text, sampling_t) -> dict[str, Any]:
    """Both stored series agree with the engines at their own recorded settings: do they part from each other?"""
    r, t = stored.get("rollout"), stored.get("trainer")
    if r is not None and t is not None and recorded["rollout"][0] != recorded["trainer"][0]:
        j = _first(counted & ((r - t).abs() > tolerance))
        if j is not None:
            a, b = _stext(recorded["rollout"]), _stext(recorded["trainer"])
            off = [n for n in ("rollout", "trainer") if sampling_t is not None and recorded[n][0] != sampling_t]
            side = f"stored {off[0]}" if len(off) == 1 else "stored series"
            at = f" (sampled at T={sampling_t:g})" if sampling_t is not None else ""
            return dict(first_divergence=j, cause="plumbing:temperature", side=side, shift=None, verdict=(
                f"{drift_text}, and each stored series matches them at its recorded settings, but the rollout is at "
                f"{a} and the trainer at {b}{at}: they part at position {j} (rollout {r[j]:.6f}, trainer {t[j]:.6f}): "
                "plumbing (temperature)"))
    note = ""
    if r is not None and recorded["rollout"][1:] != RAW[1:]:
        note = " (the stored rollout is processed over the engine's kept set: it differs from the trainer by design)"
    return dict(first_divergence=None, cause="agree", side=None, shift=None,
                verdict=f"{drift_text}, and the stored series agree with them: nothing parts{note}")


__all__ = ["FIT_RANGE", "FIT_TOKENS", "RAW", "diagnose", "fit_temperature", "settings_text"]
