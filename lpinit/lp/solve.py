"""``solve_layer``: check the input, then solve one layer's per-unit LPs
(``lpinit.lp.problem``) with the fast path or the cvxpy reference."""

from __future__ import annotations

import time
import warnings

import numpy as np
from joblib import cpu_count
from tqdm.auto import tqdm

from lpinit import parallel
from lpinit.lp.coverage import check_coverage
from lpinit.lp.highs import GeneralLPs, LayerLPs, solve_general, solve_highs
from lpinit.lp.problem import LayerSolution, ReducedLP
from lpinit.lp.reference import solve_cvxpy, solve_cvxpy_general
from lpinit.validation import (
    check_choice,
    check_finite,
    check_formulation,
    check_layer_arrays,
    check_n_jobs,
    check_non_negative,
)

SOLVERS = ("highs", "cvxpy")


def capped_n_jobs(n_jobs: int | None) -> int | None:
    """``n_jobs``, at most the number of cores (with a warning): more processes
    than cores only take turns."""
    cores = cpu_count()
    if n_jobs is not None and n_jobs > cores:
        warnings.warn(f"n_jobs={n_jobs} is more than the {cores} cores here; using {cores}.", stacklevel=3)
        return cores
    return n_jobs


def progress_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for lpinit's ``progress`` flag: ``None`` shows a bar
    only on an interactive terminal, so scripts and logs stay quiet."""
    return None if progress is None else not progress


def solve_layer(
    H: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    *,
    weight_bound: float,
    bias_bound: float,
    margin: float,
    solver: str = "highs",
    n_jobs: int | None = None,
    time_limit_s: float | None = None,
    exact: bool = False,
    l1: float = 0.0,
    anchor: bool = False,
    target_active: float | None = None,
    coverage: int | None = None,
    warm_start: bool | None = None,
    progress: bool | None = False,
    desc: str | None = None,
) -> LayerSolution:
    """Solve the LP (or, with ``exact``, the MIP) of every unit of one layer,
    as written in ``lpinit.lp.problem`` (all bounds absolute).

    Args:
        H: layer input on the batch, (n, d_in).
        W: weights, (k, d_in).
        b: biases, (k,).
        weight_bound: ``rho_w``, the most any weight may move (absolute).
        bias_bound: ``rho_b``, the most any bias may move (absolute).
        margin: ``m``, the pre-activation level to reach (absolute).
        solver: ``"highs"`` (fast path) or ``"cvxpy"`` (reference).
        n_jobs: processes for the ``"highs"`` path: this one and ``n_jobs - 1``
            worker processes. ``None``: up to one per core, using the workers
            that are up, or starting them only when the layer's LPs repay it
            (see ``lpinit.parallel``; ``start_workers`` starts them ahead).
            The cvxpy path runs in this process.
        time_limit_s: per-unit limit; a unit that hits it keeps its weights.
        exact: solve the mixed-integer program instead (small layers, plain LP only).
        l1: ``lambda``, the weight of the change ``sum_k |d_k| / rho_w + |e| / rho_b``.
        anchor: keep each unit's batch-mean pre-activation (``hbar . d + e = 0``).
        target_active: ``q`` in (0, 1): make each unit active on its ``ceil(q n)``
            samples of largest pre-activation and inactive on the others,
            with the smallest change (needs ``margin > 0``).
        coverage: with ``target_active``, choose all units' target rows
            together so that every row is active in at least ``coverage``
            units (``lpinit.lp.coverage``).
        warm_start: ``"highs"`` LP only: start each unit from the previous
            unit's optimal basis instead of a crash start (for the plain LP,
            units ordered so that neighbours have similar right-hand sides).
            ``None`` (the same as ``False``): a start of the unit's own (the
            crash start; the slack basis for the ``l1`` and target LPs
            without the anchor), which measured faster (README, benchmarks).
        progress: show a progress bar over units (``None``: only on an
            interactive terminal).
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
    H, W, b = check_layer_arrays(H, W, b)
    weight_bound = check_non_negative(weight_bound, "weight_bound")
    bias_bound = check_non_negative(bias_bound, "bias_bound")
    margin = check_finite(margin, "margin")
    check_choice(solver, SOLVERS, "solver")
    n_jobs = capped_n_jobs(check_n_jobs(n_jobs))
    if time_limit_s is not None:
        time_limit_s = check_non_negative(time_limit_s, "time_limit_s")
    formulation = check_formulation(H.shape[1], weight_bound, bias_bound, margin, l1, anchor, target_active, coverage)
    if formulation.coverage is not None:
        assert formulation.target_active is not None
        check_coverage(formulation.coverage, W.shape[0], H.shape[0], formulation.target_active, desc or "layer")
    if exact and not formulation.plain:
        raise ValueError(
            f"exact=True solves the plain LP's mixed-integer form only, got l1={l1!r}, anchor={anchor!r}, "
            f"target_active={target_active!r}. Drop exact=True, or those options."
        )
    if warm_start and (exact or solver != "highs"):
        raise ValueError(
            f"warm_start applies to the LP of the 'highs' solver only, got solver={solver!r}, "
            f"exact={exact!r}. Drop warm_start=True."
        )

    # numpy's BLAS on one thread: after each call its idle threads spin for a
    # while, on the cores that HiGHS and the worker processes need
    with (
        parallel.one_thread(),
        tqdm(total=W.shape[0], desc=desc, unit="unit", disable=progress_disabled(progress)) as bar,
    ):
        Z = H @ W.T + b  # column j: unit j's pre-activations
        if not formulation.plain:
            active = formulation.active_rows(Z, H)
            if solver == "cvxpy":
                solution = solve_cvxpy_general(H, Z, formulation, active, time_limit_s=time_limit_s, tick=bar.update)
            else:
                # HiGHS's tolerances are absolute: with pre-activations in the millions (deep in a
                # narrow net) its answers failed the duality check, so such rows go at unit scale
                scale = row_scale(Z)
                lps = GeneralLPs.from_layer(
                    H / scale, Z / scale, formulation.scaled(scale), hot_start=bool(warm_start), active=active
                )
                solution = solve_general(lps, n_jobs=n_jobs, time_limit_s=time_limit_s, tick=bar.update)
                solution.delta_bias *= scale
            solution.active = active if formulation.target_active is not None else None
        elif solver == "cvxpy":
            solution = solve_cvxpy(
                H, margin - Z, weight_bound, bias_bound, exact=exact, time_limit_s=time_limit_s, tick=bar.update
            )
        else:
            plain = LayerLPs(ReducedLP.from_input(H, weight_bound, bias_bound), margin - Z)
            solution = solve_highs(
                plain,
                n_jobs=n_jobs,
                exact=exact,
                warm_start=bool(warm_start),
                time_limit_s=time_limit_s,
                tick=bar.update,
            )
    solution.wall_time_s = time.perf_counter() - start
    return solution


