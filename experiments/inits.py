"""Named initializations, each deterministic given the seed.

Every run first builds its network with PyTorch's default initialization under
``torch.manual_seed(seed)`` (``build_model``), then ``initialize`` applies the
named scheme on top:

- random: ``default`` (leave PyTorch's init), ``kaiming_normal`` (He et al.
  2015, ReLU gain, fan-in, zero bias), ``xavier_uniform`` (Glorot & Bengio
  2010, zero bias), ``orthogonal`` (Saxe et al. 2014, zero bias);
- data-dependent / ReLU-aware baselines: ``lsuv`` (Mishkin & Matas 2016) and
  ``rai`` (Lu et al. 2019);
- ``lp@<radius>``: ``lpinit.lp_initialize`` on the default random start;
- ``bias_shift@<radius>``: the control. The same default random start; each
  Linear layer feeding a ReLU gets ONE constant added to its bias, chosen by
  bisection layer by layer in forward order, so that the layer's zero fraction
  on the LP batch equals what ``lp@<radius>`` reached for the same seed and
  architecture. If the LP only helped by adding bias, this matches it.

Random schemes draw from a ``torch.Generator`` seeded by the run's seed and
apply to every ``nn.Linear`` (definition order = forward order for the MLPs
used here).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from lpinit import lp_initialize
from lpinit.tracing import capture_layer_io, relu_fed_linears

FIXED_INITS = ("default", "kaiming_normal", "xavier_uniform", "orthogonal", "lsuv", "rai")
PARAMETRIC_INITS = ("lp", "bias_shift")
CONTROL_OF = {"lp": "bias_shift"}
"""The control that matches each parametric init's zero fractions at the same radius."""

ARCHS = {
    "seed": "the notebook's 784-750-320-50-10 MLP, ReLU on the logits",
    "mlp": "the same widths without the ReLU on the logits",
}

FAMILIES = {
    "default": "random",
    "kaiming_normal": "random",
    "xavier_uniform": "random",
    "orthogonal": "random",
    "lsuv": "data-dependent",
    "rai": "data-dependent",
    "lp": "lp",
    "bias_shift": "bias_shift",
}


VALID_INITS = ", ".join(FIXED_INITS) + ", " + ", ".join(f"{p}@<radius>" for p in PARAMETRIC_INITS)


class InitName(NamedTuple):
    """A parsed init name: ``lp@0.1`` is ``InitName("lp", 0.1)``, ``lsuv`` is ``InitName("lsuv", None)``."""

    scheme: str
    radius: float | None

    def __str__(self) -> str:
        return self.scheme if self.radius is None else f"{self.scheme}@{self.radius:g}"


def parse_init_name(name: str) -> InitName:
    """The one parser of init names (see the module docstring for the grammar)."""
    if not isinstance(name, str):
        raise TypeError(f"Expected an init name (str), got {type(name).__name__}. Valid inits: {VALID_INITS}.")
    scheme, sep, arg = name.partition("@")
    if not sep and scheme in FIXED_INITS:
        return InitName(scheme, None)
    if sep and scheme in PARAMETRIC_INITS:
        try:
            radius = float(arg)
        except ValueError:
            radius = math.nan
        if not 0 < radius < math.inf:
            raise ValueError(
                f"Expected a positive, finite radius after '@' in {name!r}, got {arg!r}; write e.g. {scheme}@0.1."
            )
        return InitName(scheme, radius)
    raise ValueError(f"Unknown init {name!r}. Valid inits: {VALID_INITS} (e.g. lp@0.1).")


def family(name: str) -> str:
    return FAMILIES[parse_init_name(name).scheme]


def control_of(name: str) -> str | None:
    """The name of the control run for ``name`` (``lp@0.1`` -> ``bias_shift@0.1``), or None."""
    parsed = parse_init_name(name)
    control = CONTROL_OF.get(parsed.scheme)
    return None if control is None else str(InitName(control, parsed.radius))


def is_control(name: str) -> bool:
    """Whether ``name`` is the control of another init (``bias_shift@r``)."""
    return parse_init_name(name).scheme in CONTROL_OF.values()


