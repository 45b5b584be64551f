"""lp_initialize and the controls on Conv2d layers, against independent
oracles: patches cut out by explicit loops, each channel's LP solved by
scipy's linprog (and the MIP by scipy's milp), zeros counted on the model's
own outputs."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from torch import nn

import lpinit.initialize
import lpinit.layer_rows
from lpinit import bias_shift_, cnn, count_relu_zeros, lp_initialize, quantile_bias_
from lpinit.initialize import PLAIN_LP
from lpinit.layer_rows import layer_rows
from lpinit.lp import SOLVERS
from lpinit.tracing import relu_fed_layers

NUMPY_PADDING = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def patches_by_loops(x: np.ndarray, conv: nn.Conv2d) -> np.ndarray:
    """Row (sample s, output position (i, j)), in that order: the entries
    ``x_padded[s, c, i stride + a dilation, j stride + b dilation]`` over
    (c, a, b), one at a time."""
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = conv.padding, conv.stride, conv.dilation, conv.kernel_size
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode=NUMPY_PADDING[conv.padding_mode])
    n, channels, height, width = padded.shape
    out_h, out_w = (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for s in range(n):
        for i in range(out_h):
            for j in range(out_w):
                rows.append(
                    [
                        padded[s, c, i * sh + a * dh, j * sw + b * dw]
                        for c in range(channels)
                        for a in range(kh)
                        for b in range(kw)
                    ]
                )
    return np.array(rows)


def linprog_optimum(H, z, weight_bound, bias_bound, margin, l1=0.0, anchor=False, target_active=None) -> float:
    """One unit's LP (``lpinit.lp.problem``), for scipy's linprog: variables
    ``[d+, d-, e+, e-, s]`` >= 0, one row ``sigma_i (z_i + H_i d + e) + s_i >= m``
    per row of H, ``sigma_i = +1`` on the ``ceil(q n)`` largest ``z_i`` (every
    row without a target) and -1 on the others."""
    n, d_in = H.shape
    sigma = np.ones(n)
    change = l1
    C = 1.0
    if target_active is not None:
        sigma = -np.ones(n)
        sigma[np.argsort(-z, kind="stable")[: math.ceil(target_active * n - 1e-9)]] = 1.0
        change = 1.0
        C = 2 * (d_in * (weight_bound > 0) + (bias_bound > 0)) / margin
    signed = sigma[:, None]
    A_ub = -np.hstack([signed * H, -signed * H, signed, -signed, np.eye(n)])
    b_ub = -(margin - sigma * z)
    cost = np.r_[np.full(2 * d_in, change / weight_bound), [change / bias_bound] * 2, np.full(n, C)]
    bounds = [(0, weight_bound)] * (2 * d_in) + [(0, bias_bound)] * 2 + [(0, None)] * n
    A_eq = b_eq = None
    if anchor:
        mean = H.mean(axis=0)
        A_eq, b_eq = np.r_[mean, -mean, 1.0, -1.0, np.zeros(n)][None, :], [0.0]
    result = linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    assert result.status == 0, result.message
    return float(result.fun)


def milp_count(H, z, weight_bound, bias_bound, margin) -> float:
    """The fewest rows below the margin that a change in the box leaves:
    ``min sum_i u_i`` s.t. ``H_i d + e + M_i u_i >= m - z_i``, u binary, with
    ``M_i`` the largest shortfall the box allows (scipy's milp)."""
    n, d_in = H.shape
    r = margin - z
    big_m = np.maximum(0.0, r + weight_bound * np.abs(H).sum(axis=1) + bias_bound)
    A = np.hstack([H, np.ones((n, 1)), np.diag(big_m)])
    cost = np.r_[np.zeros(d_in + 1), np.ones(n)]
    lower = np.r_[np.full(d_in, -weight_bound), -bias_bound, np.zeros(n)]
    upper = np.r_[np.full(d_in, weight_bound), bias_bound, np.ones(n)]
    integrality = np.r_[np.zeros(d_in + 1), np.ones(n)]
    result = milp(
        cost, constraints=LinearConstraint(A, r, np.inf), bounds=Bounds(lower, upper), integrality=integrality
    )
    assert result.status == 0, result.message
    return float(result.fun)


VARIANTS = {
    "no padding": dict(padding=0),
    "padding 1, stride 2": dict(padding=1, stride=2),
    "dilation 2, reflect padding": dict(padding=2, dilation=2, padding_mode="reflect"),
}
OPTIONS = {
    "plain": {},
    "anchor": dict(anchor="mean"),
    "l1": dict(l1=0.05),
    "target": dict(target_active=0.4),
}


def tiny_conv_net(seed: int, **conv1) -> nn.Sequential:
    """Two 3x3 convolutions with 2 output channels each, a ReLU after each."""
    torch.manual_seed(seed)
    layers = [
        ("conv1", nn.Conv2d(2, 2, 3, **conv1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(2, 2, 3, padding=1)),
        ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()),
    ]
    return nn.Sequential(OrderedDict(layers)).double()


def tiny_batch(samples: int = 3) -> torch.Tensor:
    return torch.randn(samples, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def kernels(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        name: (m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy())
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_channels_lp_matches_linprog_on_patches_cut_by_hand(variant, option):
    """Every channel of both layers, both solvers: the LP built from explicit
    patch loops over the layer's input (earlier layers already changed), with
    the kernel's old weights, solved by linprog."""
    x = tiny_batch()
    options = OPTIONS[option]
    oracle_totals = []
    for solver in SOLVERS:
        model = tiny_conv_net(3, **VARIANTS[variant])
        old = kernels(model)
        report = lp_initialize(model, x, solver=solver, n_jobs=1, **{**PLAIN_LP, "radius": 0.3, **options})
        assert [layer.name for layer in report.layers] == ["conv1", "conv2"]
        with torch.no_grad():
            inputs = {"conv1": x.numpy(), "conv2": torch.relu(model.conv1(x)).numpy()}
        for layer in report.layers:
            weight, bias = old[layer.name]
            H = patches_by_loops(inputs[layer.name], getattr(model, layer.name))
            W = weight.reshape(weight.shape[0], -1)
            Z = H @ W.T + bias
            assert (layer.in_features, layer.out_features, layer.rows) == (W.shape[1], 2, H.shape[0])
            # rho_w from the kernel's entries, the margin from the spread of every row
            assert layer.weight_bound == pytest.approx(0.3 * math.sqrt(3) * weight.std(), rel=1e-12)
            assert layer.margin == pytest.approx(0.1 * Z.std(), rel=1e-12)
            oracle = sum(
                linprog_optimum(
                    H,
                    Z[:, j],
                    layer.weight_bound,
                    layer.bias_bound,
                    layer.margin,
                    layer.l1,
                    options.get("anchor") == "mean",
                    options.get("target_active"),
                )
                for j in range(2)
            )
            assert layer.status_counts == {"optimal": 2}, (solver, layer.name)
            assert layer.lp_objective == pytest.approx(oracle, rel=1e-6, abs=1e-9), (solver, layer.name)
            oracle_totals.append(oracle)
    assert max(oracle_totals) > 1e-2  # not trivially zero


def test_exact_mode_on_a_conv_layer_matches_scipys_milp():
    x = tiny_batch(samples=2)
    model = tiny_conv_net(4, padding=1, stride=2)
    weight, bias = kernels(model)["conv1"]
    report = lp_initialize(
        model, x, radius=0.3, margin=0.2, exact=True, layers=["conv1"], n_jobs=1, rescale=None, target_active=None
    )
    layer = report.layers[0]
    H = patches_by_loops(x.numpy(), model.conv1)
    Z = H @ weight.reshape(2, -1).T + bias
    counts = [milp_count(H, Z[:, j], layer.weight_bound, layer.bias_bound, layer.margin) for j in range(2)]
    assert layer.lp_objective == sum(counts)
    assert sum(counts) > 0


@pytest.mark.parametrize(
    "conv",
    [
        dict(padding=1),
        dict(stride=2),
        dict(padding=(2, 1), dilation=(2, 1), stride=(1, 2)),
        dict(padding=1, padding_mode="reflect"),
        dict(padding=2, padding_mode="replicate"),
        dict(padding=1, padding_mode="circular", stride=2),
    ],
)
def test_rows_are_the_patches_and_give_the_layers_own_output(conv):
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, (3, 2), **conv).double()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    rows = layer_rows(layer, x)
    np.testing.assert_array_equal(rows.take(None), patches_by_loops(x.numpy(), layer))
    chosen = np.array([0, 5, rows.count - 1])
    np.testing.assert_array_equal(rows.take(chosen), patches_by_loops(x.numpy(), layer)[chosen])
    W, b = layer.weight.detach().numpy().reshape(4, -1), layer.bias.detach().numpy()
    with torch.no_grad():
        out = layer(x).permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    np.testing.assert_allclose(rows.preactivations(W, b), out, rtol=1e-12, atol=1e-12)


def test_rows_of_a_layer_too_large_to_keep_whole_come_in_chunks(monkeypatch):
    monkeypatch.setattr(lpinit.layer_rows, "PATCH_CHUNK_ELEMENTS", 500)  # a few samples' patches at a time
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, padding=1, stride=2).double()
    x = torch.randn(7, 3, 8, 8, dtype=torch.float64)
    rows = layer_rows(layer, x)
    assert rows.count * rows.d_in > 500
    np.testing.assert_array_equal(rows.take(None), patches_by_loops(x.numpy(), layer))
    W, b = layer.weight.detach().numpy().reshape(4, -1), layer.bias.detach().numpy()
    with torch.no_grad():
        out = layer(x).permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    np.testing.assert_allclose(rows.preactivations(W, b), out, rtol=1e-12, atol=1e-12)


def test_padding_same_matches_the_layer():
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 4, padding="same", dilation=1).double()  # even kernel: the odd pad goes right
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    rows = layer_rows(layer, x)
    with pytest.warns(UserWarning, match="same"), torch.no_grad():
        out = layer(x).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    W, b = layer.weight.detach().numpy().reshape(3, -1), layer.bias.detach().numpy()
    np.testing.assert_allclose(rows.preactivations(W, b), out, rtol=1e-12, atol=1e-12)


