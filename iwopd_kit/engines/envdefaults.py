"""The one table of environment defaults for deterministic, CPU-friendly runs (vLLM on CPU).

Used by :func:`iwopd_kit.engines.rollout.configure_vllm_env` (and the vLLM server launcher), by the repo's
``conftest.py`` for plain ``pytest`` runs, and by ``scripts/env.sh``, which evaluates the exports this
file prints when run as a script (``python3 iwopd_kit/engines/envdefaults.py``). It imports nothing, so it
can be loaded before torch or vLLM and without the package. A value the user already set wins.
"""

from __future__ import annotations

VLLM_ENV_DEFAULTS: dict[str, str] = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",   # in-process engine: fast start, no __main__ guard
    "VLLM_CPU_KVCACHE_SPACE": "1",           # GiB; unset, vLLM takes ~9 GiB
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",      # both cores of a 2-core machine
    "VLLM_LOGGING_LEVEL": "ERROR",           # keep notebook stderr clean (nbval compares it)
}

# For whole runs (scripts, tests, notebook kernels): the vLLM defaults plus determinism.
# PYTHONHASHSEED only takes effect when set before Python starts (scripts/env.sh does that).
RUN_ENV_DEFAULTS: dict[str, str] = {
    "PYTHONHASHSEED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    **VLLM_ENV_DEFAULTS,
}


def shell_exports(defaults: dict[str, str] = RUN_ENV_DEFAULTS) -> str:
    """``export NAME=${NAME:-default}`` lines, one per default, for ``eval`` in a POSIX shell."""
    return "\n".join(f'export {k}="${{{k}:-{v}}}"' for k, v in defaults.items())


if __name__ == "__main__":
    print(shell_exports())
