"""The per-layer LP and its solvers, against hand-solved LPs, scipy's linprog
and brute-force enumeration."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import highspy
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog

from lpinit import lp
from lpinit.lp import SOLVERS, highs, problem, reference, solve_layer
from lpinit.lp.highs import LayerLPs
from lpinit.lp.problem import ReducedLP, split_constant


@dataclass
class LPCase:
    """A layer's LPs with their optima worked out by hand."""

    H: list
    W: list
    b: list
    weight_bound: float
    bias_bound: float
    margin: float
    objective: list  # per unit
    delta_weight: list | None = None  # where the optimum is unique
    delta_bias: list | None = None

    def solve(self, **kwargs):
        return solve_layer(
            np.array(self.H, dtype=float),
            np.array(self.W, dtype=float),
            np.array(self.b, dtype=float),
            weight_bound=self.weight_bound,
            bias_bound=self.bias_bound,
            margin=self.margin,
            **kwargs,
        )


HAND_SOLVED = {
    # min (1 - d)+ + (1 - 2d)+ over |d| <= 1/2: d = 1/2 leaves 1/2.
    "one-feature": LPCase([[1], [2]], [[0]], [0], 0.5, 0.0, 1.0, [0.5], [[0.5]], [0.0]),
    # e = 1/4 helps every row; then (3/4 - d) + (3/4 - 2d)+ + (3/4 + d) = 3/2
    # for any d in [3/8, 1/2] (the middle row is met from d = 3/8 on).
    "bias-helps": LPCase([[1], [2], [-1]], [[0]], [0], 0.5, 0.25, 1.0, [1.5]),
    # Unit 0 already clears the margin (objective 0). Unit 1: w = -1 gives
    # pre-activations (-1, -2); the best is d = e = 1/2, shortfalls 1 + 1.5.
    "two-units": LPCase([[1], [2]], [[1], [-1]], [1, 0], 0.5, 0.5, 1.0, [0.0, 2.5], None, None),
    # Two features, no bias freedom: rows need d1 >= 1 and d2 >= 1, the box
    # allows 0.3 each; shortfalls 0.7 + 0.7, and d = (0.3, 0.3) is the only optimum.
    "two-features": LPCase([[1, 0], [0, 1]], [[0, 0]], [0], 0.3, 0.0, 1.0, [1.4], [[0.3, 0.3]], [0.0]),
    # Rows d >= 1 (twice) and -3d >= 1: for d in [-1/3, 1] the shortfall is
    # 2(1 - d) + (1 + 3d) = 3 + d, so the LP takes d = -1/3 (8/3), leaving two
    # rows short, while d = 1 would leave only one (see the exact-mode test).
    "lp-is-not-count": LPCase([[1], [1], [-3]], [[0]], [0], 1.0, 0.0, 1.0, [8 / 3], [[-1 / 3]], [0.0]),
}


def random_layer(seed, n=30, d_in=5, k=6, sparse=False):
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(n, d_in))
    if sparse:
        H = np.maximum(H, 0.0)  # like a hidden layer's input after a ReLU
    W = rng.normal(size=(k, d_in)) / np.sqrt(d_in)
    b = rng.normal(size=k) * 0.1
    return H, W, b


def background_layer(seed, n=40, d_in=30, k=6):
    """Normalized-MNIST-like input: most entries equal their column's background value."""
    rng = np.random.default_rng(seed)
    background = rng.choice([-0.4242, -0.3, 0.1], size=d_in)
    ink = rng.random((n, d_in)) < 0.15
    H = np.where(ink, rng.normal(1.0, 0.8, size=(n, d_in)), background)
    W = rng.normal(size=(k, d_in)) / np.sqrt(d_in)
    b = rng.normal(size=k) * 0.1
    return H, W, b