UNIT_SCALE_RANGE = 2.0**6
"""Rows whose scale (the pre-activations' RMS) is within this factor of 1 go
to HiGHS as they are."""


def row_scale(Z: np.ndarray) -> float:
    """What the rows of a layer's LPs are divided by for HiGHS: the power of 2
    nearest the root mean square of the pre-activations ``Z`` (so that the
    division is exact), or 1 where that is within ``UNIT_SCALE_RANGE`` of 1,
    0 or not finite."""
    peak = float(np.max(np.abs(Z))) if Z.size else 0.0
    rms = peak * float(np.sqrt(np.mean(np.square(Z / peak)))) if 0.0 < peak < np.inf else peak
    if not np.isfinite(rms) or rms == 0.0 or 1.0 / UNIT_SCALE_RANGE <= rms <= UNIT_SCALE_RANGE:
        return 1.0
    return float(2.0 ** np.round(np.log2(rms)))


def start_workers(n_jobs: int | None = None) -> None:
    """Start the worker processes of the ``"highs"`` path now, without
    waiting: ``n_jobs - 1`` of them (``None``: one per core, less this
    process). Later solves, ``n_jobs=None`` included, use them at once instead
    of starting workers only for large layers. They stop after
    ``lpinit.parallel.IDLE_WORKER_TIMEOUT_S`` idle seconds, or at ``stop_workers()``.
    """
    n_jobs = capped_n_jobs(check_n_jobs(n_jobs))
    parallel.start_pool((cpu_count() if n_jobs is None else n_jobs) - 1, preload=("lpinit.lp.highs",))


def stop_workers() -> None:
    """Stop the worker processes of the ``"highs"`` path now; later solves
    start them again when they pay."""
    parallel.stop_pool()
