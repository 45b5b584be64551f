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
