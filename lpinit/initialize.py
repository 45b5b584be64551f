"""``lp_initialize``: change each ReLU-fed layer's weights and biases by a
bounded amount, chosen by one LP per unit (``lpinit.lp.problem`` writes the LP
and its options out), so that the chosen pre-activations on a batch become
positive, the others not. A layer is a ``nn.Linear`` (a unit: an output
feature; a row: a sample) or a ``nn.Conv2d`` with ``groups=1`` (a unit: an
output channel; a row: a sample at one output position; ``lpinit.layer_rows``).

Layers are changed in forward order, each LP seeing the earlier layers as
already changed (``lpinit.layerwise``). The bounds and the margin are relative
to each layer's own scales:

- ``rho_w = radius * sqrt(3) * std(W)``: PyTorch's default init draws
  ``W ~ U(-a, a)`` with ``a = 1/sqrt(fan_in) = sqrt(3) std(W)``, so each weight
  moves by at most ``radius`` times the init's own range (``std`` over all
  the layer's weights, a Conv2d's kernel entries);
- ``rho_b = radius * std(Z)``, ``m = margin * std(Z)`` and ``lambda = l1 * std(Z)``,
  with ``Z = H W^T + b`` the layer's pre-activations on every row of the batch
  before the change: a bias, a margin and a shortfall live in the units of the
  pre-activation, not of the weights (a zero-initialized bias has no scale of
  its own).

A layer with more rows than ``max_rows`` (a Conv2d has samples x output
positions of them) gives its LPs a seeded sample of ``max_rows`` rows; its
activity targets (``target_active``) are then the top rows of that sample.
The report's zeros, margin counts and pre-activation statistics are over
every row of the batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lpinit.layerwise import RESCALE_MODES, LayerChange, LayerInput, adjust_layerwise
from lpinit.lp import SOLVERS, solve_layer
from lpinit.lp.coverage import check_coverage
from lpinit.lp.problem import LayerSolution, is_plain
from lpinit.validation import (
    check_choice,
    check_coverage_option,
    check_data_tensor,
    check_lp_options,
    check_max_rows,
    check_model,
    check_n_jobs,
    check_non_negative,
)

ANCHORS = ("mean",)
DEFAULTS: dict[str, Any] = {
    "radius": 3.0,
    "margin": 0.1,
    "rescale": "unit",
    "anchor": None,
    "l1": 0.0,
    "target_active": 0.5,
    "coverage": None,
}
"""lp_initialize's LP options by default: each unit active on the half of the
batch where it is largest, at its starting scale (README, "Safe defaults": the
dose-response runs they were chosen from)."""
PLAIN_LP: dict[str, Any] = {
    "radius": 0.1,
    "margin": 0.1,
    "rescale": None,
    "anchor": None,
    "l1": 0.0,
    "target_active": None,
    "coverage": None,
}
"""The LP as first posed (every pre-activation to reach the margin, no
rescaling): ``lp_initialize(model, batch, **PLAIN_LP)``."""
DEFAULT_MAX_ROWS = 2048
"""Rows per layer given to the LPs by default (README: how the LP objective,
the zeros on every row and the time change with it)."""
LARGEST_BOUND = 1e15
"""Bounds at or above HiGHS's infinity (1e20) would be read as no bound at all."""


