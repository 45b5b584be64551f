"""Time a sample of the planned cells and extrapolate the cost of the whole plan.

``python -m experiments.collapse --preset collapse --estimate`` prints it. Train
groups are timed for a few Adam steps at the smallest, middle and largest
planned depth of each width (per-step time interpolated linearly in depth in
between); init cells by drawing 200 seeds at each width's largest depth; an
LP-family init by the HiGHS time of a few seeds, per seed and hidden layer.
Every timing is CPU time of this process (one thread), so the estimate is what
the plan costs on one idle core; on a machine whose cores are busy the wall
time is longer by the share of a core the run gets.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from experiments.collapse import inits as collapse_inits
from experiments.collapse.runner import InitCell, plan, run_init_cell
from experiments.collapse.settings import CollapseSettings
from experiments.collapse.stacked import mlp_widths
from experiments.collapse.tasks import get_task, sample_inputs
from experiments.collapse.train import train_stacked
from experiments.ledger import read_lines

TIMED_STEPS = 10


def _step_seconds(width: int, depth: int, nets: int, s: CollapseSettings) -> float:
    x = sample_inputs(1, s.n_train, s.data_seed)
    model = collapse_inits.draw("he", mlp_widths(1, width, depth, 1), list(range(min(nets, s.chunk_seeds))))
    chunks = -(-nets // s.chunk_seeds)
    train_stacked(model, x, x.abs(), steps=1, lr=s.lr)  # warm-up: first calls allocate
    best = float("inf")
    for _ in range(2):  # the least disturbed of two timings
        t0 = time.process_time()
        train_stacked(model, x, x.abs(), steps=TIMED_STEPS, lr=s.lr)
        best = min(best, time.process_time() - t0)
    return best / TIMED_STEPS * chunks


def _lp_seconds_per_layer(s: CollapseSettings, name: str) -> float:
    """Seconds of LP-family init ``name`` (HiGHS and bookkeeping) per seed and hidden layer."""
    x = sample_inputs(1, s.n_train, s.data_seed)
    depth, seeds = 5, 4
    t0 = time.process_time()
    collapse_inits.initialize(
        name, mlp_widths(1, 2, depth, 1), list(range(seeds)), x, lp_radius=s.lp_radius, lp_margin=s.lp_margin
    )
    return (time.process_time() - t0) / (seeds * depth)


def estimate_cost(s: CollapseSettings) -> str:
    torch.set_num_threads(s.threads)
    done = {r["key"] for r in read_lines(s.results_dir / "runs.jsonl", repair=False)}
    cells, groups = plan(s, done)
    lp_names = sorted(
        {c.init for c in cells if collapse_inits.is_lp_family(c.init)}
        | {i for g in groups for i in g.inits if collapse_inits.is_lp_family(i)}
    )
    lp_rate = {name: _lp_seconds_per_layer(s, name) for name in lp_names}

    # Init cells: seconds per seed and layer, per (width, init), from one timed cell.
    per_seed_layer: dict[tuple[int, str], float] = {}
    init_s: dict[int, float] = defaultdict(float)
    for cell in cells:
        if collapse_inits.is_lp_family(cell.init):
            init_s[cell.width] += lp_rate[cell.init] * cell.count * cell.depth
            continue
        key = (cell.width, cell.init)
        if key not in per_seed_layer:
            depth = max(c.depth for c in cells if c.width == cell.width)
            probe = InitCell(cell.inputs, cell.width, depth, cell.init, 0, 200)
            t0 = time.process_time()
            run_init_cell(probe, s)
            per_seed_layer[key] = (time.process_time() - t0) / (200 * depth)
        init_s[cell.width] += per_seed_layer[key] * cell.count * cell.depth

    # Train groups: per-step time at a few depths per width, interpolated.
    train_s: dict[int, float] = defaultdict(float)
    lp_train_s: dict[int, float] = defaultdict(float)
    by_width = defaultdict(list)
    for g in groups:
        by_width[g.width].append(g)
    for width, gs in by_width.items():
        depths = sorted({g.depth for g in gs})
        probes = sorted({depths[0], depths[len(depths) // 2], depths[-1]})
        nets = max(sum(g.counts) for g in gs)
        times = [_step_seconds(width, d, nets, s) for d in probes]
        for g in gs:
            per_step = float(np.interp(g.depth, probes, times)) * sum(g.counts) / nets
            train_s[width] += per_step * s.steps
            for init, count in zip(g.inits, g.counts, strict=True):
                if init in lp_rate:
                    lp_train_s[width] += lp_rate[init] * count * g.depth
    lines = [
        f"plan: {len(cells)} init cells, {len(groups)} train groups ({sum(len(g.inits) for g in groups)} train cells) "
        f"pending in {s.results_dir} ({len(done)} records already done)",
        f"{'width':>6}{'init cells h':>14}{'train h':>10}{'LP in train h':>15}   (CPU hours)",
    ]
    widths = sorted(set(init_s) | set(train_s))
    for w in widths:
        lines.append(f"{w:>6}{init_s[w] / 3600:>14.2f}{train_s[w] / 3600:>10.2f}{lp_train_s[w] / 3600:>15.2f}")
    total = sum(init_s.values()) + sum(train_s.values()) + sum(lp_train_s.values())
    lines.append(
        f"total: {total / 3600:.2f} h of CPU time on {s.threads} thread(s) (wall time: that over the share of a core)"
    )
    if lp_rate:
        lines.append(
            "LP-family seconds per seed and hidden layer: "
            + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in lp_rate.items())
        )
    tasks_2d = [t for t in s.tasks if get_task(t).in_dim == 2]
    if tasks_2d:
        lines.append("(train steps are timed on 1-D inputs; 2-D tasks cost about the same per step)")
    return "\n".join(lines)
