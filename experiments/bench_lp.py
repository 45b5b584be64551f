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

    python -m experiments.bench_lp [--jobs 2] [--repeats 5] [--reference-units 10] [--starts]
    python -m experiments.bench_lp --skip-reference --batch-sizes 128,256,512,1024,2048
    python -m experiments.bench_lp --variant anchored     # or --variant target [--target 0.8]

With ``--model cnn``: ``lp_initialize`` on the whole ``lpinit.cnn()`` (seed 0)
at batch 256 with the default ``max_rows``, as a user calls it (median of
--repeats), against (i) cvxpy rebuilt per channel or unit on the very LPs
that call solves (recorded from it), timed on the first --reference-units
units of each layer and extrapolated; goals: under 10 s, >= 20x (i). Then the
whole CNN against ``max_rows``, the LP options (--variants), and, with
--strategies, HiGHS's dual simplex, primal simplex and IPM on conv1's and
conv2's LPs, from the crash starts of ``lpinit.lp.highs``, from the crash
start of the plain LP before this change (every row basic), and from the
slack basis:

    python -m experiments.bench_lp --model cnn [--variants plain,anchor,l1,target] [--strategies]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import cvxpy as cp
import highspy
import numpy as np
import scipy.sparse as sp
import torch
from joblib import cpu_count
from torch import nn

import lpinit.initialize
from lpinit import cnn, load_mnist, lp_initialize, seed_mlp
from lpinit.initialize import DEFAULT_MAX_ROWS, DEFAULTS, PLAIN_LP
from lpinit.lp import highs as fast
from lpinit.lp import solve_layer, start_workers, stop_workers
from lpinit.lp.problem import Formulation, ReducedLP, is_plain
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


def formulation_options(options: dict[str, Any]) -> dict[str, Any]:
    """``anchor`` and ``target_active`` of a variant's ``solve_layer`` options, each given."""
    return {"anchor": bool(options.get("anchor", False)), "target_active": options.get("target_active")}


def variant_options(variant: str, target: float) -> dict[str, Any]:
    """``solve_layer``'s options for a ``--variant``."""
    options: dict[str, dict[str, Any]] = {
        "plain": {},
        "anchored": {"anchor": True},
        "target": {"target_active": target},
    }
    return options[variant]


def naive_cvxpy(H, W, b, weight_bound, bias_bound, margin, **options) -> tuple[float, np.ndarray, float]:
    """(i): a new cvxpy problem for every unit, the LP as ``lpinit.lp.problem``
    writes it. Returns seconds, objectives, and the seconds inside HiGHS
    (cvxpy's ``solver_stats.solve_time``, summed)."""
    start = time.perf_counter()
    f = Formulation(
        H.shape[1],
        weight_bound,
        bias_bound,
        margin,
        options.get("l1", 0.0),
        options.get("anchor", False),
        options.get("target_active"),
    )
    Z = H @ W.T + b
    active = f.active_rows(Z, H)
    objectives, highs_s = [], 0.0
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
        highs_s += problem.solver_stats.solve_time or 0.0
        objectives.append(problem.value if problem.status == cp.OPTIMAL else np.nan)
    return time.perf_counter() - start, np.array(objectives), highs_s


