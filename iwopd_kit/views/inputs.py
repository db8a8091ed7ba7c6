"""Input normalisation of the per-token views: lists, numpy arrays or torch tensors -> ragged tuples.

Row ``b``, position ``j`` in completion coordinates; a value that cannot be read raises an error
that names the series, the row and the position.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from .names import SERIES_NAMES

#: Display order of the known series; other series follow in the order given.
SERIES_ORDER: tuple[str, ...] = tuple(s.name for s in SERIES_NAMES)


# --------------------------------------------------------------------------
# input normalisation


def _to_numpy_like(data: Any) -> Any:
    """torch tensors -> numpy (float64 for floating dtypes); other inputs unchanged."""
    if hasattr(data, "detach") and hasattr(data, "cpu"):
        t = data.detach().cpu()
        if t.is_floating_point():
            t = t.double()
        return t.numpy()
    return data


def _is_2d_array(data: Any) -> bool:
    return hasattr(data, "ndim") and hasattr(data, "shape") and data.ndim == 2


def _float_or_nan(value: Any, what: str) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: expected a number or None, got {value!r}") from None


def id_or_none(value: Any, what: str) -> Optional[int]:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: expected an integer token id or None, got {value!r}") from None
    if math.isnan(f):
        return None
    if f != int(f):
        raise TypeError(f"{what}: expected an integer token id, got {value!r}")
    return int(f)


def ragged_rows(name: str, data: Any, lengths: Sequence[int]) -> list[list[Any]]:
    """Cut ``data`` into rows of exactly ``lengths[b]`` values.

    ``data`` is a ragged list of rows (each exactly as long as its token row),
    or a padded ``[B, L]`` numpy array / torch tensor (cut to each row's token
    count; ``L`` must be at least that count).
    """
    data = _to_numpy_like(data)
    n_rows = len(lengths)
    if hasattr(data, "ndim") and data.ndim not in (1, 2):
        raise ValueError(f"{name}: expected [B, L] values, got an array of shape {tuple(data.shape)}")
    if len(data) != n_rows:
        raise ValueError(f"{name} has {len(data)} rows but tokens has {n_rows} rows")
    padded = _is_2d_array(data)
    rows: list[list[Any]] = []
    for b, n in enumerate(lengths):
        row = _to_numpy_like(data[b])
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__"):
            raise TypeError(f"{name} row {b}: expected a sequence of per-token values, got {row!r}")
        if padded:
            if len(row) < n:
                raise ValueError(
                    f"{name} row {b}: padded width {len(row)} is shorter than the row's {n} tokens"
                )
            row = row[:n]
        elif len(row) != n:
            raise ValueError(f"{name} row {b} has {len(row)} values but the row has {n} tokens")
        rows.append(list(row.tolist() if hasattr(row, "tolist") else row))
    return rows


def normalise_tokens(tokens: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    if isinstance(tokens, (str, bytes)):
        raise TypeError("tokens: expected a list of rows, each a list of token strings")
    out = []
    for b, row in enumerate(tokens):
        if isinstance(row, (str, bytes)):
            raise TypeError(f"tokens row {b} is a string; expected a list of token strings")
        for j, tok in enumerate(row):
            if not isinstance(tok, str):
                raise TypeError(f"tokens row {b} position {j}: expected str, got {tok!r}")
        out.append(tuple(row))
    return tuple(out)


def _ordered_names(names: Sequence[str]) -> list[str]:
    known = [n for n in SERIES_ORDER if n in names]
    return known + [n for n in names if n not in SERIES_ORDER]


def normalise_series(series: Mapping[str, Any], lengths: Sequence[int]
                      ) -> dict[str, tuple[tuple[float, ...], ...]]:
    out: dict[str, tuple[tuple[float, ...], ...]] = {}
    for name in _ordered_names(list(series)):
        if not isinstance(name, str):
            raise TypeError(f"series names must be strings, got {name!r}")
        rows = ragged_rows(f"series {name!r}", series[name], lengths)
        out[name] = tuple(
            tuple(_float_or_nan(v, f"series {name!r} row {b} position {j}") for j, v in enumerate(row))
            for b, row in enumerate(rows)
        )
    return out


def normalise_window(window: Optional[Sequence[Optional[int]]]) -> Optional[tuple[int, Optional[int]]]:
    if window is None:
        return None
    if len(window) != 2:
        raise ValueError(f"window must be (start, stop), got {window!r}")
    start, stop = window
    start = 0 if start is None else int(start)
    if start < 0 or (stop is not None and int(stop) < start):
        raise ValueError(f"window must satisfy 0 <= start <= stop, got {window!r}")
    return start, (None if stop is None else int(stop))
