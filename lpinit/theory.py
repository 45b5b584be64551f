"""The seed notebook's argument, made checkable: local affine maps and L_gen.

A network of ``nn.Linear`` layers and ReLUs is piecewise affine. At an input
``x`` whose activation pattern (which ReLU units are positive) is fixed, it is
exactly

.. math::
    f(x) = A(x)\\,x + c(x), \\qquad
    A(x) = W_L D_{L-1} W_{L-1} \\cdots D_1 W_1,

with :math:`D_k = \\mathrm{diag}(\\text{pattern of ReLU } k)` (and a trailing
:math:`D_L` when the network ends in a ReLU); :math:`c(x)` collects the biases
pushed through the same masked layers. The notebook defines, for a perturbed
input :math:`x^* = x + x'` and perturbed parameters :math:`P^* = P + P'`,

.. math::
    L_{gen} = (f(x, P) - f(x, P^*)) - (f(x^*, P) - f(x^*, P^*))

and argues that :math:`L_{gen} = A' x'` with :math:`A' = A(x; P^*) - A(x; P)`
when the perturbations leave the activation pattern alone. Expanding the four
terms shows what is actually needed: the pattern at :math:`x^*` must equal the
one at :math:`x`, under :math:`P` and under :math:`P^*` (the biases then
cancel). The notebook's condition, "no evaluation changes the pattern of
:math:`f(x, P)`", implies it. :class:`PatternChange` reports both.

Supported models are chains of ``nn.Linear`` and ReLU (modules, reused modules
or ``F.relu``/``torch.relu`` calls, in place or not), with ``nn.Flatten``,
``nn.Identity``, ``nn.Dropout`` (the model runs in eval mode) or any reshaping
between them: the networks :func:`lpinit.counting.count_relu_zeros` counts.
The chain is found by tracing one forward pass and checked value by value;
anything else that changes values (convolutions, batch norm, pooling, a
residual sum, ``x * 2`` in ``forward``) raises a ValueError. For such models,
``torch.func.jacrev`` gives the local linear map, without the pattern.

Every function runs the model in eval mode under ``torch.no_grad()`` and leaves
its parameters and mode unchanged; perturbed parameters are applied with
``torch.func.functional_call``. Local maps are computed in float64; model
outputs (and so ``l_gen``) come in the model's dtype, so call ``model.double()``
(on a copy) when you compare at float64 precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from lpinit.tracing import ReluCall, eval_mode, watch_relus
from lpinit.validation import check_data_tensor, check_model

# Leaf modules that run in a forward pass without changing values (in eval mode).
_PASS_THROUGH = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)

ParamPert = Mapping[str, torch.Tensor]
"""A perturbation of the parameters: name (as in ``model.named_parameters()``) -> P'."""


@dataclass
class _Linear:
    weight: torch.Tensor  # (out, in) float64
    bias: torch.Tensor | None  # (out,) float64


@dataclass
class _Chain:
    """One traced forward pass: the ops in order and what they produced."""

    steps: list  # _Linear, or a (n, units) bool mask for a ReLU
    output: torch.Tensor  # (n, out) model output, flattened, in the model's dtype

    @property
    def masks(self) -> list[torch.Tensor]:
        return [s for s in self.steps if not isinstance(s, _Linear)]

    def pattern(self) -> torch.Tensor:
        masks = self.masks
        if not masks:
            return torch.zeros(self.output.shape[0], 0, dtype=torch.bool, device=self.output.device)
        return torch.cat(masks, dim=1)


