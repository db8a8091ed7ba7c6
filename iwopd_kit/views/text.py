"""Token text of the per-token views: whitespace and control characters made visible."""

from __future__ import annotations

import html
import unicodedata
from typing import Optional

# Visible stand-ins for whitespace inside tokens.
_VISIBLE = {" ": "·", "\t": "→", "\r": "␍", "\n": "⏎"}
_EMPTY_TOKEN = "∅"


# --------------------------------------------------------------------------
# token text


def _visible_char(ch: str) -> Optional[str]:
    """Stand-in for an invisible character, or None if ``ch`` prints as itself."""
    if ch in _VISIBLE:
        return _VISIBLE[ch]
    cat = unicodedata.category(ch)
    if cat == "Cc":
        return f"\\x{ord(ch):02x}"
    if cat in ("Cf", "Zs", "Zl", "Zp"):
        return f"\\u{ord(ch):04x}"
    return None


def visible_text(token: str) -> str:
    """Plain-text form of a token with whitespace made visible (``' '`` -> ``'·'``, ``'\\n'`` -> ``'⏎'``)."""
    if token == "":
        return _EMPTY_TOKEN
    if token.isprintable() and " " not in token:  # fast path: nothing to replace
        return token
    return "".join(_visible_char(ch) or ch for ch in token)


def visible_html(token: str) -> str:
    """Escaped HTML form of a token; stand-ins are wrapped in ``<i>`` (drawn faint)."""
    if token == "":
        return f"<i>{_EMPTY_TOKEN}</i>"
    if token.isprintable() and " " not in token:  # fast path: nothing to replace
        return html.escape(token)
    parts = []
    for ch in token:
        sub = _visible_char(ch)
        parts.append(f"<i>{html.escape(sub)}</i>" if sub else html.escape(ch))
    return "".join(parts)
