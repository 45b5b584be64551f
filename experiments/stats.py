"""Statistics over finished runs: summaries, paired tests, correlations.

Every function takes plain lists of run records (lines of runs.jsonl) or
numbers and returns plain dicts, so the report and the tests can use them
without training. Where n is too small for a statistic (n < 2 for a CI,
n < 3 for a correlation or a test) the value is nan and ``note`` says why.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy import stats as sps

from experiments.inits import control_of

FINAL_METRICS = ("test_accuracy", "test_loss", "train_loss", "zero_fraction")


def init_zero_source(record: dict) -> str:
    """Which set the "initial zeros" come from: held-out training images when
    the run has them, else the test set."""
    return "heldout" if record["at_init"].get("heldout") else "test"


def flat_metrics(record: dict) -> dict:
    """The numbers a run is summarized by, in one flat dict."""
    out = {f"final_{k}": record["final"][k] for k in FINAL_METRICS}
    for where in ("lp_batch", "heldout", "test"):
        z = record["at_init"].get(where)
        if z:
            out[f"init_zero_fraction_{where}"] = z["zero_fraction"]
            out[f"init_dead_units_{where}"] = z["dead_units"]
            out[f"init_distinct_patterns_{where}"] = z["distinct_patterns"]
    out["init_zero_fraction"] = record["at_init"][init_zero_source(record)]["zero_fraction"]
    out["wall_time_s"] = record.get("wall_time_s")
    return out


def describe(values) -> dict:
    """n, mean, std (ddof=1) and the t-distribution 95% CI of the mean."""
    x = np.asarray([v for v in values if v is not None and not _isnan(v)], dtype=float)
    n = x.size
    res = {"n": n, "mean": float(x.mean()) if n else math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if n >= 2:
        std = float(x.std(ddof=1))
        half = float(sps.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        res.update(std=std, ci_low=res["mean"] - half, ci_high=res["mean"] + half)
    return res


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def group_summary(records: list[dict]) -> list[dict]:
    """One row per (arch, init, lr, metric) with ``describe`` of that metric."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["arch"], r["init"], r["lr"])].append(flat_metrics(r))
    rows = []
    for (arch, init, lr), metrics in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        for metric in metrics[0]:
            rows.append(
                {"arch": arch, "init": init, "lr": lr, "metric": metric, **describe([m.get(metric) for m in metrics])}
            )
    return rows


def paired(records: list[dict], a: str, b: str, metric: str = "final_test_accuracy") -> list[dict]:
    """Paired differences ``a - b`` of ``metric`` over runs sharing (arch, lr, seed).

    Returns one dict per (arch, lr): n, mean difference with 95% CI, paired
    t-test p and Wilcoxon signed-rank p (nan with a note when n < 3 or all
    differences are zero).
    """
    by_key = {(r["init"], r["arch"], r["lr"], r["seed"]): flat_metrics(r)[metric] for r in records}
    cells = sorted({(arch, lr) for (init, arch, lr, _) in by_key if init == a})
    out = []
    for arch, lr in cells:
        diffs = [
            by_key[(a, arch, lr, s)] - by_key[(b, arch, lr, s)]
            for (init, ar, l, s) in sorted(by_key, key=str)
            if init == a and ar == arch and l == lr and (b, arch, lr, s) in by_key
        ]
        out.append({"a": a, "b": b, "arch": arch, "lr": lr, "metric": metric, **paired_test(diffs)})
    return out


def paired_test(diffs) -> dict:
    d = np.asarray(diffs, dtype=float)
    res = {
        **{f"diff_{k}": v for k, v in describe(d).items() if k != "n"},
        "n": d.size,
        "t_p": math.nan,
        "wilcoxon_p": math.nan,
        "note": "",
    }
    if d.size < 3:
        res["note"] = f"n={d.size} < 3: no test"
        return res
    if np.all(d == 0):
        res["note"] = "all differences are zero"
        return res
    if np.ptp(d) == 0:
        res["note"] = "all differences are equal: no t-test"
    else:
        res["t_p"] = float(sps.ttest_1samp(d, 0.0).pvalue)
    res["wilcoxon_p"] = float(sps.wilcoxon(d).pvalue)
    return res


