"""lpinit: initialize ReLU networks with a per-layer linear program so that
fewer ReLUs output zero on real data, and measure whether that helps.

Names are imported on first use (PEP 562), so that the LP solver's worker
processes, which need only numpy and HiGHS, start without importing torch.
Type checkers see the real names through the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lpinit.controls import bias_shift_, quantile_bias_
    from lpinit.counting import ReluCount, ReluZeros, SiteZeros, count_relu_zeros
    from lpinit.data import MNIST_MEAN, MNIST_STD, load_mnist
    from lpinit.initialize import LayerReport, LPInitReport, lp_initialize
    from lpinit.lp import start_workers, stop_workers
    from lpinit.models import SeedMLP, cnn, mlp, seed_mlp
    from lpinit.theory import activation_pattern, l_gen, linear_map_change, local_affine_map, pattern_change
    from lpinit.validation import DataIntegrityError, LPInitError, SolverError

_EXPORTS = {
    "lp_initialize": "initialize",
    "LPInitReport": "initialize",
    "LayerReport": "initialize",
    "quantile_bias_": "controls",
    "bias_shift_": "controls",
    "start_workers": "lp",
    "stop_workers": "lp",
    "count_relu_zeros": "counting",
    "ReluZeros": "counting",
    "SiteZeros": "counting",
    "ReluCount": "counting",
    "load_mnist": "data",
    "MNIST_MEAN": "data",
    "MNIST_STD": "data",
    "seed_mlp": "models",
    "SeedMLP": "models",
    "mlp": "models",
    "cnn": "models",
    "local_affine_map": "theory",
    "activation_pattern": "theory",
    "l_gen": "theory",
    "linear_map_change": "theory",
    "pattern_change": "theory",
    "LPInitError": "validation",
    "SolverError": "validation",
    "DataIntegrityError": "validation",
}

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "DataIntegrityError",
    "LPInitError",
    "LPInitReport",
    "LayerReport",
    "ReluCount",
    "ReluZeros",
    "SeedMLP",
    "SiteZeros",
    "SolverError",
    "activation_pattern",
    "bias_shift_",
    "cnn",
    "count_relu_zeros",
    "l_gen",
    "linear_map_change",
    "load_mnist",
    "local_affine_map",
    "lp_initialize",
    "mlp",
    "pattern_change",
    "quantile_bias_",
    "seed_mlp",
    "start_workers",
    "stop_workers",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f"lpinit.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lpinit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
