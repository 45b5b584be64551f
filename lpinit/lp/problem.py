"""The per-unit LPs of ``lp_initialize``, written out once; their statuses
and solution; and the reduction that the fast path solves.

The LP
------
For one layer (weights ``W``: k x d_in, bias ``b``: k) and its input ``H`` on
a batch (n x d_in), unit j has pre-activations ``z = H w_j + b_j`` and gets
a change ``(d, e)`` of its weights and bias from this LP::

    minimize    C sum_i s_i + lambda (sum_k |d_k| / rho_w + |e| / rho_b)
    over        d (d_in numbers), e, s_1 ... s_n >= 0
    subject to  z_i + H_i . d + e + s_i >= m     for i in A_j (rows to be active)
                z_i + H_i . d + e - s_i <= -m    for i in I_j (rows to be inactive)
                |d_k| <= rho_w,  |e| <= rho_b
                hbar . d + e = 0                 (anchor="mean" only)

where ``s_i`` is how far row i misses its side of the margin ``m``. The options
of ``lp_initialize`` pick the terms:

- *Plain* (the default): every row is to be active (``A_j`` = all, ``I_j``
  empty), ``C = 1``, ``lambda = 0``: the LP relaxation of "as few
  pre-activations below the margin as possible".
- ``l1=lam``: ``lambda = lam`` (plain rows, ``C = 1``). Among (near-)optimal
  changes the smallest one wins, measured in units of the box.
- ``anchor="mean"``: the equality ``hbar . d + e = 0`` with ``hbar`` the batch
  mean of ``H``: the unit's batch-mean pre-activation cannot move, so fewer
  zeros can only come from reshaping the distribution of ``z``.
- ``target_active=q``: ``A_j`` are the ``ceil(q n)`` samples with the largest
  ``z_i`` (ties: lower index first), ``I_j`` the rest, except that samples
  with the same input row (e.g. blank image patches), which no change can
  tell apart, all go to the side that most of them fall on; ``lambda = 1`` and
  ``C = 2 N / m``, with ``N`` the number of change variables (``d_in``, plus one
  for a bias). Why that ``C``: any change inside the box costs at most ``N``
  in the ``lambda`` term, so if some change meets every target with margin
  ``m``, the optimum has ``C sum_i s_i <= N``, that is ``sum_i s_i <= m / 2``:
  every row of ``A_j`` stays ``>= m / 2 > 0`` and every row of ``I_j``
  ``<= -m / 2 < 0``. The targets are met whenever the box allows it, and
  the smallest change that meets them wins. (It needs ``m > 0``.)
- ``coverage=k`` (with ``target_active``): the sets ``A_j`` of all units are
  chosen together, each still of ``ceil(q n)`` rows, so that every row is
  active in at least ``k`` units (``lpinit.lp.coverage``); the LPs are then
  those of ``target_active`` with these sets.

The units of a layer share ``H`` and nothing else, so the layer splits into k
independent LPs that differ only in their row bounds (``m - z`` or
``-m - z``). The optimum is seldom unique; the solvers may return different
changes with the same objective.

Exact mode (plain LP only) solves the mixed-integer program that the LP
relaxes: one binary ``u_i`` per sample, minimize ``sum_i u_i``, the number of
pre-activations below the margin, subject to ``H_i d + e + M_i u_i >= r_i``
with ``r = m - z`` and ``M_i = max(0, r_i + rho_w |H_i|_1 + rho_b)``, the
largest violation the box allows. It is exponential in the worst case: meant
for layers of a few hundred samples and units at most, to measure how far the
LP is from the true minimum.

The reduction of the plain LP
-----------------------------
The fast path (``lpinit.lp.highs``) solves the plain LP in a smaller form with
the same optimum:

1. *Dual fixing.* Raising ``e``, or a weight whose input column is >= 0 on
   every sample, never lowers a pre-activation and costs nothing, so some
   optimum has it at its upper bound (a column <= 0: lower bound; a column
   of zeros: no change). Only weights of mixed-sign columns stay in the LP.
   After a ReLU every column is >= 0, so hidden layers get the closed form
   ``d = rho_w, e = rho_b`` and no LP at all: the plain LP is then a uniform
   shift, which is why the other options exist. (Raising a pre-activation
   never adds to the count either, so the same fixing holds in exact mode.)
2. *Shift* (all forms). ``H`` is written ``S + 1 c^T``, ``c`` the most common
   value of each column: normalized MNIST is dense only because its
   background pixels all equal -0.4242. One free variable ``t = c . d``
   turns row i into ``S_i d + t + ...``, with far fewer nonzeros.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    active: np.ndarray | None = None  # (n, k) bool: the target rows (activity targets only)

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


def is_plain(l1: float, anchor: object, target_active: float | None) -> bool:
    """Whether options, as ``Formulation`` or ``lp_initialize`` spells them
    (``anchor`` a bool, or None or ``"mean"``), pose the plain LP; every other
    LP is the general form."""
    return not anchor and not l1 and target_active is None


@dataclass(frozen=True)
class Formulation:
    """How every unit's LP of a layer is posed (see the module docstring), in
    absolute units: bounds, margin and ``l1`` in the layer's own scale."""

    in_features: int  # d_in
    weight_bound: float  # rho_w
    bias_bound: float  # rho_b (0 for a layer without bias)
    margin: float  # m
    l1: float = 0.0  # lambda of the plain LP
    anchor: bool = False
    target_active: float | None = None  # q
    coverage: int | None = None  # k: every row active in >= k units (target_active only; lpinit.lp.coverage)
    row_scale: float = 1.0  # the rows were divided by this (``scaled``); shortfalls are in those units

    def scaled(self, scale: float) -> Formulation:
        """The same LPs with every row divided by ``scale > 0`` (the input
        ``H``, the pre-activations, the margin and the bias bound): the same
        optimal ``d``, the bias change divided by ``scale``, the same objective
        (``C`` is ``scale`` times as large without targets; ``2 N / m`` keeps
        the objective as it is with them)."""
        return replace(
            self, bias_bound=self.bias_bound / scale, margin=self.margin / scale, row_scale=self.row_scale * scale
        )

    @property
    def plain(self) -> bool:
        """The plain LP, which dual fixing reduces (module docstring)."""
        return is_plain(self.l1, self.anchor, self.target_active)

    @property
    def change_cost(self) -> float:
        """``lambda``: the weight of the change in the objective."""
        return 1.0 if self.target_active is not None else self.l1

    def weight_cost(self) -> float:
        """Objective per unit of ``|d_k|`` (0 where the box fixes ``d`` at 0)."""
        return self.change_cost / self.weight_bound if self.weight_bound > 0 else 0.0

    def bias_cost(self) -> float:
        """Objective per unit of ``|e|`` (0 where the box fixes ``e`` at 0)."""
        return self.change_cost / self.bias_bound if self.bias_bound > 0 else 0.0

    def shortfall_cost(self) -> float:
        """``C``: 1, or ``2 N / m`` with activity targets (module docstring);
        without targets times ``row_scale``, the unit of the shortfalls."""
        if self.target_active is None:
            return self.row_scale
        changeable = self.in_features * (self.weight_bound > 0) + (self.bias_bound > 0)
        return 2.0 * max(changeable, 1) / self.margin

    def active_rows(self, Z: np.ndarray, H: np.ndarray | None = None) -> np.ndarray:
        """``A_j`` for every unit: (n, k) bool, True where row i of unit j is to
        be active. Plain rows: all True; targets: the ``ceil(q n)`` largest
        pre-activations of each column, or with ``coverage`` the sets of the
        set LP (``lpinit.lp.coverage``); identical rows of the input ``H``
        (when given) kept on one side."""
        if self.target_active is None:
            return np.ones(Z.shape, dtype=bool)
        if self.coverage is None:
            return top_rows(Z, self.target_active, H)
        from lpinit.lp.coverage import cover_short_rows, covering_rows

        active = covering_rows(Z, self.target_active, self.coverage)
        if H is None:
            return active
        return cover_short_rows(identical_rows_together(active, H), Z, self.coverage)

    def row_bounds(self, Z: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds on ``H_i d + e + s_i^+ - s_i^-`` per row and
        unit: ``[m - z, inf)`` on active rows, ``(-inf, -m - z]`` on the others."""
        lower = np.where(active, self.margin - Z, -np.inf)
        upper = np.where(active, np.inf, -self.margin - Z)
        return lower, upper

    def objective(self, H: np.ndarray, Z: np.ndarray, D: np.ndarray, e: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Each unit's objective at the changes ``D`` (k, d_in) and ``e`` (k,),
        computed from scratch: an oracle for any solver's answer."""
        Z_new = Z + H @ D.T + e
        shortfall = np.where(active, self.margin - Z_new, Z_new + self.margin)
        total = self.shortfall_cost() * np.maximum(shortfall, 0.0).sum(axis=0)
        return total + self.weight_cost() * np.abs(D).sum(axis=1) + self.bias_cost() * np.abs(e)

    def dual_bound(
        self,
        H: np.ndarray,
        Z: np.ndarray,
        active: np.ndarray,
        Y: np.ndarray,
        mu: np.ndarray | None = None,
    ) -> np.ndarray:
        """A lower bound on each unit's optimum from any row multipliers ``Y``
        (n, k) and anchor multipliers ``mu`` (k,): the Lagrangian dual function

        ``g = sum_A y_i (m - z_i) + sum_I y_i (-m - z_i)
        - rho_w sum_k max(0, |(H^T y + mu hbar)_k| - lambda / rho_w)
        - rho_b max(0, |sum_i y_i + mu| - lambda / rho_b)``,

        with ``y`` clipped into ``[0, C]`` on active rows and ``[-C, 0]`` on the
        others (where the slacks keep the dual bounded)."""
        C = self.shortfall_cost()
        Y = np.where(active, np.clip(Y, 0.0, C), np.clip(Y, -C, 0.0))
        mu = np.zeros(Y.shape[1]) if mu is None or not self.anchor else mu
        side = np.where(active, self.margin - Z, -self.margin - Z)  # each row's finite bound
        value = (Y * side).sum(axis=0)
        gradient = H.T @ Y + np.outer(H.mean(axis=0), mu)  # (d_in, k)
        value -= self.weight_bound * np.maximum(np.abs(gradient) - self.weight_cost(), 0.0).sum(axis=0)
        value -= self.bias_bound * np.maximum(np.abs(Y.sum(axis=0) + mu) - self.bias_cost(), 0.0)
        return value


def top_rows(Z: np.ndarray, q: float, H: np.ndarray | None = None) -> np.ndarray:
    """(n, k) bool: the ``ceil(q n)`` largest entries of each column of ``Z``
    (ties: the lower row index first). With the input ``H`` (n, d_in), rows
    of ``H`` that are identical get the same ``z`` from any weights, so no LP
    can split them: each such group takes the side most of it falls on
    (half and half: active), and a column's count may move off ``ceil(q n)``."""
    n = Z.shape[0]
    count = math.ceil(q * n - 1e-9)  # q n is often an integer in floating point error
    order = np.argsort(-Z, axis=0, kind="stable")
    active = np.zeros(Z.shape, dtype=bool)
    np.put_along_axis(active, order[:count], True, axis=0)
    return active if H is None else identical_rows_together(active, H)


def identical_rows_together(active: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``active`` (n, k) with each group of identical rows of ``H`` moved to
    the side most of the group is on (half and half: active)."""
    n = H.shape[0]
    if n < 2:
        return active
    # each row as one opaque value, so that np.unique sorts n values rather than rows; + 0.0 makes -0.0 into 0.0
    rows = np.ascontiguousarray(H + 0.0)
    _, group = np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))), return_inverse=True)
    group = group.reshape(-1)
    size = np.bincount(group)
    repeated = size[group] > 1
    if not repeated.any():
        return active
    members = sp.csr_matrix((np.ones(n), (group, np.arange(n))), shape=(len(size), n))
    active_in_group = np.asarray(members @ active.astype(float))  # (groups, k)
    majority = 2 * active_in_group >= size[:, None]
    active = active.copy()
    active[repeated] = majority[group[repeated]]
    return active
