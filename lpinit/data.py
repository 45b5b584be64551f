"""The bundled MNIST, loaded offline as in-memory normalized tensors.

The four IDX files ship gzip-compressed in ``data/mnist/``. On first use they
are decompressed into a cache folder laid out as torchvision expects
(``<cache>/MNIST/raw/<name>``), checked against ``SHA256SUMS.raw``, and read
with ``torchvision.datasets.MNIST(download=False)``. Nothing touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lpinit.validation import DataIntegrityError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_RESTORE_HINT = "Restore it with `git checkout -- data/mnist` (it ships with the repository)."


def bundled_dir() -> Path:
    """Folder holding the bundled ``.gz`` files (``$LPINIT_DATA_DIR/mnist`` if set)."""
    return Path(os.environ.get("LPINIT_DATA_DIR", DATA_DIR)) / "mnist"


def cache_dir() -> Path:
    """Folder for the decompressed files (``$LPINIT_CACHE_DIR`` if set)."""
    return Path(os.environ.get("LPINIT_CACHE_DIR", DATA_DIR / "cache"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_checksums(source: Path) -> dict[str, str]:
    sums = source / "SHA256SUMS.raw"
    if not sums.is_file():
        raise DataIntegrityError(f"Missing checksum file {sums}. {_RESTORE_HINT}")
    pairs = (line.split() for line in sums.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in pairs}


def _decompress(gz_path: Path, target: Path) -> None:
    # Write to a temporary file and rename, so an interrupted run leaves no
    # truncated file behind that would later fail its checksum.
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp, gzip.open(gz_path, "rb") as src:
        shutil.copyfileobj(src, tmp)
    os.replace(tmp.name, target)


def ensure_mnist_raw() -> Path:
    """Decompress and verify the bundled MNIST files; return the torchvision root.

    Raises:
        DataIntegrityError: a bundled file is missing or a decompressed file
            does not match ``SHA256SUMS.raw``; the message names the file.
    """
    source = bundled_dir()
    expected = _expected_checksums(source)
    root = cache_dir()
    raw = root / "MNIST" / "raw"
    for name in MNIST_FILES:
        target = raw / name
        if not target.is_file():
            gz_path = source / f"{name}.gz"
            if not gz_path.is_file():
                raise DataIntegrityError(f"Missing bundled MNIST file {gz_path}. {_RESTORE_HINT}")
            _decompress(gz_path, target)
        if _sha256(target) != expected[name]:
            target.unlink()  # the next call decompresses a fresh copy
            raise DataIntegrityError(
                f"Checksum mismatch for {target} (decompressed from "
                f"{source / (name + '.gz')}); the corrupt copy was removed. If this "
                f"happens again the bundled .gz is damaged: {_RESTORE_HINT}"
            )
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
