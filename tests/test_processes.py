"""The harness across processes: bounded workers that die with their parent,
and several ``experiments.compare`` processes sharing one results folder
without computing or writing any run twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiments import ledger, runner
from experiments.compare import main
from experiments.ledger import SharedFolder
from experiments.settings import fit_to_machine, record_settings, resolve

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

REPO = Path(__file__).resolve().parents[1]


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid``, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f} s")


# --- item 6: bounded processes -------------------------------------------------


def test_n_jobs_above_the_cores_is_capped_with_a_note(tmp_path, capsys, monkeypatch, fake_record):
    """Reproduces: python -m experiments.compare --n-jobs 64 started 64 worker processes on 2 cores."""
    from joblib import cpu_count

    from experiments import measure

    cores = cpu_count()
    s, note = fit_to_machine(resolve("quick", {"results_root": str(tmp_path), "n_jobs": cores + 62}))
    assert s.n_jobs == cores and note == (
        f"note: --n-jobs {cores + 62} is more than the {cores} cores here; running {cores} at a time."
    )
    assert fit_to_machine(resolve("quick", {"n_jobs": -1}))[0].n_jobs == cores
    assert fit_to_machine(resolve("quick", {"n_jobs": 1}))[1] is None
    remote = resolve("quick", {"n_jobs": 500, "backend": "dask", "scheduler": "tcp://10.0.0.1:8786"})
    assert fit_to_machine(remote) == (remote, None)  # a remote cluster's size is not this machine's
    # Through the CLI: one line, and settings.json records what ran.
    monkeypatch.setattr(measure, "run_one", lambda spec, settings: fake_record(spec.init, spec.seed, 0.5, 90.0))
    argv = ["--inits", "default", "--seeds", "1", "--n-jobs", "999", "--backend", "threading"]
    assert main([*argv, "--n-boot", "50", "--results-root", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"note: --n-jobs 999 is more than the {cores} cores here; running {cores} at a time.\n" in err
    assert json.loads((tmp_path / "quick" / "settings.json").read_text())["n_jobs"] == cores


def test_workers_exit_soon_after_their_parent_is_killed(tmp_path, tiny_argv):
    """Reproduces: kill -9 of `python -m experiments.compare --n-jobs 2` left both loky
    workers (and two resource trackers) running their runs to the end."""
    argv = tiny_argv("--inits", "default", "--seeds", "2", "--epochs", "200", "--n-jobs", "2")
    parent = subprocess.Popen(
        [sys.executable, "-m", "experiments.compare", *argv],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        claims = tmp_path / "quick" / "claims"
        _wait_for(lambda: claims.is_dir() and len(list(claims.glob("*.claim"))) == 2, 120, "two claimed runs")

        def busy_workers():
            # Mid-run: each worker has spent more CPU than importing torch and loading MNIST take.
            workers = [pid for pid in _children(parent.pid) if "popen_loky" in _cmdline(pid)]
            return len(workers) == 2 and all(_cpu_seconds(pid) > 3 for pid in workers)

        _wait_for(busy_workers, 180, "both workers to be in their runs")
        children = _children(parent.pid)  # the workers and the resource trackers
        assert parent.poll() is None, "the compare process ended before it could be killed"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    survivors = children
    deadline = time.monotonic() + 10
    while survivors and time.monotonic() < deadline:
        time.sleep(0.2)
        survivors = {pid for pid in survivors if _alive(pid)}
    for pid in survivors:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"{len(survivors)} of {len(children)} child processes outlived their parent by 10 s"


# --- item 7: several processes on one folder -------------------------------------

_FAKE_COMPARE = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    from experiments import measure, runner
    from experiments.settings import resolve

    overrides, go, calls = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    run_s = float(os.environ["FAKE_RUN_S"])

    def fake_run_one(spec, settings):
        fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (spec.key + "\\n").encode())  # one line per computation, from any process
        os.close(fd)
        time.sleep(run_s)
        return {"key": spec.key, **spec.to_dict(), "final": {"test_accuracy": 1.0}, "pid": os.getpid()}

    measure.run_one = fake_run_one
    settings = resolve("quick", overrides)
    go.parent.joinpath(f"ready.{os.getpid()}").touch()
    while not go.exists():  # a barrier: every process starts claiming at the same moment
        time.sleep(0.01)
    outcome = runner.execute(settings, runner.plan_tasks(settings), progress=False)
    print(json.dumps({"finished": len(outcome.finished), "elsewhere": outcome.done_elsewhere}))
    """
)


