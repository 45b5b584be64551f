"""The per-layer LP of lpinit and its two solvers.

For one ``nn.Linear`` layer (weights ``W``: k x d_in, bias ``b``: k) and its
input ``H`` on a batch (n x d_in), unit j gets the LP

.. math::
    \\min_{d, e, s} \\sum_i s_i \\quad \\text{s.t.}\\quad
    H_i (w_j + d) + b_j + e + s_i \\ge m,\\; s \\ge 0,\\;
    \\|d\\|_\\infty \\le \\rho_w,\\; |e| \\le \\rho_b

With ``r = m - (H w_j + b_j)`` the constraints read ``H d + e + s >= r``: all
units of a layer share the matrix ``[H, 1, I]`` and differ only in the row
bounds ``r``, and they are independent of each other. ``solve_layer`` solves
the k LPs and returns each unit's change ``(d, e)``.

Two solvers reach the same optimum:

- ``"cvxpy"``: the LP as written above, with ``r`` a ``cp.Parameter`` so that
  cvxpy compiles it once per layer, solved by HiGHS. The readable reference.
- ``"highs"`` (default): highspy directly, on a smaller LP with the same optimum.

  1. *Dual fixing.* Raising ``e``, or a weight whose input column is >= 0 on
     every sample, never lowers a pre-activation, so some optimum has it at
     its upper bound (a column <= 0: lower bound; a column of zeros: no
     change). Only weights of mixed-sign columns stay in the LP. After a
     ReLU every column is >= 0, so hidden layers get the closed form
     ``d = rho_w, e = rho_b`` and no LP at all.
  2. *Shift.* The rest of ``H`` is written ``S + 1 c^T``, ``c`` the most
     common value of each column: normalized MNIST is dense only because its
     background pixels all equal -0.4242. One free variable ``t = c . d``
     turns row i into ``S_i d + t + s_i >= r_i``, with far fewer nonzeros.
  3. *Crash start.* The LP is built once per layer and process; per unit
     only the row bounds change. Dual simplex starts from every weight at the
     bound that raises the unit's short rows; a unit whose start already
     meets every margin is done without HiGHS.
  4. *Checks.* Every answer is checked against a duality bound and solved
     again from scratch if it fails, since HiGHS has returned wrong optima
     from warm starts (ERGO-Code/HiGHS#3194, #3294).
  5. *Processes.* Chunks of units are shared by this process and up to
     ``n_jobs - 1`` helper processes, joblib's loky workers, which stay up
     between calls; by default they are started only for layers whose LPs
     repay it (``lpinit.parallel``).

The optimum is seldom unique: most units can meet every margin inside the
box, and then any change that does so is optimal. The two solvers may return
different changes with the same objective.

Exact mode (``exact=True``, both solvers) solves the mixed-integer program
that the LP relaxes: one binary ``z_i`` per sample, minimize ``sum_i z_i``,
the number of pre-activations below the margin, subject to
``H_i d + e + M_i z_i >= r_i`` with ``M_i = max(0, r_i + rho_w |H_i|_1 + rho_b)``,
the largest violation the box allows (the ``"highs"`` path fixes variables as
above first: raising a pre-activation never adds to the count). It is
exponential in the worst case:
meant for layers of a few hundred samples and units at most, to measure how
far the LP is from the true minimum.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial

import highspy
import numpy as np
import scipy.sparse as sp
from joblib import cpu_count
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from lpinit import parallel
from lpinit.validation import check_choice, check_finite, check_non_negative

SOLVERS = ("highs", "cvxpy")

OPTIMAL = "optimal"
TIME_LIMIT = "time_limit"
FAILED = "failed"
STATUSES = (OPTIMAL, TIME_LIMIT, FAILED)
"""A unit's status: solved and checked / stopped by a limit / anything else.
Only ``OPTIMAL`` units get a change; the others keep their weights."""

HIGHS_STATUS_GROUPS = {
    highspy.HighsModelStatus.kOptimal: OPTIMAL,
    highspy.HighsModelStatus.kTimeLimit: TIME_LIMIT,
    highspy.HighsModelStatus.kIterationLimit: TIME_LIMIT,
}
"""HiGHS model status -> unit status; every status not listed is ``FAILED``."""

CVXPY_STATUS_GROUPS = {
    "optimal": OPTIMAL,  # cp.OPTIMAL
    "user_limit": TIME_LIMIT,  # cp.USER_LIMIT: HiGHS stopped at time_limit
}
"""cvxpy problem status -> unit status; every status not listed (including
``optimal_inaccurate``) is ``FAILED``."""

GAP_TOLERANCE = 1e-6
"""A HiGHS answer counts as optimal when its objective exceeds the duality
bound by at most this, relative to the objective at ``d = 0, e = 0``."""

VIOLATION_TOLERANCE = 1e-6
"""Exact mode: a row is below the margin when it misses it by more than this
(HiGHS's MIP feasibility tolerance), relative to ``1 + |r_i|``."""

MIN_UNITS_PER_WORKER = 32
"""Fewer units than this per process do not repay feeding it."""


def status_group(status, groups: dict) -> str:
    """The unit status (one of ``STATUSES``) of a solver status."""
    return groups.get(status, FAILED)


@dataclass
class LayerSolution:
    """What ``solve_layer`` found for each of a layer's k units.

    Units not solved to optimality (status ``"time_limit"`` or ``"failed"``)
    have zero change and a NaN objective.
    """

    delta_weight: np.ndarray  # (k, d_in): add to W
    delta_bias: np.ndarray  # (k,): add to b
    objective: np.ndarray  # (k,) LP: sum of shortfalls below the margin; exact: how many rows fall short
    status: np.ndarray  # (k,) of str, one of STATUSES
    iterations: np.ndarray  # (k,) simplex iterations (exact mode: branch-and-bound nodes)
    solver_time_s: np.ndarray  # (k,) seconds in HiGHS calls; 0 for units settled without HiGHS
    wall_time_s: float = 0.0
    resolves: int = 0  # units solved again from scratch after failing the optimality check
    workers: int = 1  # processes that solved this layer: this one and any helpers

    @classmethod
    def empty(cls, units: int, in_features: int) -> LayerSolution:
        return cls(
            delta_weight=np.zeros((units, in_features)),
            delta_bias=np.zeros(units),
            objective=np.full(units, np.nan),
            status=np.full(units, FAILED, dtype=object),
            iterations=np.zeros(units, dtype=np.int64),
            solver_time_s=np.zeros(units),
        )

    def put(self, units: np.ndarray, part: LayerSolution) -> None:
        """Copy ``part``, the solution of ``units``, into place."""
        for name in ("delta_weight", "delta_bias", "objective", "status", "iterations", "solver_time_s"):
            getattr(self, name)[units] = getattr(part, name)
        self.resolves += part.resolves

    def status_counts(self) -> dict[str, int]:
        """How many units ended in each status, e.g. ``{"optimal": 750}``."""
        return dict(Counter(str(s) for s in self.status))


def solve_layer(
    H,
    W,
    b,
    *,
    weight_bound: float,
    bias_bound: float,
    margin: float,
    solver: str = "highs",
    n_jobs: int | None = None,
    time_limit_s: float | None = None,
    exact: bool = False,
    warm_start: bool = False,
    progress: bool = False,
    desc: str | None = None,
) -> LayerSolution:
    """Solve the LP (or, with ``exact``, the MIP) of every unit of one layer.

    Args:
        H: layer input on the batch, (n, d_in).
        W: weights, (k, d_in).
        b: biases, (k,).
        weight_bound: ``rho_w``, the most any weight may move (absolute).
        bias_bound: ``rho_b``, the most any bias may move (absolute).
        margin: ``m``, the pre-activation level to reach (absolute).
        solver: ``"highs"`` (fast path) or ``"cvxpy"`` (reference).
        n_jobs: processes for the ``"highs"`` path: this one and ``n_jobs - 1``
            helpers. ``None``: up to one per core, using the helpers that are
            up, or starting them only when the layer's LPs repay it (see
            ``lpinit.parallel``; ``start_helpers`` starts them ahead). The
            cvxpy path runs in this process.
        time_limit_s: per-unit limit; a unit that hits it keeps its weights.
        exact: solve the mixed-integer program instead (small layers only).
        warm_start: ``"highs"`` LP only: start each unit from the previous
            unit's optimal basis, units ordered so that neighbours have
            similar right-hand sides, instead of the crash start. Off by
            default: on the seed MLP it took 9.6 times the iterations and 5
            times the time (``experiments/bench_lp.py --warm-start-too``).
        progress: show a progress bar over units.
        desc: label of the progress bar.

    Returns:
        A ``LayerSolution``: ``W + delta_weight`` and ``b + delta_bias`` are
        the new parameters.

    Example:
        >>> import numpy as np
        >>> H = np.array([[1.0], [2.0]]); W = np.array([[0.0]]); b = np.zeros(1)
        >>> s = solve_layer(H, W, b, weight_bound=0.5, bias_bound=0.0, margin=1.0, n_jobs=1)
        >>> s.delta_weight, s.objective, s.status_counts()
        (array([[0.5]]), array([0.5]), {'optimal': 1})
    """
    start = time.perf_counter()
    H, W, b = _check_arrays(H, W, b)
    weight_bound = check_non_negative(weight_bound, "weight_bound")
    bias_bound = check_non_negative(bias_bound, "bias_bound")
    margin = check_finite(margin, "margin")
    check_choice(solver, SOLVERS, "solver")
    _check_n_jobs(n_jobs)
    if time_limit_s is not None:
        time_limit_s = check_non_negative(time_limit_s, "time_limit_s")
    if warm_start and (exact or solver != "highs"):
        raise ValueError(
            f"warm_start applies to the LP of the 'highs' solver only, got solver={solver!r}, "
            f"exact={exact!r}. Drop warm_start=True."
        )

    # numpy's BLAS on one thread: after each call its idle threads spin for a
    # while, on the cores that HiGHS and the helper processes need
    with threadpool_limits(limits=1), tqdm(total=W.shape[0], desc=desc, unit="unit", disable=not progress) as bar:
        R = margin - (H @ W.T + b)  # column j: unit j's right-hand side r
        if solver == "cvxpy":
            solution = _solve_cvxpy(H, R, weight_bound, bias_bound, exact=exact, time_limit_s=time_limit_s, bar=bar)
        else:
            solution = _solve_highs(
                Layer.from_input(H, weight_bound, bias_bound),
                R,
                n_jobs=n_jobs,
                exact=exact,
                warm_start=warm_start,
                time_limit_s=time_limit_s,
                bar=bar,
            )
    solution.wall_time_s = time.perf_counter() - start
    return solution


def start_helpers(n_jobs: int | None = None) -> None:
    """Start the helper processes of the ``"highs"`` path now, without waiting:
    ``n_jobs - 1`` of them (``None``: one per core, less this process). Later
    solves, ``n_jobs=None`` included, use them at once, instead of starting
    helpers only for large layers. They stop after 5 idle minutes.
    """
    _check_n_jobs(n_jobs)
    parallel.start_helpers((cpu_count() if n_jobs is None else n_jobs) - 1, preload=("lpinit.lp",))


# ---------------------------------------------------------------- the layer


@dataclass(frozen=True)
class Layer:
    """A layer's LP data, shared by its units, after dual fixing and the shift.

    The weights of sign-constant input columns and the bias are fixed (see the
    module docstring); ``offset`` is what they add to every pre-activation.
    The LP keeps the weights ``free``, whose columns ``H[:, free] = S + 1 c^T``.
    """

    free: np.ndarray  # (d_in,) bool: weights left to the LP
    fixed_delta: np.ndarray  # (d_in,) change of each fixed weight; 0 where free
    bias_delta: float  # the bias always rises by its bound
    offset: np.ndarray  # (n,) H @ fixed_delta + bias_delta
    S: sp.csr_matrix  # (n, free.sum()), sparse
    c: np.ndarray  # (free.sum(),) column shift; zeros when the shift does not pay
    row_norm1: np.ndarray  # (n,) |H_i[free]|_1, for the big-M of exact mode
    weight_bound: float
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # tells its cached workspace apart (_workspace)

    @classmethod
    def from_input(cls, H: np.ndarray, weight_bound: float, bias_bound: float) -> Layer:
        rises, falls = (H >= 0).all(axis=0), (H <= 0).all(axis=0)
        fixed_delta = weight_bound * (rises.astype(float) - falls)  # 0 for a column of zeros
        free = ~(rises | falls)
        S, c = split_constant(H[:, free])
        return cls(
            free=free,
            fixed_delta=fixed_delta,
            bias_delta=bias_bound,
            offset=H @ fixed_delta + bias_bound,
            S=S,
            c=c,
            row_norm1=np.abs(H[:, free]).sum(axis=1),
            weight_bound=weight_bound,
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(samples, weights left to the LP)."""
        return self.S.shape

    @property
    def shifted(self) -> bool:
        return bool(self.c.any())

    # The methods below take one unit (vectors) or several (one column per unit);
    # r is the unit's right-hand side, d the change of its free weights.

    def net(self, r: np.ndarray) -> np.ndarray:
        """``r`` less what the fixed variables add: the right-hand side of the LP left."""
        return r - (self.offset if r.ndim == 1 else self.offset[:, None])

    def shortfall(self, r: np.ndarray, d: np.ndarray) -> np.ndarray:
        """How far each pre-activation stays below the margin after the change."""
        return self.net(r) - self.S @ d - self.c @ d

    def dual_bound(self, r: np.ndarray, y: np.ndarray):
        """A lower bound on the LP optimum from any ``y`` in ``[0, 1]^n``: the
        dual function ``net(r).y - rho_w |H_free^T y|_1`` of the LP left after
        dual fixing, which has the same optimum."""
        y = np.clip(y, 0.0, 1.0)
        H_free_y = self.S.T @ y + np.multiply.outer(self.c, y.sum(axis=0))
        return (self.net(r) * y).sum(axis=0) - self.weight_bound * np.abs(H_free_y).sum(axis=0)

    def clip(self, d: np.ndarray) -> np.ndarray:
        """``d`` moved into the box (solvers may overshoot it by their tolerance)."""
        return np.clip(d, -self.weight_bound, self.weight_bound)

    def full_delta(self, d: np.ndarray) -> np.ndarray:
        """The change of all weights, given the change ``d`` (units x free) of the free ones."""
        delta = np.tile(self.fixed_delta, (d.shape[0], 1))
        delta[:, self.free] = d
        return delta


def split_constant(H: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Write ``H = S + 1 c^T`` with ``S`` as sparse as one shift per column allows.

    ``c[l]`` is the most common value of column l where it is more common than
    zero, else 0. The shift costs one extra variable ``t = c . d``: a nonzero
    per row for ``t`` and one row ``c . d - t = 0``; if it saves fewer
    nonzeros than that, ``c`` is all zeros and ``S = H``.
    """
    n, d_in = H.shape
    sorted_H = np.sort(H, axis=0)
    rows = np.arange(n)[:, None]
    run_starts = np.ones(sorted_H.shape, dtype=bool)
    run_starts[1:] = sorted_H[1:] != sorted_H[:-1]
    run_length = rows - np.maximum.accumulate(np.where(run_starts, rows, 0), axis=0) + 1
    mode = sorted_H[run_length.argmax(axis=0), np.arange(d_in)]
    saved = run_length.max(axis=0) - (H == 0).sum(axis=0)
    c = np.where(saved > 0, mode, 0.0)
    if saved[c != 0].sum() <= n + np.count_nonzero(c) + 1:
        c = np.zeros(d_in)
    return _csr(H - c), c


def _csr(X: np.ndarray) -> sp.csr_matrix:
    """``X`` as a CSR matrix, built directly (scipy's own conversion of a dense
    array takes several times as long)."""
    nonzero = X != 0
    indptr = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))])
    return sp.csr_matrix((X[nonzero], np.nonzero(nonzero)[1], indptr), shape=X.shape)


