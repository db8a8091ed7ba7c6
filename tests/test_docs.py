"""The docs speak of the repository, and of the code as it is (doc drift is a test failure).

- every link into docs/method.md lands on an anchor that exists, and every relative link of the
  README, CONTRIBUTING.md, docs/ and the notebooks resolves: the file, and the ``#anchor`` in it;
- no file in the repository cites a document that is not in the repository;
- every file the README, CONTRIBUTING.md, docs/ and the notebooks name in backticks exists: a repository path
  (```iwopd_kit/engines/scoring.py```, ```docs/method.md```), a path inside the kit (```engines/scoring.py```),
  or a bare module file name (```scoring.py```); a file that moved or was renamed fails the page that names it;
- every flag of every ``iwopd-kit`` subcommand, and each of its choices (read from the argparse parser), is in docs/check.md,
  and every name of ``iwopd_kit.__all__`` is on the API page, its ``:::`` directive resolving (as mkdocstrings
  resolves it) to that very object;
- the room table of docs/ARCHITECTURE.md is the one tests/test_architecture.py enforces, with every module;
- docs/index.md links every page of the site, in the site's order; the README is a front door
  (at most 150 lines, its first Python block on the first screen, and that block runs);
- what docs/environment.md says scripts/env.sh sets is what it sets.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

import iwopd_kit
from iwopd_kit.cli import build_parser
from iwopd_kit.engines.envdefaults import RUN_ENV_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
DOC_FILES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<a [^>]*href=\"([^\"]+)\"")
# Citations of documents that are not in the repository (split so that this file does not cite them).
OUTSIDE = re.compile(r"\bSPEC(\.md|\s+(sections?|golden|class|table|§))|/wo" r"rk/|\.\./shared/|\bshared/(SPEC|STYLE|DESIGN)"
                     r"|\b(STYLE|DESIGN)\.md")


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _markdown(path: Path) -> str:
    """The Markdown of a doc, or of a notebook's markdown cells."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def _texts() -> dict[str, str]:
    return {_rel(p): _markdown(p) for p in [*DOC_FILES, *NOTEBOOKS]}


