"""The fast path: the per-unit LPs (and MIPs) of ``lpinit.lp.problem``,
solved with highspy on the reduced LP.

On top of the reduction (dual fixing and the shift):

1. *Built once.* The LP is built once per layer and process; per unit only
   the row bounds change. The general form (anchor, ``l1``, targets) is
   built as its dual on tall layers (more samples than weights, such as a
   Conv2d's), where the dual's basis, a row per weight, is the smaller one
   (``_DualModel``); per unit only its costs and bounds change. Target LPs
   without the anchor are the exception: each unit's LP is built on a
   working set of its rows, and rows are added until none left out misses
   its side (``_WorkingRowsModel``).
2. *Crash start.* Dual simplex starts each unit from every weight at the
   bound that raises the unit's short rows, with those rows' shortfalls
   basic (``_CrashStart``); a unit whose start already meets every margin is
   done without HiGHS.
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
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
    Formulation,
    LayerSolution,
    ReducedLP,
    count_short,
    split_constant,
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
MIN_GENERAL_UNITS_PER_PROCESS = 8
"""The same for the general form, whose every unit is a HiGHS run of several
milliseconds, or of a tenth of a second on a conv layer (README, benchmarks:
the seed MLP's fc3, 50 units, 0.44 s in one process and 0.27 s in two; the
CNN's conv2, 16 units, with the worker up)."""

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
    short = np.zeros((n, units), dtype=bool)  # rows the crash start takes as short
    if not warm_start:
        D[:], short[:] = crash.points(rhs_left)
        # a start that meets every margin is optimal as it is (objective 0)
        met = np.flatnonzero((dense.shortfall(R, D) <= 0).all(axis=0))
        _accept(dense, met, D[:, met], np.zeros(len(met)), solution)
    solved = np.zeros(units, dtype=bool)  # by HiGHS, to be checked
    for k in range(units):
        if solution.status[k] != OPTIMAL:
            basis = None if warm_start else crash.basis(D[:, k], short[:, k])
            began = time.perf_counter()  # solver time: the unit's HiGHS calls, from its bounds to its answer
            highs.changeRowsBounds(n, rows, rhs_left[:, k], upper)  # type: ignore[attr-defined]
            if basis is not None:
                highs.clearSolver()
                highs.setBasis(basis)
            solution.status[k], solution.iterations[k] = _run(highs, time_limit_s, iteration_cap(n))
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
    """Where dual simplex starts each unit: a set of rows taken to fall short
    of the margin (multiplier ``y_i = 1``: their shortfall ``s_i`` basic, the
    row at its bound), every free weight at the bound that raises those rows
    in sum (``sign(H^T y)``), the other rows basic (``y_i = 0``).

    Any such start is dual feasible, since the weights cost nothing; its
    primal infeasibilities are the rows whose side at that point differs from
    the set, and dual simplex needs about one iteration for each. The set is
    the rows short at ``d = 0``, or at the point that set gives, and so on for
    ``ROUNDS`` rounds: per unit, the round with the fewest such rows wins
    (on tall layers, such as a Conv2d's, the first round alone leaves
    thousands).
    """

    ROUNDS = 2

    def __init__(self, reduced: ReducedLP):
        self.reduced = reduced
        self.S_transposed = reduced.S.T
        # per column and row, the statuses when the row is short (code 1) or not (code 0)
        self.weight_status = np.array([_LOWER, _UPPER], dtype=np.intp)
        self.shortfall_status = np.array([_LOWER, _BASIC], dtype=np.intp)
        self.row_status = np.array([_BASIC, _LOWER], dtype=np.intp)
        # t (if shifted) basic, with the equation row at its bound 0
        self.t_column = [_BASIC] if reduced.shifted else []
        self.equation_row = [_LOWER] if reduced.shifted else []
        self._basis = highspy.HighsBasis()  # reused: HiGHS copies it
        self._basis.valid = True

    def _point(self, short: np.ndarray) -> np.ndarray:
        """``sign(H_free^T y)`` at the bounds, for ``y`` the indicator of ``short``."""
        y = short.astype(float)
        raises = self.S_transposed @ y + np.outer(self.reduced.c, y.sum(axis=0)) > 0
        return np.where(raises, self.reduced.weight_bound, -self.reduced.weight_bound)

    def points(self, rhs_left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The free weights' changes to start from and the rows taken as
        short, one column per unit."""
        short = rhs_left > 0
        best_D, best_short = self._point(short), short
        fewest = np.full(short.shape[1], np.iinfo(np.int64).max)
        for _ in range(self.ROUNDS):
            D = self._point(short)
            short_at_D = rhs_left - self.reduced.S @ D - self.reduced.c @ D > 0
            mismatched = (short_at_D != short).sum(axis=0)
            better = mismatched < fewest
            best_D[:, better], best_short[:, better], fewest[better] = (
                D[:, better],
                short[:, better],
                mismatched[better],
            )
            short = short_at_D
        return best_D, best_short

    def basis(self, d: np.ndarray, short: np.ndarray) -> highspy.HighsBasis:
        """The start for a unit whose start point is ``d`` and rows taken as
        short ``short`` (HiGHS copies it)."""
        short_code = short.astype(np.intp)
        columns = np.r_[self.weight_status[(d > 0).astype(np.intp)], self.shortfall_status[short_code], self.t_column]
        rows = np.r_[self.row_status[short_code], self.equation_row]
        self._basis.col_status = _STATUSES[columns.astype(np.intp)].tolist()
        self._basis.row_status = _STATUSES[rows.astype(np.intp)].tolist()
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

    highs = _pass_model(A, cost, col_lower, col_upper, row_lower, row_upper, threads, integrality)
    highs.setOptionValue("presolve", presolve)
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


def _run(
    highs: highspy.Highs, time_limit_s: float | None, iteration_cap: int | None = None, finish: bool = True
) -> tuple[str, int]:
    """Run HiGHS; return the unit status and the simplex iterations.

    With ``iteration_cap``, a simplex run that stalls past it (as it can on
    degenerate LPs with a large box, taking tens of thousands of iterations)
    is run again from scratch with HiGHS's own scaling if the instance had it
    off (unscaled simplex can cycle on badly scaled LPs, such as a deep layer
    whose activations grew to 1e9), then, if it still stalls, finished by the
    interior point method with crossover, which yields a basic optimum and its
    duals all the same. With ``finish=False`` it returns at the first stall
    (status ``"time_limit"``, model status ``kIterationLimit``) and the caller
    finishes it another way. Every stage has an iteration limit: a unit that
    none of them solves keeps its weights (status ``"time_limit"``) rather
    than holding up the call.
    """
    # HiGHS's time_limit counts the instance's total run time over all runs.
    limit = highspy.kHighsInf if time_limit_s is None else highs.getRunTime() + time_limit_s
    highs.setOptionValue("time_limit", limit)
    highs.setOptionValue("simplex_iteration_limit", iteration_cap if iteration_cap is not None else _NO_LIMIT)
    highs.run()
    iterations = max(0, highs.getInfo().simplex_iteration_count)

    def stalled() -> bool:
        return iteration_cap is not None and highs.getModelStatus() == highspy.HighsModelStatus.kIterationLimit

    if not finish:
        return status_group(highs.getModelStatus(), HIGHS_STATUS_GROUPS), iterations
    scaling = highs.getOptionValue("simplex_scale_strategy")[1] if stalled() else _HIGHS_SCALING
    if scaling != _HIGHS_SCALING:  # stalled, unscaled
        highs.setOptionValue("simplex_scale_strategy", _HIGHS_SCALING)
        highs.clearSolver()
        try:
            highs.run()
        finally:
            highs.setOptionValue("simplex_scale_strategy", scaling)
        iterations += max(0, highs.getInfo().simplex_iteration_count)
    if stalled():
        assert iteration_cap is not None
        highs.setOptionValue("simplex_iteration_limit", 10 * iteration_cap)  # crossover's
        highs.setOptionValue("ipm_iteration_limit", _IPM_ITERATION_LIMIT)
        highs.setOptionValue("solver", "ipm")
        highs.clearSolver()
        try:
            highs.run()
        finally:
            highs.setOptionValue("solver", "choose")
            highs.setOptionValue("ipm_iteration_limit", _NO_LIMIT)
        iterations += max(0, highs.getInfo().simplex_iteration_count)  # crossover's
    return status_group(highs.getModelStatus(), HIGHS_STATUS_GROUPS), iterations


_HIGHS_SCALING = 2  # HiGHS's default simplex_scale_strategy
_PRIMAL_SIMPLEX = 4  # simplex_strategy
_IPM_ITERATION_LIMIT = 1000  # interior point methods take tens of iterations; thousands mean trouble
_NO_LIMIT = 2**31 - 1  # HiGHS's default simplex_iteration_limit


def iteration_cap(rows: int) -> int:
    """Dual simplex iterations after which a unit's LP goes to the interior
    point method: a few per row, well above what a well-behaved unit takes."""
    return max(1000, 4 * rows)


def _similarity_order(R: np.ndarray) -> np.ndarray:
    """Units sorted by the projection of their right-hand sides on the first
    principal direction, so that neighbours have similar ``r``."""
    centered = R.T - R.T.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return np.argsort(centered @ vt[0], kind="stable")


# ---------------------------------------------------------------- the general form


TALL_TARGET_LAYER = 2.5
"""Samples per weight (the bias counted) from which a target LP's layer is
tall: the dual is its faster whole form, and its working rows start larger."""

DUAL_ROWS_LAYER = (4.0, 256)
"""(samples per weight, weights): a target LP's working rows go to HiGHS as
the dual (``"dual_rows"``) on layers with at least that many samples per
weight and at most that many weights, as a Conv2d's (measured, README
benchmarks: faster there than both whole forms and the LP's working rows;
slower on the seed MLP's wide layers, and on its tall layers of 320 and more
weights, where the whole dual is fastest)."""

FORMS = ("lp", "dual", "rows", "dual_rows")
"""How a unit's general LP goes to HiGHS: the LP itself, built once per layer
(``_GeneralModel``); its dual, built once (``_DualModel``); the LP itself on
a working set of rows, built per unit (``_WorkingRowsModel``); or the dual of
that, a column per working row (``_DualWorkingRowsModel``)."""

WORKING_ROWS = ("rows", "dual_rows")
"""The forms that solve a unit on a working set of rows (row generation)."""


def forms_of(formulation: Formulation) -> tuple[str, ...]:
    """The ``FORMS`` that hold ``formulation``'s LPs: working rows hold no anchor."""
    return tuple(form for form in FORMS if not (form in WORKING_ROWS and formulation.anchor))


@dataclass(frozen=True)
class GeneralLPs:
    """The LPs of one layer's units in the general form (anchor, ``l1``,
    activity targets; module docstring of ``lpinit.lp.problem``), as a worker
    receives them. No dual fixing applies; the shift does. Columns of ``H``
    that are zero on every sample are left out (their weights cannot matter)."""

    formulation: Formulation
    used: np.ndarray  # (d_in,) bool: input columns kept
    S: sp.csr_matrix  # (n, used.sum()): H[:, used] - 1 c^T
    c: np.ndarray  # (used.sum(),) column shift
    Z: np.ndarray  # (n, k) pre-activations before the change
    active: np.ndarray  # (n, k) bool: rows to be active (A_j)
    hot_start: bool  # start each unit from the previous unit's basis
    form: str  # one of FORMS: how each unit's LP goes to HiGHS
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # tells cached HiGHS instances apart

    @classmethod
    def from_layer(
        cls,
        H: np.ndarray,
        Z: np.ndarray,
        formulation: Formulation,
        hot_start: bool,
        form: str | None = None,
        active: np.ndarray | None = None,
    ) -> GeneralLPs:
        """``form=None``: ``"dual"`` on tall layers, whose simplex basis it
        shrinks to the weights: at least 4 samples per weight left (a
        Conv2d's), or 2.5 with activity targets; else ``"lp"``. Activity
        targets without the anchor (unless ``hot_start``) go to working rows
        instead: as the dual (``"dual_rows"``) on layers of
        ``DUAL_ROWS_LAYER``, the whole dual on the other tall layers, and as
        the LP itself (``"rows"``) on the rest. (Measured, README benchmarks:
        on the CNN and on the seed MLP at batch 256 to 2048, every layer's
        form is the fastest of the four or within 6% of it, except the seed
        MLP's logits, where the whole dual is faster by at most 0.14 s; from
        its start the LP itself is faster on the seed MLP's anchored LPs at
        2.6 samples per weight.)
        ``active``: the rows to be active, by default
        ``formulation.active_rows``."""
        used = np.asarray((H != 0).any(axis=0))
        S, c = split_constant(H[:, used])
        if form is None:
            samples, weights = H.shape[0], int(used.sum()) + 1
            targets = formulation.target_active is not None
            per_weight, most_weights = DUAL_ROWS_LAYER
            tall = samples >= (TALL_TARGET_LAYER if targets else 4) * weights
            if targets and not formulation.anchor and not hot_start:
                few = samples >= per_weight * weights and weights <= most_weights
                form = "dual_rows" if few else "dual" if tall else "rows"
            else:
                form = "dual" if tall else "lp"
        if form not in forms_of(formulation):
            raise ValueError(
                f"form must be one of {FORMS} (working rows {WORKING_ROWS} without the anchor), got {form!r}"
            )
        active = formulation.active_rows(Z, H) if active is None else active
        return cls(formulation, used, S, c, Z, active, hot_start, form)


def solve_general(lps: GeneralLPs, *, n_jobs: int | None, time_limit_s: float | None, tick: Tick) -> LayerSolution:
    """Solve all units of the general form, in chunks shared by this process
    and worker processes, as ``solve_highs`` does for the plain LP."""
    units = lps.Z.shape[1]
    solution = LayerSolution.empty(units, len(lps.used))
    most = min(cpu_count() if n_jobs is None else n_jobs, units // MIN_GENERAL_UNITS_PER_PROCESS)
    parts, workers = parallel.map_chunks(
        partial(_solve_general_chunk, time_limit_s=time_limit_s),
        lps,
        np.arange(units),
        max(0, most - 1),
        start="auto" if n_jobs is None else "always",
        tick=tick,
        worker_setup=_one_highs_thread,
    )
    for chunk, part in parts:
        solution.put(chunk, part)
    solution.processes = 1 + workers
    return solution


@dataclass(frozen=True)
class _ChangeColumns:
    """The first columns of a unit's general LP in HiGHS, its change: ``d``
    (or ``d+, d-`` when the change costs), then ``e`` (or ``e+, e-``; none
    without a bias)."""

    p: int  # weights
    has_e: bool
    split_d: bool
    split_e: bool

    @classmethod
    def of(cls, f: Formulation, p: int) -> _ChangeColumns:
        has_e = bool(f.bias_bound > 0)
        return cls(p, has_e, bool(f.weight_cost() > 0), bool(has_e and f.bias_cost() > 0))

    @property
    def d_columns(self) -> list[slice]:
        return [slice(0, self.p)] + ([slice(self.p, 2 * self.p)] if self.split_d else [])

    @property
    def e_columns(self) -> list[int]:
        first = self.p * (1 + self.split_d)
        return list(range(first, first + self.has_e * (1 + self.split_e)))

    def d_blocks(self, block: sp.spmatrix | np.ndarray) -> list:
        """``block`` (the entries of ``d`` in some rows) as the d columns hold it."""
        return [block, -block] if self.split_d else [block]

    def e_blocks(self, block: sp.spmatrix | np.ndarray) -> list:
        """The same for ``e``."""
        return ([block, -block] if self.split_e else [block]) if self.has_e else []

    def bounds(self, f: Formulation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The costs and bounds of these columns."""
        count = self.p * (1 + self.split_d) + len(self.e_columns)
        cost, lower, upper = np.zeros(count), np.zeros(count), np.zeros(count)
        for columns in self.d_columns:
            cost[columns] = f.weight_cost()
            lower[columns] = 0.0 if self.split_d else -f.weight_bound
            upper[columns] = f.weight_bound
        for column in self.e_columns:
            cost[column] = f.bias_cost()
            lower[column] = 0.0 if self.split_e else -f.bias_bound
            upper[column] = f.bias_bound
        return cost, lower, upper

    def change(self, values: np.ndarray) -> tuple[np.ndarray, float]:
        """The weights' change ``d`` (of the used columns) and the bias change ``e`` in a HiGHS solution."""
        d_columns, e_columns = self.d_columns, self.e_columns
        d = values[d_columns[0]] - (values[d_columns[1]] if self.split_d else 0.0)
        e = values[e_columns[0]] - (values[e_columns[1]] if self.split_e else 0.0) if self.has_e else 0.0
        return d, float(e)


class _GeneralModel:
    """A HiGHS instance holding the general LP of a layer, built once, with
    the layout of its columns and rows.

    Columns: ``d`` (or ``d+, d-`` when the change costs), ``e`` (or ``e+, e-``;
    none without a bias), ``s+`` (n), ``s-`` (n, activity targets only), ``t``
    (if shifted). Rows: the n samples ``S_i d + t + e + s+_i - s-_i``, then
    ``c . d - t = 0`` (if shifted), then the anchor ``mean(S) . d + t + e = 0``.
    """

    def __init__(self, lps: GeneralLPs, threads: int):
        f, S, c = lps.formulation, lps.S, lps.c
        n, p = S.shape
        self.n, self.p = n, p
        self.change_columns = layout = _ChangeColumns.of(f, p)
        self.has_e = layout.has_e
        two_sided = f.target_active is not None
        shifted = bool(c.any())
        ones = np.ones((n, 1))

        d_block = layout.d_blocks(S)
        e_block = layout.e_blocks(ones)
        s_block = [sp.identity(n, format="csr")] + ([-sp.identity(n, format="csr")] if two_sided else [])
        t_block = [ones] if shifted else []
        rows: list[list] = [[*d_block, *e_block, *s_block, *t_block]]
        width = [b.shape[1] for b in rows[0]]
        if shifted:
            row = layout.d_blocks(sp.csr_matrix(c)) + [None] * (len(e_block) + len(s_block)) + [-np.ones((1, 1))]
            rows.append(row)
        if f.anchor:
            mean_S = np.asarray(S.mean(axis=0)).reshape(1, -1)
            e_row = layout.e_blocks(np.ones((1, 1)))
            t_entry = [np.ones((1, 1))] if shifted else []
            rows.append([*layout.d_blocks(mean_S), *e_row, *[None] * len(s_block), *t_entry])
        A = sp.bmat(rows, format="csc")
        A.eliminate_zeros()

        inf = highspy.kHighsInf
        starts = np.cumsum([0, *width])
        cost, lower, upper = np.zeros(A.shape[1]), np.zeros(A.shape[1]), np.zeros(A.shape[1])
        changes = len(d_block) * p + len(e_block)
        cost[:changes], lower[:changes], upper[:changes] = layout.bounds(f)
        s_first = starts[len(d_block) + len(e_block)]
        s_end = s_first + n * len(s_block)
        cost[s_first:s_end] = f.shortfall_cost()
        upper[s_first:s_end] = inf
        if shifted:
            lower[-1], upper[-1] = -inf, inf
        self.anchor_row = A.shape[0] - 1 if f.anchor else None
        row_upper = np.concatenate([np.full(n, inf), np.zeros(A.shape[0] - n)])  # samples: set per unit
        self.highs = _pass_model(A, cost, lower, upper, np.zeros(A.shape[0]), row_upper, threads)
        # measured (README, benchmarks): HiGHS's scaling costs these LPs iterations, as it does their dual
        self.highs.setOptionValue("simplex_scale_strategy", 0)
        self.rows = np.arange(n, dtype=np.int32)
        self.dense_H = S.toarray() + c
        self.columns, self.shifted = A.shape[1], shifted
        self.s_columns = [slice(s_first + i * n, s_first + (i + 1) * n) for i in range(len(s_block))]
        # the change variables of the crash start: the weights, then the bias
        self.hbar = np.r_[self.dense_H.mean(axis=0), [1.0] * self.has_e]
        self.bound = np.r_[np.full(p, f.weight_bound), [f.bias_bound] * self.has_e]
        self.cost = np.r_[np.full(p, f.weight_cost()), [f.bias_cost()] * self.has_e]
        self.split = np.r_[np.full(p, layout.split_d), [layout.split_e] * self.has_e].astype(bool)  # r_ of [] is float
        self.shortfall_cost = f.shortfall_cost()
        self.anchor = f.anchor
        self.slack_start = layout.split_d and not f.anchor
        self._margin = f.margin
        self.formulation = f
        self._basis = highspy.HighsBasis()  # reused: HiGHS copies it
        self._basis.valid = True

    def crash_basis(self, z: np.ndarray, active: np.ndarray) -> highspy.HighsBasis | None:
        """A dual feasible start for one unit, close to its optimum (``None``:
        HiGHS's slack basis).

        With a cost on the change and no anchor (the ``l1`` and
        activity-target LPs), the start is the slack basis: no change, every
        row's logical basic (``y = 0``). It is dual feasible, since no cost is
        negative, and dual simplex then works through the rows that miss at
        ``d = 0``. The start below measured slower there: with the targets'
        large ``C``, ``|H^T y|`` exceeds the change cost on nearly every
        weight, so it starts from nearly every weight at its bound (README,
        benchmarks).

        Rows taken to miss their side of the margin get their slack basic
        (row multiplier ``y_i = +-C``), the others their logical. Each change
        variable then sits at the bound its reduced cost asks for,
        ``sign(g_k + mu hbar_k)`` past ``+-lambda`` with ``g = H^T y``; with the
        anchor, ``mu`` is the multiplier at which the anchor's row
        ``hbar . d + e`` crosses 0 (a step function of ``mu``), and the
        variable at that step is basic in the anchor's row.

        The rows taken to miss are those that miss at ``d = 0``; on a tall
        layer (more rows than weights, e.g. a Conv2d's), or those that miss at
        the point the previous set gives, for up to ``_CrashStart.ROUNDS``
        rounds: the set whose point leaves the fewest rows on another side
        than assumed (each costs dual simplex about one iteration) wins. (On
        the seed MLP's anchored LPs the later rounds measured no better.)
        """
        if self.slack_start:
            return None
        missed = np.where(active, z < self._margin, z > -self._margin)
        best: tuple[int, np.ndarray, np.ndarray] | None = None
        for _ in range(_CrashStart.ROUNDS if self.n > self.p else 1):
            col, row, change = self._start(missed, active)
            z_new = z + self.dense_H @ change[: self.p] + (change[self.p] if self.has_e else 0.0)
            missed_new = np.where(active, z_new < self._margin, z_new > -self._margin)
            mismatched = int((missed_new != missed).sum())
            if best is None or mismatched < best[0]:
                best = (mismatched, col, row)
            if mismatched == 0:
                break
            missed = missed_new
        assert best is not None
        self._basis.col_status = _STATUSES[best[1]].tolist()
        self._basis.row_status = _STATUSES[best[2]].tolist()
        return self._basis

    def _start(self, missed: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The basis (column and row status codes) for the rows ``missed``,
        and its point: the change of the weights (and the bias, last)."""
        C = self.shortfall_cost
        y = np.where(missed, np.where(active, C, -C), 0.0)
        g = np.r_[self.dense_H.T @ y, [y.sum()] * self.has_e]
        mu, basic = self._anchor_multiplier(g) if self.anchor else (0.0, -1)
        v = g + mu * self.hbar
        direction = np.where(v > self.cost, 1, np.where(v < -self.cost, -1, 0))
        direction[~self.split & (direction == 0)] = -1  # unsplit, cost 0: v == 0 exactly; either bound
        change = direction * self.bound
        if basic >= 0:  # its value meets the anchor's row, hbar . change = 0
            rest = self.hbar @ change - self.hbar[basic] * change[basic]
            change[basic] = np.clip(-rest / self.hbar[basic], -self.bound[basic], self.bound[basic])

        col = np.full(self.columns, _LOWER, dtype=np.intp)
        p, layout = self.p, self.change_columns
        d_columns, e_columns = layout.d_columns, layout.e_columns
        col[d_columns[0]] = np.where(direction[:p] > 0, _UPPER, _LOWER)
        if layout.split_d:
            col[d_columns[1]] = np.where(direction[:p] < 0, _UPPER, _LOWER)
        if self.has_e:
            col[e_columns[0]] = _UPPER if direction[p] > 0 else _LOWER
            if layout.split_e:
                col[e_columns[1]] = _UPPER if direction[p] < 0 else _LOWER
        if basic >= 0:  # in the anchor's row: the variable at its step (d+ or d- by the side of the step)
            if basic == p:
                columns = e_columns
            else:
                columns = [d_columns[0].start + basic]
                columns += [d_columns[1].start + basic] if layout.split_d else []
            col[columns[1] if len(columns) > 1 and v[basic] < 0 else columns[0]] = _BASIC
        col[self.s_columns[0]] = np.where(missed & active, _BASIC, _LOWER)
        if len(self.s_columns) > 1:
            col[self.s_columns[1]] = np.where(missed & ~active, _BASIC, _LOWER)
        if self.shifted:
            col[-1] = _BASIC

        row = np.where(missed, np.where(active, _LOWER, _UPPER), _BASIC)
        extra = [_LOWER] * self.shifted + ([_BASIC if basic < 0 else _LOWER] if self.anchor else [])
        return col, np.r_[row, extra].astype(np.intp), change

    def _anchor_multiplier(self, g: np.ndarray) -> tuple[float, int]:
        """``mu`` where ``phi(mu) = sum_k hbar_k bound_k direction_k(mu)`` steps
        across 0, and the change variable of that step (-1: none)."""
        moves = self.hbar != 0
        k = np.flatnonzero(moves)
        hbar, g_k, cost, bound = self.hbar[k], g[k], self.cost[k], self.bound[k]
        # each variable steps at -(g +- cost) / hbar; a split one steps twice, half as far each time
        step_size = np.abs(hbar) * bound * np.where(self.split[k], 1.0, 2.0)
        first = (-np.sign(hbar) * cost - g_k) / hbar
        second = (np.sign(hbar) * cost - g_k) / hbar
        at = np.r_[first, second[self.split[k]]]
        jump = np.r_[step_size, step_size[self.split[k]]]
        owner = np.r_[k, k[self.split[k]]]
        order = np.argsort(at, kind="stable")
        phi = -(np.abs(hbar) * bound).sum() + np.cumsum(jump[order])
        crossing = int(np.searchsorted(phi, 0.0))
        if crossing >= len(order):
            return 0.0, -1
        return float(at[order[crossing]]), int(owner[order[crossing]])

    def pose(self, z: np.ndarray, active: np.ndarray) -> None:
        """Make the instance hold this unit's LP: its rows' bounds."""
        lower, upper = self.formulation.row_bounds(z, active)
        inf = highspy.kHighsInf
        self.highs.changeRowsBounds(self.n, self.rows, np.maximum(lower, -inf), np.minimum(upper, inf))  # type: ignore[attr-defined]

    def read(self, answer: highspy.HighsSolution) -> tuple[np.ndarray, float, np.ndarray, float]:
        """The change ``d, e`` in an optimal answer, and the multipliers
        ``y`` (rows) and ``mu`` (anchor) of its duals."""
        values, duals = np.asarray(answer.col_value), np.asarray(answer.row_dual)
        d, e = self.change_columns.change(values)
        mu = float(duals[self.anchor_row]) if self.anchor_row is not None else 0.0
        return d, e, duals[: self.n], mu


@dataclass(frozen=True)
class _DualRows:
    """The rows of a general LP's dual (``_DualModel``, ``_DualWorkingRowsModel``):
    one per change variable the box leaves free (``keep``, of the weights and
    then the bias), with its bound ``u_k`` and cost ``c_k``; and on them, each
    sample's column ``y_i`` and the shift's column ``T``."""

    p: int  # weights
    has_e: bool
    keep: np.ndarray  # the change variables with a row
    bound: np.ndarray  # (len(keep),) u_k
    cost: np.ndarray  # (len(keep),) c_k
    y_columns: sp.csc_matrix  # (n, len(keep)): row i holds y_i's entries, S_i (and 1 on the bias's row)
    t_entries: np.ndarray  # (len(keep),) T's entries, c (and 0 on the bias's row)

    @classmethod
    def of(cls, f: Formulation, S: sp.csr_matrix, c: np.ndarray) -> _DualRows:
        (n, p), has_e = S.shape, bool(f.bias_bound > 0)
        bound = np.r_[np.full(p, f.weight_bound), [f.bias_bound] * has_e]
        cost = np.r_[np.full(p, f.weight_cost()), [f.bias_cost()] * has_e]
        keep = np.flatnonzero(bound > 0)  # a variable the box fixes at 0 puts no limit on (H^T y)_k: no row
        y_columns = sp.hstack([S, np.ones((n, 1))], format="csc")[:, keep] if has_e else S.tocsc()[:, keep]
        return cls(p, has_e, keep, bound[keep], cost[keep], y_columns, np.r_[c, [0.0] * has_e][keep])

    def change(self, row_dual: Sequence[float]) -> tuple[np.ndarray, float]:
        """The LP's change ``d, e``: minus the duals of these rows (HiGHS's first rows)."""
        change = np.zeros(self.p + self.has_e)
        change[self.keep] = -np.asarray(row_dual)[: len(self.keep)]
        return change[: self.p], float(change[self.p]) if self.has_e else 0.0


class _DualModel:
    """A HiGHS instance holding the dual of a layer's general LP, built once.

    The dual of a unit's LP (``Formulation.dual_bound`` as an LP), with the
    change costs ``c_k`` (``lambda / rho``) and bounds ``u_k`` of the weights
    and the bias::

        maximize    sum_i y_i side_i - sum_k u_k (w+_k + w-_k)
        subject to  v_k := (H^T y)_k + mu hbar_k = w0_k + w+_k - w-_k    (a row per weight, and the bias)
                    y_i in [0, C] (rows to be active), [-C, 0] (the others)
                    w0_k in [-c_k, c_k],  w+_k, w-_k >= 0,  mu free (anchor only)

    with ``side_i = m - z_i`` or ``-m - z_i``. Its basis has a row per weight
    instead of one per sample, so it is the smaller problem on tall layers.
    The duals of its rows are ``-(d, e)``, the LP's optimal change; per unit
    only the bounds and costs of ``y`` change. With the shift, ``H^T y = S^T y
    + c T`` with one more row ``T = sum_i y_i``.
    """

    def __init__(self, lps: GeneralLPs, threads: int):
        f, S, c = lps.formulation, lps.S, lps.c
        n, p = S.shape
        self.n, self.p, self.formulation = n, p, f
        self.dense_H = S.toarray() + c
        self.has_e = bool(f.bias_bound > 0)
        shifted = bool(c.any())
        self.dual_rows = rows = _DualRows.of(f, S, c)
        keep = rows.keep
        eye = sp.identity(len(keep), format="csr")
        with_w0 = bool((rows.cost > 0).any())
        blocks = [rows.y_columns.T.tocsr(), *([-eye] if with_w0 else []), -eye, eye]
        if shifted:
            blocks.append(sp.csr_matrix(rows.t_entries.reshape(-1, 1)))
        if f.anchor:
            hbar = np.r_[self.dense_H.mean(axis=0), [1.0] * self.has_e][keep]
            blocks.append(sp.csr_matrix(hbar.reshape(-1, 1)))
        A = sp.hstack(blocks, format="csr")
        if shifted:  # T - sum_i y_i = 0
            t_row = sp.csr_matrix(([-1.0] * n + [1.0], ([0] * (n + 1), [*range(n), len(keep) * (2 + with_w0) + n])))
            t_row.resize(1, A.shape[1])
            A = sp.vstack([A, t_row], format="csr")
        A = A.tocsc()
        A.eliminate_zeros()
        inf = highspy.kHighsInf
        lower, upper, objective = np.zeros(A.shape[1]), np.zeros(A.shape[1]), np.zeros(A.shape[1])
        at = n
        if with_w0:
            lower[at : at + len(keep)], upper[at : at + len(keep)] = -rows.cost, rows.cost
            at += len(keep)
        for _ in range(2):  # w+ and w-
            upper[at : at + len(keep)], objective[at : at + len(keep)] = inf, rows.bound
            at += len(keep)
        lower[at:], upper[at:] = -inf, inf  # T and mu
        self.mu_column = A.shape[1] - 1 if f.anchor else None
        self.highs = _pass_model(A, objective, lower, upper, np.zeros(A.shape[0]), np.zeros(A.shape[0]), threads)
        # measured (README, benchmarks): HiGHS's scaling costs this LP iterations
        self.highs.setOptionValue("simplex_scale_strategy", 0)
        self.rows = np.arange(n, dtype=np.int32)

    def crash_basis(self, z: np.ndarray, active: np.ndarray) -> None:
        """No start of our own: HiGHS's from the slack basis measured faster."""
        return None

    def pose(self, z: np.ndarray, active: np.ndarray) -> None:
        """Make the instance hold this unit's dual: the bounds and costs of ``y``
        (HiGHS minimizes, so the costs are ``-side``)."""
        f = self.formulation
        C = f.shortfall_cost()
        side = np.where(active, f.margin - z, -f.margin - z)
        self.highs.changeColsBounds(self.n, self.rows, np.where(active, 0.0, -C), np.where(active, C, 0.0))
        self.highs.changeColsCost(self.n, self.rows, -side)

    def read(self, answer: highspy.HighsSolution) -> tuple[np.ndarray, float, np.ndarray, float]:
        """The LP's change ``d, e`` (minus the duals of the rows), ``y`` and ``mu``."""
        d, e = self.dual_rows.change(answer.row_dual)
        values = np.asarray(answer.col_value)
        mu = float(values[self.mu_column]) if self.mu_column is not None else 0.0
        return d, e, values[: self.n], mu


_ModelArrays = tuple[sp.csc_matrix, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""``_pass_model``'s first arguments: the matrix, costs, column bounds and row bounds."""


class _WorkingRowsModel:
    """A HiGHS instance for the LP itself on a working set of rows, rebuilt
    per unit (row generation).

    A unit's LP starts from the ``INITIAL_ROWS`` rows nearest to missing
    their side at the bias-only change that best splits ``A_j`` from ``I_j``,
    or on a tall layer from every row that misses there if there are more
    (each row's ``s`` column comes with it). After each solve, if some row
    left out misses its side at the answer, every left-out row within
    ``ADDED_WITHIN m`` of missing it is added, and dual simplex goes on from the
    basis it has (new rows enter basic). When no row left out misses, the
    answer is optimal for the whole LP: with ``s_i = 0`` on those rows it is
    feasible there at the same objective, and leaving rows out only relaxes
    the LP. Its row multipliers, 0 on the rows left out, are checked
    against the duality bound like every other form's.

    Target LPs end with few rows at their margin (tens of the seed MLP's
    256, a few hundred of a Conv2d's 2,048), and simplex's time per
    iteration follows the rows it holds. A wide layer's rows are long, so
    its sets start small; a tall layer's are short, and its time goes to
    factoring a basis of up to a column per weight, which every round
    repeats, so its sets start large (README, benchmarks).
    """

    INITIAL_ROWS = 32
    ADDED_WITHIN = 0.5  # of the margin

    def __init__(self, lps: GeneralLPs, threads: int):
        f, S, c = lps.formulation, lps.S, lps.c
        n, p = S.shape
        self.n, self.p, self.formulation = n, p, f
        self.dense_H = S.toarray() + c
        self.has_e = bool(f.bias_bound > 0)
        self.tall = n >= TALL_TARGET_LAYER * (p + 1)
        self.threads = threads
        self.rows = np.zeros(0, dtype=np.intp)  # the working rows of the unit posed last, in HiGHS's order
        self._core = self._build(S, c)
        self.highs = _pass_model(*self._core, threads)
        # measured (README, benchmarks): HiGHS's scaling costs these LPs iterations, as it does the others
        self.highs.setOptionValue("simplex_scale_strategy", 0)

    def _build(self, S: sp.csr_matrix, c: np.ndarray) -> _ModelArrays:
        """The model before any sample row (``_pass_model``'s arguments but
        ``threads``): the change columns, and ``t = c . d`` with its row if
        shifted; and the sample rows as the working set takes them."""
        f, n = self.formulation, S.shape[0]
        self.change_columns = layout = _ChangeColumns.of(f, self.p)
        shifted = bool(c.any())
        inf = highspy.kHighsInf
        ones = np.ones((n, 1))
        e_block = layout.e_blocks(ones)
        self.sample_rows = sp.hstack([*layout.d_blocks(S), *e_block, *([ones] if shifted else [])], format="csr")
        cost, lower, upper = layout.bounds(f)
        if shifted:  # t = c . d, a free column: a row of its own, the first
            cost, lower, upper = np.r_[cost, 0.0], np.r_[lower, -inf], np.r_[upper, inf]
            t_row = np.concatenate([*layout.d_blocks(c), [0.0] * len(e_block), [-1.0]])
            first_rows = sp.csc_matrix(t_row.reshape(1, -1))
        else:
            first_rows = sp.csc_matrix((0, len(cost)))
        self.first_rows = first_rows.shape[0]
        return first_rows, cost, lower, upper, np.zeros(self.first_rows), np.zeros(self.first_rows)

    def solve(self, z: np.ndarray, active: np.ndarray, time_limit_s: float | None) -> tuple[str, int]:
        """Solve one unit's LP by row generation, from the slack basis; the
        unit status and the simplex iterations of all its rounds."""
        f, highs, inf = self.formulation, self.highs, highspy.kHighsInf
        _pass_model(*self._core, self.threads, into=highs)
        lower, upper = f.row_bounds(z, active)
        lower, upper = np.maximum(lower, -inf), np.minimum(upper, inf)
        shift = 0.0
        if active.any() and not active.all():  # the bias-only change halfway between A_j and I_j
            shift = float(np.clip(-(z[active].min() + z[~active].max()) / 2, -f.bias_bound, f.bias_bound))
        slack = np.where(active, z + shift - f.margin, -f.margin - z - shift)
        first = max(self.INITIAL_ROWS, np.count_nonzero(slack < 0)) if self.tall else self.INITIAL_ROWS
        new = np.argsort(slack, kind="stable")[:first]
        working = np.zeros(self.n, dtype=bool)
        self.rows = np.zeros(0, dtype=np.intp)
        began, iterations = time.perf_counter(), 0
        while True:
            self._add(new, lower, upper, active)
            working[new] = True
            left = None if time_limit_s is None else max(0.0, time_limit_s - (time.perf_counter() - began))
            status, its = _run(highs, left, self._iteration_cap(), finish=False)
            iterations += its
            if status != OPTIMAL:
                return status, iterations
            d, e = self.change(highs.getSolution())
            z_new = z + self.dense_H @ d + e
            short = np.where(active, f.margin - z_new, z_new + f.margin)
            short[working] = -inf
            if not (short > 0).any():
                return status, iterations
            new = np.flatnonzero(short > -self.ADDED_WITHIN * f.margin)

    def _iteration_cap(self) -> int:
        return iteration_cap(len(self.rows))

    def _add(self, new: np.ndarray, lower: np.ndarray, upper: np.ndarray, active: np.ndarray) -> None:
        """Add the sample rows ``new`` and their ``s`` columns (``+1`` on a row
        to be active, ``-1`` on one to be inactive) to the instance."""
        highs, first, count = self.highs, self.highs.getNumRow(), len(new)
        starts, indices, values = _csr_rows(self.sample_rows, new)
        highs.addRows(count, lower[new], upper[new], len(values), starts, indices, values)
        highs.addCols(
            count,
            np.full(count, self.formulation.shortfall_cost()),
            np.zeros(count),
            np.full(count, highspy.kHighsInf),
            count,
            np.arange(count, dtype=np.int32),
            np.arange(first, first + count, dtype=np.int32),
            np.where(active[new], 1.0, -1.0),
        )
        self.rows = np.r_[self.rows, new]

    def change(self, answer: highspy.HighsSolution) -> tuple[np.ndarray, float]:
        """The change ``d, e`` in an answer."""
        return self.change_columns.change(np.asarray(answer.col_value))

    def read(self, answer: highspy.HighsSolution) -> tuple[np.ndarray, float, np.ndarray, float]:
        """The change ``d, e`` and the row multipliers ``y`` (0 on the rows
        left out)."""
        d, e = self.change(answer)
        y = np.zeros(self.n)
        y[self.rows] = np.asarray(answer.row_dual)[self.first_rows :]
        return d, e, y, 0.0


class _DualWorkingRowsModel(_WorkingRowsModel):
    """The dual of the LP on working rows: the same row generation, with a
    column ``y_i`` per working row (``_DualModel``'s LP, without the anchor,
    on those columns), solved by primal simplex.

    Its rows are the weights and the bias, ranged::

        -c_k <= (H^T y)_k - w+_k + w-_k <= c_k      (cost u_k on w+_k, w-_k >= 0)

    so a basis holds at most a column per weight, however many rows work.
    A new row's column enters at ``y_i = 0``, which keeps the answer feasible:
    primal simplex goes on from the basis it has, where the LP itself must
    factor and price its grown basis again (dual steepest edge weights, a
    backward solve per row). On tall layers that is the faster of the two
    (README, benchmarks); the row duals are ``-(d, e)``.
    """

    def _build(self, S: sp.csr_matrix, c: np.ndarray) -> _ModelArrays:
        n = S.shape[0]
        inf = highspy.kHighsInf
        self.dual_rows = rows = _DualRows.of(self.formulation, S, c)
        q, shifted = len(rows.keep), bool(c.any())
        eye = sp.identity(q, format="csc")
        A = sp.hstack([-eye, eye], format="csc")  # w+, w-
        col_cost, col_lower, col_upper = np.r_[rows.bound, rows.bound], np.zeros(2 * q), np.full(2 * q, inf)
        row_lower, row_upper = -rows.cost, rows.cost
        y_columns = rows.y_columns
        if shifted:  # (H^T y)_k = (S^T y)_k + c_k T, with T = sum_i y_i: a free column and a row of their own
            T = sp.csc_matrix(np.r_[rows.t_entries, 1.0].reshape(-1, 1))
            A = sp.hstack([sp.vstack([A, sp.csc_matrix((1, 2 * q))]), T], format="csc")
            col_cost, col_lower, col_upper = np.r_[col_cost, 0.0], np.r_[col_lower, -inf], np.r_[col_upper, inf]
            row_lower, row_upper = np.r_[row_lower, 0.0], np.r_[row_upper, 0.0]
            y_columns = sp.hstack([y_columns, -np.ones((n, 1))], format="csc")
        self.sample_rows = sp.csr_matrix(y_columns)  # row i: the entries of y_i's column
        self.first_columns = A.shape[1]
        return A, col_cost, col_lower, col_upper, row_lower, row_upper

    def __init__(self, lps: GeneralLPs, threads: int):
        super().__init__(lps, threads)
        self.highs.setOptionValue("simplex_strategy", _PRIMAL_SIMPLEX)

    def _iteration_cap(self) -> int:
        return iteration_cap(len(self.rows) + len(self.dual_rows.keep))

    def _add(self, new: np.ndarray, lower: np.ndarray, upper: np.ndarray, active: np.ndarray) -> None:
        """Add the columns ``y_i`` of the rows ``new``: cost ``-side_i`` (HiGHS
        minimizes), in ``[0, C]`` on a row to be active, ``[-C, 0]`` on one to be
        inactive."""
        C, count = self.formulation.shortfall_cost(), len(new)
        side = np.where(active[new], lower[new], upper[new])
        starts, indices, values = _csr_rows(self.sample_rows, new)
        self.highs.addCols(
            count,
            -side,
            np.where(active[new], 0.0, -C),
            np.where(active[new], C, 0.0),
            len(values),
            starts,
            indices,
            values,
        )
        self.rows = np.r_[self.rows, new]

    def change(self, answer: highspy.HighsSolution) -> tuple[np.ndarray, float]:
        return self.dual_rows.change(answer.row_dual)

    def read(self, answer: highspy.HighsSolution) -> tuple[np.ndarray, float, np.ndarray, float]:
        """The change ``d, e`` and the multipliers ``y`` (0 on the rows left out)."""
        d, e = self.change(answer)
        y = np.zeros(self.n)
        y[self.rows] = np.asarray(answer.col_value)[self.first_columns :]
        return d, e, y, 0.0


def _csr_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows ``rows`` of ``matrix`` as HiGHS takes them: their starts,
    column indices (int32) and values (scipy's own row indexing takes
    several times as long)."""
    begin, end = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = end - begin
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    at = np.arange(lengths.sum()) - np.repeat(starts - begin, lengths)  # each entry's place in matrix
    return starts.astype(np.int32), matrix.indices[at].astype(np.int32), matrix.data[at]


_LOWER, _BASIC, _UPPER = 0, 1, 2
_STATUSES = np.array(
    [highspy.HighsBasisStatus.kLower, highspy.HighsBasisStatus.kBasic, highspy.HighsBasisStatus.kUpper], dtype=object
)
"""Basis statuses by code, so that a start is built with integer arrays."""

_general_models = threading.local()


_Model = _GeneralModel | _DualModel | _WorkingRowsModel
_MODELS: dict[str, type[_Model]] = {
    "lp": _GeneralModel,
    "dual": _DualModel,
    "rows": _WorkingRowsModel,
    "dual_rows": _DualWorkingRowsModel,
}


def _general_model(lps: GeneralLPs, threads: int, form: str) -> _Model:
    """This thread's HiGHS instance for ``lps`` in ``form`` (one of ``FORMS``),
    kept for the layer's next chunk."""
    key = (lps.token, threads)
    cached = getattr(_general_models, "last", None)
    if cached is None or cached[0] != key:
        cached = _general_models.last = (key, {})
    models: dict[str, _Model] = cached[1]
    if form not in models:
        models[form] = _MODELS[form](lps, threads)
    return models[form]


def _solve_general_chunk(
    lps: GeneralLPs, chunk: np.ndarray, *, threads: int, time_limit_s: float | None, tick: Tick | None = None
) -> LayerSolution:
    """Solve the general LPs of the units ``chunk`` on this thread's HiGHS
    instance for the layer, each from the previous unit's basis (``hot_start``)
    or from a fresh start; check every answer against the duality bound.

    A unit whose LP stalls (dual simplex past ``iteration_cap``, as on
    degenerate LPs with a large box) is finished on the dual LP, where
    simplex takes another path, and after two stalls the chunk's other units
    go to the dual directly; a stalled dual is rerun with HiGHS's scaling,
    then finished by the interior point method (``_run``). An answer that
    fails the check is solved again from scratch with presolve, on the LP
    itself built whole if it came from the working rows."""
    model = _general_model(lps, threads, lps.form)
    n = model.n
    Z, active = lps.Z[:, chunk], lps.active[:, chunk]
    units = len(chunk)
    solution = LayerSolution.empty(units, model.p)
    D, e, Y, mu = np.zeros((units, model.p)), np.zeros(units), np.zeros((n, units)), np.zeros(units)
    solved = np.zeros(units, dtype=bool)

    def run_on(on: _Model, k: int, presolve: str, fresh: bool) -> str:
        if isinstance(on, _WorkingRowsModel):
            status, iterations = on.solve(Z[:, k], active[:, k], time_limit_s)
        else:
            start = on.crash_basis(Z[:, k], active[:, k]) if presolve == "off" and fresh else None
            on.pose(Z[:, k], active[:, k])
            if fresh:
                on.highs.clearSolver()
            if start is not None:
                on.highs.setBasis(start)
            on.highs.setOptionValue("presolve", presolve)
            # a stalled LP goes to its dual (solve below), where simplex takes another path;
            # the dual is finished by _run
            status, iterations = _run(on.highs, time_limit_s, iteration_cap(n), finish=isinstance(on, _DualModel))
        solution.iterations[k] += iterations
        if status == OPTIMAL:
            D[k], e[k], Y[:, k], mu[k] = on.read(on.highs.getSolution())
        return status

    stalls = 0
    dual_left = lps.form != "dual"  # a stall can still go to the dual

    def solve(k: int, presolve: str) -> None:
        nonlocal stalls
        began = time.perf_counter()  # solver time: the unit's HiGHS calls, from its bounds to its answer
        # after two stalls, the layer's LPs are taken to stall (a property of the box): straight to the dual
        to_dual = dual_left and stalls >= 2
        if not to_dual:
            on = _general_model(lps, threads, "lp") if presolve == "on" and lps.form in WORKING_ROWS else model
            status = run_on(on, k, presolve, fresh=presolve == "on" or not lps.hot_start)
            to_dual = dual_left and on.highs.getModelStatus() == highspy.HighsModelStatus.kIterationLimit
        if to_dual:
            stalls += 1
            status = run_on(_general_model(lps, threads, "dual"), k, presolve, fresh=True)
        solution.status[k] = status
        solved[k] = status == OPTIMAL
        solution.solver_time_s[k] += time.perf_counter() - began

    for k in range(units):
        solve(k, "off")
        if tick is not None:
            tick(1)
    unproven = _accept_general(lps, model, Z, active, D, e, Y, mu, np.flatnonzero(solved), solution)
    for k in unproven:  # HiGHS's "optimum" fails the duality check: solve again from scratch, by another route
        solution.resolves += 1
        solve(k, "on")
        if solution.status[k] == OPTIMAL:
            _accept_general(lps, model, Z, active, D, e, Y, mu, np.array([k]), solution)
    for on in _general_models.last[1].values():
        on.highs.setOptionValue("presolve", "off")

    delta_weight = np.zeros((units, len(lps.used)))  # unused input columns: no change
    delta_weight[:, lps.used] = solution.delta_weight
    return replace(solution, delta_weight=delta_weight)


def _accept_general(
    lps: GeneralLPs,
    model: _Model,
    Z: np.ndarray,
    active: np.ndarray,
    D: np.ndarray,
    e: np.ndarray,
    Y: np.ndarray,
    mu: np.ndarray,
    units: np.ndarray,
    solution: LayerSolution,
) -> np.ndarray:
    """Accept the answers of ``units`` that the duality bound proves optimal
    (writing them into ``solution``); mark the others FAILED and return them."""
    if not len(units):
        return units
    f, H = lps.formulation, model.dense_H
    d = np.clip(D[units], -f.weight_bound, f.weight_bound)
    e_u = np.clip(e[units], -f.bias_bound, f.bias_bound)
    if f.anchor and model.has_e:  # restore the equality exactly, where the box allows
        e_u = np.clip(-(d @ H.mean(axis=0)), -f.bias_bound, f.bias_bound)
    objective = f.objective(H, Z[:, units], d, e_u, active[:, units])
    bound = f.dual_bound(H, Z[:, units], active[:, units], Y[:, units], mu[units])
    at_zero = f.objective(H, Z[:, units], np.zeros_like(d), np.zeros_like(e_u), active[:, units])
    proven = objective - bound <= GAP_TOLERANCE * (1.0 + at_zero)
    good = units[proven]
    solution.delta_weight[good] = d[proven]
    solution.delta_bias[good] = e_u[proven]
    solution.objective[good] = objective[proven]
    solution.status[good] = OPTIMAL
    solution.status[units[~proven]] = FAILED
    return units[~proven]


def _pass_model(
    A: sp.csc_matrix,
    cost: np.ndarray,
    col_lower: np.ndarray,
    col_upper: np.ndarray,
    row_lower: np.ndarray,
    row_upper: np.ndarray,
    threads: int,
    integrality: np.ndarray | None = None,
    into: highspy.Highs | None = None,
) -> highspy.Highs:
    """A silent HiGHS instance (presolve off) holding ``min cost . x`` s.t.
    ``row_lower <= A x <= row_upper``, ``col_lower <= x <= col_upper``; or
    ``into``, with its options kept, holding that model instead of its own."""
    if into is None:
        swallow_highs_banner()
        highs = highspy.Highs()
        highs.setOptionValue("output_flag", False)
        highs.setOptionValue("threads", threads)
        highs.setOptionValue("presolve", "off")
    else:
        highs = into
    if integrality is None:
        integrality = np.full(A.shape[1], int(highspy.HighsVarType.kContinuous), dtype=np.int32)
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
    if status == highspy.HighsStatus.kError:  # kWarning: e.g. entries below 1e-9 dropped, as they may be
        raise SolverError(
            f"HiGHS refused a layer's LP ({A.shape[0]} rows, {A.shape[1]} columns; status {status}). "
            "Check that the batch and the weights are of a sane scale (e.g. |x| < 1e6)."
        )
    return highs
