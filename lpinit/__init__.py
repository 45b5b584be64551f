"""lpinit: initialize ReLU networks with a per-layer linear program so that
fewer ReLUs output zero on real data, and measure whether that helps."""

from lpinit.counting import ReluCount, ReluZeros, SiteZeros, count_relu_zeros
from lpinit.data import MNIST_MEAN, MNIST_STD, load_mnist
from lpinit.initialize import LayerReport, LPInitReport, lp_initialize
from lpinit.models import SeedMLP, mlp, seed_mlp
from lpinit.theory import (
    activation_pattern,
    l_gen,
    linear_map_change,
    local_affine_map,
    pattern_change,
)
from lpinit.validation import DataIntegrityError, LPInitError, SolverError

__all__ = [
    "lp_initialize",
    "LPInitReport",
    "LayerReport",
    "count_relu_zeros",
    "ReluZeros",
    "SiteZeros",
    "ReluCount",
    "load_mnist",
    "MNIST_MEAN",
    "MNIST_STD",
    "seed_mlp",
    "SeedMLP",
    "mlp",
    "local_affine_map",
    "activation_pattern",
    "l_gen",
    "linear_map_change",
    "pattern_change",
    "LPInitError",
    "SolverError",
    "DataIntegrityError",
]
