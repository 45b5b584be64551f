"""The dose-response analysis: final accuracy as a function of the initial
ReLU-zero fraction, with the scale held fixed (``--preset dose``).

Each run of the dose preset starts from a base (``default``, ``kaiming_normal``)
and sets every unit's activity to a target q, either by the LP
(``+lp(target=q, rescale=unit)``) or by a bias only (``+quantile_bias(q, rescale=unit)``);
``+bias_shift(target=q)`` is the LP's one-constant-per-layer control. Runs with
the same seed share the random start, the LP batch and the data order, so
methods are compared pairwise. Everything here works on run records only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from experiments.init_names import parse_init_name
from experiments.stats import describe, init_zero_source, paired_test

METHODS = ("lp", "quantile_bias", "bias_shift")
"""Dose methods, by the kind of the init's last step."""


@dataclass(frozen=True)
class DoseRun:
    """What the dose analysis needs of one run record."""

    arch: str
    lr: float
    seed: int
    init: str
    base: str
    method: str  # "bare", a METHODS entry, or "other" (e.g. an LP without a target)
    q: float | None  # the activity target (None for bare and other)
    zeros: float  # ReLU-zero fraction at init on held-out images
    accuracy: float  # final test accuracy, %
    loss: float  # final test loss
    rms: dict[str, float]  # pre-activation RMS per ReLU-fed layer at init
    dead_logit_init: bool | None  # a logit unit zero on every held-out image (ReLU on the logits only)
    dead_logit_trained: bool | None


def dose_runs(records: list[dict]) -> list[DoseRun]:
    """Every record as a ``DoseRun``."""
    runs = []
    for r in records:
        spec = parse_init_name(r["init"])
        last = spec.last
        dose_key = "q" if last is not None and last.kind == "quantile_bias" else "target"
        if last is None:
            method, q = "bare", None
        elif last.kind in METHODS and last.get(dose_key) is not None:
            method, q = last.kind, last.number(dose_key, math.nan)
        else:
            method, q = "other", None
        where = init_zero_source(r)
        runs.append(
            DoseRun(
                arch=r["arch"],
                lr=r["lr"],
                seed=r["seed"],
                init=r["init"],
                base=spec.base,
                method=method,
                q=q,
                zeros=r["at_init"][where]["zero_fraction"],
                accuracy=r["final"]["test_accuracy"],
                loss=r["final"]["test_loss"],
                rms={k: v["rms"] for k, v in r["at_init"].get("preactivations", {}).items()},
                dead_logit_init=_dead_logit(r["at_init"][where]["layers"], r["arch"]),
                dead_logit_trained=_dead_logit(r["final"].get("layers"), r["arch"]),
            )
        )
    return runs


def _dead_logit(layers: dict | None, arch: str) -> bool | None:
    """Whether the logits' ReLU (the seed architecture's last site) has a unit dead on every image."""
    if arch != "seed" or not layers:
        return None
    last = list(layers)[-1]
    return layers[last]["dead_units"] > 0


def is_dose_folder(records: list[dict]) -> bool:
    """Whether the records hold dose runs (an activity-target method at two or more doses)."""
    runs = dose_runs(records)
    return len({run.q for run in runs if run.method in METHODS}) >= 2


@dataclass(frozen=True)
class DosePoint:
    """One (arch, lr, base, method, q): the measured zero fraction and the outcomes over seeds."""

    arch: str
    lr: float
    base: str
    method: str
    q: float | None
    zeros: dict  # describe() of the initial zero fraction
    accuracy: dict
    loss: dict


def dose_points(runs: list[DoseRun]) -> list[DosePoint]:
    """Mean and 95% CI over seeds per (arch, lr, base, method, q), bare bases included."""
    groups: dict[tuple, list[DoseRun]] = defaultdict(list)
    for run in runs:
        if run.method != "other":
            groups[(run.arch, run.lr, run.base, run.method, run.q)].append(run)
    points = []
    for (arch, lr, base, method, q), rs in sorted(groups.items(), key=lambda kv: _sort_key(kv[0])):
        points.append(
            DosePoint(
                arch,
                lr,
                base,
                method,
                q,
                describe([x.zeros for x in rs]),
                describe([x.accuracy for x in rs]),
                describe([x.loss for x in rs]),
            )
        )
    return points


def _sort_key(key: tuple) -> tuple:
    arch, lr, base, method, q = key
    return arch, lr, base, method, -1.0 if q is None else q


def _by_seed(runs: list[DoseRun]) -> dict[tuple, DoseRun]:
    return {(r.arch, r.lr, r.init, r.seed): r for r in runs}


