"""Training with the seed notebook's recipe, on in-memory tensors.

SGD (no momentum), cross-entropy on the network's output (for the seed MLP
that output has a ReLU on it, as in the notebook), minibatches sliced from a
permutation drawn each epoch from a generator seeded by the run's seed only,
so runs with the same seed see the same data order whatever their init.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lpinit import count_relu_zeros
from lpinit.tracing import eval_mode


def pick_device(device: str, check_available: bool = True) -> torch.device:
    """The torch device for ``auto | cpu | cuda | cuda:<index>``; ``auto`` is cuda
    when a GPU is visible. With ``check_available``, a GPU that is not there is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"Unknown device {device!r}. Valid devices: auto, cpu, cuda, cuda:<index>.")
    chosen = torch.device(device)
    if check_available and chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"Device {device!r} asked for, but torch sees no CUDA GPU here. Use cpu (or auto).")
        if chosen.index is not None and chosen.index >= count:
            raise ValueError(
                f"Device {device!r} asked for, but torch sees {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})."
            )
    return chosen


def train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass over (x, y) in the generator's order; returns the mean batch loss."""
    model.train()
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    total, batches = torch.zeros((), device=x.device), 0
    for start in range(0, x.shape[0], batch_size):
        idx = order[start : start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()  # no .item() per step: keeps a GPU from syncing
        batches += 1
    return float(total) / batches


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict:
    """Mean cross-entropy, accuracy (%) and ReLU-zero fraction on (x, y), in eval mode."""
    loss, correct = 0.0, 0
    with eval_mode(model):
        for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True):
            out = model(xb)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    zeros = count_relu_zeros(model, x, batch_size=batch_size, patterns=False)
    return {
        "loss": loss / x.shape[0],
        "accuracy": 100.0 * correct / x.shape[0],
        "zero_fraction": zeros.zero_fraction,
        "zero_fraction_per_layer": {s.name: s.zero_fraction for s in zeros.sites},
    }


def train(
    model: nn.Module,
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    eval_batch: int = 1000,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train in place; return one dict per epoch (epoch 0 = before training).

    Tensors must already be on the model's device.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    ev = evaluate(model, test_x, test_y, eval_batch)
    history = [
        {
            "epoch": 0,
            "train_loss": None,
            "test_loss": ev["loss"],
            "test_accuracy": ev["accuracy"],
            "zero_fraction": ev["zero_fraction"],
            "zero_fraction_per_layer": ev["zero_fraction_per_layer"],
            "epoch_time_s": 0.0,
        }
    ]
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_loss = train_epoch(model, train_x, train_y, optimizer, batch_size, generator)
        epoch_time = time.perf_counter() - t0
        ev = evaluate(model, test_x, test_y, eval_batch)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "test_loss": ev["loss"],
            "test_accuracy": ev["accuracy"],
            "zero_fraction": ev["zero_fraction"],
            "zero_fraction_per_layer": ev["zero_fraction_per_layer"],
            "epoch_time_s": epoch_time,
        }
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return history
