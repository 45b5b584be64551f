"""The seed notebook's network, plain MLP builders and a LeNet-5-style CNN."""

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


def cnn() -> nn.Sequential:
    """A LeNet-5-style MNIST network, with PyTorch's default initialization:
    two blocks of 5x5 convolution (no padding), ReLU and 2x2 max pooling, then
    three Linear layers, a ReLU after each but the last (the logits)::

        (n, 1, 28, 28) -conv1-> (n, 6, 24, 24) -pool1-> (n, 6, 12, 12)
        -conv2-> (n, 16, 8, 8) -pool2-> (n, 16, 4, 4) -flatten-> (n, 256)
        -fc1-> 120 -fc2-> 84 -fc3-> 10

    Layers are named ``conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc1,
    relu3, fc2, relu4, fc3``; the ReLU-fed ones, which ``lp_initialize``
    changes, are ``conv1, conv2, fc1, fc2``. (LeCun et al. 1998 pad the 28x28
    digits to 32x32, average-pool and use a sigmoid-like activation; this is
    the usual modern reading with ReLU and max pooling.)

    Example:
        >>> cnn()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(1, 6, kernel_size=5)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, kernel_size=5)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(16 * 4 * 4, 120)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)),
        ("relu4", nn.ReLU()),
        ("fc3", nn.Linear(84, 10)),
    ]
    return nn.Sequential(OrderedDict(layers))