# ---------------------------------------------------------------- fast path


def _solve_highs(layer, R, *, n_jobs, exact, warm_start, time_limit_s, bar) -> LayerSolution:
    """Solve all units with highspy, in chunks shared by this process and
    ``n_jobs - 1`` helper processes (see ``lpinit.parallel``); ``n_jobs=None``:
    as many as there are cores, if starting them pays."""
    units = R.shape[1]
    if not layer.free.any():  # dual fixing fixed everything: nothing left to solve
        bar.update(units)
        return _closed_form(layer, R, exact)
    order = _similarity_order(R) if warm_start else np.arange(units)  # warm starts: neighbours together
    if exact:
        solve_chunk = partial(_solve_mip_chunk, time_limit_s=time_limit_s)
    else:
        solve_chunk = partial(_solve_lp_chunk, warm_start=warm_start, time_limit_s=time_limit_s)
    solution = LayerSolution.empty(units, len(layer.free))
    most = min(cpu_count() if n_jobs is None else n_jobs, units // MIN_UNITS_PER_WORKER)
    parts, helpers = parallel.map_chunks(
        solve_chunk,
        (layer, R),
        order,
        max(0, most - 1),
        start_helpers="auto" if n_jobs is None else "always",
        tick=bar.update,
        helper_setup=_one_highs_thread,
    )
    for chunk, part in parts:
        solution.put(chunk, part)
    solution.workers = 1 + helpers
    return solution


def _closed_form(layer, R, exact) -> LayerSolution:
    """Every unit's optimum when dual fixing leaves no weight free."""
    units = R.shape[1]
    solution = LayerSolution.empty(units, len(layer.free))
    shortfall = layer.net(R)
    solution.objective[:] = _count_short(shortfall, R) if exact else np.maximum(shortfall, 0.0).sum(axis=0)
    solution.delta_weight[:] = layer.fixed_delta
    solution.delta_bias[:] = layer.bias_delta
    solution.status[:] = OPTIMAL
    return solution


def _one_highs_thread() -> None:
    """Run HiGHS on one thread in a helper process.

    HiGHS refuses a thread count other than the one its process-wide scheduler
    was first started with, and a reused helper may have run HiGHS with the
    default count before (an in-process solve, the cvxpy path). A helper runs
    one chunk at a time on its main thread, so it can restart the scheduler.
    """
    highspy.Highs.resetGlobalScheduler(True)


def _solve_lp_chunk(layer_and_R, chunk, *, threads, warm_start, time_limit_s, tick=None) -> LayerSolution:
    """Solve the LPs of the units ``chunk`` (right-hand sides: those columns of
    ``R``), in order, on this thread's HiGHS instance for the layer; check
    every answer at the end. ``tick(1)`` after each unit."""
    layer, R = layer_and_R
    R = R[:, chunk]
    n, free = layer.shape
    units = R.shape[1]
    net_R = layer.net(R)
    highs, crash, dense = _workspace(layer, threads)
    rows, upper = np.arange(n, dtype=np.int32), np.full(n, highspy.kHighsInf)
    solution = LayerSolution.empty(units, len(layer.free))
    D, Y = np.zeros((free, units)), np.zeros((n, units))  # free weights' changes and row duals
    if not warm_start:
        D[:] = crash.points(net_R)
        # a start that meets every margin is optimal as it is (objective 0)
        met = np.flatnonzero((dense.shortfall(R, D) <= 0).all(axis=0))
        _accept(layer, met, D[:, met], np.zeros(len(met)), solution)
    solved = np.zeros(units, dtype=bool)  # by HiGHS, to be checked
    for k in range(units):
        if solution.status[k] != OPTIMAL:
            basis = None if warm_start else crash.basis(D[:, k])
            began = time.perf_counter()  # solver time: the unit's HiGHS calls, from its bounds to its answer
            highs.changeRowsBounds(n, rows, net_R[:, k], upper)
            if basis is not None:
                highs.clearSolver()
                highs.setBasis(basis)
            solution.status[k], solution.iterations[k] = _run(highs, time_limit_s)
            if solution.status[k] == OPTIMAL:
                # an objective of 0 needs no dual to be proven optimal (see _keep_proven)
                values, duals = _answer(highs, with_dual=highs.getInfo().objective_function_value > 0)
            solution.solver_time_s[k] = time.perf_counter() - began
            if solution.status[k] == OPTIMAL:
                D[:, k], Y[:, k] = values[:free], duals[:n] if duals else 0.0
                solved[k] = True
        if tick is not None:
            tick(1)

    for k in _keep_proven(dense, R, D, Y, np.flatnonzero(solved), solution):
        # HiGHS's "optimum" fails the duality check: solve again from scratch, by another route.
        began = time.perf_counter()
        highs.changeRowsBounds(n, rows, net_R[:, k], upper)
        highs.clearSolver()
        highs.setOptionValue("presolve", "on")
        solution.status[k], iterations = _run(highs, time_limit_s)
        highs.setOptionValue("presolve", "off")
        solution.iterations[k] += iterations
        solution.solver_time_s[k] += time.perf_counter() - began
        solution.resolves += 1
        if solution.status[k] == OPTIMAL:
            values, duals = _answer(highs)
            D[:, k], Y[:, k] = values[:free], duals[:n]
            _keep_proven(dense, R, D, Y, np.array([k]), solution)
    return solution


class _CrashStart:
    """Where dual simplex starts each unit: every free weight at the bound that
    raises the rows still below the margin (in sum), every row's slack basic.

    Any such choice of bounds is dual feasible, since the weights cost nothing.
    On the seed MLP's first layer (batch 256) a unit that needs HiGHS takes 57
    iterations from here, against 317 from the previous unit's basis.
    """

    def __init__(self, layer: Layer):
        n, _ = layer.shape
        status = highspy.HighsBasisStatus
        self.layer = layer
        self.S_transposed = layer.S.T
        self.at_bound = np.array([status.kLower, status.kUpper], dtype=object)
        # s at 0; t (if shifted) basic, with the equation row's slack at its bound 0
        self.other_columns = [status.kLower] * n + ([status.kBasic] if layer.shifted else [])
        self.rows = [status.kBasic] * n + ([status.kLower] if layer.shifted else [])
        self._basis = highspy.HighsBasis()  # reused: only the weights' statuses change
        self._basis.row_status = self.rows
        self._basis.valid = True

    def points(self, net_R: np.ndarray) -> np.ndarray:
        """The free weights' changes to start from, one column per unit."""
        below = (net_R > 0).astype(float)
        raises = self.S_transposed @ below + np.outer(self.layer.c, below.sum(axis=0)) > 0
        return np.where(raises, self.layer.weight_bound, -self.layer.weight_bound)

    def basis(self, d: np.ndarray) -> highspy.HighsBasis:
        """The start for a unit whose start point is ``d`` (HiGHS copies it)."""
        self._basis.col_status = self.at_bound[(d > 0).astype(np.intp)].tolist() + self.other_columns
        return self._basis


def _answer(highs: highspy.Highs, with_dual: bool = True) -> tuple[list, list | None]:
    """HiGHS's solution as highspy hands it over: every column's value and,
    if ``with_dual``, every row's dual (the free weights come first, then the
    sample rows)."""
    solution = highs.getSolution()
    return solution.col_value, solution.row_dual if with_dual else None


def _keep_proven(layer, R, D, Y, units, solution) -> np.ndarray:
    """Write into ``solution`` the answers of ``units`` that a duality bound
    proves optimal; mark the others FAILED and return them."""
    d = layer.clip(D[:, units])
    objective = np.maximum(layer.shortfall(R[:, units], d), 0.0).sum(axis=0)
    proven = objective == 0.0  # no objective is below 0: nothing to check
    check = np.flatnonzero(~proven)
    gap = objective[check] - layer.dual_bound(R[:, units[check]], Y[:, units[check]])
    scale = 1.0 + np.maximum(R[:, units[check]], 0.0).sum(axis=0)  # the objective at d = 0, e = 0
    proven[check] = gap <= GAP_TOLERANCE * scale
    _accept(layer, units[proven], d[:, proven], objective[proven], solution)
    solution.status[units[~proven]] = FAILED
    return units[~proven]


def _accept(layer, units, d, objective, solution) -> None:
    """Write into ``solution`` the optimal answers of ``units``: the free
    weights' changes ``d`` (one column per unit) and their objectives."""
    solution.delta_weight[units] = layer.full_delta(d.T)
    solution.delta_bias[units] = layer.bias_delta
    solution.objective[units] = objective
    solution.status[units] = OPTIMAL


def _solve_mip_chunk(layer_and_R, chunk, *, threads, time_limit_s, tick=None) -> LayerSolution:
    """Solve the MIPs of the units ``chunk``, each on a fresh HiGHS instance
    (the big-M coefficients change the matrix). ``tick(1)`` after each unit."""
    layer, R = layer_and_R
    R = R[:, chunk]
    _n, free = layer.shape
    solution = LayerSolution.empty(R.shape[1], len(layer.free))
    for k in range(R.shape[1]):
        r = layer.net(R[:, k])
        big_m = np.maximum(0.0, r + layer.weight_bound * layer.row_norm1)
        highs = _new_highs(layer, _constraint_matrix(layer, big_m), r, threads, "choose", binary=True)
        highs.setOptionValue("mip_rel_gap", 0.0)
        began = time.perf_counter()
        status, _ = _run(highs, time_limit_s)
        solution.solver_time_s[k] = time.perf_counter() - began
        solution.iterations[k] = max(0, highs.getInfo().mip_node_count)
        if status == OPTIMAL:
            d = layer.clip(np.asarray(highs.getSolution().col_value)[:free])
            count = _count_short(layer.shortfall(R[:, k], d), R[:, k])
            if count == round(highs.getInfo().objective_function_value):
                solution.delta_weight[k] = layer.full_delta(d[None, :])[0]
                solution.delta_bias[k] = layer.bias_delta
                solution.objective[k] = count
            else:  # the point contradicts its own count
                status = FAILED
        solution.status[k] = status
        if tick is not None:
            tick(1)
    return solution


def _count_short(shortfall: np.ndarray, r: np.ndarray) -> int:
    """Rows below the margin, up to the MIP's feasibility tolerance."""
    return int((shortfall > VIOLATION_TOLERANCE * (1.0 + np.abs(r))).sum())


def _constraint_matrix(layer: Layer, slack_coef: np.ndarray) -> sp.csc_matrix:
    """The matrix of the LP (or MIP) left after dual fixing, in HiGHS's form.

    Columns ``[d (free weights), slack (n), t (if shifted)]``, rows
    ``[samples (n), c . d - t = 0 (if shifted)]``: sample row i reads
    ``S_i d + slack_coef_i * slack_i (+ t)``.
    """
    n, _ = layer.shape
    blocks = [[layer.S, sp.diags(slack_coef)]]
    if layer.shifted:
        blocks[0].append(np.ones((n, 1)))
        blocks.append([sp.csr_matrix(layer.c), None, -np.ones((1, 1))])
    A = sp.bmat(blocks, format="csc")
    A.eliminate_zeros()
    return A


def _new_highs(layer: Layer, A: sp.csc_matrix, r: np.ndarray, threads: int, presolve: str, binary: bool = False):
    """A silent HiGHS instance holding the LP (or MIP) with matrix ``A`` (see
    ``_constraint_matrix``): sample row i is ``>= r_i``, with ``r`` net of the
    fixed variables. The slack is ``s`` (cost 1, in ``[0, inf)``) or, with
    ``binary``, ``z`` (cost 1, in {0, 1})."""
    n, free = layer.shape
    inf = highspy.kHighsInf
    cost = np.zeros(A.shape[1])
    cost[free : free + n] = 1.0
    col_lower = np.concatenate([np.full(free, -layer.weight_bound), np.zeros(n), [-inf] * layer.shifted])
    col_upper = np.concatenate(
        [np.full(free, layer.weight_bound), np.full(n, 1.0 if binary else inf), [inf] * layer.shifted]
    )
    row_lower = np.concatenate([r, [0.0] * layer.shifted])
    row_upper = np.concatenate([np.full(n, inf), [0.0] * layer.shifted])
    integrality = np.full(A.shape[1], int(highspy.HighsVarType.kContinuous), dtype=np.int32)
    if binary:
        integrality[free : free + n] = int(highspy.HighsVarType.kInteger)

    _swallow_highs_banner()
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("threads", threads)
    highs.setOptionValue("presolve", presolve)
    # the overload that takes numpy arrays as they are (a HighsLp converts them element by element)
    status = highs.passModel(
        A.shape[1],
        A.shape[0],
        A.nnz,
        int(highspy.MatrixFormat.kColwise),
        int(highspy.ObjSense.kMinimize),
        0.0,
        cost,
        col_lower,
        col_upper,
        row_lower,
        row_upper,
        A.indptr.astype(np.int32),
        A.indices.astype(np.int32),
        A.data,
        integrality,
    )
    if status != highspy.HighsStatus.kOk:
        raise RuntimeError(f"HiGHS refused the layer's LP (status {status}); this is a bug in lpinit.")
    return highs


_workspaces = threading.local()


def _workspace(layer: Layer, threads: int) -> tuple[highspy.Highs, _CrashStart, Layer]:
    """What this thread keeps of ``layer`` for its next chunk: a HiGHS instance
    holding the LP (building it takes as long as solving a few units), the
    crash start, and the layer with ``S`` dense, for the checks of whole
    chunks (dense products beat sparse ones at MNIST's ~25% density)."""
    key = (layer.token, threads)
    cached = getattr(_workspaces, "last", None)
    if cached is None or cached[0] != key:
        n, _ = layer.shape
        highs = _new_highs(layer, _constraint_matrix(layer, np.ones(n)), np.zeros(n), threads, "off")
        dense = replace(layer, S=layer.S.toarray())
        cached = _workspaces.last = (key, highs, _CrashStart(dense), dense)
    _, highs, crash, dense = cached
    highs.setOptionValue("presolve", "off")  # a presolved LP has no basis to start from
    return highs, crash, dense


_banner_lock = threading.Lock()
_banner_swallowed = False


def _swallow_highs_banner() -> None:
    """HiGHS prints a banner to stdout when a process creates its first
    instance, before any option can silence it; create that first instance
    with stdout pointed at /dev/null, so that solving prints nothing."""
    global _banner_swallowed
    with _banner_lock:
        if _banner_swallowed:
            return
        sys.stdout.flush()
        try:
            saved = os.dup(1)
        except OSError:  # no stdout to protect
            saved = None
        try:
            if saved is not None:
                with open(os.devnull, "w") as devnull:
                    os.dup2(devnull.fileno(), 1)
            highspy.Highs()
        finally:
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)
            _banner_swallowed = True


