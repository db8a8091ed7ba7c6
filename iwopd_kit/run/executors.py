"""Where the scan's step tasks run: a local process pool (``--workers N``) or a Ray cluster (``--ray [ADDRESS]``).

A task is one whole step (:func:`iwopd_kit.run.scan._scan_step`): it reads the step's files, checks the
step and writes its token partition under the store; what it returns (the step's small tables) is merged by
the caller. Both executors run the same function on the same task dicts, and the caller sorts every table by
its key, so the store does not depend on the executor or on the order tasks finish in.

With Ray, every node runs the task by path: the run folder and the store must be at the same path on each
node (one machine, or a shared filesystem), and the kit must be importable there. ``ray`` is imported only
when a Ray executor is made.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable

class RayUnavailable(ImportError):
    """``--ray`` without the ``ray`` package installed."""


Bar = Callable[[int], None]
"""Called with a step's number when its task is done (the progress bar)."""


class LocalExecutor:
    """``workers`` processes of a ``forkserver`` pool (fresh workers: no forked torch / OpenMP state); in this
    process when ``workers`` is 1 or there is a single task."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))

    def run(self, fn: Callable[[dict], dict], tasks: list[dict], bar: Bar) -> list[dict]:
        out = []
        if self.workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                out.append(fn(t))
                bar(t["step"])
            return out
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([fn.__module__])
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx) as ex:
            futures = {ex.submit(fn, t): t["step"] for t in tasks}
            for fut in as_completed(futures):
                out.append(fut.result())
                bar(futures[fut])
        return out

    def close(self) -> None:
        pass


class RayExecutor:
    """Tasks on a Ray cluster: ``address`` ``"HOST:PORT"`` (or ``"auto"``, ``"ray://..."``) joins an existing one;
    ``None`` starts a local Ray in this process (``address="local"``: never another user's cluster on this
    machine) with ``workers`` CPUs. One CPU per task; :meth:`close` disconnects (and stops a Ray it started)."""

    def __init__(self, address: str | None, workers: int | None = None):
        try:
            import ray
        except ImportError:
            raise RayUnavailable("--ray needs the ray package (pip install ray==2.60.0; requirements/README.md)") from None
        import logging

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            kw = dict(address=address, logging_level=logging.WARNING, log_to_driver=True)
            if address is None:
                kw.update(address="local", num_cpus=workers, include_dashboard=False)
            ray.init(**kw)

    def run(self, fn: Callable[[dict], dict], tasks: list[dict], bar: Bar) -> list[dict]:
        ray = self.ray
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = {remote.remote(t): t["step"] for t in tasks}
        out = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                try:
                    out.append(ray.get(ref))
                except ray.exceptions.RayTaskError as e:
                    raise e.as_instanceof_cause() from None
                bar(pending.pop(ref))
        return out

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def make_executor(workers: int, ray: str | bool | None = None) -> LocalExecutor | RayExecutor:
    """``ray`` None / False: the local pool; True or ``""``: a local Ray; an address: that cluster."""
    if ray is None or ray is False:
        return LocalExecutor(workers)
    return RayExecutor(None if ray is True or ray == "" else str(ray), workers)


__all__ = ["RayUnavailable", "LocalExecutor", "RayExecutor", "make_executor"]
