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


def scatter_zeros_vs_accuracy(records, path: Path) -> Path:
    """Initial zero fraction vs final test accuracy, one colour per init, a panel per arch."""
    archs = sorted({r["arch"] for r in records})
    colors = _colors({r["init"] for r in records})
    fig, axes = _panels(archs)
    for (arch, init), rs in _by(records, "arch", "init").items():
        m = [flat_metrics(r) for r in rs]
        axes[arch].scatter(
            [v["init_zero_fraction"] for v in m],
            [v["final_test_accuracy"] for v in m],
            color=colors[init],
            label=init,
            s=22,
            alpha=0.85,
        )
    sources = "/".join(sorted({init_zero_source(r) for r in records}))
    for arch, ax in axes.items():
        ax.set(
            title=f"arch={arch}",
            xlabel=f"ReLU-zero fraction at init ({sources} images)",
            ylabel="final test accuracy (%)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def learning_curves(records, path: Path) -> Path:
    """Test accuracy per epoch, mean over seeds with a min-max band, per init."""
    return _per_epoch(records, path, "test_accuracy", "test accuracy (%)")


def zeros_during_training(records, path: Path) -> Path:
    """Test-set ReLU-zero fraction per epoch (epoch 0 = init), mean and band, per init."""
    return _per_epoch(records, path, "zero_fraction", "ReLU-zero fraction (test set)")


def _per_epoch(records, path, key, ylabel):
    archs = sorted({r["arch"] for r in records})
    colors = _colors({r["init"] for r in records})
    fig, axes = _panels(archs)
    for (arch, init, lr), rs in _by(records, "arch", "init", "lr").items():
        curves = np.array([[h[key] for h in r["history"]] for r in rs], dtype=float)
        epochs = np.arange(curves.shape[1])
        mean = curves.mean(0)
        label = init if len({r["lr"] for r in records}) == 1 else f"{init} lr={lr:g}"
        axes[arch].plot(epochs, mean, color=colors[init], label=f"{label} (n={len(rs)})")
        axes[arch].fill_between(epochs, curves.min(0), curves.max(0), color=colors[init], alpha=0.15)
    for arch, ax in axes.items():
        ax.set(title=f"arch={arch}; band = min..max over seeds", xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
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
        axes[arch].set(title=f"arch={arch} ({where} images)", ylabel="ReLU-zero fraction at init", ylim=(0, 1))
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