def build_model(arch: str, seed: int) -> nn.Module:
    """The architecture with PyTorch's default init drawn under ``manual_seed(seed)``.

    The global RNG is forked, so the caller's random state is untouched.
    """
    from lpinit import mlp, seed_mlp

    if arch not in ARCHS:
        raise ValueError(f"Unknown arch {arch!r}. Valid archs: {', '.join(ARCHS)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return seed_mlp() if arch == "seed" else mlp((784, 750, 320, 50, 10), final_relu=False)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def kaiming_normal_(model: nn.Module, generator: torch.Generator) -> None:
    """W ~ N(0, 2 / fan_in), b = 0."""
    for layer in _linears(model):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
        nn.init.zeros_(layer.bias)


@torch.no_grad()
def xavier_uniform_(model: nn.Module, generator: torch.Generator) -> None:
    """W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)), b = 0."""
    for layer in _linears(model):
        nn.init.xavier_uniform_(layer.weight, generator=generator)
        nn.init.zeros_(layer.bias)


@torch.no_grad()
def orthogonal_(model: nn.Module, generator: torch.Generator) -> None:
    """W = a (semi-)orthogonal matrix from the QR of a Gaussian one, b = 0."""
    for layer in _linears(model):
        nn.init.orthogonal_(layer.weight, generator=generator)
        nn.init.zeros_(layer.bias)


def _layer_outputs(model: nn.Module, batch: torch.Tensor, layers: Sequence[nn.Module]) -> list[torch.Tensor]:
    """Outputs of ``layers`` (pre-activations, for Linear layers) on ``batch``: each layer's first call."""
    with torch.no_grad():
        calls = capture_layer_io(model, layers, lambda: model(batch), what="output")
    return [outputs[0] for outputs in calls]


@torch.no_grad()
def lsuv_(
    model: nn.Module, batch: torch.Tensor, generator: torch.Generator, tol: float = 0.01, max_iter: int = 20
) -> list[float]:
    """Layer-sequential unit-variance init (Mishkin & Matas 2016, Algorithm 1).

    Orthogonal weights and zero biases, then for each Linear layer in forward
    order: while ``|Var(W x) - 1| >= tol`` on the batch, ``W <- W / sqrt(Var)``.
    Returns each layer's final pre-activation variance.
    """
    orthogonal_(model, generator)
    variances = []
    for layer in _linears(model):
        for _ in range(max_iter):
            (out,) = _layer_outputs(model, batch, [layer])
            var = float(out.var())
            if abs(var - 1.0) < tol or var == 0.0:
                break
            layer.weight.div_(math.sqrt(var))
        variances.append(var)
    return variances


@torch.no_grad()
def rai_(model: nn.Module, generator: torch.Generator) -> None:
    """Randomized asymmetric initialization (Lu, Shin, Su & Karniadakis 2019,
    "Dying ReLU and Initialization: Theory and Numerical Examples").

    For each neuron j, the row V_j = [W_j, b_j] (fan_in + 1 entries) is drawn
    i.i.d. from N(0, 0.6007^2 / fan_in); then ONE entry of V_j, chosen uniformly
    at random (it may be the bias), is replaced by a draw from Beta(2, 1), a
    positive, asymmetric distribution. This is the authors' published
    reference code (``V = randn(fan_out, fan_in + 1) * 0.6007 / fan_in**0.5``,
    ``V[j, k] = beta(2, 1)``); 0.6007 makes the second moment match He init.
    Beta(2, 1) is sampled as sqrt(U), U ~ U(0, 1) (its CDF is x^2), so the
    draw uses the seeded generator.
    """
    for layer in _linears(model):
        fan_out, fan_in = layer.weight.shape
        v = torch.randn(fan_out, fan_in + 1, generator=generator) * (0.6007 / math.sqrt(fan_in))
        k = torch.randint(0, fan_in + 1, (fan_out,), generator=generator)
        v[torch.arange(fan_out), k] = torch.rand(fan_out, generator=generator).sqrt()
        layer.weight.copy_(v[:, :-1])
        layer.bias.copy_(v[:, -1])


def lp_(model: nn.Module, batch: torch.Tensor, radius: float, margin: float) -> dict:
    """``lpinit.lp_initialize`` with one job and no progress bar (runs are
    already parallel over processes); returns its report as data."""
    report = lp_initialize(model, batch, radius=radius, margin=margin, n_jobs=1, progress=False)
    return _jsonable_report(report)


def _jsonable_report(report) -> dict:
    import json

    import numpy as np

    to_dict = getattr(report, "to_dict", None)
    data = to_dict() if callable(to_dict) else {"repr": repr(report)}

    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, (np.generic,)):
            return x.item()
        if isinstance(x, torch.Tensor):
            return x.tolist()
        if isinstance(x, (str, int, float, bool)) or x is None:
            return x
        return str(x)

    data = clean(data)
    # Keep the record small: big per-unit arrays stay out of runs.jsonl.
    if len(json.dumps(data)) > 20_000:
        data = {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return data


def relu_zero_fractions(model: nn.Module, batch: torch.Tensor) -> list[float]:
    """Zero fraction of the ReLU fed by each Linear layer (forward order) on ``batch``."""
    layers = [layer for _, layer in relu_fed_linears(model, batch[:1])]
    return [float((z <= 0).float().mean()) for z in _layer_outputs(model, batch, layers)]


def bisect_bias_shift(z: torch.Tensor, target: float, iters: int = 60) -> float:
    """The constant c whose ``mean(z + c <= 0)`` is closest to ``target``.

    The zero fraction falls monotonically as c grows; bracket, then bisect.
    """

    def frac(c: float) -> float:
        return float((z + c <= 0).float().mean())

    lo, hi = -1.0, 1.0
    for _ in range(64):
        if frac(lo) >= target:
            break
        lo *= 2
    for _ in range(64):
        if frac(hi) <= target:
            break
        hi *= 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        if frac(mid) > target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda c: abs(frac(c) - target))


