"""The report section of coverage runs (``--preset coverage``): an activity-target
LP with ``coverage=k`` against the same LP without it, every sentence computed
from the runs.

Per-unit targets at a small dose leave samples on which a whole layer is 0
(silent samples: the layer passes nothing of them); ``coverage=k`` makes every
sample of the LP batch active in at least k units of each layer where the
units can carve such sets. The runs answer: how many samples stay silent at
init on held-out images, and does training start better from there?
``experiments.report`` adds this section when a folder holds such pairs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.dose_report import _ci, _diff, _f, _p, _verdict  # the dose report's number formats
from experiments.init_names import InitSpec, Step, parse_init_name
from experiments.stats import describe, paired_test


@dataclass(frozen=True)
class CoveragePair:
    """An init with ``coverage`` in its last LP step and the same init without it."""

    covered: str
    per_unit: str
    coverage: int


def coverage_pairs(records: list[dict]) -> list[CoveragePair]:
    """The (covered, per-unit) init pairs that both have runs."""
    inits = {r["init"] for r in records}
    pairs = []
    for name in sorted(inits):
        spec = parse_init_name(name)
        last = spec.last
        if last is None or last.kind != "lp" or last.get("coverage") is None:
            continue
        without = Step(last.kind, tuple((k, v) for k, v in last.options if k != "coverage"))
        control = str(InitSpec(spec.base, (*spec.steps[:-1], without)))
        if control in inits:
            pairs.append(CoveragePair(name, control, int(float(last.get("coverage") or 0))))
    return pairs


def _silent_fractions(record: dict) -> dict[str, float]:
    """Per layer, the fraction of held-out images (test images without them) silent at init."""
    z = record["at_init"].get("heldout") or record["at_init"]["test"]
    return {name: layer.get("silent_samples", math.nan) / z["samples"] for name, layer in z["layers"].items()}


def mean_silent(runs: list[dict]) -> dict[str, float]:
    """``_silent_fractions`` averaged over runs, per layer."""
    fractions = [_silent_fractions(r) for r in runs]
    return {name: float(np.mean([f[name] for f in fractions])) for name in fractions[0]}


def _lp_layers(record: dict) -> list[dict]:
    return (record.get("init_info") or {}).get("lp_report", {}).get("layers", [])


@dataclass(frozen=True)
class CoverageCell:
    """One pair in one (arch, lr): accuracy with and without coverage, paired by seed."""

    pair: CoveragePair
    arch: str
    lr: float
    with_: list[dict]
    without: list[dict]

    @property
    def accuracy(self) -> tuple[dict, dict, dict]:
        """``describe`` without, with, and ``paired_test`` of the differences (with - without)."""
        a = [r["final"]["test_accuracy"] for r in self.with_]
        b = [r["final"]["test_accuracy"] for r in self.without]
        return describe(b), describe(a), paired_test(np.subtract(a, b))

    def lp_counts(self, key: str, total_key: str) -> dict[str, tuple[int, int]]:
        """Per LP layer of the coverage runs: ``key`` summed over seeds, and its total."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in self.with_:
            for layer in _lp_layers(r):
                counts[layer["name"]][0] += layer.get(key) or 0
                counts[layer["name"]][1] += layer[total_key]
        return {name: (c[0], c[1]) for name, c in counts.items()}


def dead_after_training(runs: list[dict]) -> float:
    """Mean number of units of the last ReLU site that are 0 on every test image after training."""
    return float(np.mean([list(r["final"]["layers"].values())[-1]["dead_units"] for r in runs]))


def coverage_cells(records: list[dict]) -> list[CoverageCell]:
    """Every pair in every (arch, lr) where both inits ran, on their common seeds."""
    by_key = {(r["init"], r["arch"], r["lr"], r["seed"]): r for r in records}
    cells = []
    for pair in coverage_pairs(records):
        for arch, lr in sorted({(r["arch"], r["lr"]) for r in records}):
            seeds = sorted(
                s
                for (init, a, rate, s) in by_key
                if (init, a, rate) == (pair.covered, arch, lr) and (pair.per_unit, arch, lr, s) in by_key
            )
            if seeds:
                with_ = [by_key[(pair.covered, arch, lr, s)] for s in seeds]
                without = [by_key[(pair.per_unit, arch, lr, s)] for s in seeds]
                cells.append(CoverageCell(pair, arch, lr, with_, without))
    return cells


