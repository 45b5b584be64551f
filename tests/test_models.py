import pytest
import torch
from torch import nn

from lpinit.models import mlp, seed_mlp


def test_seed_mlp_is_the_notebooks_network():
    model = seed_mlp()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 750), (750, 320), (320, 50), (50, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 1  # one module, reused
    x = torch.randn(3, 1, 28, 28)
    h = torch.flatten(x, 1)
    for layer in linears:  # the notebook's forward, ReLU on the logits included
        h = torch.relu(layer(h))
    assert torch.equal(model(x), h)


def test_mlp_has_no_relu_on_logits_unless_asked():
    model = mlp([4, 3, 2])
    assert [name for name, _ in model.named_children()] == ["flatten", "fc1", "relu1", "fc2"]
    assert list(mlp([4, 3, 2], final_relu=True).named_children())[-1][0] == "relu2"
    x = torch.randn(5, 4)
    assert torch.equal(model(x), model.fc2(torch.relu(model.fc1(x))))


@pytest.mark.parametrize("widths", [[784], [784, 0], [784, 2.5], []])
def test_mlp_rejects_bad_widths(widths):
    with pytest.raises(ValueError, match="Expected at least two positive integer widths"):
        mlp(widths)
