"""The notebook's identity L_gen == A'x', its precondition, and its limits.

Oracles: the model's own forward pass (f = A x + c), torch.func.jacrev (A is
the Jacobian), a hand-built one-unit network whose L_gen is known in closed
form, and the four forward evaluations of L_gen itself (A'x' is computed
independently, from masked weight products).
"""

import itertools
from collections import OrderedDict

import pytest
import torch
from torch import nn

from lpinit.models import seed_mlp
from lpinit.theory import (
    activation_pattern,
    evaluate_perturbation,
    l_gen,
    linear_map_change,
    local_affine_map,
    pattern_change,
    predicted_l_gen,
)

WIDTHS = {1: (5, 7, 3), 2: (5, 7, 6, 3), 3: (6, 8, 7, 5, 4)}


def random_net(widths, bias=True, final_relu=False, seed=0) -> nn.Sequential:
    """A float64 Flatten-Linear-ReLU chain with N(0, 1/fan_in) weights and N(0, 0.1^2) biases."""
    g = torch.Generator().manual_seed(seed)
    layers = [("flatten", nn.Flatten())]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(fan_in, fan_out, bias=bias, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64) / fan_in**0.5)
            if bias:
                linear.bias.copy_(0.1 * torch.randn(fan_out, generator=g, dtype=torch.float64))
        layers.append((f"fc{i + 1}", linear))
        if i < len(widths) - 2 or final_relu:
            layers.append((f"relu{i + 1}", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


def perturbations(model, x, size, seed=1):
    """x' and P' of relative size ``size`` (per sample / per parameter tensor)."""
    g = torch.Generator().manual_seed(seed)
    x_pert = size * x.flatten(1).norm(dim=1).reshape(-1, *[1] * (x.dim() - 1)) / x[0].numel() ** 0.5
    x_pert = x_pert * torch.randn(x.shape, generator=g, dtype=x.dtype)
    param_pert = {
        name: size * p.detach().pow(2).mean().sqrt() * torch.randn(p.shape, generator=g, dtype=p.dtype)
        for name, p in model.named_parameters()
    }
    return x_pert, param_pert


def apply(A, v):
    return (A @ v.flatten(1)[:, :, None])[..., 0]


def jacobian(model, x):
    return torch.func.vmap(torch.func.jacrev(lambda xi: model(xi[None])[0].flatten()))(x).flatten(2)


CASES = [(depth, bias, final) for depth in WIDTHS for bias in (True, False) for final in (False, True)]


@pytest.mark.parametrize("depth,bias,final_relu", CASES)
def test_affine_map_reproduces_forward_and_matches_jacobian(depth, bias, final_relu):
    model = random_net(WIDTHS[depth], bias, final_relu, seed=depth)
    x = torch.randn(16, WIDTHS[depth][0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    A, c = local_affine_map(model, x)
    assert A.shape == (16, WIDTHS[depth][-1], WIDTHS[depth][0]) and A.dtype == torch.float64
    torch.testing.assert_close(apply(A, x) + c, model(x).detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(A, jacobian(model, x), rtol=0, atol=1e-12)
    if not bias:
        assert c.abs().max() == 0  # a bias-free ReLU network is positively homogeneous


@pytest.mark.parametrize("depth,bias,final_relu", CASES)
def test_l_gen_equals_a_prime_x_prime_when_pattern_is_unchanged(depth, bias, final_relu):
    model = random_net(WIDTHS[depth], bias, final_relu, seed=10 + depth)
    x = torch.randn(12, WIDTHS[depth][0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_pert, param_pert = perturbations(model, x, 1e-4)
    change = pattern_change(model, x, x_pert, param_pert)
    assert not change.changed.any(), "perturbation too large for this test: the pattern changed"
    assert change.flipped_fraction.max() == 0 and change.identity_exact.all()

    loss = l_gen(model, x, x_pert, param_pert)
    a_prime = linear_map_change(model, x, param_pert)
    expected = apply(a_prime, x_pert)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-13)
    # Not a vacuous 0 == 0 (a final ReLU can zero a sample's whole output):
    live = expected.norm(dim=1) > 1e-11
    assert live.sum() >= 2
    assert ((loss - expected).norm(dim=1)[live] / expected.norm(dim=1)[live]).max() < 1e-4
    torch.testing.assert_close(predicted_l_gen(model, x, x_pert, param_pert), expected, rtol=0, atol=1e-15)


def test_notebook_expansion_term_by_term():
    """Each of the four evaluations is the affine map of its own pattern, as the notebook expands."""
    model = random_net(WIDTHS[2], seed=5)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x_pert, param_pert = perturbations(model, x, 1e-4, seed=6)
    assert not pattern_change(model, x, x_pert, param_pert).changed.any()
    A, c = local_affine_map(model, x)
    A_star, _c_star = local_affine_map(model, x, param_pert)
    f_x_star = model(x + x_pert).detach()
    torch.testing.assert_close(f_x_star, apply(A, x + x_pert) + c, rtol=0, atol=1e-12)  # f(x*, P) = A x* + c
    torch.testing.assert_close(A_star - A, linear_map_change(model, x, param_pert), rtol=0, atol=0)
    assert torch.equal(activation_pattern(model, x), activation_pattern(model, x + x_pert))


def test_seed_mlp_on_mnist_images(mnist_test):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = seed_mlp().double()
    x = mnist_test[0][:4].double()
    A, c = local_affine_map(model, x)
    assert A.shape == (4, 10, 784)
    torch.testing.assert_close(apply(A, x) + c, model(x).detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(A[:2], jacobian(model, x[:2]), rtol=0, atol=1e-12)
    assert activation_pattern(model, x).shape == (4, 750 + 320 + 50 + 10)

    # 1130 units: only a tiny perturbation leaves every pattern alone, and then
    # L_gen (~1e-10 of f) carries float64 cancellation error of ~1e-16 of f.
    x_pert, param_pert = perturbations(model, x, 1e-5, seed=7)
    effect = evaluate_perturbation(model, x, x_pert, param_pert)
    assert not effect.change.changed.any(), "perturbation too large for this test: the pattern changed"
    expected = apply(linear_map_change(model, x, param_pert), x_pert)
    torch.testing.assert_close(effect.predicted, expected, rtol=1e-12, atol=1e-18)
    rel = (effect.l_gen - expected).norm(dim=1) / expected.norm(dim=1)
    assert rel.max() < 1e-3


def test_identity_fails_when_a_unit_flips_hand_built():
    """f(x) = w2 relu(w1 x + b1): x = 0.99 is off (pre-activation -0.01), x* = 1.01 is on.

    f(x,P) = f(x,P*) = 0, f(x*,P) = 0.01, f(x*,P*) = 1.5 * 0.01, so L_gen = 0.005,
    while A(x; P) = A(x; P*) = 0 gives A'x' = 0.
    """
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(-1.0)
        model[2].weight.fill_(1.0)
    x = torch.tensor([[0.99]], dtype=torch.float64)
    x_pert = torch.tensor([[0.02]], dtype=torch.float64)
    param_pert = {"2.weight": torch.tensor([[0.5]], dtype=torch.float64)}
    change = pattern_change(model, x, x_pert, param_pert)
    assert change.changed.all() and change.input_changed.all() and not change.param_changed.any()
    assert not change.identity_exact.any() and change.flipped_fraction.item() == 1.0
    expected = torch.tensor([[0.005]], dtype=torch.float64)
    torch.testing.assert_close(l_gen(model, x, x_pert, param_pert), expected, rtol=0, atol=1e-15)
    assert predicted_l_gen(model, x, x_pert, param_pert).abs().max() == 0


def test_identity_fails_for_large_random_perturbations():
    model = random_net(WIDTHS[3], seed=8)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x_pert, param_pert = perturbations(model, x, 1.0, seed=10)
    effect = evaluate_perturbation(model, x, x_pert, param_pert)
    broken = ~effect.change.identity_exact
    assert broken.float().mean() > 0.5
    error = (effect.l_gen - effect.predicted).norm(dim=1)
    scale = effect.l_gen.norm(dim=1) + effect.predicted.norm(dim=1)
    assert (error[broken] / scale[broken]).median() > 0.05  # off by a clear margin, not roundoff
    torch.testing.assert_close(effect.l_gen[~broken], effect.predicted[~broken], rtol=0, atol=1e-12)


def test_weaker_condition_than_the_notebooks_suffices():
    """If only P' changes the pattern (the same way at x and x*), L_gen == A'x' still holds."""
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model[0].bias.copy_(torch.tensor([0.0, -0.1]))  # unit 2 is off for every x
        model[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        model[2].bias.zero_()
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    x_pert = torch.full_like(x, 0.1)
    param_pert = {"0.weight": torch.tensor([[0.0], [1.0]], dtype=torch.float64)}  # unit 2 turns on
    change = pattern_change(model, x, x_pert, param_pert)
    assert change.changed.all() and change.param_changed.all() and change.identity_exact.all()
    predicted = predicted_l_gen(model, x, x_pert, param_pert)
    torch.testing.assert_close(l_gen(model, x, x_pert, param_pert), predicted, rtol=0, atol=1e-15)
    assert predicted.abs().min() > 0.09


def test_functional_relu_and_inplace_relu_are_traced():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):
            return torch.relu_(self.b(torch.nn.functional.relu(self.a(x))))

    model = Functional().double()
    x = torch.randn(6, 4, dtype=torch.float64)
    A, c = local_affine_map(model, x)
    torch.testing.assert_close(apply(A, x) + c, model(x).detach(), rtol=0, atol=1e-12)
    assert activation_pattern(model, x).shape == (6, 8)


def test_model_is_not_mutated_and_mode_is_kept():
    model = random_net(WIDTHS[1], seed=11).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 5, dtype=torch.float64)
    x_pert, param_pert = perturbations(model, x, 0.1)
    evaluate_perturbation(model, x, x_pert, param_pert)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) * 2)


@pytest.mark.parametrize(
    "model,shape,match",
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.ReLU(), nn.Linear(8, 2)), (3, 1, 4, 4), "Conv2d"),
        (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)), (3, 4), "BatchNorm1d"),
        (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), (3, 4), "Tanh"),
        (Scaled(), (3, 4), "input of Linear 'b'"),
    ],
)
def test_unsupported_models_raise_clear_errors(model, shape, match):
    with pytest.raises(ValueError, match=match) as err:
        local_affine_map(model, torch.randn(shape))
    assert "Expected a chain of nn.Linear layers and ReLUs" in str(err.value)
    assert "jacrev" in str(err.value)


