"""The record files of a results folder: ``runs.jsonl`` and ``failures.jsonl``.

Each holds one complete JSON line per record, appended with a single
``os.write`` on a file opened ``O_APPEND``, then fsync'd. A process killed at
any moment therefore leaves at most a cut-short last line, which the next
reader drops (and truncates away when it may repair the file); a duplicated
key is ignored with a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


def read_lines(path: Path, repair: bool = True) -> list[dict]:
    """The records in ``path``, first of each key only; a trailing partial line is
    dropped (and truncated from the file when ``repair``)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is a cut-short write
    if end < len(data):
        warnings.warn(
            f"{path}: dropping a partial last line ({len(data) - end} bytes) from an interrupted write.", stacklevel=2
        )
        if repair:
            with open(path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
    records, seen = [], set()
    for number, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}, line {number}: not valid JSON ({err}). Complete lines are written "
                "atomically, so the file was edited by hand; remove that line to continue."
            ) from err
        if record["key"] in seen:
            warnings.warn(f"{path}: ignoring a duplicate of run {record['key']!r} on line {number}.", stacklevel=2)
            continue
        seen.add(record["key"])
        records.append(record)
    return records


def read_all_lines(path: Path) -> list[dict]:
    """Every complete record in ``path``, duplicates included (failures.jsonl keeps each attempt)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def append_line(path: Path, record: dict) -> None:
    """Append one record as one line, atomically with respect to a crash."""
    line = (json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies, as for open()
    try:
        written = os.write(fd, line)
        if written != len(line):  # a short write is as bad as a crash: undo it
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(f"Short write to {path} ({written} of {len(line)} bytes); nothing was recorded.")
        os.fsync(fd)
    finally:
        os.close(fd)