@dataclass
class LayerReport:
    """What the LP did to one layer. Bounds, margin and ``l1`` are absolute, so
    anyone can re-solve the same LPs; counts are over (rows x units) of the
    batch, every row; pre-activation statistics are over every row, before
    the LP, after it, and after rescaling (the final parameters). The LP
    objective and ``met_target`` are over the ``lp_rows`` rows the LPs saw."""

    name: str
    in_features: int  # columns of each LP's H (a Conv2d: in_channels * kh * kw)
    out_features: int  # units (a Conv2d: output channels)
    batch_size: int  # samples
    rows: int  # rows of the batch: samples (x output positions, for a Conv2d)
    lp_rows: int  # rows each LP saw: rows, or a sample of max_rows of them
    weight_bound: float
    bias_bound: float
    margin: float
    l1: float
    below_margin_before: int
    below_margin_after: int
    zeros_before: int
    zeros_after: int
    preact_mean_before: float
    preact_rms_before: float
    preact_mean_lp: float
    preact_rms_lp: float
    preact_mean_after: float
    preact_rms_after: float
    lp_objective: float  # sum over units solved to optimality
    status_counts: dict[str, int]
    met_target: int | None  # units active exactly on their target rows (target_active only)
    covered: int | None  # LP rows active in >= coverage units after the LP (coverage only)
    iterations: int
    solver_time_s: float
    wall_time_s: float
    processes: int  # that solved the LPs: this one and its worker processes
    max_abs_weight_change: float
    relative_change: float  # ||[dW, db]||_F / ||[W, b]||_F, final parameters

    @property
    def elements(self) -> int:
        return self.rows * self.out_features


@dataclass
class LPInitReport:
    """Returned by ``lp_initialize``: settings, one ``LayerReport`` per layer,
    and the ReLU zeros of the whole network on the batch before and after."""

    radius: float
    margin: float
    solver: str
    exact: bool
    rescale: str | None = None
    anchor: str | None = None
    l1: float = 0.0
    target_active: float | None = None
    max_rows: int | None = None
    coverage: int | None = None
    layers: list[LayerReport] = field(default_factory=list)
    network_zeros_before: int = 0
    network_zeros_after: int = 0
    network_elements: int = 0
    wall_time_s: float = 0.0

    def status_counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for layer in self.layers:
            for status, count in layer.status_counts.items():
                total[status] = total.get(status, 0) + count
        return total

    def to_dict(self) -> dict:
        out = asdict(self)
        out["status_counts"] = self.status_counts()
        return out

    def __str__(self) -> str:
        target = self.target_active is not None
        covering = self.coverage is not None
        head = (
            f"{'layer':<8}{'shape':>10}{'rho_w':>10}{'rho_b':>9}{'margin':>9}{'LP obj':>11}"
            f"{'opt/tl/fail':>13}{'met target' if target else '':>12}{'covered' if covering else '':>14}"
            f"{'time s':>8}{'proc':>5}"
        )
        rows = ["The LPs", head]
        for r in self.layers:
            counts = r.status_counts
            statuses = f"{counts.get('optimal', 0)}/{counts.get('time_limit', 0)}/{counts.get('failed', 0)}"
            met = f"{r.met_target}/{r.out_features}" if r.met_target is not None else ""
            covered = f"{r.covered:,}/{r.lp_rows:,}" if r.covered is not None else ""
            rows.append(
                f"{r.name:<8}{f'{r.in_features}x{r.out_features}':>10}{r.weight_bound:>10.2e}"
                f"{r.bias_bound:>9.3f}{r.margin:>9.3f}{r.lp_objective:>11.2f}{statuses:>13}{met:>12}"
                f"{covered:>14}{r.wall_time_s:>8.2f}{r.processes:>5}"
            )
        rows += [
            "",
            "On the batch: zeros, pre-activations below the margin, pre-activation mean / RMS "
            "(before, after the LP, after rescaling)",
            f"{'layer':<8}{'zeros':>23}{'< margin':>23}{'before':>15}{'LP':>15}{'rescaled':>15}"
            f"{'max|dW|':>10}{'rel':>7}",
        ]
        for r in self.layers:
            rows.append(
                f"{r.name:<8}{f'{r.zeros_before:,} -> {r.zeros_after:,}':>23}"
                f"{f'{r.below_margin_before:,} -> {r.below_margin_after:,}':>23}"
                f"{f'{r.preact_mean_before:.2f} / {r.preact_rms_before:.2f}':>15}"
                f"{f'{r.preact_mean_lp:.2f} / {r.preact_rms_lp:.2f}':>15}"
                f"{f'{r.preact_mean_after:.2f} / {r.preact_rms_after:.2f}':>15}"
                f"{r.max_abs_weight_change:>10.2e}{r.relative_change:>7.3f}"
            )
        sampled = [r for r in self.layers if r.lp_rows < r.rows]
        if sampled:
            rows.append(
                f"LPs on a seeded sample of rows (max_rows={self.max_rows}): "
                + ", ".join(f"{r.name} {r.lp_rows:,} of {r.rows:,}" for r in sampled)
                + "; LP objective and met target on the sample, everything else on every row"
            )
        before = self.network_zeros_before / max(self.network_elements, 1)
        after = self.network_zeros_after / max(self.network_elements, 1)
        mode = "exact MIP" if self.exact else "LP"
        options = [f"radius {self.radius:g}", f"margin {self.margin:g}"]
        options += [f"l1 {self.l1:g}"] if self.l1 else []
        options += [f"anchor {self.anchor}"] if self.anchor else []
        options += [f"target_active {self.target_active:g}"] if target else []
        options += [f"coverage {self.coverage}"] if covering else []
        options += [f"rescale {self.rescale}"] if self.rescale else []
        rows.append(
            f"{mode} via {self.solver}, {', '.join(options)}: ReLU zeros on the batch "
            f"{self.network_zeros_before:,} -> {self.network_zeros_after:,} ({before:.4f} -> {after:.4f}) "
            f"in {self.wall_time_s:.1f} s"
        )
        return "\n".join(rows)


