"""Benchmark: the per-layer LPs of the seed MLP, solved three ways, side by side.

The seed MLP (784-750-320-50-10, PyTorch default init, seed 0) and a batch of
MNIST training images (256, drawn with --seed). Each layer's input H comes from
one forward pass through the unmodified network: the LPs have the sizes and
structure they have inside ``lp_initialize``, where earlier layers are updated
first. Bounds: ``rho_w = 0.1 / sqrt(d_in)``, ``rho_b = m = 0.1 std(H W^T + b)``.

Timed, over all 1,130 units:
  (i)   cvxpy, the problem rebuilt for every unit (what one writes first);
  (ii)  cvxpy with ``r`` a Parameter, compiled once per layer (``solver="cvxpy"``);
  (iii) the fast path (``solver="highs"``): as ``lp_initialize`` calls it by
        default (``n_jobs=None``) with no worker process up, when it starts
        workers only if the work repays it; with --jobs processes (this one
        and jobs - 1 workers) while the workers start, and with them up
        (median of --repeats runs); and in one process;
and HiGHS's own time inside the fast path, the floor. (i) and (ii) take a
fraction of a second per unit, so they are timed on the first
--reference-units units of each layer and extrapolated in proportion to the
layer's units (for (ii) this spreads its one-time compile over all units: a
slight overestimate).

``--variant`` picks the LP (``lpinit.lp.problem``): ``plain`` (the default),
``anchored`` (``anchor=True``) or ``target`` (``target_active=--target``). The
last two have no closed form on hidden layers: every unit goes through HiGHS.

Goals on 2 cores: plain: (iii) >= 20x faster than (i), under 10 s for the
whole MLP, >= 90% of its wall time inside HiGHS; anchored and target: >= 50x,
under 15 s, >= 85%. The share inside HiGHS is the sum over
units of the time spent in the unit's HiGHS calls (setting its bounds and
start, solving, reading the answer), divided by the sum over layers of
(wall time x processes used).

    python -m experiments.bench_lp [--jobs 2] [--repeats 5] [--reference-units 10] [--warm-start-too]
    python -m experiments.bench_lp --skip-reference --batch-sizes 128,256,512,1024,2048
    python -m experiments.bench_lp --variant anchored     # or --variant target [--target 0.8]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from typing import Any

import cvxpy as cp
import numpy as np
import scipy.sparse as sp
import torch
from joblib import cpu_count
from torch import nn

from lpinit import load_mnist, seed_mlp
from lpinit.lp import solve_layer, stop_workers
from lpinit.lp.problem import Formulation, ReducedLP
from lpinit.tracing import capture_layer_io


def layer_inputs(model: nn.Module, images: torch.Tensor) -> list[tuple]:
    """``(name, H, W, b)`` of every Linear layer, H recorded in one forward pass."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        inputs = capture_layer_io(model, [m for _, m in linears], partial(model, images), "input")
    return [
        (name, _numpy(H), _numpy(m.weight), _numpy(m.bias)) for (name, m), (H, *_) in zip(linears, inputs, strict=True)
    ]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def benchmark_bounds(H, W, b) -> dict[str, Any]:
    spread = float((H @ W.T + b).std())
    return dict(weight_bound=0.1 / math.sqrt(H.shape[1]), bias_bound=0.1 * spread, margin=0.1 * spread)


def variant_options(variant: str, target: float) -> dict[str, Any]:
    """``solve_layer``'s options for a ``--variant``."""
    options: dict[str, dict[str, Any]] = {
        "plain": {},
        "anchored": {"anchor": True},
        "target": {"target_active": target},
    }
    return options[variant]


def naive_cvxpy(H, W, b, weight_bound, bias_bound, margin, **options) -> tuple[float, np.ndarray]:
    """(i): a new cvxpy problem for every unit, the LP as ``lpinit.lp.problem``
    writes it. Returns seconds and objectives."""
    start = time.perf_counter()
    f = Formulation(
        H.shape[1], weight_bound, bias_bound, margin, 0.0, options.get("anchor", False), options.get("target_active")
    )
    Z = H @ W.T + b
    active = f.active_rows(Z)
    objectives = []
    for j in range(W.shape[0]):
        d, e, s = cp.Variable(H.shape[1]), cp.Variable(), cp.Variable(H.shape[0], nonneg=True)
        sigma = np.where(active[:, j], 1.0, -1.0)
        constraints = [cp.multiply(sigma, Z[:, j] + H @ d + e) + s >= margin]
        constraints += [cp.abs(d) <= weight_bound, cp.abs(e) <= bias_bound]
        if f.anchor:
            constraints.append(H.mean(axis=0) @ d + e == 0)
        change = f.weight_cost() * cp.norm1(d) + f.bias_cost() * cp.abs(e)
        problem = cp.Problem(cp.Minimize(f.shortfall_cost() * cp.sum(s) + change), constraints)
        problem.solve(solver=cp.HIGHS)
        objectives.append(problem.value if problem.status == cp.OPTIMAL else np.nan)
    return time.perf_counter() - start, np.array(objectives)