@contextlib.contextmanager
def general_start(slack: bool) -> Iterator[None]:
    """Make every general LP built meanwhile go to HiGHS whole (the LP
    itself, not on working rows) and start from the slack basis (``slack``)
    or from the crash start, whatever its shape."""
    build, pick = fast._GeneralModel.__init__, fast.GeneralLPs.from_layer

    def forced(self, lps, threads):
        build(self, lps, threads)
        self.slack_start = slack

    def whole(H, Z, formulation, hot_start, form=None, active=None):
        lps = pick(H, Z, formulation, hot_start, form, active)
        return replace(lps, form="lp") if lps.form in fast.WORKING_ROWS else lps

    fast._GeneralModel.__init__ = forced  # type: ignore[method-assign]
    fast.GeneralLPs.from_layer = whole  # type: ignore[method-assign]
    try:
        yield
    finally:
        fast._GeneralModel.__init__ = build  # type: ignore[method-assign]
        fast.GeneralLPs.from_layer = pick  # type: ignore[method-assign]


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
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="the seed MLP, or lpinit.cnn()")
    parser.add_argument(
        "--variants",
        type=str,
        default="plain",
        help="--model cnn: LP options to time, of " + ", ".join(CNN_VARIANTS),
    )
    parser.add_argument(
        "--max-rows-list",
        type=str,
        default="2048,4096,8192,16384,32768",
        help="--model cnn: max_rows values to time the whole CNN at",
    )
    parser.add_argument(
        "--strategies", action="store_true", help="--model cnn: time HiGHS's algorithms and starts on conv1 and conv2"
    )
    parser.add_argument(
        "--forms",
        action="store_true",
        help="solve the LPs of each variant but the plain one as the LP itself, as its dual, and each on working "
        "rows, side by side (the seed MLP: on the first --reference-units units of each layer)",
    )
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
        "--starts",
        action="store_true",
        help="also time the fast path, in one process, from each start: the previous unit's basis, "
        "and for the general form the whole LP (not on working rows) from the slack basis and the crash start",
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
    if args.model == "cnn":
        main_cnn(args)
        return
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
    if args.starts:
        runs["one process, the previous unit's basis"] = fast_path(layers, 1, warm_start=True, **options)
        if options:  # the general form, whole: its default picks the slack basis or the crash start by shape
            for label, slack in (("the whole LP, slack basis", True), ("the whole LP, crash start", False)):
                with general_start(slack):
                    runs[f"one process, {label}"] = fast_path(layers, 1, **options)
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
        naive_s = naive_highs_s = dpp_s = worst = 0.0
        for (_, H, W, b), (_, fast) in zip(layers, runs[default_label], strict=True):
            m = min(args.reference_units, W.shape[0])
            bounds = benchmark_bounds(H, W, b)
            seconds, naive_objective, inside = naive_cvxpy(H, W[:m], b[:m], **bounds, **options)
            naive_s += seconds * W.shape[0] / m
            naive_highs_s += inside * W.shape[0] / m
            dpp = solve_layer(H, W[:m], b[:m], solver="cvxpy", **bounds, **options)
            dpp_s += dpp.wall_time_s * W.shape[0] / m
            for other in (naive_objective, dpp.objective):
                difference = np.abs(other - fast.objective[:m]) / np.maximum(1.0, np.abs(other))
                worst = max(worst, float(difference.max()))
        record.update(naive_cvxpy_s=naive_s, dpp_cvxpy_s=dpp_s, max_objective_difference=worst)
        if args.forms and args.variant != "plain":
            recorded = [
                (name, H, W, b, {**benchmark_bounds(H, W, b), "l1": 0.0, **formulation_options(options)}, fast)
                for (name, H, W, b), (_, fast) in zip(layers, runs[default_label], strict=True)
            ]
            print(forms(recorded, units=args.reference_units))
        print(
            f"all {units} units; (i) and (ii) timed on the first {args.reference_units} units of each "
            "layer and extrapolated:"
        )
        rows = [("(i)   cvxpy, rebuilt per unit", naive_s), ("(ii)  cvxpy, DPP (solver='cvxpy')", dpp_s)]
        rows += [(f"(iii) {label}", total["wall_s"]) for label, total in totals.items()]
        rows.append((f"HiGHS alone: its time ({again_label}) / {jobs}", again["highs_s"] / jobs))
        for label, seconds in rows:
            print(f"  {label:<48}{seconds:8.2f} s   (i) / this = {naive_s / seconds:6.1f}x")
        print(f"  (i) spent {naive_highs_s:.2f} s inside HiGHS ({naive_highs_s / naive_s:.0%} of it)")
        print(f"  objectives of (i), (ii) and (iii) agree to {worst:.1e} (relative, on the units timed)")
        speedup, seconds, share = (20, 10, 90) if args.variant == "plain" else (50, 15, 85)
        print(
            f"goals ({args.variant}): (i)/(iii) = {naive_s / default['wall_s']:.1f}x by default, "
            f"{naive_s / again['wall_s']:.1f}x with workers up (>= {speedup}x); whole MLP {default['wall_s']:.1f} s / "
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


# ---------------------------------------------------------------- the CNN

CNN_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": PLAIN_LP,
    "anchor": {**PLAIN_LP, "anchor": "mean"},
    "l1": {**PLAIN_LP, "l1": 0.01},
    "target": {**PLAIN_LP, "target_active": 0.5},
    "defaults": {},
}
"""LP options timed on the CNN (``lp_initialize`` keywords): the LP as first
posed (radius 0.1, margin 0.1), each option added to it, and lp_initialize's
defaults."""


def record_lps(model: nn.Module, batch: torch.Tensor, **options) -> list[tuple]:
    """``lp_initialize(model, batch, **options)``, recording each layer's LP
    as it is solved: ``[(name, H, W, b, solve_layer keywords, LayerSolution)]``."""
    recorded = []
    solve = lpinit.initialize.solve_layer

    def recording(H, W, b, **kwargs):
        solution = solve(H, W, b, **kwargs)
        recorded.append((kwargs["desc"], H, W, b, kwargs, solution))
        return solution

    lpinit.initialize.solve_layer = recording
    try:
        lp_initialize(model, batch, **options)
    finally:
        lpinit.initialize.solve_layer = solve
    return recorded


