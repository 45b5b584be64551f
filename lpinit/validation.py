"""Every input check of lpinit, and its error types, in one place.

Messages follow scikit-learn's habit: say what was expected, what arrived,
and how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported inside the checks that need it, so that
    import torch  # the LP workers (numpy and HiGHS only) start fast
    from torch import nn

    from lpinit.lp.problem import Formulation


class LPInitError(RuntimeError):
    """Base class for errors raised by lpinit beyond bad arguments."""


class SolverError(LPInitError):
    """A linear program could not be solved to a usable solution."""


class DataIntegrityError(LPInitError):
    """A bundled data file is missing or does not match its checksum."""


def check_data_tensor(data: Any, name: str = "data", min_dim: int = 1) -> torch.Tensor:
    """Return ``data`` if it is a non-empty, finite, floating tensor of samples
    with at least ``min_dim`` dimensions (samples first), holding values.

    Raises TypeError for a non-tensor or a non-floating dtype and ValueError
    for an empty tensor, too few dimensions, the meta device, or NaN/inf entries.
    """
    import torch

    if not isinstance(data, torch.Tensor):
        raise TypeError(
            f"Expected {name} to be a torch.Tensor of samples (first dimension = "
            f"samples), got {type(data).__name__}. Convert it with torch.as_tensor(...)."
        )
    if not data.is_floating_point():
        raise TypeError(
            f"Expected {name} to have a floating dtype, got {data.dtype}. "
            f"Convert it with {name}.float() (and normalize it as for training)."
        )
    if data.is_meta:
        raise ValueError(
            f"Expected {name} with values, got a tensor on the meta device (shape {tuple(data.shape)}). "
            "Pass real data, e.g. loaded with lpinit.load_mnist()."
        )
    if 1 <= data.dim() < min_dim:
        raise ValueError(
            f"Expected {name} of shape (n_samples, ...) with at least {min_dim} dimensions, got shape "
            f"{tuple(data.shape)}. For a single sample, add the sample dimension: {name}.unsqueeze(0)."
        )
    if data.dim() < 1 or data.shape[0] == 0:
        raise ValueError(
            f"Expected {name} with at least one sample (shape (n, ...), n >= 1), "
            f"got shape {tuple(data.shape)}. Pass a non-empty batch."
        )
    # A sum is finite when every entry is (barring overflow, caught by the exact
    # check): one cheap reduction instead of a boolean tensor the size of the data.
    if not torch.isfinite(data.sum()) and not torch.isfinite(data).all():
        bad = int((~torch.isfinite(data)).sum())
        raise ValueError(
            f"Expected finite {name}, got {bad} NaN or inf entries in a tensor of shape "
            f"{tuple(data.shape)}. Remove or impute those samples first."
        )
    return data


def check_model(model: Any, name: str = "model") -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``."""
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected {name} to be a torch.nn.Module, got {type(model).__name__}. "
            "Pass the network itself (e.g. lpinit.seed_mlp()), not its state_dict or output."
        )
    return model


def check_choice(value: Any, choices: Sequence[Any], name: str) -> Any:
    """Return ``value`` if it is one of ``choices``; otherwise list the valid ones."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"Unknown {name} {value!r}. Valid choices: {valid}.")
    return value


def _as_number(value: Any, name: str, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"Expected {name} to be {what}, got {value!r}.") from None


def check_finite(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite number."""
    number = _as_number(value, name, "a number")
    if not math.isfinite(number):
        raise ValueError(f"Expected {name} to be finite, got {value!r}. Pass e.g. {name}=0.1.")
    return number


def check_non_negative(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite number >= 0."""
    number = _as_number(value, name, "a number >= 0")
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"Expected {name} to be a finite number >= 0, got {value!r}. Pass e.g. {name}=0.1.")
    return number


def run_model(model: nn.Module, batch: torch.Tensor) -> Any:
    """``model(batch)``, with a shape or dtype mismatch turned into a ValueError
    that names the batch's shape and the features the model expects."""
    from torch import nn

    try:
        return model(batch)
    except RuntimeError as err:
        first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
        if isinstance(first, nn.Conv2d):
            hint = f" Its first layer, a Conv2d, expects {first.in_channels} input channels (n, C, H, W)."
        else:
            hint = f" Its first Linear layer expects {first.in_features} features." if first else ""
        raise ValueError(
            f"The model could not run on a batch of shape {tuple(batch.shape)} "
            f"(dtype {batch.dtype}): {err}.{hint} Reshape the data to what the model takes."
        ) from err


def as_float_array(x: Any, name: str, ndim: int, shape_hint: str) -> np.ndarray:
    """``x`` as a finite, non-empty float64 array with ``ndim`` dimensions."""
    try:
        array = np.asarray(x)
    except (TypeError, ValueError, RuntimeError) as err:  # e.g. a CUDA tensor, a ragged list
        raise TypeError(
            f"Expected {name} to be a numeric array, got a {type(x).__name__} that numpy cannot "
            f"read ({err}). Convert it, e.g. tensor.detach().cpu().numpy()."
        ) from err
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"Expected {name} to be a real numeric array, got dtype {array.dtype} "
            f"({type(x).__name__}). Convert it, e.g. tensor.detach().cpu().numpy()."
        )
    if array.ndim != ndim or 0 in array.shape:
        hint = "Reshape it with .reshape(1, -1) for a single sample." if array.ndim == 1 and ndim == 2 else ""
        raise ValueError(f"Expected {name} of shape {shape_hint}, non-empty, got shape {array.shape}. {hint}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(
            f"Expected finite values in {name}, got {int((~np.isfinite(array)).sum())} NaN or inf "
            "entries. Remove or impute them first."
        )
    return array


