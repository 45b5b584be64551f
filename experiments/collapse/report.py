"""Write ``summary.csv``, ``report.md`` and the plots from ``runs.jsonl`` alone.

    python -m experiments.collapse.report experiments/results/collapse

re-summarizes and re-plots a results folder; it never trains. Every sentence
of the report's answers is computed from the numbers.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from experiments.collapse import plots
from experiments.collapse.inits import is_lp_family
from experiments.collapse.measure import unbits
from experiments.collapse.settings import load_settings
from experiments.collapse.summary import (
    born_dead_rows,
    cells,
    collapse_rows,
    fisher_p,
    init_sort_key,
    lsuv_matches_orthogonal,
    mse_test,
    train_mse_values,
)
from experiments.collapse.tasks import TASKS, get_task
from experiments.collapse.theory import bound_safe_depth, safe_depth
from experiments.ledger import read_lines
from lpinit.files import write_atomic

HEADLINE_WIDTH, HEADLINE_DEPTH = 2, 10
SYMMETRIC = ("he", "default", "orthogonal", "lsuv")


def _pct(row: dict) -> str:
    if not row["n"]:
        return "n/a"
    return f"{100 * row['rate']:.1f}% [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def _g(x: float, digits: int = 3) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _p(x: float) -> str:
    return "nan" if math.isnan(x) else (f"{x:.2g}" if x >= 1e-4 else "<1e-4")


def _index(rows: list[dict], *keys) -> dict:
    return {tuple(r[k] for k in keys): r for r in rows}


def _cell_table(bd_index: dict, cl_rows: list[dict], where: list[tuple[str, int, int]]) -> list[str]:
    head = (
        "| task | width | L | init | born dead at init [95% CI] (n) | collapsed after training [95% CI] (n) "
        "| died in training | test MSE mean [95% CI] | median | median, not collapsed |"
    )
    lines = [head, "|" + "---|" * 10]
    by = defaultdict(list)
    for r in cl_rows:
        by[(r["task"], r["width"], r["depth"])].append(r)
    for task, width, depth in where:
        for r in sorted(by.get((task, width, depth), []), key=lambda r: init_sort_key(r["init"])):
            bd = bd_index.get((get_task(task).input_set, width, depth, r["init"]))
            m = r["test_mse"]
            lines.append(
                f"| {task} | {width} | {depth} | {r['init']} | "
                + (f"{_pct(bd)} ({bd['n']})" if bd else "n/a")
                + f" | {_pct(r)} ({r['n']}) | {r['died_in_training']} | {_g(m['mean'])} [{_g(m['ci_low'])}, "
                f"{_g(m['ci_high'])}] | {_g(r['test_mse_median'])} | {_g(r['test_mse_median_not_collapsed'])} |"
            )
    return lines


def _safe_table(bd_rows: list[dict]) -> list[str]:
    """Rows (inputs, width), one column per init; each cell "d10 / d1 (u10 / u1)": the safe
    depths at 10% and 1% from the measured rates, and in brackets from their Wilson upper ends."""
    inits = sorted({r["init"] for r in bd_rows}, key=init_sort_key)
    groups = defaultdict(list)
    for r in bd_rows:
        groups[(r["inputs"], r["width"], r["init"])].append(r)
    lines = [
        "| inputs | width | bound | " + " | ".join(inits) + " |",
        "|---|---|---|" + "---|" * len(inits),
    ]
    for inputs, width in sorted({(r["inputs"], r["width"]) for r in bd_rows}):
        cells_ = []
        for init in inits:
            rs = groups.get((inputs, width, init))
            if not rs:
                cells_.append("")
                continue
            depths = [r["depth"] for r in rs]

            def shown(depth: int, depths=depths) -> str:
                return f"<{min(depths)}" if depth == 0 else (f"≥{depth}" if depth == max(depths) else str(depth))

            point = [shown(safe_depth(depths, [r["rate"] for r in rs], t)) for t in (0.1, 0.01)]
            upper = [shown(safe_depth(depths, [r["ci_high"] for r in rs], t)) for t in (0.1, 0.01)]
            cells_.append(f"{point[0]} / {point[1]} ({upper[0]} / {upper[1]})")
        bound = f"{bound_safe_depth(width, 0.1)} / {bound_safe_depth(width, 0.01)}"
        lines.append(f"| {inputs} | {width} | {bound} | " + " | ".join(cells_) + " |")
    return lines


def _safe_section(bd_rows: list[dict]) -> list[str]:
    if len({r["depth"] for r in bd_rows}) < 2:
        return ["(The safe region needs several depths: see the full study, presets collapse and collapse-lp.)", ""]
    return [
        "### Safe region: the largest depth whose born-dead rate (and every shallower one's) is under 10% / 1%",
        "",
        "Each cell: safe depth at 10% / at 1% from the measured rates (in brackets: from their Wilson upper ends, "
        "the conservative reading); `<2`: already the shallowest measured depth fails, `≥20`: the deepest passes; "
        "`bound`: the same from 1 - (1 - 2^-N)^L.",
        "",
        *_safe_table(bd_rows),
        "",
    ]


def _bound_check(bd_rows: list[dict]) -> str:
    sym = [r for r in bd_rows if r["init"] in SYMMETRIC]
    if not sym:
        return ""
    above = [r for r in sym if r["ci_low"] > r["bound"]]
    text = (
        f"The bound holds for the symmetric inits ({', '.join(sorted({r['init'] for r in sym}))}): in "
        f"{len(sym) - len(above)} of {len(sym)} cells the measured born-dead rate is at or below it or within its "
        f"Wilson interval; "
        + (
            "in none is the interval's lower end above the bound."
            if not above
            else f"in {len(above)} the interval's lower end is above it: "
            + ", ".join(f"{r['init']} {r['inputs']} N={r['width']} L={r['depth']}" for r in above[:5])
            + "."
        )
    )
    he = sorted((r for r in sym if r["init"] == "he" and r["width"] == HEADLINE_WIDTH), key=lambda r: r["depth"])
    for inputs in sorted({r["inputs"] for r in he}):
        rs = [r for r in he if r["inputs"] == inputs]
        shown = list({r["depth"]: r for r in (rs[0], rs[len(rs) // 2], rs[-1])}.values())
        text += (
            f" He at width {HEADLINE_WIDTH} on the {inputs} inputs reaches "
            + ", ".join(f"{r['rate'] / r['bound']:.2f} of the bound at L={r['depth']}" for r in shown)
            + "."
        )
    if he:
        text += (
            " The bound is the chance of a dead layer at one input; a layer dead at every training input is rarer "
            "(with zero biases, a first layer fed inputs of both signs is never dead)."
        )
    return text


def _lp_answers(bd_rows: list[dict], cl_rows: list[dict], records: list[dict]) -> list[str]:
    lp_inits = sorted({r["init"] for r in bd_rows + cl_rows if is_lp_family(r["init"])}, key=init_sort_key)
    if not lp_inits:
        return [
            "- **LP inits:** no LP-family cells in this folder yet; run "
            "`python -m experiments.collapse --preset collapse-lp` (see the README for which cells and seeds)."
        ]
    out = []
    for init in lp_inits:
        rs = [r for r in bd_rows if r["init"] == init]
        if rs:
            k, n = sum(r["k"] for r in rs), sum(r["n"] for r in rs)
            zero = sum(1 for r in rs if r["k"] == 0)
            base, revived = sum(r.get("base_born_dead", 0) for r in rs), sum(r.get("revived", 0) for r in rs)
            worst = max(rs, key=lambda r: r["rate"])
            verdict = "never born dead in any measured cell" if k == 0 else f"born dead in {k} of {n} networks"
            out.append(
                f"- **Can {init} make these networks never born dead?** {'Yes' if k == 0 else 'No'}: {verdict} over "
                f"{len(rs)} cells ({zero} cells with none; worst cell {worst['inputs']} N={worst['width']} "
                f"L={worst['depth']}: {_pct(worst)}). The He draws it started from were born dead in {base} of these "
                f"networks; it revived {revived} of them."
            )
    rai = _index([r for r in cl_rows if r["init"] == "rai"], "task", "width", "depth")
    for init in lp_inits:
        pairs = [
            (r, rai[(r["task"], r["width"], r["depth"])])
            for r in cl_rows
            if r["init"] == init and (r["task"], r["width"], r["depth"]) in rai
        ]
        if not pairs:
            continue
        lower = sum(1 for a, b in pairs if a["rate"] < b["rate"] and fisher_p(a, b) < 0.05)
        higher = sum(1 for a, b in pairs if a["rate"] > b["rate"] and fisher_p(a, b) < 0.05)
        ka, na = sum(a["k"] for a, _ in pairs), sum(a["n"] for a, _ in pairs)
        kb, nb = sum(b["k"] for _, b in pairs), sum(b["n"] for _, b in pairs)
        cheaper = costlier = 0
        ratios = []
        for a, b in pairs:
            va = train_mse_values(records, a["task"], a["width"], a["depth"], init)
            vb = train_mse_values(records, b["task"], b["width"], b["depth"], "rai")
            ratios.append(float(np.mean(va) / np.mean(vb)))
            p = mse_test(va, vb)
            if p < 0.05:
                cheaper += np.median(va) < np.median(vb)
                costlier += np.median(va) > np.median(vb)
        out.append(
            f"- **Does {init} collapse less than RAI after training?** Over {len(pairs)} trained cells, {init} "
            f"collapsed in {ka}/{na} ({100 * ka / na:.1f}%) against RAI's {kb}/{nb} ({100 * kb / nb:.1f}%); "
            f"per cell (Fisher exact, p < 0.05) it is lower in {lower}, higher in {higher}, not distinguishable in "
            f"{len(pairs) - lower - higher}. Final test MSE: mean over seeds {min(ratios):.2g}x to {max(ratios):.2g}x "
            f"RAI's (median cell {np.median(ratios):.2g}x); by Mann-Whitney (p < 0.05) lower than RAI's in {cheaper} "
            f"cells and higher in {costlier}."
        )
    lp_bd = [r for r in bd_rows if is_lp_family(r["init"]) and "base_born_dead" in r]
    if lp_bd:
        reasons: dict = defaultdict(int)
        for r in lp_bd:
            for k, v in r["reasons"].items():
                reasons[k] += v
        stayed = sum(r["left_dead"] for r in lp_bd)
        newly = sum(r["newly_dead"] for r in lp_bd)
        details = [d for r in lp_bd for d in r["left_dead_details"]]
        if stayed or newly:
            per_init = []
            for init in sorted({r["init"] for r in lp_bd}, key=init_sort_key):
                tally: dict[str, int] = defaultdict(int)
                for r in lp_bd:
                    if r["init"] == init:
                        for k, v in r["reasons"].items():
                            tally[k] += v
                if tally:
                    per_init.append(f"{init} " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
            box = [d for d in details if d["reason"] == "box"]
            out.append(
                f"- **When the LP cannot revive a layer:** {stayed} He-born-dead networks stayed born dead after an "
                f"LP-family init and {newly} networks alive under He were left born dead. The first dead layer's "
                f"cause, per init: {'; '.join(per_init)}. 'box': that layer had a nonzero input and optimal LPs, but "
                "the box on its weights and bias could not lift any pre-activation above zero on any input; 'solver': "
                f"some LP of that layer not solved to optimality (statuses in the detailed ones: "
                f"{_status_tally(details)}); 'ties': quantile_bias_'s threshold fell between tied values of H w "
                "(e.g. a layer whose input is zero on more rows than the target leaves active gets the threshold 0 "
                "when H w <= 0 on the others); 'error': the init raised and the network kept its He draw."
                + (
                    f" In the {len(box)} 'box' cases detailed in runs.jsonl, the largest pre-activation of the first "
                    f"dead layer after the LP has median {np.median([d['max_preact_after'] for d in box]):.3g} (at or "
                    f"below zero: the box was too small), and the {sum(d['zero_input_layers'] for d in box)} layers "
                    f"after it got an all-zero input; {sum(d['zero_bias_box_layers'] for d in box)} of those had a "
                    "bias box of zero (rho_b = radius * std(Z), and Z is the constant zero bias of He), so nothing "
                    "could move them."
                    if box
                    else ""
                )
            )
        else:
            out.append("- **When the LP cannot revive a layer:** it never happened in these cells.")
        for init in sorted({r["init"] for r in lp_bd}, key=init_sort_key):
            rs = [r for r in lp_bd if r["init"] == init]
            count, examples = sum(r["lp_errors"] for r in rs), [e for r in rs for e in r["lp_error_details"]]
            if count:
                out.append(
                    f"- **{init} raised** on {count} of {sum(r['n'] for r in rs)} networks, which then keep their He "
                    "draw; " + (f'e.g. seed {examples[0]["seed"]}: "{examples[0]["error"]}"' if examples else "")
                )
    return out


def _status_tally(details: list[dict]) -> dict[str, int]:
    tally: dict[str, int] = defaultdict(int)
    for d in details:
        for status, count in (d.get("statuses") or {}).items():
            tally[status] += count
    return dict(sorted(tally.items()))


def _answers(bd_rows, cl_rows, records) -> list[str]:
    out = []
    bd = _index(bd_rows, "inputs", "width", "depth", "init")
    for inputs in sorted({r["inputs"] for r in bd_rows}):
        here = [r for r in bd_rows if (r["inputs"], r["width"], r["depth"]) == (inputs, HEADLINE_WIDTH, HEADLINE_DEPTH)]
        if not here:
            continue
        parts = ", ".join(f"{r['init']} {_pct(r)}" for r in sorted(here, key=lambda r: init_sort_key(r["init"])))
        out.append(
            f"- **Born dead at width {HEADLINE_WIDTH}, {HEADLINE_DEPTH} hidden layers ({inputs} inputs):** {parts}; "
            f"the bound for symmetric inits is {100 * here[0]['bound']:.1f}%."
        )
    check = _bound_check(bd_rows)
    if check:
        out.append(f"- **Theory:** {check}")
    same, total = lsuv_matches_orthogonal(records)
    if total:
        out.append(
            f"- **Check:** LSUV's per-seed born-dead flags equal orthogonal's in {same} of {total} cells (LSUV only "
            "rescales orthogonal draws by positive factors, which keeps every sign)."
        )
    rai_vs_he = [
        (r, bd[(r["inputs"], r["width"], r["depth"], "he")])
        for r in bd_rows
        if r["init"] == "rai" and (r["inputs"], r["width"], r["depth"], "he") in bd
    ]
    if rai_vs_he:
        lower = sum(1 for a, b in rai_vs_he if a["ci_high"] < b["ci_low"])
        out.append(
            f"- **RAI against He, born dead:** RAI's rate is below He's (disjoint Wilson intervals) in {lower} of "
            f"{len(rai_vs_he)} cells; RAI is born dead in {sum(a['k'] for a, _ in rai_vs_he)} of "
            f"{sum(a['n'] for a, _ in rai_vs_he)} networks, He in {sum(b['k'] for _, b in rai_vs_he)} of "
            f"{sum(b['n'] for _, b in rai_vs_he)}."
        )
    head = [r for r in cl_rows if (r["width"], r["depth"]) == (HEADLINE_WIDTH, HEADLINE_DEPTH)]
    for task in dict.fromkeys(r["task"] for r in head):
        rs = sorted((r for r in head if r["task"] == task), key=lambda r: r["rate"])
        best, worst = rs[0], rs[-1]
        died = ", ".join(
            f"{r['init']} {r['died_in_training']}" for r in sorted(rs, key=lambda r: init_sort_key(r["init"]))
        )
        out.append(
            f"- **Collapse after training, {task}, width {HEADLINE_WIDTH}, L={HEADLINE_DEPTH}:** lowest {best['init']} "
            f"{_pct(best)}, highest {worst['init']} {_pct(worst)}; networks alive at init that died during training: "
            f"{died} (of {rs[0]['n']} each)."
        )
    out.extend(_lp_answers(bd_rows, cl_rows, records))
    return out


def _consistency(records: list[dict]) -> str:
    """Born-dead flags of train cells must equal the init cells' for the same seeds and inputs."""
    init_cells = cells(records, "init")
    checked = mismatched = 0
    for (task, width, depth, init), rs in cells(records, "train").items():
        other = init_cells.get((get_task(task).input_set, width, depth, init))
        if not other:
            continue
        by_seed = {}
        for r in other:
            for i, flag in enumerate(unbits(r["born_dead"])):
                by_seed[r["seed_start"] + i] = bool(flag)
        for r in rs:
            for i, flag in enumerate(unbits(r["born_dead"])):
                seed = r["seed_start"] + i
                if seed in by_seed:
                    checked += 1
                    mismatched += by_seed[seed] != bool(flag)
    return f"{checked - mismatched} of {checked} trained networks have the born-dead flag of their init cell."