def github_slug(heading: str) -> str:
    """GitHub's heading anchor (and the docs site's: mkdocs.yml's toc uses pymdownx.slugs.slugify, case lower)."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", _markdown(path))
    out: set[str] = set(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_every_method_anchor_linked_exists():
    found = anchors(METHOD)
    assert {"failure-classes", "trl-review-bugs", "mismatch-metrics", "top-p-bias", "position-bias"} <= found
    assert {f"class-{c}" for c in "abcdefghijklm"} <= found
    linked = 0
    for name, text in _texts().items():
        for anchor in re.findall(r"method\.md#([A-Za-z0-9_-]+)", text):
            assert anchor in found, f"{name} links to docs/method.md#{anchor}, which does not exist"
            linked += 1
    assert linked >= 15


def test_every_relative_link_resolves():
    checked, broken = 0, []
    for path in [*DOC_FILES, *NOTEBOOKS]:
        text = FENCE.sub("", _markdown(path))
        for m in LINK.finditer(text):
            href = m.group(1) or m.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", href):          # http:, https:, mailto:
                continue
            target, _, anchor = href.partition("#")
            file = (path.parent / unquote(target)).resolve() if target else path
            checked += 1
            if not file.exists():
                broken.append(f"{_rel(path)}: {href} (no such file)")
            elif anchor and file.suffix in (".md", ".ipynb") and unquote(anchor) not in anchors(file):
                broken.append(f"{_rel(path)}: {href} (no #{anchor} in {_rel(file)})")
    assert broken == [], "broken links:\n" + "\n".join(broken)
    assert checked > 100


def test_the_link_check_sees_a_broken_link_and_anchor(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Top\n\n## Some `code` (here)\n\n<a id=\"x\"></a>\n")
    assert anchors(page) == {"top", "some-code-here", "x"}
    assert LINK.findall("[t](b.md#top) ![i](img/p.png) <a href=\"c.md\">c</a>") == [("b.md#top", ""), ("img/p.png", ""), ("", "c.md")]


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    keep = (".py", ".md", ".ipynb", ".sh", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".html", ".js", ".css")
    return [ROOT / p for p in out if (p.endswith(keep) or p in ("Makefile",)) and (ROOT / p).is_file()
            and not p.startswith("data/")]                     # data/: third-party tokenizer files, model folders


def test_no_file_cites_a_document_outside_the_repository():
    files = _tracked_text_files()
    assert len(files) > 100 and ROOT / "iwopd_kit" / "objective" / "core.py" in files
    cites = []
    for path in files:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                cites.append(f"{_rel(path)}:{n}: {line.strip()[:120]}")
    assert cites == [], "cites a document that is not in the repository:\n" + "\n".join(cites)
    assert OUTSIDE.search("see SPEC" + " section 4") and OUTSIDE.search("/wo" "rk/shared/notes")
    assert not OUTSIDE.search("SPECIAL_TOKENS, SPEC_FILE, SPEC = RandomModelSpec()")


REPO_TOPS = ("iwopd_kit", "research", "scripts", "tests", "benchmarks", "docs", "notebooks")
TICKED = re.compile(r"`([^`\s]+)`")
FILE_EXT = re.compile(r"\.(py|md|ipynb|sh|txt|json|jsonl|toml|ya?ml|cfg|html)$")
PLACEHOLDER = re.compile(r"[<*]|\.\.\.|\bNAME\b|\bNN_")          # `scripts/NAME.py`, `iwopd_kit/formats/<layout>.py`
CODE_DIRS = ("iwopd_kit", "research", "scripts", "benchmarks", "tests")
ROOMS = tuple(sorted(p.name for p in (ROOT / "iwopd_kit").iterdir() if (p / "__init__.py").exists()))


def file_names(text: str, module_names: set[str]) -> list[tuple[str, bool]]:
    """The backticked file names of ``text`` (outside code blocks), each with whether the repository has it:

    - a path under a top folder of the repository (```iwopd_kit/engines/scoring.py```, ```tests/test_x.py::test_y```,
      ```docs/method.md```, ```scripts/env.sh```, a folder ```iwopd_kit/formats/```): it exists at that path;
    - a path that starts with a room of the kit (```engines/scoring.py```, ```alignment/check.py```): it exists
      under ``iwopd_kit/``;
    - a bare module file name (```scoring.py```): some file of ``module_names`` (the ``.py`` names under
      iwopd_kit/, research/, scripts/, benchmarks/, tests/) has that name.
    Another project's file is cited by its path in that project (```trl/trainer/grpo_config.py```), which is none of these.
    """
    out = []
    for token in TICKED.findall(FENCE.sub("", text)):
        if PLACEHOLDER.search(token):
            continue
        path = token.split("::", 1)[0].rstrip(".,;:")
        head = path.split("/", 1)[0]
        if "/" in path and head in REPO_TOPS and (FILE_EXT.search(path) or path.endswith("/")):
            out.append((token, (ROOT / path).exists()))
        elif "/" in path and head in ROOMS and path.endswith(".py"):
            out.append((token, (ROOT / "iwopd_kit" / path).exists()))
        elif re.fullmatch(r"\w+\.py", path):
            out.append((token, path in module_names))
    return out


MODULE_NAMES = {p.name for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")}


@pytest.mark.parametrize("doc", [_rel(p) for p in [*DOC_FILES, *NOTEBOOKS]])
def test_every_file_a_doc_names_exists(doc):
    """README.md, CONTRIBUTING.md, docs/ and the notebooks' Markdown name files that exist (see :func:`file_names`)."""
    stale = [t for t, ok in file_names(_markdown(ROOT / doc), MODULE_NAMES) if not ok]
    assert stale == [], f"{doc} names files that are not in the repository (moved? renamed?): {stale}"


