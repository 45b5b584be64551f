"""Write ``summary.csv``, ``report.md`` and the plots from ``runs.jsonl`` alone.

    python -m experiments.report experiments/results/<name>

re-summarizes and re-plots a results folder; it never trains.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections import Counter
from pathlib import Path

from experiments import plots, stability
from experiments.runner import read_runs
from experiments.settings import load_settings
from experiments.stats import (
    comparisons,
    group_summary,
    init_zero_source,
    paired,
    zero_accuracy_correlations,
)

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
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _summary_table(rows: list[dict]) -> list[str]:
    cells = {}
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
    records = read_runs(results_dir / "runs.jsonl", repair=False)
    if not records:
        raise ValueError(f"No finished runs in {results_dir / 'runs.jsonl'}; run experiments.compare first.")
    rows = group_summary(records)
    write_summary_csv(rows, results_dir / "summary.csv")
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
        lines += ["No lp@ runs in these results, so no paired comparisons.", ""]

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
    path.write_text("\n".join(lines) + "\n")
    return path


def _stability_lines(records, results_dir: Path) -> list[str]:
    rows = [row for r in records for row in r.get("stability", [])]
    if not rows:
        return []
    stability.plot_stability(rows, results_dir / "stability.png")
    section = stability.stability_section(rows)
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="a folder written by experiments.compare")
    args = parser.parse_args(argv)
    print(build_report(args.results_dir))


if __name__ == "__main__":
    main()
