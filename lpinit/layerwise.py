"""Adjust a network layer by layer on a batch: the driver shared by
``lp_initialize`` and the closed-form controls (``lpinit.controls``).

For each ``nn.Linear`` or ``nn.Conv2d`` (``groups=1``) whose output goes
straight into a ReLU, in forward order and with every earlier layer already
adjusted, an adjustment sees the layer as rows (``lpinit.layer_rows``: a
Linear's input rows, a Conv2d's input patches, one per sample and output
position), its parameters ``(W, b)`` and its pre-activations ``Z`` on every
row, and returns new parameters. With ``max_rows``, the adjustment's matrix
``H`` holds a seeded sample of ``max_rows`` of the rows
(``lpinit.layer_rows.choose_rows``); everything the driver measures (zeros,
pre-activation statistics, rescaling) is over every row of the batch.

Then, with ``rescale``, each unit's new ``(w_j, b_j)`` is multiplied by

.. math::
    c_j = \\frac{\\mathrm{RMS}_i(z^0_{ij})}{\\mathrm{RMS}_i(H_i w'_j + b'_j)} > 0

(``"unit"``; ``"layer"``: one ``c`` from the RMS over the whole layer; ``i``
over every row), where ``z^0`` are the unit's pre-activations on the batch in
the network as it was before any layer was changed. So every unit keeps the
scale it had at the start, whatever the earlier layers did: measured against
the weights before the change on the *changed* input instead, a change that
makes more units active would compound from layer to layer (more active units
feed larger inputs forward). A positive factor keeps every sign, so the zeros
do not change.

Nothing is written to the model until every layer is done, and only if every
new parameter is finite in the model's dtype: if anything raises, the model
is exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from lpinit.counting import count_relu_zeros
from lpinit.layer_rows import LayerRows, check_conv, choose_rows, layer_rows
from lpinit.parallel import one_thread
from lpinit.tracing import capture_layer_io, eval_mode, relu_fed_layers
from lpinit.validation import check_choice, check_data_tensor, check_max_rows, check_model, check_seed, run_model

RESCALE_MODES = ("unit", "layer")

LARGEST_LP_VALUE = 1e12
"""Largest magnitude of a layer's input or pre-activations that lpinit hands
to an LP: HiGHS treats bounds of 1e20 as infinite and works to absolute
tolerances of 1e-7, so the data must sit well inside that range."""


@dataclass(frozen=True)
class LayerInput:
    """What an adjustment sees of one layer: its rows on the batch (all, or a
    seeded sample of ``max_rows``) and its parameters, all float64 numpy
    arrays (``b`` is zeros for a layer without bias; a Conv2d's kernel is
    reshaped to (out_channels, in_channels * kh * kw)), and its
    pre-activations on every row."""

    name: str
    module: nn.Module
    H: np.ndarray  # (n, d_in): the rows for the adjustment
    W: np.ndarray  # (k, d_in)
    b: np.ndarray  # (k,)
    has_bias: bool
    Z_all: np.ndarray  # (rows, k): pre-activations on every row of the batch
    rows: LayerRows  # every row; rows.preactivations(W, b) for other parameters

    @property
    def Z(self) -> np.ndarray:
        """The pre-activations on the rows of ``H``, (n, k)."""
        return self.H @ self.W.T + self.b


@dataclass(frozen=True)
class Preactivations:
    """Mean and root-mean-square of a layer's pre-activations on the batch."""

    mean: float
    rms: float

    @classmethod
    def of(cls, Z: np.ndarray) -> Preactivations:
        return cls(float(Z.mean()), float(np.sqrt(np.mean(Z**2))))


@dataclass(frozen=True)
class LayerChange:
    """One layer's adjustment, as the driver measured it on the batch."""

    name: str
    in_features: int  # d_in: columns of H (a Conv2d: in_channels * kh * kw)
    out_features: int  # units (a Conv2d: output channels)
    samples: int  # of the batch
    rows: int  # every row of the batch: samples (x output positions, for a Conv2d)
    adjusted_rows: int  # rows the adjustment saw: rows, or max_rows of them
    zeros_before: int  # pre-activations <= 0, of rows x units
    zeros_after: int
    start: Preactivations  # in the network before any layer was changed
    before: Preactivations  # on this layer's input, before its change
    adjusted: Preactivations  # after the adjustment, before rescaling
    after: Preactivations  # after rescaling (the final parameters)
    rescale_min: float  # smallest and largest rescaling factor c_j (1 without rescaling)
    rescale_max: float
    max_abs_weight_change: float  # of the final parameters
    relative_change: float  # ||[dW, db]||_F / ||[W, b]||_F, final parameters

    @property
    def elements(self) -> int:
        return self.rows * self.out_features