def test_the_file_name_check_sees_a_stale_name():
    assert sum(len(file_names(text, MODULE_NAMES)) for text in _texts().values()) > 200
    assert "scoring.py" in MODULE_NAMES and "objective.py" not in MODULE_NAMES
    text = ("`iwopd_kit/engines/scoring.py` `engines/scoring.py` `scoring.py` `tests/test_docs.py::test_x` "
            "`iwopd_kit/formats/` `scripts/NAME.py` `trl/trainer/grpo_config.py` `iwopd_kit/mismatch/...`\n"
            "```\n`objective.py` in a code block\n```\n")
    assert [ok for _, ok in file_names(text, MODULE_NAMES)] == [True] * 5
    text = ("`iwopd_kit/objective.py` `objective.py` `toy.py` `views/study.py` `iwopd_kit/study.py` `research/figure.py` "
            "`docs/methods.md` `notebooks/00_tours.ipynb` `tests/test_nothing.py::test_x` `iwopd_kit/engine/`")
    assert file_names(text, MODULE_NAMES) == [(t, False) for t in TICKED.findall(text)]


def _section(text: str, heading: str) -> str:
    start = text.index(heading) + len(heading)
    nxt = re.search(r"^#{1,3} ", text[start:], re.M)
    return text[start: start + nxt.start()] if nxt else text[start:]


FLAG_PAGES = ("check.md", "run_scan.md", "replay.md")
"""The pages with a flag reference: each subcommand's flags sit under its ``### `iwopd-kit NAME` `` heading in one of them."""


def test_every_cli_flag_is_in_the_check_reference():
    pages = {p: (ROOT / "docs" / p).read_text() for p in FLAG_PAGES if (ROOT / "docs" / p).exists()}
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = 0
    for name, sub in subparsers.choices.items():
        heading = f"### `iwopd-kit {name}`"
        found = [p for p, text in pages.items() if heading in text]
        assert len(found) == 1, f"the section {heading!r} is in {found}; expected exactly one of docs/{FLAG_PAGES}"
        section = _section(pages[found[0]], heading)
        for action in sub._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert f"`{opt}" in section, f"`iwopd-kit {name} {opt}` is not in docs/{found[0]}'s {heading} section"
                    flags += 1
                    for choice in action.choices or ():
                        assert f"`{choice}`" in section or f"`{choice}`" in _section(pages[found[0]], "## The flags"), \
                            f"`iwopd-kit {name} {opt} {choice}` is not in docs/{found[0]}'s {heading} section"
    assert flags >= 20


def _runtime_object(ident: str):
    """What a dotted name is at run time: the longest importable module prefix, then attributes."""
    parts = ident.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(ident)


def test_every_public_name_is_on_the_api_page():
    """Each ``:::`` directive of docs/api.md resolves the way mkdocstrings resolves it (griffe, statically), and
    each name of ``iwopd_kit.__all__`` has one whose object is that name's (not, say, a module of the same name)."""
    import griffe

    api = (ROOT / "docs" / "api.md").read_text()
    idents = re.findall(r"^::: (\S+)$", api, re.M)
    kit = griffe.load("iwopd_kit", search_paths=[str(ROOT)], resolve_aliases=False)
    unresolved = []
    for ident in idents:
        try:
            obj = kit
            for part in ident.split(".")[1:]:
                obj = obj[part]
            _ = obj.final_target if obj.is_alias else obj        # raises when the alias leads nowhere
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            unresolved.append(ident)
    assert unresolved == [], f"docs/api.md's ::: directives that mkdocstrings cannot resolve: {unresolved}"
    # a name iwopd_kit loads on first use (the run extra) is documented at its home module
    missing = [n for n in iwopd_kit.__all__
               if not any(i.rsplit(".", 1)[-1] == n and _runtime_object(i) is getattr(iwopd_kit, n) for i in idents)]
    assert missing == [], f"names of iwopd_kit.__all__ not on docs/api.md (or documented as another object): {missing}"