def test_tracing_finds_conv_layers_fed_to_relus_in_any_form():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3)
            self.b = nn.Conv2d(2, 2, 3)
            self.c = nn.Conv2d(2, 2, 1)  # not fed to a ReLU
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = torch.nn.functional.relu(self.a(x))
            x = self.b(x).relu_()
            return torch.relu(self.fc(self.c(x).flatten(1)))

    found = relu_fed_layers(Functional(), torch.zeros(1, 1, 6, 6))
    assert [name for name, _ in found] == ["a", "b", "fc"]
    names = [name for name, _ in relu_fed_layers(cnn(), torch.zeros(2, 1, 28, 28))]
    assert names == ["conv1", "conv2", "fc1", "fc2"]


def test_cnn_is_lenet_style():
    model = cnn()
    assert [name for name, _ in model.named_children()] == [
        "conv1",
        "relu1",
        "pool1",
        "conv2",
        "relu2",
        "pool2",
        "flatten",
        "fc1",
        "relu3",
        "fc2",
        "relu4",
        "fc3",
    ]
    x = torch.randn(3, 1, 28, 28)
    h = torch.max_pool2d(torch.relu(model.conv1(x)), 2)
    h = torch.max_pool2d(torch.relu(model.conv2(h)), 2)
    h = torch.relu(model.fc2(torch.relu(model.fc1(h.flatten(1)))))
    assert torch.equal(model(x), model.fc3(h))  # no ReLU on the logits


