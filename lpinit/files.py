"""Atomic file writes: a reader, or a crash, sees the old file or the new one,
never a half-written one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

Content = bytes | str | Callable[[IO[bytes]], object]
"""What to write: bytes, text (UTF-8), or a function that writes to a binary file."""


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A new file in ``path``'s folder, removed on error; mode 0666 less the
    umask, like a file that ``open(path, "w")`` creates (mkstemp's 0600 is not)."""
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(name)
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())
        with os.fdopen(descriptor, "wb") as f:
            yield f, temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fill(f: IO[bytes], content: Content) -> None:
    if isinstance(content, bytes):
        f.write(content)
    elif isinstance(content, str):
        f.write(content.encode())
    else:
        content(f)
    f.flush()
    os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, content: Content) -> Path:
    """Write ``content`` to ``path`` through a temporary file in the same
    folder and one ``os.replace``. On any error the old file (or none) is left
    and the temporary is removed. Returns ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> write_atomic(folder / "a.txt", "hello").read_text()
        'hello'
    """
    path = Path(path)
    with _temporary_beside(path) as (f, temporary):
        _fill(f, content)
        f.close()
        os.replace(temporary, path)
    return path


def write_atomic_group(files: Mapping[str | os.PathLike, Content]) -> list[Path]:
    """Write several files so that, after any error before the first rename,
    all of them are old; every temporary is removed on error.

    All contents are written to temporaries first; the renames come last, one
    after another (a crash between two renames, a window of microseconds,
    would leave some new and some old: POSIX has no multi-file rename).
    """
    paths = [Path(p) for p in files]
    stack = contextlib.ExitStack()
    with stack:
        temporaries = []
        for path, content in zip(paths, files.values(), strict=True):
            f, temporary = stack.enter_context(_temporary_beside(path))
            _fill(f, content)
            f.close()
            temporaries.append(temporary)
        for temporary, path in zip(temporaries, paths, strict=True):
            os.replace(temporary, path)
    return paths
