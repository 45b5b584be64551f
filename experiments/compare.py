"""Entry point: run every (init, arch, seed, lr) of the settings, then report.

    python -m experiments.compare --preset quick
    python -m experiments.compare --preset full --n-jobs 2
    python -m experiments.compare --preset full --inits default,lp@0.1 --seeds 5 --name lp-only

Results go to ``<results-root>/<name>/`` (name = the preset by default):
``settings.json``, ``runs.jsonl`` (one line per finished run), then
``summary.csv``, ``report.md`` and PNGs. Rerunning the same command skips
finished runs; ``python -m experiments.report <folder>`` re-summarizes only.
"""

from __future__ import annotations

import sys
import time

from experiments.report import build_report
from experiments.runner import execute, plan_tasks
from experiments.settings import SettingsMismatch, parse_settings, record_settings


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    try:
        record_settings(settings)
    except SettingsMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tasks = plan_tasks(settings)
    print(f"{len(tasks)} runs planned -> {settings.results_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    for _ in execute(settings, tasks):
        pass
    print(f"runs done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(build_report(settings.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
