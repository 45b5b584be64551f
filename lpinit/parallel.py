"""Independent pieces of work, spread over this process and worker processes.

``map_chunks(solve_chunk, data, order, workers)`` calls
``solve_chunk(data, units, threads=..., tick=...)`` on consecutive chunks of
``order`` until all of it is done:

- *Guided self-scheduling.* Each chunk takes ``1 / (CHUNKS_PER_WORKER x
  workers)`` of the units still left, so chunks shrink towards the end and
  nobody waits long for the last one.
- *This process works too.* It solves chunks itself while the workers solve
  others: it is never idle while they start, and never waits for a result it
  could compute.
- *Workers are started when they pay.* They are joblib's loky worker
  processes and stay up between calls for ``IDLE_WORKER_TIMEOUT_S``. If none
  is up, this process times its first ``PILOT_UNITS`` units and starts
  workers only for work of at least ``START_PAYBACK`` times what starting one
  costs (``WORKER_START_S``); ``start_pool`` starts them ahead of time.
- *Workers never wait for this process.* Each has one chunk running and one
  waiting, refilled from the chunks' done-callbacks.
- *Data travels once.* ``data`` is written to one temporary file per call (in
  shared memory where there is some); a task names the file and its units,
  and a worker reads the file on its first chunk only.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import importlib
import os
import pickle
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import numpy as np
from joblib.executor import get_memmapping_executor
from joblib.externals.loky.backend import resource_tracker

CHUNKS_PER_WORKER = 4
"""Guided scheduling: a chunk takes 1 / (this x workers) of the units left."""

MIN_CHUNK_UNITS = 8
"""The smallest chunk: below it, handing the chunk out weighs on its work."""

WORKER_START_S = 0.5
"""What starting one worker process costs, in a core's seconds: a loky
process that imports numpy, scipy and HiGHS (measured: README, benchmarks)."""

PILOT_UNITS = 16
"""With no worker up, this process first times this many units alone."""

START_PAYBACK = 10
"""Workers are started for work of at least this many start times each."""

IDLE_WORKER_TIMEOUT_S = 300
"""Worker processes stay up this long between calls (joblib's own default),
so that later layers and later calls do not start them again."""

ONE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
"""A worker is one core's worth of work: no thread pools under numpy."""


class SolveChunk(Protocol):
    """What ``map_chunks`` calls: solve ``units`` of ``data`` with ``threads``
    threads (0: the solver's default), calling ``tick(n)`` as units finish."""

    def __call__(
        self, data: Any, units: np.ndarray, *, threads: int, tick: Callable[[int], object] | None = None
    ) -> Any: ...


def map_chunks(
    solve_chunk: SolveChunk,
    data: Any,
    order: np.ndarray,
    workers: int,
    *,
    start: Literal["auto", "always"] = "auto",
    tick: Callable[[int], object] | None = None,
    worker_setup: Callable[[], None] | None = None,
) -> tuple[list[tuple[np.ndarray, Any]], int]:
    """Solve every unit of ``order``, in chunks, here and in up to ``workers``
    worker processes. Returns ``([(units, solve_chunk(data, units, ...)), ...],
    workers used)``, the chunks in the order they finished.

    Args:
        solve_chunk: a module-level function (workers import it by name).
            It gets ``threads=0`` here and ``threads=1`` in a worker, and
            ``tick`` (called with 1 per unit) here only.
        data: what ``solve_chunk`` needs besides the units; picklable.
        order: the units, in the order to hand them out.
        workers: the most worker processes to use besides this one.
        start: ``"auto"``: use the workers if they are up; if not, time
            ``PILOT_UNITS`` units here and start them only when the rest of
            the work repays it (see ``workers_worth_starting``).
            ``"always"``: start them in any case.
        tick: ``tick(n)`` when n more units are done (e.g. a progress bar's update).
        worker_setup: a module-level function run in a worker before each chunk.
    """
    tick = tick or (lambda n: None)
    schedule = _GuidedChunks(order, workers + 1)
    parts = []
    if workers and start == "auto":
        if running_workers():
            workers = min(workers, running_workers())
        else:  # time a few units here: is the rest worth starting workers for?
            began = time.perf_counter()
            chunk = schedule.next(largest=PILOT_UNITS)
            parts.append((chunk, solve_chunk(data, chunk, threads=0, tick=tick)))
            seconds_left = (time.perf_counter() - began) / len(chunk) * schedule.units_left
            workers = min(workers, workers_worth_starting(seconds_left))
        schedule.workers = workers + 1
    if workers:
        parts += _with_workers(solve_chunk, data, schedule, workers, tick, worker_setup)
    while schedule.units_left:
        chunk = schedule.next()
        parts.append((chunk, solve_chunk(data, chunk, threads=0, tick=tick)))
    return parts, workers


def workers_worth_starting(seconds_of_work: float) -> int:
    """How many worker processes to start for ``seconds_of_work`` (one
    process's time): one per ``START_PAYBACK`` start times, so that starting
    them costs at most 1 / START_PAYBACK of the work they share."""
    return int(seconds_of_work // (START_PAYBACK * WORKER_START_S))


_THREADPOOLS: Any = None


def one_thread() -> contextlib.AbstractContextManager:
    """Limit numpy's and torch's BLAS/OpenMP pools to one thread until exit.

    ``threadpool_limits`` scans the process's loaded libraries on every call
    (``/proc/self/maps``, about a millisecond), which dominates a tiny layer's
    LP; the libraries are scanned once here, after numpy and torch are loaded.
    """
    global _THREADPOOLS
    if _THREADPOOLS is None:
        from threadpoolctl import ThreadpoolController

        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1)


def running_workers() -> int:
    """Worker processes up now (0 if the pool is down, or joblib replaced it)."""
    executor = _pool.get("executor")
    flags = getattr(executor, "_flags", None)  # loky's own state: no public API tells whether a pool is up
    if flags is None or flags.shutdown or flags.broken:
        return 0
    return len(getattr(executor, "_processes", ()))


def start_pool(workers: int, preload: tuple[str, ...] = ()) -> None:
    """Start ``workers`` worker processes now, without waiting for them, so
    that later calls find them up; each imports the modules ``preload``."""
    if workers < 1:
        return
    executor = _worker_pool(workers)
    for _ in range(workers):
        executor.submit(_import, preload)


def stop_pool() -> None:
    """Stop the worker processes now (they also stop after
    ``IDLE_WORKER_TIMEOUT_S`` idle); later calls start them again if they pay."""
    executor = _pool.pop("executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


_pool: dict[str, Any] = {}  # "executor": the loky pool of the workers, as map_chunks last asked joblib for it


def _worker_pool(workers: int) -> Any:
    """joblib's pool of loky processes, with ``workers`` of them (shared with
    joblib.Parallel: either one asking for other settings replaces it)."""
    _pool["executor"] = get_memmapping_executor(workers, timeout=IDLE_WORKER_TIMEOUT_S, env=ONE_THREAD_ENV)
    return _pool["executor"]


def _import(modules: tuple[str, ...]) -> None:
    _watch_parent()
    for module in modules:
        importlib.import_module(module)


class _GuidedChunks:
    """Guided self-scheduling: each chunk takes ``1 / (CHUNKS_PER_WORKER x
    workers)`` of the units left, at least ``MIN_CHUNK_UNITS``."""

    def __init__(self, order: np.ndarray, workers: int):
        self.order, self.workers, self.start = order, workers, 0

    @property
    def units_left(self) -> int:
        return len(self.order) - self.start

    def next(self, largest: int | None = None) -> np.ndarray:
        size = max(MIN_CHUNK_UNITS, -(-self.units_left // (CHUNKS_PER_WORKER * self.workers)))
        size = min(size, largest or size)
        chunk = self.order[self.start : self.start + size]
        self.start += len(chunk)
        return chunk


def _with_workers(
    solve_chunk: SolveChunk,
    data: Any,
    schedule: _GuidedChunks,
    workers: int,
    tick: Callable[[int], object],
    worker_setup: Callable[[], None] | None,
) -> list[tuple[np.ndarray, Any]]:
    """The chunks of ``schedule`` left, solved here and by ``workers`` worker processes."""
    executor = _worker_pool(workers)
    lock = threading.RLock()  # guards schedule and the fields below, shared with loky's thread
    finished: queue.SimpleQueue[Future | BaseException] = queue.SimpleQueue()  # futures as they finish, or an error
    units_of: dict[Future, np.ndarray] = {}  # every future -> its units
    waiting = 0  # chunks at the workers, not finished yet
    stop = False

    def feed(done: Future | None = None) -> None:
        """Keep two chunks at every worker, one running and one waiting. Runs
        here at first, then as the done-callback of every worker's chunk (in
        loky's thread): a worker gets its next chunk without waiting for this
        process to finish its own."""
        nonlocal waiting, stop
        with lock:
            if done is not None:
                waiting -= 1
                finished.put(done)
            try:
                # near the end, no waiting chunk: it would keep this process waiting
                depth = 2 if schedule.units_left > 4 * MIN_CHUNK_UNITS * (workers + 1) else 1
                while not stop and schedule.units_left and waiting < depth * workers:
                    chunk = schedule.next()
                    future = executor.submit(_in_worker, path, solve_chunk, chunk, worker_setup)
                    units_of[future], waiting = chunk, waiting + 1
                    future.add_done_callback(feed)  # runs at once if already done: the lock is reentrant
            except BaseException as error:  # e.g. a broken pool: hand it to the loop below
                stop = True
                finished.put(error)

    parts: list[tuple[np.ndarray, Any]] = []
    units, solved = schedule.units_left, 0
    with _shared_file(data) as path:
        try:
            feed()
            while solved < units:
                with lock:
                    chunk = schedule.next() if schedule.units_left and not stop else None
                if chunk is not None:
                    parts.append((chunk, solve_chunk(data, chunk, threads=0, tick=tick)))
                    solved += len(chunk)
                # what the workers finished meanwhile; with nothing left to do here, wait for it
                while not finished.empty() or (chunk is None and solved < units):
                    done = finished.get()
                    if isinstance(done, BaseException):
                        raise done
                    tick(len(units_of[done]))
                    parts.append((units_of[done], done.result()))
                    solved += len(units_of[done])
        finally:  # after an error: drop the chunks not started, and let the others end before the file goes
            with lock:
                stop = True
            for future in units_of:
                future.cancel()
            wait(units_of)
    return parts


def shared_folder() -> str:
    """Where the data of a call is shared with the workers: RAM, where Linux has it."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


PARENT_POLL_S = 0.5
"""How often a worker checks that the process that started it is alive."""

_watching = False


def _watch_parent() -> None:
    """In a worker: once the process that started it dies (killed, so that it
    could neither stop its pool nor remove its files), remove that process's
    shared files and exit, instead of waiting for work that never comes."""
    global _watching
    if _watching:
        return
    _watching = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        for path in glob.glob(os.path.join(shared_folder(), f"lpinit-{parent}-*.pkl")):
            with contextlib.suppress(OSError):
                os.remove(path)
        os._exit(0)

    threading.Thread(target=watch, name="lpinit-watch-parent", daemon=True).start()


@contextmanager
def _shared_file(data: Any) -> Iterator[str]:
    """A temporary file holding ``data``, removed on exit. Its name is unique
    (a UUID): workers tell calls apart by it."""
    # the parent's pid in the name: workers remove its files if it dies (_watch_parent)
    prefix = f"lpinit-{os.getpid()}-{uuid.uuid4().hex}-"
    descriptor, path = tempfile.mkstemp(prefix=prefix, suffix=".pkl", dir=shared_folder())
    # loky's resource tracker outlives this process and the workers: if all of
    # them die before the finally below (a signal while workers are inside
    # HiGHS, where their watch thread may never run), it removes the file
    resource_tracker.register(path, "file")
    try:
        with os.fdopen(descriptor, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
        yield path
    finally:
        os.remove(path)
        resource_tracker.unregister(path, "file")


_loaded: tuple[str | None, Any] = (None, None)  # (path, data): a worker's copy of the data of the call it works for


def _in_worker(path: str, solve_chunk: SolveChunk, units: np.ndarray, worker_setup: Callable[[], None] | None) -> Any:
    """``solve_chunk(data, units, threads=1)`` in a worker, ``data`` read from
    ``path`` on the worker's first chunk of this call."""
    global _loaded
    _watch_parent()
    if _loaded[0] != path:
        with open(path, "rb") as f:
            _loaded = (path, pickle.load(f))
        # loky runs gc.collect() between tasks now and then; over the objects
        # of numpy, scipy and the like it takes tens of ms. Exempt those
        # already here (refcounting still frees them).
        gc.freeze()
    if worker_setup is not None:
        worker_setup()
    return solve_chunk(_loaded[1], units, threads=1)
