"""Finding ReLUs in a forward pass, and the mode switch around it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lpinit.tracing import ReluCall, eval_mode, site_names, watch_relus


class EveryKindOfRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        h = F.relu(self.a(x))  # functional
        h = torch.relu(h - 0.1)  # torch namespace, fed by no module
        h = self.b(h).relu()  # tensor method
        h = (h - 0.2).relu_()  # in-place tensor method
        h = F.relu(h - 0.3, inplace=True)  # functional, in place
        h = torch.relu_(h - 0.4)  # torch namespace, in place
        h = self.relu(self.b(h))  # module, in place
        return self.relu(h - 0.5)  # the same module again


def test_every_kind_of_relu_is_seen_once_in_order():
    model = EveryKindOfRelu()
    calls: list[ReluCall] = []
    with torch.no_grad(), watch_relus(model, calls.append):
        out = model(torch.randn(5, 3))
    assert [c.position for c in calls] == list(range(8))
    assert [c.feeder_name for c in calls] == ["a", None, "b", None, None, None, "b", None]
    assert site_names(calls) == ["a", "relu@1", "b", "relu@3", "relu@4", "relu@5", "b#2", "relu@7"]
    assert calls[-1].output is out
    assert all((c.output >= 0).all() for c in calls)


def test_hooks_and_mode_are_gone_after_the_block_even_on_error():
    model = EveryKindOfRelu()
    calls: list[ReluCall] = []
    with pytest.raises(RuntimeError, match="stop"), watch_relus(model, calls.append):
        model(torch.randn(2, 3))
        raise RuntimeError("stop")
    seen = len(calls)
    model(torch.randn(2, 3))
    F.relu(torch.randn(3))
    assert len(calls) == seen == 8
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_eval_mode_restores_each_submodules_flag_even_on_error():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Dropout(), nn.ReLU())
    model.train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == flags
    with pytest.raises(ValueError, match="inside"), eval_mode(model):
        raise ValueError("inside")
    assert [m.training for m in model.modules()] == flags
