"""The initializations compared on deep, narrow networks, drawn per seed.

Every network of a ``StackedMLP`` is drawn from its own ``torch.Generator``
seeded with its seed, layer by layer in forward order, so network s is the
same whatever batch it is drawn in. The draws repeat, call for call, those of
``experiments.inits`` on an ``nn.Sequential`` of the same shape (tested):

- ``he``: ``kaiming_normal_`` (fan-in, ReLU gain), zero biases: the symmetric
  init whose born-dead probability Lu et al. (2019) bound;
- ``default``: PyTorch's ``nn.Linear`` init, W and b ~ U(-1/sqrt(fan_in), +);
- ``rai``: randomized asymmetric init, the authors' published code
  (``experiments.inits.rai_``);
- ``orthogonal``: ``orthogonal_`` weights, zero biases;
- ``lsuv``: orthogonal, then each layer rescaled to unit pre-activation
  variance on the training inputs (``experiments.inits.lsuv_``, batched);
- ``lp@<radius>``: the plain LP, ``lpinit.lp_initialize(radius, margin,
  rescale=None, target_active=None)`` on the ``he`` draw;
- ``lp_target@<q>``: ``lp_initialize(radius, margin, target_active=q,
  rescale="unit")`` on the ``he`` draw;
- ``quantile_bias@<q>``: ``lpinit.quantile_bias_(q, rescale="unit")`` on the
  ``he`` draw, the closed-form control of ``lp_target@<q>``.

The LP family starts from ``he``, so seed s of an LP init is seed s of ``he``
moved by the LP: each LP seed pairs with a He seed. LP inits run per seed on an
unbatched ``nn.Sequential`` (unstack, initialize, restack) and cost HiGHS time.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from experiments.collapse.stacked import StackedMLP

BASE_INITS = ("he", "default", "rai", "orthogonal", "lsuv")
LP_INITS = ("lp", "lp_target", "quantile_bias")
MAX_DETAILS = 25


def parse_init(name: str) -> tuple[str, float | None]:
    """Split ``"lp@0.1"`` into ``("lp", 0.1)`` and ``"he"`` into ``("he", None)``."""
    valid = ", ".join(BASE_INITS) + ", lp@<radius>, lp_target@<q>, quantile_bias@<q>"
    if not isinstance(name, str):
        raise TypeError(f"Expected an init name (str), got {type(name).__name__}. Valid inits: {valid}.")
    base, sep, arg = name.partition("@")
    if not sep and base in BASE_INITS:
        return base, None
    if sep and base in LP_INITS:
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if base == "lp" and not value > 0:
            raise ValueError(f"Expected a positive radius after '@' in {name!r}, e.g. lp@0.1.")
        if base != "lp" and not 0 < value < 1:
            raise ValueError(f"Expected an activity target 0 < q < 1 after '@' in {name!r}, e.g. {base}@0.5.")
        return base, value
    raise ValueError(f"Unknown init {name!r}. Valid inits: {valid}.")


def is_lp_family(name: str) -> bool:
    return parse_init(name)[0] in LP_INITS


# ------------------------------------------------------------ per-seed draws


Layers = list[tuple[torch.Tensor, torch.Tensor]]


def _he(widths, g, dtype) -> Layers:
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        w = torch.empty(fan_out, fan_in, dtype=dtype)
        nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g)
        layers.append((w, torch.zeros(fan_out, dtype=dtype)))
    return layers


def _default(widths, g, dtype) -> Layers:
    """``nn.Linear.reset_parameters``, drawn from ``g`` (weight, then bias, per layer)."""
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        w, b = torch.empty(fan_out, fan_in, dtype=dtype), torch.empty(fan_out, dtype=dtype)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(b, -bound, bound, generator=g)
        layers.append((w, b))
    return layers


def _orthogonal(widths, g, dtype) -> Layers:
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        w = torch.empty(fan_out, fan_in, dtype=dtype)
        nn.init.orthogonal_(w, generator=g)
        layers.append((w, torch.zeros(fan_out, dtype=dtype)))
    return layers


def _rai(widths, g, dtype) -> Layers:
    """V = [W, b] ~ N(0, 0.6007^2 / fan_in), one entry per row replaced by a
    Beta(2, 1) draw, as in the authors' code and ``experiments.inits.rai_``."""
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        v = torch.randn(fan_out, fan_in + 1, generator=g) * (0.6007 / math.sqrt(fan_in))
        k = torch.randint(0, fan_in + 1, (fan_out,), generator=g)
        v[torch.arange(fan_out), k] = torch.rand(fan_out, generator=g).sqrt()  # Beta(2, 1): CDF x^2
        v = v.to(dtype)
        layers.append((v[:, :-1].contiguous(), v[:, -1].contiguous()))
    return layers


