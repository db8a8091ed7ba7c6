"""Start and stop a vLLM OpenAI-compatible server on 127.0.0.1 (for tests, notebooks and the CLI).

The package's ``vllm`` console script does not work with the CPU build, so the server runs as
``python -m vllm.entrypoints.openai.api_server``. It is stopped by the pid we started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .envdefaults import VLLM_ENV_DEFAULTS


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VLLMServer:
    """A running server: ``base_url``, ``pid``, ``log`` path; ``stop()`` ends it."""

    process: subprocess.Popen
    base_url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group (API server, engine core, workers); wait until every
        process of the group is gone, SIGKILL what is left after ``timeout``."""
        if not _group_alive(self.pid):
            self.process.poll()
            return
        os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.process.poll()
            if not _group_alive(self.pid):
                return
            time.sleep(0.2)
        os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout)

    def __enter__(self) -> "VLLMServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(model_dir: str | Path, port: int | None = None, logprobs_mode: str = "raw_logprobs",
                 served_name: str = "student", max_model_len: int = 64, log_path: str | Path | None = None,
                 startup_timeout: float = 240.0) -> VLLMServer:
    """Start ``api_server`` on 127.0.0.1 and wait until ``/health`` answers 200."""
    port = port or free_port()
    log = Path(log_path) if log_path else Path(os.environ.get("TMPDIR", "/tmp")) / f"iwopd_vllm_server_{port}.log"
    env = {**os.environ}
    for k, v in VLLM_ENV_DEFAULTS.items():
        if k != "VLLM_ENABLE_V1_MULTIPROCESSING":
            env.setdefault(k, v)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", str(max_model_len), "--served-model-name", served_name,
           "--logprobs-mode", logprobs_mode, "--no-enable-prefix-caching", "--seed", "0"]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = VLLMServer(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_for_http(proc, server.base_url + "/health", startup_timeout, log, "vLLM server")
    except Exception:
        server.stop()
        raise
    return server


def wait_for_http(proc: subprocess.Popen, url: str, timeout: float, log: Path, what: str) -> None:
    """Poll ``url`` until it answers 200; a clear error if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log).read_text()[-2000:] if Path(log).exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {log}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer {url.split('?')[0]} within {timeout:.0f} s; see {log}")
