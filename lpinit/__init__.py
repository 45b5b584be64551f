"""lpinit: initialize ReLU networks with a per-layer linear program so that
fewer ReLUs output zero on real data, and measure whether that helps.

Names are imported on first use (PEP 562), so that the LP solver's worker
processes, which need only numpy and HiGHS, start without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "lp_initialize": "initialize",
    "LPInitReport": "initialize",
    "LayerReport": "initialize",
    "start_helpers": "lp",
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
    "local_affine_map": "theory",
    "activation_pattern": "theory",
    "l_gen": "theory",
    "linear_map_change": "theory",
    "pattern_change": "theory",
    "LPInitError": "validation",
    "SolverError": "validation",
    "DataIntegrityError": "validation",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f"lpinit.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lpinit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