_DRAWS = {"he": _he, "default": _default, "orthogonal": _orthogonal, "rai": _rai, "lsuv": _orthogonal}


def draw(base: str, widths: tuple[int, ...], seeds: list[int], dtype=torch.float32) -> StackedMLP:
    """The random part of init ``base`` for each seed, stacked."""
    fn = _DRAWS[base]
    return StackedMLP.from_layers([fn(widths, torch.Generator().manual_seed(s), dtype) for s in seeds])


@torch.no_grad()
def lsuv_rescale_(model: StackedMLP, x: torch.Tensor, tol: float = 0.01, max_iter: int = 20) -> torch.Tensor:
    """Mishkin & Matas' LSUV loop on every network at once, as ``experiments.inits.lsuv_``:
    for each layer in forward order, while ``|Var(Wh + b) - 1| >= tol`` on the inputs,
    ``W <- W / sqrt(Var)`` (stopping at a zero variance). Returns the final variances (S, layers)."""
    h = x.t().expand(model.n_seeds, -1, -1)
    variances = []
    last = len(model.weights) - 1
    for l, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        for _ in range(max_iter):
            var = torch.baddbmm(b.unsqueeze(2), w, h).flatten(1).var(dim=1)
            todo = ((var - 1).abs() >= tol) & (var != 0)
            if not todo.any():
                break
            w[todo] /= var[todo].sqrt()[:, None, None]
        variances.append(var)
        z = torch.baddbmm(b.unsqueeze(2), w, h)
        h = torch.relu(z) if l < last else z
    return torch.stack(variances, dim=1)


# ------------------------------------------------------------ the LP family


@dataclass
class LPOutcome:
    """What an LP-family init did, per seed (only seeds it left born dead are detailed)."""

    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)  # seeds the LP left born dead, with the reason
    status_counts: dict[str, int] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)  # seeds where the init raised (the He draw is kept)


def _lp_one(name: str, base: str, value: float, model: nn.Sequential, x: torch.Tensor, radius: float, margin: float):
    import lpinit

    # every LP option passed, so that a name keeps its meaning whatever lp_initialize's defaults are
    if base in ("lp", "lp_target"):
        target, rescale = (None, None) if base == "lp" else (value, "unit")
        return lpinit.lp_initialize(
            model,
            x,
            radius=value if base == "lp" else radius,
            margin=margin,
            rescale=rescale,
            anchor=None,
            l1=0.0,
            target_active=target,
            n_jobs=1,
            progress=False,
        )
    if base == "quantile_bias":
        return lpinit.quantile_bias_(model, x, value, rescale="unit")
    raise ValueError(f"Unhandled LP-family init {name!r}.")


def apply_lp(
    name: str, model: StackedMLP, x: torch.Tensor, seeds: list[int], *, radius: float, margin: float
) -> tuple[StackedMLP, LPOutcome]:
    """Run LP-family init ``name`` on each network of ``model`` (the He draws of
    ``seeds``): unstack, initialize, restack. Returns the new model and an
    ``LPOutcome`` naming every seed the init left born dead and why."""
    import time

    from experiments.collapse.measure import dead_units

    base, value = parse_init(name)
    assert value is not None
    t0 = time.perf_counter()
    nets, outcome = [], LPOutcome()
    for i, seed in enumerate(seeds):
        net = model.to_sequential(i)
        try:
            report = _lp_one(name, base, value, net, x, radius, margin)
        except ValueError as err:
            # lp_initialize refuses some inputs (target_active on a layer whose pre-activations are
            # constant on the batch: an earlier layer it left dead); it then leaves the model as it
            # was, so this network keeps its He draw, and the record says so.
            outcome.errors.append({"seed": seed, "error": str(err)[:300]})
            report = None
        for status, count in (getattr(report, "status_counts", lambda: {})() or {}).items():
            outcome.status_counts[status] = outcome.status_counts.get(status, 0) + count
        nets.append(net)
        after = StackedMLP.from_sequentials([net])
        dead = dead_units(after, x)[0]
        width = after.widths[1]
        if (dead == width).any():
            outcome.failures.append(_why_dead(seed, model.select([i]), after, x, dead, width, report))
    outcome.seconds = time.perf_counter() - t0
    return StackedMLP.from_sequentials(nets), outcome


