"""Independent pieces of work, spread over this process and helper processes.

``map_chunks(solve_chunk, data, order, helpers)`` calls
``solve_chunk(data, units, threads=..., tick=...)`` on consecutive chunks of
``order`` until all of it is done:

- *Guided self-scheduling.* Each chunk takes ``1 / (CHUNKS_PER_WORKER x
  workers)`` of the units still left, so chunks shrink towards the end and
  nobody waits long for the last one.
- *This process works too.* It solves chunks itself while the helpers solve
  others: it is never idle while they start, and never waits for a result it
  could compute.
- *Helpers are started when they pay.* They are joblib's loky worker
  processes and stay up between calls for ``IDLE_WORKER_TIMEOUT_S``. If none
  is up, this process times its first ``PILOT_UNITS`` units and starts
  helpers only for work of at least ``START_PAYBACK`` times what starting them
  costs
  (``HELPER_START_S``); ``start_helpers`` starts them ahead of time.
- *Helpers never wait for this process.* Each has one chunk running and one
  waiting, refilled from the chunks' done-callbacks.
- *Data travels once.* ``data`` is written to one temporary file per call (in
  shared memory where there is some); a task names the file and its units,
  and a helper reads the file on its first chunk only.
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import queue
import tempfile
import threading
import time
import uuid
from concurrent.futures import wait
from contextlib import contextmanager

import numpy as np
from joblib.executor import get_memmapping_executor

CHUNKS_PER_WORKER = 4
"""Guided scheduling: a chunk takes 1 / (this x workers) of the units left."""

MIN_CHUNK_UNITS = 8
"""The smallest chunk: below it, handing the chunk out weighs on its work."""

HELPER_START_S = 0.5
"""What starting one helper costs (a core's seconds): a loky process that
imports numpy, scipy and HiGHS took 0.45-0.6 s on the 2-core test machine."""

PILOT_UNITS = 16
"""With no helper up, this process first times this many units alone."""

START_PAYBACK = 10
"""Helpers are started for work of at least this many start times each."""

IDLE_WORKER_TIMEOUT_S = 300
"""Helper processes stay up this long between calls (joblib's own default),
so that later layers and later calls do not start them again."""

ONE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
"""A helper is one core's worth of work: no thread pools under numpy."""


def map_chunks(solve_chunk, data, order, helpers, *, start_helpers="auto", tick=None, helper_setup=None):
    """Solve every unit of ``order``, in chunks, here and in up to ``helpers``
    helper processes. Returns ``([(units, solve_chunk(data, units, ...)), ...],
    helpers used)``, the chunks in the order they finished.

    Args:
        solve_chunk: a module-level function (helpers import it by name).
            It gets ``threads=0`` here and ``threads=1`` in a helper, and
            ``tick`` (called with 1 per unit) here only.
        data: what ``solve_chunk`` needs besides the units; picklable.
        order: the units, in the order to hand them out.
        helpers: the most helper processes to use besides this one.
        start_helpers: ``"auto"``: use the helpers if they are up; if not,
            time ``PILOT_UNITS`` units here and start them only when the rest
            of the work repays it (see ``helpers_worth_starting``).
            ``"always"``: start them in any case.
        tick: ``tick(n)`` when n more units are done (e.g. a progress bar's update).
        helper_setup: a module-level function run in a helper before each chunk.
    """
    tick = tick or (lambda n: None)
    schedule = _GuidedChunks(order, helpers + 1)
    parts = []
    if helpers and start_helpers == "auto":
        if running_helpers():
            helpers = min(helpers, running_helpers())
        else:  # time a few units here: is the rest worth starting helpers for?
            began = time.perf_counter()
            chunk = schedule.next(largest=PILOT_UNITS)
            parts.append((chunk, solve_chunk(data, chunk, threads=0, tick=tick)))
            seconds_left = (time.perf_counter() - began) / len(chunk) * schedule.units_left
            helpers = min(helpers, helpers_worth_starting(seconds_left))
        schedule.workers = helpers + 1
    if helpers:
        parts += _with_helpers(solve_chunk, data, schedule, helpers, tick, helper_setup)
    while schedule.units_left:
        chunk = schedule.next()
        parts.append((chunk, solve_chunk(data, chunk, threads=0, tick=tick)))
    return parts, helpers


def helpers_worth_starting(seconds_of_work: float) -> int:
    """How many helper processes to start for ``seconds_of_work`` (one
    process's time): one per ``START_PAYBACK`` start times, so that starting
    them costs at most 1 / START_PAYBACK of the work they share."""
    return int(seconds_of_work // (START_PAYBACK * HELPER_START_S))


def running_helpers() -> int:
    """Helper processes up now (0 if the pool is down, or joblib replaced it)."""
    executor = _pool.get("executor")
    flags = getattr(executor, "_flags", None)  # loky's own state: no public API tells whether a pool is up
    if flags is None or flags.shutdown or flags.broken:
        return 0
    return len(getattr(executor, "_processes", ()))


def start_helpers(helpers: int, preload: tuple[str, ...] = ()) -> None:
    """Start ``helpers`` helper processes now, without waiting for them, so
    that later calls find them up; each imports the modules ``preload``."""
    if helpers < 1:
        return
    executor = _helper_pool(helpers)
    for _ in range(helpers):
        executor.submit(_import, preload)


def stop_helpers() -> None:
    """Stop the helper processes now (they also stop after
    ``IDLE_WORKER_TIMEOUT_S`` idle); later calls start them again if they pay."""
    executor = _pool.pop("executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


_pool = {}  # "executor": the loky pool the helpers live in, as map_chunks last asked joblib for it


def _helper_pool(helpers: int):
    """joblib's pool of loky processes, with ``helpers`` of them (shared with
    joblib.Parallel: either one asking for other settings replaces it)."""
    _pool["executor"] = get_memmapping_executor(helpers, timeout=IDLE_WORKER_TIMEOUT_S, env=ONE_THREAD_ENV)
    return _pool["executor"]


def _import(modules: tuple[str, ...]) -> None:
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


def _with_helpers(solve_chunk, data, schedule, helpers, tick, helper_setup) -> list:
    """The chunks of ``schedule`` left, solved here and by ``helpers`` helpers."""
    executor = _helper_pool(helpers)
    lock = threading.RLock()  # guards schedule and the fields below, shared with loky's thread
    finished = queue.SimpleQueue()  # helpers' futures as they finish, or an error from feed
    units_of = {}  # every future -> its units
    waiting = 0  # chunks at the helpers, not finished yet
    stop = False

    def feed(done=None) -> None:
        """Keep two chunks at every helper, one running and one waiting. Runs
        here at first, then as the done-callback of every helper chunk (in
        loky's thread): a helper gets its next chunk without waiting for this
        process to finish its own."""
        nonlocal waiting, stop
        with lock:
            if done is not None:
                waiting -= 1
                finished.put(done)
            try:
                # near the end, no waiting chunk: it would keep this process waiting
                depth = 2 if schedule.units_left > 4 * MIN_CHUNK_UNITS * (helpers + 1) else 1
                while not stop and schedule.units_left and waiting < depth * helpers:
                    chunk = schedule.next()
                    future = executor.submit(_in_helper, path, solve_chunk, chunk, helper_setup)
                    units_of[future], waiting = chunk, waiting + 1
                    future.add_done_callback(feed)  # runs at once if already done: the lock is reentrant
            except BaseException as error:  # e.g. a broken pool: hand it to the loop below
                stop = True
                finished.put(error)

    parts, units, solved = [], schedule.units_left, 0
    with _shared_file(data) as path:
        try:
            feed()
            while solved < units:
                with lock:
                    chunk = schedule.next() if schedule.units_left and not stop else None
                if chunk is not None:
                    parts.append((chunk, solve_chunk(data, chunk, threads=0, tick=tick)))
                    solved += len(chunk)
                # what the helpers finished meanwhile; with nothing left to do here, wait for it
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


@contextmanager
def _shared_file(data):
    """A temporary file holding ``data``, removed on exit. Its name is unique
    (a UUID): helpers tell calls apart by it."""
    folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # RAM, where Linux has it
    descriptor, path = tempfile.mkstemp(prefix=f"lpinit-{uuid.uuid4().hex}-", suffix=".pkl", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
        yield path
    finally:
        os.remove(path)


_loaded = (None, None)  # (path, data): a helper's copy of the data of the call it works for


def _in_helper(path: str, solve_chunk, units: np.ndarray, helper_setup):
    """``solve_chunk(data, units, threads=1)`` in a helper, ``data`` read from
    ``path`` on the helper's first chunk of this call."""
    global _loaded
    if _loaded[0] != path:
        with open(path, "rb") as f:
            _loaded = (path, pickle.load(f))
        # loky runs gc.collect() between tasks now and then; over the objects
        # of numpy, scipy and the like it takes ~25 ms. Exempt those already
        # here (refcounting still frees them).
        gc.freeze()
    if helper_setup is not None:
        helper_setup()
    return solve_chunk(_loaded[1], units, threads=1)