def lp_initialize(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    radius: float = 3.0,
    margin: float = 0.1,
    rescale: str | None = "unit",
    anchor: str | None = None,
    l1: float = 0.0,
    target_active: float | None = 0.5,
    coverage: int | None = None,
    layers: Sequence[str] | None = None,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    row_seed: int = 0,
    solver: str = "highs",
    n_jobs: int | None = None,
    time_limit_s: float | None = None,
    exact: bool = False,
    progress: bool | None = None,
) -> LPInitReport:
    """Change, in place, every Linear and Conv2d layer that feeds a ReLU by
    the LP of each unit (``lpinit.lp.problem``), layer after layer in forward
    order. A Conv2d's units are its output channels, its rows the (sample,
    output position) pairs of the batch (``lpinit.layer_rows``).

    The defaults (``DEFAULTS``: ``target_active=0.5, radius=3, margin=0.1,
    rescale="unit"``) make each unit active on the half of the batch where it
    is largest and inactive on the other half, by the smallest change, then
    restore its starting pre-activation RMS; no unit is left dead on the batch.
    They were chosen from the dose-response runs (README, "Safe defaults").
    ``lp_initialize(model, batch, **PLAIN_LP)`` is the LP as first posed.

    Every new weight is computed first and written at the end with
    ``param.copy_``, so parameter objects, dtype and device are kept, and if
    anything raises the model is exactly as before. A unit whose LP fails or
    hits the time limit keeps its weights and is counted in the report.

    Args:
        model: a network whose Linear or Conv2d (``groups=1``) layers feed
            ReLUs (modules, a reused module, or ``F.relu``/``torch.relu`` calls).
            A chosen Conv2d with ``groups > 1`` is an error that names the
            layers that can be changed.
        batch: float tensor of inputs (n, ...), on any device.
        radius: max change of each weight relative to ``sqrt(3) std(W)``, and
            of each bias relative to the spread ``std(Z)`` of the pre-activations.
        margin: the pre-activation level to reach, relative to ``std(Z)``.
        rescale: ``"unit"`` or ``"layer"``: after each layer's LP, scale each
            unit's (or the layer's) weights and bias by one positive factor so
            that the pre-activations keep their RMS on the batch
            (``lpinit.layerwise``); ``None``: no rescaling.
        anchor: ``"mean"``: each unit's batch-mean pre-activation may not move.
        l1: weight of the change in the objective, relative to ``std(Z)``.
        target_active: ``q`` in (0, 1): each unit is to be active on the
            ``ceil(q n)`` samples where it is largest and inactive on the
            others, with the smallest change (needs ``margin > 0``).
        coverage: ``k`` (with ``target_active``): choose the target rows of
            a layer's units together, each unit still active on ``ceil(q n)``
            rows, so that every row is active in at least ``k`` units
            (``lpinit.lp.coverage``); a layer too narrow for it is an error.
        layers: names of the layers to change (default: every ReLU-fed Linear
            and Conv2d).
        max_rows: the most rows of a layer that its LPs see: a layer with
            more gets a uniform sample of ``max_rows`` of them, drawn with
            ``row_seed`` (activity targets are then set on that sample). The
            report's counts and statistics are over every row. ``None``: all rows.
        row_seed: seeds the sample of rows (with the layer's name).
        solver: ``"highs"`` (highspy, parallel) or ``"cvxpy"`` (the readable
            reference; same optimum).
        n_jobs: processes for the highs path, this one included. ``None``: up
            to one per core; worker processes that are up are used, others are
            started only for layers whose LPs repay it (``start_workers``
            starts them ahead of time).
        time_limit_s: per-unit time limit in seconds.
        exact: solve the mixed-integer version (minimize the count below the
            margin) instead of the LP; plain LP and small layers only.
        progress: show a tqdm bar over the units of each layer (``None``:
            only on an interactive terminal).

    Returns:
        An ``LPInitReport``; ``print(report)`` shows its tables.

    Example:
        >>> import torch
        >>> from lpinit import lp_initialize, mlp
        >>> _ = torch.manual_seed(0)
        >>> model, batch = mlp([4, 8, 3]), torch.randn(32, 4)
        >>> report = lp_initialize(model, batch, target_active=0.75, radius=2.0, rescale="unit", n_jobs=1)
        >>> layer = report.layers[0]
        >>> layer.zeros_after, layer.met_target, round(layer.preact_rms_after, 6) == round(layer.preact_rms_before, 6)
        (64, 8, True)
    """
    check_model(model)
    check_data_tensor(batch, "batch", min_dim=2)
    radius = check_non_negative(radius, "radius")
    margin = check_non_negative(margin, "margin")
    check_choice(solver, SOLVERS, "solver")
    check_n_jobs(n_jobs)
    if rescale is not None:
        check_choice(rescale, RESCALE_MODES, "rescale")
    if anchor is not None:
        check_choice(anchor, ANCHORS, "anchor")
    if time_limit_s is not None:
        time_limit_s = check_non_negative(time_limit_s, "time_limit_s")
    if exact and (not is_plain(l1, anchor, target_active) or coverage is not None):
        raise ValueError(
            f"exact=True solves the plain LP's mixed-integer form only, got l1={l1!r}, anchor={anchor!r}, "
            f"target_active={target_active!r}, coverage={coverage!r} (target_active=0.5 is the default). Pass "
            "target_active=None (and no l1, anchor or coverage) with exact=True, or drop exact=True."
        )
    l1, _, target_active = check_lp_options(margin, l1, False, target_active)
    coverage = check_coverage_option(coverage, target_active)
    max_rows = check_max_rows(max_rows)

    start = time.perf_counter()

    def solve(layer: LayerInput) -> tuple[np.ndarray, np.ndarray, tuple[LayerSolution, dict[str, Any]]]:
        Z = layer.Z_all
        spread = float(Z.std())
        if spread == 0.0 and target_active is not None:
            raise ValueError(
                f"Layer {layer.name!r} has the same pre-activation on every row of the batch (std 0), so its "
                f"margin and bias box, relative to that spread, are 0 and target_active={target_active:g} has no "
                "rows to rank. Its input is constant on the batch: often an earlier layer is zero on every "
                "sample (dead). Pass target_active=None for this model, or start from an init that keeps every "
                "layer alive on the batch."
            )
        bounds: dict[str, float] = {
            "weight_bound": radius * math.sqrt(3) * float(layer.W.std()),
            "bias_bound": radius * spread if layer.has_bias else 0.0,
            "margin": margin * spread,
        }
        for key, value in bounds.items():
            if value >= LARGEST_BOUND:
                raise ValueError(
                    f"radius={radius:g} and margin={margin:g} give layer {layer.name!r} a {key} of {value:.3g}, "
                    f"beyond what the LP solver can represent ({LARGEST_BOUND:.0e}). Lower them, e.g. radius=0.1."
                )
        solution = solve_layer(
            layer.H,
            layer.W,
            layer.b,
            weight_bound=bounds["weight_bound"],
            bias_bound=bounds["bias_bound"],
            margin=bounds["margin"],
            l1=l1 * spread,
            anchor=anchor == "mean",
            target_active=target_active,
            coverage=coverage,
            solver=solver,
            n_jobs=n_jobs,
            time_limit_s=time_limit_s,
            exact=exact,
            progress=progress,
            desc=layer.name,
        )
        W_new, b_new = layer.W + solution.delta_weight, layer.b + solution.delta_bias
        measured = {
            **bounds,
            "l1": l1 * spread,
            "below_margin_before": int((bounds["margin"] > Z).sum()),
            "below_margin_after": int((layer.rows.preactivations(W_new, b_new) < bounds["margin"]).sum()),
            "met_target": None,
            "covered": None,
        }
        if solution.active is not None:  # active exactly on the target rows of H (signs survive rescaling)
            active_lp = layer.H @ W_new.T + b_new > 0
            measured["met_target"] = int((active_lp == solution.active).all(axis=0).sum())
            if coverage is not None:
                measured["covered"] = int((active_lp.sum(axis=1) >= coverage).sum())
        return W_new, b_new, (solution, measured)

    def check_layer(name: str, rows: int, units: int) -> None:
        """Refuse a coverage that some layer cannot have before any LP runs."""
        if coverage is not None and target_active is not None:
            check_coverage(coverage, units, rows, target_active, name)

    result = adjust_layerwise(
        model,
        batch,
        solve,
        layers=layers,
        rescale=rescale,
        max_rows=max_rows,
        row_seed=row_seed,
        check_layer=check_layer,
    )
    report = LPInitReport(radius, margin, solver, exact, rescale, anchor, l1, target_active, max_rows, coverage)
    for change, (solution, measured) in result.layers:
        report.layers.append(_layer_report(change, solution, measured))
    report.network_zeros_before = result.network_zeros_before
    report.network_zeros_after = result.network_zeros_after
    report.network_elements = result.network_elements
    report.wall_time_s = time.perf_counter() - start
    return report


