"""Write ``summary.csv``, ``report.md`` and the plots from ``runs.jsonl`` alone.

    python -m experiments.report experiments/results/<name>

re-summarizes and re-plots a results folder; it never trains. Every
sentence is computed from the numbers: the answer to the notebook's
question, the paired comparisons, and the stability section (the verdict on
the notebook's L_gen argument, from ``experiments.stability``'s rows). Each
file is written atomically, so processes sharing a folder may all report.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from experiments import plots
from experiments.coverage_report import coverage_sections
from experiments.dose import is_dose_folder
from experiments.dose_report import dose_sections
from experiments.ledger import read_lines
from experiments.settings import load_settings
from experiments.stability import IDENTITY_RTOL
from experiments.stats import (
    comparisons,
    group_summary,
    init_zero_source,
    paired,
    seed_stat,
    stability_groups,
    zero_accuracy_correlations,
)
from lpinit.files import write_atomic

SURVIVES = 0.9
"""The pattern "survives" a size when at least this fraction of perturbations keep it."""

SMALL_L_GEN = 0.1
"""L_gen is "small" when ||L_gen|| is below this fraction of the output change ||f(x*,P*) - f(x,P)||."""

TABLE_METRICS = (
    ("final_test_accuracy", "test acc (%)"),
    ("final_test_loss", "test loss"),
    ("init_zero_fraction", "zeros at init"),
    ("final_zero_fraction", "zeros after"),
)


def _f(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.{digits}f}"


def _p(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.2g}" if x >= 1e-4 else "<1e-4"


def write_summary_csv(rows: list[dict], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def _summary_table(rows: list[dict]) -> list[str]:
    cells: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        cells.setdefault((row["arch"], row["lr"], row["init"]), {})[row["metric"]] = row
    head = "| arch | lr | init | n | " + " | ".join(f"{label} mean ± std [95% CI]" for _, label in TABLE_METRICS) + " |"
    lines = [head, "|" + "---|" * (4 + len(TABLE_METRICS))]
    for (arch, lr, init), m in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], -_acc(kv[1]))):
        parts = []
        for metric, _ in TABLE_METRICS:
            d = m.get(metric)
            digits = 2 if "accuracy" in metric else 4
            parts.append(
                "n/a"
                if d is None
                else f"{_f(d['mean'], digits)} ± {_f(d['std'], digits)} "
                f"[{_f(d['ci_low'], digits)}, {_f(d['ci_high'], digits)}]"
            )
        lines.append(f"| {arch} | {lr:g} | {init} | {m['final_test_accuracy']['n']} | " + " | ".join(parts) + " |")
    return lines


def _acc(m: dict) -> float:
    v = m["final_test_accuracy"]["mean"]
    return -math.inf if math.isnan(v) else v


def _strength(r: float) -> str:
    a = abs(r)
    return "weak" if a < 0.3 else "moderate" if a < 0.6 else "strong"


def answer(corr: dict) -> str:
    """The notebook's question, answered in words from one correlation row."""
    n = corr["n"]
    if math.isnan(corr["pearson_r"]):
        return f"Cannot say from n={n} runs ({corr['note']})."
    r, lo, hi = corr["pearson_r"], corr["pearson_ci_low"], corr["pearson_ci_high"]
    rho = corr["spearman_rho"]
    text = (
        f"Over n={n} runs, Pearson r = {r:.2f} (bootstrap 95% CI [{_f(lo, 2)}, {_f(hi, 2)}], "
        f"p = {_p(corr['pearson_p'])}); Spearman rho = {rho:.2f} "
        f"(CI [{_f(corr['spearman_ci_low'], 2)}, {_f(corr['spearman_ci_high'], 2)}], p = {_p(corr['spearman_p'])}). "
    )
    if not (lo > 0 or hi < 0) or math.isnan(lo):
        text += (
            "The interval includes 0: these runs give no reliable evidence that the initial number of "
            "ReLU zeros predicts final accuracy."
        )
    elif r < 0:
        text += (
            f"A {_strength(r)} negative correlation: runs that started with fewer ReLU zeros ended more "
            "accurate, the direction the notebook hoped for (a correlation across inits, not proof that "
            "removing zeros causes it; see the paired comparisons)."
        )
    else:
        text += (
            f"A {_strength(r)} positive correlation: runs that started with MORE ReLU zeros ended more "
            "accurate, the opposite of the notebook's hope."
        )
    return text


