"""The record files of a results folder, and how processes share the folder.

``runs.jsonl`` and ``failures.jsonl`` hold one complete JSON line per record,
appended with a single ``os.write`` on a file opened ``O_APPEND``, then
fsync'd. A process killed at any moment therefore leaves at most a cut-short
last line, which the next reader drops (and truncates away when it may
repair the file); a duplicated key is ignored with a warning.

``SharedFolder`` lets several ``experiments.compare`` processes work on one
folder at once: each run is claimed under a folder lock before it starts
(``claims/``), so no run is computed twice, and a claim left by a process
that died is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from lpinit.files import write_atomic


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


# --- sharing a folder between processes ---------------------------------------

HEARTBEAT_S = 30.0
"""How often a process refreshes the claims it holds (their files' mtime)."""

STALE_AFTER_S = 600.0
"""A claim not refreshed for this long is abandoned (its owner died on another host, or hung)."""


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock (``flock`` on ``<folder>/.lock``) within the block.

    Every process that reads-then-writes the folder's shared state (claims,
    runs.jsonl, settings.json) does so under it, so two such steps never
    interleave. The kernel drops the lock when its holder dies.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class _Tail:
    """The records of an append-only JSON-lines file, read incrementally."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.records: list[dict] = []

    def update(self) -> list[dict]:
        """Parse the complete lines appended since the last call; return them."""
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        new = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        self.records += new
        return new


@dataclass
class Claim:
    """Who is computing a run: written to ``claims/<key>.claim`` when a process takes it."""

    key: str
    owner: str
    host: str
    pid: int
    claimed_at: float


class SharedFolder:
    """A results folder that several processes (on one or more hosts) work on at once.

    A process takes a run by writing a claim file under the folder lock, after
    checking that no live claim exists and that the run is neither finished
    (in runs.jsonl) nor failed since this process started (in failures.jsonl:
    a failure is retried by the next invocation, not by a sibling). A result
    is appended only if its key is not in runs.jsonl yet, then its claim is
    removed. A claim is stale when its owner's process is gone (same host) or
    it has not been refreshed for ``STALE_AFTER_S`` (any host); a stale claim
    is taken over.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.runs_path = self.path / "runs.jsonl"
        self.failures_path = self.path / "failures.jsonl"
        self.claims_dir = self.path / "claims"
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.started_at = time.time()
        self.claimed: set[str] = set()
        self._claimed_lock = threading.Lock()
        self._runs = _Tail(self.runs_path)
        self._failures = _Tail(self.failures_path)
        self.finished: set[str] = set()
        self.failed: dict[str, dict] = {}  # key -> failure record, for failures since this process started
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.path):
            read_lines(self.runs_path)  # repairs a cut-short last line left by a killed writer
            self._refresh()

    # -- reading the shared state (call under the lock) --

    def _refresh(self) -> None:
        self.finished.update(r["key"] for r in self._runs.update())
        for record in self._failures.update():
            if record.get("failed_at", 0.0) >= self.started_at:
                self.failed[record["key"]] = record

    def _claim_path(self, key: str) -> Path:
        readable = re.sub(r"[^\w.=@+-]", "_", key)
        return self.claims_dir / f"{readable}.{hashlib.sha1(key.encode()).hexdigest()[:8]}.claim"

    def _live_claim(self, key: str) -> Claim | None:
        path = self._claim_path(key)
        try:
            claim = Claim(**json.loads(path.read_text()))
            age = time.time() - path.stat().st_mtime
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None  # none, or one cut short by a crash: not a live claim
        if claim.host == self.host and not _pid_alive(claim.pid):
            return None
        return None if age > STALE_AFTER_S else claim

    # -- the protocol --

    def claim(self, key: str) -> bool:
        """Take ``key`` if nobody has finished, failed or live-claimed it."""
        with folder_lock(self.path):
            self._refresh()
            if key in self.finished or key in self.failed or self._live_claim(key) is not None:
                return False
            claim = Claim(key, self.owner, self.host, self.pid, time.time())
            write_atomic(self._claim_path(key), json.dumps(asdict(claim)))
            with self._claimed_lock:
                self.claimed.add(key)
            return True

    def status(self, keys: Iterable[str]) -> tuple[set[str], set[str], set[str]]:
        """Of ``keys``: (finished, failed since this process started, claimed live by other processes)."""
        with folder_lock(self.path):
            self._refresh()
            keys = set(keys)
            elsewhere = set()
            for key in keys - self.finished - set(self.failed) - self.claimed:
                claim = self._live_claim(key)
                if claim is not None and claim.owner != self.owner:
                    elsewhere.add(key)
            return keys & self.finished, keys & set(self.failed), elsewhere

    def record_result(self, record: dict) -> bool:
        """Append a finished run to runs.jsonl unless its key is there already; release its claim."""
        with folder_lock(self.path):
            self._refresh()
            fresh = record["key"] not in self.finished
            if fresh:
                append_line(self.runs_path, record)
                self._refresh()
            self._release_locked(record["key"])
            return fresh

    def record_failure(self, record: dict) -> None:
        """Append a failed run to failures.jsonl (a later invocation retries it); release its claim."""
        with folder_lock(self.path):
            append_line(self.failures_path, {**record, "failed_at": time.time(), "owner": self.owner})
            self._refresh()
            self._release_locked(record["key"])

    def release_all(self) -> None:
        """Give back every claim this process holds (on exit, finished or interrupted)."""
        with folder_lock(self.path):
            for key in list(self.claimed):
                self._release_locked(key)

    def _release_locked(self, key: str) -> None:
        with self._claimed_lock:
            mine = key in self.claimed
            self.claimed.discard(key)
        if not mine:
            return
        path = self._claim_path(key)
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
            if json.loads(path.read_text())["owner"] == self.owner:  # not one that took over a stale claim of ours
                path.unlink()

    def heartbeat(self) -> None:
        """Refresh this process's claims, so other hosts see them as live."""
        with self._claimed_lock:
            keys = list(self.claimed)
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self._claim_path(key))
