"""Token text of the per-token views: whitespace and control characters made visible."""

from __future__ import annotations

import html
import unicodedata
from typing import Any, Optional, Sequence

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


# --------------------------------------------------------------------------
# BPE token text: what the ids stand for


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of every byte-level BPE (Ġ = space, Ċ = newline)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_OF: dict[str, int] = {c: b for b, c in _bytes_to_unicode().items()}
SPECIAL_OPEN, SPECIAL_CLOSE = "⟪", "⟫"
"""How a special token (``<|im_end|>``, ``<s>``, ...) is marked in a readable token: ``⟪<|im_end|>⟫``."""


def token_style(tokenizer: Any) -> str:
    """``'byte_level'`` (GPT-2, Qwen, Llama-3), ``'metaspace'`` (SentencePiece's ``▁``) or ``'plain'``."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    name = type(decoder).__name__ if decoder is not None else ""
    text = repr(decoder) if decoder is not None else ""
    if name == "ByteLevel" or "ByteLevel" in text:
        return "byte_level"
    if name == "Metaspace" or "Metaspace" in text or "▁" in text:
        return "metaspace"
    return "plain"


def _text_of_bytes(raw: bytes) -> str:
    """The characters these bytes spell; bytes of a character cut across tokens shown as ``⟨\\xe4\\xbd⟩``."""
    out, i = [], 0
    while i < len(raw):
        for n in (1, 2, 3, 4):   # the shortest prefix that is one whole UTF-8 character
            try:
                out.append(raw[i:i + n].decode("utf-8"))
                i += n
                break
            except UnicodeDecodeError:
                continue
        else:
            j = i + 1   # a run of bytes that are no whole character: the part of one that another token holds
            while j < len(raw) and not _starts_char(raw, j):
                j += 1
            out.append("⟨" + "".join(f"\\x{b:02x}" for b in raw[i:j]) + "⟩")
            i = j
    return "".join(out)


def _starts_char(raw: bytes, j: int) -> bool:
    for n in (1, 2, 3, 4):
        try:
            raw[j:j + n].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def readable_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One readable string per id: the text the token stands for, not its vocabulary spelling.

    Byte-level BPE tokens are mapped back to their bytes (``Ġ`` is a space, ``Ċ`` a newline, so
    ``'Ġworld'`` reads ``' world'``); a character whose UTF-8 bytes are split over two tokens is not
    glued back but shown as the bytes each token holds (``⟨\\xe4\\xbd⟩`` then ``⟨\\xa0⟩``), since that is what
    each token is. SentencePiece's ``▁`` reads as a space and its byte tokens ``<0xE4>`` as
    ``⟨\\xe4⟩``. Special tokens are marked ``⟪<|im_end|>⟫``. Ids outside the vocabulary read ``⟨id 123?⟩``.
    """
    ids = [int(i) for i in ids]
    style = token_style(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    with_added = getattr(tokenizer, "added_tokens_decoder", None)
    if isinstance(with_added, dict):
        special |= {int(i) for i, t in with_added.items() if getattr(t, "special", False)}
    pieces = tokenizer.convert_ids_to_tokens(ids)
    out = []
    for i, piece in zip(ids, pieces):
        if piece is None:
            out.append(f"⟨id {i}?⟩")
        elif i in special:
            out.append(f"{SPECIAL_OPEN}{piece}{SPECIAL_CLOSE}")
        elif style == "byte_level" and all(c in _BYTE_OF for c in piece):
            out.append(_text_of_bytes(bytes(_BYTE_OF[c] for c in piece)))
        elif style == "metaspace":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out.append(_text_of_bytes(bytes([int(piece[3:5], 16)])))
            else:
                out.append(piece.replace("▁", " "))
        else:
            out.append(str(piece))
    return out
