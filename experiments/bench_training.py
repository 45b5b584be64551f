"""Training speed benchmarks.

    python -m experiments.bench_training [--threads 1] [--device cpu]
    python -m experiments.bench_training --deep-narrow [--seeds 100] [--steps 200]

Default: one training epoch, the notebook's DataLoader pipeline vs this
harness. Both train the seed MLP (same initial weights) with SGD lr 0.01,
batch 64, shuffled, over all 60,000 training images. The notebook builds a
torchvision ``MNIST`` dataset with ``ToTensor`` + ``Normalize`` per image and a
``DataLoader``; the harness slices minibatches from normalized in-memory
tensors (``experiments.train.train_epoch``).

``--deep-narrow``: the collapse study's batched trainer
(``experiments.collapse.train.train_stacked``, all seeds in one model) against
the one-at-a-time loop (``train_one``: an ``nn.Sequential`` and its own Adam per
seed), on the same seeds (RAI draws), the same data and the same number of
full-batch Adam steps, at several (width, depth); it prints both times, the
ratio, and how far the trained networks differ.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def notebook_epoch(model, device) -> float:
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision.datasets import MNIST

    from lpinit import MNIST_MEAN, MNIST_STD
    from lpinit.data import ensure_mnist_raw

    transform = torchvision.transforms.Compose(
        [
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize((MNIST_MEAN,), (MNIST_STD,)),
        ]
    )
    loader = DataLoader(
        MNIST(str(ensure_mnist_raw()), train=True, download=False, transform=transform),
        batch_size=64,
        shuffle=True,
        pin_memory=False,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    t0 = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # the notebook reads every loss
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def harness_epoch(model, device) -> float:
    from experiments.train import train_epoch
    from lpinit import load_mnist

    x, y = load_mnist(train=True)
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    t0 = time.perf_counter()
    train_epoch(model, x, y, optimizer, 64, torch.Generator().manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


DEEP_NARROW_SHAPES = ((2, 10), (2, 20), (3, 10), (5, 10), (10, 10))


def deep_narrow(seeds: int, steps: int, n_train: int, dtype: torch.dtype) -> None:
    """Batched trainer vs one-at-a-time loop on the collapse study's networks."""
    from experiments.collapse import inits, measure
    from experiments.collapse.stacked import StackedMLP, mlp_widths
    from experiments.collapse.tasks import task_data
    from experiments.collapse.train import train_one, train_stacked

    data = task_data("xsin5x", n_train, 1024, 0, dtype=dtype)
    print(
        f"full-batch Adam (lr 1e-3), {steps} steps, {seeds} RAI seeds per shape, task xsin5x, {n_train} training "
        f"points, {dtype}, threads={torch.get_num_threads()}"
    )
    print(
        f"{'width':>6}{'depth':>6}{'loop s':>9}{'batched s':>11}{'speed-up':>10}{'max |dMSE|':>12}{'other flags':>13}"
    )
    warm = inits.draw("rai", mlp_widths(1, 2, 2, 1), [0], dtype)  # first calls allocate: keep them out of the timings
    train_stacked(warm, data.train_x, data.train_y, steps=2, lr=1e-3)
    train_one(warm.to_sequential(0), data.train_x, data.train_y, steps=2, lr=1e-3)
    for width, depth in DEEP_NARROW_SHAPES:
        model = inits.draw("rai", mlp_widths(1, width, depth, 1), list(range(seeds)), dtype)
        t0 = time.perf_counter()
        batched, _ = train_stacked(model, data.train_x, data.train_y, steps=steps, lr=1e-3)
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop = [
            train_one(model.to_sequential(i), data.train_x, data.train_y, steps=steps, lr=1e-3) for i in range(seeds)
        ]
        t_loop = time.perf_counter() - t0
        looped = StackedMLP.from_sequentials(loop)
        d_mse = (
            measure.mse(batched, data.train_x, data.train_y) - measure.mse(looped, data.train_x, data.train_y)
        ).abs()
        dead_b, dead_l = measure.dead_units(batched, data.train_x), measure.dead_units(looped, data.train_x)
        other = int((dead_b != dead_l).any(dim=1).sum())
        print(
            f"{width:>6}{depth:>6}{t_loop:>9.2f}{t_batched:>11.2f}{t_loop / t_batched:>9.1f}x"
            f"{float(d_mse.max()):>12.2e}{f'{other}/{seeds}':>13}"
        )
    print(
        "other flags: seeds whose dead units per layer (hence born-dead and collapse flags) differ between the two. "
        "The two differ only in how BLAS sums the matmuls; Adam's normalized step can grow that rounding on a few "
        "seeds (rerun with --dtype float64 to see the trajectories agree)."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_training", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a harness worker uses 1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--deep-narrow", action="store_true", help="batched vs one-at-a-time training (collapse study)")
    parser.add_argument("--seeds", type=int, default=100, help="--deep-narrow: networks per shape")
    parser.add_argument("--steps", type=int, default=200, help="--deep-narrow: Adam steps")
    parser.add_argument("--n-train", type=int, default=128, help="--deep-narrow: training points")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="--deep-narrow: precision")
    args = parser.parse_args(argv)
    if args.deep_narrow:
        torch.set_num_threads(args.threads)
        deep_narrow(args.seeds, args.steps, args.n_train, getattr(torch, args.dtype))
        return
    from experiments.inits import build_model
    from experiments.train import pick_device

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    t_notebook = notebook_epoch(build_model("seed", 0).to(device), device)
    t_harness = harness_epoch(build_model("seed", 0).to(device), device)
    print(f"one epoch, seed MLP, 60,000 images, batch 64, device={device}, threads={args.threads}")
    print(f"{'notebook DataLoader pipeline':<32}{t_notebook:8.2f} s")
    print(f"{'harness in-memory slicing':<32}{t_harness:8.2f} s")
    print(f"{'speed-up':<32}{t_notebook / t_harness:8.2f} x")


if __name__ == "__main__":
    main()