@pytest.fixture(scope="module")
def mnist_batch(mnist_train):
    images, _ = mnist_train
    return images[:64]


def literal_zeros(model: nn.Module, batch: torch.Tensor, name: str) -> int:
    """Pre-activations <= 0 of a layer, counted on its own output in the model."""
    out = []
    handle = getattr(model, name).register_forward_hook(lambda m, a, o: out.append(o))
    with torch.no_grad():
        model(batch)
    handle.remove()
    return int((out[0] <= 0).sum())


def spy_on_lp_inputs(monkeypatch) -> list[np.ndarray]:
    """The H of every layer that lp_initialize hands to its LP solver."""
    seen: list[np.ndarray] = []
    original = lpinit.initialize.solve_layer

    def spy(H, W, b, **kwargs):
        seen.append(H)
        return original(H, W, b, **kwargs)

    monkeypatch.setattr(lpinit.initialize, "solve_layer", spy)
    return seen


def test_max_rows_samples_the_lp_rows_but_the_report_counts_every_row(mnist_batch):
    torch.manual_seed(0)
    model = cnn()
    original = snapshot(model)
    report = lp_initialize(
        model,
        mnist_batch,
        max_rows=500,
        layers=["conv1", "conv2"],
        n_jobs=1,
        radius=0.1,
        rescale=None,
        target_active=None,
    )
    conv1, conv2 = report.layers
    assert (conv1.rows, conv1.lp_rows, conv1.batch_size) == (64 * 24 * 24, 500, 64)
    assert (conv2.rows, conv2.lp_rows) == (64 * 8 * 8, 500)
    # before: each layer with its old parameters, the earlier layers changed
    changed = snapshot(model)
    model.load_state_dict({**changed, "conv1.weight": original["conv1.weight"], "conv1.bias": original["conv1.bias"]})
    assert conv1.zeros_before == literal_zeros(model, mnist_batch, "conv1")
    model.load_state_dict({**changed, "conv2.weight": original["conv2.weight"], "conv2.bias": original["conv2.bias"]})
    assert conv2.zeros_before == literal_zeros(model, mnist_batch, "conv2")
    model.load_state_dict(changed)
    for layer in report.layers:
        assert layer.zeros_after == literal_zeros(model, mnist_batch, layer.name)
        assert layer.elements == layer.rows * layer.out_features
    assert "conv1 500 of 36,864" in str(report)