def paired_words(p: dict) -> str:
    """One paired comparison in words, from its numbers."""
    if math.isnan(p["diff_mean"]):
        return f"no paired runs (n={p['n']})."
    text = (
        f"{p['a']} − {p['b']} = {p['diff_mean']:+.2f} points of test accuracy "
        f"(95% CI [{_f(p['diff_ci_low'], 2)}, {_f(p['diff_ci_high'], 2)}], n={p['n']} seeds, "
        f"paired t p = {_p(p['t_p'])}, Wilcoxon p = {_p(p['wilcoxon_p'])})"
    )
    lo, hi = p["diff_ci_low"], p["diff_ci_high"]
    if math.isnan(lo):
        return text + f": too few pairs to judge ({p['note'] or 'n < 2'})."
    if lo > 0:
        return text + f": {p['a']} is better."
    if hi < 0:
        return text + f": {p['a']} is worse."
    return text + ": no difference distinguishable at this n."


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    relative = os.path.relpath(Path(path).resolve())
    return str(path) if relative.startswith("..") else relative


def build_report(results_dir: Path) -> Path:
    """Summarize ``results_dir/runs.jsonl`` into summary.csv, report.md and PNGs."""
    results_dir = Path(results_dir)
    settings = load_settings(results_dir)
    records = read_lines(results_dir / "runs.jsonl", repair=False)
    if not records:
        raise ValueError(f"No finished runs in {results_dir / 'runs.jsonl'}; run experiments.compare first.")
    rows = group_summary(records)
    write_summary_csv(rows, results_dir / "summary.csv")
    if is_dose_folder(records):
        return _build_dose_report(results_dir, settings, records)
    pngs = plots.all_plots(records, results_dir)

    corrs = zero_accuracy_correlations(records, n_boot=settings.get("n_boot", 2000))
    pair_rows = [row for a, b in comparisons(records) for row in paired(records, a, b)]
    sources = sorted({init_zero_source(r) for r in records})
    held = settings.get("holdout", 0)

    lines = [f"# Initialization comparison: `{settings['name']}`", ""]
    lines += [
        "## Question",
        "",
        "Does an initialization whose ReLUs output fewer zeros on real data train better? "
        "(The notebook hoped for a strongly negative correlation between initial ReLU zeros and accuracy.)",
        "",
    ]
    lines += ["## Answer", ""]
    for c in corrs:
        if c["family"] == "all":
            lines.append(f"- **arch={c['arch']}, lr={c['lr']:g}**: {answer(c)}")
            within = [
                f"{w['family']} r = {_f(w['pearson_r'], 2)} [{_f(w['pearson_ci_low'], 2)}, "
                f"{_f(w['pearson_ci_high'], 2)}] (n={w['n']})"
                for w in corrs
                if (w["arch"], w["lr"]) == (c["arch"], c["lr"]) and w["family"] != "all"
            ]
            if within:
                lines.append(
                    "  Within init families (a correlation across families can come from the "
                    "families alone): " + "; ".join(within) + "."
                )
    for p in pair_rows:
        lines.append(f"- **{p['a']} vs {p['b']}** (arch={p['arch']}, lr={p['lr']:g}): {paired_words(p)}")
    lines += [
        "",
        "Initial zeros are the ReLU-zero fraction at init on "
        + (
            "the 10,000 held-out training images (never trained on)"
            if "heldout" in sources and held == 10_000
            else f"{' / '.join(sources)} images"
        )
        + "; accuracy is on the 10,000 test images after training.",
        "",
    ]

    lines += [
        "## Setup",
        "",
        f"- {len(records)} finished runs; architectures {sorted({r['arch'] for r in records})}; "
        f"inits {sorted({r['init'] for r in records})}; seeds per cell up to "
        f"{max(Counter((r['arch'], r['init'], r['lr']) for r in records).values())}.",
        f"- Training: SGD, lr {sorted({r['lr'] for r in records})}, batch {settings['batch_size']}, "
        f"{settings['epochs']} epochs, cross-entropy; the data order depends on the seed only, so runs with "
        "the same seed are paired across inits.",
        (
            f"- Data: {held:,} of MNIST's 60,000 training images are held out (fixed split) and only used to "
            f"measure zeros; training uses the other {60_000 - held:,}"
            + (f" (here only the first {settings['train_subset']:,})" if settings.get("train_subset") else "")
            + "."
            if held
            else "- Data: all 60,000 training images are used for training (the notebook's setting); "
            "initial zeros are measured on the test set."
        ),
        f"- The LP and LSUV see {settings['lp_batch']} training images chosen by the seed (the LP batch).",
        "- Settings: `settings.json`; raw results: `runs.jsonl`; this file is rebuilt by "
        f"`python -m experiments.report {_shown_path(results_dir)}`.",
        "",
    ]

    lines += [
        "## Final metrics per init",
        "",
        "Mean ± std over seeds with the t-based 95% CI of the mean; n = runs. "
        "All metrics, for every init, are in `summary.csv`.",
        "",
    ]
    lines += [*_summary_table(rows), ""]

    lines += ["## Paired comparisons (same seed, same data order)", ""]
    if pair_rows:
        lines += [
            "Difference a − b in final test accuracy (percentage points).",
            "",
            "| arch | lr | a | b | n | mean diff [95% CI] | t-test p | Wilcoxon p | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in pair_rows:
            lines.append(
                f"| {p['arch']} | {p['lr']:g} | {p['a']} | {p['b']} | {p['n']} | "
                f"{_f(p['diff_mean'], 2)} [{_f(p['diff_ci_low'], 2)}, {_f(p['diff_ci_high'], 2)}] | "
                f"{_p(p['t_p'])} | {_p(p['wilcoxon_p'])} | {p['note']} |"
            )
        lines += [
            "",
            "`lp@r − default` asks whether the LP improves its own random start; "
            "`lp@r − bias_shift@r` asks whether it does more than raise each layer's bias to the same "
            "zero fraction.",
            "",
        ]
    else:
        lines += [
            "No LP init here has its control run (bias_shift, quantile_bias) in these results, so no paired "
            "comparisons with a control.",
            "",
        ]
    lines += coverage_sections(records, results_dir)

    lines += [
        "## Correlation of initial zeros with final accuracy, by init family",
        "",
        "| arch | lr | family | n | Pearson r [95% CI] | p | Spearman rho [95% CI] | p | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in corrs:
        lines.append(
            f"| {c['arch']} | {c['lr']:g} | {c['family']} | {c['n']} | "
            f"{_f(c['pearson_r'], 2)} [{_f(c['pearson_ci_low'], 2)}, {_f(c['pearson_ci_high'], 2)}] | "
            f"{_p(c['pearson_p'])} | {_f(c['spearman_rho'], 2)} [{_f(c['spearman_ci_low'], 2)}, "
            f"{_f(c['spearman_ci_high'], 2)}] | {_p(c['spearman_p'])} | {c['note']} |"
        )
    lines += [
        "",
        "Families: random = default, kaiming_normal, xavier_uniform, orthogonal; data-dependent = lsuv "
        "(data-dependent) and rai (ReLU-aware); lp = lp@r; bias_shift = bias_shift@r. "
        "Correlations need n ≥ 3; bootstrap CIs resample runs.",
        "",
    ]

    lines += _lp_status_lines(records)
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    lines += _stability_lines(records, results_dir)
    lines += _timing_lines(records)
    path = results_dir / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def _build_dose_report(results_dir: Path, settings: dict, records: list[dict]) -> Path:
    """The report of a dose folder: the notebook's question at a fixed scale."""
    answer, body = dose_sections(records, results_dir, n_boot=min(settings.get("n_boot", 2000), 1000))
    lrs = sorted({r["lr"] for r in records})
    seeds = max(Counter((r["arch"], r["init"], r["lr"]) for r in records).values())
    lines = [f"# The notebook's question at a fixed scale: `{settings['name']}`", ""]
    lines += [
        "## Question",
        "",
        "With the scale of every layer held fixed, how does final accuracy depend on the initial ReLU-zero "
        "fraction, and does an LP that chooses *which* pre-activations are positive do better than a bias that "
        "only shifts them? Each unit is set active on a fraction q of the LP batch (the dose), by the LP "
        "(`+lp(target=q, rescale=unit)`) or by its bias (`+quantile_bias(q, rescale=unit)`), from a random "
        "start; `rescale=unit` gives every unit back the pre-activation RMS it had at the start.",
        "",
        "## Answer",
        "",
        *answer,
        "",
        "## Setup",
        "",
        f"- {len(records)} finished runs: {len({r['init'] for r in records})} inits, architectures "
        f"{sorted({r['arch'] for r in records})}, learning rates {lrs}, up to {seeds} seeds per cell. Their "
        f"run times sum to {sum(r['wall_time_s'] for r in records) / 3600:.1f} hours (on "
        f"{', '.join(sorted({str(r.get('host', '?')) for r in records}))}, one run per worker process at a "
        "time; the README gives the elapsed time).",
        f"- Training: SGD, batch {settings['batch_size']}, {settings['epochs']} epochs, cross-entropy, on "
        f"{60_000 - settings.get('holdout', 0):,} MNIST training images; the data order, the random start and "
        "the LP batch depend on the seed only, so runs with the same seed are paired across inits.",
        f"- The LP batch: {settings['lp_batch']} training images; zeros are measured on the "
        f"{settings.get('holdout', 0):,} held-out training images; accuracy and loss on the 10,000 test images.",
        "- Settings: `settings.json`; raw results: `runs.jsonl`; this file is rebuilt by "
        f"`python -m experiments.report {_shown_path(results_dir)}`.",
        "",
        *body,
    ]
    lines += _lp_status_lines(records)
    lines += _timing_lines(records)
    path = results_dir / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def _stability_lines(records, results_dir: Path) -> list[str]:
    rows = [row for r in records for row in r.get("stability", [])]
    if not rows:
        return []
    plots.plot_stability(rows, results_dir / "stability.png")
    section = stability_section(rows)
    return ["## Stability", "", section, "", "![stability](stability.png)", ""]


def _lp_status_lines(records) -> list[str]:
    """Solver statuses over all LP units, per init: how many units the LP
    actually changed versus left alone after a failure or time limit."""
    totals: dict[str, dict[str, int]] = {}
    for r in records:
        lp = r.get("init_info", {}).get("lp_report")
        if not lp:
            continue
        counts = totals.setdefault(r["init"], {})
        for status, n in (lp.get("status_counts") or {}).items():
            counts[status] = counts.get(status, 0) + n
    if not totals:
        return []
    statuses = sorted({k for c in totals.values() for k in c})
    lines = [
        "## LP solver statuses",
        "",
        "Units per status, summed over runs (a unit whose LP failed or hit the time limit keeps its random weights).",
        "",
        "| init | " + " | ".join(statuses) + " |",
        "|---|" + "---|" * len(statuses),
    ]
    for init, counts in sorted(totals.items()):
        lines.append(f"| {init} | " + " | ".join(str(counts.get(k, 0)) for k in statuses) + " |")
    return [*lines, ""]


def _timing_lines(records) -> list[str]:
    walls = [r["wall_time_s"] for r in records]
    inits = [r["init_time_s"] for r in records]
    devices = sorted({r["device"] for r in records})
    return [
        "## Cost",
        "",
        f"Wall time per run: mean {sum(walls) / len(walls):.1f} s (max {max(walls):.1f} s), of which "
        f"initialization mean {sum(inits) / len(inits):.2f} s; device(s): {', '.join(devices)}.",
        "",
    ]


# --- the stability section -------------------------------------------------


def _pct(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{100 * x:.2g}%" if 0 < abs(x) < 0.001 else f"{100 * x:.1f}%"


def _sci(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2g}"


def _cell(rows, key, fmt) -> str:
    mean, std, count = seed_stat(rows, key)
    return fmt(mean) + (f" ± {fmt(std)}" if count > 1 else "")


def _stability_table(title: str, groups, sizes, many_archs, cell) -> list[str]:
    """One markdown table: a row per (arch, init, stage), a column per size;
    ``cell(rows)`` formats the rows of one size."""
    head = "| " + ("arch | " if many_archs else "") + "init | stage | seeds | zeros | "
    lines = [
        title,
        "",
        head + " | ".join(f"s={s:g}" for s in sizes) + " |",
        "|" + "---|" * (4 + many_archs + len(sizes)),
    ]
    for key, by_size in groups.items():
        any_rows = next(iter(by_size.values()))
        prefix = ("| " + key[0] + " " if many_archs else "") + f"| {key[1]} | {key[2]} | {len(any_rows)} | "
        prefix += _pct(seed_stat(any_rows, "zero_fraction")[0]) + " | "
        cells = [cell(by_size[s]) if s in by_size else "–" for s in sizes]
        lines.append(prefix + " | ".join(cells) + " |")
    return lines


def _stability_tables(groups, sizes, many_archs) -> list[str]:
    def flips(rows):
        return f"{_cell(rows, 'pattern_changed', _pct)} ({_pct(seed_stat(rows, 'flipped_units')[0])})"

    def l_gen(rows):
        return (
            f"{_cell(rows, 'l_gen_rel', _sci)} [{_sci(seed_stat(rows, 'l_gen_over_change')[0])}; "
            f"{_pct(seed_stat(rows, 'identity_holds')[0])}]"
        )

    return [
        *_stability_table(
            "Pattern changed (mean fraction of units flipped), per perturbation size s:",
            groups,
            sizes,
            many_archs,
            flips,
        ),
        "",
        *_stability_table(
            "||L_gen|| / ||f(x)|| [||L_gen|| / ||f(x*,P*) - f(x,P)||; L_gen == A'x' holds], per size s:",
            groups,
            sizes,
            many_archs,
            l_gen,
        ),
    ]


def _range(values: list[float], fmt) -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}–{high}"


def _survival_verdict(groups, sizes) -> tuple[list[str], str]:
    """Where the notebook's precondition (the pattern does not change) holds:
    the verdict line, and a phrase for the summary."""
    largest: dict[tuple, float | None] = {}
    for key, by_size in groups.items():
        kept = [s for s in sizes if s in by_size and 1 - seed_stat(by_size[s], "pattern_changed")[0] >= SURVIVES]
        largest[key] = max(kept) if kept else None
    smallest, biggest = sizes[0], sizes[-1]
    at_small = [seed_stat(g[smallest], "pattern_changed")[0] for g in groups.values() if smallest in g]
    at_big = [seed_stat(g[biggest], "pattern_changed")[0] for g in groups.values() if biggest in g]
    flips_big = [seed_stat(g[biggest], "flipped_units")[0] for g in groups.values() if biggest in g]
    survivors = [s for s in largest.values() if s is not None]
    kept_text = f"kept in at least {_pct(SURVIVES)} of perturbations"
    if not survivors:
        verdict = (
            f"**The pattern does not survive any tested size** (none keeps it in at least {_pct(SURVIVES)} of "
            f"perturbations): even at s={smallest:g} "
            f"it changed in {_range(at_small, _pct)} of perturbations."
        )
    elif len(survivors) == len(largest):
        verdict = (
            f"**The pattern survives small perturbations** ({kept_text}) up to s={min(survivors):g} in every group."
        )
    else:
        verdict = (
            f"**The pattern survives small perturbations in {len(survivors)} of {len(largest)} groups** "
            f"({kept_text} at some tested size); in the others it changed in more than "
            f"{_pct(1 - SURVIVES)} of perturbations even at s={smallest:g}."
        )
    few = max(flips_big) < 0.1
    verdict += (
        f" At the largest size, s={biggest:g}, {_range(at_big, _pct)} of perturbations changed the pattern, "
        f"flipping on average {_range(flips_big, _pct)} of the units"
        + (
            ": a changed pattern is a few units near their threshold, not a new linear region far away."
            if few
            else ": a sizeable share of the network switches region."
        )
    )
    if not survivors:
        phrase = (
            f"its precondition (an unchanged pattern) already fails in {_range(at_small, _pct)} of "
            f"perturbations at the smallest size, s={smallest:g}, so on this data the argument holds "
            "only approximately"
        )
    elif len(survivors) == len(largest):
        phrase = f"its precondition (an unchanged pattern) holds up to s={min(survivors):g} in every group"
    else:
        phrase = (
            f"its precondition (an unchanged pattern) holds at some tested size in only "
            f"{len(survivors)} of {len(largest)} groups"
        )
    return [f"- {verdict}"], phrase


def _identity_verdict(records) -> list[str]:
    exact = [r for r in records if r.get("identity_holds_when_exact") is not None]
    not_exact = [r for r in records if r.get("identity_holds_when_not_exact") is not None]
    lines = []
    if exact:
        held = seed_stat(exact, "identity_holds_when_exact")[0]
        word = "as the algebra says" if held > 0.999 else "**not always: check the measurement**"
        lines.append(
            f"- Where the patterns kept L_gen = A'x' exact, it held numerically (relative error "
            f"<= {IDENTITY_RTOL:g}) in {_pct(held)} of cases, {word}."
        )
    if not_exact:
        held = seed_stat(not_exact, "identity_holds_when_not_exact")[0]
        err = seed_stat(records, "identity_rel_error")[0]
        lines.append(
            f"- Where a unit flipped between x and x*, the identity held in only {_pct(held)} of cases "
            f"(mean symmetric relative error over all pairs {err:.2g}): the argument is exact only "
            "under its precondition."
        )
    return lines


def _smallness_verdict(groups, sizes) -> list[str]:
    """Whether L_gen is small (overall and where the pattern held), and how it scales."""
    ratios: list[float] = []
    unchanged: list[float] = []
    slopes: list[float] = []
    small_up_to: dict[tuple, float | None] = {}
    for key, by_size in groups.items():
        present = [s for s in sizes if s in by_size]
        per_size = [seed_stat(by_size[s], "l_gen_over_change")[0] for s in present]
        ratios += per_size
        unchanged += [seed_stat(by_size[s], "l_gen_rel_when_unchanged")[0] for s in present]
        small_sizes = [s for s, r in zip(present, per_size, strict=True) if r < SMALL_L_GEN]
        small_up_to[key] = max(small_sizes) if small_sizes and small_sizes[0] == present[0] else None
        l_gen = [seed_stat(by_size[s], "l_gen_rel")[0] for s in present]
        if len(present) >= 2 and l_gen[0] > 0 and l_gen[-1] > 0:
            slopes.append(math.log(l_gen[-1] / l_gen[0]) / math.log(present[-1] / present[0]))
    ratios = [r for r in ratios if not math.isnan(r)]
    if not ratios:
        return []
    if all(s == sizes[-1] for s in small_up_to.values()):
        small = f"**small** at every tested size (below {SMALL_L_GEN:g} of it)"
    elif all(s is not None for s in small_up_to.values()):
        smallest_reach = min(s for s in small_up_to.values() if s is not None)
        small = f"**small** (below {SMALL_L_GEN:g} of it) up to s={smallest_reach:g} in every group, larger beyond"
    else:
        small = f"**not small** (above {SMALL_L_GEN:g} of it) even at s={sizes[0]:g} in some group"
    line = (
        f"- ||L_gen|| was {_range(ratios, _sci)} times the output change ||f(x*,P*) - f(x,P)|| it comes with: {small}."
    )
    unchanged = [u for u in unchanged if not math.isnan(u)]
    if unchanged:
        line += (
            f" Where the pattern did not change, ||L_gen|| / ||f(x)|| was {_range(unchanged, _sci)} "
            "(the notebook's A'x')."
        )
    if slopes:
        line += (
            f" ||L_gen|| grows like s^{np.median(slopes):.2f} (median log-log slope over groups; 2 = the "
            "second-order term A'x', 1 = first order, as when flipped units dominate)."
        )
    return [line]


def _init_verdicts(groups, sizes) -> tuple[list[str], list[tuple[str, bool | None]]]:
    """Whether an initialization with fewer zeros has more stable patterns: one
    line per (arch, stage) with two inits or more, and (direction, conclusive) each."""
    lines, findings = [], []
    by_stage = defaultdict(list)
    for key, by_size in groups.items():
        by_stage[(key[0], key[2])].append((key[1], by_size))
    many_archs = len({k[0] for k in groups}) > 1
    for (arch, stage), members in sorted(by_stage.items()):
        if len(members) < 2:
            continue

        def zeros(member):
            return seed_stat(next(iter(member[1].values())), "zero_fraction")[0]

        members.sort(key=zeros)
        few, many = members[0], members[-1]
        common = [s for s in sizes if s in few[1] and s in many[1]]
        f_few = [seed_stat(few[1][s], "flipped_units") for s in common]
        f_many = [seed_stat(many[1][s], "flipped_units") for s in common]
        fewer = sum(a[0] < b[0] for a, b in zip(f_few, f_many, strict=True))
        more = sum(a[0] > b[0] for a, b in zip(f_few, f_many, strict=True))
        direction = "more stable" if fewer > more else "less stable" if more > fewer else "not more stable"
        spreads = [max(a[1], b[1]) for a, b in zip(f_few, f_many, strict=True)]
        if max(spreads) == 0:
            conclusive, note = None, "one seed each, so no spread to judge the gaps against"
        else:
            beyond = sum(abs(a[0] - b[0]) > 2 * sd for a, b, sd in zip(f_few, f_many, spreads, strict=True))
            conclusive = beyond > 0 and direction != "not more stable"
            note = f"the gap exceeds twice the seed-to-seed spread at {beyond} of {len(common)} sizes"
        zero_values = np.array([zeros(m) for m in members])
        flip_values = np.array([np.mean([seed_stat(m[1][s], "flipped_units")[0] for s in common]) for m in members])
        corr = ""
        if len(members) >= 3 and zero_values.std() > 0 and flip_values.std() > 0:
            corr = (
                f" Over all {len(members)} inits, zero fraction and flipped units (mean over sizes) "
                f"correlate at {np.corrcoef(zero_values, flip_values)[0, 1]:+.2f}."
            )
        sizes_text = "/".join(f"{s:g}" for s in common)
        lines.append(
            f"- Inits compared ({f'{arch}, ' if many_archs else ''}{stage}): fewest zeros `{few[0]}` "
            f"({_pct(zeros(few))}) flips {'/'.join(_pct(m) for m, _, _ in f_few)} of units at "
            f"s={sizes_text}; most zeros `{many[0]}` ({_pct(zeros(many))}) flips "
            f"{'/'.join(_pct(m) for m, _, _ in f_many)}. Fewer flips at {fewer} and more at {more} of "
            f"{len(common)} sizes: "
            f"the init with fewer zeros is **{direction}** ({note}).{corr}"
        )
        findings.append((direction, conclusive))
    return lines, findings


def _stability_summary(algebra_ok: bool | None, survival: str, findings) -> str:
    parts = []
    if algebra_ok is not None:
        parts.append(
            "the algebra (L_gen = A'x' when the pattern is unchanged) "
            + ("checks out" if algebra_ok else "**did not check out: investigate**")
        )
    parts.append(survival)
    if findings:
        more = sum(d == "more stable" for d, _ in findings)
        solid = sum(d == "more stable" and c is True for d, c in findings)
        parts.append(
            f"fewer zeros went with a more stable pattern in {more} of {len(findings)} comparisons "
            f"({solid} beyond the seed spread)"
        )
    return "**In short:** " + "; ".join(parts) + "."


def stability_section(records: list[dict]) -> str:
    """A markdown section (no heading: the report adds it): tables of the
    measured numbers and a verdict on the notebook's argument computed from
    them. ``records`` are ``measure_stability`` rows carrying "init", "stage",
    "seed" and "arch" keys."""
    if not records:
        return "No stability measurements were recorded."
    groups = stability_groups(records)
    sizes = sorted({float(r["size"]) for r in records})
    many_archs = len({k[0] for k in groups}) > 1
    first = records[0]
    lines = [
        f"Each network was perturbed on {first['n_samples']} fixed images with "
        f"{first['n_perturbations']} random draws per size: input x' = s·||x||/√d·N(0, I) and every "
        "parameter tensor P'_k = s·rms(P_k)·N(0, I), both at once (float64). "
        '"Pattern changed" means some ReLU unit of f(x*,P), f(x,P*) or f(x*,P*) is on where it is '
        "off in f(x,P) or vice versa; the notebook's identity L_gen = A'x' needs it unchanged. "
        "Cells give the mean over seeds (± standard deviation when there are several).",
        "",
        *_stability_tables(groups, sizes, many_archs),
        "",
    ]
    survival, phrase = _survival_verdict(groups, sizes)
    init_lines, findings = _init_verdicts(groups, sizes)
    exact = [r["identity_holds_when_exact"] for r in records if r.get("identity_holds_when_exact") is not None]
    algebra_ok = min(exact) > 0.999 if exact else None
    lines += [
        "Verdict, computed from the numbers above:",
        "",
        *_identity_verdict(records),
        *survival,
        *_smallness_verdict(groups, sizes),
        *init_lines,
        "",
        _stability_summary(algebra_ok, phrase, findings),
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="a folder written by experiments.compare")
    args = parser.parse_args(argv)
    print(build_report(args.results_dir))


if __name__ == "__main__":
    main()
