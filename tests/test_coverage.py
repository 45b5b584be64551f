"""coverage=k: activity targets chosen jointly so that every row is active in k units."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from lpinit import lp_initialize, mlp
from lpinit.lp import solve_layer
from lpinit.lp.coverage import covering_rows
from lpinit.lp.problem import Formulation, identical_rows_together, top_rows
from tests.test_lp_options import linprog_general, small_layer


def set_lp_by_linprog(Z: np.ndarray, q: float, k: int) -> np.ndarray:
    """The set LP of lpinit.lp.coverage written out for scipy's linprog (dual simplex: a vertex);
    returns its values a_ij, (n, units)."""
    n, units = Z.shape
    count = math.ceil(q * n - 1e-9)
    score = Z / Z.std(axis=0)
    A_eq = np.zeros((units, n * units))
    A_ub = np.zeros((n, n * units))
    for i in range(n):
        for j in range(units):
            A_eq[j, i * units + j] = 1.0  # row-major here: a_ij at i * units + j
            A_ub[i, i * units + j] = -1.0
    result = linprog(
        -score.reshape(-1),
        A_ub=A_ub,
        b_ub=np.full(n, -float(k)),
        A_eq=A_eq,
        b_eq=np.full(units, float(count)),
        bounds=(0, 1),
        method="highs-ds",
    )
    assert result.status == 0
    return result.x.reshape(n, units)


@pytest.mark.parametrize(("n", "units", "q", "k"), [(40, 7, 0.2, 1), (30, 12, 0.1, 1), (24, 10, 0.25, 2)])
def test_the_set_lp_has_a_0_1_optimum_with_the_coverage_and_counts_asked(n, units, q, k):
    Z = np.random.default_rng(n).normal(size=(n, units)) * np.linspace(0.5, 3, units)
    active = covering_rows(Z, q, k)
    count = math.ceil(q * n)
    assert (active.sum(axis=0) == count).all() and (active.sum(axis=1) >= k).all()
    oracle = set_lp_by_linprog(Z, q, k)
    np.testing.assert_allclose(oracle, np.round(oracle), atol=1e-9)  # the LP's own vertex is 0/1 (TU)
    score = Z / Z.std(axis=0)
    assert (score * active).sum() == pytest.approx((score * oracle).sum(), rel=1e-12)
    assert not (top_rows(Z, q).sum(axis=1) >= k).all()  # the per-unit targets leave rows uncovered


def test_the_sets_are_the_best_of_all_by_enumeration():
    """Every way of giving each of 3 units 2 of 5 rows, keeping those that cover every row: the best
    score is the set LP's."""
    Z = np.random.default_rng(3).normal(size=(5, 3))
    score = Z / Z.std(axis=0)
    best = -np.inf
    for choice in itertools.product(itertools.combinations(range(5), 2), repeat=3):
        active = np.zeros((5, 3), dtype=bool)
        for j, rows in enumerate(choice):
            active[list(rows), j] = True
        if (active.sum(axis=1) >= 1).all():
            best = max(best, (score * active).sum())
    assert (score * covering_rows(Z, 0.4, 1)).sum() == pytest.approx(best, rel=1e-12)


def test_where_the_per_unit_targets_already_cover_they_are_kept():
    Z = np.random.default_rng(0).normal(size=(20, 30))
    assert (top_rows(Z, 0.5).sum(axis=1) >= 3).all()
    np.testing.assert_array_equal(covering_rows(Z, 0.5, 3), top_rows(Z, 0.5))


@pytest.mark.parametrize("solver", ["highs", "cvxpy"])
def test_each_units_lp_with_the_covering_sets_matches_linprog(solver):
    H, W, b = small_layer(2, relu_input=True, n=24, d_in=6, k=5)
    Z = H @ W.T + b
    f = Formulation(6, 0.3, 0.2, 0.2, target_active=0.2, coverage=1)
    sets = set_lp_by_linprog(Z, 0.2, 1) > 0.5  # by the independent set LP
    assert not (top_rows(Z, 0.2) == sets).all()  # coverage changed some targets
    oracle = linprog_general(H, Z, f, active=sets)
    solution = solve_layer(
        H, W, b, weight_bound=0.3, bias_bound=0.2, margin=0.2, target_active=0.2, coverage=1, solver=solver, n_jobs=1
    )
    np.testing.assert_array_equal(solution.active, sets)
    np.testing.assert_allclose(solution.objective, oracle, rtol=1e-6, atol=1e-9)


