"""Debian's headless Chromium, found and launched (a leaf: imports nothing from the kit).

Used by the PNG copies of :mod:`iwopd_kit.views.static` and by the browser tests
(``tests/browser.py`` re-exports these names). Test tools' own browser downloads do not work
offline; Playwright-python drives the Debian build.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def chromium_path() -> str:
    """The Debian Chromium executable; a clear error when it is missing."""
    for cand in (os.environ.get("IWOPD_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if cand and Path(cand).exists():
            return cand
    raise FileNotFoundError("Chromium not found: install Debian's package (`apt-get install -y chromium`) "
                            "or set IWOPD_CHROMIUM to its path")


def launch(playwright):
    """Launch headless Chromium through a ``sync_playwright()`` handle."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
