import gzip
import shutil

import pytest
import torch

from lpinit.data import MNIST_MEAN, MNIST_STD, bundled_dir, load_mnist
from lpinit.validation import DataIntegrityError


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


def _copy_bundle(tmp_path):
    bundle = tmp_path / "data" / "mnist"
    shutil.copytree(bundled_dir(), bundle)
    return bundle


def test_corrupt_cache_file_is_named_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("LPINIT_CACHE_DIR", str(tmp_path / "cache"))
    load_mnist(train=False)
    target = tmp_path / "cache" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    target.write_bytes(b"not mnist")
    with pytest.raises(DataIntegrityError, match=r"t10k-labels-idx1-ubyte.*git checkout"):
        load_mnist(train=False)
    assert not target.exists()
    _images, labels = load_mnist(train=False)  # decompressed afresh from the bundle
    assert labels.shape == (10000,)


def test_missing_bundled_file_says_how_to_restore(tmp_path, monkeypatch):
    bundle = _copy_bundle(tmp_path)
    (bundle / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setenv("LPINIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LPINIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match=r"t10k-images-idx3-ubyte\.gz.*git checkout"):
        load_mnist(train=False)


def test_damaged_bundle_fails_its_checksum(tmp_path, monkeypatch):
    bundle = _copy_bundle(tmp_path)
    (bundle / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00" * 100))
    monkeypatch.setenv("LPINIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LPINIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match=r"Checksum mismatch.*t10k-labels-idx1-ubyte"):
        load_mnist(train=False)
