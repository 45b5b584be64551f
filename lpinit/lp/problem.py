"""The per-unit LP of ``lp_initialize``, its statuses and solution, and the
reduction that the fast path solves.

The LP
------
For one ``nn.Linear`` layer (weights ``W``: k x d_in, bias ``b``: k) and its
input ``H`` on a batch (n x d_in), unit j gets the LP

.. math::
    \\min_{d, e, s} \\sum_i s_i \\quad \\text{s.t.}\\quad
    H_i (w_j + d) + b_j + e + s_i \\ge m,\\; s \\ge 0,\\;
    \\|d\\|_\\infty \\le \\rho_w,\\; |e| \\le \\rho_b

the LP relaxation of "as few pre-activations below the margin ``m`` as
possible". With ``r = m - (H w_j + b_j)`` the constraints read
``H d + e + s >= r``: all units of a layer share the matrix ``[H, 1, I]`` and
differ only in the row bounds ``r``, and they are independent of each other.

The optimum is seldom unique: most units can meet every margin inside the
box, and then any change that does so is optimal. The two solvers may return
different changes with the same objective.

Exact mode solves the mixed-integer program that the LP relaxes: one binary
``z_i`` per sample, minimize ``sum_i z_i``, the number of pre-activations
below the margin, subject to ``H_i d + e + M_i z_i >= r_i`` with
``M_i = max(0, r_i + rho_w |H_i|_1 + rho_b)``, the largest violation the box
allows. It is exponential in the worst case: meant for layers of a few
hundred samples and units at most, to measure how far the LP is from the true
minimum.

The reduction
-------------
The fast path (``lpinit.lp.highs``) solves a smaller LP with the same optimum:

1. *Dual fixing.* Raising ``e``, or a weight whose input column is >= 0 on
   every sample, never lowers a pre-activation, so some optimum has it at its
   upper bound (a column <= 0: lower bound; a column of zeros: no change).
   Only weights of mixed-sign columns stay in the LP. After a ReLU every
   column is >= 0, so hidden layers get the closed form ``d = rho_w,
   e = rho_b`` and no LP at all. (Raising a pre-activation never adds to the
   count either, so the same fixing holds in exact mode.)
2. *Shift.* The rest of ``H`` is written ``S + 1 c^T``, ``c`` the most common
   value of each column: normalized MNIST is dense only because its
   background pixels all equal -0.4242. One free variable ``t = c . d`` turns
   row i into ``S_i d + t + s_i >= r_i``, with far fewer nonzeros.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

OPTIMAL = "optimal"
TIME_LIMIT = "time_limit"
FAILED = "failed"
STATUSES = (OPTIMAL, TIME_LIMIT, FAILED)
"""A unit's status: solved and checked / stopped by a limit / anything else.
Only ``OPTIMAL`` units get a change; the others keep their weights."""

GAP_TOLERANCE = 1e-6
"""A HiGHS answer counts as optimal when its objective exceeds the duality
bound by at most this, relative to the objective at ``d = 0, e = 0``."""

VIOLATION_TOLERANCE = 1e-6
"""Exact mode: a row is below the margin when it misses it by more than this
(HiGHS's MIP feasibility tolerance), relative to ``1 + |r_i|``."""


def status_group(status: Any, groups: Mapping[Any, str]) -> str:
    """The unit status (one of ``STATUSES``) of a solver's own status."""
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
    processes: int = 1  # processes that solved this layer: this one and its worker processes

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


@dataclass(frozen=True)
class ReducedLP:
    """A layer's LP after dual fixing and the shift, shared by its units.

    The weights of sign-constant input columns and the bias are fixed (see the
    module docstring); ``offset`` is what they add to every pre-activation.
    The LP keeps the weights ``free``, whose columns ``H[:, free] = S + 1 c^T``.

    The methods take one unit (vectors) or several (one column per unit):
    ``r`` is a unit's right-hand side, ``d`` the change of its free weights.
    """

    free: np.ndarray  # (d_in,) bool: weights left to the LP
    fixed_delta: np.ndarray  # (d_in,) change of each fixed weight; 0 where free
    bias_delta: float  # the bias always rises by its bound
    offset: np.ndarray  # (n,) H @ fixed_delta + bias_delta
    S: np.ndarray | sp.csr_matrix  # (n, free.sum()), sparse (a dense copy serves the checks of whole chunks)
    c: np.ndarray  # (free.sum(),) column shift; zeros when the shift does not pay
    row_norm1: np.ndarray  # (n,) |H_i[free]|_1, for the big-M of exact mode
    weight_bound: float
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # tells cached HiGHS instances apart

    @classmethod
    def from_input(cls, H: np.ndarray, weight_bound: float, bias_bound: float) -> ReducedLP:
        rises, falls = (H >= 0).all(axis=0), (H <= 0).all(axis=0)
        fixed_delta = weight_bound * (rises.astype(float) - falls)  # 0 for a column of zeros
        free = ~(rises | falls)
        S, c = split_constant(H[:, free])
        return cls(
            free=np.asarray(free),
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
        rows, columns = self.S.shape
        return rows, columns

    @property
    def shifted(self) -> bool:
        return bool(self.c.any())

    def rhs_left(self, r: np.ndarray) -> np.ndarray:
        """``r`` less what the fixed variables add: the right-hand side of the LP left."""
        return r - (self.offset if r.ndim == 1 else self.offset[:, None])

    def shortfall(self, r: np.ndarray, d: np.ndarray) -> np.ndarray:
        """How far each pre-activation stays below the margin after the change."""
        return self.rhs_left(r) - self.S @ d - self.c @ d

    def dual_bound(self, r: np.ndarray, y: np.ndarray) -> np.ndarray:
        """A lower bound on the LP optimum from any ``y`` in ``[0, 1]^n``: the
        dual function ``rhs_left(r).y - rho_w |H_free^T y|_1`` of the LP left
        after dual fixing, which has the same optimum."""
        y = np.clip(y, 0.0, 1.0)
        H_free_y = self.S.T @ y + np.multiply.outer(self.c, y.sum(axis=0))
        return (self.rhs_left(r) * y).sum(axis=0) - self.weight_bound * np.abs(H_free_y).sum(axis=0)

    def clip(self, d: np.ndarray) -> np.ndarray:
        """``d`` moved into the box (solvers may overshoot it by their tolerance)."""
        return np.clip(d, -self.weight_bound, self.weight_bound)

    def full_delta(self, d: np.ndarray) -> np.ndarray:
        """The change of all weights, given the change ``d`` (units x free) of the free ones."""
        delta = np.tile(self.fixed_delta, (d.shape[0], 1))
        delta[:, self.free] = d
        return delta

    def closed_form(self, R: np.ndarray, exact: bool) -> LayerSolution:
        """Every unit's optimum when dual fixing leaves no weight free."""
        units = R.shape[1]
        solution = LayerSolution.empty(units, len(self.free))
        shortfall = self.rhs_left(R)
        solution.objective[:] = count_short(shortfall, R) if exact else np.maximum(shortfall, 0.0).sum(axis=0)
        solution.delta_weight[:] = self.fixed_delta
        solution.delta_bias[:] = self.bias_delta
        solution.status[:] = OPTIMAL
        return solution


def count_short(shortfall: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Rows below the margin (per column), up to the MIP's feasibility tolerance."""
    return (shortfall > VIOLATION_TOLERANCE * (1.0 + np.abs(r))).sum(axis=0)


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
    return sparse_rows(H - c), c


def sparse_rows(X: np.ndarray) -> sp.csr_matrix:
    """``X`` as a CSR matrix, built directly (scipy's own conversion of a dense
    array takes several times as long)."""
    nonzero = X != 0
    indptr = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))])
    return sp.csr_matrix((X[nonzero], np.nonzero(nonzero)[1], indptr), shape=X.shape)
