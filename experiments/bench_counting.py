"""Benchmark: ReLU-zero counting vs a plain forward pass vs the notebook's loop.

Counts the zeros of the seed MLP on the 10,000 MNIST test images and prints,
side by side from one run and for each batch size, the time of a plain forward
pass and of ``count_relu_zeros`` with and without activation patterns. The
three run interleaved, in a rotating order, so that load from other processes
falls on all of them alike. The ratio uses the fastest of the repeats (the one
least disturbed by the rest of a shared machine); the median is printed too.
The seed notebook's per-element loop is timed on a subset and extrapolated,
since the full loop takes over a minute. Goal: counting <= 1.15x the forward
pass at batch 1,000.

    python -m experiments.bench_counting [--repeats 11] [--batch-sizes 100,1000,10000] [--threads N] [--loop-images 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lpinit import count_relu_zeros, load_mnist, seed_mlp

GOAL_RATIO = 1.15
GOAL_BATCH = 1000


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


def time_methods(model, images, batch_size: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per repeat of each method, the methods interleaved in a rotating order."""
    methods = {
        "forward": lambda: plain_forward(model, images, batch_size),
        "count": lambda: count_relu_zeros(model, images, batch_size),
        "count_no_patterns": lambda: count_relu_zeros(model, images, batch_size, patterns=False),
    }
    for method in methods.values():  # warm-up
        method()
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(methods[name])[0])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="timings per method and batch size")
    parser.add_argument("--batch-sizes", default="100,1000,10000", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--loop-images", type=int, default=200, help="images for the notebook's element loop (extrapolated to all)"
    )
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = seed_mlp().eval()
    images, _ = load_mnist(train=False)
    n = images.shape[0]
    result = count_relu_zeros(model, images)

    print(
        f"seed MLP (default init, seed 0), {n:,} MNIST test images, {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved repeats; ratio of the fastest repeats (ratio of the medians)"
    )
    print(
        f"  total zeros: {result.total_zeros:,} of {result.total_elements:,} "
        f"({result.zero_fraction:.4f}); distinct patterns {result.distinct_patterns:,}"
    )
    labels = {
        "forward": "plain forward pass",
        "count": "count_relu_zeros (with patterns)",
        "count_no_patterns": "count_relu_zeros (patterns=False)",
    }
    goal_ratios = []
    forward_s = None
    for batch_size in batch_sizes:
        times = time_methods(model, images, batch_size, args.repeats)
        fastest = {k: min(v) for k, v in times.items()}
        median = {k: statistics.median(v) for k, v in times.items()}
        print(f"batch {batch_size:,}")
        for key, label in labels.items():
            print(
                f"  {label:<36}{fastest[key]:>8.3f} s  {fastest[key] / fastest['forward']:.2f}x"
                f"   (median {median[key]:.3f} s  {median[key] / median['forward']:.2f}x)"
            )
        if batch_size == GOAL_BATCH:
            goal_ratios = [fastest["count"] / fastest["forward"], fastest["count_no_patterns"] / fastest["forward"]]
            forward_s = fastest["forward"]

    subset = images[: args.loop_images]
    loop_s, loop_zeros = timed(seed_loop_count, model, subset, GOAL_BATCH)
    subset_result = count_relu_zeros(model, subset)
    loop_all_s = loop_s * n / subset.shape[0]
    vs_forward = f"{loop_all_s / forward_s:.0f}x the forward pass at batch {GOAL_BATCH:,}, " if forward_s else ""
    print(
        f"notebook element loop (extrapolated): {loop_all_s:.1f} s, {vs_forward}"
        f"timed on {subset.shape[0]} images: {loop_s:.2f} s"
    )
    agree = "agree" if loop_zeros == subset_result.total_zeros else "DISAGREE"
    print(
        f"  on those {subset.shape[0]} images the loop and count_relu_zeros {agree}: "
        f"{loop_zeros:,} vs {subset_result.total_zeros:,} zeros"
    )
    if goal_ratios:
        met = all(r <= GOAL_RATIO for r in goal_ratios)
        shown = " and ".join(f"{r:.2f}" for r in goal_ratios)
        print(
            f"counting / forward at batch {GOAL_BATCH:,} = {shown} (with, without patterns; goal <= {GOAL_RATIO}): "
            f"{'met' if met else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
