"""Closed-form controls for ``lp_initialize``: what the LP must beat.

Both move biases only, layer after layer in forward order on a batch, with the
same ``rescale`` option as ``lp_initialize`` (``lpinit.layerwise``), on the
same layers (ReLU-fed ``nn.Linear`` and ``nn.Conv2d``; a Conv2d's unit is an
output channel, its rows the (sample, output position) pairs). Being closed
forms, they use every row of the batch (no ``max_rows``):

- ``quantile_bias_(model, batch, q)``: each unit's bias is set so that the
  unit is active on the ``ceil(q n)`` rows where ``H w_j`` is largest and
  inactive on the others: the per-unit zero fraction of
  ``lp_initialize(..., target_active=q)``, with the weights untouched.
- ``bias_shift_(model, batch, zero_fractions)``: one constant per layer is
  added to every bias of the layer, so that the layer's zero fraction on the
  batch matches a given one (e.g. what an LP reached): if the LP only helped
  by raising biases, this matches it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lpinit.layerwise import LayerInput, LayerwiseResult, adjust_layerwise
from lpinit.validation import check_finite


def quantile_thresholds(Z: np.ndarray, q: float) -> np.ndarray:
    """Per column of ``Z`` (n, k), the level with exactly ``ceil(q n)`` entries
    above it: the midpoint between the ``ceil(q n)``-th and the next largest
    entry (past the smallest entry when every entry is to be above: half the
    mean gap between the sorted entries). Tied entries at that level stay tied,
    so then fewer are above it."""
    n = Z.shape[0]
    count = math.ceil(q * n - 1e-9)
    ordered = -np.sort(-Z, axis=0)  # descending
    if count < n:
        return (ordered[count - 1] + ordered[count]) / 2
    gap = (ordered[0] - ordered[-1]) / max(n - 1, 1)
    return ordered[-1] - np.where(gap > 0, gap, 1.0) / 2


def quantile_bias_(
    model: nn.Module,
    batch: torch.Tensor,
    q: float,
    *,
    rescale: str | None = None,
    layers: Sequence[str] | None = None,
) -> LayerwiseResult:
    """Set, in place, each bias of every ReLU-fed Linear or Conv2d layer to
    ``-t_j`` with ``t_j`` the level above which ``H w_j`` has ``ceil(q n)``
    entries on the n rows of the batch (``quantile_thresholds``): the unit is
    active on the same rows as ``lp_initialize(..., target_active=q)`` aims for
    (on all rows, where the LP may see a sample of them).

    Args:
        model: a network whose Linear or Conv2d layers (with biases) feed ReLUs.
        batch: float tensor of inputs (n, ...).
        q: the fraction of rows on which each unit is to be active, in (0, 1).
        rescale: ``"unit"``, ``"layer"`` or ``None``, as for ``lp_initialize``.
        layers: names of the layers to change (default: every ReLU-fed Linear and Conv2d).

    Returns:
        A ``LayerwiseResult``: per layer the zeros and pre-activation
        statistics before and after, and the thresholds ``t`` as info.

    Example:
        >>> import torch
        >>> from lpinit import mlp
        >>> _ = torch.manual_seed(0)
        >>> model, batch = mlp([4, 8, 3]), torch.randn(40, 4)
        >>> result = quantile_bias_(model, batch, 0.25)
        >>> change, _ = result.layers[0]
        >>> change.zeros_after, change.elements
        (240, 320)
    """
    q = check_finite(q, "q")
    if not 0.0 < q < 1.0:
        raise ValueError(f"Expected q in (0, 1) (the fraction of samples where each unit is active), got {q!r}.")

    def set_bias(layer: LayerInput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _require_bias(layer, "quantile_bias_")
        thresholds = quantile_thresholds(layer.rows.preactivations(layer.W, np.zeros_like(layer.b)), q)
        return layer.W, -thresholds, thresholds

    return adjust_layerwise(model, batch, set_bias, layers=layers, rescale=rescale, caller="quantile_bias_")


def bias_shift_(
    model: nn.Module,
    batch: torch.Tensor,
    zero_fractions: Sequence[float],
    *,
    rescale: str | None = None,
    layers: Sequence[str] | None = None,
) -> LayerwiseResult:
    """Add, in place, one constant to all biases of each ReLU-fed Linear or
    Conv2d layer, in forward order, so that the layer's zero fraction on the
    batch is the closest it can be to ``zero_fractions[l]`` (one per changed layer).

    Returns:
        A ``LayerwiseResult`` with each layer's constant as info.

    Example:
        >>> import torch
        >>> from lpinit import mlp
        >>> _ = torch.manual_seed(0)
        >>> model, batch = mlp([4, 8, 3]), torch.randn(40, 4)
        >>> change, shift = bias_shift_(model, batch, [0.1]).layers[0]
        >>> change.zeros_after / change.elements
        0.1
    """
    targets = [check_finite(f, "zero_fractions[...]") for f in zero_fractions]
    if any(not 0.0 <= f <= 1.0 for f in targets):
        raise ValueError(f"Expected zero fractions in [0, 1], got {list(zero_fractions)!r}.")
    remaining = list(targets)

    def shift(layer: LayerInput) -> tuple[np.ndarray, np.ndarray, float]:
        _require_bias(layer, "bias_shift_")
        if not remaining:
            raise ValueError(
                f"Expected one zero fraction per changed layer, got {len(targets)} for more layers "
                f"(layer {layer.name!r} has none). Pass one per layer, in forward order."
            )
        constant = matching_shift(layer.Z_all, remaining.pop(0))
        return layer.W, layer.b + constant, constant

    result = adjust_layerwise(model, batch, shift, layers=layers, rescale=rescale, caller="bias_shift_")
    if remaining:
        raise ValueError(
            f"Expected one zero fraction per changed layer ({len(result.layers)}), got {len(targets)}. The model "
            "was changed with the first ones; pass exactly one per layer."
        )
    return result


def matching_shift(Z: np.ndarray, zero_fraction: float) -> float:
    """The constant ``c`` for which the fraction of ``Z + c <= 0`` is closest
    to ``zero_fraction``: the midpoint between the two sorted entries of ``-Z``
    where the fraction steps past it (past the extremes: half the mean gap)."""
    values = np.sort(Z.ravel())
    count = round(zero_fraction * values.size)  # entries to be <= 0
    gap = (values[-1] - values[0]) / max(values.size - 1, 1)
    half_gap = gap / 2 if gap > 0 else 0.5
    if count <= 0:
        return float(-values[0] + half_gap)
    if count >= values.size:
        return float(-values[-1] - half_gap)
    return float(-(values[count - 1] + values[count]) / 2)


def _require_bias(layer: LayerInput, caller: str) -> None:
    if not layer.has_bias:
        raise ValueError(
            f"Expected every changed layer to have a bias, got {layer.name!r} without one. {caller} moves "
            "biases only: give the layer a bias (bias=True), or leave it out with layers=[...]."
        )
