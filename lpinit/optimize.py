"""Command line: LP-initialize a network on a batch of bundled MNIST.

    python -m lpinit.optimize                      # seed MLP, 256 images, defaults
    python -m lpinit.optimize --model mlp:784,300,10 --radius 0.05 --out runs/a

Prints the per-layer report and the ReLU-zero fractions on the held-out test
images before and after, and saves the initialized ``state_dict`` (model.pt)
and the report (report.json) into ``--out``. Exit status: 0 on success, 1 if
the solver failed on some unit, 2 for a bad flag or value.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from lpinit.counting import count_relu_zeros
from lpinit.data import load_mnist
from lpinit.initialize import lp_initialize
from lpinit.lp import SOLVERS, start_workers
from lpinit.models import mlp, seed_mlp
from lpinit.validation import LPInitError

PROG = "python -m lpinit.optimize"


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage too; one line is enough
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def build_model(spec: str) -> nn.Module:
    """``seed-mlp``, ``mlp:784,750,10`` (ReLU-fed hidden layers), or
    ``package.module:factory`` (a no-argument callable returning an nn.Module)."""
    if spec == "seed-mlp":
        return seed_mlp()
    if spec.startswith("mlp:"):
        try:
            widths = [int(w) for w in spec[4:].split(",")]
        except ValueError:
            raise ValueError(f"expected --model mlp:W0,W1,... with integer widths, got {spec!r}") from None
        if widths[0] != 784:
            raise ValueError(f"expected an MNIST input width of 784 in --model, got {widths[0]}")
        return mlp(widths)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"unknown --model {spec!r}; expected seed-mlp, mlp:784,...,10 or package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load --model {spec!r}: {err}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r} returned {type(model).__name__}, expected an nn.Module")
    return model


def parse_args(argv=None) -> argparse.Namespace:
    parser = _OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", default="seed-mlp", help="seed-mlp (default), mlp:784,W1,...,10, or package.module:factory")
    add("--batch-size", type=_positive_int, default=256, help="MNIST training images in the LP batch (default 256)")
    add(
        "--radius",
        type=_non_negative_float,
        default=0.1,
        help="max weight change relative to sqrt(3) std(W); bias change relative to the "
        "pre-activation spread (default 0.1)",
    )
    add(
        "--margin",
        type=_non_negative_float,
        default=0.1,
        help="target pre-activation relative to its spread (default 0.1)",
    )
    add("--solver", choices=SOLVERS, default="highs", help="highs (fast, default) or cvxpy (reference)")
    add(
        "--jobs",
        type=_positive_int,
        default=None,
        help="processes for the highs solver: this one and jobs-1 worker processes, started while the data "
        "loads (default: one per core)",
    )
    add("--time-limit", type=_non_negative_float, default=None, help="per-unit time limit in seconds")
    add("--seed", type=int, default=0, help="seeds the model's init and the batch choice (default 0)")
    add("--exact", action="store_true", help="solve the mixed-integer version (small layers only)")
    add("--out", default="lpinit-out", help="output folder for model.pt and report.json")
    add("--quiet", action="store_true", help="no progress bars and no table")
    add("--json", action="store_true", help="print the report as JSON on stdout")
    return parser.parse_args(argv)


def _write_atomic(path: Path, write) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        write(tmp)
    os.replace(tmp.name, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        model = build_model(args.model)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    if args.solver == "highs" and args.jobs != 1:
        # start the LP's worker processes now: they take ~0.5 s, which the
        # data loading below hides, and the LP then uses them from its start
        start_workers(args.jobs)
    train_images, _ = load_mnist(train=True)
    test_images, _ = load_mnist(train=False)
    generator = torch.Generator().manual_seed(args.seed)
    batch = train_images[torch.randperm(train_images.shape[0], generator=generator)[: args.batch_size]]

    try:
        before = count_relu_zeros(model, test_images, patterns=False)
        report = lp_initialize(
            model,
            batch,
            radius=args.radius,
            margin=args.margin,
            solver=args.solver,
            n_jobs=args.jobs,
            time_limit_s=args.time_limit,
            exact=args.exact,
            progress=not args.quiet,
        )
    except (ValueError, TypeError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except LPInitError as err:
        print(f"{PROG}: solver failure: {err}", file=sys.stderr)
        return 1
    after = count_relu_zeros(model, test_images, patterns=False)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "settings": vars(args),
        "report": report.to_dict(),
        "test_zero_fraction_before": before.zero_fraction,
        "test_zero_fraction_after": after.zero_fraction,
        "test_sites_before": {s.name: s.zero_fraction for s in before.sites},
        "test_sites_after": {s.name: s.zero_fraction for s in after.sites},
    }
    _write_atomic(out / "model.pt", lambda f: torch.save(model.state_dict(), f))
    _write_atomic(out / "report.json", lambda f: f.write(json.dumps(result, indent=2).encode()))

    if args.json:
        print(json.dumps(result, indent=2))
    elif not args.quiet:
        print(report)
        print(f"\nReLU zeros on the {before.samples:,} MNIST test images (held out):")
        print(f"  {'site':<8}{'before':>9}{'after':>9}")
        for b, a in zip(before.sites, after.sites, strict=True):
            print(f"  {b.name:<8}{b.zero_fraction:>9.4f}{a.zero_fraction:>9.4f}")
        print(f"  {'total':<8}{before.zero_fraction:>9.4f}{after.zero_fraction:>9.4f}")
        print(f"\nSaved {out / 'model.pt'} and {out / 'report.json'}")
    failed = report.status_counts().get("failed", 0)
    if failed:
        print(f"{PROG}: solver failure: {failed} unit(s) failed and kept their weights", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
