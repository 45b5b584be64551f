"""The report of a dose folder (``--preset dose``): every sentence computed
from the runs (``experiments.dose``), the figures beside it.

``experiments.report`` calls ``dose_sections`` when a folder holds dose runs.
"""

from __future__ import annotations

import math
from pathlib import Path

from experiments import plots
from experiments.dose import (
    DoseFit,
    DosePoint,
    DoseRun,
    dead_logits,
    dose_points,
    dose_runs,
    fit_dose_response,
    paired_comparisons,
    scale_held,
)

MAIN_LR = 0.01
"""The notebook's learning rate; the others are the learning-rate check."""


def _f(x: float, digits: int = 2) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(x: float) -> str:
    return "nan" if math.isnan(x) else (f"{x:.2g}" if x >= 1e-4 else "<1e-4")


def _ci(d: dict, digits: int = 2) -> str:
    return f"{_f(d['mean'], digits)} [{_f(d['ci_low'], digits)}, {_f(d['ci_high'], digits)}]"


def _diff(p: dict) -> str:
    return f"{p['diff_mean']:+.2f} [{_f(p['diff_ci_low'])}, {_f(p['diff_ci_high'])}]"


def _verdict(p: dict) -> str:
    if math.isnan(p["diff_ci_low"]):
        return "n/a"
    return "better" if p["diff_ci_low"] > 0 else "worse" if p["diff_ci_high"] < 0 else "no difference"


def dose_sections(records: list[dict], folder: Path, n_boot: int) -> tuple[list[str], list[str]]:
    """``(answer lines, body lines)`` of the dose report; writes its figures into ``folder``."""
    runs = dose_runs(records)
    points = dose_points(runs)
    pairs = paired_comparisons(runs)
    loss_pairs = paired_comparisons(runs, "loss")
    fits = fit_dose_response(runs, n_boot=n_boot)
    lrs = sorted({r.lr for r in runs})
    other_lrs = [lr for lr in lrs if lr != MAIN_LR]
    figures = [
        plots.dose_response([p for p in points if p.lr == MAIN_LR], folder / "dose_accuracy.png", "accuracy"),
        plots.dose_response([p for p in points if p.lr == MAIN_LR], folder / "dose_loss.png", "loss"),
    ]
    main_fits = [f for f in fits if f.lr == MAIN_LR]
    if main_fits:
        figures.append(plots.dose_fits(main_fits, folder / "dose_fit.png"))
    if other_lrs:
        figures.append(plots.dose_response(points, folder / "dose_accuracy_by_lr.png", "accuracy", lrs))

    answer = _answer(runs, points, pairs, main_fits)
    body = ["## Dose response at a fixed scale", ""]
    body += _points_table(points)
    body += ["", *[f"![{p.stem}]({p.name})" for p in figures], ""]
    body += _pairs_table(pairs, "LP against quantile bias at the same q, and each dose against its bare base")
    body += _pairs_table(loss_pairs, "The same for the final test loss (negative: lower loss)")
    body += _fits_table(main_fits)
    body += _dead_logits_table(runs)
    body += _scale_table(runs)
    body += _candidates(runs)
    body += _good_starts(runs)
    return answer, body


