"""Per-token views: coloured token strips and plain HTML / text tables.

Pure rendering over plain Python data (lists, numpy arrays, torch tensors);
no model code. See :func:`token_strip` for the per-token strip and
:mod:`iwopd_kit.views.report` for tables and self-contained pages.
"""

from .alignment import AlignmentView, alignment_view
from .check_page import check_html
from .colors import DEFAULT_BOUNDS, SCALE_KINDS, ColorScale, scale_for
from .findings import finding_strips
from .inputs import SERIES_ORDER
from .mismatch import histogram_svg, mismatch_html, mismatch_text
from .report import MISSING, format_value, html_page, html_table, text_table
from .static import auto_enable as _auto_enable
from .text import visible_text
from .text import readable_tokens, token_style
from .tokens import TokenStrip, token_strip

# In a Jupyter kernel: PNG copies of figures and HTML views for static front ends (views/static.py).
_auto_enable()

__all__ = [
    "AlignmentView",
    "alignment_view",
    "check_html",
    "finding_strips",
    "histogram_svg",
    "mismatch_html",
    "mismatch_text",
    "DEFAULT_BOUNDS",
    "MISSING",
    "SCALE_KINDS",
    "SERIES_ORDER",
    "ColorScale",
    "TokenStrip",
    "format_value",
    "html_page",
    "html_table",
    "scale_for",
    "text_table",
    "token_strip",
    "visible_text",
    "readable_tokens",
    "token_style",
]
