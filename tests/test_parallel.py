"""lpinit.parallel: every unit solved exactly once, here and in worker
processes; workers started only when they pay; errors reach the caller and
leave no file behind."""

import glob
import os
import tempfile

import numpy as np
import pytest

from lpinit import parallel
from lpinit.parallel import _GuidedChunks, map_chunks, workers_worth_starting


def square_units(data, units, *, threads, tick=None):
    """A chunk's work: ``data[units] ** 2``, and which process did it."""
    if tick is not None:
        tick(len(units))
    return data[units] ** 2, os.getpid(), threads


def fail_on_unit_7(data, units, *, threads, tick=None):
    if 7 in units and threads == 1:  # in a worker
        raise ValueError("unit 7 cannot be solved")
    return square_units(data, units, threads=threads)


def assert_each_unit_once(parts, order, data):
    units = np.concatenate([chunk for chunk, _ in parts])
    assert sorted(units.tolist()) == sorted(order.tolist())
    for chunk, (squares, _, _) in parts:
        np.testing.assert_array_equal(squares, data[chunk] ** 2)


@pytest.mark.parametrize("units, workers", [(1, 1), (7, 2), (100, 2), (1000, 4)])
def test_guided_chunks_cover_every_unit_once_and_shrink(units, workers):
    order = np.random.default_rng(units).permutation(units)
    schedule = _GuidedChunks(order, workers)
    chunks = []
    while schedule.units_left:
        chunks.append(schedule.next())
    np.testing.assert_array_equal(np.concatenate(chunks), order)  # in order, each once
    sizes = [len(c) for c in chunks]
    assert sizes == sorted(sizes, reverse=True)
    assert all(size >= parallel.MIN_CHUNK_UNITS for size in sizes[:-1])
    assert sizes[0] <= max(parallel.MIN_CHUNK_UNITS, -(-units // (parallel.CHUNKS_PER_WORKER * workers)))


def test_no_workers_solves_everything_here():
    data, order = np.arange(50.0), np.arange(50)[::-1]
    ticks = []
    parts, workers = map_chunks(square_units, data, order, 0, tick=ticks.append)
    assert workers == 0 and sum(ticks) == 50
    assert_each_unit_once(parts, order, data)
    assert {pid for _, (_, pid, _) in parts} == {os.getpid()}


def test_workers_and_this_process_share_the_units():
    data, order = np.linspace(-1, 1, 400), np.random.default_rng(0).permutation(400)
    ticks = []
    parts, workers = map_chunks(square_units, data, order, 1, start="always", tick=ticks.append)
    assert workers == 1 and sum(ticks) == 400
    assert_each_unit_once(parts, order, data)
    where = {(pid == os.getpid(), threads) for _, (_, pid, threads) in parts}
    assert where == {(True, 0), (False, 1)}  # both worked, workers on one thread


def test_an_error_in_a_worker_reaches_the_caller_and_removes_the_file():
    before = set(glob.glob(_shared_pattern()))
    with pytest.raises(ValueError, match="unit 7"):
        map_chunks(fail_on_unit_7, np.arange(64.0), np.arange(64), 1, start="always")
    assert set(glob.glob(_shared_pattern())) == before


def die_in_worker(data, units, *, threads, tick=None):
    if threads == 1:  # a worker process dies mid-chunk
        os._exit(1)
    return square_units(data, units, threads=threads)


def test_a_worker_that_dies_raises_here_and_the_next_call_works():
    before = set(glob.glob(_shared_pattern()))
    with pytest.raises(Exception, match=r"(?i)worker|process"):
        map_chunks(die_in_worker, np.arange(64.0), np.arange(64), 1, start="always")
    assert set(glob.glob(_shared_pattern())) == before
    data, order = np.arange(100.0), np.arange(100)
    parts, workers = map_chunks(square_units, data, order, 1, start="always")
    assert workers == 1
    assert_each_unit_once(parts, order, data)


def _shared_pattern() -> str:
    folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return os.path.join(folder, "lpinit-*.pkl")


def test_workers_are_started_only_when_the_work_repays_it(monkeypatch):
    monkeypatch.setattr(parallel, "running_workers", lambda: 0)  # none up
    data, order = np.arange(200.0), np.arange(200)
    monkeypatch.setattr(parallel, "WORKER_START_S", 1e6)  # far more than the work
    parts, workers = map_chunks(square_units, data, order, 1)
    assert workers == 0
    assert_each_unit_once(parts, order, data)
    monkeypatch.setattr(parallel, "WORKER_START_S", 1e-9)  # next to free: worth it
    parts, workers = map_chunks(square_units, data, order, 1)
    assert workers == 1
    assert_each_unit_once(parts, order, data)


def test_workers_that_are_up_are_used(monkeypatch):
    parallel.start_pool(1)
    monkeypatch.setattr(parallel, "WORKER_START_S", 1e6)  # would never be started for this
    monkeypatch.setattr(parallel, "running_workers", lambda: 1)
    _parts, workers = map_chunks(square_units, np.arange(100.0), np.arange(100), 1)
    assert workers == 1


def test_one_worker_per_payback_of_work():
    start = parallel.WORKER_START_S * parallel.START_PAYBACK
    assert workers_worth_starting(0.0) == 0
    assert workers_worth_starting(0.99 * start) == 0
    assert workers_worth_starting(start) == 1
    assert workers_worth_starting(3.5 * start) == 3


def test_starting_no_worker_starts_nothing():
    parallel.stop_pool()
    parallel.start_pool(0)
    assert parallel.running_workers() == 0


def test_stopped_workers_are_not_counted_as_running():
    parallel.start_pool(1)
    parallel.stop_pool()
    assert parallel.running_workers() == 0


KILLED_PARENT = """
import sys, time
import numpy as np
from lpinit import parallel

def slow(data, units, *, threads, tick=None):
    time.sleep(0.2)
    return units

if __name__ == "__main__":
    parallel.start_pool(2)
    time.sleep(2)  # let the workers come up
    print(" ".join(map(str, parallel._pool["executor"]._processes)), flush=True)
    parallel.map_chunks(slow, np.zeros(10), np.arange(2000), 2, start="always")
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\\nState:\\tZ" not in f.read()  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_workers_exit_and_leave_no_file_when_the_parent_is_killed(tmp_path, signal_name):
    # reproduction (SIGTERM): `timeout 600 python -m experiments.anchor_reach --jobs 2` left
    # /dev/shm/lpinit-<pid>-*.pkl behind when timeout stopped it
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2
    time.sleep(1.5)  # mid-run: chunks at the workers, the shared file in place
    files = glob.glob(os.path.join(parallel.shared_folder(), f"lpinit-{parent.pid}-*.pkl"))
    assert files
    parent.send_signal(getattr(signal, signal_name))
    parent.wait()
    deadline = time.monotonic() + 5 * parallel.PARENT_POLL_S + 5
    while time.monotonic() < deadline and (any(map(_alive, workers)) or any(map(os.path.exists, files))):
        time.sleep(0.2)
    assert not any(map(_alive, workers))
    assert not any(map(os.path.exists, files))


def test_one_thread_limits_every_pool_and_restores_it():
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=2):
        before = [p["num_threads"] for p in threadpool_info()]
        with parallel.one_thread():
            assert {p["num_threads"] for p in threadpool_info()} == {1}
        assert [p["num_threads"] for p in threadpool_info()] == before
