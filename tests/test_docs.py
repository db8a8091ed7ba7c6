"""The docs speak of the repository only: every link into docs/method.md lands on an anchor that
exists, no file cites a reference outside the repository, and what README says scripts/env.sh sets
is what it sets."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from iwopd_kit.envdefaults import RUN_ENV_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"


def _texts() -> dict[str, str]:
    out = {"README.md": (ROOT / "README.md").read_text()}
    for p in sorted((ROOT / "docs").glob("*.md")):
        out[f"docs/{p.name}"] = p.read_text()
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(p.read_text())["cells"]
        out[f"notebooks/{p.name}"] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return out


def test_every_method_anchor_linked_exists():
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', METHOD.read_text()))
    assert {"failure-classes", "trl-review-bugs", "mismatch-metrics", "top-p-bias", "position-bias"} <= anchors
    assert {f"class-{c}" for c in "abcdefghijklm"} <= anchors
    linked = 0
    for name, text in _texts().items():
        for anchor in re.findall(r"method\.md#([A-Za-z0-9_-]+)", text):
            assert anchor in anchors, f"{name} links to docs/method.md#{anchor}, which does not exist"
            linked += 1
    assert linked >= 15


def test_failure_classes_table_names_every_detector_kind():
    from iwopd_kit.alignment import KINDS

    table = METHOD.read_text().split('<a id="failure-classes"></a>', 1)[1].split('<a id="trl-review-bugs"></a>', 1)[0]
    for kind in KINDS:
        assert f"`{kind}`" in table, f"docs/method.md's failure-class table lacks the kind {kind!r}"


def test_no_reference_outside_the_repository():
    for name, text in _texts().items():
        assert "SPEC" not in text, f"{name} cites SPEC, which is not in the repository"
        assert "/work/" not in text, f"{name} cites a path outside the repository"


def test_readme_env_matches_env_sh():
    script = f'unset {" ".join(RUN_ENV_DEFAULTS)}; source "{ROOT / "scripts" / "env.sh"}"; env'
    env = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Environment notes", 1)[1]
    for var in re.findall(r"`(VLLM_[A-Z_0-9]+|PYTHONHASHSEED)=", section):
        assert re.search(rf"^{var}=", env, re.M), f"README says scripts/env.sh sets {var}; it does not"
