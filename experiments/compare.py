"""Entry point: run every (init, arch, seed, lr) of the settings, then report.

    python -m experiments.compare --preset quick
    python -m experiments.compare --preset full --n-jobs 2
    python -m experiments.compare --preset full --inits default,lp@0.1 --seeds 5 --name lp-only
    python -m experiments.compare --preset full --backend dask --scheduler tcp://10.0.0.1:8786 --n-jobs -1

Results go to ``<results-root>/<name>/`` (name = the preset by default):
``settings.json``, ``runs.jsonl`` (one line per finished run), then
``summary.csv``, ``report.md`` and PNGs. Rerunning the same command skips
finished runs; several processes started on one folder share its runs;
``python -m experiments.report <folder>`` re-summarizes only.

Exit status: 0 when every planned run is finished; 1 when some failed
(``failures.jsonl`` says why; a rerun retries them); 2 for bad settings,
found before any run starts; 130 on Ctrl-C.
"""

from __future__ import annotations

import sys
import time

from experiments.report import build_report
from experiments.runner import ClusterUnavailable, execute, plan_tasks
from experiments.settings import SettingsMismatch, fit_to_machine, parse_settings, record_settings


def _error(message: str) -> None:
    print(f"python -m experiments.compare: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)  # bad flags exit 2 here, with one line
    settings, note = fit_to_machine(settings)
    if note:
        print(note, file=sys.stderr)
    try:
        record_settings(settings)
    except SettingsMismatch as err:
        _error(str(err))
        return 2
    except OSError as err:
        _error(f"cannot write the results folder {settings.results_dir}: {err}. Choose another --results-root.")
        return 2
    tasks = plan_tasks(settings)
    print(f"{len(tasks)} runs planned -> {settings.results_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        outcome = execute(settings, tasks)
    except ClusterUnavailable as err:
        _error(str(err))
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept in runs.jsonl; rerun the same command to resume.", file=sys.stderr)
        return 130
    print(
        f"runs done in {time.perf_counter() - t0:.1f} s: {len(outcome.finished)} finished here, "
        f"{outcome.done_elsewhere} by other processes, {outcome.already_done} before",
        file=sys.stderr,
    )
    failures = settings.results_dir / "failures.jsonl"
    if outcome.failures:
        _error(
            f"{outcome.failures} of {outcome.planned} runs failed; see {failures} for why "
            "(rerun the same command to retry them)."
        )
    if outcome.planned > outcome.failures:  # some runs finished: report them
        print(build_report(settings.results_dir))
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