def write_summary_csv(bd_rows, cl_rows, path: Path) -> None:
    fields = ["phase", "where", "width", "depth", "init", "k", "n", "rate", "ci_low", "ci_high", "bound",
              "died_in_training", "test_mse_mean", "test_mse_median", "train_mse_mean"]  # fmt: skip
    with io.StringIO(newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in bd_rows:
            writer.writerow({"phase": "born_dead", "where": r["inputs"], **{k: r[k] for k in fields[2:11] if k in r}})
        for r in cl_rows:
            writer.writerow(
                {
                    "phase": "collapse",
                    "where": r["task"],
                    **{k: r[k] for k in ("width", "depth", "init", "k", "n", "rate", "ci_low", "ci_high")},
                    "died_in_training": r["died_in_training"],
                    "test_mse_mean": r["test_mse"]["mean"],
                    "test_mse_median": r["test_mse_median"],
                    "train_mse_mean": r["train_mse"]["mean"],
                }
            )
        write_atomic(path, f.getvalue())  # a reader never sees half a table


def _rel(path: Path, folder: Path) -> str:
    return os.path.relpath(path, folder)


def build_report(folder: Path) -> str:
    """Summarize ``folder`` into summary.csv, plots and report.md; return the report text."""
    folder = Path(folder)
    settings = load_settings(folder)
    records = read_lines(folder / "runs.jsonl")
    bd_rows, cl_rows = born_dead_rows(records), collapse_rows(records)
    if not bd_rows and not cl_rows:
        text = f"# Born dead and collapse\n\nNo finished cells in {folder} yet.\n"
        write_atomic(folder / "report.md", text)
        return text
    write_summary_csv(bd_rows, cl_rows, folder / "summary.csv")
    figures = []
    for inputs in sorted({r["inputs"] for r in bd_rows}):
        if len({r["depth"] for r in bd_rows if r["inputs"] == inputs}) > 1:
            figures.append(plots.born_dead_vs_depth(bd_rows, inputs, folder / f"born_dead_vs_depth_{inputs}.png"))
    for task in [t for t in TASKS if any(r["task"] == t for r in cl_rows)]:
        if len({r["depth"] for r in cl_rows if r["task"] == task}) > 1:
            figures.append(plots.collapse_vs_depth(cl_rows, task, folder / f"collapse_vs_depth_{task}.png"))
    mse_values: dict[tuple, dict[str, list[float]]] = defaultdict(dict)
    for (task, width, depth, init), rs in cells(records, "train").items():
        mse_values[(task, width, depth)][init] = [v for r in rs for v in r["test_mse"]]
    if any((t, HEADLINE_WIDTH, HEADLINE_DEPTH) in mse_values for t in TASKS):
        figures.append(plots.rates_at(bd_rows, cl_rows, HEADLINE_WIDTH, HEADLINE_DEPTH, folder / "rates_headline.png"))
        figures.append(
            plots.mse_at(cl_rows, mse_values, HEADLINE_WIDTH, HEADLINE_DEPTH, folder / "test_mse_headline.png")
        )
        task = next(t for t in TASKS if (t, HEADLINE_WIDTH, HEADLINE_DEPTH) in mse_values)
        figures.append(
            plots.dead_units_per_layer(
                cl_rows, task, HEADLINE_WIDTH, HEADLINE_DEPTH, folder / "dead_units_per_layer_headline.png"
            )
        )
    bd_index = _index(bd_rows, "inputs", "width", "depth", "init")
    lines = [
        "# Deep, narrow ReLU networks: born dead and collapse, by init",
        "",
        f"Results folder `{folder.name}`: {len(records)} records, {len(bd_rows)} born-dead cells, {len(cl_rows)} "
        "trained cells. Recipe: "
        + ", ".join(
            f"{k}={settings.get(k)}"
            for k in (
                "n_train",
                "n_test",
                "data_seed",
                "lr",
                "steps",
                "collapse_tol",
                "lp_radius",
                "lp_margin",
            )
        )
        + " (full-batch Adam on the MSE). A network is *born dead* if some hidden layer outputs zero on every "
        "training input at init; it has *collapsed* after training if some hidden layer does, or its output's "
        "spread on the training inputs is at most collapse_tol times the target's. Rates carry Wilson 95% "
        "intervals; MSE means a t interval.",
        "",
        "## Answers",
        "",
        *_answers(bd_rows, cl_rows, records),
        f"- **Consistency:** {_consistency(records)}",
        "",
        f"## Headline: width {HEADLINE_WIDTH}, {HEADLINE_DEPTH} hidden layers",
        "",
        *_cell_table(bd_index, cl_rows, [(t, HEADLINE_WIDTH, HEADLINE_DEPTH) for t in TASKS]),
        "",
        f"## The 2-D target at {HEADLINE_DEPTH} hidden layers, every trained width",
        "",
        *_cell_table(bd_index, cl_rows, [("abs2d", w, HEADLINE_DEPTH) for w in sorted({r["width"] for r in cl_rows})]),
        "",
        "## Born dead against depth, beside the bound for symmetric inits",
        "",
        "Dashed: 1 - (1 - 2^-N)^L, the probability that some hidden layer is zero at one fixed input when weights and "
        "biases are symmetric (theory.py); an upper bound on being born dead on a set of inputs.",
        "",
        *[f"![{p.stem}]({_rel(p, folder)})" for p in figures if p.stem.startswith(("born_dead", "rates"))],
        "",
        *_safe_section(bd_rows),
        "## Collapse after training",
        "",
        *[f"![{p.stem}]({_rel(p, folder)})" for p in figures if not p.stem.startswith(("born_dead", "rates"))],
        "",
        "## Files",
        "",
        "`runs.jsonl` (one line per cell: per-seed flags and MSEs), `summary.csv` (one row per cell), "
        "`settings.json`, the PNGs above. Re-summarize with `python -m experiments.collapse.report <folder>`.",
        "",
    ]
    text = "\n".join(lines)
    write_atomic(folder / "report.md", text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.collapse.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a results folder of experiments.collapse")
    args = parser.parse_args(argv)
    print(build_report(args.folder))


if __name__ == "__main__":
    main()