def test_max_rows_is_seeded_and_all_rows_when_there_are_fewer(mnist_batch):
    def run(**kwargs):
        torch.manual_seed(1)
        model = cnn()
        report = lp_initialize(model, mnist_batch[:4], layers=["conv1"], n_jobs=1, **{**PLAIN_LP, **kwargs})
        return report.layers[0], model.conv1.weight.detach().clone()

    first, again, other = run(max_rows=300), run(max_rows=300), run(max_rows=300, row_seed=1)
    assert first[0].lp_objective == again[0].lp_objective and torch.equal(first[1], again[1])
    assert first[0].lp_objective != other[0].lp_objective
    every, capped = run(max_rows=None), run(max_rows=4 * 24 * 24)
    assert every[0].lp_rows == capped[0].lp_rows == 4 * 24 * 24
    assert torch.equal(every[1], capped[1])


def test_the_lp_on_a_sample_is_the_lp_of_those_rows(monkeypatch, mnist_batch):
    """The sample's LP, solved by linprog on the sampled patches (each a row
    of the full patch matrix cut by hand), with bounds from every row."""
    torch.manual_seed(2)
    model = cnn().double()
    x = mnist_batch[:2].double()
    weight, bias = model.conv1.weight.detach().numpy().copy(), model.conv1.bias.detach().numpy().copy()
    seen = spy_on_lp_inputs(monkeypatch)
    report = lp_initialize(
        model, x, layers=["conv1"], max_rows=150, n_jobs=1, radius=0.1, rescale=None, target_active=None
    )
    H_all = patches_by_loops(x.numpy(), model.conv1)
    (H,) = seen
    assert H.shape == (150, 25)
    assert (H[:, None, :] == H_all[None, :, :]).all(axis=2).any(axis=1).all()  # every sampled row is a patch
    layer = report.layers[0]
    W = weight.reshape(6, -1)
    oracle = sum(
        linprog_optimum(H, H @ W[j] + bias[j], layer.weight_bound, layer.bias_bound, layer.margin) for j in range(6)
    )
    assert layer.lp_objective == pytest.approx(oracle, rel=1e-6)
    assert layer.margin == pytest.approx(0.1 * (H_all @ W.T + bias).std(), rel=1e-12)


def test_activity_targets_with_max_rows_are_the_top_rows_of_the_sample(monkeypatch):
    x = torch.randn(6, 2, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU()).double()
    weight, bias = model[0].weight.detach().numpy().reshape(3, -1).copy(), model[0].bias.detach().numpy().copy()
    seen = spy_on_lp_inputs(monkeypatch)
    report = lp_initialize(model, x, target_active=0.5, radius=3.0, max_rows=60, n_jobs=1, rescale=None)
    layer = report.layers[0]
    assert (layer.rows, layer.lp_rows) == (6 * 16, 60)
    (H,) = seen
    z_old = H @ weight.T + bias
    z_new = H @ model[0].weight.detach().numpy().reshape(3, -1).T + model[0].bias.detach().numpy()
    for j in range(3):  # a box this large meets every target: active exactly on the 30 largest of the 60
        top = np.zeros(60, dtype=bool)
        top[np.argsort(-z_old[:, j])[:30]] = True
        np.testing.assert_array_equal(z_new[:, j] > 0, top)
    assert layer.met_target == 3


@pytest.mark.parametrize("mode", ["unit", "layer"])
def test_rescale_on_conv_layers_keeps_every_sign_and_the_rms(mode, mnist_batch):
    torch.manual_seed(7)
    plain, rescaled = cnn(), cnn()
    rescaled.load_state_dict(plain.state_dict())
    options = dict(anchor="mean", radius=0.3, layers=["conv1"], max_rows=400, n_jobs=1)
    lp_initialize(plain, mnist_batch, **{**PLAIN_LP, **options})
    report = lp_initialize(rescaled, mnist_batch, **{**PLAIN_LP, **options, "rescale": mode})
    with torch.no_grad():
        assert torch.equal(plain.conv1(mnist_batch) > 0, rescaled.conv1(mnist_batch) > 0)
    layer = report.layers[0]
    assert layer.preact_rms_after == pytest.approx(layer.preact_rms_before, rel=1e-5)