def naive_cvxpy_general(H, W, b, kwargs) -> tuple[float, np.ndarray, float]:
    """(i) for any LP option: a new cvxpy problem per unit, as
    ``lpinit.lp.problem`` writes it. Returns seconds and objectives."""
    return naive_cvxpy(
        H,
        W,
        b,
        kwargs["weight_bound"],
        kwargs["bias_bound"],
        kwargs["margin"],
        l1=kwargs["l1"],
        anchor=kwargs["anchor"],
        target_active=kwargs["target_active"],
    )


def forms(recorded: list[tuple], units: int | None = None) -> str:
    """Each recorded layer's general LPs (of its first ``units`` units, or
    all) solved in each form that holds them (``lpinit.lp.highs.forms_of``: the LP
    itself, its dual, and each on working rows), in this process, side by
    side."""
    from lpinit.lp.highs import GeneralLPs, forms_of, solve_general
    from lpinit.validation import check_formulation

    scope = "" if units is None else f" (first {units} units)"
    lines = [
        f"  each layer's LPs{scope} as the LP itself (lp), its dual (dual), and each on working rows (rows, "
        "dual_rows) (one process; * = the form solve_layer picks):"
    ]
    for name, H, W, b, kwargs, solution in recorded:
        W, b, reference = W[:units], b[:units], solution.objective[:units]
        f = check_formulation(
            H.shape[1],
            kwargs["weight_bound"],
            kwargs["bias_bound"],
            kwargs["margin"],
            kwargs["l1"],
            kwargs["anchor"],
            kwargs["target_active"],
        )
        Z = H @ W.T + b
        picked_lps = GeneralLPs.from_layer(H, Z, f, hot_start=False)
        timed = []
        for form in forms_of(f):
            lps = replace(picked_lps, form=form, token=uuid.uuid4().hex)  # a token of its own: its own HiGHS model
            start = time.perf_counter()
            s = solve_general(lps, n_jobs=1, time_limit_s=None, tick=lambda _: None)
            seconds = time.perf_counter() - start
            agree = np.abs(s.objective - reference).max() / max(1.0, np.abs(reference).max())
            picked = "*" if form == picked_lps.form else " "
            timed.append(
                f"{form}{picked} {seconds:6.2f} s ({s.iterations.sum():,} iterations, "
                f"{s.status_counts()}, objectives within {agree:.0e})"
            )
        per_unit = f", {len(W)} units" if units is not None else ""
        lines.append(f"    {name} ({H.shape[0]:,} rows x {H.shape[1]} weights{per_unit}): " + "; ".join(timed))
    return "\n".join(lines)


def time_cnn(batch: torch.Tensor, seed: int, repeats: int, **options) -> tuple[float, lpinit.initialize.LPInitReport]:
    """The median wall time of ``lp_initialize`` on a fresh ``cnn()``, and its last report."""
    times, report = [], None
    for _ in range(repeats):
        torch.manual_seed(seed)
        model = cnn()
        start = time.perf_counter()
        report = lp_initialize(model, batch, **options)
        times.append(time.perf_counter() - start)
    assert report is not None
    return float(np.median(times)), report


