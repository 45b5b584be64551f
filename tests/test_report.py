"""The report (experiments/report.py) is rebuilt from runs.jsonl alone, and
its sentences follow the numbers."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import ledger
from experiments.report import build_report
from experiments.settings import record_settings, resolve


def test_no_training_guard_fires_when_a_run_is_started(no_training, tmp_path):
    """The guard used below must catch a run started the way the runner starts one."""
    from experiments import measure, runner

    s = resolve("quick", {"results_root": str(tmp_path), "inits": ("default",), "seeds": 1, "n_jobs": 1})
    (spec,) = runner.plan_tasks(s)
    with pytest.raises(no_training):
        measure.run_one(spec, s)
    record = runner.safe_run(spec, s)  # what every backend's worker calls
    assert "TrainingAttempted" in record["error"]


def test_patching_measure_train_catches_training_inside_run_one(monkeypatch, tmp_path):
    """The guard's second patch: with the real run_one, its call to the training loop is caught."""
    from experiments import measure, runner

    class Trained(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(measure, "train", refuse)
    overrides = {"inits": ("default",), "seeds": 1, "train_subset": 100, "lp_batch": 32, "stability_images": 8}
    s = resolve("quick", {"results_root": str(tmp_path), **overrides})
    (spec,) = runner.plan_tasks(s)
    with pytest.raises(Trained):
        measure.run_one(spec, s)


def test_report_regenerates_from_runs_jsonl_without_training(tmp_path, no_training, fake_record):
    s = resolve("quick", {"results_root": str(tmp_path)})
    record_settings(s)
    rng = np.random.default_rng(0)
    for seed in range(4):
        for init in ("default", "kaiming_normal", "lsuv", "lp@0.1", "bias_shift@0.1"):
            zero = float(rng.uniform(0.2, 0.6))
            ledger.append_line(s.results_dir / "runs.jsonl", fake_record(init, seed, zero, 90 - 20 * zero))
    path = build_report(s.results_dir)
    text = path.read_text()
    assert "n=20 runs" in text and "Pearson r = -1.00" in text and "negative correlation" in text
    assert "| seed | 0.01 | lp@0.1 | bias_shift@0.1 | 4 |" in text
    for name in (
        "summary.csv",
        "zeros_vs_accuracy.png",
        "learning_curves.png",
        "zeros_per_layer_at_init.png",
        "zeros_during_training.png",
    ):
        assert (s.results_dir / name).stat().st_size > 0
    header = (s.results_dir / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("arch,init,lr,metric,n,mean,std,ci_low,ci_high")
    assert not list(s.results_dir.glob(".*.tmp"))  # every file written atomically, no temporaries left


def test_report_of_an_empty_folder_says_what_to_do(tmp_path):
    s = resolve("quick", {"results_root": str(tmp_path)})
    record_settings(s)
    with pytest.raises(ValueError, match="No finished runs"):
        build_report(s.results_dir)
