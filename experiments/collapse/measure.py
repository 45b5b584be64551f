"""What is measured on each network, for all seeds of a ``StackedMLP`` at once.

On a set of inputs X (the training inputs):

- a hidden unit is **dead** if its ReLU output is zero on every input;
- a network is **born dead** if, at initialization, some hidden layer has all
  its units dead, i.e. the layer outputs the zero vector on every input; the
  network is then constant on X (everything after that layer sees a constant);
- a network has **collapsed** after training if some hidden layer is dead on X,
  or its output is constant on X up to a tolerance: for every output
  coordinate k, ``std_i f_k(x_i) <= tol * std_i y_k(x_i)`` (relative spread).

Dead-unit counts are stored per seed as one character per hidden layer, the
count in base 36 (``"0"``-``"9"``, ``"a"``-``"z"``): ``"00a0"`` is a 4-layer
network whose third layer (width 10) is dead. ``decode_counts`` reads them back.
"""

from __future__ import annotations

import numpy as np
import torch

from experiments.collapse.stacked import StackedMLP

DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


@torch.no_grad()
def dead_units(model: StackedMLP, x: torch.Tensor) -> torch.Tensor:
    """Dead units per hidden layer, (S, L) int: units whose ReLU output is 0 on every row of x."""
    _, hidden = model.forward(x, hidden=True)
    return torch.stack([(h > 0).any(dim=2).logical_not().sum(dim=1) for h in hidden], dim=1)


def born_dead(dead: torch.Tensor, width: int) -> torch.Tensor:
    """(S,) bool: some hidden layer has all ``width`` units dead."""
    return (dead == width).any(dim=1)


@torch.no_grad()
def output_spread(model: StackedMLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(S,) the largest over output coordinates of std_i f_k(x_i) / std_i y_k(x_i)."""
    out = model.forward(x)  # (S, n, k)
    return (out.std(dim=1, correction=0) / y.std(dim=0, correction=0)).amax(dim=1)


@torch.no_grad()
def mse(model: StackedMLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(S,) mean squared error over samples and output coordinates."""
    return (model.forward(x) - y).pow(2).mean(dim=(1, 2))


def encode_counts(counts: torch.Tensor) -> list[str]:
    """(S, L) counts in 0..35 -> one string per seed, one base-36 digit per layer."""
    c = counts.cpu().numpy()
    if c.size and (c.min() < 0 or c.max() >= len(DIGITS)):
        raise ValueError(f"Expected counts in 0..{len(DIGITS) - 1}, got {c.min()}..{c.max()}.")
    table = np.array(list(DIGITS))
    return ["".join(row) for row in table[c]]


def decode_counts(strings: list[str]) -> np.ndarray:
    """Inverse of ``encode_counts``: an (S, L) int array."""
    return np.array([[DIGITS.index(ch) for ch in s] for s in strings], dtype=int).reshape(len(strings), -1)


def bits(flags: torch.Tensor) -> str:
    """(S,) bool -> a string of '0'/'1', one per seed."""
    return "".join("1" if f else "0" for f in flags.tolist())


def unbits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def layer_histogram(dead: torch.Tensor, width: int) -> list[list[int]]:
    """For each hidden layer, how many seeds have 0, 1, ..., width dead units."""
    return [torch.bincount(col, minlength=width + 1).tolist() for col in dead.t()]


def rounded(values: torch.Tensor, digits: int = 6) -> list[float]:
    """Floats with ``digits`` significant digits (keeps runs.jsonl small)."""
    return [float(f"{v:.{digits}g}") for v in values.tolist()]