def linprog_objectives(H, W, b, weight_bound, bias_bound, margin):
    """Each unit's LP optimum by scipy's linprog: an independent oracle."""
    n, d_in = H.shape
    # variables [d, e, s]; rows -(H d + e + s) <= -r
    A_ub = -np.hstack([H, np.ones((n, 1)), np.eye(n)])
    cost = np.r_[np.zeros(d_in + 1), np.ones(n)]
    bounds = [(-weight_bound, weight_bound)] * d_in + [(-bias_bound, bias_bound)] + [(0, None)] * n
    optima = []
    for w, bias in zip(W, b, strict=True):
        r = margin - (H @ w + bias)
        result = linprog(cost, A_ub=A_ub, b_ub=-r, bounds=bounds, method="highs")
        assert result.status == 0, result.message
        optima.append(result.fun)
    return np.array(optima)


def shortfall_sum(H, W, b, margin, solution):
    """The LP objective achieved by the returned changes, recomputed from scratch."""
    Z = H @ (W + solution.delta_weight).T + (b + solution.delta_bias)
    return np.maximum(margin - Z, 0.0).sum(axis=0)


def assert_feasible_and_achieving(H, W, b, margin, weight_bound, bias_bound, solution):
    assert np.abs(solution.delta_weight).max() <= weight_bound
    assert np.abs(solution.delta_bias).max() <= bias_bound
    achieved = shortfall_sum(H, W, b, margin, solution)
    np.testing.assert_allclose(achieved, solution.objective, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- optimum


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", HAND_SOLVED)
def test_hand_solved_lps(solver, name):
    case = HAND_SOLVED[name]
    solution = case.solve(solver=solver, n_jobs=1)
    assert solution.status_counts() == {"optimal": len(case.W)}
    np.testing.assert_allclose(solution.objective, case.objective, rtol=1e-7, atol=1e-9)
    if case.delta_weight is not None:
        np.testing.assert_allclose(solution.delta_weight, case.delta_weight, atol=1e-9)
        np.testing.assert_allclose(solution.delta_bias, case.delta_bias, atol=1e-9)
    H, W, b = (np.array(x, dtype=float) for x in (case.H, case.W, case.b))
    assert_feasible_and_achieving(H, W, b, case.margin, case.weight_bound, case.bias_bound, solution)


@pytest.mark.parametrize("make_layer", [random_layer, background_layer])
@pytest.mark.parametrize("seed", [0, 1])
def test_both_solvers_match_linprog(make_layer, seed):
    H, W, b = make_layer(seed)
    bounds = dict(weight_bound=0.2, bias_bound=0.1, margin=0.5)
    oracle = linprog_objectives(H, W, b, **bounds)
    assert (oracle > 1e-3).any()  # not all trivially zero
    for solver in SOLVERS:
        solution = solve_layer(H, W, b, solver=solver, n_jobs=1, **bounds)
        assert solution.status_counts() == {"optimal": len(W)}, solver
        np.testing.assert_allclose(solution.objective, oracle, rtol=1e-6, atol=1e-9, err_msg=solver)
        assert_feasible_and_achieving(H, W, b, 0.5, 0.2, 0.1, solution)


def test_zero_bounds_leave_the_layer_as_it_is():
    H, W, b = random_layer(2)
    solution = solve_layer(H, W, b, weight_bound=0.0, bias_bound=0.0, margin=0.3, n_jobs=1)
    assert not solution.delta_weight.any() and not solution.delta_bias.any()
    np.testing.assert_allclose(solution.objective, np.maximum(0.3 - (H @ W.T + b), 0).sum(axis=0))


def test_units_already_above_the_margin_need_no_solver():
    H, W, b = background_layer(14)
    solution = solve_layer(H, W, b, weight_bound=0.2, bias_bound=0.1, margin=-50.0, n_jobs=1)
    assert solution.status_counts() == {"optimal": len(W)}
    assert not solution.objective.any() and solution.solver_time_s.sum() == 0


def test_duality_bound_is_a_lower_bound_and_tight_at_the_optimum():
    H, W, b = random_layer(3, k=1)
    layer = ReducedLP.from_input(H, 0.2, 0.1)
    r = 0.5 - (H @ W[0] + b[0])
    optimum = linprog_objectives(H, W, b, 0.2, 0.1, 0.5)[0]
    rng = np.random.default_rng(0)
    for y in rng.random((20, len(r))):
        assert layer.dual_bound(r, y) <= optimum + 1e-9
    solution = highs._solve_lp_chunk(
        LayerLPs(layer, r[:, None]), np.array([0]), threads=0, warm_start=False, time_limit_s=None
    )
    assert solution.status[0] == "optimal"
    np.testing.assert_allclose(solution.objective[0], optimum, rtol=1e-7)


# ---------------------------------------------------------------- structure


def test_dual_fixing_fixes_sign_constant_columns_and_the_bias():
    H = np.array([[1.0, -1.0, 0.0, 2.0], [0.0, -3.0, 0.0, -1.0], [2.0, 0.0, 0.0, 0.5]])
    layer = ReducedLP.from_input(H, 0.1, 0.2)
    np.testing.assert_array_equal(layer.free, [False, False, False, True])
    np.testing.assert_allclose(layer.fixed_delta, [0.1, -0.1, 0.0, 0.0])
    assert layer.bias_delta == 0.2
    np.testing.assert_allclose(layer.offset, H @ [0.1, -0.1, 0.0, 0.0] + 0.2)


def test_relu_inputs_need_no_lp():
    H, W, b = random_layer(13, sparse=True)
    H[:, 0] = 0.0  # an input unit that never fires on this batch: its weights stay
    bounds = dict(weight_bound=0.2, bias_bound=0.1, margin=0.8)
    solution = solve_layer(H, W, b, n_jobs=1, **bounds)
    assert solution.status_counts() == {"optimal": len(W)}
    assert solution.solver_time_s.sum() == 0 and solution.iterations.sum() == 0
    np.testing.assert_array_equal(solution.delta_weight[:, 0], 0.0)
    np.testing.assert_array_equal(solution.delta_weight[:, 1:], 0.2)  # the closed form d = rho_w
    np.testing.assert_array_equal(solution.delta_bias, 0.1)
    oracle = linprog_objectives(H, W, b, **bounds)
    np.testing.assert_allclose(solution.objective, oracle, rtol=1e-6, atol=1e-9)


def test_split_constant_reconstructs_H_with_fewer_nonzeros():
    H, _, _ = background_layer(4)
    S, c = split_constant(H)
    np.testing.assert_allclose(S.toarray() + c, H, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(S.toarray() == 0, c == H)  # background entries vanish exactly
    assert S.nnz < 0.5 * np.count_nonzero(H)
    assert set(np.unique(c)) <= {-0.4242, -0.3, 0.1}


def test_split_constant_leaves_relu_outputs_alone():
    H, _, _ = random_layer(5, sparse=True)
    S, c = split_constant(H)
    assert not c.any()
    np.testing.assert_array_equal(S.toarray(), H)


def test_shifted_formulation_has_the_dense_optimum(monkeypatch):
    H, W, b = background_layer(6)
    bounds = dict(weight_bound=0.2, bias_bound=0.1, margin=0.5, n_jobs=1)
    assert ReducedLP.from_input(H, 0.2, 0.1).shifted
    shifted = solve_layer(H, W, b, **bounds)
    monkeypatch.setattr(problem, "split_constant", lambda H: (sp.csr_matrix(H), np.zeros(H.shape[1])))
    assert not ReducedLP.from_input(H, 0.2, 0.1).shifted
    dense = solve_layer(H, W, b, **bounds)
    assert shifted.status_counts() == dense.status_counts() == {"optimal": len(W)}
    np.testing.assert_allclose(shifted.objective, dense.objective, rtol=1e-6, atol=1e-9)


def test_shift_is_used_on_a_real_mnist_batch(mnist_test):
    images, _ = mnist_test
    H = images[:64].reshape(64, -1).double().numpy()
    assert ReducedLP.from_input(H, 0.01, 0.01).shifted
    rng = np.random.default_rng(0)
    W = rng.uniform(-1, 1, size=(8, 784)) / 28
    b = rng.uniform(-1, 1, size=8) / 28
    spread = (H @ W.T + b).std()
    bounds = dict(weight_bound=0.1 / 28, bias_bound=0.1 * spread, margin=0.1 * spread, n_jobs=1)
    fast = solve_layer(H, W, b, **bounds)
    reference = solve_layer(H, W, b, solver="cvxpy", **bounds)
    assert fast.status_counts() == reference.status_counts() == {"optimal": 8}
    np.testing.assert_allclose(fast.objective, reference.objective, rtol=1e-6, atol=1e-9)
    assert_feasible_and_achieving(H, W, b, bounds["margin"], bounds["weight_bound"], bounds["bias_bound"], fast)


# ---------------------------------------------------------------- hot starts and checks


@pytest.mark.parametrize("make_layer", [random_layer, background_layer])
def test_warm_start_gives_the_cold_optima(make_layer):
    H, W, b = make_layer(7, k=12)
    bounds = dict(weight_bound=0.2, bias_bound=0.1, margin=0.5, n_jobs=1)
    cold = solve_layer(H, W, b, **bounds)
    warm = solve_layer(H, W, b, warm_start=True, **bounds)
    assert warm.status_counts() == cold.status_counts() == {"optimal": 12}
    np.testing.assert_allclose(warm.objective, cold.objective, rtol=1e-6, atol=1e-9)
    assert_feasible_and_achieving(H, W, b, 0.5, 0.2, 0.1, warm)


def test_a_wrong_optimum_from_highs_is_caught_and_solved_again(monkeypatch):
    H, W, b = random_layer(8, k=3)
    bounds = dict(weight_bound=0.2, bias_bound=0.1, margin=2.0, n_jobs=1)  # no unit meets it outright
    expected = linprog_objectives(H, W, b, 0.2, 0.1, 2.0)
    real_answer = highs._answer
    calls = []

    def first_answer_wrong(highs, with_dual=True):
        calls.append(1)
        x, y = real_answer(highs, with_dual)
        if len(calls) == 1:  # claim "optimal" for a point that is not: no change at all
            return [0.0] * len(x), [0.0] * len(y) if y else None
        return x, y

    monkeypatch.setattr(highs, "_answer", first_answer_wrong)
    solution = solve_layer(H, W, b, **bounds)
    assert solution.resolves == 1
    assert solution.status_counts() == {"optimal": 3}
    np.testing.assert_allclose(solution.objective, expected, rtol=1e-6, atol=1e-9)


def test_an_answer_that_stays_wrong_is_failed_and_changes_nothing(monkeypatch):
    H, W, b = random_layer(9, k=2)
    monkeypatch.setattr(highs, "_answer", lambda highs, with_dual=True: ([0.0] * 10_000, [0.0] * 10_000))
    solution = solve_layer(H, W, b, weight_bound=0.2, bias_bound=0.1, margin=2.0, n_jobs=1)
    assert solution.status_counts() == {"failed": 2}
    assert solution.resolves == 2
    assert not solution.delta_weight.any() and np.isnan(solution.objective).all()


def test_by_default_a_small_layer_starts_no_worker(monkeypatch):
    from lpinit import parallel

    monkeypatch.setattr(parallel, "running_workers", lambda: 0)  # none up
    H, W, b = background_layer(10, k=2 * highs.MIN_UNITS_PER_PROCESS)
    solution = solve_layer(H, W, b, weight_bound=0.2, bias_bound=0.1, margin=2.0)  # a fraction of a second
    assert solution.processes == 1
    assert solution.status_counts() == {"optimal": len(W)}


@pytest.mark.parametrize("n_jobs", [0, -1, 1.5, True])
def test_start_workers_rejects_a_bad_n_jobs(n_jobs):
    with pytest.raises((ValueError, TypeError), match="n_jobs"):
        lp.start_workers(n_jobs)


def test_processes_give_the_serial_result():
    H, W, b = background_layer(10, k=2 * highs.MIN_UNITS_PER_PROCESS)
    bounds = dict(weight_bound=0.2, bias_bound=0.1, margin=2.0)  # every unit needs an LP
    serial = solve_layer(H, W, b, n_jobs=1, **bounds)
    parallel = solve_layer(H, W, b, n_jobs=2, **bounds)
    assert parallel.processes == 2 and serial.processes == 1
    np.testing.assert_allclose(parallel.objective, serial.objective, rtol=1e-6, atol=1e-9)
    assert parallel.status_counts() == {"optimal": len(W)}


def _solve_in_process(H, W, b, bounds):
    return solve_layer(H, W, b, n_jobs=1, **bounds).status_counts()


def test_processes_that_ran_highs_before_still_solve():
    """Reused joblib workers that already started HiGHS with its default thread
    count (as the harness's runs do) must still solve a parallel layer."""
    from joblib import Parallel, delayed

    H, W, b = background_layer(12, k=2 * highs.MIN_UNITS_PER_PROCESS)
    bounds = dict(weight_bound=0.2, bias_bound=0.1, margin=2.0)
    small = (H, W[:3], b[:3], bounds)
    assert Parallel(n_jobs=2)(delayed(_solve_in_process)(*small) for _ in range(4)) == [{"optimal": 3}] * 4
    parallel = solve_layer(H, W, b, n_jobs=2, **bounds)
    assert parallel.processes == 2
    assert parallel.status_counts() == {"optimal": len(W)}


def test_progress_bar_counts_units(capsys):
    H, W, b = random_layer(11, k=3)
    solve_layer(H, W, b, weight_bound=0.1, bias_bound=0.1, margin=0.2, n_jobs=1, progress=True, desc="fc1")
    err = capsys.readouterr().err
    assert "fc1" in err and "3/3" in err


# ---------------------------------------------------------------- exact mode


def fewest_short_rows(H, w, bias, weight_bound, bias_bound, margin):
    """Brute force: the fewest rows below the margin, by checking with linprog
    which subsets of rows can all be met inside the box."""
    n, d_in = H.shape
    r = margin - (H @ w + bias)
    bounds = [(-weight_bound, weight_bound)] * d_in + [(-bias_bound, bias_bound)]
    A = -np.hstack([H, np.ones((n, 1))])
    for size in range(n, -1, -1):
        for rows in itertools.combinations(range(n), size):
            rows = list(rows)
            result = linprog(np.zeros(d_in + 1), A_ub=A[rows], b_ub=-r[rows], bounds=bounds, method="highs")
            if result.status == 0:
                return n - size
    raise AssertionError("the empty set of rows is always feasible")


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_mode_finds_the_fewest_short_rows(solver, seed):
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(8, 2))
    W = rng.normal(size=(3, 2))
    b = rng.normal(size=3) * 0.5
    bounds = dict(weight_bound=0.4, bias_bound=0.2, margin=0.3)
    exact = solve_layer(H, W, b, solver=solver, exact=True, n_jobs=1, **bounds)
    assert exact.status_counts() == {"optimal": 3}
    brute = [fewest_short_rows(H, w, bias, **bounds) for w, bias in zip(W, b, strict=True)]
    np.testing.assert_array_equal(exact.objective, brute)
    # the changes returned do leave exactly that many rows short
    Z = H @ (W + exact.delta_weight).T + (b + exact.delta_bias)
    np.testing.assert_array_equal((bounds["margin"] - 1e-6 > Z).sum(axis=0), brute)
    assert np.abs(exact.delta_weight).max() <= 0.4 and np.abs(exact.delta_bias).max() <= 0.2
    # the LP relaxation's changes can do no better than the true minimum
    relaxed = solve_layer(H, W, b, solver=solver, n_jobs=1, **bounds)
    Z_lp = H @ (W + relaxed.delta_weight).T + (b + relaxed.delta_bias)
    assert ((Z_lp < bounds["margin"] - 1e-6).sum(axis=0) >= exact.objective).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_exact_mode_beats_the_lp_on_a_hand_solved_case(solver):
    case = HAND_SOLVED["lp-is-not-count"]
    exact = case.solve(solver=solver, exact=True, n_jobs=1)
    assert exact.objective.tolist() == [1.0]
    np.testing.assert_allclose(exact.delta_weight, [[1.0]], atol=1e-9)
    relaxed = case.solve(solver=solver, n_jobs=1)
    Z = np.array(case.H) @ relaxed.delta_weight.T
    assert (case.margin - 1e-6 > Z).sum() == 2


# ---------------------------------------------------------------- limits and statuses


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("exact", [False, True])
def test_time_limit_keeps_the_weights(solver, exact):
    # margins that no start meets outright, whose crash basis is not already optimal (LP),
    # yet that MIP presolve alone cannot settle
    H, W, b = random_layer(12 if exact else 20, k=3)
    solution = solve_layer(
        H,
        W,
        b,
        weight_bound=0.2,
        bias_bound=0.1,
        margin=0.5 if exact else 1.0,
        solver=solver,
        exact=exact,
        n_jobs=1,
        time_limit_s=0.0,
    )
    assert solution.status_counts() == {"time_limit": 3}
    assert not solution.delta_weight.any() and not solution.delta_bias.any()
    assert np.isnan(solution.objective).all()


def test_status_groups():
    status = highspy.HighsModelStatus
    assert problem.status_group(status.kOptimal, highs.HIGHS_STATUS_GROUPS) == "optimal"
    assert problem.status_group(status.kTimeLimit, highs.HIGHS_STATUS_GROUPS) == "time_limit"
    for failed in (status.kInfeasible, status.kUnbounded, status.kSolveError, status.kNotset):
        assert problem.status_group(failed, highs.HIGHS_STATUS_GROUPS) == "failed"
    assert problem.status_group("optimal", reference.CVXPY_STATUS_GROUPS) == "optimal"
    assert problem.status_group("user_limit", reference.CVXPY_STATUS_GROUPS) == "time_limit"
    assert problem.status_group("optimal_inaccurate", reference.CVXPY_STATUS_GROUPS) == "failed"
    assert problem.status_group("solver_error", reference.CVXPY_STATUS_GROUPS) == "failed"


# ---------------------------------------------------------------- bad input


GOOD = dict(weight_bound=0.1, bias_bound=0.1, margin=0.2)


def _H():
    return np.ones((4, 3))


@pytest.mark.parametrize(
    "H, W, b, options, error, message",
    [
        (np.full((4, 3), np.nan), np.ones((2, 3)), np.zeros(2), {}, ValueError, "finite values in H"),
        (_H(), np.full((2, 3), np.inf), np.zeros(2), {}, ValueError, "finite values in W"),
        (_H(), np.ones((2, 4)), np.zeros(2), {}, ValueError, "H's 3 input features"),
        (_H(), np.ones((2, 3)), np.zeros(3), {}, ValueError, "one entry per row of W"),
        (np.ones(3), np.ones((2, 3)), np.zeros(2), {}, ValueError, r"reshape\(1, -1\)"),
        (np.ones((0, 3)), np.ones((2, 3)), np.zeros(2), {}, ValueError, "non-empty"),
        (_H().astype(complex), np.ones((2, 3)), np.zeros(2), {}, TypeError, "real numeric"),
        (np.array([["a"] * 3] * 4), np.ones((2, 3)), np.zeros(2), {}, TypeError, "real numeric"),
        ([[1.0, 2.0], [1.0]], np.ones((2, 3)), np.zeros(2), {}, TypeError, "numpy cannot read"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"weight_bound": -0.1}, ValueError, "weight_bound"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"bias_bound": -1}, ValueError, "bias_bound"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"margin": np.nan}, ValueError, "margin to be finite"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"margin": "big"}, TypeError, "margin to be a number"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"solver": "gurobi"}, ValueError, "'highs', 'cvxpy'"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"n_jobs": 0}, ValueError, "n_jobs >= 1"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"n_jobs": 1.5}, TypeError, "n_jobs"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"time_limit_s": -1}, ValueError, "time_limit_s"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"solver": "cvxpy", "warm_start": True}, ValueError, "warm_start"),
        (_H(), np.ones((2, 3)), np.zeros(2), {"exact": True, "warm_start": True}, ValueError, "warm_start"),
    ],
)
def test_bad_input_is_rejected(H, W, b, options, error, message):
    with pytest.raises(error, match=message):
        solve_layer(H, W, b, **{**GOOD, **options})