def test_bad_perturbations_raise():
    model = random_net(WIDTHS[1])
    x = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"unknown 'fc9\.weight'"):
        l_gen(model, x, x, {"fc9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"shape \(7, 5\)"):
        l_gen(model, x, x, {"fc1.weight": torch.zeros(5, 7)})
    with pytest.raises(ValueError, match="shape of x"):
        l_gen(model, x, x[:2], {})
    with pytest.raises(ValueError, match="Expected a perturbation"):
        pattern_change(model, x)
    with pytest.raises(TypeError, match="dict of parameter name"):
        l_gen(model, x, x, [torch.zeros(1)])


def test_measure_stability_on_a_tiny_model():
    from experiments.stability import measure_stability

    model = random_net((16, 12, 8, 4), seed=12).float()
    images = torch.randn(40, 1, 4, 4, generator=torch.Generator().manual_seed(13))
    rows = measure_stability(
        model,
        images,
        sizes=(1e-1, 1e-7, 1.0),
        n_samples=32,
        n_perturbations=3,
        generator=torch.Generator().manual_seed(14),
    )
    assert [r["size"] for r in rows] == [1e-7, 1e-1, 1.0]
    assert next(model.parameters()).dtype == torch.float32  # measured on a copy
    tiny, _, huge = rows
    assert tiny["n_samples"] == 32 and tiny["units"] == 12 + 8
    assert tiny["pattern_changed"] == 0 and tiny["identity_holds"] == 1 and tiny["flipped_units"] == 0
    assert huge["pattern_changed"] > 0.5 and huge["identity_holds_when_not_exact"] < 0.5
    for row in rows:
        for key in ("pattern_changed", "flipped_units", "identity_exact", "identity_holds", "zero_fraction"):
            assert 0 <= row[key] <= 1
        assert row["identity_holds"] >= row["identity_exact"] - 1e-12  # exact pairs always hold
        if row["identity_holds_when_exact"] is not None:
            assert row["identity_holds_when_exact"] == 1
    assert tiny["l_gen"] < rows[1]["l_gen"] < huge["l_gen"]
    again = measure_stability(
        model,
        images,
        sizes=(1e-1, 1e-7, 1.0),
        n_samples=32,
        n_perturbations=3,
        generator=torch.Generator().manual_seed(14),
    )
    assert again == rows


def test_stability_report_from_records(tmp_path):
    from experiments.plots import plot_stability
    from experiments.report import stability_section
    from experiments.stability import measure_stability

    records = []
    for init, shift in (("narrow", 0.0), ("wide", 1.0)):
        for seed in (0, 1):
            model = random_net((16, 12, 8, 4), seed=20 + seed)
            with torch.no_grad():
                model.fc1.bias.add_(shift)  # fewer zeros for "wide"
            images = torch.randn(24, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            rows = measure_stability(
                model, images, n_samples=24, n_perturbations=2, generator=torch.Generator().manual_seed(seed)
            )
            for stage in ("init", "trained"):  # the same rows twice: the report only groups them
                records += [{**r, "init": init, "stage": stage, "seed": seed, "arch": "tiny"} for r in rows]
    path = plot_stability(records, tmp_path / "stability.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    text = stability_section(records)
    assert "| narrow | init | 2 |" in text and "| wide | trained | 2 |" in text
    assert "Verdict" in text and "**In short:**" in text and "Inits compared (init)" in text
    assert "fewest zeros `wide`" in text


def test_measure_stability_validates_its_inputs():
    from experiments.stability import measure_stability

    model = random_net(WIDTHS[1])
    with pytest.raises(ValueError, match="positive, finite sizes"):
        measure_stability(model, torch.randn(4, 5), sizes=(0.1, -1))
    with pytest.raises(ValueError, match="n_samples"):
        measure_stability(model, torch.randn(4, 5), n_samples=0)
    with pytest.raises(TypeError, match="generator"):
        measure_stability(model, torch.randn(4, 5), generator=0)


def test_stability_section_with_one_seed_per_init():
    """One seed per init gives no spread to judge by; the verdict must say so, not crash."""
    from experiments.report import stability_section
    from experiments.stability import measure_stability

    records = []
    for init, seed in (("a", 0), ("b", 1)):
        model = random_net((16, 12, 8, 4), seed=30 + seed)
        images = torch.randn(16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        rows = measure_stability(
            model, images, n_samples=16, n_perturbations=1, generator=torch.Generator().manual_seed(seed)
        )
        records += [{**r, "init": init, "stage": "init", "seed": seed, "arch": "tiny"} for r in rows]
    text = stability_section(records)
    assert "one seed each" in text and "(0 beyond the seed spread)" in text
