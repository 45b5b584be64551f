"""How the LP of a Conv2d layer changes with ``max_rows``: a conv layer of
``lpinit.cnn()`` (seed 0; conv1 by default) on a batch of MNIST training images
(256, drawn with --seed), ``lp_initialize(..., layers=[layer])`` with each
``max_rows``, the other layers unchanged.

Per row of the table: the rows each LP saw; the LP time; the LP objective on
those rows and per row; for the plain LP, the same objective of the change
found on every row of the batch (the sum over channels of the shortfalls below
the margin: what the LP with every row minimizes, so the ``all`` line is its
optimum); and the layer's zero fraction on every row, before and after. With
``--target-active q``, the last columns are the units that met their target on
the sample and, on every row, the largest distance of a channel's active
fraction from q.

    python -m experiments.max_rows [--max-rows 2048,8192,32768,all] [--layer conv1]
        [--target-active 0.5 --radius 3 --rescale unit]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lpinit import cnn, load_mnist, lp_initialize
from lpinit.layer_rows import layer_rows
from lpinit.tracing import capture_layer_io


def layer_preactivations(model: torch.nn.Module, batch: torch.Tensor, name: str) -> np.ndarray:
    """The pre-activations of conv layer ``name`` on every row of the batch, (rows, channels)."""
    conv = model.get_submodule(name)
    assert isinstance(conv, torch.nn.Conv2d) and conv.bias is not None  # cnn()'s conv layers
    with torch.no_grad():
        ((layer_input, *_),) = capture_layer_io(model, [conv], lambda: model(batch), "input")
    rows = layer_rows(conv, layer_input)
    W = conv.weight.detach().double().numpy().reshape(conv.out_channels, -1)
    return rows.preactivations(W, conv.bias.detach().double().numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-rows", type=str, default="2048,8192,32768,all", help="comma-separated; 'all': every row")
    parser.add_argument("--batch-size", type=int, default=256, help="MNIST training images in the batch")
    parser.add_argument("--seed", type=int, default=0, help="seeds the network and the batch draw")
    parser.add_argument("--radius", type=float, default=0.1)
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--layer", choices=("conv1", "conv2"), default="conv1")
    parser.add_argument("--target-active", type=float, default=None, help="q: the activity-target LP")
    parser.add_argument("--rescale", choices=("unit", "layer"), default=None)
    args = parser.parse_args()
    target = args.target_active

    images, _ = load_mnist(train=True)
    draw = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))
    batch = images[draw[: args.batch_size]]
    print(
        f"{args.layer} of cnn() (seed {args.seed}), {args.batch_size} MNIST training images, radius {args.radius}, "
        f"margin {args.margin}, target_active {target}, rescale {args.rescale}, one process"
    )
    last = (
        f"{'met target':>12}{'max |active - q|':>18}"
        if target is not None
        else f"{'objective, all rows':>21}{'per row':>9}"
    )
    print(
        f"{'max_rows':>9}{'LP rows':>10}{'LP s':>8}{'LP objective':>14}{'per row':>9}{last}"
        f"{'zeros before':>14}{'zeros after':>13}"
    )
    for value in args.max_rows.split(","):
        max_rows = None if value.strip() == "all" else int(value)
        torch.manual_seed(args.seed)
        model = cnn()
        report = lp_initialize(
            model,
            batch,
            radius=args.radius,
            margin=args.margin,
            rescale=args.rescale,
            target_active=target,
            layers=[args.layer],
            max_rows=max_rows,
            n_jobs=1,
        )
        layer = report.layers[0]
        Z = layer_preactivations(model, batch, args.layer)
        if target is None:
            full = float(np.maximum(layer.margin - Z, 0.0).sum())
            last = f"{full:>21.1f}{full / layer.rows:>9.4f}"
        else:
            off_target = float(np.abs((Z > 0).mean(axis=0) - target).max())
            last = f"{layer.met_target:>7} of {layer.out_features:<2}{off_target:>18.4f}"
        print(
            f"{value:>9}{layer.lp_rows:>10,}{layer.wall_time_s:>8.2f}{layer.lp_objective:>14.1f}"
            f"{layer.lp_objective / layer.lp_rows:>9.4f}{last}"
            f"{layer.zeros_before / layer.elements:>14.4f}{layer.zeros_after / layer.elements:>13.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