# ---------------------------------------------------------------- benchmark script


@pytest.mark.parametrize("variant", ["plain", "anchored", "target"])
def test_benchmark_script_runs_on_a_tiny_budget(variant, monkeypatch, capsys, tmp_path):
    from experiments import bench_lp

    out = tmp_path / "bench.json"
    argv = ["bench_lp", "--batch-size", "32", "--jobs", "1", "--repeats", "1", "--reference-units", "1"]
    monkeypatch.setattr("sys.argv", [*argv, "--variant", variant, "--json", str(out)])
    bench_lp.main()
    printed = capsys.readouterr().out
    assert f"goals ({variant}): " in printed and "agree to" in printed
    record = json.loads(out.read_text())
    assert set(record) >= {"settings", "fast", "naive_cvxpy_s", "dpp_cvxpy_s"}
    assert record["max_objective_difference"] < 1e-6  # (i), (ii) and (iii) reach the same optima


def _cycling_lp():
    """A unit's target LP from deep in a width-2, 20-layer network whose activations grew to 3e9
    (the collapse study, lp_target@0.7, seed 711): unscaled simplex cycles on it."""
    import highspy

    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.readModel(str(Path(__file__).parent / "data" / "cycles_unscaled.mps.gz"))
    highs.setOptionValue("presolve", "off")
    return highs