def check_layer_arrays(H: Any, W: Any, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layer's input ``H`` (n, d_in), weights ``W`` (k, d_in) and bias ``b``
    (k,) as float64 arrays of matching shapes."""
    H = as_float_array(H, "H", ndim=2, shape_hint="(n_samples, in_features)")
    W = as_float_array(W, "W", ndim=2, shape_hint="(out_features, in_features)")
    b = as_float_array(b, "b", ndim=1, shape_hint="(out_features,)")
    if W.shape[1] != H.shape[1]:
        raise ValueError(
            f"Expected W with H's {H.shape[1]} input features (W: (out_features, in_features)), "
            f"got W of shape {W.shape}. Pass the layer's weight and the input it receives."
        )
    if b.shape[0] != W.shape[0]:
        raise ValueError(
            f"Expected b with one entry per row of W ({W.shape[0]}), got b of shape {b.shape}. "
            "Pass the layer's bias (zeros if it has none)."
        )
    return H, W, b


def check_n_jobs(n_jobs: Any) -> int | None:
    """Return ``n_jobs`` if it is a positive int or None (one process per core)."""
    if n_jobs is None:
        return None
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)):
        raise TypeError(f"Expected n_jobs to be a positive int or None (all cores), got {n_jobs!r}.")
    if n_jobs < 1:
        raise ValueError(
            f"Expected n_jobs >= 1 or None (all cores), got {n_jobs}. Pass n_jobs=1 to solve in this process."
        )
    return int(n_jobs)


def check_max_rows(max_rows: Any) -> int | None:
    """Return ``max_rows`` if it is ``None`` (every row) or an int >= 1."""
    if max_rows is None:
        return None
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)):
        raise TypeError(f"Expected max_rows to be a positive int or None (every row), got {max_rows!r}.")
    if max_rows < 1:
        raise ValueError(f"Expected max_rows >= 1 or None (every row), got {max_rows}. Pass e.g. max_rows=2048.")
    return int(max_rows)


def check_seed(seed: Any, name: str) -> int:
    """Return ``seed`` if it is an int >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"Expected {name} to be an int >= 0, got {seed!r}.")
    if seed < 0:
        raise ValueError(f"Expected {name} >= 0, got {seed}. Pass e.g. {name}=0.")
    return int(seed)


def check_lp_options(margin: float, l1: Any, anchor: Any, target_active: Any) -> tuple[float, bool, float | None]:
    """``(l1, anchor, target_active)`` of the per-unit LP, checked against each other."""
    l1 = check_non_negative(l1, "l1")
    if not isinstance(anchor, (bool, np.bool_)):
        raise TypeError(f"Expected anchor to be True or False, got {anchor!r}.")
    if target_active is None:
        return l1, bool(anchor), None
    q = _as_number(target_active, "target_active", "a number in (0, 1)")
    if not 0.0 < q < 1.0:
        raise ValueError(
            f"Expected target_active in (0, 1) (the fraction of samples on which each unit is active), "
            f"got {target_active!r}. Pass e.g. target_active=0.8, or None for no activity target."
        )
    if l1:
        raise ValueError(
            f"target_active sets its own objective (the change, weighted 1, plus the shortfalls); got "
            f"l1={l1!r} beside it. Drop l1."
        )
    if not margin > 0:
        raise ValueError(
            f"Expected margin > 0 with target_active (the margin separates active from inactive rows), "
            f"got {margin!r}. Pass e.g. margin=0.1."
        )
    return l1, bool(anchor), q


def check_coverage_option(coverage: Any, target_active: float | None) -> int | None:
    """``coverage`` (rows active in at least that many units), checked; it
    needs activity targets to choose sets for."""
    if coverage is None:
        return None
    if isinstance(coverage, (bool, np.bool_)) or not isinstance(coverage, (int, np.integer)) or coverage < 1:
        raise ValueError(
            f"Expected coverage to be a whole number >= 1 (every row active in at least that many units), "
            f"got {coverage!r}. Pass e.g. coverage=1, or None for per-unit targets."
        )
    if target_active is None:
        raise ValueError(
            f"coverage={coverage} chooses the activity targets of a layer's units together, but "
            "target_active is None. Pass target_active (e.g. 0.1) with it, or drop coverage."
        )
    return int(coverage)


def check_formulation(
    in_features: int,
    weight_bound: float,
    bias_bound: float,
    margin: float,
    l1: Any,
    anchor: Any,
    target_active: Any,
    coverage: Any = None,
) -> Formulation:
    """The per-unit LP's options, checked, as a ``Formulation`` (absolute units)."""
    from lpinit.lp.problem import Formulation

    l1, anchor, target_active = check_lp_options(margin, l1, anchor, target_active)
    coverage = check_coverage_option(coverage, target_active)
    return Formulation(in_features, weight_bound, bias_bound, margin, l1, anchor, target_active, coverage)
