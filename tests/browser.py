"""Headless Chromium and JupyterLab helpers for the browser tests (not needed to use the library).

Chromium comes from Debian (``/usr/bin/chromium``; test tools' own browser downloads do not work
offline); Playwright-python drives it. JupyterLab is started on 127.0.0.1 with a token and stopped
by the pid we started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from iwopd_kit.views.chromium import CHROMIUM_ARGS, chromium_path, launch  # noqa: F401  (re-exported)
from iwopd_kit.engines.server import wait_for_http

@dataclass
class JupyterLab:
    process: subprocess.Popen
    url: str
    token: str

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)


def start_jupyterlab(root_dir: str | Path, port: int, token: str, log_path: str | Path,
                     timeout: float = 90.0) -> JupyterLab:
    """``jupyter lab`` on 127.0.0.1:port with a token, no browser; waits until it answers."""
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
           "--ServerApp.open_browser=False", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = JupyterLab(proc, f"http://127.0.0.1:{port}", token)
    try:
        wait_for_http(proc, f"{lab.url}/api/status?token={token}", timeout, Path(log_path), "jupyter lab")
    except Exception:
        lab.stop()
        raise
    return lab