@dataclass(frozen=True)
class LayerwiseResult:
    """Every adjusted layer as ``(LayerChange, info)``, and the ReLU zeros of
    the whole network on the batch before and after."""

    layers: list[tuple[LayerChange, Any]]
    network_zeros_before: int
    network_zeros_after: int
    network_elements: int


Adjustment = Callable[[LayerInput], tuple[np.ndarray, np.ndarray, Any]]
"""``adjust(layer) -> (new W, new b, info)``; ``info`` is returned as is."""


def rescale_factors(Z_start: np.ndarray, Z_new: np.ndarray, mode: str) -> np.ndarray:
    """``c`` (one per unit, the columns of the pre-activations): the factors
    that give ``Z_new`` the RMS of ``Z_start``, per unit or for the whole layer
    (module docstring). A unit whose new or start pre-activations are all 0
    keeps ``c = 1``."""
    check_choice(mode, RESCALE_MODES, "rescale")
    if mode == "unit":
        start, new = np.sqrt((Z_start**2).mean(axis=0)), np.sqrt((Z_new**2).mean(axis=0))
    else:
        units = Z_new.shape[1]
        start, new = np.full(units, np.sqrt((Z_start**2).mean())), np.full(units, np.sqrt((Z_new**2).mean()))
    c = np.divide(start, new, out=np.ones_like(new), where=new > 0)
    return np.where(c > 0, c, 1.0)


def adjust_layerwise(
    model: nn.Module,
    batch: torch.Tensor,
    adjust: Adjustment,
    *,
    layers: Sequence[str] | None = None,
    rescale: str | None = None,
    max_rows: int | None = None,
    row_seed: int = 0,
    caller: str = "lp_initialize",
    check_layer: Callable[[str, int, int], None] | None = None,
) -> LayerwiseResult:
    """Run ``adjust`` on every chosen ReLU-fed layer of ``model`` in forward
    order, rescale, check, and write the new parameters (module docstring).
    ``max_rows`` (``None``: all) caps the rows of each layer's ``H``, drawn
    with ``row_seed``. ``check_layer(name, rows of H, units)`` is called for
    every chosen layer before any is adjusted, to refuse early what a later
    layer cannot take."""
    check_model(model)
    check_data_tensor(batch, "batch", min_dim=2)
    if rescale is not None:
        check_choice(rescale, RESCALE_MODES, "rescale")
    max_rows = check_max_rows(max_rows)
    row_seed = check_seed(row_seed, "row_seed")
    reference = next(model.parameters(), None)
    if reference is not None and reference.is_meta:
        raise ValueError(
            f"Expected a model with values, got parameters on the meta device. Materialize it first, "
            f"e.g. model.to_empty(device='cpu') and an init, then call {caller}."
        )
    batch = batch.to(device=reference.device, dtype=reference.dtype) if reference is not None else batch
    results: list[tuple[LayerChange, Any]] = []
    # one thread for torch's and numpy's CPU kernels, as the LP solver has: on a machine whose cores
    # are busy, threads that wait for each other at every small op cost far more than they bring
    # (README, benchmarks); the limits are restored on exit
    with one_thread(), eval_mode(model), torch.no_grad():
        chosen = _select_layers(model, batch, layers, caller)
        _refuse_shared_parameters(model, chosen, caller)
        zeros_before = count_relu_zeros(model, batch, batch.shape[0], patterns=False)
        start = _start_preactivations(model, batch, chosen)
        if check_layer is not None:
            for name, _ in chosen:
                rows, units = start[name].shape
                check_layer(name, rows if max_rows is None else min(rows, max_rows), units)
        params: dict[str, Any] = dict(model.named_parameters())
        new_params: dict[str, torch.Tensor] = {}
        for position, (name, layer) in enumerate(chosen):
            earlier = ", ".join(n for n, _ in chosen[:position])
            context = f"{caller} (after changing {earlier})" if earlier else caller
            sampling = (max_rows, row_seed)
            change, info, updates = _adjust_layer(
                model, params, batch, name, layer, adjust, rescale, start[name], sampling, context
            )
            params = {**params, **updates}
            new_params.update(updates)
            results.append((change, info))
        current = dict(model.named_parameters())
        for key, value in new_params.items():  # nothing written before this point
            current[key].copy_(value)
        zeros_after = count_relu_zeros(model, batch, batch.shape[0], patterns=False)
    return LayerwiseResult(results, zeros_before.total_zeros, zeros_after.total_zeros, zeros_before.total_elements)