def _run(highs: highspy.Highs, time_limit_s: float | None) -> tuple[str, int]:
    """Run HiGHS; return the unit status and the simplex iterations."""
    # HiGHS's time_limit counts the instance's total run time over all runs.
    limit = highspy.kHighsInf if time_limit_s is None else highs.getRunTime() + time_limit_s
    highs.setOptionValue("time_limit", limit)
    highs.run()
    status = status_group(highs.getModelStatus(), HIGHS_STATUS_GROUPS)
    return status, max(0, highs.getInfo().simplex_iteration_count)


def _similarity_order(R: np.ndarray) -> np.ndarray:
    """Units sorted by the projection of their right-hand sides on the first
    principal direction, so that neighbours have similar ``r``."""
    centered = R.T - R.T.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return np.argsort(centered @ vt[0], kind="stable")


# ---------------------------------------------------------------- reference


def _solve_cvxpy(H, R, weight_bound, bias_bound, *, exact, time_limit_s, bar) -> LayerSolution:
    """Solve all units with cvxpy + HiGHS: the LP as written, compiled once (DPP)."""
    import cvxpy as cp

    _swallow_highs_banner()
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
            d_j = np.clip(d.value, -weight_bound, weight_bound)
            e_j = float(np.clip(e.value, -bias_bound, bias_bound))
            shortfall = R[:, j] - H @ d_j - e_j
            solution.delta_weight[j], solution.delta_bias[j] = d_j, e_j
            solution.objective[j] = _count_short(shortfall, R[:, j]) if exact else np.maximum(shortfall, 0.0).sum()
        bar.update(1)
    return solution


