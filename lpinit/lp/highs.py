"""The fast path: the per-unit LPs (and MIPs) of ``lpinit.lp.problem``,
solved with highspy on the reduced LP.

On top of the reduction (dual fixing and the shift):

1. *Built once.* The LP is built once per layer and process; per unit only
   the row bounds change.
2. *Crash start.* Dual simplex starts each unit from every weight at the
   bound that raises the unit's short rows; a unit whose start already meets
   every margin is done without HiGHS.
3. *Checks.* Every answer is checked against a duality bound and solved again
   from scratch if it fails, since HiGHS has returned wrong optima from warm
   starts (ERGO-Code/HiGHS#3194, #3294).
4. *Worker processes.* Chunks of units are shared by this process and up to
   ``n_jobs - 1`` worker processes (``lpinit.parallel``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import highspy
import numpy as np
import scipy.sparse as sp
from joblib import cpu_count

from lpinit import parallel
from lpinit.lp.problem import (
    FAILED,
    GAP_TOLERANCE,
    OPTIMAL,
    TIME_LIMIT,
    LayerSolution,
    ReducedLP,
    count_short,
    status_group,
)
from lpinit.validation import SolverError

HIGHS_STATUS_GROUPS = {
    highspy.HighsModelStatus.kOptimal: OPTIMAL,
    highspy.HighsModelStatus.kTimeLimit: TIME_LIMIT,
    highspy.HighsModelStatus.kIterationLimit: TIME_LIMIT,
}
"""HiGHS model status -> unit status; every status not listed is ``FAILED``."""

MIN_UNITS_PER_PROCESS = 32
"""Fewer units than this per process do not repay feeding it."""

Tick = Callable[[int], object]


@dataclass(frozen=True)
class LayerLPs:
    """The LPs of one layer's units, as a worker process receives them: the
    reduced LP they share and each unit's right-hand side (one column per unit)."""

    reduced: ReducedLP
    rhs: np.ndarray  # (n, k): r = m - (H w_j + b_j)


