"""The kit installed from its own distribution, outside the checkout.

Builds the sdist, then the wheel from the unpacked sdist (``pip wheel --no-deps --no-build-isolation``,
so the sdist is proven self-contained too), installs the wheel into a fresh virtual environment in a
temporary directory, and runs ``iwopd-kit demo`` and ``iwopd-kit check`` from another temporary
directory. The new environment reuses the locked dependencies of the checkout's ``.venv`` through a
``.pth`` line naming that ``site-packages`` (not the repository, whose editable-install hook lives in
a ``.pth`` that a ``.pth`` line does not run), so nothing is downloaded and the install takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ("data/models/student/model.safetensors", "data/models/teacher/model.safetensors",
           "data/models/student/tokenizer.json", "data/prompts/eval.jsonl", "data/prompts/train.jsonl",
           "data/fixtures/offset.jsonl", "data/fixtures/healthy_fp32_t1.jsonl",
           "data/tasks/answer_first/models/student/model.safetensors")


def _run(cmd, cwd, env=None, timeout=600, ok=(0,)):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode in ok, (f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                                   f"stderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv dir, env, wheel path): the wheel built from the sdist, installed into a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    sdist_dir, wheel_dir, src = tmp / "sdist", tmp / "dist", tmp / "src"
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(sdist_dir)!r})"],
         cwd=ROOT)
    (sdist,) = sdist_dir.glob("iwopd_kit-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        assert not [m.name for m in tar.getmembers() if m.issym() or m.islnk()], "the sdist holds links"
        tar.extractall(src, filter="data")
    top = names[0].split("/")[0]
    for rel in BUNDLED:
        assert f"{top}/iwopd_kit/{rel}" in names, f"the sdist lacks iwopd_kit/{rel}"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", wheel_dir, src / top], cwd=tmp)
    (wheel,) = wheel_dir.glob("iwopd_kit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for rel in BUNDLED:
        assert f"iwopd_kit/{rel}" in names, f"the wheel lacks iwopd_kit/{rel}"

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    locked = Path(sysconfig.get_paths()["purelib"])       # the checkout's .venv site-packages
    assert locked != site and ROOT not in site.parents
    (site / "_locked_deps.pth").write_text(f"{locked}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    # --ignore-installed: the checkout's editable install is visible through the .pth line; never touch it
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel], cwd=tmp, env=env)
    return venv, env, wheel


def test_the_installed_package_finds_its_data_inside_the_new_venv(installed, tmp_path):
    venv, env, wheel = installed
    probe = ("import json, iwopd_kit; from iwopd_kit import toy; "
             "print(json.dumps({'file': iwopd_kit.__file__, 'student': str(toy.STUDENT_DIR), "
             "'teacher': str(toy.TEACHER_DIR), 'prompts': str(toy.EVAL_PROMPTS), 'fixtures': str(toy.FIXTURES_DIR), "
             "'answer_first': str(toy.get_task('answer_first').student_dir), "
             "'n_prompts': len(toy.load_prompts(toy.EVAL_PROMPTS))}))")
    got = json.loads(_run([venv / "bin" / "python", "-c", probe], cwd=tmp_path, env=env).stdout)
    for key in ("file", "student", "teacher", "prompts", "fixtures", "answer_first"):
        path = Path(got[key])
        assert venv.resolve() in path.resolve().parents, f"{key} = {path} is not inside the new venv {venv}"
        assert ROOT not in path.resolve().parents, f"{key} = {path} points into the checkout"
        assert path.exists(), f"{key} = {path} does not exist"
    assert (Path(got["student"]) / "config.json").exists()
    assert got["n_prompts"] == 512
    print(f"wheel {wheel.name}: {wheel.stat().st_size} bytes")


# Checkout-only code that once lived in the package: the wheel must not carry it back.
CHECKOUT_ONLY = ("research/", "tests/")
MOVED_OUT = ("iwopd_kit/browser.py", "iwopd_kit/random_models.py", "iwopd_kit/study.py", "iwopd_kit/study_stats.py",
             "iwopd_kit/views/study.py")


def test_the_wheel_holds_the_kit_and_nothing_of_the_checkout(installed):
    _, _, wheel = installed
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "iwopd_kit/__init__.py" in names and "iwopd_kit/engines/scoring.py" in names
    tops = {n.split("/", 1)[0] for n in names}
    others = sorted(tops - {"iwopd_kit"})
    assert len(others) == 1 and others[0].endswith(".dist-info"), \
        f"the wheel's top-level entries: {sorted(tops)} (expected iwopd_kit/ and its .dist-info/ only)"
    carried = sorted(n for n in names if n.startswith(CHECKOUT_ONLY) or n in MOVED_OUT)
    assert carried == [], f"the wheel carries checkout-only files: {carried}"


def test_demo_runs_from_the_wheel_in_a_temp_dir(installed, tmp_path):
    venv, env, _ = installed
    proc = _run([venv / "bin" / "iwopd-kit", "demo", "--n", "2", "--max-tokens", "24", "--html", "out/demo.html"],
                cwd=tmp_path, env=env)
    assert "report:" in proc.stdout and "row 0: prompt" in proc.stdout
    html = (tmp_path / "out" / "demo.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert 'title="j=0' in html                       # per-token tooltips of the strip


def test_check_runs_from_the_wheel_on_bundled_fixtures(installed, tmp_path):
    venv, env, _ = installed
    fixtures = Path(_run([venv / "bin" / "python", "-c", "from iwopd_kit import toy; print(toy.FIXTURES_DIR)"],
                         cwd=tmp_path, env=env).stdout.strip())
    assert venv.resolve() in fixtures.resolve().parents
    kit = venv / "bin" / "iwopd-kit"

    broken = _run([kit, "check", fixtures / "offset.jsonl", "--json", "offset.json", "--html", "offset.html"],
                  cwd=tmp_path, env=env, ok=(1,))
    found = json.loads((tmp_path / "offset.json").read_text())["findings"]
    assert any(f["kind"] == "offset" and f["severity"] == "error" for f in found), broken.stdout
    report = (tmp_path / "offset.html").read_text()
    assert "<script" not in report and "http://" not in report and "https://" not in report

    # the healthy fixture without its student series: the check scores it with the bundled student
    rows = [json.loads(line) for line in (fixtures / "healthy_fp32_t1.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        r.pop("student_logprobs", None)
    (tmp_path / "no_student.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    healthy = _run([kit, "check", "no_student.jsonl", "--json", "healthy.json"], cwd=tmp_path, env=env)
    assert f"{len(rows)} rows" in healthy.stdout
    assert not [f for f in json.loads((tmp_path / "healthy.json").read_text())["findings"] if f["severity"] == "error"]
