"""The collapse study's quick preset end to end: runs, resumes, reports, plots."""

from __future__ import annotations

import csv
import json

from experiments.collapse.__main__ import main
from experiments.collapse.cost import estimate_cost
from experiments.collapse.report import build_report
from experiments.collapse.settings import resolve


def test_quick_preset_end_to_end(tmp_path, capsys):
    assert main(["--preset", "quick", "--results-root", str(tmp_path)]) == 0
    folder = tmp_path / "quick"
    report = (folder / "report.md").read_text()
    records = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    # 2 input sets x 2 widths x 2 depths x 4 inits, and 2 tasks x 1 width x 1 depth x 4 inits
    assert sum(r["phase"] == "init" for r in records) == 32
    assert sum(r["phase"] == "train" for r in records) == 8
    for name in ("born_dead_vs_depth_x1d.png", "born_dead_vs_depth_x2d.png", "summary.csv", "settings.json"):
        assert (folder / name).is_file(), name
    for phrase in (
        "## Answers",
        "Can lp@0.5 make these networks never born dead?",
        "Does lp@0.5 collapse less than RAI",
    ):
        assert phrase in report
    assert "n/a" not in report.split("## Safe region")[0].split("## Answers")[1]
    with open(folder / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40

    # Resume: nothing left to do, and the report is rebuilt from runs.jsonl alone, identically.
    capsys.readouterr()
    assert main(["--preset", "quick", "--results-root", str(tmp_path)]) == 0
    assert "0 records written" in capsys.readouterr().err
    assert build_report(folder) == report


def test_a_different_recipe_is_refused(tmp_path, capsys):
    assert main(["--preset", "quick", "--results-root", str(tmp_path), "--tasks", "abs", "--widths", "2",
                 "--depths", "2", "--train-depths", "", "--inits", "he"]) == 0  # fmt: skip
    assert main(["--preset", "quick", "--results-root", str(tmp_path), "--steps", "7"]) == 2
    assert "different recipe (steps: folder has 60, you asked 7)" in capsys.readouterr().err


def test_cost_estimate_covers_the_plan(tmp_path):
    s = resolve(
        "quick",
        {"results_root": str(tmp_path), "tasks": ("abs",), "widths": (2,), "depths": (2, 4), "inits": ("he", "lp@0.5")},
    )
    text = estimate_cost(s)
    assert "plan: 4 init cells, 2 train groups (2 train cells)" in text
    assert "total:" in text and "lp@0.5" in text


def test_headline_cells_get_the_rates_figure_and_no_depth_plot(tmp_path):
    """A folder with one depth (as collapse-headline): rates per init instead of curves against depth."""
    args = ["--preset", "quick", "--results-root", str(tmp_path), "--tasks", "abs", "--widths", "2",
            "--depths", "10", "--train-depths", "10", "--inits", "he,rai", "--init-seeds", "20",
            "--train-seeds", "4", "--steps", "3"]  # fmt: skip
    assert main(args) == 0
    folder = tmp_path / "quick"
    report = (folder / "report.md").read_text()
    assert (folder / "rates_headline.png").is_file() and not (folder / "born_dead_vs_depth_x1d.png").exists()
    assert "![rates_headline](rates_headline.png)" in report and "The safe region needs several depths" in report