def fast_path(layers, jobs, **options) -> list[tuple]:
    """(iii) on every layer in turn: ``[(name, LayerSolution)]``."""
    return [
        (name, solve_layer(H, W, b, n_jobs=jobs, **options, **benchmark_bounds(H, W, b))) for name, H, W, b in layers
    ]


def summarize(results) -> dict[str, float]:
    wall = sum(s.wall_time_s for _, s in results)
    inside = sum(s.solver_time_s.sum() for _, s in results)
    capacity = sum(s.wall_time_s * s.processes for _, s in results)
    return dict(wall_s=wall, highs_s=inside, share=inside / capacity, processes=max(s.processes for _, s in results))


def median_run(layers, jobs, repeats, **options) -> tuple[list, dict]:
    """The fast path ``repeats`` times: the run of median share, and the
    range of the shares."""
    runs = sorted((fast_path(layers, jobs, **options) for _ in range(repeats)), key=lambda r: summarize(r)["share"])
    shares = [summarize(r)["share"] for r in runs]
    return runs[len(runs) // 2], dict(share_min=shares[0], share_max=shares[-1], repeats=repeats)


def print_layers(layers, results, reduced: bool = True) -> None:
    """What the reductions left of each layer's LPs (plain LP), and how the units went."""
    for (name, H, W, b), (_, s) in zip(layers, results, strict=True):
        no_run = int(((s.iterations == 0) & (s.solver_time_s == 0)).sum())
        counts = ", ".join(f"{k} {v}" for k, v in s.status_counts().items())
        kept = ""
        if reduced:
            layer = ReducedLP.from_input(H, benchmark_bounds(H, W, b)["weight_bound"], 0.0)
            nonzeros = np.count_nonzero(H[:, layer.free])
            kept = f"the LP keeps {layer.free.sum()} of {H.shape[1]} weights and {sp.csr_matrix(layer.S).nnz} of their "
            kept += f"{nonzeros} nonzeros; "
        print(
            f"    {name}: {len(s.status)} units; {kept}{no_run} units need no HiGHS run; "
            f"{s.iterations.mean():.1f} iterations/unit; processes {s.processes}, {s.wall_time_s:.2f} s; "
            f"re-solved {s.resolves}; {counts}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256, help="MNIST training images per batch")
    parser.add_argument("--seed", type=int, default=0, help="seeds the network and the batch draw")
    parser.add_argument("--jobs", type=int, default=None, help="workers for the fast path (default: all cores)")
    parser.add_argument(
        "--reference-units",
        type=int,
        default=10,
        help="units per layer timed for (i) and (ii), extrapolated to all units",
    )
    parser.add_argument("--skip-reference", action="store_true", help="time the fast path only")
    parser.add_argument("--repeats", type=int, default=5, help="runs with workers up, of which the median is shown")
    parser.add_argument(
        "--warm-start-too",
        action="store_true",
        help="also time the fast path, in one process, with the start it does not use by default "
        "(the previous unit's basis, or the crash start)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=str,
        default="",
        help="comma-separated batch sizes to time the fast path on, e.g. 128,256,512",
    )
    parser.add_argument("--variant", choices=("plain", "anchored", "target"), default="plain", help="the LP to time")
    parser.add_argument("--target", type=float, default=0.8, help="target_active of --variant target")
    parser.add_argument("--json", type=str, default="", help="also write the settings and figures to this file")
    args = parser.parse_args()
    options = variant_options(args.variant, args.target)
    jobs = args.jobs or cpu_count()

    torch.manual_seed(args.seed)
    model = seed_mlp().eval()
    images, _ = load_mnist(train=True)
    draw = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))
    layers = layer_inputs(model, images[draw[: args.batch_size]])
    units = sum(W.shape[0] for _, _, W, _ in layers)
    print(
        f"seed MLP (default init, seed {args.seed}), {args.batch_size} MNIST training images, "
        f"{units} units in {len(layers)} layers, {jobs} workers for the fast path"
    )
    record: dict[str, Any] = dict(settings=vars(args) | {"jobs": jobs})

    # Worker processes stay up between calls (lpinit.parallel): stop them
    # between the rows that need none up.
    default_label = "default (n_jobs=None), no workers up"
    first_label = f"n_jobs={jobs}, workers starting"
    again_label = f"n_jobs={jobs}, workers up (median of {args.repeats})"
    stop_workers()
    runs = {default_label: fast_path(layers, None, **options)}
    stop_workers()
    runs[first_label] = fast_path(layers, jobs, **options)
    runs[again_label], spread = median_run(layers, jobs, args.repeats, **options)
    runs["one process (n_jobs=1)"] = fast_path(layers, 1, **options)
    if args.warm_start_too:
        # the start lpinit does not use by default for this variant (solve_layer's warm_start=None)
        default_is_warm = "target_active" in options and not options.get("anchor")
        runs["one process, the other start"] = fast_path(layers, 1, warm_start=not default_is_warm, **options)
    totals = {label: summarize(results) for label, results in runs.items()}
    totals[again_label].update(spread)
    print("(iii) fast path, whole MLP:")
    for label, total in totals.items():
        extra = f" (range {total['share_min']:.0%}-{total['share_max']:.0%})" if "repeats" in total else ""
        print(
            f"  {label:<38}{total['wall_s']:6.2f} s wall, {total['processes']} process(es), "
            f"{total['highs_s']:5.2f} s in HiGHS, share {total['share']:.0%}{extra}"
        )
    print("  per layer, default call:")
    print_layers(layers, runs[default_label], reduced=args.variant == "plain")
    record["fast"] = totals
    default, first, again = totals[default_label], totals[first_label], totals[again_label]

    if not args.skip_reference:
        naive_s = dpp_s = worst = 0.0
        for (_, H, W, b), (_, fast) in zip(layers, runs[default_label], strict=True):
            m = min(args.reference_units, W.shape[0])
            bounds = benchmark_bounds(H, W, b)
            seconds, naive_objective = naive_cvxpy(H, W[:m], b[:m], **bounds, **options)
            naive_s += seconds * W.shape[0] / m
            dpp = solve_layer(H, W[:m], b[:m], solver="cvxpy", **bounds, **options)
            dpp_s += dpp.wall_time_s * W.shape[0] / m
            for other in (naive_objective, dpp.objective):
                difference = np.abs(other - fast.objective[:m]) / np.maximum(1.0, np.abs(other))
                worst = max(worst, float(difference.max()))
        record.update(naive_cvxpy_s=naive_s, dpp_cvxpy_s=dpp_s, max_objective_difference=worst)
        print(
            f"all {units} units; (i) and (ii) timed on the first {args.reference_units} units of each "
            "layer and extrapolated:"
        )
        rows = [("(i)   cvxpy, rebuilt per unit", naive_s), ("(ii)  cvxpy, DPP (solver='cvxpy')", dpp_s)]
        rows += [(f"(iii) {label}", total["wall_s"]) for label, total in totals.items()]
        rows.append((f"HiGHS alone: its time ({again_label}) / {jobs}", again["highs_s"] / jobs))
        for label, seconds in rows:
            print(f"  {label:<48}{seconds:8.2f} s   (i) / this = {naive_s / seconds:6.1f}x")
        print(f"  objectives of (i), (ii) and (iii) agree to {worst:.1e} (relative, on the units timed)")
        speedup, seconds, share = (20, 10, 90) if args.variant == "plain" else (50, 15, 85)
        print(
            f"goals ({args.variant}): (i)/(iii) = {naive_s / default['wall_s']:.0f}x by default, "
            f"{naive_s / again['wall_s']:.0f}x with workers up (>= {speedup}x); whole MLP {default['wall_s']:.1f} s / "
            f"{again['wall_s']:.1f} s (< {seconds} s); inside HiGHS {default['share']:.0%} by default, "
            f"{again['share']:.0%} with workers up, {first['share']:.0%} while they start (>= {share}%)"
        )

    if args.batch_sizes:
        print(f"fast path by batch size: the default call with no worker up, and n_jobs={jobs} with workers up")
        growth, previous = [], None
        warm_up = layer_inputs(model, images[draw[:128]])[:1]  # a small layer, to bring the workers up
        for size in (int(x) for x in args.batch_sizes.split(",")):
            layers_n = layer_inputs(model, images[draw[:size]])
            stop_workers()
            default_n = summarize(fast_path(layers_n, None, **options))
            fast_path(warm_up, jobs, **options)
            total = summarize(fast_path(layers_n, jobs, **options))
            line = (
                f"  batch {size:5d}: default {default_n['wall_s']:7.2f} s, {default_n['processes']} process(es), "
                f"share {default_n['share']:.0%}; workers up {total['wall_s']:7.2f} s wall, "
                f"{total['highs_s']:7.2f} s in HiGHS (share {total['share']:.0%}), "
                f"{1e3 * total['wall_s'] / units:6.1f} ms/unit"
            )
            if previous:
                ratio = total["wall_s"] / previous[1]
                exponent = math.log(ratio) / math.log(size / previous[0])
                line += f", x{ratio:.1f} for x{size / previous[0]:.0f} samples (~n^{exponent:.1f})"
            print(line)
            growth.append(dict(batch_size=size, default=default_n, **total))
            previous = (size, total["wall_s"])
        record["batch_sizes"] = growth

    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