def _answer(runs: list[DoseRun], points: list[DosePoint], pairs: list[dict], fits: list[DoseFit]) -> list[str]:
    lines = []
    for arch in sorted({r.arch for r in runs}):
        bare = {p.base: p for p in points if (p.arch, p.lr, p.method) == (arch, MAIN_LR, "bare")}
        text = [f"**arch={arch}, lr={MAIN_LR:g}.**"]
        for base, point in bare.items():
            text.append(
                f"{base} alone: {_ci(point.accuracy)}% at {point.zeros['mean']:.2f} zeros (n={point.accuracy['n']})."
            )
        for fit in (f for f in fits if f.arch == arch):
            reference = bare.get(fit.base)
            relation = ""
            if reference is not None:
                zeros = reference.zeros["mean"]
                if fit.best_high < zeros:
                    relation = f", below the {zeros:.2f} of {fit.base} alone"
                elif fit.best_low > zeros:
                    relation = f", above the {zeros:.2f} of {fit.base} alone"
                else:
                    relation = f", an interval that holds the {zeros:.2f} of {fit.base} alone"
            edge = ""
            if fit.best_zeros in (fit.grid[0], fit.grid[-1]):
                edge = (
                    f"; that is the edge of the zero fractions tried ({fit.grid[0]:.2f} to {fit.grid[-1]:.2f}): "
                    "the fit still rises there, so the best dose may lie beyond"
                )
            text.append(
                f"{fit.base} + {fit.method.replace('_', ' ')}: the fitted accuracy peaks at "
                f"{fit.best_zeros:.2f} zeros (95% CI [{fit.best_low:.2f}, {fit.best_high:.2f}]{relation}{edge})."
            )
        cell = [p for p in pairs if p["arch"] == arch and p["lr"] == MAIN_LR]
        choice = [p for p in cell if p["against"] == "quantile_bias"]
        if choice:
            counts = {v: sum(_verdict(p) == v for p in choice) for v in ("better", "worse", "no difference")}
            text.append(
                f"Choosing which pre-activations are positive (LP) against a bias that sets the same activity "
                f"(quantile bias), at {len(choice)} (base, q) pairs: LP better at {counts['better']}, worse at "
                f"{counts['worse']}, no difference at {counts['no difference']} (paired 95% CIs)."
            )
        dosed = [p for p in cell if p["against"] == "bare" and p["method"] in ("lp", "quantile_bias")]
        if dosed:
            best = max(dosed, key=lambda p: p["diff_mean"])
            lower_zeros = [
                p for p in dosed if p["diff_ci_low"] > 0 and p["q"] is not None and p["q"] > 0.5
            ]  # more active than half: fewer zeros than a symmetric random start
            text.append(
                f"Against its bare base, the largest gain is {best['a']}: {_diff(best)} points "
                f"({_verdict(best)}). Doses with fewer zeros than one half (q > 0.5) that train better than "
                f"their base: {len(lower_zeros)} of {sum(p['q'] is not None and p['q'] > 0.5 for p in dosed)}."
            )
        lines.append("- " + " ".join(text))
    return lines


