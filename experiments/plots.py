"""The report's figures, drawn from run records only (matplotlib, Agg)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.stats import flat_metrics, init_zero_source, stability_groups
from lpinit.files import write_atomic


def _by(records, *keys):
    groups = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def _colors(inits):
    cmap = plt.get_cmap("tab20")
    return {init: cmap(i % 20) for i, init in enumerate(sorted(inits))}


def _panels(archs):
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4.5), squeeze=False)
    return fig, dict(zip(archs, axes[0], strict=True))


def _cells(records) -> list[tuple[str, float]]:
    """The (arch, lr) panels of a figure: learning rates are never mixed in one picture."""
    return sorted({(r["arch"], r["lr"]) for r in records})


def _cell_panels(cells):
    """A grid of panels: a row per arch, a column per learning rate."""
    archs, lrs = sorted({a for a, _ in cells}), sorted({lr for _, lr in cells})
    fig, grid = plt.subplots(len(archs), len(lrs), figsize=(5.5 * len(lrs) + 2.5, 4.2 * len(archs)), squeeze=False)
    for i, arch in enumerate(archs):
        for j, lr in enumerate(lrs):
            if (arch, lr) not in cells:
                grid[i][j].set_visible(False)
    return fig, {(a, lr): grid[archs.index(a)][lrs.index(lr)] for a, lr in cells}


def _legend_outside(axes) -> None:
    """One legend, right of the top-right panel (panels keyed (arch, lr)), so that it covers no data."""
    handles: dict[str, object] = {}
    for ax in axes.values():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    top_row = min(arch for arch, _ in axes)
    top_right = axes[(top_row, max(lr for arch, lr in axes if arch == top_row))]
    top_right.legend(list(handles.values()), list(handles), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def scatter_zeros_vs_accuracy(records, path: Path) -> Path:
    """Initial zero fraction vs final test accuracy, one colour per init, a panel per (arch, lr)."""
    colors = _colors({r["init"] for r in records})
    fig, axes = _cell_panels(_cells(records))
    for (arch, lr, init), rs in _by(records, "arch", "lr", "init").items():
        m = [flat_metrics(r) for r in rs]
        axes[(arch, lr)].scatter(
            [v["init_zero_fraction"] for v in m],
            [v["final_test_accuracy"] for v in m],
            color=colors[init],
            label=init,
            s=22,
            alpha=0.85,
        )
    sources = "/".join(sorted({init_zero_source(r) for r in records}))
    for (arch, lr), ax in axes.items():
        ax.set(
            title=f"arch={arch}, lr={lr:g}",
            xlabel=f"ReLU-zero fraction at init ({sources} images, fraction of unit x sample)",
            ylabel="final test accuracy (%)",
        )
        ax.grid(alpha=0.3)
    _legend_outside(axes)
    return _save(fig, path)


def learning_curves(records, path: Path) -> Path:
    """Test accuracy per epoch, mean over seeds with a min-max band, per init."""
    return _per_epoch(records, path, "test_accuracy", "test accuracy (%)")


def zeros_during_training(records, path: Path) -> Path:
    """Test-set ReLU-zero fraction per epoch (epoch 0 = init), mean and band, per init."""
    return _per_epoch(records, path, "zero_fraction", "ReLU-zero fraction (test set, fraction of unit x sample)")


def _per_epoch(records, path, key, ylabel):
    colors = _colors({r["init"] for r in records})
    fig, axes = _cell_panels(_cells(records))
    for (arch, lr, init), rs in _by(records, "arch", "lr", "init").items():
        curves = np.array([[h[key] for h in r["history"]] for r in rs], dtype=float)
        epochs = np.arange(curves.shape[1])
        mean = curves.mean(0)
        axes[(arch, lr)].plot(epochs, mean, color=colors[init], label=init)
        axes[(arch, lr)].fill_between(epochs, curves.min(0), curves.max(0), color=colors[init], alpha=0.15)
    for (arch, lr), ax in axes.items():
        n = {len(rs) for (a, l, _), rs in _by(records, "arch", "lr", "init").items() if (a, l) == (arch, lr)}
        seeds = f"{min(n)}" if len(n) == 1 else f"{min(n)}-{max(n)}"
        ax.set(
            title=f"arch={arch}, lr={lr:g}: mean of {seeds} seeds, band min..max",
            xlabel="epoch (0 = at init)",
            ylabel=ylabel,
        )
        ax.grid(alpha=0.3)
    _legend_outside(axes)
    return _save(fig, path)


def zeros_per_layer_at_init(records, path: Path) -> Path:
    """Grouped bars: zero fraction of each ReLU layer at init (mean over seeds), per init."""
    archs = sorted({r["arch"] for r in records})
    fig, axes = _panels(archs)
    colors = _colors({r["init"] for r in records})
    for arch in archs:
        rs_arch = [r for r in records if r["arch"] == arch]
        where = init_zero_source(rs_arch[0])
        layers = list(rs_arch[0]["at_init"][where]["layers"])
        inits = sorted({r["init"] for r in rs_arch})
        width = 0.8 / len(inits)
        for i, init in enumerate(inits):
            vals = np.array(
                [
                    [r["at_init"][where]["layers"][l]["zero_fraction"] for l in layers]
                    for r in rs_arch
                    if r["init"] == init
                ]
            )
            axes[arch].bar(
                np.arange(len(layers)) + i * width,
                vals.mean(0),
                width,
                yerr=vals.std(0) if len(vals) > 1 else None,
                color=colors[init],
                label=init,
            )
        axes[arch].set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers)
        axes[arch].set(
            title=f"arch={arch} ({where} images)",
            ylabel="ReLU-zero fraction at init (of unit x sample)",
            ylim=(0, 1),
        )
        axes[arch].legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _label(key: tuple, many_archs: bool) -> str:
    arch, init, stage = key
    return f"{arch} {init} ({stage})" if many_archs else f"{init} ({stage})"


def plot_stability(records: list[dict], path) -> Path:
    """Pattern-change fraction, flipped units and ||L_gen|| / ||f(x)|| against
    perturbation size, written as a PNG to ``path``: one line per (init, stage)
    (colour = init, dashed = at init, solid = trained, marker = arch), mean over
    seeds with min..max error bars."""
    if not records:
        raise ValueError("Expected at least one stability record, got none. Run measure_stability first.")
    groups = stability_groups(records)
    many_archs = len({k[0] for k in groups}) > 1
    inits = sorted({k[1] for k in groups})
    cmap = plt.get_cmap("tab10" if len(inits) <= 10 else "tab20")
    colors = {init: cmap(i % cmap.N) for i, init in enumerate(inits)}
    markers = {arch: "os^Dvp*"[i % 7] for i, arch in enumerate(sorted({k[0] for k in groups}))}
    panels = (
        ("pattern_changed", "perturbations changing the pattern", "linear"),
        ("flipped_units", "mean fraction of units flipped", "log"),
        ("l_gen_rel", "mean ||L_gen|| / mean ||f(x)||", "log"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2))
    for key, by_size in groups.items():
        sizes = sorted(by_size)
        style = "--" if key[2] == "init" else "-"
        for ax, (metric, _, _) in zip(axes, panels, strict=True):
            values = [[r[metric] for r in by_size[s] if r.get(metric) is not None] for s in sizes]
            keep = [i for i, v in enumerate(values) if v]
            if not keep:
                continue
            mean = np.array([np.mean(values[i]) for i in keep])
            low = mean - np.array([np.min(values[i]) for i in keep])
            high = np.array([np.max(values[i]) for i in keep]) - mean
            ax.errorbar(
                [sizes[i] for i in keep],
                mean,
                yerr=[low, high],
                ls=style,
                marker=markers[key[0]],
                ms=3,
                capsize=2,
                color=colors[key[1]],
                label=_label(key, many_archs),
            )
    for ax, (_, ylabel, yscale) in zip(axes, panels, strict=True):
        ax.set(xscale="log", yscale=yscale, xlabel="relative perturbation size s", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=7, ncol=1 + len(groups) // 12)
    fig.suptitle("Activation-pattern stability (dashed: at init, solid: trained; bars: min..max over seeds)")
    return _save(fig, Path(path))


def _save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (processes sharing a folder may both report) and close it."""
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format=Path(path).suffix[1:], dpi=110))
    plt.close(fig)
    return path


