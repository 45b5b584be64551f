"""Statistics over run records (experiments/stats.py), against scipy and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments import stats


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


def test_paired_uses_same_seed_pairs(fake_record):
    recs = [fake_record("default", s, 0.5, 80.0 + s) for s in range(4)]
    recs += [fake_record("lp@0.1", s, 0.3, 81.0 + s) for s in range(4)]
    (row,) = stats.paired(recs, "lp@0.1", "default")
    assert (row["n"], row["diff_mean"], row["diff_std"]) == (4, 1.0, 0.0)
    assert stats.comparisons(recs) == [("lp@0.1", "default")]


def test_comparisons_pair_each_lp_with_its_start_and_its_control(fake_record):
    names = ("bias_shift@0.05", "lp@0.05", "lp@0.2", "default", "bias_shift@0.2", "lsuv", "bias_shift@0.1")
    recs = [fake_record(name, 0, 0.5, 80.0) for name in names]
    assert stats.comparisons(recs) == [
        ("lp@0.05", "default"),
        ("lp@0.05", "bias_shift@0.05"),
        ("lp@0.2", "default"),
        ("lp@0.2", "bias_shift@0.2"),
    ]


def test_seed_stat_and_stability_groups():
    rows = [
        {"arch": "seed", "init": "b", "stage": "trained", "size": 0.1, "x": 1.0},
        {"arch": "seed", "init": "b", "stage": "init", "size": 0.1, "x": 3.0},
        {"arch": "seed", "init": "b", "stage": "init", "size": 0.1, "x": 5.0},
        {"arch": "seed", "init": "a", "stage": "init", "size": 0.01, "x": None},
    ]
    groups = stats.stability_groups(rows)
    assert list(groups) == [("seed", "a", "init"), ("seed", "b", "init"), ("seed", "b", "trained")]
    assert stats.seed_stat(groups[("seed", "b", "init")][0.1], "x") == (4.0, pytest.approx(math.sqrt(2)), 2)
    assert stats.seed_stat(groups[("seed", "b", "trained")][0.1], "x") == (1.0, 0.0, 1)
    mean, std, n = stats.seed_stat(groups[("seed", "a", "init")][0.01], "x")
    assert math.isnan(mean) and math.isnan(std) and n == 0
