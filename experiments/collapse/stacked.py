"""Many small MLPs of one shape as one batched model.

A ``StackedMLP`` holds S networks ``in_dim -> N -> ... -> N -> out_dim`` (L
hidden ReLU layers, a Linear output) as stacked parameters: ``weights[l]`` of
shape (S, out_l, in_l) and ``biases[l]`` of shape (S, out_l), the layout of
``nn.Linear`` with a seed axis in front. One forward pass runs every network
with batched matmuls; the seeds never mix, so the gradient of the sum of the
per-seed losses with respect to seed s's parameters is seed s's own gradient.

Activations are kept as (S, units, n): the long sample axis last makes each
``baddbmm`` a (units x units) @ (units x n) product, an order of magnitude
faster on a CPU for narrow layers than (n x units) @ (units x units).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StackedMLP:
    """S ReLU MLPs of the same widths, parameters stacked along a leading seed axis."""

    weights: list[torch.Tensor]  # layer l: (S, out_l, in_l)
    biases: list[torch.Tensor]  # layer l: (S, out_l)

    def __post_init__(self):
        if not self.weights or len(self.weights) != len(self.biases):
            raise ValueError(
                f"Expected as many bias tensors as weight tensors (at least one), got "
                f"{len(self.weights)} weights and {len(self.biases)} biases."
            )
        for l, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if w.dim() != 3 or b.shape != w.shape[:2]:
                raise ValueError(
                    f"Layer {l}: expected weight (S, out, in) and bias (S, out), got {tuple(w.shape)} and "
                    f"{tuple(b.shape)}."
                )
            if l and w.shape[2] != self.weights[l - 1].shape[1]:
                raise ValueError(
                    f"Layer {l} takes {w.shape[2]} inputs but layer {l - 1} gives {self.weights[l - 1].shape[1]}."
                )

    @property
    def n_seeds(self) -> int:
        return self.weights[0].shape[0]

    @property
    def widths(self) -> tuple[int, ...]:
        """Input width first, then every layer's output width."""
        return (self.weights[0].shape[2], *(w.shape[1] for w in self.weights))

    @property
    def depth(self) -> int:
        """Number of hidden (ReLU) layers."""
        return len(self.weights) - 1

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases]

    def forward(self, x: torch.Tensor, hidden: bool = False):
        """Outputs (S, n, out_dim) on inputs x (n, in_dim) shared by all seeds; with
        ``hidden=True`` also every hidden layer's ReLU output, each (S, units, n)."""
        h = x.t().expand(self.n_seeds, -1, -1)
        outs = []
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b.unsqueeze(2), w, h)
            if l < last:
                h = torch.relu(h)
                if hidden:
                    outs.append(h)
        out = h.transpose(1, 2)
        return (out, outs) if hidden else out

    __call__ = forward

    def detach(self) -> StackedMLP:
        return StackedMLP([w.detach().clone() for w in self.weights], [b.detach().clone() for b in self.biases])

    def select(self, index: Sequence[int] | torch.Tensor) -> StackedMLP:
        """The networks at ``index`` (copies)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return StackedMLP([w[idx].clone() for w in self.weights], [b[idx].clone() for b in self.biases])

    def to_sequential(self, i: int) -> nn.Sequential:
        """Network i as an ``nn.Sequential`` of Linear and ReLU modules (a copy)."""
        layers: list[nn.Module] = []
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            linear = nn.Linear(w.shape[2], w.shape[1], dtype=w.dtype)
            with torch.no_grad():
                linear.weight.copy_(w[i])
                linear.bias.copy_(b[i])
            layers.append(linear)
            if l < last:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    @staticmethod
    def from_layers(per_seed: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]]) -> StackedMLP:
        """Stack per-seed lists of (weight, bias) pairs, all of the same shapes."""
        if not per_seed:
            raise ValueError("Expected at least one network to stack, got none.")
        n_layers = len(per_seed[0])
        return StackedMLP(
            [torch.stack([net[l][0] for net in per_seed]) for l in range(n_layers)],
            [torch.stack([net[l][1] for net in per_seed]) for l in range(n_layers)],
        )

    @staticmethod
    def from_sequentials(models: Sequence[nn.Module]) -> StackedMLP:
        """Stack the Linear layers (in definition order) of same-shaped models."""
        per_seed = [
            [(m.weight.detach().clone(), m.bias.detach().clone()) for m in model.modules() if isinstance(m, nn.Linear)]
            for model in models
        ]
        return StackedMLP.from_layers(per_seed)

    @staticmethod
    def cat(parts: Sequence[StackedMLP]) -> StackedMLP:
        """One model holding the networks of ``parts``, in order."""
        n_layers = len(parts[0].weights)
        return StackedMLP(
            [torch.cat([p.weights[l] for p in parts]) for l in range(n_layers)],
            [torch.cat([p.biases[l] for p in parts]) for l in range(n_layers)],
        )


def mlp_widths(in_dim: int, width: int, depth: int, out_dim: int) -> tuple[int, ...]:
    """``(in_dim, width, ..., width, out_dim)`` with ``depth`` hidden layers."""
    return (in_dim, *([width] * depth), out_dim)