def _why_dead(seed, before: StackedMLP, after: StackedMLP, x, dead, width, report) -> dict:
    """Why network ``seed`` is still born dead after the LP: the first dead layer
    had a nonzero input, so its own LP box (or solver) could not lift any
    pre-activation above zero ("box", "solver"; "ties" for ``quantile_bias_``,
    whose threshold then fell between tied values); every later layer got an
    all-zero input. "error": the init raised and the network kept its He draw."""
    first = int((dead == width).nonzero()[0])
    _, hidden = after.forward(x, hidden=True)
    h_in = x.t() if first == 0 else hidden[first - 1][0]
    z_before = before.weights[first][0] @ h_in + before.biases[first][0][:, None]
    z_after = after.weights[first][0] @ h_in + after.biases[first][0][:, None]
    if report is None:
        return {"seed": seed, "first_dead_layer": first + 1, "reason": "error", "zero_input_layers": 0,
                "zero_bias_box_layers": 0, "max_preact_after": float("nan")}  # fmt: skip
    layers = list(report.layers)
    closed_form = bool(layers) and isinstance(layers[0], tuple)  # quantile_bias_: (LayerChange, thresholds) per layer
    info = None if closed_form or first >= len(layers) else layers[first]
    statuses = dict(getattr(info, "status_counts", {}) or {})
    unsolved = any(k != "optimal" and v for k, v in statuses.items())
    # quantile_bias_: a threshold between tied values of H w leaves no pre-activation above it
    reason = "ties" if closed_form else ("solver" if unsolved else "box")
    later = [l for i, l in enumerate(layers) if i > first]
    return {
        "seed": seed,
        "first_dead_layer": first + 1,
        "reason": reason,
        "max_preact_before": float(z_before.max()),
        "max_preact_after": float(z_after.max()),
        "weight_bound": getattr(info, "weight_bound", None),
        "bias_bound": getattr(info, "bias_bound", None),
        "margin": getattr(info, "margin", None),
        "statuses": statuses,
        "zero_input_layers": len(later),
        "zero_bias_box_layers": sum(1 for l in later if getattr(l, "bias_bound", None) == 0),
    }


def initialize(
    name: str,
    widths: tuple[int, ...],
    seeds: list[int],
    x: torch.Tensor,
    *,
    lp_radius: float = 0.1,
    lp_margin: float = 0.1,
    dtype=torch.float32,
) -> tuple[StackedMLP, dict]:
    """Init ``name`` for every seed, stacked; returns the model and a JSON-ready
    dict of what the init did (empty for random inits)."""
    base, _ = parse_init(name)
    x = x.to(dtype)
    if base in LP_INITS:
        he = draw("he", widths, seeds, dtype)
        model, outcome = apply_lp(name, he, x, seeds, radius=lp_radius, margin=lp_margin)
        reasons: dict[str, int] = {}
        for failure in outcome.failures:
            reasons[failure["reason"]] = reasons.get(failure["reason"], 0) + 1
        return (
            model,
            {
                "lp_seconds": round(outcome.seconds, 3),
                "lp_status_counts": outcome.status_counts,
                "lp_left_dead_reasons": reasons,
                "lp_left_dead": outcome.failures[:MAX_DETAILS],  # the first few in full, to keep records small
                "lp_errors": len(outcome.errors),
                "lp_error_details": outcome.errors[:MAX_DETAILS],
            },
        )
    model = draw(base, widths, seeds, dtype)
    if base == "lsuv":
        lsuv_rescale_(model, x)
    return model, {}