def _adjust_layer(
    model: nn.Module,
    params: dict[str, Any],
    batch: torch.Tensor,
    name: str,
    layer: nn.Module,
    adjust: Adjustment,
    rescale: str | None,
    Z_start: np.ndarray,
    sampling: tuple[int | None, int],
    caller: str,
) -> tuple[LayerChange, Any, dict[str, torch.Tensor]]:
    prefix = f"{name}." if name else ""
    weight = params[prefix + "weight"]
    bias = params.get(prefix + "bias") if layer.bias is not None else None
    rows = layer_rows(layer, _layer_input(model, params, batch, layer))
    chosen_rows = choose_rows(rows.count, sampling[0], sampling[1], name)
    H = rows.take(chosen_rows)
    _check_lp_scale(H, name, "input", caller)
    W = weight.double().cpu().numpy().reshape(weight.shape[0], -1)
    b = bias.double().cpu().numpy() if bias is not None else np.zeros(W.shape[0])
    Z = rows.preactivations(W, b)
    _check_lp_scale(Z, name, "pre-activations", caller)
    view = LayerInput(name, layer, H, W, b, bias is not None, Z, rows)

    W_new, b_new, info = adjust(view)
    adjusted = rows.preactivations(W_new, b_new)
    factors = np.ones(W.shape[0])
    Z_new = adjusted
    if rescale is not None:
        factors = rescale_factors(Z_start, adjusted, rescale)
        W_new, b_new = W_new * factors[:, None], b_new * factors
        Z_new = adjusted * factors  # (c W) x + c b = c (W x + b): no pass over the rows again
    _check_finite_result(W_new, b_new, Z_new, weight.dtype, name, caller)

    change = math.sqrt(((W_new - W) ** 2).sum() + ((b_new - b) ** 2).sum())
    scale = math.sqrt((W**2).sum() + (b**2).sum())
    measured = LayerChange(
        name=name,
        in_features=W.shape[1],
        out_features=W.shape[0],
        samples=rows.samples,
        rows=rows.count,
        adjusted_rows=H.shape[0],
        zeros_before=int((Z <= 0).sum()),
        zeros_after=int((Z_new <= 0).sum()),
        start=Preactivations.of(Z_start),
        before=Preactivations.of(Z),
        adjusted=Preactivations.of(adjusted),
        after=Preactivations.of(Z_new),
        rescale_min=float(factors.min()),
        rescale_max=float(factors.max()),
        max_abs_weight_change=float(np.abs(W_new - W).max(initial=0.0)),
        relative_change=change / scale if scale > 0 else float("nan"),
    )
    updates = {prefix + "weight": torch.as_tensor(W_new.reshape(weight.shape)).to(weight)}
    if bias is not None:
        updates[prefix + "bias"] = torch.as_tensor(b_new).to(bias)
    return measured, info, updates


def _start_preactivations(
    model: nn.Module, batch: torch.Tensor, chosen: list[tuple[str, nn.Module]]
) -> dict[str, np.ndarray]:
    """Each chosen layer's pre-activations on every row of the batch before any
    change, (rows, units): what rescaling gives back its scale."""
    inputs = capture_layer_io(model, [layer for _, layer in chosen], lambda: model(batch), "input")
    start = {}
    for (name, layer), calls in zip(chosen, inputs, strict=True):
        assert isinstance(layer, (nn.Linear, nn.Conv2d))  # what _select_layers chooses
        W = layer.weight.detach().double().cpu().numpy().reshape(layer.weight.shape[0], -1)
        b = layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(W.shape[0])
        start[name] = layer_rows(layer, calls[0]).preactivations(W, b)
    return start


class _InputSeen(Exception):
    """Stops a forward pass once the layer of interest has its input."""


