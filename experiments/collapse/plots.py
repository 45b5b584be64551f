"""The study's figures, drawn from summary rows only (matplotlib, Agg)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.collapse.summary import init_sort_key
from experiments.collapse.tasks import TASKS
from experiments.collapse.theory import born_dead_bound
from lpinit.files import write_atomic

# Fixed colours, so an init looks the same in every figure.
_BASE_COLORS = {
    "he": "tab:blue",
    "default": "tab:gray",
    "orthogonal": "tab:olive",
    "lsuv": "tab:cyan",
    "rai": "tab:orange",
}
_LP_CMAPS = {"lp": "Greens", "lp_target": "Purples", "quantile_bias": "Reds"}


def _colors(inits) -> dict[str, tuple]:
    out: dict = {}
    families: dict[str, list[str]] = defaultdict(list)
    for init in sorted(inits, key=init_sort_key):
        base = init.partition("@")[0]
        if base in _BASE_COLORS:
            out[init] = _BASE_COLORS[base]
        else:
            families[base].append(init)
    for base, names in families.items():
        cmap = plt.get_cmap(_LP_CMAPS.get(base, "Greys"))
        for i, name in enumerate(names):
            out[name] = cmap(0.5 + 0.45 * (i + 1) / len(names))
    return out


def _grid(n: int, sharey: bool = True):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False, sharey=sharey)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _rate_lines(ax, rows, x_key, colors, label_n=True):
    by_init = defaultdict(list)
    for r in rows:
        by_init[r["init"]].append(r)
    for init in sorted(by_init, key=init_sort_key):
        rs = sorted(by_init[init], key=lambda r: r[x_key])
        x = [r[x_key] for r in rs]
        n = min(r["n"] for r in rs)
        style = "x--" if init == "lsuv" else "o-"  # LSUV keeps orthogonal's signs: their lines coincide at init
        label = f"{init} (n≥{n})" if label_n else init
        ax.plot(x, [r["rate"] for r in rs], style, ms=3, color=colors[init], label=label)
        ax.fill_between(x, [r["ci_low"] for r in rs], [r["ci_high"] for r in rs], color=colors[init], alpha=0.18)


def born_dead_vs_depth(rows: list[dict], inputs: str, path: Path) -> Path:
    """Born-dead rate against depth, one panel per width, every init, with the
    symmetric-init bound 1 - (1 - 2^-N)^L dashed."""
    rows = [r for r in rows if r["inputs"] == inputs]
    widths = sorted({r["width"] for r in rows})
    colors = _colors({r["init"] for r in rows})
    fig, axes = _grid(len(widths), sharey=False)
    for ax, width in zip(axes, widths, strict=True):
        sub = [r for r in rows if r["width"] == width]
        _rate_lines(ax, sub, "depth", colors)
        depths = np.arange(min(r["depth"] for r in sub), max(r["depth"] for r in sub) + 1)
        bound = [born_dead_bound([width] * d) for d in depths]
        ax.plot(depths, bound, "k--", lw=1.2, label="bound (symmetric)")
        top = min(1.0, max(max(bound), max(r["ci_high"] for r in sub)))  # wide nets: zoom in on small rates
        ax.set(title=f"width {width}, inputs {inputs}", xlabel="hidden layers L", ylabel="born dead")
        ax.set_ylim(-0.02 * top, 1.05 * top)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    return _save(fig, path)


def collapse_vs_depth(rows: list[dict], task: str, path: Path) -> Path:
    """Collapse rate after training against depth, one panel per trained width."""
    rows = [r for r in rows if r["task"] == task]
    widths = sorted({r["width"] for r in rows})
    colors = _colors({r["init"] for r in rows})
    fig, axes = _grid(len(widths))
    for ax, width in zip(axes, widths, strict=True):
        _rate_lines(ax, [r for r in rows if r["width"] == width], "depth", colors)
        ax.set(title=f"{task}, width {width}", xlabel="hidden layers L", ylabel="collapsed after training")
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    return _save(fig, path)


def mse_at(rows: list[dict], mse_values: dict, width: int, depth: int, path: Path) -> Path:
    """Final test MSE of every seed (log scale) per init, one panel per task, at (width, depth);
    the dotted line is the target's variance (the MSE of the best constant)."""
    tasks = [t for t in dict.fromkeys(r["task"] for r in rows) if (t, width, depth) in mse_values]
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        by_init = mse_values[(task, width, depth)]
        inits = sorted(by_init, key=init_sort_key)
        colors = _colors(inits)
        rng = np.random.default_rng(0)
        for i, init in enumerate(inits):
            v = np.asarray(by_init[init])
            ax.scatter(i + rng.uniform(-0.3, 0.3, v.size), v, s=4, alpha=0.5, color=colors[init])
            ax.plot([i - 0.35, i + 0.35], [np.median(v)] * 2, "k-", lw=1.5)
        var = next(r["target_var"] for r in rows if r["task"] == task)
        ax.axhline(var, color="k", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(inits)), inits, rotation=45, ha="right", fontsize=7)
        ax.set(title=f"{task}, width {width}, L={depth}", ylabel="final test MSE")
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def dead_units_per_layer(rows: list[dict], task: str, width: int, depth: int, path: Path) -> Path:
    """Mean dead units per hidden layer at init (dashed) and after training (solid), per init."""
    sub = [r for r in rows if (r["task"], r["width"], r["depth"]) == (task, width, depth)]
    colors = _colors({r["init"] for r in sub})
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in sorted(sub, key=lambda r: init_sort_key(r["init"])):
        layers = np.arange(1, depth + 1)
        ax.plot(layers, r["mean_dead_units_init"], "--", color=colors[r["init"]], lw=1)
        ax.plot(layers, r["mean_dead_units_after"], "-", color=colors[r["init"]], lw=1.5, label=r["init"])
    ax.set(
        title=f"{task}, width {width}, L={depth}: dead units (dashed: init, solid: after training)",
        xlabel="hidden layer",
        ylabel=f"mean dead units (of {width})",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def rates_at(bd_rows: list[dict], cl_rows: list[dict], width: int, depth: int, path: Path) -> Path:
    """Born dead at init (squares) and collapsed after training (dots) per init,
    with Wilson 95% intervals, one panel per trained task at (width, depth); the
    dashed line is the symmetric-init bound 1 - (1 - 2^-N)^L."""
    cl = [r for r in cl_rows if (r["width"], r["depth"]) == (width, depth)]
    tasks = list(dict.fromkeys(r["task"] for r in cl))
    bd = {(r["inputs"], r["init"]): r for r in bd_rows if (r["width"], r["depth"]) == (width, depth)}
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        rows = sorted((r for r in cl if r["task"] == task), key=lambda r: init_sort_key(r["init"]))
        colors = _colors([r["init"] for r in rows])
        for i, r in enumerate(rows):
            b = bd.get((TASKS[task].input_set, r["init"]))
            for offset, row, marker in ((-0.15, b, "s"), (0.15, r, "o")):
                if row is None:
                    continue
                # clipped at 0: Wilson's bound at a rate of 0 or 1 can sit a rounding error past it
                err = [[max(0.0, row["rate"] - row["ci_low"])], [max(0.0, row["ci_high"] - row["rate"])]]
                ax.errorbar(i + offset, row["rate"], yerr=err, fmt=marker, ms=4, color=colors[r["init"]], capsize=2)
        ax.axhline(born_dead_bound([width] * depth), color="k", ls="--", lw=1)
        ax.set_xticks(range(len(rows)), [r["init"] for r in rows], rotation=45, ha="right", fontsize=7)
        ax.set(title=f"{task}, width {width}, L={depth}", ylabel="rate (square: born dead, dot: collapsed)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _legend_outside(fig, axes) -> None:
    """One legend for all panels, right of them, where it hides no line."""
    labels: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labels.setdefault(label, handle)
    fig.legend(labels.values(), labels.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format=Path(path).suffix[1:], dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return path
