"""The reference solver: the LP of ``lpinit.lp.problem`` written in cvxpy as
it reads, compiled once per layer (the right-hand side is a ``cp.Parameter``),
solved by HiGHS. Slower than the fast path; there to be read and to check it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from lpinit.lp.problem import FAILED, OPTIMAL, Formulation, LayerSolution, count_short, status_group

CVXPY_STATUS_GROUPS = {
    "optimal": OPTIMAL,  # cp.OPTIMAL
    "user_limit": "time_limit",  # cp.USER_LIMIT: HiGHS stopped at time_limit
}
"""cvxpy problem status -> unit status; every status not listed (including
``optimal_inaccurate``) is ``FAILED``."""


def solve_cvxpy(
    H: np.ndarray,
    R: np.ndarray,
    weight_bound: float,
    bias_bound: float,
    *,
    exact: bool,
    time_limit_s: float | None,
    tick: Callable[[int], object],
) -> LayerSolution:
    """Solve every unit (right-hand sides: the columns of ``R``) in this process."""
    import cvxpy as cp

    from lpinit.lp.highs import swallow_highs_banner

    swallow_highs_banner()
    n, d_in = H.shape
    r = cp.Parameter(n)
    d = cp.Variable(d_in)
    e = cp.Variable()
    box = [cp.abs(d) <= weight_bound, cp.abs(e) <= bias_bound]
    if exact:
        big_m = cp.Parameter(n, nonneg=True)
        z = cp.Variable(n, boolean=True)
        problem = cp.Problem(cp.Minimize(cp.sum(z)), [H @ d + e + cp.multiply(big_m, z) >= r, *box])
    else:
        s = cp.Variable(n, nonneg=True)
        problem = cp.Problem(cp.Minimize(cp.sum(s)), [H @ d + e + s >= r, *box])
    options = {} if time_limit_s is None else {"time_limit": time_limit_s}
    row_norm1 = np.abs(H).sum(axis=1)

    solution = LayerSolution.empty(R.shape[1], d_in)
    for j in range(R.shape[1]):
        r.value = R[:, j]
        if exact:
            big_m.value = np.maximum(0.0, R[:, j] + weight_bound * row_norm1 + bias_bound)
        try:
            with warnings.catch_warnings():  # the unit's status reports a time limit
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                problem.solve(solver=cp.HIGHS, **options)
            status = status_group(problem.status, CVXPY_STATUS_GROUPS)
        except cp.SolverError:
            status = FAILED
        solution.status[j] = status
        stats = problem.solver_stats
        solution.solver_time_s[j] = (stats.solve_time or 0.0) if stats else 0.0
        solution.iterations[j] = max(0, stats.num_iters or 0) if stats else 0
        if status == OPTIMAL:
            d_j = np.clip(np.asarray(d.value), -weight_bound, weight_bound)
            e_j = float(np.clip(np.asarray(e.value), -bias_bound, bias_bound))
            shortfall = R[:, j] - H @ d_j - e_j
            solution.delta_weight[j], solution.delta_bias[j] = d_j, e_j
            solution.objective[j] = count_short(shortfall, R[:, j]) if exact else np.maximum(shortfall, 0.0).sum()
        tick(1)
    return solution


def solve_cvxpy_general(
    H: np.ndarray,
    Z: np.ndarray,
    formulation: Formulation,
    active: np.ndarray | None = None,
    *,
    time_limit_s: float | None,
    tick: Callable[[int], object],
) -> LayerSolution:
    """Solve every unit of the general form as the module docstring of
    ``lpinit.lp.problem`` writes it: ``sigma_i (z_i + H_i d + e) + s_i >= m``
    with ``sigma_i = +1`` on rows to be active (``active``, by default
    ``formulation.active_rows``) and ``-1`` on the others."""
    import cvxpy as cp

    from lpinit.lp.highs import swallow_highs_banner

    swallow_highs_banner()
    f = formulation
    n, d_in = H.shape
    sigma = cp.Parameter(n)
    rhs = cp.Parameter(n)  # m - sigma * z
    d, e, s = cp.Variable(d_in), cp.Variable(), cp.Variable(n, nonneg=True)
    constraints = [cp.multiply(sigma, H @ d + e) + s >= rhs, cp.abs(d) <= f.weight_bound, cp.abs(e) <= f.bias_bound]
    if f.anchor:
        constraints.append(H.mean(axis=0) @ d + e == 0)
    change = f.weight_cost() * cp.norm1(d) + f.bias_cost() * cp.abs(e)
    problem = cp.Problem(cp.Minimize(f.shortfall_cost() * cp.sum(s) + change), constraints)
    options = {} if time_limit_s is None else {"time_limit": time_limit_s}
    active = f.active_rows(Z, H) if active is None else active

    solution = LayerSolution.empty(Z.shape[1], d_in)
    for j in range(Z.shape[1]):
        sigma.value = np.where(active[:, j], 1.0, -1.0)
        rhs.value = f.margin - sigma.value * Z[:, j]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                problem.solve(solver=cp.HIGHS, **options)
            status = status_group(problem.status, CVXPY_STATUS_GROUPS)
        except cp.SolverError:
            status = FAILED
        solution.status[j] = status
        stats = problem.solver_stats
        solution.solver_time_s[j] = (stats.solve_time or 0.0) if stats else 0.0
        solution.iterations[j] = max(0, stats.num_iters or 0) if stats else 0
        if status == OPTIMAL:
            d_j = np.clip(np.asarray(d.value), -f.weight_bound, f.weight_bound)
            e_j = float(np.clip(np.asarray(e.value), -f.bias_bound, f.bias_bound))
            solution.delta_weight[j], solution.delta_bias[j] = d_j, e_j
            solution.objective[j] = f.objective(H, Z[:, [j]], d_j[None, :], np.array([e_j]), active[:, [j]])[0]
        tick(1)
    return solution
