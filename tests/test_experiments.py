"""Tests of the comparison harness (experiments/): inits, resumability,
statistics, report regeneration, and the quick preset end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from experiments import inits, runner, stats
from experiments.inits import build_model, initialize
from experiments.settings import SettingsMismatch, parse_settings, record_settings, resolve


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.randn(256, 1, 28, 28)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- inits


@pytest.mark.parametrize("name", inits.FIXED_INITS)
def test_init_is_deterministic_given_seed(name, batch):
    a, b, c = build_model("seed", 3), build_model("seed", 3), build_model("seed", 4)
    for model, seed in ((a, 3), (b, 3), (c, 4)):
        initialize(name, model, batch, seed)
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(_params(a), _params(c), strict=True))


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("mlp", 0)
    assert torch.equal(torch.rand(3), expected)


def test_kaiming_normal_has_he_std_and_zero_bias(batch):
    model = build_model("seed", 0)
    initialize("kaiming_normal", model, batch, 0)
    w = model.fc1.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.01)  # 588,000 draws
    assert torch.count_nonzero(model.fc1.bias) == 0


def test_lsuv_gives_unit_preactivation_variance_on_the_batch(batch):
    model = build_model("seed", 0)
    initialize("lsuv", model, batch, 0)
    # Independent oracle: recompute each layer's pre-activations by hand.
    h = batch.flatten(1)
    for layer in (model.fc1, model.fc2, model.fc3, model.fc4):
        z = h @ layer.weight.T + layer.bias
        assert z.var().item() == pytest.approx(1.0, abs=0.011)
        h = torch.relu(z)


def test_rai_has_one_beta_entry_per_neuron(batch):
    model = build_model("seed", 0)
    initialize("rai", model, batch, 0)
    v = torch.cat([model.fc1.weight, model.fc1.bias[:, None]], 1).detach()
    big = v > 0.15  # N(0, 0.6007^2/784) entries are ~7 std below this
    assert (big.sum(1) <= 1).all()
    assert v.max(1).values.mean().item() == pytest.approx(2 / 3, abs=0.05)  # E[Beta(2, 1)]


def test_bisect_bias_shift_hits_the_target_fraction():
    z = torch.arange(100, dtype=torch.float32) - 50.0
    c = inits.bisect_bias_shift(z, 0.2)
    assert ((z + c) <= 0).float().mean().item() == pytest.approx(0.2)


def test_bias_shift_matches_target_zero_fractions(batch):
    from lpinit import count_relu_zeros

    model = build_model("seed", 0)
    targets = [0.30, 0.20, 0.10, 0.50]
    shifts = inits.bias_shift_(model, batch, targets)
    assert len(shifts) == 4
    zeros = count_relu_zeros(model, batch, patterns=False)  # independent counter
    for site, target in zip(zeros.sites, targets, strict=True):
        assert site.zero_fraction == pytest.approx(target, abs=1.0 / site.elements + 1e-9)


def test_unknown_init_lists_valid_ones(batch):
    with pytest.raises(ValueError, match="Valid inits: default, kaiming_normal"):
        initialize("he", build_model("seed", 0), batch, 0)
    with pytest.raises(ValueError, match="positive radius"):
        inits.parse_init_name("lp@-1")
    assert inits.parse_init_name("bias_shift@0.05") == ("bias_shift", 0.05)


def test_lp_and_bias_shift_reach_the_same_layer_zero_fractions(batch):
    lp = build_model("seed", 0)
    initialize("lp@0.1", lp, batch, 0)
    shift = build_model("seed", 0)
    info = initialize("bias_shift@0.1", shift, batch, 0)
    want = inits.relu_zero_fractions(lp, batch)
    assert info["bias_shift_targets"] == pytest.approx(want)
    assert inits.relu_zero_fractions(shift, batch) == pytest.approx(want, abs=1 / 256 + 1e-6)


class _FakeReport:
    def to_dict(self):
        return {"status_counts": {"optimal": 3}}


def _fake_lp_initialize(model, batch, *, radius, margin, n_jobs, progress):
    """Stands in for lp_initialize: raises every ReLU-fed bias by a
    layer-dependent amount, so the zero fractions it reaches are known."""
    from lpinit.tracing import relu_fed_linears

    with torch.no_grad():
        for i, (_, layer) in enumerate(relu_fed_linears(model, batch[:1])):
            layer.bias.add_(radius * (i + 1))
    return _FakeReport()


def test_lp_entries_and_bias_shift_plumbing_with_a_stand_in_lp(batch, monkeypatch, tmp_path):
    from experiments.measure import _lp_targets_cache

    monkeypatch.setattr(inits, "lp_initialize", _fake_lp_initialize)
    lp = build_model("seed", 0)
    info = initialize("lp@0.1", lp, batch, 0)
    assert info["lp_report"] == {"status_counts": {"optimal": 3}}
    want = inits.relu_zero_fractions(lp, batch)
    assert want < inits.relu_zero_fractions(build_model("seed", 0), batch)
    # bias_shift without a cache runs the LP on a copy of the same random start ...
    shift = build_model("seed", 0)
    info = initialize("bias_shift@0.1", shift, batch, 0)
    assert info["bias_shift_targets"] == pytest.approx(want)
    assert inits.relu_zero_fractions(shift, batch) == pytest.approx(want, abs=1 / 256 + 1e-6)
    assert info["bias_shifts"] == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.02)  # the fake's own shifts
    # ... and with the runner's cache, computes the targets once and reuses them.
    targets = _lp_targets_cache(tmp_path, "seed", 0, 0.1, batch, lambda: build_model("seed", 0))
    assert targets(0.1) == pytest.approx(want)
    assert len(list((tmp_path / "lp_targets").iterdir())) == 1
    monkeypatch.setattr(inits, "lp_initialize", None)  # a second LP call would fail
    assert targets(0.1) == pytest.approx(want)


# ---------------------------------------------------------------- settings


def test_flags_override_preset(tmp_path):
    s = parse_settings(["--preset", "full", "--seeds", "3", "--inits", "default,lsuv", "--results-root", str(tmp_path)])
    assert (s.seeds, s.inits, s.epochs, s.name) == (3, ("default", "lsuv"), 5, "full")
    assert s.results_dir == tmp_path / "full"
    with pytest.raises(SystemExit):
        parse_settings(["--inits", "nope"])


def test_different_recipe_in_same_folder_is_refused(tmp_path):
    record_settings(resolve("quick", {"results_root": str(tmp_path)}))
    record_settings(resolve("quick", {"results_root": str(tmp_path), "seeds": 5}))  # more runs: fine
    with pytest.raises(SettingsMismatch, match="epochs"):
        record_settings(resolve("quick", {"results_root": str(tmp_path), "epochs": 3}))


# ---------------------------------------------------------------- resumability


def test_partial_trailing_line_is_repaired(tmp_path):
    path = tmp_path / "runs.jsonl"
    runner.append_run(path, {"key": "a", "x": 1})
    runner.append_run(path, {"key": "b", "x": 2})
    with open(path, "ab") as f:
        f.write(b'{"key": "c", "x"')  # a write cut short by a kill
    with pytest.warns(UserWarning, match="partial"):
        runs = runner.read_runs(path)
    assert [r["key"] for r in runs] == ["a", "b"]
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 2
    runner.append_run(path, {"key": "c", "x": 3})
    assert [r["key"] for r in runner.read_runs(path)] == ["a", "b", "c"]


def test_rerun_skips_finished_runs_without_duplicates(tmp_path, monkeypatch):
    calls = []

    def fake_run_one(task, settings):
        calls.append(runner.run_key(task))
        return {"key": runner.run_key(task), **task, "final": {"test_accuracy": 50.0}}

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    s = resolve("quick", {"results_root": str(tmp_path), "inits": ("default", "lsuv"), "n_jobs": 1})
    record_settings(s)
    tasks = runner.plan_tasks(s)
    path = s.results_dir / "runs.jsonl"
    runner.append_run(path, fake_run_one(tasks[0], None))
    with open(path, "ab") as f:
        f.write(b'{"key": "half')  # the run in progress when killed
    calls.clear()
    with pytest.warns(UserWarning):
        list(runner.execute(s, tasks, progress=False))
    assert calls == [runner.run_key(t) for t in tasks[1:]]
    keys = [r["key"] for r in runner.read_runs(path)]
    assert sorted(keys) == sorted(runner.run_key(t) for t in tasks) and len(set(keys)) == len(keys)
    calls.clear()
    list(runner.execute(s, tasks, progress=False))
    assert calls == []


def test_a_failed_run_is_logged_and_retried(tmp_path, monkeypatch):
    def flaky(task, settings):
        if task["init"] == "rai":
            raise RuntimeError("solver gave up")
        return {"key": runner.run_key(task), **task, "final": {"test_accuracy": 1.0}}

    monkeypatch.setattr(runner, "run_one", flaky)
    s = resolve("quick", {"results_root": str(tmp_path), "inits": ("default", "rai"), "n_jobs": 1, "seeds": 1})
    record_settings(s)
    with pytest.warns(UserWarning, match="1 run"):
        got = list(runner.execute(s, runner.plan_tasks(s), progress=False))
    assert [r["init"] for r in got] == ["default"]
    (failure,) = runner.read_runs(s.results_dir / "failures.jsonl")
    assert "solver gave up" in failure["error"]
    monkeypatch.setattr(
        runner, "run_one", lambda t, _: {"key": runner.run_key(t), **t, "final": {"test_accuracy": 2.0}}
    )
    assert [r["init"] for r in runner.execute(s, runner.plan_tasks(s), progress=False)] == ["rai"]


def test_threading_backend_runs_in_parallel(tmp_path, monkeypatch):
    monkeypatch.setattr(
        runner, "run_one", lambda t, s: {"key": runner.run_key(t), **t, "final": {"test_accuracy": 1.0}}
    )
    s = resolve(
        "quick", {"results_root": str(tmp_path), "inits": ("default", "rai"), "backend": "threading", "n_jobs": 2}
    )
    record_settings(s)
    got = list(runner.execute(s, runner.plan_tasks(s), progress=False))
    assert len(got) == 4 == len(runner.read_runs(s.results_dir / "runs.jsonl"))


# ---------------------------------------------------------------- statistics


def test_describe_matches_scipy_t_interval():
    x = [1.0, 2.0, 4.0, 7.0]
    d = stats.describe(x)
    lo, hi = sps.t.interval(0.95, 3, loc=np.mean(x), scale=sps.sem(x))
    assert (d["n"], d["mean"]) == (4, 3.5)
    assert d["std"] == pytest.approx(np.std(x, ddof=1))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((lo, hi))
    assert math.isnan(stats.describe([1.0])["std"])


def test_paired_test_matches_scipy():
    a, b = np.array([1.0, 2.5, 3.0, 4.5, 6.0]), np.array([0.5, 2.0, 3.5, 3.0, 4.0])
    res = stats.paired_test(a - b)
    assert res["t_p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert res["wilcoxon_p"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert res["diff_mean"] == pytest.approx(0.8)  # (0.5 + 0.5 - 0.5 + 1.5 + 2) / 5
    small = stats.paired_test([1.0, 2.0])
    assert math.isnan(small["t_p"]) and "n=2" in small["note"]


def test_correlation_matches_hand_values():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    res = stats.correlation(x, y, n_boot=200)
    assert res["pearson_r"] == pytest.approx(0.8)  # cov 2.0 / var 2.5, by hand
    assert res["spearman_rho"] == pytest.approx(0.8)
    assert res["pearson_ci_low"] <= 0.8 <= res["pearson_ci_high"]
    assert math.isnan(stats.correlation([1, 2], [3, 4])["pearson_r"])


def _fake_record(init, seed, zero, acc, arch="seed", lr=0.01):
    layers = {f"fc{i}": {"zeros": 1, "elements": 2, "zero_fraction": zero, "dead_units": 0, "units": 5} for i in (1, 2)}
    z = {
        "samples": 10,
        "total_zeros": 5,
        "zero_fraction": zero,
        "dead_units": 0,
        "distinct_patterns": 9,
        "layers": layers,
    }
    hist = [
        {
            "epoch": e,
            "train_loss": None if e == 0 else 1.0 / e,
            "test_loss": 1.0,
            "test_accuracy": acc - 3 + e,
            "zero_fraction": zero,
            "zero_fraction_per_layer": {"fc1": zero},
            "epoch_time_s": 0.1,
        }
        for e in range(4)
    ]
    return {
        "key": f"{init}|{arch}|seed={seed}|lr={lr:g}",
        "init": init,
        "arch": arch,
        "seed": seed,
        "lr": lr,
        "family": inits.family(init),
        "init_info": {},
        "init_time_s": 0.01,
        "at_init": {"lp_batch": z, "heldout": z, "test": z},
        "history": hist,
        "final": {"test_accuracy": acc, "test_loss": 0.5, "train_loss": 0.4, "zero_fraction": zero},
        "stability": [],
        "device": "cpu",
        "wall_time_s": 1.0,
    }


def test_paired_uses_same_seed_pairs():
    recs = [_fake_record("default", s, 0.5, 80.0 + s) for s in range(4)]
    recs += [_fake_record("lp@0.1", s, 0.3, 81.0 + s) for s in range(4)]
    (row,) = stats.paired(recs, "lp@0.1", "default")
    assert (row["n"], row["diff_mean"], row["diff_std"]) == (4, 1.0, 0.0)
    assert stats.comparisons(recs) == [("lp@0.1", "default")]


def test_report_regenerates_from_runs_jsonl_without_training(tmp_path, monkeypatch):
    import experiments.measure as measure
    from experiments.report import build_report

    monkeypatch.setattr(measure, "run_one", None)  # any training attempt would fail
    s = resolve("quick", {"results_root": str(tmp_path)})
    record_settings(s)
    rng = np.random.default_rng(0)
    for seed in range(4):
        for init in ("default", "kaiming_normal", "lsuv", "lp@0.1", "bias_shift@0.1"):
            zero = float(rng.uniform(0.2, 0.6))
            runner.append_run(s.results_dir / "runs.jsonl", _fake_record(init, seed, zero, 90 - 20 * zero))
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


# ---------------------------------------------------------------- end to end


def _check_results(folder, n_runs):
    runs = runner.read_runs(folder / "runs.jsonl")
    assert len(runs) == n_runs
    assert json.loads((folder / "settings.json").read_text())["name"] == folder.name
    assert "## Answer" in (folder / "report.md").read_text()
    return runs


def test_compare_smoke_tiny_budget(tmp_path):
    from experiments.compare import main

    argv = [
        "--preset",
        "quick",
        "--inits",
        "default,lsuv",
        "--seeds",
        "1",
        "--train-subset",
        "1000",
        "--holdout",
        "1000",
        "--stability-images",
        "8",
        "--n-jobs",
        "1",
        "--n-boot",
        "50",
        "--results-root",
        str(tmp_path),
    ]
    assert main(argv) == 0
    runs = _check_results(tmp_path / "quick", 2)
    for r in runs:
        assert r["at_init"]["heldout"]["samples"] == 1000
        assert [h["epoch"] for h in r["history"]] == [0, 1]
        assert 0 <= r["final"]["test_accuracy"] <= 100
    # A run is deterministic given its seed: redoing one reproduces its curve.
    from experiments.measure import run_one

    payload = {**resolve("quick", {}).to_dict(), **json.loads((tmp_path / "quick" / "settings.json").read_text())}
    again = run_one({k: runs[0][k] for k in ("init", "arch", "seed", "lr")}, payload)
    assert again["history"][-1]["test_accuracy"] == runs[0]["history"][-1]["test_accuracy"]
    assert again["at_init"] == runs[0]["at_init"]
    # A rerun skips finished runs; a different recipe in the same folder is refused.
    before = (tmp_path / "quick" / "runs.jsonl").read_bytes()
    assert main(argv) == 0
    assert (tmp_path / "quick" / "runs.jsonl").read_bytes() == before
    assert main([*argv[:-2], "--epochs", "2", "--results-root", str(tmp_path)]) == 2  # recipe changed


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    from experiments.compare import main

    assert main(["--preset", "quick", "--results-root", str(tmp_path)]) == 0
    _check_results(tmp_path / "quick", 2 * 6)
