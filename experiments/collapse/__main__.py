"""Entry point: run every pending cell of the settings, then write the report.

    python -m experiments.collapse --preset quick          # smoke run, seconds
    python -m experiments.collapse --preset collapse       # the study without the LP family
    python -m experiments.collapse --preset collapse-lp    # the LP family, into the same folder
    python -m experiments.collapse --preset collapse --estimate   # time a sample, print the cost
    python -m experiments.collapse.report experiments/results/collapse   # re-report only

Results go to ``<results-root>/<name>/``: ``settings.json``, ``runs.jsonl``
(one line per finished cell), then ``summary.csv``, ``report.md`` and PNGs.
Rerunning the same command skips finished cells.
"""

from __future__ import annotations

import sys
import time

from experiments.collapse.settings import SettingsMismatch, build_parser, parse_settings, record_settings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    estimate = "--estimate" in argv
    if estimate:
        argv.remove("--estimate")
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        print("\n  --estimate            time a sample of the planned cells and print the cost; runs nothing")
        return 0
    settings = parse_settings(argv)
    if estimate:
        from experiments.collapse.cost import estimate_cost

        print(estimate_cost(settings))
        return 0
    try:
        record_settings(settings)
    except SettingsMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from experiments.collapse.report import build_report
    from experiments.collapse.runner import execute

    t0 = time.perf_counter()
    written = execute(settings)
    print(f"{written} records written in {time.perf_counter() - t0:.1f} s -> {settings.results_dir}", file=sys.stderr)
    print(build_report(settings.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
