import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lpinit.data as data_module
from lpinit.data import MNIST_FILES, MNIST_MEAN, MNIST_STD, bundled_dir, cache_dir, load_mnist
from lpinit.validation import DataIntegrityError

REPO = Path(__file__).resolve().parent.parent


def test_shapes_labels_and_normalization(mnist_test, mnist_train):
    images, labels = mnist_test
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == set(range(10))
    train_images, train_labels = mnist_train
    assert train_images.shape == (60000, 1, 28, 28) and train_labels.shape == (60000,)
    # The normalization constants are the training set's own statistics.
    assert train_images.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert train_images.std().item() == pytest.approx(1.0, abs=1e-3)
    # Background pixels are raw 0, so they map to -mean/std.
    assert images.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-6)


def test_first_pixels_match_the_idx_file(mnist_test):
    with gzip.open(bundled_dir() / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read(16 + 784)[16:]
    expected = (torch.tensor(list(raw), dtype=torch.float32) / 255 - MNIST_MEAN) / MNIST_STD
    assert torch.allclose(mnist_test[0][0].flatten(), expected, atol=1e-6)


def _link_bundle(tmp_path) -> Path:
    """A private bundle under tmp_path/data/mnist: the checksum files copied,
    the .gz files linked (a test that damages one replaces its link)."""
    bundle = tmp_path / "data" / "mnist"
    bundle.mkdir(parents=True)
    for name in ("SHA256SUMS", "SHA256SUMS.raw"):
        (bundle / name).write_bytes((bundled_dir() / name).read_bytes())
    for name in MNIST_FILES:
        (bundle / f"{name}.gz").symlink_to(bundled_dir() / f"{name}.gz")
    return bundle


@pytest.fixture
def private_data(tmp_path, monkeypatch):
    """(bundle, raw cache folder), both private to the test."""
    bundle = _link_bundle(tmp_path)
    monkeypatch.setenv("LPINIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LPINIT_CACHE_DIR", str(tmp_path / "cache"))
    return bundle, tmp_path / "cache" / "MNIST" / "raw"


def _leftovers(raw: Path) -> list[str]:
    """Files in the cache that are neither a finished MNIST file nor the lock."""
    return sorted(p.name for p in raw.iterdir() if p.name not in MNIST_FILES and p.name != ".lpinit.lock")


def test_corrupt_cache_file_is_rebuilt_in_the_same_call(private_data):
    # Reproduces: a corrupt cached file raised DataIntegrityError once, and
    # only the next call decompressed a fresh copy.
    _bundle, raw = private_data
    load_mnist(train=False)
    target = raw / "t10k-labels-idx1-ubyte"
    target.write_bytes(b"not mnist")
    with pytest.warns(RuntimeWarning, match=r"t10k-labels-idx1-ubyte was corrupt.*rebuilding"):
        _images, labels = load_mnist(train=False)
    with gzip.open(bundled_dir() / "t10k-labels-idx1-ubyte.gz") as f:
        expected = torch.tensor(list(f.read()[8:]))
    assert torch.equal(labels, expected)
    assert _leftovers(raw) == []


def _truncated(gz: bytes) -> bytes:
    return gz[: len(gz) // 2]


def _flipped(gz: bytes) -> bytes:
    damaged = bytearray(gz)
    damaged[len(damaged) // 2] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncated, "EOFError"),
        (_flipped, "BadGzipFile|error"),  # gzip's CRC check, or zlib's on a broken block
        (lambda gz: b"<html>404</html>", "BadGzipFile: Not a gzipped file"),
        (lambda gz: gzip.compress(b"\x00" * 100), "does not match SHA256SUMS.raw"),
    ],
    ids=["truncated", "flipped-byte", "not-gzip", "wrong-content"],
)
def test_damaged_gz_is_a_data_integrity_error_and_leaves_no_temporary(private_data, damage, reason):
    # Reproduces: a truncated .gz raised a bare EOFError (a flipped byte or a
    # non-gzip file a bare BadGzipFile) and left a temporary file in the cache.
    bundle, raw = private_data
    gz_path = bundle / "t10k-labels-idx1-ubyte.gz"
    gz = gz_path.read_bytes()
    gz_path.unlink()
    gz_path.write_bytes(damage(gz))
    with pytest.raises(DataIntegrityError) as error:
        load_mnist(train=False)
    message = str(error.value)
    assert str(gz_path) in message
    assert re.search(reason, message)
    assert "LPINIT_DATA_DIR" in message  # the fix, for a bundle the environment pointed to
    assert not (raw / "t10k-labels-idx1-ubyte").exists()
    assert _leftovers(raw) == []


def test_missing_bundled_file_says_how_to_restore(private_data):
    bundle, _raw = private_data
    (bundle / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataIntegrityError, match=r"Missing bundled MNIST file .*t10k-images-idx3-ubyte\.gz"):
        load_mnist(train=False)


def test_restore_hint_fits_where_the_bundle_lives(monkeypatch):
    monkeypatch.delenv("LPINIT_DATA_DIR", raising=False)
    clone = data_module.CLONE_DATA_DIR / "mnist"
    assert "git checkout -- data/mnist" in data_module._restore_hint(clone)
    assert "pip install --force-reinstall" in data_module._restore_hint(data_module.WHEEL_MNIST_DIR)


def test_clone_and_installed_layouts_pick_their_folders(tmp_path, monkeypatch):
    for name in ("LPINIT_DATA_DIR", "LPINIT_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    # a clone (or an editable install): data/mnist and data/cache beside the package
    monkeypatch.setattr(data_module, "WHEEL_MNIST_DIR", tmp_path / "not-there")
    assert bundled_dir() == REPO / "data" / "mnist"
    assert cache_dir() == REPO / "data" / "cache"
    # an installed wheel: its own copy, and a cache in the user's cache folder
    wheel_copy = tmp_path / "site-packages" / "lpinit" / "mnist"
    wheel_copy.mkdir(parents=True)
    monkeypatch.setattr(data_module, "WHEEL_MNIST_DIR", wheel_copy)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert bundled_dir() == wheel_copy
    assert cache_dir() == tmp_path / "home" / ".cache" / "lpinit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lpinit"
    # the overrides win everywhere
    monkeypatch.setenv("LPINIT_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("LPINIT_CACHE_DIR", str(tmp_path / "c"))
    assert bundled_dir() == tmp_path / "d" / "mnist"
    assert cache_dir() == tmp_path / "c"


_LOADER = """
import hashlib, json, os, sys, time, warnings
from pathlib import Path
import lpinit.data
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.01)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    images, labels = lpinit.data.load_mnist(train=True)
digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()
messages = [str(w.message) for w in caught]
print(json.dumps({"n": len(labels), "labels": labels[:1000].tolist(), "sha256": digest, "warnings": messages}))
"""


def test_two_processes_repair_a_corrupt_cache_at_once(private_data, tmp_path, mnist_train):
    # Reproduces: a loader that found a corrupt cache failed (DataIntegrityError,
    # "the corrupt copy was removed") instead of repairing it, and two at once
    # could unlink the same file, the second with a raw FileNotFoundError.
    _bundle, raw = private_data
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).write_bytes(b"half-written")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    go = tmp_path / "go"
    loaders = [
        subprocess.Popen(
            [sys.executable, "-c", _LOADER, str(tmp_path / f"ready{i}"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert all(p.poll() is None for p in loaders), [p.communicate() for p in loaders]
        time.sleep(0.05)
    go.touch()  # both are past their imports: they start loading together
    results = []
    for loader in loaders:
        out, err = loader.communicate(timeout=300)
        assert loader.returncode == 0, err
        results.append(json.loads(out))
    for result in results:
        assert result["n"] == 60000
        assert result["labels"] == mnist_train[1][:1000].tolist()
        assert result["sha256"] == hashlib.sha256(mnist_train[0].numpy().tobytes()).hexdigest()
    # Under the lock, each corrupt file is rebuilt once, by one of the two.
    warned = [message for result in results for message in result["warnings"]]
    rebuilt = sorted(Path(re.search(r"cached MNIST file (\S+) was corrupt", m)[1]).name for m in warned)
    assert rebuilt == sorted(MNIST_FILES)
    assert _leftovers(raw) == []
