"""Named initializations, each deterministic given the seed.

Every run first builds its network with PyTorch's default initialization under
``torch.manual_seed(seed)`` (``build_model``), then ``initialize`` applies the
named init on top (``experiments.init_names`` gives the grammar): first its base,

- random: ``default`` (leave PyTorch's init), ``kaiming_normal`` (He et al.
  2015, ReLU gain, fan-in, zero bias), ``xavier_uniform`` (Glorot & Bengio
  2010, zero bias), ``orthogonal`` (Saxe et al. 2014, zero bias);
- data-dependent / ReLU-aware baselines: ``lsuv`` (Mishkin & Matas 2016) and
  ``rai`` (Lu et al. 2019);

then its steps in order: ``lp(...)`` (``lpinit.lp_initialize``),
``quantile_bias(...)`` (``lpinit.quantile_bias_``) and ``bias_shift(...)``, the
control of ``lp(...)`` with the same keys: from the same start, each ReLU-fed
layer gets ONE constant added to its bias so that the layer's zero fraction on
the LP batch equals what that LP reached for the same seed and architecture
(``lpinit.bias_shift_``). If the LP only helped by adding bias, this matches it.

Random schemes draw from a ``torch.Generator`` seeded by the run's seed and
apply to every ``nn.Linear`` (definition order = forward order for the MLPs
used here).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from experiments.init_names import (
    BASES,
    VALID_INITS,
    InitSpec,
    Step,
    control_of,
    family,
    is_control,
    parse_init_name,
)
from lpinit import bias_shift_, lp_initialize, quantile_bias_
from lpinit.tracing import capture_layer_io, relu_fed_layers

FIXED_INITS = BASES
LP_RADII = (0.02, 0.05, 0.1, 0.2)
"""The radii of the first comparison's ``lp@<radius>`` and ``bias_shift@<radius>``."""
LEGACY_INITS = tuple(f"{kind}@{r:g}" for kind in ("lp", "bias_shift") for r in LP_RADII)

ARCHS = {
    "seed": "the notebook's 784-750-320-50-10 MLP, ReLU on the logits",
    "mlp": "the same widths without the ReLU on the logits",
    "cnn": "a LeNet-5-style CNN (lpinit.cnn), no ReLU on the logits",
}

__all__ = [
    "ARCHS",
    "FIXED_INITS",
    "LEGACY_INITS",
    "VALID_INITS",
    "InitSpec",
    "build_model",
    "control_of",
    "family",
    "initialize",
    "is_control",
    "parse_init_name",
]


