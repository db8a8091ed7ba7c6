"""MkDocs hooks for the documentation site (``mkdocs.yml``; ``make docs``; docs/index.md says why MkDocs).

The site's pages are the repository's own files, read where they are: ``docs/`` is the docs_dir, and
this hook adds, without copying anything into the repository,

- every notebook ``notebooks/*.ipynb`` (rendered with its stored outputs by mkdocs-jupyter) as
  ``notebooks/NN_name.html``;
- ``CONTRIBUTING.md`` as a page at the site's root;
- the MathJax 2.7 files of the ``jupyter_server_mathjax`` package as ``assets/mathjax/`` (the
  notebooks' math, typeset without a CDN).

Links are written for the repository (``docs/method.md`` links ``../notebooks/00_tour.ipynb``, a
notebook links ``../docs/method.md#class-a``); ``repo_to_site`` maps a repository path onto the
site, and the links are rewritten to match: in Markdown before MkDocs resolves them (so ``--strict``
still checks them), in a notebook's HTML after mkdocs-jupyter rendered it. A link to a file that is
not on the site (source code, the README) is left as it is, and ``--strict`` fails the build on it.

A notebook page's table of contents comes from mkdocs-jupyter's own Markdown pass, whose anchors
differ from the heading ids nbconvert wrote where a heading holds code or HTML (``top_p``,
``<think>``); the hook gives each entry the id of its heading, in order.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
EXTRA_PAGES = ("CONTRIBUTING.md",)
MATHJAX_DIR = "assets/mathjax"

_MD_LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?\))")
_HEADING_ID = re.compile(r'<h[1-6][^>]*\bid="([^"]+)"')
_HREF = re.compile(r'(href=")([^"#:]+)((?:#[^"]*)?")')


def repo_to_site(repo_path: str) -> str | None:
    """The site-relative source path (``src_uri``) of a repository file, or None if it is not on the site."""
    p = posixpath.normpath(repo_path)
    if p.startswith("docs/"):
        return p[len("docs/"):]
    if (p.startswith("notebooks/") and p.endswith(".ipynb")) or p in EXTRA_PAGES:
        return p
    return None


def _repo_path(src_uri: str) -> str:
    """Inverse of ``repo_to_site`` for a page of the site."""
    return src_uri if (src_uri.startswith("notebooks/") or src_uri in EXTRA_PAGES) else f"docs/{src_uri}"


def _rewrite(src_uri: str, target: str, html: bool) -> str:
    """A link written for the repository, as the site needs it (unchanged when the repository and the site agree)."""
    if target.startswith(("/", "mailto:")) or "://" in target:
        return target
    here = posixpath.dirname(_repo_path(src_uri))
    site = repo_to_site(posixpath.join(here, target))
    if site is None:
        return target
    if html:                                           # a rendered notebook: point at the built page
        site = re.sub(r"\.(md|ipynb)$", ".html", site)
    return posixpath.relpath(site, posixpath.dirname(src_uri) or ".")


@event_priority(100)                                   # before mkdocs-jupyter wraps the notebooks
def on_files(files, config):
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(File(f"notebooks/{nb.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
    for name in EXTRA_PAGES:
        files.append(File(name, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    return _MD_LINK.sub(lambda m: m.group(1) + _rewrite(page.file.src_uri, m.group(2), False) + m.group(3), markdown)


def _flat(items):
    for item in items:
        yield item
        yield from _flat(item.children)


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    heads = _HEADING_ID.findall(html)
    toc = list(_flat(page.toc))
    if len(toc) == len(heads):
        for item, hid in zip(toc, heads):
            item.id = hid
    return _HREF.sub(lambda m: m.group(1) + _rewrite(page.file.src_uri, m.group(2), True) + m.group(3), html)


def on_post_build(config):
    import jupyter_server_mathjax

    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(src, os.path.join(config["site_dir"], MATHJAX_DIR), dirs_exist_ok=True)