@dataclass
class PatternChange:
    """Whether perturbations change the activation pattern at each sample.

    The reference is the pattern of f(x, P); the perturbed evaluations are
    f(x*, P), f(x, P*) and f(x*, P*). Tensor fields have one entry per sample.
    """

    changed: torch.Tensor  # bool: some perturbed evaluation differs from f(x, P) (notebook's condition fails)
    input_changed: torch.Tensor  # bool: f(x*, P) differs from f(x, P)
    param_changed: torch.Tensor  # bool: f(x, P*) differs from f(x, P)
    identity_exact: torch.Tensor  # bool: patterns at x and x* agree under P and under P*, so L_gen == A'x'
    flipped_fraction: torch.Tensor  # float64: fraction of units that differ in some perturbed evaluation
    units: int  # ReLU units per sample, over all ReLU applications


@dataclass
class PerturbationEffect:
    """Everything :func:`evaluate_perturbation` measures at once."""

    output: torch.Tensor  # f(x, P), (n, out), model dtype
    perturbed_output: torch.Tensor  # f(x*, P*), (n, out), model dtype
    l_gen: torch.Tensor  # (n, out), model dtype
    predicted: torch.Tensor  # A' x', (n, out), float64
    change: PatternChange


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        raise ValueError(
            f"Expected a model with floating parameters (nn.Linear layers), got a "
            f"{type(model).__name__} with none. Build it from nn.Linear and nn.ReLU."
        )
    return param.dtype, param.device


def _as_input(model: nn.Module, x, name: str = "x") -> torch.Tensor:
    check_data_tensor(x, name)
    dtype, device = _model_dtype_device(model)
    return x.to(device=device, dtype=dtype)


def _as_input_pert(x: torch.Tensor, x_pert, name: str = "x_pert") -> torch.Tensor:
    if not isinstance(x_pert, torch.Tensor):
        raise TypeError(f"Expected {name} to be a torch.Tensor shaped like x, got {type(x_pert).__name__}.")
    if x_pert.shape != x.shape:
        raise ValueError(
            f"Expected {name} with the shape of x, {tuple(x.shape)}, got {tuple(x_pert.shape)}. "
            "Draw one perturbation per sample, e.g. torch.randn_like(x) * 1e-3."
        )
    check_data_tensor(x_pert, name)
    return x_pert.to(device=x.device, dtype=x.dtype)


