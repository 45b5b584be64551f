"""Resumable, parallel execution of runs, shared safely between processes.

The parent process alone writes the results folder. It claims a run
(``experiments.ledger.SharedFolder``), hands it to an executor, and appends
the record to ``runs.jsonl`` as it arrives; a run that raised goes to
``failures.jsonl`` and is retried by the next invocation. A process killed at
any moment loses only its runs in flight; its claims are taken over by the
next process that looks at them. Several processes started on one folder
share its runs, each run computed once; a process that runs out of runs to
claim waits for those its siblings hold, and takes over any whose owner dies.

Backends (``--backend``), each a ``concurrent.futures.Executor``:

- ``loky`` (default): worker processes on this machine (joblib's loky), one
  torch thread each; ``--n-jobs 1`` runs in this process instead.
- ``multiprocessing``: the standard library's process pool (spawn).
- ``threading``: threads in this process (torch releases the GIL in its kernels).
- ``dask``: a Dask ``distributed`` cluster: ``--scheduler tcp://HOST:PORT``
  connects to a running one; without it a ``LocalCluster`` of ``--n-jobs``
  worker processes (one thread each) is started. A run whose worker dies is
  rescheduled by Dask on another worker; its result still comes back once.
- ``ray``: ``--scheduler HOST:PORT`` (or ``ray://HOST:PORT``) joins a running
  Ray cluster; without it a local Ray instance with ``--n-jobs`` CPUs starts.
  Ray retries a run whose worker dies.

Local worker processes exit within a second of their parent's death, even in
the middle of a run (``experiments.lifeline``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from experiments import measure
from experiments.inits import is_control
from experiments.ledger import HEARTBEAT_S, SharedFolder
from experiments.lifeline import exit_with_parent
from experiments.measure import RunSpec
from experiments.settings import LOCAL_BACKENDS, Settings


class ClusterUnavailable(RuntimeError):
    """The cluster given by ``--scheduler`` could not be reached."""


POLL_S = 1.0
"""How often a process with nothing to run looks whether its siblings' runs are settled."""


def safe_run(spec: RunSpec, settings: Settings, torch_threads: int | None = None) -> dict:
    """``measure.run_one``, but a failure comes back as ``{"key", "error"}``
    instead of stopping every other run. ``torch_threads`` caps torch's
    threads in this process (one per worker when runs go in parallel)."""
    import torch

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        return measure.run_one(spec, settings)
    except Exception as err:
        return _failure(spec, f"{type(err).__name__}: {err}", traceback.format_exc())


def _failure(spec: RunSpec, error: str, trace: str = "") -> dict:
    return {"key": spec.key, **spec.to_dict(), "error": error, "traceback": trace}


def run_in_worker(spec: RunSpec, settings: Settings, torch_threads: int | None, parent_pid: int | None) -> dict:
    """What a worker executes: ``safe_run``, in a process that ends if
    ``parent_pid`` (the process that started it, when local) dies."""
    if parent_pid is not None:
        exit_with_parent(parent_pid)  # already armed by the pool's initializer; this is a no-op then
    return safe_run(spec, settings, torch_threads)


def plan_tasks(settings: Settings) -> list[RunSpec]:
    """Every (init, arch, seed, lr) of the settings. LP runs come before their
    bias_shift controls so the controls usually find the LP's targets cached."""
    order = sorted(settings.inits, key=is_control)
    return [
        RunSpec(init, arch, seed, lr)
        for seed in range(settings.first_seed, settings.first_seed + settings.seeds)
        for arch in settings.archs
        for init in order
        for lr in settings.lrs
    ]


# --- executors ----------------------------------------------------------------


