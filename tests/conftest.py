"""Fixtures shared by the test files: MNIST loaded once, seeded generators and
batches, and for the harness a guard that fails any attempt to train plus a
builder of fake run records."""

from __future__ import annotations

import pytest
import torch

from lpinit.data import load_mnist


@pytest.fixture(scope="session")
def mnist_test():
    """The 10,000 MNIST test images and labels, loaded once per session."""
    return load_mnist(train=False)


@pytest.fixture(scope="session")
def mnist_train():
    """The 60,000 MNIST training images and labels, loaded once per session."""
    return load_mnist(train=True)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def image_batch():
    """256 random 1x28x28 "images" (standard normal), the same in every test."""
    return torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(0))


class TrainingAttempted(AssertionError):
    """Raised by the ``no_training`` guard."""


@pytest.fixture
def no_training(monkeypatch):
    """Make any attempt to run or train a model fail with ``TrainingAttempted``.

    It patches what the runner actually calls (``experiments.measure.run_one``,
    looked up on the module at call time) and, below it, the training loop
    that ``run_one`` calls (``experiments.measure.train``).
    """
    import experiments.measure as measure

    def refuse(*args, **kwargs):
        raise TrainingAttempted("a model was trained, or a run was started, where none should be")

    monkeypatch.setattr(measure, "run_one", refuse)
    monkeypatch.setattr(measure, "train", refuse)
    return TrainingAttempted


def _fake_record(init: str, seed: int, zero: float, acc: float, arch: str = "seed", lr: float = 0.01) -> dict:
    """A run record with the shape ``experiments.measure.run_one`` returns, numbers made up."""
    from experiments import inits

    layers = {f"fc{i}": {"zeros": 1, "elements": 2, "zero_fraction": zero, "dead_units": 0, "units": 5} for i in (1, 2)}
    z = {
        "samples": 10,
        "total_zeros": 5,
        "zero_fraction": zero,
        "dead_units": 0,
        "distinct_patterns": 9,
        "layers": layers,
    }
    hist = [
        {
            "epoch": e,
            "train_loss": None if e == 0 else 1.0 / e,
            "test_loss": 1.0,
            "test_accuracy": acc - 3 + e,
            "zero_fraction": zero,
            "zero_fraction_per_layer": {"fc1": zero},
            "epoch_time_s": 0.1,
        }
        for e in range(4)
    ]
    return {
        "key": f"{init}|{arch}|seed={seed}|lr={lr:g}",
        "init": init,
        "arch": arch,
        "seed": seed,
        "lr": lr,
        "family": inits.family(init),
        "init_info": {},
        "init_time_s": 0.01,
        "at_init": {"lp_batch": z, "heldout": z, "test": z},
        "history": hist,
        "final": {"test_accuracy": acc, "test_loss": 0.5, "train_loss": 0.4, "zero_fraction": zero},
        "stability": [],
        "device": "cpu",
        "wall_time_s": 1.0,
    }


@pytest.fixture
def fake_record():
    """``fake_record(init, seed, zero, acc, arch="seed", lr=0.01)``: a made-up run record."""
    return _fake_record


TINY_BUDGET = {
    "preset": "quick",
    "seeds": "1",
    "epochs": "1",
    "train-subset": "1000",
    "holdout": "1000",
    "lp-batch": "64",
    "stability-images": "8",
    "n-boot": "50",
}
"""Flags that make each run of ``experiments.compare`` take a couple of seconds."""


@pytest.fixture
def tiny_argv(tmp_path):
    """``tiny_argv(*flags)``: argv for ``experiments.compare`` on a tiny budget,
    results under ``tmp_path``; later flags override earlier ones."""

    def build(*flags: str) -> list[str]:
        budget = [text for flag, value in TINY_BUDGET.items() for text in (f"--{flag}", value)]
        return [*budget, "--results-root", str(tmp_path), *flags]

    return build