def perturbed_parameters(model: nn.Module, param_pert: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """P + P' as a dict for ``torch.func.functional_call``; the model is not touched.

    Args:
        model: the network holding P.
        param_pert: parameter name (as in ``model.named_parameters()``) to a
            tensor of that parameter's shape; parameters not named are left
            unperturbed. Cast to each parameter's dtype and device.
    """
    check_model(model)
    if not isinstance(param_pert, Mapping):
        raise TypeError(
            f"Expected param_pert to be a dict of parameter name -> tensor, got "
            f"{type(param_pert).__name__}. Build it like "
            "{name: torch.randn_like(p) * 1e-3 for name, p in model.named_parameters()}."
        )
    params = dict(model.named_parameters())
    unknown = sorted(set(param_pert) - set(params))
    if unknown:
        raise ValueError(
            f"Expected param_pert keys among the model's parameters ({', '.join(params)}), "
            f"got unknown {', '.join(map(repr, unknown))}. Use the names of model.named_parameters()."
        )
    result = {}
    for name, delta in param_pert.items():
        param = params[name]
        if not isinstance(delta, torch.Tensor) or delta.shape != param.shape:
            got = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
            raise ValueError(
                f"Expected param_pert[{name!r}] with shape {tuple(param.shape)}, got {got}. "
                "Perturb each parameter with a tensor of its own shape."
            )
        result[name] = param.detach() + delta.to(device=param.device, dtype=param.dtype)
    return result


def _trace(
    model: nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None, *, check: bool = True
) -> _Chain:
    """Run one forward pass (at ``params`` if given) and record its chain of
    Linear layers and ReLUs. With ``check``, verify value by value that
    nothing else changed the values (keeps a copy of every activation)."""
    n = x.shape[0]
    steps: list = []
    state: dict[str, Any] = {"current": x.reshape(n, -1), "last": "the input"}

    def fail(what: str) -> None:
        raise ValueError(
            f"Expected a chain of nn.Linear layers and ReLUs (reshaping allowed), but {what} "
            f"(last op: {state['last']}). lpinit.theory supports Linear/ReLU networks only; "
            "for other models use torch.func.jacrev for the local linear map."
        )

    def on_linear(name: str, module: nn.Linear, args, output) -> None:
        if check:
            inp = args[0] if args else None
            if not (isinstance(inp, torch.Tensor) and inp.dim() == 2 and torch.equal(inp, state["current"])):
                fail(f"the input of Linear '{name}' is not the previous op's output as (n, features)")
            state["current"] = output.detach().clone()  # a later in-place ReLU would overwrite it
        bias = None if module.bias is None else module.bias.detach().double()
        steps.append(_Linear(module.weight.detach().double(), bias))
        state["last"] = f"Linear '{name}'"

    def on_other(name: str, module: nn.Module) -> None:
        if next(module.children(), None) is not None or isinstance(module, (nn.ReLU, *_PASS_THROUGH)):
            return  # containers are seen through their children; ReLUs through watch_relus
        own_state = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if own_state:
            fail(f"'{name}' ({type(module).__name__}) has parameters or buffers")
        state["last"] = f"'{name}' ({type(module).__name__})"  # the value checks judge what it did

    def on_module(name: str):
        def hook(module, args, output):
            if isinstance(module, nn.Linear):
                on_linear(name, module, args, output)
            else:
                on_other(name, module)

        return hook

    def on_relu(call: ReluCall) -> None:
        out = call.output.reshape(n, -1)
        if check:
            pre = state["current"]
            if out.shape != pre.shape or not torch.equal(out, pre.clamp_min(0)):
                fail(f"ReLU #{call.position + 1} is not applied to the previous op's output")
            state["current"] = out.detach().clone()
        steps.append(out > 0)  # the unit is on iff its pre-activation is > 0
        state["last"] = f"ReLU #{call.position + 1}"

    handles = [m.register_forward_hook(on_module(name or type(model).__name__)) for name, m in model.named_modules()]
    try:
        with eval_mode(model), torch.no_grad(), watch_relus(model, on_relu):
            output = model(x) if params is None else functional_call(model, params, (x,))
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, torch.Tensor) or output.shape[:1] != (n,):
        fail(f"the model returned {type(output).__name__} rather than one tensor of n outputs")
    output = output.reshape(n, -1)
    if check and not torch.equal(output, state["current"]):
        fail("the model's output is not the last op's output")
    if not any(isinstance(s, _Linear) for s in steps):
        fail("its forward pass ran no nn.Linear layer")
    return _Chain(steps, output)


def _shape(chain: _Chain) -> list[tuple]:
    return [tuple(s.weight.shape) if isinstance(s, _Linear) else tuple(s.shape) for s in chain.steps]


def _retrace(model: nn.Module, checked: _Chain, x: torch.Tensor, params=None) -> _Chain:
    """Trace again without the value checks, which ``checked`` passed on the
    same model; only verify that the forward pass took the same ops."""
    chain = _trace(model, x, params, check=False)
    if _shape(chain) != _shape(checked) or chain.output.shape != checked.output.shape:
        raise ValueError(
            "Expected the perturbed forward pass to run the same Linear and ReLU ops as the "
            f"unperturbed one, got {_shape(chain)} instead of {_shape(checked)}. lpinit.theory "
            "needs a forward pass whose ops do not depend on the values."
        )
    return chain


def _affine(chain: _Chain) -> tuple[torch.Tensor, torch.Tensor]:
    # Multiply from the output side: the running product B stays (n, out, width),
    # small for classifiers, instead of (n, width, in).
    n, out = chain.output.shape
    device = chain.output.device
    B = torch.eye(out, dtype=torch.float64, device=device).expand(n, out, out)
    c = torch.zeros(n, out, dtype=torch.float64, device=device)
    for step in reversed(chain.steps):
        if isinstance(step, _Linear):
            if step.bias is not None:
                c = c + B @ step.bias
            B = B @ step.weight
        else:
            B = B * step[:, None, :]
    return B, c


