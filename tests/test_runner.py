"""Resumable, parallel execution of runs (experiments/runner.py, experiments/ledger.py)."""

from __future__ import annotations

import pytest

from experiments import ledger, measure, runner
from experiments.settings import record_settings, resolve


def _finished(spec, settings=None, accuracy: float = 50.0) -> dict:
    return {"key": spec.key, **spec.to_dict(), "final": {"test_accuracy": accuracy}}


def test_partial_trailing_line_is_repaired(tmp_path):
    path = tmp_path / "runs.jsonl"
    ledger.append_line(path, {"key": "a", "x": 1})
    ledger.append_line(path, {"key": "b", "x": 2})
    with open(path, "ab") as f:
        f.write(b'{"key": "c", "x"')  # a write cut short by a kill
    with pytest.warns(UserWarning, match="partial"):
        runs = ledger.read_lines(path)
    assert [r["key"] for r in runs] == ["a", "b"]
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 2
    ledger.append_line(path, {"key": "c", "x": 3})
    assert [r["key"] for r in ledger.read_lines(path)] == ["a", "b", "c"]


def test_rerun_skips_finished_runs_without_duplicates(tmp_path, monkeypatch):
    calls = []

    def fake_run_one(spec, settings):
        calls.append(spec.key)
        return _finished(spec)

    monkeypatch.setattr(measure, "run_one", fake_run_one)
    s = resolve("quick", {"results_root": str(tmp_path), "inits": ("default", "lsuv"), "n_jobs": 1})
    record_settings(s)
    tasks = runner.plan_tasks(s)
    path = s.results_dir / "runs.jsonl"
    ledger.append_line(path, _finished(tasks[0]))
    with open(path, "ab") as f:
        f.write(b'{"key": "half')  # the run in progress when killed
    with pytest.warns(UserWarning, match="partial last line"):
        outcome = runner.execute(s, tasks, progress=False)
    assert calls == [t.key for t in tasks[1:]]
    assert (outcome.planned, outcome.already_done, len(outcome.finished), outcome.failures) == (4, 1, 3, 0)
    keys = [r["key"] for r in ledger.read_lines(path)]
    assert sorted(keys) == sorted(t.key for t in tasks) and len(set(keys)) == len(keys)
    calls.clear()
    outcome = runner.execute(s, tasks, progress=False)
    assert calls == [] and outcome.already_done == 4


def test_a_failed_run_is_logged_and_retried(tmp_path, monkeypatch):
    def flaky(spec, settings):
        if spec.init == "rai":
            raise RuntimeError("solver gave up")
        return _finished(spec, accuracy=1.0)

    monkeypatch.setattr(measure, "run_one", flaky)
    s = resolve("quick", {"results_root": str(tmp_path), "inits": ("default", "rai"), "n_jobs": 1, "seeds": 1})
    record_settings(s)
    outcome = runner.execute(s, runner.plan_tasks(s), progress=False)
    assert [r["init"] for r in outcome.finished] == ["default"]
    assert [r["init"] for r in outcome.failed] == ["rai"] and outcome.failures == 1
    (failure,) = ledger.read_lines(s.results_dir / "failures.jsonl")
    assert "solver gave up" in failure["error"] and "RuntimeError" in failure["traceback"]
    assert not list((s.results_dir / "claims").iterdir())  # every claim released
    monkeypatch.setattr(measure, "run_one", lambda spec, _: _finished(spec, accuracy=2.0))
    outcome = runner.execute(s, runner.plan_tasks(s), progress=False)
    assert [r["init"] for r in outcome.finished] == ["rai"]  # the rerun retried it


def test_threading_backend_runs_in_parallel(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "run_one", _finished)
    s = resolve(
        "quick", {"results_root": str(tmp_path), "inits": ("default", "rai"), "backend": "threading", "n_jobs": 2}
    )
    record_settings(s)
    outcome = runner.execute(s, runner.plan_tasks(s), progress=False)
    assert len(outcome.finished) == 4 == len(ledger.read_lines(s.results_dir / "runs.jsonl"))
