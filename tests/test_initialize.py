"""lp_initialize, checked against independent scipy.optimize.linprog solves."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linprog
from torch import nn

import lpinit.initialize as initialize_module
from lpinit import lp_initialize, mlp, seed_mlp
from lpinit.initialize import PLAIN_LP


def linprog_objective(H, w, b, weight_bound, bias_bound, margin):
    """The unit LP solved by scipy: variables (d, e, s), min sum s,
    s.t. -(H d + e + s) <= -(margin - H w - b)."""
    n, d_in = H.shape
    cost = np.r_[np.zeros(d_in + 1), np.ones(n)]
    A_ub = -np.hstack([H, np.ones((n, 1)), np.eye(n)])
    b_ub = -(margin - H @ w - b)
    bounds = [(-weight_bound, weight_bound)] * d_in + [(-bias_bound, bias_bound)] + [(0, None)] * n
    result = linprog(cost, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    assert result.status == 0
    return result.fun


@pytest.fixture(scope="module")
def small_batch():
    from lpinit.data import load_mnist

    images, _ = load_mnist(train=True)
    return images[:48]


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_objectives_match_linprog_with_earlier_layers_updated(small_batch):
    torch.manual_seed(0)
    model = mlp([784, 12, 6, 10])
    old = {
        name: (m.weight.detach().double().numpy().copy(), m.bias.detach().double().numpy().copy())
        for name, m in model.named_children()
        if isinstance(m, nn.Linear)
    }
    report = lp_initialize(
        model, small_batch, radius=0.1, margin=0.1, n_jobs=1, progress=False, rescale=None, target_active=None
    )
    assert [layer.name for layer in report.layers] == ["fc1", "fc2"]  # fc3 feeds no ReLU

    x = small_batch.flatten(1).double()
    with torch.no_grad():  # fc2's LP must see fc1 as already updated
        inputs = {"fc1": x.numpy(), "fc2": torch.relu(model.fc1.double()(x)).numpy()}
    for layer in report.layers:
        W, b = old[layer.name]
        expected = sum(
            linprog_objective(inputs[layer.name], W[j], b[j], layer.weight_bound, layer.bias_bound, layer.margin)
            for j in range(W.shape[0])
        )
        assert layer.lp_objective == pytest.approx(expected, rel=1e-6, abs=1e-9)
        assert layer.status_counts == {"optimal": W.shape[0]}


def test_bounds_are_respected_and_zeros_drop(small_batch):
    torch.manual_seed(1)
    model = seed_mlp()
    before = snapshot(model)
    params_before = [id(p) for p in model.parameters()]
    report = lp_initialize(
        model, small_batch, radius=0.1, margin=0.1, n_jobs=1, progress=False, rescale=None, target_active=None
    )
    assert [id(p) for p in model.parameters()] == params_before
    assert [layer.name for layer in report.layers] == ["fc1", "fc2", "fc3", "fc4"]
    for layer in report.layers:
        dW = model.get_submodule(layer.name).weight - before[f"{layer.name}.weight"]
        db = model.get_submodule(layer.name).bias - before[f"{layer.name}.bias"]
        assert dW.abs().max().item() <= layer.weight_bound * (1 + 1e-6) + 1e-7
        assert db.abs().max().item() <= layer.bias_bound * (1 + 1e-6) + 1e-7
        assert layer.max_abs_weight_change == pytest.approx(dW.abs().max().item(), rel=1e-4, abs=1e-7)
        assert layer.below_margin_after <= layer.below_margin_before
        # the bound is radius * sqrt(3) std(W), i.e. radius / sqrt(fan_in) at PyTorch's init
        assert layer.weight_bound == pytest.approx(0.1 / np.sqrt(layer.in_features), rel=0.05)
    assert report.network_zeros_after < report.network_zeros_before
    as_dict = report.to_dict()
    assert as_dict["layers"][0]["weight_bound"] == report.layers[0].weight_bound
    assert "fc4" in str(report)


def test_dtype_and_functional_relus_are_supported(small_batch):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = nn.Linear(784, 8), nn.Linear(8, 10)

        def forward(self, x):
            return self.out(F.relu(self.hidden(x.flatten(1))))

    torch.manual_seed(2)
    model = Functional().double()
    report = lp_initialize(model, small_batch, n_jobs=1, progress=False, radius=0.1, rescale=None, target_active=None)
    assert [layer.name for layer in report.layers] == ["hidden"]
    assert model.hidden.weight.dtype == torch.float64


def test_layers_restricts_by_name(small_batch):
    torch.manual_seed(3)
    model = mlp([784, 10, 8, 10])
    before = snapshot(model)
    report = lp_initialize(
        model, small_batch, layers=["fc2"], n_jobs=1, progress=False, radius=0.1, rescale=None, target_active=None
    )
    assert [layer.name for layer in report.layers] == ["fc2"]
    assert torch.equal(model.fc1.weight, before["fc1.weight"])
    assert not torch.equal(model.fc2.weight, before["fc2.weight"])


@pytest.mark.parametrize(
    "kwargs, batch_fn, error, message",
    [
        ({}, lambda b: b.clone().index_fill_(0, torch.tensor([3]), float("nan")), ValueError, "NaN or inf"),
        ({}, lambda b: b.flatten(1)[:, :100], ValueError, "784 features"),
        ({}, lambda b: b[:0], ValueError, "at least one sample"),
        ({}, lambda b: b.long(), TypeError, "floating dtype"),
        ({"radius": -0.1}, lambda b: b, ValueError, "radius to be a finite number >= 0"),
        ({"margin": -1.0}, lambda b: b, ValueError, "margin to be a finite number >= 0"),
        ({"layers": ["fc9"]}, lambda b: b, ValueError, "Unknown layer.*fc1, fc2"),
        ({"solver": "gurobi"}, lambda b: b, ValueError, "Unknown solver 'gurobi'. Valid choices"),
    ],
)
def test_bad_input_raises_and_leaves_the_model_unchanged(small_batch, kwargs, batch_fn, error, message):
    torch.manual_seed(4)
    model = mlp([784, 10, 8, 10])
    before = snapshot(model)
    with pytest.raises(error, match=message):
        lp_initialize(model, batch_fn(small_batch), n_jobs=1, progress=False, **{**PLAIN_LP, **kwargs})
    assert_unchanged(model, before)


def test_model_without_relu_fed_linear_is_rejected(small_batch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Tanh())
    with pytest.raises(ValueError, match=r"with none\. lp_initialize adjusts such layers only"):
        lp_initialize(model, small_batch, progress=False, radius=0.1, rescale=None, target_active=None)


def test_failure_midway_leaves_the_model_exactly_as_before(small_batch, monkeypatch):
    torch.manual_seed(5)
    model = mlp([784, 10, 8, 10])
    before = snapshot(model)
    real_solve = initialize_module.solve_layer
    calls = []

    def solve_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("solver crashed on the second layer")
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(initialize_module, "solve_layer", solve_then_fail)
    with pytest.raises(RuntimeError, match="second layer"):
        lp_initialize(model, small_batch, n_jobs=1, progress=False, radius=0.1, rescale=None, target_active=None)
    assert_unchanged(model, before)


def test_units_that_fail_keep_their_weights_and_are_counted(small_batch, monkeypatch):
    torch.manual_seed(6)
    model = mlp([784, 10, 10])
    before = snapshot(model)
    real_solve = initialize_module.solve_layer

    def fail_unit_zero(*args, **kwargs):
        solution = real_solve(*args, **kwargs)
        solution.delta_weight[0] = 0.0
        solution.delta_bias[0] = 0.0
        solution.status[0] = "failed"
        solution.objective[0] = np.nan
        return solution

    monkeypatch.setattr(initialize_module, "solve_layer", fail_unit_zero)
    report = lp_initialize(model, small_batch, n_jobs=1, progress=False, radius=0.1, rescale=None, target_active=None)
    assert report.status_counts() == {"optimal": 9, "failed": 1}
    assert torch.equal(model.fc1.weight[0], before["fc1.weight"][0])
    assert not torch.equal(model.fc1.weight[1], before["fc1.weight"][1])
