"""The seed notebook's network and plain MLP builders."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

SEED_WIDTHS = (784, 750, 320, 50, 10)


class SeedMLP(nn.Module):
    """The notebook's ``MnistReluCount``: 784-750-320-50-10 with a ReLU after
    every layer, the logits included, through one ``nn.ReLU`` module reused
    four times."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(784, 750)
        self.fc2 = nn.Linear(750, 320)
        self.fc3 = nn.Linear(320, 50)
        self.fc4 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        x = self.relu(self.fc3(x))
        x = self.relu(self.fc4(x))
        return x


def seed_mlp() -> SeedMLP:
    """The seed notebook's network, with PyTorch's default initialization."""
    return SeedMLP()


def mlp(widths: Sequence[int] = SEED_WIDTHS, final_relu: bool = False) -> nn.Sequential:
    """A flatten-then-MLP ``nn.Sequential`` with layers named ``fc1, relu1, ...``.

    Args:
        widths: layer widths, input first, e.g. ``(784, 750, 320, 50, 10)``.
        final_relu: also apply a ReLU to the logits, as the seed network does.
    """
    widths = list(widths)
    if len(widths) < 2 or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
        raise ValueError(
            f"Expected at least two positive integer widths (input first), got {widths!r}. "
            "Pass e.g. mlp([784, 750, 320, 50, 10])."
        )
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    n_layers = len(widths) - 1
    for i in range(n_layers):
        layers.append((f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1])))
        if i < n_layers - 1 or final_relu:
            layers.append((f"relu{i + 1}", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))
