"""How far can the anchored LP lower the ReLU zeros, and does it carry over?

With ``anchor="mean"`` no unit's batch-mean pre-activation may move, so fewer
zeros can only come from reshaping each unit's distribution on the batch. The
seed MLP (default init, seed 0) is LP-initialized on a batch of MNIST training
images at each radius; its ReLU-zero fraction is then measured on that batch
and on 10,000 held-out training images the LP never saw (the harness's fixed
split). fc1 has 785 free parameters per unit: with fewer samples than that,
part of what the LP does to the batch may not carry over.

    python -m experiments.anchor_reach                              # batch 256 and 1024
    python -m experiments.anchor_reach --batch-sizes 256,1024,4096  # resumable: cells already in --out are kept

Writes one JSON line per (batch size, radius) to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from experiments.data import load_splits
from lpinit import count_relu_zeros, lp_initialize, seed_mlp
from lpinit.files import write_atomic

RADII = (0.05, 0.1, 0.2, 0.5, 1.0)


def measure(batch_size: int, radius: float, seed: int, n_jobs: int | None) -> dict:
    """One cell: the zero fractions before and after, on the batch and held out."""
    splits = load_splits(10_000, 0)
    generator = torch.Generator().manual_seed(seed)
    batch = splits.train_x[torch.randperm(splits.train_x.shape[0], generator=generator)[:batch_size]]
    torch.manual_seed(seed)
    model = seed_mlp()
    assert splits.heldout_x is not None
    before = {"batch": count_relu_zeros(model, batch), "heldout": count_relu_zeros(model, splits.heldout_x)}
    began = time.perf_counter()
    report = lp_initialize(
        model,
        batch,
        radius=radius,
        margin=0.1,
        anchor="mean",
        n_jobs=n_jobs,
        progress=True,
        rescale=None,
        target_active=None,
        max_rows=None,  # every row of the batch, at every batch size: the table is about the batch size
    )
    seconds = time.perf_counter() - began
    after = {"batch": count_relu_zeros(model, batch), "heldout": count_relu_zeros(model, splits.heldout_x)}
    cell: dict = {"batch_size": batch_size, "radius": radius, "seed": seed, "lp_seconds": seconds}
    for where in ("batch", "heldout"):
        cell[f"zeros_before_{where}"] = before[where].zero_fraction
        cell[f"zeros_after_{where}"] = after[where].zero_fraction
        cell[f"layers_after_{where}"] = {s.name: s.zero_fraction for s in after[where].sites}
        cell[f"layers_before_{where}"] = {s.name: s.zero_fraction for s in before[where].sites}
    cell["status_counts"] = report.status_counts()
    cell["mean_shift"] = max(abs(r.preact_mean_lp - r.preact_mean_before) for r in report.layers)
    return cell


def table(cells: list[dict]) -> str:
    layers = list(cells[0]["layers_after_batch"])
    head = "| batch | radius | zeros on the batch | held out | " + " | ".join(f"{n} batch / held out" for n in layers)
    rows = [head + " | LP s |", "|" + "---|" * (5 + len(layers))]
    for c in sorted(cells, key=lambda c: (c["batch_size"], c["radius"])):
        per_layer = " | ".join(f"{c['layers_after_batch'][n]:.3f} / {c['layers_after_heldout'][n]:.3f}" for n in layers)
        rows.append(
            f"| {c['batch_size']} | {c['radius']:g} | {c['zeros_before_batch']:.3f} -> {c['zeros_after_batch']:.3f} | "
            f"{c['zeros_before_heldout']:.3f} -> {c['zeros_after_heldout']:.3f} | {per_layer} | "
            f"{c['lp_seconds']:.0f} |"
        )
    return "\n".join(rows)


def summary(cells: list[dict]) -> str:
    """One sentence per batch size, from the cells: how far the zeros fall on
    the batch and held out, and the gap between the two at the largest radius."""
    lines = []
    for batch_size in sorted({c["batch_size"] for c in cells}):
        mine = sorted((c for c in cells if c["batch_size"] == batch_size), key=lambda c: c["radius"])
        falls = {c["radius"]: c["zeros_before_heldout"] - c["zeros_after_heldout"] for c in mine}
        widest = mine[-1]
        best = max(falls, key=lambda r: falls[r])
        rises = [f"{r:g}" for r, fall in falls.items() if fall < 0]
        lines.append(
            f"Batch {batch_size}: at radius {widest['radius']:g} the zeros fall from "
            f"{widest['zeros_before_batch']:.3f} to {widest['zeros_after_batch']:.3f} on the batch and from "
            f"{widest['zeros_before_heldout']:.3f} to {widest['zeros_after_heldout']:.3f} held out (gap "
            f"{widest['zeros_after_heldout'] - widest['zeros_after_batch']:.3f}); held out they fall by at most "
            f"{max(falls.values()):.3f} (radius {best:g})"
            + (f" and rise at radius {', '.join(rises)}" if rises else "")
            + "."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.anchor_reach", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="256,1024", help="comma-separated LP batch sizes")
    parser.add_argument("--radii", default=",".join(map(str, RADII)), help="comma-separated radii")
    parser.add_argument("--seed", type=int, default=0, help="seeds the network and the batch")
    parser.add_argument("--jobs", type=int, default=None, help="processes for the LP (default: one per core)")
    parser.add_argument("--out", type=Path, default=Path("anchor_reach.jsonl"), help="results, one line per cell")
    args = parser.parse_args(argv)
    cells = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.is_file() else []
    done = {(c["batch_size"], c["radius"], c["seed"]) for c in cells}
    for batch_size in (int(x) for x in args.batch_sizes.split(",")):
        for radius in (float(x) for x in args.radii.split(",")):
            if (batch_size, radius, args.seed) in done:
                continue
            cells.append(measure(batch_size, radius, args.seed, args.jobs))
            write_atomic(args.out, "".join(json.dumps(c) + "\n" for c in cells))
            print(table(cells[-1:]), flush=True)
    print(table(cells))
    print(summary(cells))


if __name__ == "__main__":
    main()
