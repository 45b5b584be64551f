"""Benchmark: ReLU-zero counting vs a plain forward pass vs the notebook's loop.

Counts the zeros of the seed MLP on the 10,000 MNIST test images and prints,
side by side from one run, the median time of a plain forward pass, of
``count_relu_zeros`` (with and without activation patterns), and of the seed
notebook's per-element loop (timed on a subset and extrapolated, since the
full loop takes over a minute). Goal: counting <= 1.25x the forward pass.

    python -m experiments.bench_counting [--repeats 7] [--loop-images 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lpinit import count_relu_zeros, load_mnist, seed_mlp


def plain_forward(model, images, batch_size):
    with torch.no_grad():
        for batch in images.split(batch_size):
            model(batch)


def seed_loop_count(model, images, batch_size):
    """The notebook's ReluCount.forward: one ``.item()`` per element."""
    zeros = 0

    def counting_relu(x):
        nonlocal zeros
        out = F.relu(x)
        for entry in torch.flatten(out):
            if entry.item() == 0:
                zeros += 1
        return out

    original = model.relu.forward
    model.relu.forward = counting_relu
    try:
        plain_forward(model, images, batch_size)
    finally:
        model.relu.forward = original
    return zeros


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timings per method (median reported)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--loop-images", type=int, default=200, help="images for the notebook's element loop (extrapolated to all)"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    model = seed_mlp().eval()
    images, _ = load_mnist(train=False)
    n = images.shape[0]
    plain_forward(model, images, args.batch_size)  # warm-up

    times = {"forward": [], "count": [], "count_no_patterns": []}
    for _ in range(args.repeats):  # interleaved, so load drifts hit all methods alike
        times["forward"].append(timed(plain_forward, model, images, args.batch_size)[0])
        elapsed, result = timed(count_relu_zeros, model, images, args.batch_size)
        times["count"].append(elapsed)
        times["count_no_patterns"].append(timed(count_relu_zeros, model, images, args.batch_size, patterns=False)[0])
    median = {k: statistics.median(v) for k, v in times.items()}

    subset = images[: args.loop_images]
    loop_s, loop_zeros = timed(seed_loop_count, model, subset, args.batch_size)
    subset_result = count_relu_zeros(model, subset)
    loop_all_s = loop_s * n / subset.shape[0]

    print(
        f"seed MLP (default init, seed 0), {n:,} MNIST test images, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(
        f"  total zeros: {result.total_zeros:,} of {result.total_elements:,} "
        f"({result.zero_fraction:.4f}); distinct patterns {result.distinct_patterns:,}"
    )
    print(f"  {'plain forward pass':<38}{median['forward']:>9.3f} s   1.00x")
    for key, label in (
        ("count", "count_relu_zeros (with patterns)"),
        ("count_no_patterns", "count_relu_zeros (patterns=False)"),
    ):
        print(f"  {label:<38}{median[key]:>9.3f} s   {median[key] / median['forward']:.2f}x")
    print(
        f"  {'notebook element loop (extrapolated)':<38}{loop_all_s:>9.1f} s   "
        f"{loop_all_s / median['forward']:.0f}x  "
        f"(timed on {subset.shape[0]} images: {loop_s:.2f} s)"
    )
    agree = "agree" if loop_zeros == subset_result.total_zeros else "DISAGREE"
    print(
        f"  on those {subset.shape[0]} images the loop and count_relu_zeros {agree}: "
        f"{loop_zeros:,} vs {subset_result.total_zeros:,} zeros"
    )
    ratio = median["count"] / median["forward"]
    print(f"counting / forward = {ratio:.2f} (goal <= 1.25): {'met' if ratio <= 1.25 else 'NOT met'}")


if __name__ == "__main__":
    main()
