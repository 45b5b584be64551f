"""Resumable, parallel execution of runs through joblib.

Results live in ``runs.jsonl`` (see ``experiments.ledger``), written by the
parent process only, one line as each result arrives. A run killed at any
moment therefore loses only the runs in progress. On start the file is read,
a trailing partial line is truncated away, and finished keys are skipped.

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

import os
import warnings
from collections.abc import Iterator

from experiments import measure
from experiments.inits import is_control
from experiments.ledger import append_line, read_lines
from experiments.measure import RunSpec
from experiments.settings import BACKENDS, Settings


def safe_run(spec: RunSpec, settings: Settings, torch_threads: int | None = None) -> dict:
    """``measure.run_one``, but a failure comes back as ``{"key", "error"}``
    instead of stopping every other run; the parent logs it to failures.jsonl
    and a rerun retries it. ``torch_threads`` caps torch's threads in this
    process (one per worker when runs go in parallel)."""
    import traceback

    import torch

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        return measure.run_one(spec, settings)
    except Exception as err:
        return {
            "key": spec.key,
            **spec.to_dict(),
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }


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


def execute(settings: Settings, tasks: list[RunSpec], progress: bool = True) -> Iterator[dict]:
    """Run ``tasks`` not already in runs.jsonl; append and yield each record as it finishes."""
    from joblib import Parallel, delayed, parallel_config
    from tqdm import tqdm

    path = settings.results_dir / "runs.jsonl"
    done = {r["key"] for r in read_lines(path)}
    todo = [t for t in tasks if t.key not in done]
    if not todo:
        return
    parallel = settings.n_jobs != 1
    threads = 1 if parallel else None
    client = _configure_backend(settings.backend)
    failures = 0

    def record_result(record: dict) -> bool:
        nonlocal failures
        if "error" in record:
            failures += 1
            append_line(settings.results_dir / "failures.jsonl", record)
            bar.write(f"run {record['key']} failed: {record['error']} (logged to failures.jsonl; a rerun retries it)")
            return False
        append_line(path, record)
        bar.set_postfix_str(f"last: {record['key']} {record['final']['test_accuracy']:.2f}%")
        return True

    bar = tqdm(total=len(todo), desc=f"runs ({len(done)} already done)", unit="run", disable=not progress)
    try:
        if not parallel:
            results = (safe_run(t, settings, threads) for t in todo)
            for record in results:
                bar.update()
                if record_result(record):
                    yield record
        else:
            with parallel_config(backend=settings.backend, n_jobs=settings.n_jobs):
                results = Parallel(return_as="generator_unordered")(
                    delayed(safe_run)(t, settings, threads) for t in todo
                )
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
