"""Full-batch Adam on the MSE, for many networks at once or one at a time.

``train_stacked`` minimizes ``sum_s MSE_s`` over the stacked parameters of a
``StackedMLP`` with one ``torch.optim.Adam``. The seeds share no parameter, so
the gradient with respect to seed s's parameters is exactly the gradient of
MSE_s, and Adam's state (first and second moments, per parameter element)
is per seed: each network follows the trajectory it would follow alone.

``train_one`` is that loop for one ``nn.Sequential``: the reference the
batched trainer is tested and benchmarked against. Both use the same Adam
implementation (``foreach``), so they differ only in how the matmuls sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from experiments.collapse.stacked import StackedMLP


def train_stacked(
    model: StackedMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    checkpoints: Sequence[int] = (),
) -> tuple[StackedMLP, dict[int, torch.Tensor]]:
    """Train every network on (x, y) for ``steps`` full-batch Adam steps.

    Returns the trained model (new tensors; ``model`` is left as it was) and the
    per-seed training MSE (S,) before the step counts in ``checkpoints`` (0 =
    at init; ``steps`` = after the last step).
    """
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    n_layers = len(model.weights)
    net = StackedMLP(params[:n_layers], params[n_layers:])
    optimizer = torch.optim.Adam(params, lr=lr, foreach=True)
    wanted, history = set(checkpoints), {}
    for step in range(steps):
        losses = (net.forward(x) - y).pow(2).mean(dim=(1, 2))
        if step in wanted:
            history[step] = losses.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
    trained = net.detach()
    if steps in wanted:
        with torch.no_grad():
            history[steps] = (trained.forward(x) - y).pow(2).mean(dim=(1, 2))
    return trained, history


def train_one(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float) -> nn.Module:
    """The one-at-a-time loop: full-batch Adam on ``F.mse_loss``, in place."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    for _ in range(steps):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model
