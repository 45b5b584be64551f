"""Runs on a real Dask ``distributed`` cluster (and on Ray), against loky.

The clusters here are local (worker processes on 127.0.0.1), but the harness
reaches them as it would reach remote ones: through ``--scheduler``.
A run is deterministic given its seed when torch uses one thread (every
backend's workers do), so the records must be equal, not just close.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from experiments import ledger, runner
from experiments.settings import Settings, record_settings, resolve

distributed = pytest.importorskip("distributed", reason="the cluster extra is not installed")

TIMING_KEYS = ("wall_time_s", "init_time_s", "host")


def _comparable(record: dict) -> dict:
    """A record without what depends on the machine's load: timings and the host name."""
    out = {k: v for k, v in record.items() if k not in TIMING_KEYS}
    out["history"] = [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in record["history"]]
    return out


def _tiny(tmp_path: Path, name: str, **overrides) -> Settings:
    values = {
        "results_root": str(tmp_path),
        "name": name,
        "inits": ("kaiming_normal",),
        "seeds": 2,
        "epochs": 1,
        "train_subset": 1000,
        "holdout": 1000,
        "lp_batch": 64,
        "stability_images": 8,
        "n_jobs": 2,
        **overrides,
    }
    settings = resolve("quick", values)
    record_settings(settings)
    return settings


def _runs(settings: Settings) -> dict[str, dict]:
    return {r["key"]: r for r in ledger.read_lines(settings.results_dir / "runs.jsonl")}


@pytest.fixture(scope="module")
def dask_cluster():
    """A Dask LocalCluster of 2 worker processes (one thread each) on 127.0.0.1."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def loky_runs(tmp_path_factory):
    """The reference: the same tiny runs with loky's 2 worker processes."""
    settings = _tiny(tmp_path_factory.mktemp("loky"), "loky", backend="loky")
    outcome = runner.execute(settings, runner.plan_tasks(settings), progress=False)
    assert outcome.failures == 0
    return _runs(settings)


@pytest.mark.slow
def test_dask_cluster_gives_the_same_runs_as_loky(tmp_path, dask_cluster, loky_runs):
    settings = _tiny(tmp_path, "dask", backend="dask", scheduler=dask_cluster.scheduler_address)
    outcome = runner.execute(settings, runner.plan_tasks(settings), progress=False)
    assert (len(outcome.finished), outcome.failures) == (2, 0)
    runs = _runs(settings)
    assert (
        sorted(runs)
        == sorted(loky_runs)
        == ["kaiming_normal|seed|seed=0|lr=0.01", "kaiming_normal|seed|seed=1|lr=0.01"]
    )
    for key, record in runs.items():
        assert _comparable(record) == _comparable(loky_runs[key])  # every metric, bit for bit


def test_dask_scheduling_with_a_stand_in_run(tmp_path, monkeypatch, fake_record):
    """The runner's Dask path (connect, submit, collect, record once) in seconds: a
    cluster whose workers are threads of this process, so a stand-in run_one reaches them."""
    from distributed import LocalCluster

    from experiments import measure

    seen = []

    def stand_in(spec, settings):
        seen.append((spec.key, threading.current_thread().name))
        return fake_record(spec.init, spec.seed, 0.5, 90.0)

    monkeypatch.setattr(measure, "run_one", stand_in)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        settings = _tiny(tmp_path, "dask-threads", backend="dask", scheduler=cluster.scheduler_address, seeds=3)
        outcome = runner.execute(settings, runner.plan_tasks(settings), progress=False)
    planned = sorted(t.key for t in runner.plan_tasks(settings))
    assert sorted(key for key, _ in seen) == planned  # each run computed once ...
    assert sorted(_runs(settings)) == planned and len(outcome.finished) == 3  # ... and written once
    assert all("Dask" in thread for _, thread in seen)  # on the Dask workers' threads, not this one


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_run_whose_dask_worker_dies_is_retried_once(tmp_path, dask_cluster):
    """Kill one worker process in the middle of its run: Dask reschedules the run
    on a live worker; runs.jsonl gets each run exactly once."""
    from distributed import Client

    settings = _tiny(tmp_path, "dask-kill", backend="dask", scheduler=dask_cluster.scheduler_address, epochs=10)
    killed: list[int] = []

    def kill_one_worker_mid_run():
        with Client(dask_cluster.scheduler_address) as client:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                busy = [address for address, tasks in client.processing().items() if tasks]
                if busy:
                    pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                    start = _cpu_seconds(pid)
                    while _cpu_seconds(pid) < start + 1 and time.monotonic() < deadline:  # well into the run
                        time.sleep(0.1)
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
                time.sleep(0.1)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    outcome = runner.execute(settings, runner.plan_tasks(settings), progress=False)
    killer.join()
    assert len(killed) == 1, "no run was seen in progress to kill its worker"
    lines = (settings.results_dir / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2 and sorted(_runs(settings)) == sorted(t.key for t in runner.plan_tasks(settings))
    assert (len(outcome.finished), outcome.failures) == (2, 0)  # retried, not lost


@pytest.mark.slow
def test_compare_starts_its_own_local_dask_cluster(tmp_path, tiny_argv, loky_runs):
    """``--backend dask`` without ``--scheduler``: the runner starts a LocalCluster of --n-jobs workers."""
    from experiments.compare import main

    argv = tiny_argv("--inits", "kaiming_normal", "--seeds", "2", "--n-jobs", "2", "--backend", "dask")
    assert main([*argv, "--name", "dask-local"]) == 0
    runs = {r["key"]: r for r in ledger.read_lines(tmp_path / "dask-local" / "runs.jsonl")}
    assert {k: _comparable(r) for k, r in runs.items()} == {k: _comparable(r) for k, r in loky_runs.items()}


@pytest.mark.slow
def test_ray_gives_the_same_runs_as_loky(tmp_path, loky_runs):
    pytest.importorskip("ray", reason="ray is not installed")
    settings = _tiny(tmp_path, "ray", backend="ray")
    outcome = runner.execute(settings, runner.plan_tasks(settings), progress=False)
    assert (len(outcome.finished), outcome.failures) == (2, 0)
    assert {k: _comparable(r) for k, r in _runs(settings).items()} == {k: _comparable(r) for k, r in loky_runs.items()}


def test_an_unreachable_scheduler_is_a_one_line_error(tmp_path, tiny_argv, capsys, no_training):
    import dask

    from experiments.compare import main

    argv = tiny_argv("--backend", "dask", "--scheduler", "tcp://127.0.0.1:9")  # port 9: nothing listens
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("python -m experiments.compare: error: Could not connect to the Dask")