def _layer_input(model: nn.Module, params: dict[str, Any], batch: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """The input of ``layer`` when ``model`` runs on ``batch`` with ``params``;
    the rest of the forward pass is skipped."""
    seen: list[torch.Tensor] = []

    def stop(module: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach())
        raise _InputSeen

    handle = layer.register_forward_pre_hook(stop)
    try:
        functional_call(model, params, (batch,))
    except _InputSeen:
        pass
    finally:
        handle.remove()
    return seen[0]


def _select_layers(
    model: nn.Module, batch: torch.Tensor, layers: Sequence[str] | None, caller: str
) -> list[tuple[str, nn.Module]]:
    calls: dict[nn.Module, int] = {}
    kinds = (nn.Linear, nn.Conv2d)
    counting = [
        m.register_forward_pre_hook(lambda module, args: calls.__setitem__(module, calls.get(module, 0) + 1))
        for m in model.modules()
        if isinstance(m, kinds)
    ]
    try:
        found = relu_fed_layers(model, batch, kinds)
    except RuntimeError:
        run_model(model, batch)  # shape and dtype errors get a clear message
        raise
    finally:
        for handle in counting:
            handle.remove()
    if not found:
        raise ValueError(
            f"Expected a model with at least one nn.Linear or nn.Conv2d whose output goes straight into a "
            f"ReLU, got a {type(model).__name__} with none. {caller} adjusts such "
            "layers only; add a ReLU after a Linear or Conv2d layer."
        )
    valid = [name for name, _ in found]
    if layers is None:
        chosen = found
    else:
        if isinstance(layers, str):
            layers = [layers]
        if not isinstance(layers, (list, tuple)) or not all(isinstance(name, str) for name in layers):
            raise TypeError(
                f"Expected layers to be a list of layer names (str), got {layers!r}. "
                f"Layers that feed a ReLU: {', '.join(valid)}."
            )
        if not layers:
            raise ValueError(
                f"Expected at least one layer name, got an empty list (which would change nothing). "
                f"Pass layers=None for all of them: {', '.join(valid)}."
            )
        unknown = [name for name in layers if name not in valid]
        if unknown:
            raise ValueError(
                f"Unknown layer name(s) {unknown}. Linear and Conv2d layers followed by a ReLU: "
                f"{', '.join(valid)}. Pass some of these as layers=[...]."
            )
        chosen = [(name, layer) for name, layer in found if name in set(layers)]
    for name, layer in chosen:
        if calls.get(layer, 0) != 1:
            raise ValueError(
                f"Expected each ReLU-fed layer to run once per forward pass, but {name!r} ran "
                f"{calls.get(layer, 0)} times. Restrict `layers=` to layers applied once."
            )
        if isinstance(layer, nn.Conv2d):
            try:
                check_conv(layer, name)
            except ValueError as err:
                usable = [n for n, m in found if not isinstance(m, nn.Conv2d) or m.groups == 1]
                raise ValueError(f"{err} {caller} can adjust: {', '.join(usable) or 'none'}.") from None
    return chosen


def _refuse_shared_parameters(model: nn.Module, chosen: list[tuple[str, nn.Module]], caller: str) -> None:
    """Each chosen layer must own its parameters: a tied weight would be changed
    for one layer while it also serves another."""
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append(f"{module_name}.{param_name}" if module_name else param_name)
    for name, layer in chosen:
        for param in (layer.weight, layer.bias):
            if param is not None and len(set(owners[id(param)])) > 1:
                sharing = ", ".join(sorted(set(owners[id(param)])))
                raise ValueError(
                    f"Layer {name!r} shares a parameter with another layer ({sharing}: tied weights). "
                    f"{caller} changes each layer on its own; untie them (e.g. "
                    f"fc2.weight = nn.Parameter(fc1.weight.clone())), or leave this layer out with layers=[...]."
                )


def _check_lp_scale(X: np.ndarray, name: str, what: str, caller: str) -> None:
    largest = float(np.abs(X).max(initial=0.0))
    if not math.isfinite(largest):
        raise ValueError(
            f"The {what} of layer {name!r} are not finite on the batch. If earlier layers were adjusted "
            f"in this call, their change was too large: lower radius. Otherwise check the model's "
            f"weights and the batch."
        )
    if largest > LARGEST_LP_VALUE:
        cause = (
            "The earlier layers' change made them so: lower radius (e.g. radius=0.1)."
            if "after changing" in caller
            else "Normalize the batch (e.g. to zero mean, unit variance) or rescale the model's weights."
        )
        raise ValueError(
            f"Expected the {what} of layer {name!r} on the batch to stay below {LARGEST_LP_VALUE:.0e} in "
            f"magnitude for the LP solver of {caller}, got entries up to {largest:.3g}. {cause}"
        )


def _check_finite_result(
    W: np.ndarray, b: np.ndarray, Z: np.ndarray, dtype: torch.dtype, name: str, caller: str
) -> None:
    largest = float(max(np.abs(W).max(initial=0.0), np.abs(b).max(initial=0.0), np.abs(Z).max(initial=0.0)))
    limit = torch.finfo(dtype).max if dtype.is_floating_point else math.inf
    if not largest < limit:
        raise ValueError(
            f"{caller} found new parameters for layer {name!r} that are not finite in {dtype} (or whose "
            f"pre-activations are not): values up to {largest:.3g}. Lower radius (the box around the "
            f"weights), e.g. radius=0.1; the model was left unchanged."
        )