def all_plots(records, folder: Path) -> list[Path]:
    folder = Path(folder)
    return [
        scatter_zeros_vs_accuracy(records, folder / "zeros_vs_accuracy.png"),
        learning_curves(records, folder / "learning_curves.png"),
        zeros_per_layer_at_init(records, folder / "zeros_per_layer_at_init.png"),
        zeros_during_training(records, folder / "zeros_during_training.png"),
    ]


# ---------------------------------------------------------------- the dose preset

_BASE_COLORS = {"default": ("tab:blue", "tab:cyan"), "kaiming_normal": ("tab:red", "tab:orange")}
_METHOD_STYLE = {"lp": ("o", "-"), "quantile_bias": ("s", "--"), "bias_shift": ("^", "none")}
_METHOD_LABEL = {
    "lp": "LP (activity target)",
    "quantile_bias": "quantile bias",
    "bias_shift": "bias shift (LP's control)",
}
_METRIC_LABEL = {"accuracy": "final test accuracy (%)", "loss": "final test loss (cross-entropy)"}


def dose_response(points, path: Path, metric: str = "accuracy", lrs=None) -> Path:
    """Final ``metric`` (mean and 95% CI over seeds) against the measured
    initial zero fraction, a panel per (lr, arch): one line per method and
    base through its doses, the bare bases and LSUV as reference lines."""
    lrs = sorted({p.lr for p in points}) if lrs is None else list(lrs)
    archs = sorted({p.arch for p in points})
    fig, axes = plt.subplots(len(lrs), len(archs), figsize=(7.2 * len(archs), 4.6 * len(lrs)), squeeze=False)
    for row, lr in enumerate(lrs):
        for col, arch in enumerate(archs):
            ax = axes[row][col]
            cell = [p for p in points if p.lr == lr and p.arch == arch]
            _reference_lines(ax, cell, metric)
            for base in sorted({p.base for p in cell if p.base in _BASE_COLORS}):
                for method, (marker, line) in _METHOD_STYLE.items():
                    curve = sorted(
                        (p for p in cell if p.base == base and p.method == method), key=lambda p: p.zeros["mean"]
                    )
                    if not curve:
                        continue
                    color = _BASE_COLORS[base][0 if method != "quantile_bias" else 1]
                    y = [getattr(p, metric) for p in curve]
                    ax.errorbar(
                        [p.zeros["mean"] for p in curve],
                        [d["mean"] for d in y],
                        yerr=_half_widths(y),
                        color=color,
                        marker=marker,
                        linestyle=line,
                        capsize=3,
                        label=f"{base} + {_METHOD_LABEL[method]}",
                    )
            n = max((getattr(p, metric)["n"] for p in cell), default=0)
            ax.set(
                title=f"arch={arch}, lr={lr:g} (mean, 95% CI over up to {n} seeds)",
                xlabel="ReLU-zero fraction at init (held-out images, fraction of unit x sample)",
                ylabel=_METRIC_LABEL[metric],
            )
            ax.grid(alpha=0.3)
        axes[row][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, path)


