"""How the LP of a Conv2d layer changes with ``max_rows``: the first conv layer
of ``lpinit.cnn()`` (seed 0) on a batch of MNIST training images (256, drawn
with --seed), ``lp_initialize(..., layers=["conv1"])`` with each ``max_rows``.

Per row of the table: the rows each LP saw; the LP time; the LP objective on
those rows (the sum over channels of the shortfalls below the margin) and per
row; the same objective of the change found, on every row of the batch (what
the LP with every row minimizes: the ``all`` line is its optimum); and the
zero fraction of conv1 on every row, before and after.

    python -m experiments.max_rows [--max-rows 2048,8192,32768,all] [--batch-size 256]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lpinit import cnn, load_mnist, lp_initialize
from lpinit.layer_rows import layer_rows


def full_row_objective(model: torch.nn.Module, batch: torch.Tensor, margin: float) -> float:
    """Sum over conv1's channels and every row of the batch of the shortfall below ``margin``."""
    conv = model.get_submodule("conv1")
    assert isinstance(conv, torch.nn.Conv2d) and conv.bias is not None  # cnn()'s conv1
    rows = layer_rows(conv, batch)
    W = conv.weight.detach().double().numpy().reshape(conv.out_channels, -1)
    Z = rows.preactivations(W, conv.bias.detach().double().numpy())
    return float(np.maximum(margin - Z, 0.0).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-rows", type=str, default="2048,8192,32768,all", help="comma-separated; 'all': every row")
    parser.add_argument("--batch-size", type=int, default=256, help="MNIST training images in the batch")
    parser.add_argument("--seed", type=int, default=0, help="seeds the network and the batch draw")
    parser.add_argument("--radius", type=float, default=0.1)
    parser.add_argument("--margin", type=float, default=0.1)
    args = parser.parse_args()

    images, _ = load_mnist(train=True)
    draw = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))
    batch = images[draw[: args.batch_size]]
    print(
        f"conv1 of cnn() (seed {args.seed}), {args.batch_size} MNIST training images, radius {args.radius}, "
        f"margin {args.margin}, one process"
    )
    head = (
        f"{'max_rows':>9}{'LP rows':>10}{'LP s':>8}{'LP objective':>14}{'per row':>9}"
        f"{'objective, all rows':>21}{'per row':>9}{'zeros before':>14}{'zeros after':>13}"
    )
    print(head)
    for value in args.max_rows.split(","):
        max_rows = None if value.strip() == "all" else int(value)
        torch.manual_seed(args.seed)
        model = cnn()
        report = lp_initialize(
            model, batch, radius=args.radius, margin=args.margin, layers=["conv1"], max_rows=max_rows, n_jobs=1
        )
        layer = report.layers[0]
        full = full_row_objective(model, batch, layer.margin)
        print(
            f"{value:>9}{layer.lp_rows:>10,}{layer.wall_time_s:>8.2f}{layer.lp_objective:>14.1f}"
            f"{layer.lp_objective / layer.lp_rows:>9.4f}{full:>21.1f}{full / layer.rows:>9.4f}"
            f"{layer.zeros_before / layer.elements:>14.4f}{layer.zeros_after / layer.elements:>13.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