def test_lp_initialize_with_coverage_leaves_no_sample_without_an_active_unit():
    """fc1 has more inputs than rows, so any target sets can be met; in the narrower layers some
    covering sets are not linearly separable, and the report says how many rows are covered."""
    torch.manual_seed(0)
    batch = torch.randn(32, 48)
    plain = lp_initialize(mlp([48, 40, 20, 4]), batch, target_active=0.1, n_jobs=1)
    torch.manual_seed(0)
    model = mlp([48, 40, 20, 4])
    report = lp_initialize(model, batch, target_active=0.1, coverage=1, n_jobs=1)
    assert report.coverage == 1 and "coverage 1" in str(report)
    first = report.layers[0]
    assert first.met_target == first.out_features and first.covered == first.lp_rows == 32
    assert ((model[0](batch) > 0).sum(dim=1) >= 1).all()
    assert all(layer.covered is not None for layer in report.layers)
    assert all(layer.covered is None for layer in plain.layers)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(coverage=2, target_active=0.1), ValueError, r"layer 'fc2' .* at most 1\. Lower coverage to 1"),
        (dict(coverage=1, target_active=0.05), ValueError, r"even once\. Raise target_active to 0\.0938"),
        (dict(coverage=1, target_active=None), ValueError, r"target_active is None"),
        (
            dict(coverage=13, target_active=0.9),
            ValueError,
            r"'fc2' .* 13 units, but it has 12 units\. Lower coverage to 10",
        ),
        (dict(coverage=0, target_active=0.5), ValueError, r"whole number >= 1"),
        (dict(coverage=1.5, target_active=0.5), ValueError, r"whole number >= 1"),
        (dict(coverage=True, target_active=0.5), ValueError, r"whole number >= 1"),
    ],
)
def test_bad_coverage_is_a_clear_error_and_leaves_the_model_as_it_was(options, error, message):
    torch.manual_seed(0)
    model, batch = mlp([6, 40, 12, 4]), torch.randn(64, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message):
        lp_initialize(model, batch, n_jobs=1, **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_report_pairs_coverage_with_the_same_lp_without_it(fake_record, tmp_path):
    from experiments.coverage_report import coverage_cells, coverage_sections

    per_unit = "default+lp(radius=3,rescale=unit,target=0.1)"
    covered = "default+lp(radius=3,rescale=unit,target=0.1,coverage=1)"
    records = []
    for seed in range(5):
        for init, acc, silent in ((per_unit, 90.0 + seed, 4), (covered, 91.0 + seed + 0.1 * seed, 1)):
            record = fake_record(init, seed, 0.9, acc)
            record["at_init"] = {
                "heldout": {**record["at_init"]["heldout"], "layers": {"fc1": {"silent_samples": silent}}}
            }
            record["final"]["layers"] = {"fc1": {"dead_units": int(init == covered)}}
            records.append(record)
    records.append(fake_record("default", 0, 0.5, 80.0))  # no pair
    (cell,) = coverage_cells(records)
    assert (cell.pair.per_unit, cell.pair.coverage, len(cell.with_)) == (per_unit, 1, 5)
    without, with_, test = cell.accuracy
    assert without["mean"] == pytest.approx(92.0) and with_["mean"] == pytest.approx(93.2)
    assert test["diff_mean"] == pytest.approx(1.2) and test["diff_ci_low"] > 0
    lines = "\n".join(coverage_sections(records, tmp_path))
    assert "better in 1, worse in 0, no difference in 0 of 1 cells" in lines
    assert "silent at fc1 40.0% -> 10.0%" in lines  # 4 and 1 of the fake record's 10 samples
    assert "dead after training 0.0 / 1.0 on average" in lines
    assert (tmp_path / "silent_samples_at_init.png").stat().st_size > 0
    assert coverage_sections([fake_record("default", 0, 0.5, 80.0)], tmp_path) == []


def test_identical_rows_stay_together_and_covered():
    """Blank patches: identical input rows cannot be told apart by any weights. The set LP may spread
    such a group over units; kept together by majority, a group left uncovered is made active in the
    units where it scores highest."""
    rng = np.random.default_rng(5)
    H = rng.normal(size=(30, 4))
    H[:14] = H[0]  # 14 identical rows: more than twice a unit's 6, so no unit holds most of them
    W = rng.normal(size=(6, 4))
    Z = H @ W.T
    f = Formulation(4, 0.3, 0.2, 0.2, target_active=0.2, coverage=1)
    by_majority = identical_rows_together(covering_rows(Z, 0.2, 1), H)
    assert not by_majority[:14].any()  # the group alone would be left uncovered
    active = f.active_rows(Z, H)
    assert (active.sum(axis=1) >= 1).all()
    assert (active[:14] == active[0]).all() and active[0].sum() == 1
    assert active[0, np.argmax(Z[0] / Z.std(axis=0))]  # in the unit where it scores highest
    np.testing.assert_array_equal(covering_rows(Z, 0.2, 1).sum(axis=0), 6)  # the set LP's own counts


def test_a_layer_too_narrow_for_coverage_is_refused_before_any_lp_runs(monkeypatch):
    import lpinit.initialize

    def no_lp(*args, **kwargs):
        raise AssertionError("an LP ran before the narrow layer was refused")

    monkeypatch.setattr(lpinit.initialize, "solve_layer", no_lp)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"layer 'fc2' .* Lower coverage to 1"):
        lp_initialize(mlp([6, 40, 12, 4]), torch.randn(64, 6), target_active=0.1, coverage=2, n_jobs=1)