def _start_fake_compares(tmp_path, n_processes: int, overrides: dict, run_s: float = 0.3) -> list[subprocess.Popen]:
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "FAKE_RUN_S": str(run_s)}
    args = [json.dumps(overrides), str(sync / "go"), str(tmp_path / "calls.log")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FAKE_COMPARE, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(n_processes)
    ]
    _wait_for(lambda: len(list(sync.glob("ready.*"))) == n_processes, 120, "every process to be ready")
    (sync / "go").touch()
    return procs


@pytest.mark.parametrize("n_processes", [2, 3])
def test_processes_on_one_folder_share_the_runs(tmp_path, n_processes):
    """Reproduces: two compare processes on one folder computed and wrote every
    run twice (8 lines for 4 runs). Now each run is claimed before it starts."""
    overrides = {
        "results_root": str(tmp_path),
        "inits": ("default", "kaiming_normal", "lsuv"),
        "seeds": 4,
        "n_jobs": 1,
    }
    s = resolve("quick", overrides)
    record_settings(s)
    procs = _start_fake_compares(tmp_path, n_processes, overrides)
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    planned = sorted(t.key for t in runner.plan_tasks(s))
    lines = (s.results_dir / "runs.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["key"] for line in lines) == planned  # each run once: none twice, none missing
    assert sorted((tmp_path / "calls.log").read_text().split()) == planned  # and computed once
    assert sum(o["finished"] for o in outputs) == len(planned)
    assert not list((s.results_dir / "claims").glob("*.claim"))


def test_a_run_claimed_by_a_killed_process_is_taken_over(tmp_path):
    """A process that dies holding claims leaves them behind; the next process takes them over."""
    overrides = {"results_root": str(tmp_path), "inits": ("default", "lsuv"), "seeds": 1, "n_jobs": 1}
    s = resolve("quick", overrides)
    record_settings(s)
    (doomed,) = _start_fake_compares(tmp_path, 1, overrides, run_s=600)
    claims = s.results_dir / "claims"
    _wait_for(lambda: list(claims.glob("*.claim")), 120, "the first claim")
    doomed.kill()
    doomed.communicate()
    (left,) = claims.glob("*.claim")
    assert json.loads(left.read_text())["pid"] == doomed.pid

    from experiments import measure

    calls = []

    def fake(spec, settings):
        calls.append(spec.key)
        return {"key": spec.key, **spec.to_dict(), "final": {"test_accuracy": 1.0}}

    measure_run_one, measure.run_one = measure.run_one, fake
    try:
        outcome = runner.execute(s, runner.plan_tasks(s), progress=False)
    finally:
        measure.run_one = measure_run_one
    assert sorted(calls) == sorted(t.key for t in runner.plan_tasks(s))
    assert len(outcome.finished) == 2
    assert len(ledger.read_lines(s.results_dir / "runs.jsonl")) == 2


def test_claims_are_refused_while_live_and_taken_over_when_stale(tmp_path):
    first, second = SharedFolder(tmp_path), SharedFolder(tmp_path)
    assert first.claim("a") and not second.claim("a")  # live: the owner (this process) is running
    path = first._claim_path("a")
    claim = json.loads(path.read_text())
    # An owner on another host that stopped refreshing its claim for longer than STALE_AFTER_S.
    path.write_text(json.dumps({**claim, "host": "elsewhere", "pid": 1}))
    assert not second.claim("a")
    old = time.time() - ledger.STALE_AFTER_S - 1
    os.utime(path, (old, old))
    assert second.claim("a")
    # The first owner's late result is still written once; releasing leaves the new owner's claim.
    assert first.record_result({"key": "a", "x": 1})
    assert path.exists() and json.loads(path.read_text())["owner"] == second.owner
    assert not second.record_result({"key": "a", "x": 2})  # already in runs.jsonl: not written twice
    assert [r["x"] for r in ledger.read_lines(tmp_path / "runs.jsonl")] == [1]
    assert not path.exists()
