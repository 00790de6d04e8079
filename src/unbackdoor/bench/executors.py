"""Where grid cells run: in this process, in local worker processes, or on a cluster scheduler.

Every executor has one method, ``run(fn, jobs, after)``, that yields ``(index, result)`` as jobs
finish, where ``result`` is ``fn(job)`` or the exception that escaped it. ``after[i]`` lists the
jobs that job ``i`` needs finished first (a cell needs the zoo models trained in the same queue);
the local process pool starts, whenever a worker is free, the first job in queue order whose
prerequisites are done, so that no worker waits on the zoo's lock while a runnable job waits.
``fn`` and the jobs must be picklable (module-level functions, dataclasses). The grid never
changes with the executor: ``executor: local`` with ``workers: N`` uses a spawn-context process
pool, ``executor: submitit`` hands each job to a cluster through
`submitit <https://github.com/facebookincubator/submitit>`_
(Slurm, or its ``local``/``debug`` modes), configured by ``executor_options``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from unbackdoor.errors import ConfigError

Result = tuple[int, Any]
After = Sequence[Sequence[int]] | None


def _prerequisites(jobs: Sequence[Any], after: After) -> list[set[int]]:
    if after is None:
        return [set() for _ in jobs]
    if len(after) != len(jobs):
        raise ValueError(f"after has {len(after)} entries for {len(jobs)} jobs")
    return [set(a) for a in after]


class Executor:
    """Runs ``fn`` over jobs and yields ``(index, result or exception)`` in completion order."""

    name = "executor"
    #: may cells be queued behind the models they need? Yes on one machine, where the zoo's
    #: file lock makes a cell wait for its model; a cluster gets models first, then cells
    pipelined = True

    def run(
        self, fn: Callable[[Any], Any], jobs: Sequence[Any], after: After = None
    ) -> Iterator[Result]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class SerialExecutor(Executor):
    """One job after another in this process (``workers: 1``); Ctrl-C stops at once. The queue
    order already puts every job after its prerequisites, so ``after`` changes nothing here."""

    name = "serial"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def run(
        self, fn: Callable[[Any], Any], jobs: Sequence[Any], after: After = None
    ) -> Iterator[Result]:
        _prerequisites(jobs, after)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        for i, job in enumerate(jobs):
            try:
                result: Any = fn(job)
            except Exception as e:  # noqa: BLE001  (reported as the job's result)
                result = e
            yield i, result


def _init_worker(threads: int, quiet: bool) -> None:
    """Process-pool initializer: one share of the cores per worker, no nested progress bars."""
    import torch

    torch.set_num_threads(threads)
    if quiet:
        os.environ["UNBACKDOOR_NO_PROGRESS"] = "1"


class ProcessExecutor(Executor):
    """``workers`` spawned processes, each with ``threads`` torch threads."""

    name = "processes"

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self.workers = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)

    def describe(self) -> str:
        return f"{self.workers} processes x {self.threads} threads"

    def run(
        self, fn: Callable[[Any], Any], jobs: Sequence[Any], after: After = None
    ) -> Iterator[Result]:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        needs = _prerequisites(jobs, after)
        workers = min(self.workers, max(1, len(jobs)))

        def new_pool() -> ProcessPoolExecutor:
            return ProcessPoolExecutor(
                max_workers=workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.threads, True),
            )

        pool = new_pool()
        waiting = list(range(len(jobs)))  # not started yet, in queue order
        finished: set[int] = set()
        running: dict[Future[Any], int] = {}

        def start_ready() -> None:
            # only as many jobs as workers are handed to the pool, so that the choice of the
            # next job is made when a worker frees up, not when the queue is built
            nonlocal pool
            while waiting and len(running) < workers:
                i = next((i for i in waiting if needs[i] <= finished), None)
                if i is None:
                    if running:
                        return  # every waiting job needs one that is running
                    i = waiting[0]  # prerequisites outside this queue: start in order
                try:
                    fut = pool.submit(fn, jobs[i])
                except BrokenProcessPool:
                    # a worker died (killed for memory, a crash): the jobs it ran come back
                    # as errors; the jobs still waiting get a fresh pool
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = new_pool()
                    fut = pool.submit(fn, jobs[i])
                waiting.remove(i)
                running[fut] = i

        try:
            start_ready()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                results: list[Result] = []
                for fut in done:
                    i = running.pop(fut)
                    finished.add(i)
                    try:
                        result: Any = fut.result()
                    except Exception as e:  # noqa: BLE001  (a worker died, or pickling failed)
                        result = e
                    results.append((i, result))
                start_ready()  # before the caller handles the results: no worker idles
                yield from results
        except BaseException:
            # stop at once: running cells are lost anyway (their rows are never half-written),
            # and a worker left running would keep the interpreter from exiting
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


class SubmititExecutor(Executor):
    """Jobs handed to a scheduler through submitit; ``options`` go to ``update_parameters``.

    ``options`` may hold ``cluster`` (``slurm``, ``local``, ``debug``; default: auto-detected),
    ``folder`` (job logs; default ``<out>/submitit``) and ``poll_seconds`` (default 10), and
    otherwise submitit's own parameters (``timeout_min``, ``slurm_partition``, ``gpus_per_node``,
    ``cpus_per_task``, ...).
    """

    name = "submitit"
    pipelined = False  # a cell job must not hold a cluster slot while its model trains

    def __init__(self, options: dict[str, Any], folder: Path) -> None:
        try:
            import submitit
        except ImportError:
            raise ConfigError(
                "executor 'submitit' needs the submitit package: "
                "pip install 'unbackdoor[cluster]' (or pip install submitit)"
            ) from None
        opts = dict(options)
        self.cluster = opts.pop("cluster", None)
        self.poll = float(opts.pop("poll_seconds", 10))
        folder = Path(opts.pop("folder", folder))
        self.executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        try:
            self.executor.update_parameters(**opts)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"executor_options: {e}") from None

    def describe(self) -> str:
        return f"submitit ({self.executor.cluster})"

    def run(
        self, fn: Callable[[Any], Any], jobs: Sequence[Any], after: After = None
    ) -> Iterator[Result]:
        # not pipelined: the grid hands over models and cells in separate calls
        _prerequisites(jobs, after)
        submitted = [self.executor.submit(fn, job) for job in jobs]
        if self.executor.cluster == "debug":  # debug jobs run in this process when asked
            order: Iterator[int] = iter(range(len(submitted)))
        else:
            order = self._as_completed(submitted)
        try:
            for i in order:
                try:
                    result: Any = submitted[i].result()
                except Exception as e:  # noqa: BLE001  (the job failed on the cluster)
                    result = e
                yield i, result
        except BaseException:
            for job in submitted:
                if not job.done():
                    job.cancel(check=False)
            raise

    def _as_completed(self, submitted: list[Any]) -> Iterator[int]:
        pending = set(range(len(submitted)))
        while pending:
            for i in sorted(pending):
                if submitted[i].done():
                    pending.discard(i)
                    yield i
            if pending:
                time.sleep(self.poll)


def make_executor(
    kind: str, workers: int, threads: int | None, options: dict[str, Any], folder: Path
) -> Executor:
    """The executor a config asks for (``local`` with 1 worker runs in this process)."""
    if kind == "submitit":
        return SubmititExecutor(options, folder)
    if kind != "local":
        raise ConfigError(f"executor {kind!r} is unknown; expected 'local' or 'submitit'")
    if options:
        raise ConfigError(
            f"executor_options {sorted(options)} are only for executor 'submitit'; "
            "the local executor takes workers and threads"
        )
    return SerialExecutor(threads) if workers == 1 else ProcessExecutor(workers, threads)
