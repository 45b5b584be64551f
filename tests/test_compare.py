"""``python -m experiments.compare`` end to end, on real MNIST with a tiny budget."""

from __future__ import annotations

import json

import pytest

from experiments import ledger
from experiments.compare import main


def _check_results(folder, n_runs):
    runs = ledger.read_lines(folder / "runs.jsonl")
    assert len(runs) == n_runs
    assert json.loads((folder / "settings.json").read_text())["name"] == folder.name
    assert "## Answer" in (folder / "report.md").read_text()
    return runs


def test_compare_smoke_tiny_budget(tmp_path, tiny_argv):
    from experiments.measure import RunSpec, run_one
    from experiments.settings import Settings, load_settings

    argv = tiny_argv("--inits", "default,lsuv", "--n-jobs", "1")
    assert main(argv) == 0
    folder = tmp_path / "quick"
    runs = _check_results(folder, 2)
    for r in runs:
        assert r["at_init"]["heldout"]["samples"] == 1000
        assert [h["epoch"] for h in r["history"]] == [0, 1]
        assert 0 <= r["final"]["test_accuracy"] <= 100
    # A run is deterministic given its seed: redoing one reproduces its curve.
    settings = Settings.from_dict(load_settings(folder))
    again = run_one(RunSpec(**{k: runs[0][k] for k in ("init", "arch", "seed", "lr")}), settings)
    assert again["history"][-1]["test_accuracy"] == runs[0]["history"][-1]["test_accuracy"]
    assert again["at_init"] == runs[0]["at_init"]
    # A rerun skips finished runs; a different recipe in the same folder is refused.
    before = (folder / "runs.jsonl").read_bytes()
    assert main(argv) == 0
    assert (folder / "runs.jsonl").read_bytes() == before
    assert main([*argv, "--epochs", "2"]) == 2  # recipe changed


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    assert main(["--preset", "quick", "--results-root", str(tmp_path)]) == 0
    _check_results(tmp_path / "quick", 2 * 6)


def test_when_every_run_fails_compare_says_how_many_and_where(tmp_path, tiny_argv, capsys, monkeypatch, fake_record):
    """Reproduces: runs that all failed ended with a traceback saying "No finished runs
    ... run experiments.compare first" (as if none had been attempted)."""
    from experiments import measure

    def broken(spec, settings):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(measure, "run_one", broken)
    assert main(tiny_argv("--inits", "default,lsuv", "--n-jobs", "1")) == 1
    err = capsys.readouterr().err
    failures = tmp_path / "quick" / "failures.jsonl"
    assert f"error: 2 of 2 runs failed; see {failures} for why (rerun the same command to retry them)." in err
    assert "No finished runs" not in err
    assert [r["error"] for r in ledger.read_lines(failures)] == ["RuntimeError: out of memory"] * 2

    # Some finished, some failed: the report covers the finished ones, and the exit status is still 1.
    def half_broken(spec, settings):
        return fake_record(spec.init, spec.seed, 0.5, 90.0) if spec.init == "default" else broken(spec, settings)

    monkeypatch.setattr(measure, "run_one", half_broken)
    assert main(tiny_argv("--inits", "default,lsuv", "--n-jobs", "1")) == 1
    captured = capsys.readouterr()
    assert "error: 1 of 2 runs failed" in captured.err and captured.out.strip().endswith("report.md")


def test_an_unwritable_results_root_is_an_error_before_any_run(tmp_path, tiny_argv, capsys, no_training):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    assert main([*tiny_argv(), "--results-root", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write the results folder {blocker / 'quick'}" in err


def test_ctrl_c_ends_with_one_line_exit_130_and_releases_its_claims(tmp_path, tiny_argv, capsys, monkeypatch):
    from experiments import measure

    def interrupted(spec, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(measure, "run_one", interrupted)
    assert main(tiny_argv("--n-jobs", "1")) == 130
    assert capsys.readouterr().err.strip().endswith("rerun the same command to resume.")
    assert not list((tmp_path / "quick" / "claims").glob("*.claim"))
