"""Per-token view at 10k tokens: render time and HTML bytes per token (goals < 0.3 s, < 150 B/token).

The ratio printed is against a baseline measured in the same run: the same tokens as one
unstyled ``<span title=...>`` each (the minimum any hoverable per-token view must emit).

    .venv/bin/python -m benchmarks.bench_views
"""

from __future__ import annotations

import html
import random

from benchmarks.timing import best_of

from iwopd_kit.views import token_strip


def data(rows: int = 10, per_row: int = 1000):
    rng = random.Random(0)
    tokens = [[rng.choice("0123456789+=,") for _ in range(per_row)] for _ in range(rows)]
    series = {name: [[round(rng.uniform(-3, 0), 6) for _ in range(per_row)] for _ in range(rows)]
              for name in ("rollout", "student", "teacher")}
    series["advantage"] = [[t - r for t, r in zip(tr, rr)] for tr, rr in zip(series["teacher"], series["rollout"])]
    return tokens, series


def baseline(tokens, series) -> str:
    names = list(series)
    return "".join(
        f'<span title="{html.escape(" ".join(f"{n}={series[n][b][j]:.3f}" for n in names))}">{html.escape(t)}</span>'
        for b, row in enumerate(tokens) for j, t in enumerate(row)
    )


def main() -> None:
    tokens, series = data()
    n = sum(map(len, tokens))
    t_kit, page = best_of(lambda: token_strip(tokens, series, color_by="advantage").to_html())
    t_base, base = best_of(lambda: baseline(tokens, series))
    print(f"tokens: {n}")
    print(f"kit render: {t_kit:.3f} s (goal < 0.3 s) | {len(page.encode()) / n:.1f} B/token (goal < 150)")
    print(f"baseline (bare span + title): {t_base:.3f} s | {len(base.encode()) / n:.1f} B/token")
    print(f"ratio kit/baseline: time {t_kit / t_base:.2f} | bytes {len(page.encode()) / len(base.encode()):.2f}")


if __name__ == "__main__":
    main()