def main_cnn(args: argparse.Namespace) -> None:
    images, _ = load_mnist(train=True)
    draw = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))
    batch = images[draw[: args.batch_size]]
    stop_workers()
    print(
        f"cnn() (default init, seed {args.seed}), {args.batch_size} MNIST training images, "
        f"lp_initialize(model, batch, **variant) with max_rows={DEFAULT_MAX_ROWS} (the default); variants: the "
        f"plain LP {PLAIN_LP}, one option added to it, and the defaults {DEFAULTS}"
    )
    record: dict = dict(settings=vars(args))
    for variant in args.variants.split(","):
        options = CNN_VARIANTS[variant]
        wall, report = time_cnn(batch, args.seed, args.repeats, **options)
        print(f"[{variant}] whole CNN: {wall:.2f} s wall (median of {args.repeats}); per layer:")
        for layer in report.layers:
            counts = ", ".join(f"{k} {v}" for k, v in layer.status_counts.items())
            print(
                f"    {layer.name}: {layer.out_features} units, LPs of {layer.lp_rows:,} of {layer.rows:,} rows x "
                f"{layer.in_features} weights: {layer.wall_time_s:.2f} s, {layer.iterations} iterations, "
                f"{layer.solver_time_s:.2f} s in HiGHS, {layer.processes} process(es); {counts}"
            )
        # what the CLI and lpinit.start_workers() give: the worker processes up before the call
        jobs = args.jobs or cpu_count()
        start_workers(jobs)
        wall_up, report_up = time_cnn(batch, args.seed, args.repeats, n_jobs=jobs, **options)
        stop_workers()
        shared = ", ".join(f"{r.name} {r.wall_time_s:.2f} s ({r.processes})" for r in report_up.layers)
        print(f"  with {jobs - 1} worker(s) up, n_jobs={jobs}: {wall_up:.2f} s wall; per layer (processes): {shared}")
        result: dict = dict(wall_s=wall, workers_up_s=wall_up, layers=[(r.name, r.wall_time_s) for r in report.layers])
        if not args.skip_reference:
            torch.manual_seed(args.seed)
            naive_s, naive_highs_s, worst = 0.0, 0.0, 0.0
            for name, H, W, b, kwargs, solution in record_lps(cnn(), batch, n_jobs=1, **options):
                m = min(args.reference_units, W.shape[0])
                seconds, objective, inside = naive_cvxpy_general(H, W[:m], b[:m], kwargs)
                naive_s += seconds * W.shape[0] / m
                naive_highs_s += inside * W.shape[0] / m
                difference = np.abs(objective - solution.objective[:m]) / np.maximum(1.0, np.abs(objective))
                worst = max(worst, float(difference.max()))
                print(f"    (i) {name}: {seconds / m:.2f} s per unit, x {W.shape[0]} units")
            print(
                f"  (i) cvxpy rebuilt per unit, extrapolated from {args.reference_units} per layer: {naive_s:.1f} s, "
                f"of which {naive_highs_s:.1f} s inside HiGHS; (i) / lp_initialize = {naive_s / wall:.1f}x by "
                f"default, {naive_s / wall_up:.1f}x with the workers up; objectives agree to {worst:.1e} (relative)"
            )
            effective = {**DEFAULTS, **options}
            general = not is_plain(effective["l1"], effective["anchor"], effective["target_active"])
            if args.forms and general:  # the plain LP has one form (lpinit.lp.problem)
                torch.manual_seed(args.seed)
                print(forms(record_lps(cnn(), batch, n_jobs=1, **options)))
            print(
                f"  goals: whole CNN {wall:.2f} s (< 10 s), {naive_s / wall:.1f}x (i) by default, "
                f"{naive_s / wall_up:.1f}x with the workers up (>= 20x)"
            )
            result.update(naive_cvxpy_s=naive_s, max_objective_difference=worst)
        record[variant] = result

    print(forward_threads(batch))
    print("whole CNN against max_rows (plain LP; median of --repeats):")
    record["max_rows"] = []
    for value in (int(x) for x in args.max_rows_list.split(",")):
        wall, report = time_cnn(batch, args.seed, args.repeats, **PLAIN_LP, max_rows=value)
        conv1 = report.layers[0]
        print(
            f"  max_rows {value:6d}: {wall:6.2f} s; conv1's LPs {conv1.wall_time_s:6.2f} s "
            f"({conv1.iterations} iterations), conv2's {report.layers[1].wall_time_s:5.2f} s"
        )
        record["max_rows"].append(dict(max_rows=value, wall_s=wall, conv1_s=conv1.wall_time_s))

    if args.strategies:
        torch.manual_seed(args.seed)
        lps = {name: (H, W, b, kwargs) for name, H, W, b, kwargs, _ in record_lps(cnn(), batch, n_jobs=1)}
        print(f"HiGHS on conv1's and conv2's LPs (max_rows={DEFAULT_MAX_ROWS}), first {args.reference_units} units:")
        print("  l1=0.01 (general form), solve_layer with the previous unit's basis against the crash start:")
        torch.manual_seed(args.seed)
        for name, H, W, b, kwargs, _ in record_lps(cnn(), batch, n_jobs=1, layers=["conv1", "conv2"], l1=0.01):
            times = {
                label: solve_layer(H, W, b, **{**kwargs, "warm_start": warm, "progress": False}).wall_time_s
                for label, warm in (("previous unit's basis", True), ("crash start", False))
            }
            print(f"    {name}: " + ", ".join(f"{label} {seconds:.2f} s" for label, seconds in times.items()))
        for label, layer_name, options in (("plain", "conv1", {}), ("anchor", "conv2", dict(anchor=True))):
            H, W, b, kwargs = lps[layer_name]
            kwargs = {**kwargs, "l1": 0.0, "anchor": False, "target_active": None, **options}
            for start, algorithm, seconds, iterations in highs_strategies(H, W, b, kwargs, args.reference_units):
                print(
                    f"  {label} LP of {layer_name}, {algorithm:<15} from {start:<28}{seconds:8.2f} s, "
                    f"iterations {iterations}"
                )

    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


