"""Worker processes that end with their parent.

A local worker process (loky, multiprocessing) keeps running its run when the
process that started it is killed (SIGKILL runs no clean-up). ``exit_with_parent``
starts a daemon thread that ends the worker within half a second of its
parent's death. It is the process pools' initializer, so it runs before a
worker imports torch or receives a run; this module imports nothing heavy.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.5

_watching: int | None = None


def exit_with_parent(parent_pid: int) -> None:
    """End this process (``os._exit``) as soon as ``parent_pid`` is no longer its parent.

    When a process dies the kernel re-parents its children, so ``os.getppid()``
    changes; if it already differs here, the parent is gone and this process
    ends at once. Calling it again in the same process does nothing.
    """
    global _watching
    if _watching is not None:
        return
    if os.getppid() != parent_pid:
        os._exit(1)
    _watching = parent_pid
    threading.Thread(target=_watch, args=(parent_pid,), daemon=True, name="exit-with-parent").start()


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    os._exit(1)