def _points_table(points: list[DosePoint]) -> list[str]:
    lines = [
        "Mean [95% CI] over seeds; zeros = ReLU-zero fraction at init on the 10,000 held-out training images.",
        "",
        "| arch | lr | base | method | q | n | zeros at init | test accuracy % | test loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        q = "" if p.q is None else f"{p.q:g}"
        lines.append(
            f"| {p.arch} | {p.lr:g} | {p.base} | {p.method} | {q} | {p.accuracy['n']} | "
            f"{_ci(p.zeros, 3)} | {_ci(p.accuracy)} | {_ci(p.loss, 3)} |"
        )
    return lines


def _pairs_table(pairs: list[dict], title: str) -> list[str]:
    if not pairs:
        return []
    unit = "points" if pairs[0]["metric"] == "accuracy" else "nats"
    lines = [
        f"### {title}",
        "",
        f"Paired over seeds (same start, batch and data order): mean difference a − b in {unit} [95% CI], "
        "paired t-test and Wilcoxon p.",
        "",
        "| arch | lr | base | q | a | b | n | a − b | t p | Wilcoxon p | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        q = "" if p["q"] is None else f"{p['q']:g}"
        lines.append(
            f"| {p['arch']} | {p['lr']:g} | {p['base']} | {q} | {p['method']} | {p['against']} | {p['n']} | "
            f"{_diff(p)} | {_p(p['t_p'])} | {_p(p['wilcoxon_p'])} | {_verdict(p)} |"
        )
    return [*lines, ""]


def _fits_table(fits: list[DoseFit]) -> list[str]:
    if not fits:
        return []
    lines = [
        "### Fitted dose response",
        "",
        "A quadratic in the initial zero fraction, over one method's doses and its bare base; 95% intervals "
        "from 1,000 bootstrap resamples of the seeds (a seed's runs together).",
        "",
        "| arch | lr | base | method | runs | accuracy = a z² + b z + c | peak at zeros [95% CI] | peak accuracy % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in fits:
        a, b, c = f.coefficients
        lines.append(
            f"| {f.arch} | {f.lr:g} | {f.base} | {f.method} | {f.n_runs} | {a:.1f} z² {b:+.1f} z {c:+.1f} | "
            f"{f.best_zeros:.2f} [{f.best_low:.2f}, {f.best_high:.2f}] | {f.best_accuracy:.2f} |"
        )
    return [*lines, ""]


def _dead_logits_table(runs: list[DoseRun]) -> list[str]:
    rows = dead_logits(runs)
    if not rows:
        return []
    lines = [
        "### Dead logit units (ReLU on the logits)",
        "",
        "Runs with at least one logit unit that outputs 0 on every held-out image: a dead logit costs a whole class.",
        "",
        "| lr | init | runs | dead at init | dead after training |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['lr']:g} | {r['init']} | {r['n']} | {r['dead_at_init']} | {r['dead_after_training']} |" for r in rows
    ]
    return [*lines, ""]


def _scale_table(runs: list[DoseRun]) -> list[str]:
    rows = scale_held(runs)
    if not rows:
        return []
    layers = list(rows[0]["ratios"])
    lines = [
        "### Was the scale held?",
        "",
        "Each layer's pre-activation RMS at init (held-out images), relative to its bare base's (1.00 = held).",
        "",
        "| arch | lr | init | " + " | ".join(layers) + " |",
        "|---|---|---|" + "---|" * len(layers),
    ]
    for r in rows:
        ratios = " | ".join(f"{r['ratios'].get(layer, math.nan):.2f}" for layer in layers)
        lines.append(f"| {r['arch']} | {r['lr']:g} | {r['init']} | {ratios} |")
    return [*lines, ""]


def _against_start(runs: list[DoseRun], init: str, start: str, arch: str) -> list[float]:
    """Accuracy of ``init`` minus that of ``start`` (its bare base), per seed run with both, at lr 0.01."""
    start_of = {r.seed: r.accuracy for r in runs if (r.init, r.arch, r.lr) == (start, arch, MAIN_LR)}
    return [
        r.accuracy - start_of[r.seed]
        for r in runs
        if (r.init, r.arch, r.lr) == (init, arch, MAIN_LR) and r.seed in start_of
    ]


def _good_starts(runs: list[DoseRun]) -> list[str]:
    """lp_initialize's defaults applied to a good start (He, LSUV), against that start, paired over seeds."""
    from experiments.settings import DEFAULT_LP
    from experiments.stats import paired_test

    rows = []
    for base in ("kaiming_normal", "lsuv"):
        for arch in sorted({r.arch for r in runs}):
            diffs = _against_start(runs, f"{base}+{DEFAULT_LP}", base, arch)
            if diffs:
                rows.append({"base": base, "arch": arch, **paired_test(diffs)})
    if not rows:
        return []
    lines = [
        "### Does the LP improve a good init?",
        "",
        f"`+{DEFAULT_LP}` (lp_initialize's defaults) applied to He (`kaiming_normal`) and LSUV starts, against "
        "the same start without it at lr 0.01, paired over seeds: test accuracy, points.",
        "",
        "| base | arch | n | (base + LP) − base [95% CI] | t p | Wilcoxon p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['base']} | {r['arch']} | {r['n']} | {_diff(r)} | {_p(r['t_p'])} | {_p(r['wilcoxon_p'])} | "
            f"{_verdict(r)} |"
        )
    counts = {v: sum(_verdict(r) == v for r in rows) for v in ("better", "worse", "no difference")}
    lines += [
        "",
        f"Better at {counts['better']}, worse at {counts['worse']}, no difference at {counts['no difference']} "
        f"of {len(rows)} (base, arch) cells.",
        "",
    ]
    return lines


def _candidates(runs: list[DoseRun]) -> list[str]:
    """Every LP setting from PyTorch's default start (the start lp_initialize
    gets from ``nn.Linear``), against that start: candidates for its defaults."""
    from experiments.settings import DEFAULT_LP
    from experiments.stats import paired_test

    rows = []
    lp_inits = {r.init for r in runs if r.base == "default" and r.method in ("lp", "other") and "+lp(" in r.init}
    for init in sorted(lp_inits):
        for arch in sorted({r.arch for r in runs}):
            diffs = _against_start(runs, init, "default", arch)
            if diffs:
                rows.append({"init": init, "arch": arch, **paired_test(diffs)})
    if not rows:
        return []
    lines = [
        "### Candidates for lp_initialize's defaults",
        "",
        "Every LP setting from PyTorch's default start, against that start at lr 0.01 (paired over seeds); a "
        "safe default is not worse on either architecture (CI not entirely below 0).",
        "",
        "| init | arch | n | a − start [95% CI] | t p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['init']} | {r['arch']} | {r['n']} | {_diff(r)} | {_p(r['t_p'])} | {_verdict(r)} |")
    archs = sorted({r["arch"] for r in rows})
    safe = [
        init
        for init in sorted({r["init"] for r in rows})
        if {r["arch"] for r in rows if r["init"] == init} == set(archs)
        and all(not (r["diff_ci_high"] < 0) for r in rows if r["init"] == init)
    ]
    lines += ["", f"Not worse than the start on any architecture: {', '.join(safe) if safe else 'none'}.", ""]
    chosen = f"default+{DEFAULT_LP}"
    of_defaults = [r for r in rows if r["init"] == chosen]
    if of_defaults:
        verdicts = "; ".join(f"{r['arch']} {_diff(r)} points (n={r['n']}, {_verdict(r)})" for r in of_defaults)
        lines += [
            f"lp_initialize's defaults are `{chosen}` (`lpinit.initialize.DEFAULTS`): against their own random "
            f"start, {verdicts}; {'safe' if chosen in safe else 'NOT safe'} by this rule.",
            "",
        ]
    return lines
