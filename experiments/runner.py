"""Resumable, parallel execution of runs through joblib.

Results live in ``runs.jsonl``: one complete JSON line per finished run,
written by the parent process only, with a single ``os.write`` on a file
opened ``O_APPEND``, then fsync'd, as each result arrives. A run killed at any
moment therefore loses only the runs in progress. On start the file is read,
a trailing partial line (a write cut short) is truncated away, and finished
keys are skipped; a duplicated key is never written.

Backends. ``--backend`` is handed to ``joblib.parallel_config``:

- ``loky`` (default): worker processes on this machine, one thread each.
- ``threading`` / ``multiprocessing``: the other local joblib backends.
- ``dask``: start a cluster and point ``DASK_SCHEDULER_ADDRESS`` at it
  (``pip install dask distributed``; ``dask scheduler`` + ``dask worker <addr>``
  on each node, with this repository installed); the runner creates a
  ``distributed.Client`` (a local cluster if the variable is unset).
- ``ray``: ``pip install ray``; ``ray start --head`` (and ``ray start
  --address=<head>`` on the other nodes); the runner calls
  ``ray.util.joblib.register_ray()`` and connects with ``ray.init()``.

In every case results still flow back to this process, which alone writes
runs.jsonl, so resumability works the same. ``--n-jobs`` bounds the number of
runs in flight.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from experiments.measure import run_key, run_one

BACKENDS = ("loky", "threading", "multiprocessing", "dask", "ray")


def read_runs(path: Path, repair: bool = True) -> list[dict]:
    """The finished runs in ``path``; a trailing partial line is dropped
    (and truncated from the file when ``repair``). Later duplicates of a key
    are ignored with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is a cut-short write
    if end < len(data):
        warnings.warn(
            f"{path}: dropping a partial last line ({len(data) - end} bytes) from an interrupted write.", stacklevel=2
        )
        if repair:
            with open(path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
    runs, seen = [], set()
    for number, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}, line {number}: not valid JSON ({err}). Complete lines are written "
                "atomically, so the file was edited by hand; remove that line to continue."
            ) from err
        if record["key"] in seen:
            warnings.warn(f"{path}: ignoring a duplicate of run {record['key']!r} on line {number}.", stacklevel=2)
            continue
        seen.add(record["key"])
        runs.append(record)
    return runs


def append_run(path: Path, record: dict) -> None:
    """Append one record as one line, atomically with respect to a crash."""
    line = (json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):  # a short write is as bad as a crash: undo it
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(f"Short write to {path} ({written} of {len(line)} bytes); nothing was recorded.")
        os.fsync(fd)
    finally:
        os.close(fd)


def safe_run(task: dict, settings: dict) -> dict:
    """``run_one``, but a failure comes back as ``{"key", "error"}`` instead of
    stopping every other run; the parent logs it to failures.jsonl and a
    rerun retries it."""
    import traceback

    try:
        return run_one(task, settings)
    except Exception as err:
        return {
            "key": run_key(task),
            **task,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }


def plan_tasks(settings) -> list[dict]:
    """Every (init, arch, seed, lr) of the settings. LP runs come before their
    bias_shift controls so the controls usually find the LP's targets cached."""
    order = sorted(settings.inits, key=lambda name: name.startswith("bias_shift@"))
    return [
        {"init": init, "arch": arch, "seed": seed, "lr": lr}
        for seed in range(settings.first_seed, settings.first_seed + settings.seeds)
        for arch in settings.archs
        for init in order
        for lr in settings.lrs
    ]


def _configure_backend(backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}. Valid backends: {', '.join(BACKENDS)}.")
    if backend == "ray":
        import ray
        from ray.util.joblib import register_ray

        register_ray()
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"))
        return None
    if backend == "dask":
        from distributed import Client

        return Client(os.environ.get("DASK_SCHEDULER_ADDRESS"))  # kept alive while running
    return None


def execute(settings, tasks: list[dict], progress: bool = True) -> Iterator[dict]:
    """Run ``tasks`` not already in runs.jsonl; append and yield each record as it finishes."""
    from joblib import Parallel, delayed, parallel_config
    from tqdm import tqdm

    path = settings.results_dir / "runs.jsonl"
    done = {r["key"] for r in read_runs(path)}
    todo = [t for t in tasks if run_key(t) not in done]
    if not todo:
        return
    payload = settings.to_dict()
    parallel = settings.n_jobs != 1
    payload["_single_thread"] = parallel
    client = _configure_backend(settings.backend)
    failures = 0

    def record_result(record: dict) -> bool:
        nonlocal failures
        if "error" in record:
            failures += 1
            append_run(settings.results_dir / "failures.jsonl", record)
            bar.write(f"run {record['key']} failed: {record['error']} (logged to failures.jsonl; a rerun retries it)")
            return False
        append_run(path, record)
        bar.set_postfix_str(f"last: {record['key']} {record['final']['test_accuracy']:.2f}%")
        return True

    bar = tqdm(total=len(todo), desc=f"runs ({len(done)} already done)", unit="run", disable=not progress)
    try:
        if not parallel:
            results = (safe_run(t, payload) for t in todo)
            for record in results:
                bar.update()
                if record_result(record):
                    yield record
        else:
            with parallel_config(backend=settings.backend, n_jobs=settings.n_jobs):
                results = Parallel(return_as="generator_unordered")(delayed(safe_run)(t, payload) for t in todo)
                for record in results:
                    bar.update()
                    if record_result(record):
                        yield record
    finally:
        bar.close()
        if client is not None:
            client.close()
        if failures:
            warnings.warn(f"{failures} run(s) failed; see {settings.results_dir / 'failures.jsonl'}.", stacklevel=2)