def _half_widths(described: list[dict]) -> np.ndarray:
    low = np.array([d["mean"] - d["ci_low"] if d["n"] > 1 else 0.0 for d in described])
    high = np.array([d["ci_high"] - d["mean"] if d["n"] > 1 else 0.0 for d in described])
    return np.vstack([low, high])


def _reference_lines(ax, cell, metric: str) -> None:
    """Bare bases (and LSUV): a horizontal line at their mean, a band for its CI, a dot at their zeros."""
    for p in cell:
        if p.method != "bare":
            continue
        color = _BASE_COLORS.get(p.base, ("tab:gray",))[0]
        value = getattr(p, metric)
        style = "-." if p.base in _BASE_COLORS else ":"
        ax.axhline(value["mean"], color=color, linestyle=style, linewidth=1, label=f"{p.base} (bare)")
        if value["n"] > 1:
            ax.axhspan(value["ci_low"], value["ci_high"], color=color, alpha=0.08)
        ax.plot([p.zeros["mean"]], [value["mean"]], marker="D", color=color, markersize=6)


def dose_fits(fits, path: Path) -> Path:
    """The quadratic dose-response fits with their 95% bootstrap bands and
    fitted maxima, a panel per (lr, arch)."""
    cells = sorted({(f.lr, f.arch) for f in fits})
    fig, axes = plt.subplots(1, len(cells), figsize=(6.5 * len(cells), 4.5), squeeze=False)
    for ax, (lr, arch) in zip(axes[0], cells, strict=True):
        for fit in (f for f in fits if (f.lr, f.arch) == (lr, arch)):
            color = _BASE_COLORS.get(fit.base, ("tab:gray", "tab:gray"))[0 if fit.method == "lp" else 1]
            line = _METHOD_STYLE[fit.method][1]
            ax.plot(
                fit.grid,
                fit.fitted(fit.grid),
                color=color,
                linestyle=line,
                label=f"{fit.base} + {_METHOD_LABEL[fit.method]}",
            )
            ax.fill_between(fit.grid, fit.band_low, fit.band_high, color=color, alpha=0.12)
            spread = [[fit.best_zeros - fit.best_low], [fit.best_high - fit.best_zeros]]
            ax.errorbar([fit.best_zeros], [fit.best_accuracy], xerr=spread, color=color, marker="*", capsize=3)
        ax.set(
            title=f"arch={arch}, lr={lr:g}: quadratic fit, 95% bootstrap band; * = fitted maximum",
            xlabel="ReLU-zero fraction at init (held-out images)",
            ylabel="final test accuracy (%)",
        )
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, path)