def forward_threads(batch: torch.Tensor, repeats: int = 10) -> str:
    """The median time of a forward pass of ``cnn()`` on ``batch`` with
    torch's own thread count, and on one thread (as lpinit's driver runs it)."""
    from threadpoolctl import threadpool_limits

    model = cnn().eval()
    times = {}
    for label, limit in ((f"{torch.get_num_threads()} threads (torch's default)", None), ("one thread", 1)):
        with threadpool_limits(limits=limit), torch.no_grad():
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(batch)
                seconds.append(time.perf_counter() - start)
        times[label] = float(np.median(seconds))
    return "forward pass of cnn() on the batch (median of 10): " + ", ".join(
        f"{label} {seconds * 1e3:.1f} ms" for label, seconds in times.items()
    )


ALGORITHMS: dict[str, dict[str, Any]] = {
    "dual simplex": {"solver": "simplex", "simplex_strategy": 1},
    "primal simplex": {"solver": "simplex", "simplex_strategy": 4},
    "IPM": {"solver": "ipm", "run_crossover": "off"},
}


def highs_strategies(H, W, b, kwargs, units: int) -> list[tuple[str, str, float, list[int]]]:
    """Solve the first ``units`` LPs of a layer on the HiGHS instance that
    ``lpinit.lp.highs`` builds for them, with each algorithm and start: the
    crash start of ``lpinit.lp.highs``, the plain LP's crash start before
    the short rows' slacks were made basic (every row basic), and the slack
    basis. Returns ``(start, algorithm, seconds, iterations per unit)``."""
    f = Formulation(H.shape[1], kwargs["weight_bound"], kwargs["bias_bound"], kwargs["margin"], anchor=kwargs["anchor"])
    units = min(units, W.shape[0])
    Z = (H @ W.T + b)[:, :units]
    if f.plain:
        reduced = ReducedLP.from_input(H, f.weight_bound, f.bias_bound)
        rhs_left = reduced.rhs_left(f.margin - Z)
        highs, crash, _ = fast._workspace(reduced, 0)  # threads=0, as lp_initialize in this process
        D, short = crash.points(rhs_left)
        D_before = crash._point(rhs_left > 0)  # one round, from the rows short at d = 0
        n = reduced.shape[0]
        lower, upper = rhs_left, np.full((n, units), highspy.kHighsInf)
        starts = {
            "the crash start": lambda k: crash.basis(D[:, k], short[:, k]),
            "every row basic (before)": lambda k: crash.basis(D_before[:, k], np.zeros(n, dtype=bool)),
            "the slack basis": lambda k: None,
        }
    else:
        lps = fast.GeneralLPs.from_layer(H, Z, f, hot_start=False)
        model = fast._GeneralModel(lps, 0)
        highs, n = model.highs, model.n
        lower, upper = f.row_bounds(Z, lps.active)
        lower, upper = np.maximum(lower, -highspy.kHighsInf), np.minimum(upper, highspy.kHighsInf)
        starts = {
            "the crash start": lambda k: model.crash_basis(Z[:, k], lps.active[:, k]),
            "the slack basis": lambda k: None,
        }
    rows = np.arange(n, dtype=np.int32)
    results = []
    for start, basis in starts.items():
        for algorithm, options in ALGORITHMS.items():
            if algorithm == "IPM" and start != "the slack basis":
                continue  # IPM takes no start
            if algorithm == "primal simplex" and start == "the slack basis" and not f.plain:
                continue  # minutes per unit
            for key, value in options.items():
                highs.setOptionValue(key, value)
            seconds, iterations = 0.0, []
            for k in range(units):
                began = time.perf_counter()
                highs.changeRowsBounds(n, rows, lower[:, k], upper[:, k])  # type: ignore[attr-defined]
                highs.clearSolver()
                start_basis = basis(k)
                if start_basis is not None:
                    highs.setBasis(start_basis)
                highs.run()
                seconds += time.perf_counter() - began
                info = highs.getInfo()
                iterations.append(info.ipm_iteration_count if algorithm == "IPM" else info.simplex_iteration_count)
            highs.resetOptions()
            highs.setOptionValue("output_flag", False)
            highs.setOptionValue("presolve", "off")
            results.append((start, algorithm, seconds, iterations))
    return results


if __name__ == "__main__":
    main()