# ---------------------------------------------------------------- input checks


def _check_arrays(H, W, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    H = _as_float_array(H, "H", ndim=2, shape_hint="(n_samples, in_features)")
    W = _as_float_array(W, "W", ndim=2, shape_hint="(out_features, in_features)")
    b = _as_float_array(b, "b", ndim=1, shape_hint="(out_features,)")
    if W.shape[1] != H.shape[1]:
        raise ValueError(
            f"Expected W with H's {H.shape[1]} input features (W: (out_features, in_features)), "
            f"got W of shape {W.shape}. Pass the layer's weight and the input it receives."
        )
    if b.shape[0] != W.shape[0]:
        raise ValueError(
            f"Expected b with one entry per row of W ({W.shape[0]}), got b of shape {b.shape}. "
            "Pass the layer's bias (zeros if it has none)."
        )
    return H, W, b


def _as_float_array(x, name: str, ndim: int, shape_hint: str) -> np.ndarray:
    try:
        array = np.asarray(x)
    except (TypeError, ValueError, RuntimeError) as err:  # e.g. a CUDA tensor, a ragged list
        raise TypeError(
            f"Expected {name} to be a numeric array, got a {type(x).__name__} that numpy cannot "
            f"read ({err}). Convert it, e.g. tensor.detach().cpu().numpy()."
        ) from err
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"Expected {name} to be a real numeric array, got dtype {array.dtype} "
            f"({type(x).__name__}). Convert it, e.g. tensor.detach().cpu().numpy()."
        )
    if array.ndim != ndim or 0 in array.shape:
        hint = "Reshape it with .reshape(1, -1) for a single sample." if array.ndim == 1 and ndim == 2 else ""
        raise ValueError(f"Expected {name} of shape {shape_hint}, non-empty, got shape {array.shape}. {hint}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(
            f"Expected finite values in {name}, got {int((~np.isfinite(array)).sum())} NaN or inf "
            "entries. Remove or impute them first."
        )
    return array


def _check_n_jobs(n_jobs) -> None:
    if n_jobs is None:
        return
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)):
        raise TypeError(f"Expected n_jobs to be a positive int or None (all cores), got {n_jobs!r}.")
    if n_jobs < 1:
        raise ValueError(
            f"Expected n_jobs >= 1 or None (all cores), got {n_jobs}. Pass n_jobs=1 to solve in this process."
        )
