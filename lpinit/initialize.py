"""``lp_initialize``: move each ReLU-fed Linear layer's weights by a small,
bounded amount so that fewer pre-activations on a batch fall below a margin.

For each ``nn.Linear`` whose output goes straight into a ReLU, in forward
order, with every earlier layer already updated, the layer input ``H`` on the
batch defines one LP per unit j (``lpinit.lp``):

.. math::
    \\min_{d, e, s} \\sum_i s_i \\quad \\text{s.t.}\\quad
    H_i (w_j + d) + b_j + e + s_i \\ge m,\\; s \\ge 0,\\;
    \\|d\\|_\\infty \\le \\rho_w,\\; |e| \\le \\rho_b

the LP relaxation of "as few pre-activations below the margin as possible".
The bounds are relative to the layer's own scales:

- ``rho_w = radius * sqrt(3) * std(W)``: PyTorch's default init draws
  ``W ~ U(-a, a)`` with ``a = 1/sqrt(fan_in) = sqrt(3) std(W)``, so each weight
  moves by at most ``radius`` times the init's own range;
- ``rho_b = radius * std(Z)`` and ``m = margin * std(Z)``, with ``Z = H W^T + b``
  the layer's pre-activations on the batch before the update: a bias and a
  margin live in the units of the pre-activation, not of the weights (a
  zero-initialized bias has no scale of its own).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from lpinit.counting import count_relu_zeros
from lpinit.lp import SOLVERS, solve_layer
from lpinit.tracing import capture_layer_io, eval_mode, relu_fed_linears
from lpinit.validation import check_choice, check_data_tensor, check_model, check_non_negative, run_model


@dataclass
class LayerReport:
    """What the LP did to one layer. Bounds and margin are absolute, so anyone
    can re-solve the same LPs; counts are over (samples x units) of the batch."""

    name: str
    in_features: int
    out_features: int
    batch_size: int
    weight_bound: float
    bias_bound: float
    margin: float
    below_margin_before: int
    below_margin_after: int
    zeros_before: int
    zeros_after: int
    lp_objective: float  # sum over units solved to optimality
    status_counts: dict[str, int]
    iterations: int
    solver_time_s: float
    wall_time_s: float
    processes: int  # that solved the LPs: this one and its worker processes
    max_abs_weight_change: float
    relative_change: float  # ||[dW, db]||_F / ||[W, b]||_F

    @property
    def elements(self) -> int:
        return self.batch_size * self.out_features


@dataclass
class LPInitReport:
    """Returned by ``lp_initialize``: settings, one ``LayerReport`` per layer,
    and the ReLU zeros of the whole network on the batch before and after."""

    radius: float
    margin: float
    solver: str
    exact: bool
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
        head = (
            f"{'layer':<8}{'shape':>10}{'rho_w':>10}{'rho_b':>9}{'margin':>9}"
            f"{'<m before':>11}{'after':>8}{'zeros before':>14}{'after':>8}"
            f"{'LP obj':>10}{'opt/tl/fail':>13}{'max|dW|':>9}{'rel':>7}{'time s':>8}{'proc':>5}"
        )
        rows = [head]
        for r in self.layers:
            counts = r.status_counts
            statuses = f"{counts.get('optimal', 0)}/{counts.get('time_limit', 0)}/{counts.get('failed', 0)}"
            rows.append(
                f"{r.name:<8}{f'{r.in_features}x{r.out_features}':>10}{r.weight_bound:>10.2e}"
                f"{r.bias_bound:>9.3f}{r.margin:>9.3f}{r.below_margin_before:>11,}"
                f"{r.below_margin_after:>8,}{r.zeros_before:>14,}{r.zeros_after:>8,}"
                f"{r.lp_objective:>10.2f}{statuses:>13}{r.max_abs_weight_change:>9.2e}"
                f"{r.relative_change:>7.3f}{r.wall_time_s:>8.2f}{r.processes:>5}"
            )
        before = self.network_zeros_before / max(self.network_elements, 1)
        after = self.network_zeros_after / max(self.network_elements, 1)
        mode = "exact MIP" if self.exact else "LP"
        rows.append(
            f"{mode} via {self.solver}, radius {self.radius:g}, margin {self.margin:g}: ReLU zeros on "
            f"the batch {self.network_zeros_before:,} -> {self.network_zeros_after:,} "
            f"({before:.4f} -> {after:.4f}) in {self.wall_time_s:.1f} s"
        )
        return "\n".join(rows)


def _layer_input(model, params, batch, layer):
    """The input of ``layer`` when ``model`` runs on ``batch`` with ``params``."""
    (captured,) = capture_layer_io(model, [layer], lambda: functional_call(model, params, (batch,)), "input")
    if len(captured) != 1:
        raise ValueError(
            f"Expected each ReLU-fed Linear layer to run once per forward pass, but one ran "
            f"{len(captured)} times. Restrict `layers=` to layers applied once."
        )
    return captured[0].reshape(-1, layer.in_features)


def _select_layers(model, batch, layers):
    found = relu_fed_linears(model, batch)
    if not found:
        raise ValueError(
            f"Expected a model with at least one nn.Linear whose output goes straight into a "
            f"ReLU, got a {type(model).__name__} with none. lp_initialize adjusts such "
            "layers only; add a ReLU after a Linear layer."
        )
    if layers is None:
        return found
    if isinstance(layers, str):
        layers = [layers]
    valid = [name for name, _ in found]
    unknown = [name for name in layers if name not in valid]
    if unknown:
        raise ValueError(
            f"Unknown layer name(s) {unknown}. Linear layers followed by a ReLU: "
            f"{', '.join(valid)}. Pass some of these as layers=[...]."
        )
    return [(name, layer) for name, layer in found if name in set(layers)]


def lp_initialize(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    radius: float = 0.1,
    margin: float = 0.1,
    layers: list[str] | None = None,
    solver: str = "highs",
    n_jobs: int | None = None,
    time_limit_s: float | None = None,
    exact: bool = False,
    progress: bool | None = None,
) -> LPInitReport:
    """Adjust, in place, every Linear layer that feeds a ReLU so that fewer
    pre-activations on ``batch`` fall below a margin (see the module docstring
    for the LP and the bounds).

    Every new weight is computed first and written at the end with
    ``param.copy_``, so parameter objects, dtype and device are kept, and if
    anything raises the model is exactly as before. A unit whose LP fails or
    hits the time limit keeps its weights and is counted in the report.

    Args:
        model: a network whose Linear layers feed ReLUs (modules, a reused
            module, or ``F.relu``/``torch.relu`` calls).
        batch: float tensor of inputs (n, ...), on any device.
        radius: max change of each weight relative to ``sqrt(3) std(W)``, and
            of each bias relative to the spread of the pre-activations.
        margin: the target pre-activation, relative to their spread.
        layers: names of the layers to adjust (default: all ReLU-fed Linears).
        solver: ``"highs"`` (highspy, hot-started, parallel) or ``"cvxpy"``
            (the readable reference; same optimum).
        n_jobs: processes for the highs path, this one included. ``None``: up
            to one per core; worker processes that are up are used, others are
            started only for layers whose LPs repay it (``start_workers``
            starts them ahead of time).
        time_limit_s: per-unit time limit in seconds.
        exact: solve the mixed-integer version (minimize the count below the
            margin) instead of the LP; for small layers only.
        progress: show a tqdm bar over the units of each layer (``None``:
            only on an interactive terminal).

    Returns:
        An ``LPInitReport``; ``print(report)`` shows a table.

    Example:
        >>> from lpinit import lp_initialize, load_mnist, seed_mlp
        >>> images, _ = load_mnist(train=True)
        >>> model = seed_mlp()
        >>> report = lp_initialize(model, images[:256], radius=0.1)
        >>> print(report)
    """
    check_model(model)
    check_data_tensor(batch, "batch")
    radius = check_non_negative(radius, "radius")
    margin = check_non_negative(margin, "margin")
    check_choice(solver, SOLVERS, "solver")
    if time_limit_s is not None:
        time_limit_s = check_non_negative(time_limit_s, "time_limit_s")

    start = time.perf_counter()
    reference = next(model.parameters(), batch)
    batch = batch.to(device=reference.device, dtype=reference.dtype)
    with eval_mode(model), torch.no_grad():
        run_model(model, batch)  # shape and dtype errors surface here, clearly
        chosen = _select_layers(model, batch, layers)
        zeros_before = count_relu_zeros(model, batch, batch.shape[0], patterns=False)
        params = dict(model.named_parameters())
        report = LPInitReport(radius, margin, solver, exact)
        new_params: dict[str, torch.Tensor] = {}
        for name, layer in chosen:
            layer_report, updates = _initialize_layer(
                model,
                params,
                batch,
                name,
                layer,
                radius=radius,
                margin=margin,
                solver=solver,
                n_jobs=n_jobs,
                time_limit_s=time_limit_s,
                exact=exact,
                progress=progress,
            )
            params = {**params, **updates}
            new_params.update(updates)
            report.layers.append(layer_report)
        current = dict(model.named_parameters())
        for key, value in new_params.items():  # nothing written before this point
            current[key].copy_(value)
        zeros_after = count_relu_zeros(model, batch, batch.shape[0], patterns=False)
    report.network_zeros_before = zeros_before.total_zeros
    report.network_zeros_after = zeros_after.total_zeros
    report.network_elements = zeros_before.total_elements
    report.wall_time_s = time.perf_counter() - start
    return report


def _initialize_layer(model, params, batch, name, layer, *, radius, margin, **solve_options):
    """Solve one layer's LPs; return its report and its new parameters."""
    prefix = f"{name}." if name else ""
    weight = params[prefix + "weight"]
    bias = params.get(prefix + "bias") if layer.bias is not None else None
    H = _layer_input(model, params, batch, layer).double().cpu().numpy()
    W = weight.double().cpu().numpy()
    b = bias.double().cpu().numpy() if bias is not None else np.zeros(W.shape[0])
    Z = H @ W.T + b
    spread = float(Z.std())
    weight_bound = radius * math.sqrt(3) * float(W.std())
    bias_bound = radius * spread if bias is not None else 0.0
    margin_abs = margin * spread

    solution = solve_layer(
        H,
        W,
        b,
        weight_bound=weight_bound,
        bias_bound=bias_bound,
        margin=margin_abs,
        desc=name,
        **solve_options,
    )
    new_W, new_b = W + solution.delta_weight, b + solution.delta_bias
    Z_new = H @ new_W.T + new_b
    change = math.sqrt((solution.delta_weight**2).sum() + (solution.delta_bias**2).sum())
    scale = math.sqrt((W**2).sum() + (b**2).sum())
    report = LayerReport(
        name=name,
        in_features=layer.in_features,
        out_features=layer.out_features,
        batch_size=H.shape[0],
        weight_bound=weight_bound,
        bias_bound=bias_bound,
        margin=margin_abs,
        below_margin_before=int((margin_abs > Z).sum()),
        below_margin_after=int((Z_new < margin_abs).sum()),
        zeros_before=int((Z <= 0).sum()),
        zeros_after=int((Z_new <= 0).sum()),
        lp_objective=float(np.nansum(solution.objective)),
        status_counts=solution.status_counts(),
        iterations=int(solution.iterations.sum()),
        solver_time_s=float(solution.solver_time_s.sum()),
        wall_time_s=solution.wall_time_s,
        processes=solution.processes,
        max_abs_weight_change=float(np.abs(solution.delta_weight).max(initial=0.0)),
        relative_change=change / scale if scale > 0 else float("nan"),
    )
    updates = {prefix + "weight": torch.as_tensor(new_W).to(weight)}
    if bias is not None:
        updates[prefix + "bias"] = torch.as_tensor(new_b).to(bias)
    return report, updates