def solve_highs(
    lps: LayerLPs,
    *,
    n_jobs: int | None,
    exact: bool,
    warm_start: bool,
    time_limit_s: float | None,
    tick: Tick,
) -> LayerSolution:
    """Solve all units with highspy, in chunks shared by this process and
    ``n_jobs - 1`` worker processes (``n_jobs=None``: as many as there are
    cores, if starting them pays; see ``lpinit.parallel``)."""
    reduced, R = lps.reduced, lps.rhs
    units = R.shape[1]
    if not reduced.free.any():  # dual fixing fixed everything: nothing left to solve
        tick(units)
        return reduced.closed_form(R, exact)
    order = _similarity_order(R) if warm_start else np.arange(units)  # warm starts: neighbours together
    solve_chunk: parallel.SolveChunk
    if exact:
        solve_chunk = partial(_solve_mip_chunk, time_limit_s=time_limit_s)
    else:
        solve_chunk = partial(_solve_lp_chunk, warm_start=warm_start, time_limit_s=time_limit_s)
    solution = LayerSolution.empty(units, len(reduced.free))
    most = min(cpu_count() if n_jobs is None else n_jobs, units // MIN_UNITS_PER_PROCESS)
    parts, workers = parallel.map_chunks(
        solve_chunk,
        lps,
        order,
        max(0, most - 1),
        start="auto" if n_jobs is None else "always",
        tick=tick,
        worker_setup=_one_highs_thread,
    )
    for chunk, part in parts:
        solution.put(chunk, part)
    solution.processes = 1 + workers
    return solution


def _one_highs_thread() -> None:
    """Run HiGHS on one thread in a worker process.

    HiGHS refuses a thread count other than the one its process-wide scheduler
    was first started with, and a reused worker may have run HiGHS with the
    default count before (an in-process solve, the cvxpy path). A worker runs
    one chunk at a time on its main thread, so it can restart the scheduler.
    """
    highspy.Highs.resetGlobalScheduler(True)


def _solve_lp_chunk(
    lps: LayerLPs,
    chunk: np.ndarray,
    *,
    threads: int,
    warm_start: bool,
    time_limit_s: float | None,
    tick: Tick | None = None,
) -> LayerSolution:
    """Solve the LPs of the units ``chunk``, in order, on this thread's HiGHS
    instance for the layer; check every answer at the end. ``tick(1)`` after
    each unit."""
    R = lps.rhs[:, chunk]
    n, free = lps.reduced.shape
    units = R.shape[1]
    rhs_left = lps.reduced.rhs_left(R)
    highs, crash, dense = _workspace(lps.reduced, threads)
    rows, upper = np.arange(n, dtype=np.int32), np.full(n, highspy.kHighsInf)
    solution = LayerSolution.empty(units, len(dense.free))
    D, Y = np.zeros((free, units)), np.zeros((n, units))  # free weights' changes and row duals
    if not warm_start:
        D[:] = crash.points(rhs_left)
        # a start that meets every margin is optimal as it is (objective 0)
        met = np.flatnonzero((dense.shortfall(R, D) <= 0).all(axis=0))
        _accept(dense, met, D[:, met], np.zeros(len(met)), solution)
    solved = np.zeros(units, dtype=bool)  # by HiGHS, to be checked
    for k in range(units):
        if solution.status[k] != OPTIMAL:
            basis = None if warm_start else crash.basis(D[:, k])
            began = time.perf_counter()  # solver time: the unit's HiGHS calls, from its bounds to its answer
            highs.changeRowsBounds(n, rows, rhs_left[:, k], upper)  # type: ignore[attr-defined]
            if basis is not None:
                highs.clearSolver()
                highs.setBasis(basis)
            solution.status[k], solution.iterations[k] = _run(highs, time_limit_s)
            if solution.status[k] == OPTIMAL:
                # an objective of 0 needs no dual to be proven optimal (see _proven)
                values, duals = _answer(highs, with_dual=highs.getInfo().objective_function_value > 0)
            solution.solver_time_s[k] = time.perf_counter() - began
            if solution.status[k] == OPTIMAL:
                D[:, k], Y[:, k] = values[:free], duals[:n] if duals else 0.0
                solved[k] = True
        if tick is not None:
            tick(1)

    for k in _accept_proven(dense, R, D, Y, np.flatnonzero(solved), solution):
        # HiGHS's "optimum" fails the duality check: solve again from scratch, by another route.
        began = time.perf_counter()
        highs.changeRowsBounds(n, rows, rhs_left[:, k], upper)  # type: ignore[attr-defined]
        highs.clearSolver()
        highs.setOptionValue("presolve", "on")
        solution.status[k], iterations = _run(highs, time_limit_s)
        highs.setOptionValue("presolve", "off")
        solution.iterations[k] += iterations
        solution.solver_time_s[k] += time.perf_counter() - began
        solution.resolves += 1
        if solution.status[k] == OPTIMAL:
            values, duals = _answer(highs)
            D[:, k], Y[:, k] = values[:free], duals[:n] if duals else 0.0
            _accept_proven(dense, R, D, Y, np.array([k]), solution)
    return solution


class _CrashStart:
    """Where dual simplex starts each unit: every free weight at the bound that
    raises the rows still below the margin (in sum), every row's slack basic.

    Any such choice of bounds is dual feasible, since the weights cost nothing.
    """

    def __init__(self, reduced: ReducedLP):
        n, _ = reduced.shape
        status = highspy.HighsBasisStatus
        self.reduced = reduced
        self.S_transposed = reduced.S.T
        self.at_bound = np.array([status.kLower, status.kUpper], dtype=object)
        # s at 0; t (if shifted) basic, with the equation row's slack at its bound 0
        self.other_columns = [status.kLower] * n + ([status.kBasic] if reduced.shifted else [])
        self.rows = [status.kBasic] * n + ([status.kLower] if reduced.shifted else [])
        self._basis = highspy.HighsBasis()  # reused: only the weights' statuses change
        self._basis.row_status = self.rows
        self._basis.valid = True

    def points(self, rhs_left: np.ndarray) -> np.ndarray:
        """The free weights' changes to start from, one column per unit."""
        below = (rhs_left > 0).astype(float)
        raises = self.S_transposed @ below + np.outer(self.reduced.c, below.sum(axis=0)) > 0
        return np.where(raises, self.reduced.weight_bound, -self.reduced.weight_bound)

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


def _accept_proven(
    reduced: ReducedLP, R: np.ndarray, D: np.ndarray, Y: np.ndarray, units: np.ndarray, solution: LayerSolution
) -> np.ndarray:
    """Accept into ``solution`` the answers (columns ``D``, duals ``Y``) of
    ``units`` that a duality bound proves optimal; mark the others FAILED.
    Returns the units left unproven."""
    d = reduced.clip(D[:, units])
    objective = np.maximum(reduced.shortfall(R[:, units], d), 0.0).sum(axis=0)
    proven = objective == 0.0  # no objective is below 0: nothing to check
    check = np.flatnonzero(~proven)
    gap = objective[check] - reduced.dual_bound(R[:, units[check]], Y[:, units[check]])
    scale = 1.0 + np.maximum(R[:, units[check]], 0.0).sum(axis=0)  # the objective at d = 0, e = 0
    proven[check] = gap <= GAP_TOLERANCE * scale
    _accept(reduced, units[proven], d[:, proven], objective[proven], solution)
    solution.status[units[~proven]] = FAILED
    return units[~proven]


def _accept(
    reduced: ReducedLP, units: np.ndarray, d: np.ndarray, objective: np.ndarray, solution: LayerSolution
) -> None:
    """Write into ``solution`` the optimal answers of ``units``: the free
    weights' changes ``d`` (one column per unit) and their objectives."""
    solution.delta_weight[units] = reduced.full_delta(d.T)
    solution.delta_bias[units] = reduced.bias_delta
    solution.objective[units] = objective
    solution.status[units] = OPTIMAL


def _solve_mip_chunk(
    lps: LayerLPs, chunk: np.ndarray, *, threads: int, time_limit_s: float | None, tick: Tick | None = None
) -> LayerSolution:
    """Solve the MIPs of the units ``chunk``, each on a fresh HiGHS instance
    (the big-M coefficients change the matrix). ``tick(1)`` after each unit."""
    reduced = lps.reduced
    R = lps.rhs[:, chunk]
    _, free = reduced.shape
    solution = LayerSolution.empty(R.shape[1], len(reduced.free))
    for k in range(R.shape[1]):
        r = reduced.rhs_left(R[:, k])
        big_m = np.maximum(0.0, r + reduced.weight_bound * reduced.row_norm1)
        highs = _new_highs(reduced, _constraint_matrix(reduced, big_m), r, threads, "choose", binary=True)
        highs.setOptionValue("mip_rel_gap", 0.0)
        began = time.perf_counter()
        status, _ = _run(highs, time_limit_s)
        solution.solver_time_s[k] = time.perf_counter() - began
        solution.iterations[k] = max(0, highs.getInfo().mip_node_count)
        if status == OPTIMAL:
            d = reduced.clip(np.asarray(highs.getSolution().col_value)[:free])
            count = count_short(reduced.shortfall(R[:, k], d), R[:, k])
            if count == round(highs.getInfo().objective_function_value):
                solution.delta_weight[k] = reduced.full_delta(d[None, :])[0]
                solution.delta_bias[k] = reduced.bias_delta
                solution.objective[k] = count
            else:  # the point contradicts its own count
                status = FAILED
        solution.status[k] = status
        if tick is not None:
            tick(1)
    return solution


def _constraint_matrix(reduced: ReducedLP, slack_coef: np.ndarray) -> sp.csc_matrix:
    """The matrix of the LP (or MIP) left after dual fixing, in HiGHS's form.

    Columns ``[d (free weights), slack (n), t (if shifted)]``, rows
    ``[samples (n), c . d - t = 0 (if shifted)]``: sample row i reads
    ``S_i d + slack_coef_i * slack_i (+ t)``.
    """
    n, _ = reduced.shape
    blocks: list[list] = [[reduced.S, sp.diags(slack_coef)]]
    if reduced.shifted:
        blocks[0].append(np.ones((n, 1)))
        blocks.append([sp.csr_matrix(reduced.c), None, -np.ones((1, 1))])
    A = sp.bmat(blocks, format="csc")
    A.eliminate_zeros()
    return A


def _new_highs(
    reduced: ReducedLP, A: sp.csc_matrix, r: np.ndarray, threads: int, presolve: str, binary: bool = False
) -> highspy.Highs:
    """A silent HiGHS instance holding the LP (or MIP) with matrix ``A`` (see
    ``_constraint_matrix``): sample row i is ``>= r_i``, with ``r`` net of the
    fixed variables. The slack is ``s`` (cost 1, in ``[0, inf)``) or, with
    ``binary``, ``z`` (cost 1, in {0, 1})."""
    n, free = reduced.shape
    inf = highspy.kHighsInf
    shifted = int(reduced.shifted)
    cost = np.zeros(A.shape[1])
    cost[free : free + n] = 1.0
    col_lower = np.concatenate([np.full(free, -reduced.weight_bound), np.zeros(n), [-inf] * shifted])
    col_upper = np.concatenate(
        [np.full(free, reduced.weight_bound), np.full(n, 1.0 if binary else inf), [inf] * shifted]
    )
    row_lower = np.concatenate([r, [0.0] * shifted])
    row_upper = np.concatenate([np.full(n, inf), [0.0] * shifted])
    integrality = np.full(A.shape[1], int(highspy.HighsVarType.kContinuous), dtype=np.int32)
    if binary:
        integrality[free : free + n] = int(highspy.HighsVarType.kInteger)

    swallow_highs_banner()
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
        raise SolverError(
            f"HiGHS refused a layer's LP ({A.shape[0]} rows, {A.shape[1]} columns; status {status}). "
            "Check that the batch and the weights are of a sane scale (e.g. |x| < 1e6)."
        )
    return highs


_workspaces = threading.local()


def _workspace(reduced: ReducedLP, threads: int) -> tuple[highspy.Highs, _CrashStart, ReducedLP]:
    """What this thread keeps of ``reduced`` for its next chunk: a HiGHS
    instance holding the LP (building it takes as long as solving a few
    units), the crash start, and the reduced LP with ``S`` dense, for the
    checks of whole chunks (dense products beat sparse ones at MNIST's ~25%
    density)."""
    key = (reduced.token, threads)
    cached = getattr(_workspaces, "last", None)
    if cached is None or cached[0] != key:
        n, _ = reduced.shape
        highs = _new_highs(reduced, _constraint_matrix(reduced, np.ones(n)), np.zeros(n), threads, "off")
        dense = replace(reduced, S=sp.csr_matrix(reduced.S).toarray())
        cached = _workspaces.last = (key, highs, _CrashStart(dense), dense)
    _, highs, crash, dense = cached
    highs.setOptionValue("presolve", "off")  # a presolved LP has no basis to start from
    return highs, crash, dense


_banner_lock = threading.Lock()
_banner_swallowed = False


def swallow_highs_banner() -> None:
    """HiGHS prints a banner to stdout when a process creates its first
    instance, before any option can silence it (ERGO-Code/HiGHS#1702, #2749;
    cvxpy/cvxpy#2714): create that first instance with stdout pointed at
    /dev/null, so that solving prints nothing."""
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