def _linear_part_times(chain: _Chain, v: torch.Tensor) -> torch.Tensor:
    """A(x) v for v of shape (n, in), through the masked layers, without forming A."""
    v = v.reshape(v.shape[0], -1).double()
    for step in chain.steps:
        v = v @ step.weight.T if isinstance(step, _Linear) else v * step
    return v


def activation_pattern(model: nn.Module, x: torch.Tensor, param_pert: ParamPert | None = None) -> torch.Tensor:
    """Which ReLU units are positive at each sample: bool (n, total_units).

    Units are listed per ReLU application in forward order (a reused ReLU
    module counts once per use); unit j of sample i is True iff its
    pre-activation is > 0, i.e. iff its output is nonzero.

    Args:
        model: a Linear/ReLU network (see the module docstring).
        x: inputs (n, ...), cast to the model's dtype and device.
        param_pert: optional {name: P'}; evaluate at P + P' instead of P.
    """
    check_model(model)
    x = _as_input(model, x)
    params = None if param_pert is None else perturbed_parameters(model, param_pert)
    return _trace(model, x, params).pattern()


def local_affine_map(
    model: nn.Module, x: torch.Tensor, param_pert: ParamPert | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact affine map the network applies around each sample.

    .. math::
        f(x) = A(x)\\,x + c(x), \\quad A(x) = W_L D_{L-1} W_{L-1} \\cdots D_1 W_1, \\quad
        c(x) = \\sum_{k=1}^{L} W_L D_{L-1} \\cdots W_{k+1} D_k\\, b_k

    where :math:`D_k` is the diagonal 0/1 matrix of the k-th ReLU's pattern at
    x (the k = L term is :math:`b_L`; a trailing ReLU adds a leading :math:`D_L`
    to both). A(x) is the Jacobian of f
    at x wherever no pre-activation is exactly 0.

    Args:
        model: a Linear/ReLU network (see the module docstring).
        x: inputs (n, ...), cast to the model's dtype and device; ``in`` below
            is the number of features per flattened sample.
        param_pert: optional {name: P'}; the map at P + P' instead of P.

    Returns:
        ``(A, c)``: float64 tensors of shape (n, out, in) and (n, out).

    Example:
        >>> from lpinit.models import mlp
        >>> model = mlp([4, 8, 3]).double()
        >>> x = torch.randn(5, 4, dtype=torch.float64)
        >>> A, c = local_affine_map(model, x)
        >>> torch.allclose(model(x), (A @ x[:, :, None])[..., 0] + c)
        True
    """
    check_model(model)
    x = _as_input(model, x)
    params = None if param_pert is None else perturbed_parameters(model, param_pert)
    return _affine(_trace(model, x, params))


def linear_map_change(model: nn.Module, x: torch.Tensor, param_pert: ParamPert) -> torch.Tensor:
    """A' = A(x; P + P') - A(x; P): how the local linear map at x changes,
    each side with its own activation pattern. Float64, (n, out, in)."""
    A, _ = local_affine_map(model, x)
    A_star, _ = local_affine_map(model, x, param_pert)
    return A_star - A


def _pattern_change(base: _Chain, x_only: _Chain, p_only: _Chain, both: _Chain) -> PatternChange:
    pattern, pattern_x, pattern_p, pattern_xp = (c.pattern() for c in (base, x_only, p_only, both))
    flipped = (pattern_x != pattern) | (pattern_p != pattern) | (pattern_xp != pattern)
    input_changed = (pattern_x != pattern).any(1)
    param_changed = (pattern_p != pattern).any(1)
    return PatternChange(
        changed=flipped.any(1),
        input_changed=input_changed,
        param_changed=param_changed,
        identity_exact=~input_changed & ~(pattern_xp != pattern_p).any(1),
        flipped_fraction=flipped.double().mean(1) if pattern.shape[1] else flipped.double().sum(1),
        units=pattern.shape[1],
    )


def evaluate_perturbation(
    model: nn.Module, x: torch.Tensor, x_pert: torch.Tensor | None = None, param_pert: ParamPert | None = None
) -> PerturbationEffect:
    """f(x, P), L_gen, A'x' and the pattern change, from four traced forward passes.

    With ``x_pert`` None the input is not perturbed (x* = x), with
    ``param_pert`` None the parameters are not (P* = P); at least one must be
    given. :func:`l_gen`, :func:`predicted_l_gen` and :func:`pattern_change`
    return one field each; use this when you need several.
    """
    check_model(model)
    if x_pert is None and param_pert is None:
        raise ValueError(
            "Expected a perturbation, got x_pert=None and param_pert=None. Pass x_pert "
            "(shaped like x), param_pert ({name: tensor}), or both."
        )
    x = _as_input(model, x)
    x_star = x if x_pert is None else x + _as_input_pert(x, x_pert)
    p_star = None if param_pert is None else perturbed_parameters(model, param_pert)
    base = _trace(model, x)
    x_only = base if x_pert is None else _retrace(model, base, x_star)
    p_only = base if p_star is None else _retrace(model, base, x, p_star)
    both = x_only if p_star is None else p_only if x_pert is None else _retrace(model, base, x_star, p_star)
    l_gen_value = (base.output - p_only.output) - (x_only.output - both.output)
    if x_pert is None:
        predicted = torch.zeros_like(base.output, dtype=torch.float64)
    else:
        delta = x_star - x  # the perturbation as applied, in the model's dtype
        predicted = _linear_part_times(p_only, delta) - _linear_part_times(base, delta)
    change = _pattern_change(base, x_only, p_only, both)
    return PerturbationEffect(base.output, both.output, l_gen_value, predicted, change)


def l_gen(model: nn.Module, x: torch.Tensor, x_pert: torch.Tensor, param_pert: ParamPert) -> torch.Tensor:
    """The notebook's generalization loss, per sample: (n, out), model dtype.

    .. math::
        L_{gen} = (f(x, P) - f(x, P^*)) - (f(x^*, P) - f(x^*, P^*)),
        \\quad x^* = x + x', \\; P^* = P + P'

    Args:
        model: a Linear/ReLU network holding P (not modified).
        x: inputs (n, ...); x_pert: x', the same shape.
        param_pert: P' as {parameter name: tensor of its shape}.
    """
    return evaluate_perturbation(model, x, x_pert, param_pert).l_gen


def predicted_l_gen(model: nn.Module, x: torch.Tensor, x_pert: torch.Tensor, param_pert: ParamPert) -> torch.Tensor:
    """The notebook's prediction A' x' = A(x; P*) x' - A(x; P) x', float64 (n, out),
    computed through the masked layers without forming A'. Equals :func:`l_gen`
    wherever ``pattern_change(...).identity_exact`` holds."""
    return evaluate_perturbation(model, x, x_pert, param_pert).predicted


def pattern_change(
    model: nn.Module, x: torch.Tensor, x_pert: torch.Tensor | None = None, param_pert: ParamPert | None = None
) -> PatternChange:
    """Whether x' and/or P' change the activation pattern at each sample.

    Compares the patterns of f(x*, P), f(x, P*) and f(x*, P*) with that of
    f(x, P); ``flipped_fraction`` counts the units that differ in at least one
    of them. ``identity_exact`` is the condition under which L_gen == A'x'
    exactly: pattern(x*, P) == pattern(x, P) and pattern(x*, P*) == pattern(x, P*).
    """
    return evaluate_perturbation(model, x, x_pert, param_pert).change
