"""The bundled MNIST, loaded offline as in-memory normalized tensors.

The four IDX files ship gzip-compressed: in ``data/mnist/`` of a clone, and as
``lpinit/mnist/`` inside an installed wheel (``$LPINIT_DATA_DIR/mnist`` if that
is set). On first use they are decompressed into a cache folder laid out as
torchvision expects (``<cache>/MNIST/raw/<name>``), checked against
``SHA256SUMS.raw``, and read with ``torchvision.datasets.MNIST(download=False)``.
Nothing touches the network.

The cache is ``$LPINIT_CACHE_DIR`` if set; else ``data/cache`` in a clone, and
``$XDG_CACHE_HOME/lpinit`` (default ``~/.cache/lpinit``) for an installed
lpinit, whose own folder may be read-only. A corrupt cached file is rebuilt from
its ``.gz``; decompression runs under a file lock, and each file appears by one
rename, so concurrent loads never see a half-written file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
import zlib
from pathlib import Path
from typing import IO

import torch
from filelock import FileLock

from lpinit.files import write_atomic
from lpinit.validation import DataIntegrityError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

PACKAGE_DIR = Path(__file__).resolve().parent
CLONE_DATA_DIR = PACKAGE_DIR.parent / "data"
"""``data/`` of a clone (or an editable install)."""
WHEEL_MNIST_DIR = PACKAGE_DIR / "mnist"
"""Where an installed wheel holds the ``.gz`` files (see pyproject.toml)."""

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_BLOCK = 1 << 20


def bundled_dir() -> Path:
    """Folder holding the bundled ``.gz`` files and their checksums."""
    if "LPINIT_DATA_DIR" in os.environ:
        return Path(os.environ["LPINIT_DATA_DIR"]) / "mnist"
    return WHEEL_MNIST_DIR if WHEEL_MNIST_DIR.is_dir() else CLONE_DATA_DIR / "mnist"


def cache_dir() -> Path:
    """Folder for the decompressed files (see the module docstring)."""
    if "LPINIT_CACHE_DIR" in os.environ:
        return Path(os.environ["LPINIT_CACHE_DIR"])
    if not WHEEL_MNIST_DIR.is_dir():
        return CLONE_DATA_DIR / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # a relative one is to be ignored (XDG spec)
    return base / "lpinit"


def _restore_hint(source: Path) -> str:
    if "LPINIT_DATA_DIR" in os.environ:
        return f"Copy data/mnist of an lpinit clone to {source}, or unset LPINIT_DATA_DIR to use the bundled copy."
    if source == WHEEL_MNIST_DIR:
        return "Reinstall lpinit (`pip install --force-reinstall --no-deps lpinit`) to restore it."
    return "Restore it with `git checkout -- data/mnist` (it ships with the repository)."


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_checksums(source: Path) -> dict[str, str]:
    sums = source / "SHA256SUMS.raw"
    if not sums.is_file():
        raise DataIntegrityError(f"Missing checksum file {sums}. {_restore_hint(source)}")
    expected = {}
    for line in sums.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2:
            expected[fields[1]] = fields[0]
    missing = [name for name in MNIST_FILES if name not in expected]
    if missing:
        raise DataIntegrityError(
            f"Checksum file {sums} lists no checksum for {', '.join(missing)}. {_restore_hint(source)}"
        )
    return expected


def _decompress_checked(gz_path: Path, expected: str, out: IO[bytes]) -> None:
    """Decompress ``gz_path`` into ``out``, checking the SHA-256 of what comes out."""
    digest = hashlib.sha256()
    try:
        with gzip.open(gz_path, "rb") as src:
            while block := src.read(_BLOCK):
                digest.update(block)
                out.write(block)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        damage = f"{type(err).__name__}: {err}"
    else:
        if digest.hexdigest() == expected:
            return
        damage = "its content does not match SHA256SUMS.raw"
    raise DataIntegrityError(f"The bundled MNIST file {gz_path} is damaged ({damage}). {_restore_hint(gz_path.parent)}")


def _rebuild(name: str, source: Path, raw: Path, expected: str) -> None:
    """Make ``raw/name`` a verified copy, decompressing it from ``source`` if
    it is missing or corrupt. Callers hold the cache's lock."""
    target = raw / name
    if target.is_file():
        if _sha256(target) == expected:
            return  # another process repaired it while this one waited for the lock
        warnings.warn(
            f"The cached MNIST file {target} was corrupt (SHA-256 mismatch); rebuilding it from {source}.",
            RuntimeWarning,
            stacklevel=4,
        )
    gz_path = source / f"{name}.gz"
    if not gz_path.is_file():
        raise DataIntegrityError(f"Missing bundled MNIST file {gz_path}. {_restore_hint(source)}")
    write_atomic(target, lambda out: _decompress_checked(gz_path, expected, out))


def ensure_mnist_raw() -> Path:
    """Decompress and verify the bundled MNIST files; return the torchvision root.

    A cached file that fails its checksum is rebuilt from its ``.gz`` with a
    ``RuntimeWarning``.

    Raises:
        DataIntegrityError: a bundled file or its checksum list is missing or
            damaged; the message names the file and how to restore it.
    """
    source = bundled_dir()
    expected = _expected_checksums(source)
    root = cache_dir()
    raw = root / "MNIST" / "raw"
    stale = [name for name in MNIST_FILES if not ((raw / name).is_file() and _sha256(raw / name) == expected[name])]
    if stale:
        try:
            raw.mkdir(parents=True, exist_ok=True)
            lock = FileLock(raw / ".lpinit.lock")
            lock.acquire()
        except OSError as err:
            raise type(err)(
                err.errno,
                f"Cannot write the MNIST cache in {raw} ({err.strerror}). Set LPINIT_CACHE_DIR to a writable folder.",
            ) from err
        try:
            for name in stale:
                _rebuild(name, source, raw, expected[name])
        finally:
            lock.release()
    return root


def load_mnist(train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the MNIST training (60,000) or test (10,000) images as tensors.

    Returns ``(images, labels)``: images float32 of shape (n, 1, 28, 28),
    normalized as x' = (x / 255 - 0.1307) / 0.3081 like the seed notebook's
    ``transforms.Normalize``; labels int64 of shape (n,).

    Example:
        >>> images, labels = load_mnist(train=False)
        >>> images.shape
        torch.Size([10000, 1, 28, 28])
    """
    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    dataset = MNIST(str(ensure_mnist_raw()), train=train, download=False)
    images = dataset.data.unsqueeze(1).float().div_(255.0)
    images.sub_(MNIST_MEAN).div_(MNIST_STD)
    return images, dataset.targets.long()