class _InThisProcess(Executor):
    """Runs each call at submission, in this thread (``--n-jobs 1``): Ctrl-C stops it at once."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:
            future.set_exception(err)
        return future


class _RayExecutor(Executor):
    def __init__(self, ray):
        self._remote = ray.remote(num_cpus=1, max_retries=3)(run_in_worker)

    def submit(self, fn, /, *args, **kwargs):
        if fn is not run_in_worker:
            raise ValueError("The Ray executor runs run_in_worker only.")
        return self._remote.remote(*args, **kwargs).future()


@dataclass
class Pool:
    """An executor, how many runs to keep in flight on it, and the worker arguments that suit it."""

    executor: Executor
    slots: int
    torch_threads: int | None
    parent_pid: int | None
    renew: Callable[[], Executor] | None = None  # a fresh executor after a worker process died


def _local_pool(settings: Settings) -> Pool:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from joblib.externals.loky import ProcessPoolExecutor as LokyPool

    n = settings.n_jobs
    if n == 1:
        return Pool(_InThisProcess(), 1, None, None)
    if settings.backend == "threading":
        return Pool(ThreadPoolExecutor(n, thread_name_prefix="run"), n, 1, None)

    parent = os.getpid()

    def new() -> Executor:
        if settings.backend == "loky":
            return LokyPool(max_workers=n, initializer=exit_with_parent, initargs=(parent,))
        spawn = get_context("spawn")
        return ProcessPoolExecutor(n, mp_context=spawn, initializer=exit_with_parent, initargs=(parent,))

    return Pool(new(), n, 1, parent, renew=new)


@contextlib.contextmanager
def open_pool(settings: Settings) -> Iterator[Pool]:
    """The executor for ``settings.backend``, shut down (and a cluster started here stopped) on exit."""
    if settings.backend in LOCAL_BACKENDS:
        pool = _local_pool(settings)
        try:
            yield pool
        except BaseException:  # Ctrl-C or a bug: do not wait for the runs in flight
            _stop(pool.executor, wait=False)
            raise
        _stop(pool.executor, wait=True)
    elif settings.backend == "dask":
        with _dask_pool(settings) as pool:
            yield pool
    elif settings.backend == "ray":
        with _ray_pool(settings) as pool:
            yield pool
    else:  # settings.validate lists the valid ones
        raise ValueError(f"Unhandled backend {settings.backend!r}.")


def _stop(executor: Executor, wait: bool) -> None:
    """Shut ``executor`` down; without ``wait``, drop queued calls and end running worker processes."""
    from joblib.externals.loky import ProcessPoolExecutor as LokyPool

    if isinstance(executor, LokyPool):
        executor.shutdown(wait=wait, kill_workers=not wait)
    else:
        executor.shutdown(wait=wait, cancel_futures=True)


@contextlib.contextmanager
def _dask_pool(settings: Settings) -> Iterator[Pool]:
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if settings.scheduler:
            try:
                client = stack.enter_context(Client(settings.scheduler))  # waits distributed.comm.timeouts.connect
            except OSError as err:
                raise ClusterUnavailable(
                    f"Could not connect to the Dask scheduler at {settings.scheduler} ({err}). "
                    "Is `dask scheduler` running there, and is the port open?"
                ) from err
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=settings.n_jobs,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=":0",  # any free port: several clusters may run on one machine
                    silence_logs=logging.ERROR,  # not the nanny's notes on workers closing slowly
                )
            )
            client = stack.enter_context(Client(cluster))
        slots = settings.n_jobs if settings.n_jobs > 0 else max(1, sum(client.nthreads().values()))
        executor = client.get_executor(pure=False)
        yield Pool(executor, slots, 1, None)


@contextlib.contextmanager
def _ray_pool(settings: Settings) -> Iterator[Pool]:
    import ray

    started = not ray.is_initialized()
    if started:
        if settings.scheduler:
            try:
                ray.init(address=settings.scheduler, log_to_driver=False)
            except (ConnectionError, RuntimeError) as err:
                raise ClusterUnavailable(
                    f"Could not join the Ray cluster at {settings.scheduler} ({err}). Is `ray start --head` running?"
                ) from err
        else:
            ray.init(num_cpus=settings.n_jobs, include_dashboard=False, log_to_driver=False)
    try:
        slots = settings.n_jobs if settings.n_jobs > 0 else max(1, int(ray.cluster_resources().get("CPU", 1)))
        yield Pool(_RayExecutor(ray), slots, 1, None)
    finally:
        if started:
            ray.shutdown()


# --- the scheduling loop --------------------------------------------------------


@dataclass
class Outcome:
    """What ``execute`` saw: the runs this process finished and failed, and the others."""

    planned: int
    already_done: int = 0
    finished: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    done_elsewhere: int = 0
    failed_elsewhere: int = 0

    @property
    def failures(self) -> int:
        return len(self.failed) + self.failed_elsewhere


class _Heartbeat:
    """Refreshes this process's claims every ``HEARTBEAT_S`` from a daemon thread."""

    def __init__(self, folder: SharedFolder):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(folder,), daemon=True, name="claims-heartbeat")

    def _beat(self, folder: SharedFolder) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            folder.heartbeat()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()


