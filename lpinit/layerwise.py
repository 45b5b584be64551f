"""Adjust a network layer by layer on a batch: the driver shared by
``lp_initialize`` and the closed-form controls (``lpinit.controls``).

For each layer whose output goes straight into a ReLU, in forward order and
with every earlier layer already adjusted, an adjustment sees the layer's
input ``H`` on the batch and its parameters ``(W, b)``, and returns new ones.
Then, with ``rescale``, each unit's new ``(w_j, b_j)`` is multiplied by

.. math::
    c_j = \\frac{\\mathrm{RMS}_i(z^0_{ij})}{\\mathrm{RMS}_i(H_i w'_j + b'_j)} > 0

(``"unit"``; ``"layer"``: one ``c`` from the RMS over the whole layer), where
``z^0`` are the unit's pre-activations on the batch in the network as it was
before any layer was changed. So every unit keeps the scale it had at the
start, whatever the earlier layers did: measured against the weights before
the change on the *changed* input instead, a change that makes more units
active would compound from layer to layer (more active units feed larger
inputs forward). A positive factor keeps every sign, so the zeros do not
change.

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
from lpinit.tracing import capture_layer_io, eval_mode, relu_fed_linears
from lpinit.validation import check_choice, check_data_tensor, check_model, run_model

RESCALE_MODES = ("unit", "layer")

LARGEST_LP_VALUE = 1e12
"""Largest magnitude of a layer's input or pre-activations that lpinit hands
to an LP: HiGHS treats bounds of 1e20 as infinite and works to absolute
tolerances of 1e-7, so the data must sit well inside that range."""


@dataclass(frozen=True)
class LayerInput:
    """What an adjustment sees of one layer: its input on the batch and its
    parameters, all float64 numpy arrays (``b`` is zeros for a layer without
    bias)."""

    name: str
    module: nn.Module
    H: np.ndarray  # (n, d_in)
    W: np.ndarray  # (k, d_in)
    b: np.ndarray  # (k,)
    has_bias: bool

    @property
    def Z(self) -> np.ndarray:
        """The pre-activations on the batch, (n, k)."""
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
    in_features: int
    out_features: int
    samples: int  # rows of H
    zeros_before: int  # pre-activations <= 0, of samples x units
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
        return self.samples * self.out_features


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
    caller: str = "lp_initialize",
) -> LayerwiseResult:
    """Run ``adjust`` on every chosen ReLU-fed layer of ``model`` in forward
    order, rescale, check, and write the new parameters (module docstring)."""
    check_model(model)
    check_data_tensor(batch, "batch", min_dim=2)
    if rescale is not None:
        check_choice(rescale, RESCALE_MODES, "rescale")
    reference = next(model.parameters(), None)
    if reference is not None and reference.is_meta:
        raise ValueError(
            f"Expected a model with values, got parameters on the meta device. Materialize it first, "
            f"e.g. model.to_empty(device='cpu') and an init, then call {caller}."
        )
    batch = batch.to(device=reference.device, dtype=reference.dtype) if reference is not None else batch
    results: list[tuple[LayerChange, Any]] = []
    with eval_mode(model), torch.no_grad():
        run_model(model, batch)  # shape and dtype errors surface here, clearly
        chosen = _select_layers(model, batch, layers, caller)
        _refuse_shared_parameters(model, chosen, caller)
        zeros_before = count_relu_zeros(model, batch, batch.shape[0], patterns=False)
        start = _start_preactivations(model, batch, chosen)
        params: dict[str, Any] = dict(model.named_parameters())
        new_params: dict[str, torch.Tensor] = {}
        for position, (name, layer) in enumerate(chosen):
            earlier = ", ".join(n for n, _ in chosen[:position])
            context = f"{caller} (after changing {earlier})" if earlier else caller
            change, info, updates = _adjust_layer(
                model, params, batch, name, layer, adjust, rescale, start[name], context
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
    layer: nn.Linear,
    adjust: Adjustment,
    rescale: str | None,
    Z_start: np.ndarray,
    caller: str,
) -> tuple[LayerChange, Any, dict[str, torch.Tensor]]:
    prefix = f"{name}." if name else ""
    weight = params[prefix + "weight"]
    bias = params.get(prefix + "bias") if layer.bias is not None else None
    H = _layer_input(model, params, batch, layer).double().cpu().numpy()
    _check_lp_scale(H, name, "input", caller)
    W = weight.double().cpu().numpy()
    b = bias.double().cpu().numpy() if bias is not None else np.zeros(W.shape[0])
    view = LayerInput(name, layer, H, W, b, bias is not None)
    Z = view.Z
    _check_lp_scale(Z, name, "pre-activations", caller)

    W_new, b_new, info = adjust(view)
    adjusted = H @ W_new.T + b_new
    factors = np.ones(W.shape[0])
    if rescale is not None:
        factors = rescale_factors(Z_start, adjusted, rescale)
        W_new, b_new = W_new * factors[:, None], b_new * factors
    Z_new = H @ W_new.T + b_new
    _check_finite_result(W_new, b_new, Z_new, weight.dtype, name, caller)

    change = math.sqrt(((W_new - W) ** 2).sum() + ((b_new - b) ** 2).sum())
    scale = math.sqrt((W**2).sum() + (b**2).sum())
    measured = LayerChange(
        name=name,
        in_features=W.shape[1],
        out_features=W.shape[0],
        samples=H.shape[0],
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
    updates = {prefix + "weight": torch.as_tensor(W_new).to(weight)}
    if bias is not None:
        updates[prefix + "bias"] = torch.as_tensor(b_new).to(bias)
    return measured, info, updates


def _start_preactivations(
    model: nn.Module, batch: torch.Tensor, chosen: list[tuple[str, nn.Linear]]
) -> dict[str, np.ndarray]:
    """Each chosen layer's pre-activations on the batch before any change,
    (rows, units): what rescaling gives back its scale."""
    outputs = capture_layer_io(model, [layer for _, layer in chosen], lambda: model(batch), "output")
    return {
        name: calls[0].double().cpu().numpy().reshape(-1, layer.out_features)
        for (name, layer), calls in zip(chosen, outputs, strict=True)
    }


def _layer_input(model: nn.Module, params: dict[str, Any], batch: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """The input of ``layer`` when ``model`` runs on ``batch`` with ``params``."""
    (captured,) = capture_layer_io(model, [layer], lambda: functional_call(model, params, (batch,)), "input")
    if len(captured) != 1:
        raise ValueError(
            f"Expected each ReLU-fed Linear layer to run once per forward pass, but one ran "
            f"{len(captured)} times. Restrict `layers=` to layers applied once."
        )
    return captured[0].reshape(-1, layer.in_features)


def _select_layers(
    model: nn.Module, batch: torch.Tensor, layers: Sequence[str] | None, caller: str
) -> list[tuple[str, nn.Linear]]:
    found = relu_fed_linears(model, batch)
    if not found:
        raise ValueError(
            f"Expected a model with at least one nn.Linear whose output goes straight into a "
            f"ReLU, got a {type(model).__name__} with none. {caller} adjusts such "
            "layers only; add a ReLU after a Linear layer."
        )
    valid = [name for name, _ in found]
    if layers is None:
        return found
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
            f"Unknown layer name(s) {unknown}. Linear layers followed by a ReLU: "
            f"{', '.join(valid)}. Pass some of these as layers=[...]."
        )
    return [(name, layer) for name, layer in found if name in set(layers)]


def _refuse_shared_parameters(model: nn.Module, chosen: list[tuple[str, nn.Linear]], caller: str) -> None:
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
