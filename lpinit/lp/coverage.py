"""Activity targets chosen jointly for a layer: every row covered by ``k`` units.

Per-unit targets (``top_rows``) make each unit active on its ``Q = ceil(q n)``
rows of largest pre-activation, each unit on its own; with small ``q`` or a
narrow layer some rows then get no active unit at all (a sample that the
layer passes nothing of). ``coverage=k`` picks the sets ``A_j`` of all units
at once, by the set LP::

    maximize    sum_ij a_ij z_ij / sigma_j
    over        0 <= a_ij <= 1
    subject to  sum_i a_ij = Q     for every unit j   (each active on Q rows)
                sum_j a_ij >= k    for every row i    (each row active in >= k units)

with ``sigma_j`` the spread (standard deviation) of unit j's pre-activations,
so that the units' scores are comparable. Each variable appears in one unit
row and one sample row: the constraint matrix is the incidence matrix of a
bipartite graph, totally unimodular, and with integer ``Q`` and ``k`` every
vertex is 0/1. Simplex returns a vertex, so ``A_j = {i : a_ij = 1}``. Without
the row constraints the optimum is each unit's top ``Q`` rows (``top_rows``);
the row constraints move as few, and as little-preferred, entries as the
objective allows.

Rows of the input that are identical (e.g. blank image patches) get the same
pre-activations from any weights, so they are then put on one side, the one
most of the group is on (``identical_rows_together``), and a row left active
in fewer than ``k`` units is made active in the ``k`` units where it scores
highest (``cover_short_rows``): such a unit's count may end above ``Q``.
"""

from __future__ import annotations

import math

import highspy
import numpy as np
import scipy.sparse as sp

from lpinit.lp.highs import _pass_model

INTEGRALITY_TOLERANCE = 1e-9
"""How far from 0 or 1 a vertex value may be (HiGHS's primal tolerance is 1e-7
on the constraints; a vertex of a totally unimodular LP is exact)."""


def check_coverage(k: int, units: int, rows: int, q: float, name: str) -> None:
    """Raise a ``ValueError`` unless ``k`` units per row can be active when
    each of ``units`` units is active on ``ceil(q rows)`` rows."""
    active_each = math.ceil(q * rows - 1e-9)
    most = min(units, units * active_each // rows)
    if k <= most:
        return
    setting = f"its {units} units, each active on {active_each} of {rows} rows (target_active={q:g})"
    if k > units:
        raise ValueError(
            f"coverage={k} asks every row of layer {name!r} to be active in {k} units, but it has {units} units. "
            f"Lower coverage to {most} or less."
        )
    enough = math.ceil(rows * k / units) / rows  # the least q with units * ceil(q rows) >= rows * k
    raise ValueError(
        f"coverage={k} asks every row of layer {name!r} to be active in {k} units, but {setting}, can give "
        f"every row at most {most}. Lower coverage to {most} or less, or raise target_active to {enough:.3g} "
        "or more."
        if most > 0
        else f"coverage={k} cannot hold on layer {name!r}: {setting}, cannot cover every row even once. Raise "
        f"target_active to {enough:.3g} or more, or drop coverage."
    )


def _scores(Z: np.ndarray) -> np.ndarray:
    """``z_ij / sigma_j``: each unit's pre-activations in units of its spread."""
    spread = Z.std(axis=0)
    return Z / np.where(spread > 0, spread, 1.0)


def cover_short_rows(active: np.ndarray, Z: np.ndarray, k: int) -> np.ndarray:
    """``active`` with every row active in fewer than ``k`` units made active
    in the ``k`` units where it scores highest (identical rows alike, since
    their pre-activations are equal)."""
    short = active.sum(axis=1) < k
    if not short.any():
        return active
    active = active.copy()
    best = np.argsort(-_scores(Z)[short], axis=1, kind="stable")[:, :k]
    rows = np.flatnonzero(short)
    active[rows[:, None], best] = True
    return active


def covering_rows(Z: np.ndarray, q: float, k: int, name: str = "layer") -> np.ndarray:
    """(n, units) bool: the rows each unit is to be active on, every unit on
    ``ceil(q n)`` rows and every row in at least ``k`` units, from the set LP
    (module docstring). ``Z`` holds the pre-activations, one column per unit."""
    n, units = Z.shape
    check_coverage(k, units, n, q, name)
    count = math.ceil(q * n - 1e-9)
    score = _scores(Z)
    entries = n * units  # column i + n j is a_ij: unit-major, as Z.T is laid out
    columns = np.arange(entries)
    unit_row = columns // n
    sample_row = units + columns % n
    A = sp.csc_matrix(
        (np.ones(2 * entries), (np.r_[unit_row, sample_row], np.r_[columns, columns])), shape=(units + n, entries)
    )
    cost = -score.T.reshape(-1)  # HiGHS minimizes
    row_lower = np.r_[np.full(units, float(count)), np.full(n, float(k))]
    row_upper = np.r_[np.full(units, float(count)), np.full(n, highspy.kHighsInf)]
    # threads=0: the count of the process's HiGHS scheduler, whatever it started with
    highs = _pass_model(A, cost, np.zeros(entries), np.ones(entries), row_lower, row_upper, threads=0)
    highs.setOptionValue("solver", "simplex")  # a vertex, hence 0/1 (an interior point answer need not be)
    highs.run()
    if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        status = highs.modelStatusToString(highs.getModelStatus())
        raise RuntimeError(
            f"HiGHS did not solve the coverage set LP of layer {name!r} ({status}), which check_coverage "
            "found feasible: a bug in lpinit, please report it."
        )
    a = np.asarray(highs.getSolution().col_value).reshape(units, n).T
    if np.abs(a - np.round(a)).max() > INTEGRALITY_TOLERANCE:
        raise RuntimeError(f"The coverage set LP of layer {name!r} returned a fractional vertex: a bug in lpinit.")
    return a > 0.5