def execute(
    settings: Settings,
    tasks: list[RunSpec],
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> Outcome:
    """Run the ``tasks`` not yet finished in ``settings.results_dir``, sharing
    them with any other process working on that folder; return what happened."""
    from tqdm import tqdm

    folder = SharedFolder(settings.results_dir)
    keys = {t.key for t in tasks}
    finished, _, _ = folder.status(keys)  # before this process started
    outcome = Outcome(planned=len(tasks), already_done=len(finished))
    queue = [t for t in tasks if t.key not in finished]
    if not queue:
        return outcome
    bar = tqdm(total=len(queue), desc=f"runs ({len(finished)} already done)", unit="run", disable=not progress)
    mine: set[str] = set()

    def settle(spec: RunSpec, record: dict) -> None:
        mine.add(spec.key)
        bar.update()
        if "error" in record:
            folder.record_failure(record)
            outcome.failed.append(record)
            bar.write(f"run {spec.key} failed: {record['error']} (logged to failures.jsonl; a rerun retries it)")
        elif folder.record_result(record):
            outcome.finished.append(record)
            bar.set_postfix_str(f"last: {spec.key} {record['final']['test_accuracy']:.2f}%")
            if on_record is not None:
                on_record(record)

    try:
        with _Heartbeat(folder), open_pool(settings) as pool:
            in_flight: dict[Future, tuple[RunSpec, Executor]] = {}
            while True:
                while queue and len(in_flight) < pool.slots:
                    spec = queue.pop(0)
                    if folder.claim(spec.key):
                        args = (spec, settings, pool.torch_threads, pool.parent_pid)
                        in_flight[pool.executor.submit(run_in_worker, *args)] = (spec, pool.executor)
                if in_flight:
                    done, _ = wait(in_flight, timeout=POLL_S, return_when=FIRST_COMPLETED)
                    for future in done:
                        spec, executor = in_flight.pop(future)
                        err = future.exception()
                        if err is None:
                            settle(spec, future.result())
                            continue
                        # The worker, not the run, failed (safe_run catches the run's errors): e.g. it died.
                        settle(
                            spec,
                            _failure(
                                spec, f"{type(err).__name__}: {err} (from the {settings.backend} backend, not the run)"
                            ),
                        )
                        if isinstance(err, BrokenExecutor) and pool.renew is not None and executor is pool.executor:
                            _stop(executor, wait=False)
                            pool.executor = pool.renew()
                    continue
                # Nothing of ours in flight: the rest are finished, failed or held by siblings.
                done_keys, failed_keys, elsewhere = folder.status(keys - mine)
                settled_elsewhere = (done_keys | failed_keys) - finished
                bar.update(len(mine) + len(settled_elsewhere) - bar.n)
                queue = [t for t in tasks if t.key not in mine | done_keys | failed_keys]
                if not queue:
                    outcome.done_elsewhere = len(done_keys - finished)
                    outcome.failed_elsewhere = len(failed_keys)
                    break
                if len(elsewhere) == len(queue):  # all held by live siblings: wait for them
                    time.sleep(POLL_S)
    finally:
        bar.close()
        folder.release_all()
    return outcome
