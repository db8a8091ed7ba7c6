"""The README's picture, docs/img/offset_strip.png: the token strip of a real broken dump, drawn by the
kit's own static rendering (iwopd_kit.views.static: Debian's headless Chromium through Playwright).

The bundled fixture ``data/fixtures/offset.jsonl`` (real rollouts of the tiny student whose rollout
log-probs were sliced at a batch-wide prompt length, class A), rows 0-3, each token coloured by
|rollout - student|; the shifted rows light up from their first token on.

    .venv/bin/python scripts/make_readme_image.py      # writes docs/img/offset_strip.png
"""

from __future__ import annotations

from pathlib import Path

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.apps.pipeline import decode_tokens
from iwopd_kit.views import static, token_strip
from iwopd_kit.views.series import per_token_series

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "offset_strip.png"


def main() -> None:
    batch = K.read_jsonl(toy.FIXTURES_DIR / "offset.jsonl")
    report = K.check_alignment(batch)
    tokens = decode_tokens(K.load_tokenizer(toy.STUDENT_DIR), batch)
    shifted = sorted({f.row for f in report.by_kind("offset")})
    strip = token_strip(tokens, per_token_series(batch), color_by="gap", token_ids=batch.completion_ids,
                        rows=[0, 1, 2, 3], title=f"offset.jsonl: |rollout − student| per token (shifted rows: {shifted})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(static.html_png(strip.to_html()))
    print(f"{OUT}: {OUT.stat().st_size} bytes; rows with an offset finding: {shifted}")


if __name__ == "__main__":
    main()
