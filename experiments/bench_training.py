"""One training epoch: the notebook's DataLoader pipeline vs this harness.

    python -m experiments.bench_training [--threads 1] [--device cpu]

Both train the seed MLP (same initial weights) with SGD lr 0.01, batch 64,
shuffled, over all 60,000 training images. The notebook builds a torchvision
``MNIST`` dataset with ``ToTensor`` + ``Normalize`` per image and a
``DataLoader``; the harness slices minibatches from normalized in-memory
tensors (``experiments.train.train_epoch``).
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_training", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a harness worker uses 1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = parser.parse_args(argv)
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
