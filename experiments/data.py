"""The fixed data splits every run shares.

MNIST's 60,000 training images are permuted once with a fixed seed
(``SPLIT_SEED``, independent of the run seeds); the last ``holdout`` of them
are held out of training and only used to measure ReLU zeros; training uses
the rest (or their first ``train_subset``). The LP batch is drawn by the run's
seed from the training part. The stability images are the first test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

SPLIT_SEED = 20_240_601


@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    heldout_x: torch.Tensor | None  # None when holdout = 0 (train on all 60,000)
    test_x: torch.Tensor
    test_y: torch.Tensor


@lru_cache(maxsize=2)
def _mnist(train: bool):
    from lpinit import load_mnist

    return load_mnist(train=train)


@lru_cache(maxsize=4)
def load_splits(holdout: int, train_subset: int) -> Splits:
    """The splits for these settings (cached per process: workers load MNIST once)."""
    x, y = _mnist(True)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = x.shape[0] - holdout
    train_idx, held_idx = order[:n_train], order[n_train:]
    if train_subset:
        train_idx = train_idx[:train_subset]
    test_x, test_y = _mnist(False)
    return Splits(
        train_x=x[train_idx].contiguous(),
        train_y=y[train_idx].contiguous(),
        heldout_x=x[held_idx].contiguous() if holdout else None,
        test_x=test_x,
        test_y=test_y,
    )


def lp_batch(splits: Splits, size: int, seed: int) -> torch.Tensor:
    """``size`` training images chosen by ``seed`` (the batch the LP and LSUV see)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    idx = torch.randperm(splits.train_x.shape[0], generator=g)[:size]
    return splits.train_x[idx]
