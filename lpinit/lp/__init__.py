"""The per-unit LPs of ``lp_initialize`` and their two solvers.

- ``problem``: the LP, written out once; statuses, ``LayerSolution``, and the
  reduction the fast path solves;
- ``highs``: the fast path (highspy), LP and MIP;
- ``reference``: the readable cvxpy reference;
- ``solve``: ``solve_layer``, which checks its input and picks a solver.
"""

from lpinit.lp.problem import FAILED, OPTIMAL, STATUSES, TIME_LIMIT, LayerSolution
from lpinit.lp.solve import SOLVERS, solve_layer, start_workers, stop_workers

__all__ = [
    "FAILED",
    "OPTIMAL",
    "SOLVERS",
    "STATUSES",
    "TIME_LIMIT",
    "LayerSolution",
    "solve_layer",
    "start_workers",
    "stop_workers",
]