def correlation(x, y, n_boot: int = 2000, seed: int = 0) -> dict:
    """Pearson and Spearman correlation of x and y, with p-values and
    percentile bootstrap 95% CIs (resampling pairs)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.size
    res = {"n": n}
    keys = (
        "pearson_r",
        "pearson_p",
        "pearson_ci_low",
        "pearson_ci_high",
        "spearman_rho",
        "spearman_p",
        "spearman_ci_low",
        "spearman_ci_high",
    )
    res.update({k: math.nan for k in keys})
    res["note"] = ""
    if n < 3:
        res["note"] = f"n={n} < 3: no correlation"
        return res
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        res["note"] = "a variable is constant: correlation undefined"
        return res
    pr = sps.pearsonr(x, y)
    sr = sps.spearmanr(x, y)
    res.update(
        pearson_r=float(pr.statistic),
        pearson_p=float(pr.pvalue),
        spearman_rho=float(sr.statistic),
        spearman_p=float(sr.pvalue),
    )
    rng = np.random.default_rng(seed)
    boots_p, boots_s = [], []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        xi, yi = x[i], y[i]
        if np.ptp(xi) == 0 or np.ptp(yi) == 0:
            continue
        boots_p.append(np.corrcoef(xi, yi)[0, 1])
        boots_s.append(sps.spearmanr(xi, yi).statistic)
    if boots_p:
        res.update(
            pearson_ci_low=float(np.percentile(boots_p, 2.5)),
            pearson_ci_high=float(np.percentile(boots_p, 97.5)),
            spearman_ci_low=float(np.nanpercentile(boots_s, 2.5)),
            spearman_ci_high=float(np.nanpercentile(boots_s, 97.5)),
        )
    return res


def zero_accuracy_correlations(records: list[dict], n_boot: int = 2000) -> list[dict]:
    """The notebook's question: initial zero fraction vs final test accuracy,
    per (arch, lr), over all runs and within each init family."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        cells[(r["arch"], r["lr"], "all")].append(r)
        cells[(r["arch"], r["lr"], r["family"])].append(r)
    out = []
    for (arch, lr, fam), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "all", kv[0][2])):
        m = [flat_metrics(r) for r in rs]
        out.append(
            {
                "arch": arch,
                "lr": lr,
                "family": fam,
                "x": "init_zero_fraction (" + "/".join(sorted({init_zero_source(r) for r in rs})) + ")",
                **correlation(
                    [v["init_zero_fraction"] for v in m], [v["final_test_accuracy"] for v in m], n_boot=n_boot
                ),
            }
        )
    return out


_STABILITY_GROUP = ("arch", "init", "stage")


def stability_groups(records: list[dict]) -> dict[tuple, dict[float, list[dict]]]:
    """Stability rows (``measure_stability`` rows of run records) grouped as
    (arch, init, stage) -> size -> the rows of every seed; init before trained."""
    groups: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        key = tuple(str(r.get(k, "-")) for k in _STABILITY_GROUP)
        groups[key][float(r["size"])].append(r)
    stage_order = {"init": 0, "trained": 1}

    def order(item):
        arch, init, stage = item[0]
        return arch, init, stage_order.get(stage, 2), stage

    return dict(sorted(groups.items(), key=order))


def seed_stat(rows: list[dict], key: str) -> tuple[float, float, int]:
    """Mean, standard deviation (0 for one seed) and count of ``key`` over rows, skipping None."""
    values = np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)
    if values.size == 0:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0, int(values.size)


def comparisons(records: list[dict]) -> list[tuple[str, str]]:
    """The paired comparisons that exist in these records: each init that has
    a control (``lp@r``) against its own random start (``default``) and
    against its control (``bias_shift@r``)."""
    inits = {r["init"] for r in records}
    pairs = []
    for init in sorted(inits):
        control = control_of(init)
        if control is None:
            continue
        if "default" in inits:
            pairs.append((init, "default"))
        if control in inits:
            pairs.append((init, control))
    return pairs