def _linprog_of(highs) -> float:
    """The optimum of the LP held by ``highs``, by scipy's linprog from its arrays."""
    lp = highs.getLp()
    A = sp.csc_matrix((lp.a_matrix_.value_, lp.a_matrix_.index_, lp.a_matrix_.start_), shape=(lp.num_row_, lp.num_col_))
    lower, upper = np.array(lp.row_lower_), np.array(lp.row_upper_)
    finite_up, finite_low = np.isfinite(upper) & (upper < 1e30), np.isfinite(lower) & (lower > -1e30)
    A_ub = sp.vstack([A[finite_up], -A[finite_low]])
    b_ub = np.r_[upper[finite_up], -lower[finite_low]]
    bounds = [
        (lo if lo > -1e30 else None, up if up < 1e30 else None)
        for lo, up in zip(lp.col_lower_, lp.col_upper_, strict=True)
    ]
    # presolve off: HiGHS's presolve takes about a minute on this LP
    result = linprog(lp.col_cost_, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs-ds", options={"presolve": False})
    assert result.status == 0
    return float(result.fun)


def test_a_stall_of_unscaled_simplex_is_rerun_with_highs_scaling():
    from lpinit.lp.highs import _run, iteration_cap

    highs = _cycling_lp()
    highs.setOptionValue("simplex_scale_strategy", 0)
    highs.setOptionValue("simplex_iteration_limit", iteration_cap(128))
    highs.run()
    assert highs.getModelStatus() == highspy.HighsModelStatus.kIterationLimit  # it does cycle, unscaled

    highs = _cycling_lp()
    highs.setOptionValue("simplex_scale_strategy", 0)
    status, _ = _run(highs, None, iteration_cap(128))
    assert status == "optimal"
    assert highs.getOptionValue("simplex_scale_strategy")[1] == 0  # the instance's own setting is restored
    assert highs.getInfo().objective_function_value == pytest.approx(_linprog_of(highs), rel=1e-6)


def test_a_stall_left_to_the_caller_is_reported_at_once():
    """finish=False (the general LP, whose caller goes to the dual): the first stall is the answer,
    so the caller counts it as one, with no rerun in between."""
    from lpinit.lp.highs import _run, iteration_cap

    highs = _cycling_lp()
    highs.setOptionValue("simplex_scale_strategy", 0)
    status, iterations = _run(highs, None, iteration_cap(128), finish=False)
    assert status == "time_limit"
    assert highs.getModelStatus() == highspy.HighsModelStatus.kIterationLimit
    assert iterations == iteration_cap(128)


def test_every_fallback_stage_is_bounded(monkeypatch):
    """With every stage capped at a few iterations, _run returns a status instead of running on."""
    import lpinit.lp.highs as fast

    monkeypatch.setattr(fast, "_IPM_ITERATION_LIMIT", 1)
    highs = _cycling_lp()
    status, _ = fast._run(highs, None, iteration_cap=1)
    assert status == "time_limit"  # a unit that keeps its weights, reported as such
    assert highs.getOptionValue("ipm_iteration_limit")[1] == fast._NO_LIMIT
    assert highs.getOptionValue("solver")[1] == "choose"