def paired_comparisons(runs: list[DoseRun], metric: str = "accuracy") -> list[dict]:
    """Paired differences over seeds: the LP against ``quantile_bias`` at the
    same q and base (does choosing which pre-activations are positive
    matter?), and every dose against its bare base (does the dose help or hurt?)."""
    index = _by_seed(runs)
    cells: dict[tuple, list[DoseRun]] = defaultdict(list)
    for run in runs:
        cells[(run.arch, run.lr, run.init)].append(run)
    inits = {(run.arch, run.lr, run.base, run.method, run.q): run.init for run in runs}
    out = []
    for (arch, lr, base, method, q), init in sorted(inits.items(), key=lambda kv: _sort_key(kv[0])):
        if method not in METHODS:
            continue
        against = [("bare", inits.get((arch, lr, base, "bare", None)))]
        if method == "lp":
            against.insert(0, ("quantile_bias", inits.get((arch, lr, base, "quantile_bias", q))))
        for kind, other in against:
            if other is None:
                continue
            diffs = [
                getattr(run, metric) - getattr(index[(arch, lr, other, run.seed)], metric)
                for run in cells[(arch, lr, init)]
                if (arch, lr, other, run.seed) in index
            ]
            row = {"arch": arch, "lr": lr, "base": base, "method": method, "q": q, "a": init, "b": other}
            out.append({**row, "against": kind, "metric": metric, **paired_test(diffs)})
    return out


@dataclass(frozen=True)
class DoseFit:
    """A quadratic fit of accuracy against the initial zero fraction, with a
    bootstrap over seeds, for one (arch, lr, base, method) and its bare base."""

    arch: str
    lr: float
    base: str
    method: str
    n_runs: int
    coefficients: tuple[float, float, float]  # a x^2 + b x + c
    grid: np.ndarray  # zero fractions spanned by the runs
    band_low: np.ndarray  # 95% bootstrap band of the fitted accuracy on the grid
    band_high: np.ndarray
    best_zeros: float  # the zero fraction of the fitted maximum, on the grid
    best_low: float  # its 95% bootstrap interval
    best_high: float
    best_accuracy: float

    def fitted(self, x: np.ndarray) -> np.ndarray:
        a, b, c = self.coefficients
        return a * x**2 + b * x + c


def fit_dose_response(runs: list[DoseRun], n_boot: int = 1000, seed: int = 0) -> list[DoseFit]:
    """One quadratic fit per (arch, lr, base, method), over that method's doses
    and the bare base (the same scale, zeros near one half); the bootstrap
    resamples seeds (all of a seed's runs together, as they are paired)."""
    groups: dict[tuple, list[DoseRun]] = defaultdict(list)
    for run in runs:
        if run.method in ("lp", "quantile_bias"):
            groups[(run.arch, run.lr, run.base, run.method)].append(run)
    fits = []
    rng = np.random.default_rng(seed)
    for (arch, lr, base, method), rs in sorted(groups.items()):
        rs = rs + [r for r in runs if (r.arch, r.lr, r.base, r.method) == (arch, lr, base, "bare")]
        if len({r.q for r in rs}) < 3:
            continue  # a quadratic needs three doses
        x = np.array([r.zeros for r in rs])
        y = np.array([r.accuracy for r in rs])
        seeds = np.array([r.seed for r in rs])
        grid = np.linspace(x.min(), x.max(), 101)
        coefficients = np.polyfit(x, y, 2)
        unique = np.unique(seeds)
        curves, argmaxes = [], []
        for _ in range(n_boot):
            chosen = rng.choice(unique, size=unique.size, replace=True)
            rows = np.concatenate([np.flatnonzero(seeds == s) for s in chosen])
            if np.ptp(x[rows]) == 0:
                continue
            curve = np.polyval(np.polyfit(x[rows], y[rows], 2), grid)
            curves.append(curve)
            argmaxes.append(grid[curve.argmax()])
        band = np.percentile(np.array(curves), [2.5, 97.5], axis=0)
        fitted = np.polyval(coefficients, grid)
        fits.append(
            DoseFit(
                arch,
                lr,
                base,
                method,
                len(rs),
                (float(coefficients[0]), float(coefficients[1]), float(coefficients[2])),
                grid,
                band[0],
                band[1],
                float(grid[fitted.argmax()]),
                float(np.percentile(argmaxes, 2.5)),
                float(np.percentile(argmaxes, 97.5)),
                float(fitted.max()),
            )
        )
    return fits


def dead_logits(runs: list[DoseRun]) -> list[dict]:
    """Seed architecture: per (lr, init), the runs with a dead logit unit at init and after training."""
    cells: dict[tuple, list[DoseRun]] = defaultdict(list)
    for run in runs:
        if run.dead_logit_init is not None:
            cells[(run.lr, run.init)].append(run)
    return [
        {
            "lr": lr,
            "init": init,
            "n": len(rs),
            "dead_at_init": sum(bool(r.dead_logit_init) for r in rs),
            "dead_after_training": sum(bool(r.dead_logit_trained) for r in rs),
        }
        for (lr, init), rs in sorted(cells.items())
    ]


def scale_held(runs: list[DoseRun]) -> list[dict]:
    """Per (arch, lr, init): each layer's mean pre-activation RMS at init relative
    to its bare base's (1 = the scale was held)."""
    base_rms: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    init_rms: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        target = base_rms[(run.arch, run.lr, run.base)] if run.method == "bare" else None
        for layer, value in run.rms.items():
            init_rms[(run.arch, run.lr, run.init, run.base)][layer].append(value)
            if target is not None:
                target[layer].append(value)
    out = []
    for (arch, lr, init, base), layers in sorted(init_rms.items()):
        reference = base_rms.get((arch, lr, base))
        if not reference:
            continue
        ratios = {layer: float(np.mean(v) / np.mean(reference[layer])) for layer, v in layers.items()}
        out.append({"arch": arch, "lr": lr, "init": init, "ratios": ratios})
    return out
