"""Find every ReLU a model applies in its forward pass, and what feeds it.

ReLUs come as ``nn.ReLU`` modules (possibly one module reused), as
``F.relu``/``torch.relu``/``Tensor.relu`` calls, and in place (``inplace=True``,
``relu_``). All of them end in one of a few torch functions, so a
``TorchFunctionMode`` sees each application, whatever the model's code looks
like. Forward hooks on the submodules remember which module produced each
tensor, so a ReLU site can be named after the layer that feeds it (``fc1``).

Two helpers serve every part of lpinit that runs a model to look at it:
``eval_mode`` (switch to eval, restore each submodule's own flag after) and
``capture_layer_io`` (a layer's input or output during one forward pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

RELU_FUNCTIONS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` and all its submodules are in eval mode; on
    exit, error or not, each gets back its own ``training`` flag (a frozen
    BatchNorm inside a training model stays frozen)."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def capture_layer_io(
    model: nn.Module,
    layers: Sequence[nn.Module],
    run: Callable[[], object],
    what: Literal["input", "output"] = "output",
) -> list[list[torch.Tensor]]:
    """The first positional input (``what="input"``) or the output of each of
    ``layers`` in every call during ``run()``, one list per layer, in call order.
    Hooks are removed afterwards, error or not.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
        >>> x = torch.ones(4, 3)
        >>> [calls[0].shape for calls in capture_layer_io(net, [net[0]], lambda: net(x), "input")]
        [torch.Size([4, 3])]
    """
    seen: list[list[torch.Tensor]] = [[] for _ in layers]
    if what == "input":
        handles = [
            layer.register_forward_pre_hook(lambda module, args, i=i: seen[i].append(args[0].detach()))
            for i, layer in enumerate(layers)
        ]
    elif what == "output":
        handles = [
            layer.register_forward_hook(lambda module, args, out, i=i: seen[i].append(out.detach()))
            for i, layer in enumerate(layers)
        ]
    else:
        raise ValueError(f"Expected what='input' or 'output', got {what!r}.")
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


@dataclass
class ReluCall:
    """One application of a ReLU during a forward pass."""

    position: int  # 0-based order among the ReLUs of this forward pass
    feeder_name: str | None  # qualified name of the module whose output is the ReLU's input
    feeder: nn.Module | None
    output: torch.Tensor


class _ReluInterceptor(TorchFunctionMode):
    def __init__(self, on_relu: Callable[[torch.Tensor, torch.Tensor], None]):
        super().__init__()
        self.on_relu = on_relu

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # Nested calls (F.relu calling torch.relu) run with this mode disabled,
        # so each ReLU application is seen exactly once.
        if func in RELU_FUNCTIONS:
            self.on_relu(args[0] if args else kwargs["input"], out)
        return out


@contextmanager
def watch_relus(model: nn.Module, on_relu: Callable[[ReluCall], None]) -> Iterator[None]:
    """Within the block, call ``on_relu(call)`` for every ReLU that a forward
    pass of ``model`` applies, in forward order.

    The model's outputs are untouched; hooks are removed on exit.
    """
    producers: dict[int, tuple[str, nn.Module, torch.Tensor]] = {}
    state = {"depth": 0, "position": 0}

    def start(module, args):
        if state["depth"] == 0:
            producers.clear()
            state["position"] = 0
        state["depth"] += 1

    def finish(module, args, output):
        state["depth"] -= 1
        if state["depth"] == 0:
            producers.clear()  # drop references to this pass's activations

    def remember(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and state["depth"] > 0:
                # setdefault: a container returns its last child's tensor; the
                # innermost module (finishing first) names it.
                producers.setdefault(id(output), (name, module, output))

        return hook

    def relu_seen(source: torch.Tensor, output: torch.Tensor) -> None:
        if state["depth"] == 0:
            return
        name, module, _ = producers.get(id(source), (None, None, None))
        on_relu(ReluCall(state["position"], name, module, output))
        state["position"] += 1

    handles = [model.register_forward_pre_hook(start), model.register_forward_hook(finish)]
    handles += [m.register_forward_hook(remember(name)) for name, m in model.named_modules() if name]
    try:
        with _ReluInterceptor(relu_seen):
            yield
    finally:
        for handle in handles:
            handle.remove()
        producers.clear()
        state["depth"] = 0


def site_names(calls: list[ReluCall]) -> list[str]:
    """Name each ReLU site after its feeding module (``fc1``), else ``relu@<position>``;
    a module feeding several ReLUs gets ``fc1``, ``fc1#2``, ..."""
    seen: dict[str, int] = {}
    names = []
    for call in calls:
        base = call.feeder_name or f"relu@{call.position}"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


def relu_fed_linears(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers whose output goes straight into a ReLU, in
    forward order, found by one forward pass on ``example`` (under no_grad)."""
    calls: list[ReluCall] = []
    with eval_mode(model), torch.no_grad(), watch_relus(model, calls.append):
        model(example)
    found: dict[int, tuple[str, nn.Linear]] = {}
    for call in calls:
        if isinstance(call.feeder, nn.Linear):
            found.setdefault(id(call.feeder), (call.feeder_name or "", call.feeder))
    return list(found.values())


def relu_fed_layers(
    model: nn.Module, example: torch.Tensor, kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
) -> list[tuple[str, nn.Module]]:
    """The layers of the given ``kinds`` (by default ``nn.Linear`` and
    ``nn.Conv2d``) whose output goes straight into a ReLU, in forward order,
    found by one forward pass on ``example`` (under no_grad).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3), nn.ReLU())
        >>> [name for name, _ in relu_fed_layers(net, torch.zeros(1, 1, 4, 4))]
        ['0', '3']
    """
    calls: list[ReluCall] = []
    with eval_mode(model), torch.no_grad(), watch_relus(model, calls.append):
        model(example)
    found: dict[int, tuple[str, nn.Module]] = {}
    for call in calls:
        if isinstance(call.feeder, kinds):
            found.setdefault(id(call.feeder), (call.feeder_name or "", call.feeder))
    return list(found.values())
