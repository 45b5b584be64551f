"""Summaries of the study's records: one row per cell, with Wilson intervals.

Every function takes the records of ``runs.jsonl`` (plain dicts) and returns
plain dicts, so the report, the plots and the tests use them without training.
Records of one cell that cover the same seeds (a rerun with more seeds per
chunk) are merged by keeping, per seed chunk start, the record with the most
seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy import stats as sps

from experiments.collapse.inits import parse_init
from experiments.collapse.measure import decode_counts, unbits
from experiments.collapse.tasks import TASKS
from experiments.collapse.theory import born_dead_bound, wilson
from experiments.stats import describe

INIT_ORDER = ("he", "default", "orthogonal", "lsuv", "rai", "lp", "lp_target", "quantile_bias")


def init_sort_key(name: str) -> tuple:
    base, value = parse_init(name)
    return (INIT_ORDER.index(base), value or 0.0)


def _where(record: dict) -> str:
    return record["task"] if record["phase"] == "train" else record["inputs"]


def cells(records: list[dict], phase: str) -> dict[tuple, list[dict]]:
    """Records of ``phase`` grouped by (inputs or task, width, depth, init), one per seed chunk."""
    best: dict[tuple, dict] = {}
    for r in records:
        if r["phase"] != phase:
            continue
        k = (_where(r), r["width"], r["depth"], r["init"], r["seed_start"])
        if k not in best or r["n_seeds"] > best[k]["n_seeds"]:
            best[k] = r
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for (where, width, depth, init, _), r in sorted(best.items(), key=lambda kv: kv[0][4]):
        grouped[(where, width, depth, init)].append(r)
    return dict(grouped)


def _cat_bits(rs: list[dict], field: str) -> np.ndarray:
    return np.concatenate([unbits(r[field]) for r in rs]) if rs else np.zeros(0, bool)


def _cat(rs: list[dict], field: str) -> np.ndarray:
    return np.concatenate([np.asarray(r[field], dtype=float) for r in rs])


def rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": int(k), "n": int(n), "rate": k / n if n else math.nan, "ci_low": lo, "ci_high": hi}


def born_dead_rows(records: list[dict]) -> list[dict]:
    """One row per init cell: born-dead rate with its Wilson 95% CI, the
    symmetric-init bound, and (LP family) what the LP did to the He draws."""
    rows = []
    for (inputs, width, depth, init), rs in cells(records, "init").items():
        dead = _cat_bits(rs, "born_dead")
        hist = np.sum([np.asarray(r["dead_histogram"]) for r in rs], axis=0)  # (L, width + 1)
        row = {
            "inputs": inputs,
            "width": width,
            "depth": depth,
            "init": init,
            **rate(int(dead.sum()), dead.size),
            "bound": born_dead_bound([width] * depth),
            "mean_dead_units": ((hist * np.arange(width + 1)).sum(1) / hist.sum(1)).tolist(),
            "dead_layer_fraction": (hist[:, width] / hist.sum(1)).tolist(),
        }
        if "base_born_dead" in rs[0]:
            base = _cat_bits(rs, "base_born_dead")
            reasons: dict[str, int] = defaultdict(int)
            for r in rs:
                for reason, count in r.get("lp_left_dead_reasons", {}).items():
                    reasons[reason] += count
            row.update(
                base_born_dead=int(base.sum()),
                revived=int((base & ~dead).sum()),
                left_dead=int((base & dead).sum()),
                newly_dead=int((~base & dead).sum()),
                reasons=dict(sorted(reasons.items())),
                lp_seconds=float(sum(r.get("lp_seconds", 0.0) for r in rs)),
                left_dead_details=[f for r in rs for f in r.get("lp_left_dead", [])],
                lp_errors=int(sum(r.get("lp_errors", 0) for r in rs)),
                lp_error_details=[e for r in rs for e in r.get("lp_error_details", [])],
            )
        rows.append(row)
    return sorted(rows, key=lambda r: (r["inputs"], r["width"], r["depth"], init_sort_key(r["init"])))


def collapse_rows(records: list[dict]) -> list[dict]:
    """One row per train cell: collapse rate (Wilson CI), born dead at init, died
    during training, dead units per layer, and the final MSEs."""
    rows = []
    for (task, width, depth, init), rs in cells(records, "train").items():
        born = _cat_bits(rs, "born_dead")
        collapsed = _cat_bits(rs, "collapsed")
        test_mse, train_mse = _cat(rs, "test_mse"), _cat(rs, "train_mse")
        dead_init = decode_counts([s for r in rs for s in r["dead_init"]])
        dead_after = decode_counts([s for r in rs for s in r["dead_after"]])
        alive = ~collapsed
        row = {
            "task": task,
            "width": width,
            "depth": depth,
            "init": init,
            **rate(int(collapsed.sum()), collapsed.size),
            "born_dead": int(born.sum()),
            "died_in_training": int((collapsed & ~born).sum()),
            "collapsed_given_alive": rate(int((collapsed & ~born).sum()), int((~born).sum())),
            "target_var": rs[0]["target_var"],
            "test_mse": describe(test_mse),
            "train_mse": describe(train_mse),
            "test_mse_median": float(np.median(test_mse)),
            "test_mse_median_not_collapsed": float(np.median(test_mse[alive])) if alive.any() else math.nan,
            "mean_dead_units_init": dead_init.mean(0).tolist(),
            "mean_dead_units_after": dead_after.mean(0).tolist(),
            "seeds": collapsed.size,
        }
        rows.append(row)
    return sorted(rows, key=lambda r: (list(TASKS).index(r["task"]), r["width"], r["depth"], init_sort_key(r["init"])))


def fisher_p(a: dict, b: dict) -> float:
    """Two-sided Fisher exact test of equal rates for two ``rate`` dicts."""
    if not a["n"] or not b["n"]:
        return math.nan
    table = [[a["k"], a["n"] - a["k"]], [b["k"], b["n"] - b["k"]]]
    return float(sps.fisher_exact(table).pvalue)


def mse_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value of two MSE samples (nan if either is too small)."""
    if len(a) < 3 or len(b) < 3:
        return math.nan
    return float(sps.mannwhitneyu(a, b).pvalue)


def train_mse_values(records: list[dict], task: str, width: int, depth: int, init: str) -> np.ndarray:
    rs = cells(records, "train").get((task, width, depth, init), [])
    return _cat(rs, "test_mse") if rs else np.zeros(0)


def lsuv_matches_orthogonal(records: list[dict]) -> tuple[int, int]:
    """(cells where LSUV's per-seed born-dead flags equal orthogonal's, cells compared):
    LSUV only rescales orthogonal draws by positive factors, which keeps every sign."""
    grouped = cells(records, "init")
    same = total = 0
    for (inputs, width, depth, init), rs in grouped.items():
        if init != "lsuv" or (inputs, width, depth, "orthogonal") not in grouped:
            continue
        other = grouped[(inputs, width, depth, "orthogonal")]
        a, b = _cat_bits(rs, "born_dead"), _cat_bits(other, "born_dead")
        m = min(a.size, b.size)
        total += 1
        same += bool(np.array_equal(a[:m], b[:m]))
    return same, total