@torch.no_grad()
def bias_shift_(model: nn.Module, batch: torch.Tensor, targets: list[float]) -> list[float]:
    """Add one constant per ReLU-fed Linear layer to its bias, in forward order,
    so that its zero fraction on ``batch`` matches ``targets``; return the shifts."""
    layers = [layer for _, layer in relu_fed_linears(model, batch[:1])]
    if len(targets) != len(layers):
        raise ValueError(f"Expected one target zero fraction per ReLU-fed layer ({len(layers)}), got {len(targets)}.")
    shifts = []
    for layer, target in zip(layers, targets, strict=True):
        (z,) = _layer_outputs(model, batch, [layer])
        c = bisect_bias_shift(z, target)
        layer.bias.add_(c)
        shifts.append(c)
    return shifts


def initialize(
    name: str,
    model: nn.Module,
    batch: torch.Tensor,
    seed: int,
    *,
    lp_margin: float = 0.1,
    lp_targets: Callable[[float], list[float]] | None = None,
) -> dict:
    """Apply the named init in place to ``model`` (built by ``build_model``).

    Args:
        name: an init name (see the module docstring).
        model: the network with PyTorch's default init for ``seed``.
        batch: the LP batch (used by lsuv, lp@, bias_shift@).
        seed: the run's seed; seeds the generator of random schemes.
        lp_margin: margin for ``lp_initialize``.
        lp_targets: for bias_shift, returns the LP's per-layer zero fractions at
            a radius for this seed and arch (e.g. from a cache); by default the
            LP is run on a copy of the model.

    Returns:
        A JSON-ready dict of what the init did (LSUV variances, shifts, LP report).
    """
    scheme, radius = parse_init_name(name)
    generator = torch.Generator().manual_seed(seed)
    info: dict = {}
    if radius is None:
        if scheme == "kaiming_normal":
            kaiming_normal_(model, generator)
        elif scheme == "xavier_uniform":
            xavier_uniform_(model, generator)
        elif scheme == "orthogonal":
            orthogonal_(model, generator)
        elif scheme == "lsuv":
            info["lsuv_variances"] = lsuv_(model, batch, generator)
        elif scheme == "rai":
            rai_(model, generator)
        elif scheme != "default":  # parse_init_name already rejected anything else
            raise ValueError(f"Unhandled init {name!r}.")
    elif scheme == "lp":
        info["lp_report"] = lp_(model, batch, radius, lp_margin)
    elif scheme == "bias_shift":
        if lp_targets is None:
            lp_model = copy.deepcopy(model)
            lp_(lp_model, batch, radius, lp_margin)
            targets = relu_zero_fractions(lp_model, batch)
        else:
            targets = lp_targets(radius)
        info["bias_shift_targets"] = targets
        info["bias_shifts"] = bias_shift_(model, batch, targets)
        info["bias_shift_reached"] = relu_zero_fractions(model, batch)
    else:
        raise ValueError(f"Unhandled init {name!r}.")
    return info
