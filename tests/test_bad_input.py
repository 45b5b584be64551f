"""Adversarial input to lp_initialize and the controls: a clear error, and
the model bit-identical; never a silent wrong result. Each test reproduces a
defect found by trying lpinit as a hostile new user would."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lpinit import count_relu_zeros, lp_initialize, quantile_bias_
from lpinit.initialize import PLAIN_LP
from lpinit.lp import solve_layer


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def two_relu_layers(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5), nn.ReLU())


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(32, 20, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "model, radius, message",
    [
        # reproduction: lp_initialize(m, x, radius=1e300) on Linear(20,64)-ReLU-Linear(64,5) wrote inf into
        # the bias, reported every unit optimal, and the CLI exited 0 with inf weights saved
        (nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)), 1e300, r"layer '0'.*radius"),
        # with two ReLU-fed layers the same call blamed the user's finite batch ("finite values in H")
        (two_relu_layers(), 1e300, r"layer '0'.*radius"),
        (two_relu_layers(), 1e10, r"layer '2'.*Lower them"),
        # a change that is finite in float64 but not in the model's float32
        (two_relu_layers(), 5e13, r"radius"),
    ],
)
def test_a_huge_radius_is_an_error_naming_the_layer_and_the_option(model, radius, message, batch):
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        lp_initialize(model, batch, radius=radius, n_jobs=1, rescale=None, target_active=None)
    assert_bit_identical(model, before)


def test_huge_but_finite_inputs_are_reported_as_an_input_problem(batch):
    # reproduction: a batch of +-1e37 reached "HiGHS refused the layer's LP ... this is a bug in lpinit"
    model = two_relu_layers()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"input of layer '0'.*1e\+37.*Normalize the batch"):
        lp_initialize(model, batch.sign() * 1e37, n_jobs=1, radius=0.1, rescale=None, target_active=None)
    assert_bit_identical(model, before)


def frozen_batchnorm_model() -> nn.Sequential:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5), nn.ReLU())
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    return model


@pytest.mark.parametrize("call", ["lp_initialize", "count_relu_zeros", "quantile_bias_"])
@pytest.mark.parametrize("fails", [False, True])
def test_each_submodule_gets_its_own_mode_back(call, fails, batch):
    # reproduction: m.train(); m[1].eval(); lp_initialize(m, x) came back with m[1].training == True
    model = frozen_batchnorm_model()
    data = batch[:, :7] if fails else batch  # the wrong width makes the forward pass raise
    run = {
        "lp_initialize": lambda: lp_initialize(model, data, n_jobs=1, radius=0.1, rescale=None, target_active=None),
        "count_relu_zeros": lambda: count_relu_zeros(model, data),
        "quantile_bias_": lambda: quantile_bias_(model, data, 0.5),
    }[call]
    if fails:
        with pytest.raises(ValueError):
            run()
    else:
        run()
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True]


@pytest.mark.parametrize(
    "make_input, kwargs, error, message",
    [
        (lambda x: x[0], {}, ValueError, r"at least 2 dimensions.*unsqueeze\(0\)"),
        (lambda x: x.to("meta"), {}, ValueError, "meta device"),
        (lambda x: x, {"layers": [0]}, TypeError, r"layer names \(str\).*0, 2"),
        (lambda x: x, {"layers": []}, ValueError, r"empty list.*layers=None"),
        (lambda x: x, {"layers": "fc9"}, ValueError, r"Unknown layer name.*0, 2"),
    ],
)
def test_bad_batches_and_layer_lists_get_a_clear_error(make_input, kwargs, error, message, batch):
    model = two_relu_layers()
    before = snapshot(model)
    with pytest.raises(error, match=message):
        lp_initialize(model, make_input(batch), n_jobs=1, **{**PLAIN_LP, **kwargs})
    assert_bit_identical(model, before)


def test_a_model_on_the_meta_device_gets_a_clear_error(batch):
    model = two_relu_layers().to("meta")
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        lp_initialize(model, batch, n_jobs=1, radius=0.1, rescale=None, target_active=None)


def test_tied_weights_get_a_clear_error(batch):
    # reproduction: fc2.weight = fc1.weight raised a bare KeyError
    model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU())
    model[2].weight = model[0].weight
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"tied weights.*untie"):
        lp_initialize(model, batch, n_jobs=1, radius=0.1, rescale=None, target_active=None)
    assert_bit_identical(model, before)


def test_more_jobs_than_cores_are_capped_with_a_warning():
    from joblib import cpu_count

    H = torch.randn(40, 5, generator=torch.Generator().manual_seed(3)).double().numpy()
    W, b = H[:4].copy(), H[0, :4].copy()
    with pytest.warns(UserWarning, match=f"more than the {cpu_count()} cores"):
        solution = solve_layer(H, W, b, weight_bound=0.1, bias_bound=0.1, margin=0.1, n_jobs=cpu_count() + 7)
    assert solution.processes <= cpu_count()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve_layer(H, W, b, weight_bound=0.1, bias_bound=0.1, margin=0.1, n_jobs=1)
