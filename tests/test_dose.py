"""The dose-response analysis and its report, on made-up runs whose answer is
known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import dose
from experiments.settings import Settings


def run_record(init: str, arch: str, seed: int, zeros: float, accuracy: float, *, dead_logit=(False, False), lr=0.01):
    layers = {
        name: {"zeros": 1, "elements": 2, "zero_fraction": zeros, "dead_units": 0, "units": 5}
        for name in ("fc1", "fc2", "fc3", "fc4")
    }
    at_init = json.loads(json.dumps(layers))
    trained = json.loads(json.dumps(layers))
    at_init["fc4"]["dead_units"] = int(dead_logit[0])
    trained["fc4"]["dead_units"] = int(dead_logit[1])
    summary = {"samples": 10, "total_zeros": 1, "zero_fraction": zeros, "dead_units": 0, "distinct_patterns": 3}
    return {
        "key": f"{init}|{arch}|seed={seed}|lr={lr:g}",
        "init": init,
        "arch": arch,
        "seed": seed,
        "lr": lr,
        "family": "x",
        "init_info": {},
        "init_time_s": 0.1,
        "at_init": {
            "lp_batch": {**summary, "layers": at_init},
            "heldout": {**summary, "layers": at_init},
            "test": {**summary, "layers": at_init},
            "preactivations": {name: {"mean": 0.0, "rms": 1.0} for name in ("fc1", "fc2", "fc3", "fc4")},
        },
        "history": [{"epoch": 0, "test_accuracy": 10.0, "test_loss": 2.3, "zero_fraction": zeros, "train_loss": None}],
        "final": {
            "test_accuracy": accuracy,
            "test_loss": 3.0 - accuracy / 50,
            "train_loss": 0.1,
            "zero_fraction": zeros,
            "dead_units": int(dead_logit[1]),
            "layers": trained,
        },
        "stability": [],
        "device": "cpu",
        "wall_time_s": 1.0,
    }


def truth(zeros: float) -> float:
    """Accuracy peaks at 0.3 zeros."""
    return 90.0 - 100.0 * (zeros - 0.3) ** 2


DOSES = (0.1, 0.3, 0.5, 0.7, 0.9)


def made_up_runs(seeds: int = 6) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for seed in range(seeds):
        noise = rng.normal(0, 0.2)  # shared by a seed's runs: the pairing removes it
        for arch in ("seed", "mlp"):
            records.append(run_record("default", arch, seed, 0.5, truth(0.5) + noise))
            for q in DOSES:
                zeros = 1 - q
                records.append(run_record(f"default+lp(radius=3,rescale=unit,target={q:g})", arch, seed, zeros,
                                          truth(zeros) + 1.0 + noise))  # fmt: skip
                records.append(run_record(f"default+quantile_bias(q={q:g},rescale=unit)", arch, seed, zeros,
                                          truth(zeros) + noise, dead_logit=(q < 0.2, False)))  # fmt: skip
            records.append(run_record("default+lp(rescale=unit)", arch, seed, 0.1, truth(0.5) - 5 + noise))
            records.append(run_record("lsuv", arch, seed, 0.5, 95.0 + noise))
            records.append(run_record("lsuv+lp(radius=3,rescale=unit,target=0.5)", arch, seed, 0.5, 94.5 + noise))
    return records


def test_paired_differences_recover_a_constant_gap():
    runs = dose.dose_runs(made_up_runs())
    pairs = dose.paired_comparisons(runs)
    choice = [p for p in pairs if p["against"] == "quantile_bias"]
    assert len(choice) == 2 * len(DOSES)
    for p in choice:  # LP = quantile bias + 1, seed by seed
        assert p["diff_mean"] == pytest.approx(1.0) and p["n"] == 6
    versus_bare = {(p["arch"], p["method"], p["q"]): p for p in pairs if p["against"] == "bare"}
    assert versus_bare[("mlp", "quantile_bias", 0.7)]["diff_mean"] == pytest.approx(truth(0.3) - truth(0.5))


def test_the_fitted_peak_is_where_the_truth_peaks():
    fits = dose.fit_dose_response(dose.dose_runs(made_up_runs()), n_boot=200)
    assert {(f.arch, f.method) for f in fits} == {(a, m) for a in ("seed", "mlp") for m in ("lp", "quantile_bias")}
    for fit in fits:  # the LP's curve also fits its bare base, 1 point below its own: a near miss
        exact = fit.method == "quantile_bias"
        assert fit.best_zeros == pytest.approx(0.3, abs=0.001 if exact else 0.02)
        assert fit.best_low - 0.001 <= fit.best_zeros <= fit.best_high + 0.001
        assert fit.coefficients[0] == pytest.approx(-100.0, rel=0.05)


def test_dead_logits_are_counted_on_the_seed_architecture_only():
    rows = dose.dead_logits(dose.dose_runs(made_up_runs()))
    counted = {r["init"]: (r["dead_at_init"], r["dead_after_training"], r["n"]) for r in rows}
    assert counted["default+quantile_bias(q=0.1,rescale=unit)"] == (6, 0, 6)
    assert counted["default"] == (0, 0, 6)
    assert all(r["n"] == 6 for r in rows)  # the mlp runs (no ReLU on the logits) are not counted


def test_a_dose_folder_gets_the_dose_report(tmp_path):
    from experiments.ledger import append_line
    from experiments.report import build_report

    folder = tmp_path / "dose"
    folder.mkdir()
    settings = Settings(preset="dose", name="dose", results_root=str(tmp_path), n_boot=100)
    (folder / "settings.json").write_text(json.dumps(settings.to_dict()))
    for record in made_up_runs(seeds=4):
        append_line(folder / "runs.jsonl", record)
    text = build_report(folder).read_text()
    assert "## Dose response at a fixed scale" in text
    assert "LP better at 5, worse at 0, no difference at 0" in text  # both archs: five doses each
    assert "peaks at 0.30 zeros" in text
    assert "default+lp(rescale=unit) | seed | 4 | -5.00" in text  # a candidate that is worse than its start
    assert "lp_initialize's defaults are `default+lp(radius=3,rescale=unit,target=0.5)`" in text
    assert "| lsuv | mlp | 4 | -0.50 [-0.50, -0.50] |" in text  # the LP on a good start, paired over seeds
    assert "Better at 0, worse at 2, no difference at 0 of 2 (base, arch) cells." in text
    for png in ("dose_accuracy.png", "dose_loss.png", "dose_fit.png"):
        assert (folder / png).is_file()