def coverage_sections(records: list[dict], folder: Path) -> list[str]:
    """The markdown lines of the coverage section (empty without pairs); writes
    ``silent_samples_at_init.png`` into ``folder``."""
    cells = coverage_cells(records)
    if not cells:
        return []
    answer, accuracy_rows, silent_rows = [], [], []
    verdicts = []
    for cell in cells:
        without, with_, test = cell.accuracy
        verdict = _verdict(test)
        verdicts.append(verdict)
        difference = _diff(test)
        dead = f"{dead_after_training(cell.without):.1f} / {dead_after_training(cell.with_):.1f}"
        accuracy_rows.append(
            f"| {cell.arch} | {cell.lr:g} | {cell.pair.per_unit} | {_ci(without)} | {_ci(with_)} | {difference} "
            f"| {_p(test['t_p'])} | {_p(test['wilcoxon_p'])} | {verdict} | {dead} | {len(cell.with_)} |"
        )
        silent_without, silent_with = mean_silent(cell.without), mean_silent(cell.with_)
        met, covered = cell.lp_counts("met_target", "out_features"), cell.lp_counts("covered", "lp_rows")
        for name in silent_with:
            lp = f"{met[name][0]}/{met[name][1]} | {covered[name][0]}/{covered[name][1]}" if name in met else "no LP | "
            silent_rows.append(
                f"| {cell.arch} | {cell.pair.covered} | {name} | {100 * silent_without[name]:.1f}% "
                f"| {100 * silent_with[name]:.1f}% | {lp} |"
            )
        worst = max(silent_without, key=lambda name: silent_without[name])
        answer.append(
            f"- {cell.arch}, {cell.pair.per_unit} -> coverage={cell.pair.coverage}: at init, held-out images "
            f"silent at {worst} {100 * silent_without[worst]:.1f}% -> {100 * silent_with[worst]:.1f}%; test "
            f"accuracy {_f(without['mean'])}% -> {_f(with_['mean'])}% ({difference} points, {verdict}, "
            f"{len(cell.with_)} seeds); units of the last ReLU dead after training {dead} on average."
        )
    _plot_silent(cells, folder / "silent_samples_at_init.png")
    return [
        "## Coverage: every sample active in some unit",
        "",
        f"Paired by seed (same random start, LP batch and data order), coverage against per-unit targets: better in "
        f"{verdicts.count('better')}, worse in {verdicts.count('worse')}, no difference in "
        f"{verdicts.count('no difference')} of {len(cells)} cells (95% t interval of the paired accuracy difference).",
        "",
        *answer,
        "",
        "| arch | lr | per-unit init | accuracy per-unit, % | accuracy with coverage, % | difference | t p "
        "| Wilcoxon p | verdict | last ReLU's dead units after training, per-unit / coverage | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *accuracy_rows,
        "",
        "Silent samples at init (held-out images on which every unit of the layer is 0), mean over seeds; and "
        "for the coverage runs, the LP's units that met their targets and the LP batch rows active in at least "
        "k units after the LP (summed over seeds; a narrow layer's units cannot always carve the covering sets).",
        "",
        "| arch | init with coverage | layer | silent, per-unit | silent, coverage | met target | covered rows |",
        "|---|---|---|---|---|---|---|",
        *silent_rows,
        "",
        "![silent samples at init](silent_samples_at_init.png)",
        "",
    ]


def _plot_silent(cells: list[CoverageCell], path: Path) -> Path:
    """Held-out images silent at init per layer, per-unit targets beside coverage, a panel per (arch, lr)."""
    panels = sorted({(c.arch, c.lr) for c in cells})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (arch, lr) in zip(axes[0], panels, strict=True):
        bars = [(c.pair.per_unit, c.without) for c in cells if (c.arch, c.lr) == (arch, lr)]
        bars += [(c.pair.covered, c.with_) for c in cells if (c.arch, c.lr) == (arch, lr)]
        width = 0.8 / len(bars)
        for k, (name, runs) in enumerate(bars):
            silent = mean_silent(runs)
            x = np.arange(len(silent)) + (k - (len(bars) - 1) / 2) * width
            ax.bar(x, [100 * v for v in silent.values()], width, label=name)
            ax.set_xticks(np.arange(len(silent)), list(silent))
        ax.set_title(f"{arch}, lr {lr:g}")
        ax.set_xlabel("layer")
        ax.set_ylabel("held-out images silent at init (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.05 * len(labels), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
