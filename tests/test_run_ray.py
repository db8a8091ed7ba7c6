"""``iwopd-kit scan --ray HOST:PORT``: the steps run as tasks on a Ray cluster (a local head started here) and the
store equals the local pool's, byte for byte."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from iwopd_kit.cli import main
from iwopd_kit.run import scan_run

from run_fixtures import write_primerl_run

ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(pgid: int) -> None:
    """End the head's process group (gcs_server, raylet, workers): TERM, then KILL what is left after 3 s."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


#: The driver side, in a process of its own: Ray reads its auth settings once, when first imported, and vLLM
#: imports Ray, so in a pytest process where an earlier test started vLLM the head's token would never be
#: read. The local pool is replaced by one that fails, so a step run outside Ray fails the scan.
DRIVER = """
import sys
from iwopd_kit.cli import main
from iwopd_kit.run import executors, scan_run

def no_local_pool(*a, **k):
    raise AssertionError("--ray ran a step in the local pool")

executors.LocalExecutor.run = no_local_pool
run, out, address = sys.argv[1:4]
code = main(["scan", run, "--out", out, "--ray", address, "--no-html"])
assert not sys.modules["ray"].is_initialized(), "the driver did not disconnect"
again = scan_run(run, out, progress=False, html=False, ray=address)
print("rescan", again.scanned, again.steps)
sys.exit(code)
"""


@pytest.fixture()
def ray_head():
    """A Ray head on 127.0.0.1 (2 CPUs, 100 MB object store, no dashboard) in its own process group: its
    address and the environment a driver needs. Token authentication with a token of its own (Ray 2.60 turns
    it on when ~/.ray/auth_token exists; the test neither reads nor writes that file)."""
    pytest.importorskip("ray")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port, *others = _free_ports(6)
    temp = tempfile.mkdtemp(prefix="iwray", dir="/tmp")      # short: Ray's socket paths live under it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "RAY_USAGE_STATS_ENABLED": "0", **auth}
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           "--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={temp}", f"--ray-client-server-port={others[0]}", f"--dashboard-agent-listen-port={others[1]}",
           f"--dashboard-agent-grpc-port={others[2]}", f"--metrics-export-port={others[3]}",
           f"--runtime-env-agent-port={others[4]}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
        yield f"127.0.0.1:{port}", env
    finally:
        if proc.poll() is None:
            proc.kill()
        _stop(proc.pid)                                      # the group ray start led (start_new_session)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_scan_on_a_ray_cluster_writes_the_local_store(tmp_path, ray_head):
    address, env = ray_head
    run = write_primerl_run(tmp_path / "run", steps=range(1, 6), n_rows=4)
    local = scan_run(run, tmp_path / "local", workers=1, progress=False, html=False)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(run), str(tmp_path / "ray"), address], env=env,
                          capture_output=True, text=True, timeout=600)
    print(f"scan of {len(local.steps)} steps on the Ray head: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 1, proc.stdout + proc.stderr                # 1: steps 3-5 have error findings
    assert f"rescan [] {local.steps}" in proc.stdout, proc.stdout + proc.stderr   # the manifest a Ray scan wrote is a normal one
    assert local.bad_steps == [3, 4, 5]
    for name in ("steps", "rows", "groups", "findings"):     # byte-identical, not only equal as tables
        assert (tmp_path / "ray" / f"{name}.parquet").read_bytes() == (local.store / f"{name}.parquet").read_bytes(), name
    for s in local.steps:
        part = Path("tokens") / f"step={s}" / "part-0.parquet"
        assert (tmp_path / "ray" / part).read_bytes() == (local.store / part).read_bytes(), s


def test_ray_without_the_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    run = write_primerl_run(tmp_path / "run", steps=[1], n_rows=2)
    monkeypatch.setitem(sys.modules, "ray", None)            # import ray -> ImportError
    assert main(["scan", str(run), "--ray"]) == 2
    assert "--ray needs the ray package" in capsys.readouterr().err