def _layer_report(change: LayerChange, solution: LayerSolution, measured: dict[str, Any]) -> LayerReport:
    lp = change.adjusted
    return LayerReport(
        name=change.name,
        in_features=change.in_features,
        out_features=change.out_features,
        batch_size=change.samples,
        rows=change.rows,
        lp_rows=change.adjusted_rows,
        weight_bound=measured["weight_bound"],
        bias_bound=measured["bias_bound"],
        margin=measured["margin"],
        l1=measured["l1"],
        below_margin_before=measured["below_margin_before"],
        below_margin_after=measured["below_margin_after"],
        zeros_before=change.zeros_before,
        zeros_after=change.zeros_after,
        preact_mean_before=change.before.mean,
        preact_rms_before=change.before.rms,
        preact_mean_lp=lp.mean,
        preact_rms_lp=lp.rms,
        preact_mean_after=change.after.mean,
        preact_rms_after=change.after.rms,
        lp_objective=float(np.nansum(solution.objective)),
        status_counts=solution.status_counts(),
        met_target=measured["met_target"],
        covered=measured["covered"],
        iterations=int(solution.iterations.sum()),
        solver_time_s=float(solution.solver_time_s.sum()),
        wall_time_s=solution.wall_time_s,
        processes=solution.processes,
        max_abs_weight_change=change.max_abs_weight_change,
        relative_change=change.relative_change,
    )
