import pytest
import torch

from lpinit.data import load_mnist


@pytest.fixture(scope="session")
def mnist_test():
    """The 10,000 MNIST test images and labels, loaded once per session."""
    return load_mnist(train=False)


@pytest.fixture(scope="session")
def mnist_train():
    return load_mnist(train=True)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
