"""Plan and run the study's cells, resumably.

Two kinds of work, each written as records (lines) of ``runs.jsonl`` through
``experiments.ledger.append_line`` (one atomic line per record):

- an **init cell** (inputs, width, depth, init, seed chunk): draw the networks,
  measure dead units and born dead on the training inputs; no training. The
  1-D tasks share their inputs, so they share these cells;
- a **train cell** (task, width, depth, init, seed chunk): the same networks
  measured at init, trained, measured again. All random inits of a (task,
  width, depth, seed chunk) are trained together in one batched model, and all
  LP-family inits in another, then written as one record per init.

The random inits' cells (init cells, then train groups) run before the LP
family's, which cost HiGHS time per seed. Seed chunks start at ``first_seed + k * chunk`` (chunk = 1000 seeds for init
cells, 200 for train cells), so adding seeds later only adds chunks. A rerun
skips every record already in runs.jsonl; a run killed mid-way loses only the
group in progress.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from experiments.collapse import inits as collapse_inits
from experiments.collapse.measure import (
    bits,
    born_dead,
    dead_units,
    encode_counts,
    layer_histogram,
    mse,
    output_spread,
    rounded,
)
from experiments.collapse.settings import CollapseSettings, lp_depths, seeds_for
from experiments.collapse.stacked import StackedMLP, mlp_widths
from experiments.collapse.tasks import TASKS, get_task, input_set_dims, sample_inputs, task_data
from experiments.collapse.train import train_stacked
from experiments.ledger import append_line, read_lines

INIT_CHUNK = 1000
TRAIN_CHUNK = 200


@dataclass(frozen=True)
class InitCell:
    inputs: str  # "x1d" | "x2d"
    width: int
    depth: int
    init: str
    start: int
    count: int

    @property
    def key(self) -> str:
        return f"init/{self.inputs}/N{self.width}/L{self.depth}/{self.init}/s{self.start}+{self.count}"


@dataclass(frozen=True)
class TrainGroup:
    """The train cells of several inits that share a task, shape and seed chunk."""

    task: str
    width: int
    depth: int
    inits: tuple[str, ...]
    counts: tuple[int, ...]  # seeds per init (LP-family inits may have fewer)
    start: int

    def key(self, init: str, count: int) -> str:
        return f"train/{self.task}/N{self.width}/L{self.depth}/{init}/s{self.start}+{count}"


def _chunks(first: int, total: int, size: int) -> Iterator[tuple[int, int]]:
    for offset in range(0, total, size):
        yield first + offset, min(size, total - offset)


def _runs_here(s: CollapseSettings, init: str, depth: int) -> bool:
    return not collapse_inits.is_lp_family(init) or depth in lp_depths(s)


def plan(s: CollapseSettings, done: set[str] | None = None) -> tuple[list[InitCell], list[TrainGroup]]:
    """Every cell of the settings not in ``done`` (a set of record keys)."""
    done = done or set()
    input_sets = sorted({get_task(t).input_set for t in s.tasks})
    cells = [
        InitCell(inputs, width, depth, init, start, count)
        for inputs in input_sets
        for width in s.widths
        for depth in s.depths
        for init in s.inits
        if _runs_here(s, init, depth)
        for start, count in _chunks(s.first_seed, seeds_for(s, init, "init"), INIT_CHUNK)
    ]
    groups = []
    for task in s.tasks:
        for width in s.train_widths:
            for depth in s.depths if width in s.dense_train_widths else s.train_depths:
                by_start: dict[tuple[bool, int], list[tuple[str, int]]] = {}
                for init in s.inits:
                    if not _runs_here(s, init, depth):
                        continue
                    lp = collapse_inits.is_lp_family(init)
                    for start, count in _chunks(s.first_seed, seeds_for(s, init, "train"), TRAIN_CHUNK):
                        if f"train/{task}/N{width}/L{depth}/{init}/s{start}+{count}" not in done:
                            by_start.setdefault((lp, start), []).append((init, count))
                for (_, start), pending in sorted(by_start.items()):
                    names, counts = zip(*pending, strict=True)
                    groups.append(TrainGroup(task, width, depth, tuple(names), tuple(counts), start))
    # The random inits before the LP family (which costs HiGHS time per seed), and narrow and shallow
    # first: the cheap cells, the paper's headline among them, finish early. Seeds never mix, so how
    # networks are grouped changes no result.
    cells.sort(key=lambda c: collapse_inits.is_lp_family(c.init))
    groups.sort(
        key=lambda g: (
            collapse_inits.is_lp_family(g.inits[0]),
            g.width,
            g.depth,
            list(TASKS).index(g.task),
            g.start,
        )
    )
    return [c for c in cells if c.key not in done], groups


def _base_record(init: str, width: int, depth: int, start: int, count: int) -> dict:
    return {"init": init, "width": width, "depth": depth, "seed_start": start, "n_seeds": count}


def run_init_cell(cell: InitCell, s: CollapseSettings) -> dict:
    """Draw and measure the networks of one init cell (no training)."""
    t0 = time.perf_counter()
    in_dim, out_dim = input_set_dims(cell.inputs)
    x = sample_inputs(in_dim, s.n_train, s.data_seed)
    widths = mlp_widths(in_dim, cell.width, cell.depth, out_dim)
    seeds = list(range(cell.start, cell.start + cell.count))
    model, info = collapse_inits.initialize(cell.init, widths, seeds, x, lp_radius=s.lp_radius, lp_margin=s.lp_margin)
    dead = dead_units(model, x)
    dead_layer = dead == cell.width
    first_dead = torch.where(dead_layer.any(1), dead_layer.float().argmax(1) + 1, torch.zeros_like(dead[:, 0]))
    record = {
        "key": cell.key,
        "phase": "init",
        "inputs": cell.inputs,
        **_base_record(cell.init, cell.width, cell.depth, cell.start, cell.count),
        "born_dead": bits(born_dead(dead, cell.width)),
        "first_dead_layer": "".join(encode_counts(first_dead[:, None])),
        "dead_histogram": layer_histogram(dead, cell.width),
        **info,
    }
    if collapse_inits.is_lp_family(cell.init):
        base = collapse_inits.draw("he", widths, seeds)
        record["base_born_dead"] = bits(born_dead(dead_units(base, x), cell.width))
    record["wall_time_s"] = round(time.perf_counter() - t0, 3)
    return record


def run_train_group(group: TrainGroup, s: CollapseSettings) -> list[dict]:
    """Initialize, measure, train and measure again every network of a group; one record per init."""
    t0 = time.perf_counter()
    data = task_data(group.task, s.n_train, s.n_test, s.data_seed)
    task = data.task
    widths = mlp_widths(task.in_dim, group.width, group.depth, task.out_dim)
    parts, infos = [], []
    for init, count in zip(group.inits, group.counts, strict=True):
        seeds = list(range(group.start, group.start + count))
        model, info = collapse_inits.initialize(
            init, widths, seeds, data.train_x, lp_radius=s.lp_radius, lp_margin=s.lp_margin
        )
        parts.append(model)
        infos.append(info)
    model = StackedMLP.cat(parts)
    dead_init = dead_units(model, data.train_x)
    mse_init = mse(model, data.train_x, data.train_y)
    checkpoints = sorted({0, s.steps // 10, s.steps // 2, s.steps})
    trained_parts, curves = [], []
    for lo in range(0, model.n_seeds, s.chunk_seeds):
        idx = list(range(lo, min(lo + s.chunk_seeds, model.n_seeds)))
        trained, history = train_stacked(
            model.select(idx), data.train_x, data.train_y, steps=s.steps, lr=s.lr, checkpoints=checkpoints
        )
        trained_parts.append(trained)
        curves.append(history)
    trained = StackedMLP.cat(trained_parts)
    curve = {step: torch.cat([h[step] for h in curves]) for step in checkpoints}
    dead_after = dead_units(trained, data.train_x)
    dead_layer_after = born_dead(dead_after, group.width)
    spread = output_spread(trained, data.train_x, data.train_y)
    collapsed = dead_layer_after | (spread <= s.collapse_tol)
    train_mse, test_mse = mse(trained, data.train_x, data.train_y), mse(trained, data.test_x, data.test_y)
    seconds = time.perf_counter() - t0
    records, lo = [], 0
    for init, count, info in zip(group.inits, group.counts, infos, strict=True):
        sl = slice(lo, lo + count)
        lo += count
        records.append(
            {
                "key": group.key(init, count),
                "phase": "train",
                "task": group.task,
                "inputs": task.input_set,
                **_base_record(init, group.width, group.depth, group.start, count),
                "born_dead": bits(born_dead(dead_init[sl], group.width)),
                "collapsed": bits(collapsed[sl]),
                "dead_layer_after": bits(dead_layer_after[sl]),
                "spread_after": rounded(spread[sl]),
                "dead_init": encode_counts(dead_init[sl]),
                "dead_after": encode_counts(dead_after[sl]),
                "train_mse_init": rounded(mse_init[sl]),
                "train_mse": rounded(train_mse[sl]),
                "test_mse": rounded(test_mse[sl]),
                "train_mse_curve": {str(step): rounded(v[sl]) for step, v in curve.items()},
                "target_var": rounded(data.train_y.var(dim=0, correction=0).mean()[None])[0],
                **info,
                "wall_time_s": round(seconds * count / model.n_seeds, 3),
            }
        )
    return records


def execute(s: CollapseSettings, progress: bool = True) -> int:
    """Run every pending cell of ``s``; return how many records were written."""
    from tqdm import tqdm

    torch.set_num_threads(s.threads)
    path = s.results_dir / "runs.jsonl"
    done = {r["key"] for r in read_lines(path)}
    cells, groups = plan(s, done)
    written = 0
    bar = tqdm(total=len(cells) + len(groups), desc="cells", unit="cell", disable=not progress)
    try:
        for lp in (False, True):  # every cell of the random inits first: they cost no LPs
            for cell in (c for c in cells if collapse_inits.is_lp_family(c.init) == lp):
                bar.set_postfix_str(cell.key)
                append_line(path, run_init_cell(cell, s))
                written += 1
                bar.update()
            for group in (g for g in groups if collapse_inits.is_lp_family(g.inits[0]) == lp):
                bar.set_postfix_str(f"train/{group.task}/N{group.width}/L{group.depth} x{len(group.inits)} inits")
                for record in run_train_group(group, s):
                    append_line(path, record)
                    written += 1
                bar.update()
    finally:
        bar.close()
    return written
