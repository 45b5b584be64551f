"""Independent pieces of work, spread over this process and helper processes.

``map_chunks(solve_chunk, data, order, helpers)`` calls
``solve_chunk(data, units, threads=..., tick=...)`` on consecutive chunks of
``order`` until all of it is done:

- *Guided self-scheduling.* Each chunk takes ``1 / (CHUNKS_PER_WORKER x
  workers)`` of the units still left, so chunks shrink towards the end and
  nobody waits long for the last one.
- *This process works too.* It solves chunks itself while the helpers solve
  others: it is never idle while they start, and never waits for a result it
  could compute. ``helpers = n_jobs - 1``.
- *Helpers stay up.* They are joblib's loky worker processes, reused between
  calls for ``IDLE_WORKER_TIMEOUT_S``; each gets one chunk running and one
  waiting, so it does not idle while a result travels back.
- *Data travels once.* ``data`` is written to one temporary file per call (in
  shared memory where there is some); a task names the file and its units,
  and a helper reads the file on its first chunk only.
"""

from __future__ import annotations

import gc
import os
import pickle
import queue
import tempfile
import threading
import uuid
from concurrent.futures import wait
from contextlib import contextmanager

import numpy as np
from joblib.executor import get_memmapping_executor

CHUNKS_PER_WORKER = 4
"""Guided scheduling: a chunk takes 1 / (this x workers) of the units left."""

MIN_CHUNK_UNITS = 8
"""The smallest chunk: below it, handing the chunk out weighs on its work."""

IDLE_WORKER_TIMEOUT_S = 300
"""Helper processes stay up this long between calls (joblib's own default),
so that later layers and later calls do not start them again."""

ONE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
"""A helper is one core's worth of work: no thread pools under numpy."""


def map_chunks(solve_chunk, data, order: np.ndarray, helpers: int, *, tick=None, helper_setup=None):
    """Yield ``(units, solve_chunk(data, units, threads=..., tick=...))`` for
    consecutive chunks ``units`` of ``order``, in the order they finish.

    Args:
        solve_chunk: a module-level function (helpers import it by name).
            It gets ``threads=0`` here and ``threads=1`` in a helper, and
            ``tick`` (called with 1 per unit) here only.
        data: what ``solve_chunk`` needs besides the units; picklable.
        order: the units, in the order to hand them out.
        helpers: helper processes to use besides this one (0: none).
        tick: ``tick(n)`` when n more units are done (e.g. a progress bar's update).
        helper_setup: a module-level function run in a helper before each chunk.
    """
    tick = tick or (lambda n: None)
    start = 0

    def next_chunk() -> np.ndarray:
        nonlocal start
        size = max(MIN_CHUNK_UNITS, -(-(len(order) - start) // (CHUNKS_PER_WORKER * (helpers + 1))))
        chunk, start = order[start : start + size], start + size
        return chunk

    if not helpers:
        while start < len(order):
            chunk = next_chunk()
            yield chunk, solve_chunk(data, chunk, threads=0, tick=tick)
        return

    executor = get_memmapping_executor(helpers, timeout=IDLE_WORKER_TIMEOUT_S, env=ONE_THREAD_ENV)
    lock = threading.RLock()  # guards next_chunk and the fields below, shared with loky's thread
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
                depth = 2 if len(order) - start > 4 * MIN_CHUNK_UNITS * (helpers + 1) else 1
                while not stop and start < len(order) and waiting < depth * helpers:
                    chunk = next_chunk()
                    future = executor.submit(_in_helper, path, solve_chunk, chunk, helper_setup)
                    units_of[future], waiting = chunk, waiting + 1
                    future.add_done_callback(feed)  # runs at once if already done: the lock is reentrant
            except BaseException as error:  # e.g. a broken pool: hand it to the loop below
                stop = True
                finished.put(error)

    with _shared_file(data) as path:
        try:
            feed()
            solved = 0
            while solved < len(order):
                with lock:
                    chunk = next_chunk() if start < len(order) and not stop else None
                if chunk is not None:
                    yield chunk, solve_chunk(data, chunk, threads=0, tick=tick)
                    solved += len(chunk)
                # what the helpers finished meanwhile; with nothing left to do here, wait for it
                while not finished.empty() or (chunk is None and solved < len(order)):
                    done = finished.get()
                    if isinstance(done, BaseException):
                        raise done
                    tick(len(units_of[done]))
                    yield units_of[done], done.result()
                    solved += len(units_of[done])
        finally:  # after an error: drop the chunks not started, and let the others end before the file goes
            with lock:
                stop = True
            for future in units_of:
                future.cancel()
            wait(units_of)


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