def build_model(arch: str, seed: int) -> nn.Module:
    """The architecture with PyTorch's default init drawn under ``manual_seed(seed)``.

    The global RNG is forked, so the caller's random state is untouched.
    """
    from lpinit import cnn, mlp, seed_mlp

    if arch not in ARCHS:
        raise ValueError(f"Unknown arch {arch!r}. Valid archs: {', '.join(ARCHS)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "cnn":
            return cnn()
        return seed_mlp() if arch == "seed" else mlp((784, 750, 320, 50, 10), final_relu=False)


def _layers(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    """The layers a scheme initializes: Linear and Conv2d, in definition order
    (= forward order for the networks used here)."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@torch.no_grad()
def kaiming_normal_(model: nn.Module, generator: torch.Generator) -> None:
    """W ~ N(0, 2 / fan_in), b = 0."""
    for layer in _layers(model):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


@torch.no_grad()
def xavier_uniform_(model: nn.Module, generator: torch.Generator) -> None:
    """W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)), b = 0."""
    for layer in _layers(model):
        nn.init.xavier_uniform_(layer.weight, generator=generator)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


@torch.no_grad()
def orthogonal_(model: nn.Module, generator: torch.Generator) -> None:
    """W = a (semi-)orthogonal matrix from the QR of a Gaussian one, b = 0."""
    for layer in _layers(model):
        nn.init.orthogonal_(layer.weight, generator=generator)
        if layer.bias is not None:
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

    Orthogonal weights and zero biases (a Conv2d's kernel reshaped to
    (out_channels, in_channels * kh * kw), as the paper does), then for each
    Linear and Conv2d layer in forward order: while ``|Var(W x) - 1| >= tol``
    on the batch (over samples, channels and positions), ``W <- W / sqrt(Var)``.
    Returns each layer's final pre-activation variance.
    """
    orthogonal_(model, generator)
    variances = []
    for layer in _layers(model):
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

    For each neuron j (a Conv2d: each output channel, fan_in = in_channels *
    kh * kw), the row V_j = [W_j, b_j] (fan_in + 1 entries) is drawn
    i.i.d. from N(0, 0.6007^2 / fan_in); then ONE entry of V_j, chosen uniformly
    at random (it may be the bias), is replaced by a draw from Beta(2, 1), a
    positive, asymmetric distribution. This is the authors' published
    reference code (``V = randn(fan_out, fan_in + 1) * 0.6007 / fan_in**0.5``,
    ``V[j, k] = beta(2, 1)``); 0.6007 makes the second moment match He init.
    Beta(2, 1) is sampled as sqrt(U), U ~ U(0, 1) (its CDF is x^2), so the
    draw uses the seeded generator.
    """
    for layer in _layers(model):
        fan_out = layer.weight.shape[0]
        fan_in = layer.weight[0].numel()
        v = torch.randn(fan_out, fan_in + 1, generator=generator) * (0.6007 / math.sqrt(fan_in))
        k = torch.randint(0, fan_in + 1, (fan_out,), generator=generator)
        v[torch.arange(fan_out), k] = torch.rand(fan_out, generator=generator).sqrt()
        layer.weight.copy_(v[:, :-1].reshape(layer.weight.shape))
        if layer.bias is not None:
            layer.bias.copy_(v[:, -1])


def lp_options(step: Step, default_margin: float) -> dict:
    """``lp_initialize``'s keyword arguments for an ``lp(...)`` (or ``bias_shift(...)``) step.

    Every option is passed explicitly, an unset key meaning "off" (the LP as
    first posed: radius 0.1, no rescaling, no anchor, no l1 term, no activity
    target), so that a recorded name keeps its meaning when lp_initialize's
    defaults change.
    """
    return {
        "radius": step.number("radius", 0.1),
        "margin": step.number("margin", default_margin),
        "rescale": _rescale(step),
        "anchor": None if step.get("anchor") is None else str(step.get("anchor")),
        "l1": step.number("l1", 0.0),
        "target_active": None if step.get("target") is None else step.number("target", 0.5),
        "coverage": None if step.get("coverage") is None else int(step.number("coverage", 1)),
    }


def lp_(model: nn.Module, batch: torch.Tensor, radius: float, margin: float, **options) -> dict:
    """``lpinit.lp_initialize`` with one job and no progress bar (runs are
    already parallel over processes); returns its report as data."""
    report = lp_initialize(model, batch, radius=radius, margin=margin, n_jobs=1, progress=False, **options)
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
    layers = [layer for _, layer in relu_fed_layers(model, batch[:1])]
    return [float((z <= 0).float().mean()) for z in _layer_outputs(model, batch, layers)]


LPTargets = Callable[[InitSpec], list[float]]
"""``targets(lp_init)``: the per-layer zero fractions on the LP batch that
``lp_init`` (an init ending with an ``lp`` step) reaches, e.g. from a cache."""


def initialize(
    name: str,
    model: nn.Module,
    batch: torch.Tensor,
    seed: int,
    *,
    lp_margin: float = 0.1,
    lp_targets: LPTargets | None = None,
) -> dict:
    """Apply the named init in place to ``model`` (built by ``build_model``).

    Args:
        name: an init name (``experiments.init_names``).
        model: the network with PyTorch's default init for ``seed``.
        batch: the LP batch (used by lsuv and the steps).
        seed: the run's seed; seeds the generator of random schemes.
        lp_margin: the margin of ``lp`` steps that give none.
        lp_targets: for a ``bias_shift`` step, the per-layer zero fractions of
            the LP it matches; by default that LP is run on a copy of the model.

    Returns:
        A JSON-ready dict of what the init did (LSUV variances, LP report, shifts).
    """
    spec = parse_init_name(name)
    generator = torch.Generator().manual_seed(seed)
    info: dict = {}
    if spec.base == "kaiming_normal":
        kaiming_normal_(model, generator)
    elif spec.base == "xavier_uniform":
        xavier_uniform_(model, generator)
    elif spec.base == "orthogonal":
        orthogonal_(model, generator)
    elif spec.base == "lsuv":
        info["lsuv_variances"] = lsuv_(model, batch, generator)
    elif spec.base == "rai":
        rai_(model, generator)
    elif spec.base != "default":  # parse_init_name already rejected anything else
        raise ValueError(f"Unhandled base init {spec.base!r}.")
    for position, step in enumerate(spec.steps):
        if step.kind == "lp":
            info["lp_report"] = lp_(model, batch, **lp_options(step, lp_margin))
        elif step.kind == "quantile_bias":
            result = quantile_bias_(model, batch, step.number("q", 0.5), rescale=_rescale(step))
            info["quantile_bias"] = [_change_summary(change) for change, _ in result.layers]
        elif step.kind == "bias_shift":
            matched = InitSpec(spec.base, (*spec.steps[:position], Step("lp", step.options)), spec.legacy)
            if lp_targets is None:
                lp_model = copy.deepcopy(model)
                lp_(lp_model, batch, **lp_options(step, lp_margin))
                targets = relu_zero_fractions(lp_model, batch)
            else:
                targets = lp_targets(matched)
            result = bias_shift_(model, batch, targets, rescale=_rescale(step))
            info["bias_shift_targets"] = targets
            info["bias_shifts"] = [shift for _, shift in result.layers]
            info["bias_shift_reached"] = relu_zero_fractions(model, batch)
        else:
            raise ValueError(f"Unhandled step {step.kind!r}.")
    return info


def _rescale(step: Step) -> str | None:
    value = step.get("rescale")
    return None if value is None else str(value)


def _change_summary(change) -> dict:
    """What the report keeps of a ``lpinit.layerwise.LayerChange``."""
    return {
        "name": change.name,
        "zeros_before": change.zeros_before,
        "zeros_after": change.zeros_after,
        "elements": change.elements,
        "preact_rms_before": change.before.rms,
        "preact_rms_after": change.after.rms,
    }