def test_quantile_bias_and_bias_shift_on_conv_layers_count_every_row():
    x = torch.randn(10, 2, 6, 6, generator=torch.Generator().manual_seed(8)).double()
    torch.manual_seed(9)
    model = tiny_conv_net(9, padding=1)
    weights = {n: w.copy() for n, (w, _) in kernels(model).items()}
    quantile_bias_(model, x, 0.3)
    assert all(np.array_equal(weights[n], w) for n, (w, _) in kernels(model).items())
    with torch.no_grad():
        z1 = model.conv1(x)
        z2 = model.conv2(torch.relu(z1))
    for z in (z1, z2):  # ceil(0.3 * 10 * 36) = 108 rows active per channel, a literal count
        assert ((z > 0).sum(dim=(0, 2, 3)) == 108).all()
    model = tiny_conv_net(9, padding=1)
    result = bias_shift_(model, x, [0.25, 0.6])
    for (change, _), target in zip(result.layers, [0.25, 0.6], strict=True):
        assert literal_zeros(model, x, change.name) / change.elements == pytest.approx(target, abs=1 / 720)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_crash_in_the_second_layer_leaves_the_model_bit_identical(monkeypatch, mnist_batch):
    torch.manual_seed(10)
    model = cnn()
    before = snapshot(model)
    calls = []
    original = lpinit.initialize.solve_layer

    def failing(*args, **kwargs):
        calls.append(kwargs["desc"])
        if len(calls) == 2:
            raise RuntimeError("solver died")
        return original(*args, **kwargs)

    monkeypatch.setattr(lpinit.initialize, "solve_layer", failing)
    with pytest.raises(RuntimeError, match="solver died"):
        lp_initialize(model, mnist_batch, max_rows=300, n_jobs=1, radius=0.1, rescale=None, target_active=None)
    assert calls == ["conv1", "conv2"]
    assert_bit_identical(model, before)


def grouped_net() -> nn.Sequential:
    torch.manual_seed(11)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 3),
        nn.ReLU(),
    )


def test_grouped_convolutions_are_a_clear_error_that_names_the_layers_that_work():
    model, x = grouped_net(), torch.randn(3, 2, 6, 6)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'2' is a Conv2d with groups=2.*layers=\[...\].*can adjust: 0, 5"):
        lp_initialize(model, x, n_jobs=1, radius=0.1, rescale=None, target_active=None)
    assert_bit_identical(model, before)
    with pytest.raises(ValueError, match="groups=2"):
        quantile_bias_(model, x, 0.5)
    assert_bit_identical(model, before)
    report = lp_initialize(model, x, layers=["0", "5"], n_jobs=1, radius=0.1, rescale=None, target_active=None)
    assert [layer.name for layer in report.layers] == ["0", "5"]


@pytest.mark.parametrize(
    "max_rows, error, message",
    [
        (0, ValueError, "max_rows >= 1"),
        (-5, ValueError, "max_rows >= 1"),
        (2.5, TypeError, "max_rows"),
        (True, TypeError, "max_rows"),
    ],
)
def test_bad_max_rows_get_a_clear_error(max_rows, error, message):
    model, x = tiny_conv_net(12), tiny_batch()
    before = snapshot(model)
    with pytest.raises(error, match=message):
        lp_initialize(model, x, max_rows=max_rows, n_jobs=1, radius=0.1, rescale=None, target_active=None)
    assert_bit_identical(model, before)


def test_the_cnns_zero_counts_agree_with_count_relu_zeros(mnist_batch):
    torch.manual_seed(13)
    model = cnn()
    report = lp_initialize(
        model, mnist_batch, anchor="mean", max_rows=300, n_jobs=1, radius=0.1, rescale=None, target_active=None
    )
    counted = count_relu_zeros(model, mnist_batch)
    for layer in report.layers:
        site = counted.site(layer.name)
        assert (layer.zeros_after, layer.elements) == (site.zeros, site.elements)
    assert report.network_zeros_after == counted.total_zeros