def _rooms_from_table() -> dict[str, tuple[int, str, list[str]]]:
    """docs/ARCHITECTURE.md's room table: room -> (floor, what it is for, its modules)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rooms = {}
    for line in _section(text, "## The rooms").splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*`([\w.]+?)/?`\s*\|([^|]*)\|([^|]*)\|", line)
        if m:
            room = m.group(2).removesuffix(".py")
            rooms[room] = (int(m.group(1)), m.group(3).strip(), re.findall(r"`([\w]+\.py)`", m.group(4)))
    return rooms


def test_the_architecture_room_table_is_the_one_the_test_enforces():
    spec = importlib.util.spec_from_file_location("_arch", ROOT / "tests" / "test_architecture.py")
    arch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arch)
    table = _rooms_from_table()
    assert {r: v[:2] for r, v in table.items()} == arch.ROOMS, "docs/ARCHITECTURE.md's room table differs from ROOMS"
    for room, (_, _, modules) in table.items():
        folder = ROOT / "iwopd_kit" / room
        on_disk = sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py") if folder.is_dir() else [f"{room}.py"]
        assert sorted(modules) == on_disk, f"docs/ARCHITECTURE.md's row for {room}: {sorted(modules)}; on disk: {on_disk}"


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _nav_pages() -> list[str]:
    """The site's pages in order, as repository paths (mkdocs.yml's nav; docs_dir is docs/)."""
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)["nav"]

    def walk(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from walk(value)
            else:
                yield value
    out = []
    for page in walk(nav):
        repo = page if page.startswith("notebooks/") or page == "CONTRIBUTING.md" else f"docs/{page}"
        out.append(repo)
    return out


def test_the_index_links_every_page_in_the_sites_order():
    pages = _nav_pages()
    docs = sorted(_rel(p) for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(p for p in pages if p.startswith("docs/")) == docs, "every page of docs/ is in mkdocs.yml's nav, once"
    assert {p for p in pages if p.startswith("notebooks/")} == {_rel(p) for p in NOTEBOOKS}
    index = ROOT / "docs" / "index.md"
    linked = []
    for m in LINK.finditer(FENCE.sub("", index.read_text())):
        href = (m.group(1) or m.group(2)).partition("#")[0]
        if href and not re.match(r"^[a-z]+:", href):
            target = _rel((index.parent / href).resolve())
            if target not in linked:
                linked.append(target)
    assert linked == [p for p in pages if p != "docs/index.md"], "docs/index.md links the pages in mkdocs.yml's nav order"


def test_the_readme_is_a_front_door_whose_code_runs():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150: the rest belongs in docs/)"
    start = next(i for i, line in enumerate(lines) if line.startswith("```python"))
    assert start < 40, "the README's first Python block is on its first screen"
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().startswith("False Finding(kind='offset'"), out.getvalue()[:200]


def test_failure_classes_table_names_every_detector_kind():
    from iwopd_kit.alignment import KINDS

    table = METHOD.read_text().split('<a id="failure-classes"></a>', 1)[1].split('<a id="trl-review-bugs"></a>', 1)[0]
    for kind in KINDS:
        assert f"`{kind}`" in table, f"docs/method.md's failure-class table lacks the kind {kind!r}"


def test_env_sh_sets_exactly_the_envdefaults_table_and_keeps_what_is_set():
    """scripts/env.sh is generated from iwopd_kit/engines/envdefaults.py: sourced with the variables unset it sets each
    to the table's value; a value the caller set wins."""
    names = " ".join(RUN_ENV_DEFAULTS)
    first = "VLLM_LOGGING_LEVEL"                 # (not PYTHONHASHSEED: python3 itself refuses a non-integer one)
    script = f'unset {names}; export {first}=caller; source "{ROOT / "scripts" / "env.sh"}"; env'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env[first] == "caller"
    assert {k: env.get(k) for k in RUN_ENV_DEFAULTS if k != first} == {k: v for k, v in RUN_ENV_DEFAULTS.items() if k != first}


def test_environment_notes_match_env_sh():
    script = f'unset {" ".join(RUN_ENV_DEFAULTS)}; source "{ROOT / "scripts" / "env.sh"}"; env'
    env = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    section = (ROOT / "docs" / "environment.md").read_text()
    named = re.findall(r"`(VLLM_[A-Z_0-9]+|PYTHONHASHSEED)=", section)
    assert len(named) >= 4
    for var in named:
        assert re.search(rf"^{var}=", env, re.M), f"docs/environment.md says scripts/env.sh sets {var}; it does not"