def test_a_layer_applied_twice_is_a_clear_error():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(torch.relu(self.conv(x))))

    model = Twice()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'conv' ran 2 times.*layers="):
        lp_initialize(model, torch.randn(2, 2, 5, 5), n_jobs=1, radius=0.1, rescale=None, target_active=None)
    assert_bit_identical(model, before)


def test_the_cnn_benchmark_runs_on_a_tiny_budget(monkeypatch, capsys, tmp_path):
    from experiments import bench_lp

    out = tmp_path / "bench.json"
    argv = ["bench_lp", "--model", "cnn", "--batch-size", "4", "--repeats", "1", "--reference-units", "1"]
    argv += ["--variants", "plain,anchor", "--max-rows-list", "300", "--json", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    bench_lp.main()
    printed = capsys.readouterr().out
    assert "goals: whole CNN" in printed and "max_rows    300" in printed
    record = json.loads(out.read_text())
    for variant in ("plain", "anchor"):
        assert record[variant]["max_objective_difference"] < 1e-6  # cvxpy per unit reaches the same optima


def test_the_max_rows_table_runs_on_a_tiny_budget(monkeypatch, capsys):
    from experiments import max_rows

    monkeypatch.setattr("sys.argv", ["max_rows", "--batch-size", "2", "--max-rows", "100,all"])
    max_rows.main()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["100", "all"]
    objective_all_rows = [float(line.split()[5]) for line in lines[2:]]
    assert objective_all_rows[1] <= objective_all_rows[0] + 1e-6  # every row's LP is the optimum on every row


def test_the_max_rows_table_of_the_target_lp_on_conv2(monkeypatch, capsys):
    from experiments import max_rows

    argv = ["max_rows", "--batch-size", "2", "--max-rows", "50,all", "--layer", "conv2", "--target-active", "0.5"]
    monkeypatch.setattr("sys.argv", [*argv, "--radius", "3", "--rescale", "unit"])
    max_rows.main()
    lines = capsys.readouterr().out.splitlines()
    assert "conv2" in lines[0] and [line.split()[0] for line in lines[2:]] == ["50", "all"]
    for line in lines[2:]:
        met, units, off_target = int(line.split()[5]), int(line.split()[7]), float(line.split()[8])
        assert 0 <= met <= units == 16 and 0.0 <= off_target <= 0.5


def test_identical_input_rows_share_a_side_so_targets_can_be_met(monkeypatch):
    """Blank patches (a zero background) give identical LP rows, which no change of the
    weights can split: the target puts each such group on one side, and the LP meets it."""
    x = torch.zeros(6, 2, 8, 8, dtype=torch.float64)
    x[:, :, 1:3, 1:3] = torch.randn(6, 2, 2, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU()).double()
    seen = spy_on_lp_inputs(monkeypatch)
    report = lp_initialize(model, x, target_active=0.5, radius=3.0, n_jobs=1, rescale=None)
    (H,) = seen
    blank = ~H.any(axis=1)
    assert blank.sum() > 1  # the background patches
    z_new = H @ model[0].weight.detach().numpy().reshape(3, -1).T + model[0].bias.detach().numpy()
    for j in range(3):
        assert len(np.unique(z_new[blank, j] > 0)) == 1  # the blank rows on one side
    assert report.layers[0].met_target == 3


def test_top_rows_keeps_identical_rows_together_by_their_majority():
    from lpinit.lp.problem import top_rows

    H = np.array([[0.0], [0.0], [0.0], [1.0], [2.0], [3.0]])
    Z = np.array([[5.0], [4.0], [-1.0], [3.0], [2.0], [1.0]])  # top 3 by z: rows 0, 1, 3
    assert top_rows(Z, 0.5)[:, 0].tolist() == [True, True, False, True, False, False]
    # rows 0-2 are one input row: two of them are in the top half, so all three are active
    assert top_rows(Z, 0.5, H)[:, 0].tolist() == [True, True, True, True, False, False]
    Z2 = np.array([[5.0], [-4.0], [-1.0], [3.0], [2.0], [1.0]])  # one of three on top: all inactive
    assert top_rows(Z2, 0.5, H)[:, 0].tolist() == [False, False, False, True, True, False]
    H[1, 0] = -0.0  # the same value as 0.0: still one input row of three
    assert top_rows(Z2, 0.5, H)[:, 0].tolist() == [False, False, False, True, True, False]
    H3 = np.c_[H, [7.0, 7.0, 7.0, 1.0, 1.0, 1.0]]  # rows 3-5 differ in the first column only
    assert top_rows(Z, 0.5, H3)[:, 0].tolist() == [True, True, True, True, False, False]
