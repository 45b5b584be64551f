"""The harness's named initializations (experiments/inits.py), each checked
against an independent oracle: a hand recomputation, a literal count, the
paper's distribution."""

from __future__ import annotations

import math

import pytest
import torch

from experiments import inits
from experiments.init_names import InitSpec, Step
from experiments.inits import build_model, initialize, lp_options, parse_init_name
from lpinit import count_relu_zeros, mlp


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", inits.FIXED_INITS)
def test_init_is_deterministic_given_seed(name, image_batch):
    a, b, c = build_model("seed", 3), build_model("seed", 3), build_model("seed", 4)
    for model, seed in ((a, 3), (b, 3), (c, 4)):
        initialize(name, model, image_batch, seed)
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(_params(a), _params(c), strict=True))


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("mlp", 0)
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ValueError, match="Valid archs: seed, mlp, cnn"):
        build_model("resnet", 0)


def test_kaiming_normal_has_he_std_and_zero_bias(image_batch):
    model = build_model("seed", 0)
    initialize("kaiming_normal", model, image_batch, 0)
    w = model.fc1.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.01)  # 588,000 draws
    assert torch.count_nonzero(model.fc1.bias) == 0


def test_lsuv_gives_unit_preactivation_variance_on_the_batch(image_batch):
    model = build_model("seed", 0)
    initialize("lsuv", model, image_batch, 0)
    # Independent oracle: recompute each layer's pre-activations by hand.
    h = image_batch.flatten(1)
    for layer in (model.fc1, model.fc2, model.fc3, model.fc4):
        z = h @ layer.weight.T + layer.bias
        assert z.var().item() == pytest.approx(1.0, abs=0.011)
        h = torch.relu(z)


def test_rai_has_one_beta_entry_per_neuron(image_batch):
    model = build_model("seed", 0)
    initialize("rai", model, image_batch, 0)
    v = torch.cat([model.fc1.weight, model.fc1.bias[:, None]], 1).detach()
    big = v > 0.15  # N(0, 0.6007^2/784) entries are ~7 std below this
    assert (big.sum(1) <= 1).all()
    assert v.max(1).values.mean().item() == pytest.approx(2 / 3, abs=0.05)  # E[Beta(2, 1)]


def test_init_names_are_parsed_in_one_place(image_batch):
    with pytest.raises(ValueError, match=r"Valid inits: a base \(default, kaiming_normal"):
        initialize("he", build_model("seed", 0), image_batch, 0)
    for bad in ("lp@-1", "lp@0"):
        with pytest.raises(ValueError, match="positive, finite radius"):
            parse_init_name(bad)
    for bad in ("lp@1e400", "lp@x", "lp@nan", "lp@inf", "bias_shift@"):
        with pytest.raises(ValueError, match=r"(finite number|a number) for radius"):
            parse_init_name(bad)
    with pytest.raises(ValueError, match="only lp@<radius> and bias_shift@<radius> take '@'"):
        parse_init_name("lsuv@1")
    assert parse_init_name("bias_shift@0.05") == InitSpec("default", (Step("bias_shift", (("radius", 0.05),)),), True)
    assert str(parse_init_name("lp@0.10")) == "lp@0.1"
    assert inits.control_of("lp@0.10") == "bias_shift@0.1"
    assert inits.control_of("default") is None and inits.control_of("bias_shift@0.1") is None
    assert inits.is_control("bias_shift@0.1") and not inits.is_control("lp@0.1")
    assert [inits.family(n) for n in ("orthogonal", "rai", "lp@0.2", "bias_shift@0.2")] == [
        "random",
        "data-dependent",
        "lp",
        "bias_shift",
    ]


def _small_seed_like_mlp():
    """The seed MLP's shape in miniature (ReLU on the logits too), so the real LP solves in a second."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return mlp((784, 128, 64, 10), final_relu=True)


def test_lp_and_bias_shift_reach_the_same_layer_zero_fractions(image_batch):
    """The real LP, then the control: bias_shift@r must reproduce, layer by layer,
    the zero fractions lp@r reached (from the same random start)."""
    batch = image_batch[:64]
    lp = _small_seed_like_mlp()
    initialize("lp@0.1", lp, batch, 0)
    shift = _small_seed_like_mlp()
    info = initialize("bias_shift@0.1", shift, batch, 0)
    want = inits.relu_zero_fractions(lp, batch)
    start = inits.relu_zero_fractions(_small_seed_like_mlp(), batch)
    assert len(want) == 3 and all(w < s for w, s in zip(want, start, strict=True))  # the LP did something
    assert info["bias_shift_targets"] == pytest.approx(want)
    reached = count_relu_zeros(shift, batch, patterns=False)  # independent counter
    for site, target in zip(reached.sites, want, strict=True):
        assert site.zero_fraction == pytest.approx(target, abs=1 / 64 + 1e-6)


class _FakeReport:
    def to_dict(self):
        return {"status_counts": {"optimal": 3}}


def _fake_lp_initialize(model, batch, *, radius, margin, n_jobs, progress, **options):
    """Stands in for lp_initialize: raises every ReLU-fed bias by a
    layer-dependent amount, so the zero fractions it reaches are known."""
    from lpinit.tracing import relu_fed_linears

    with torch.no_grad():
        for i, (_, layer) in enumerate(relu_fed_linears(model, batch[:1])):
            layer.bias.add_(radius * (i + 1))
    return _FakeReport()


def test_lp_entries_and_bias_shift_plumbing_with_a_stand_in_lp(image_batch, monkeypatch, tmp_path):
    from experiments.measure import _lp_targets_cache

    batch = image_batch
    monkeypatch.setattr(inits, "lp_initialize", _fake_lp_initialize)
    lp = build_model("seed", 0)
    info = initialize("lp@0.1", lp, batch, 0)
    assert info["lp_report"] == {"status_counts": {"optimal": 3}}
    want = inits.relu_zero_fractions(lp, batch)
    assert want < inits.relu_zero_fractions(build_model("seed", 0), batch)
    # bias_shift without a cache runs the LP on a copy of the same random start ...
    shift = build_model("seed", 0)
    info = initialize("bias_shift@0.1", shift, batch, 0)
    assert info["bias_shift_targets"] == pytest.approx(want)
    assert inits.relu_zero_fractions(shift, batch) == pytest.approx(want, abs=1 / 256 + 1e-6)
    assert info["bias_shifts"] == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.02)  # the fake's own shifts
    # ... and with the runner's cache, computes the targets once and reuses them.
    targets = _lp_targets_cache(tmp_path, "seed", 0, 0.1, batch, lambda: build_model("seed", 0))
    assert targets(parse_init_name("lp@0.1")) == pytest.approx(want)
    assert [p.name for p in (tmp_path / "lp_targets").iterdir()] == ["seed_seed0_r0.1_m0.1.json"]  # no temporaries
    monkeypatch.setattr(inits, "lp_initialize", None)  # a second LP call would fail
    assert targets(parse_init_name("lp@0.1")) == pytest.approx(want)


def test_relu_zero_fractions_match_a_literal_count(image_batch):
    model = build_model("mlp", 1)
    h = image_batch.flatten(1)
    expected = []
    for layer in (model.fc1, model.fc2, model.fc3):  # the three ReLU-fed layers of the plain MLP
        h = torch.relu(h @ layer.weight.T + layer.bias)
        expected.append(float((h == 0).sum()) / h.numel())
    assert inits.relu_zero_fractions(model, image_batch) == pytest.approx(expected)


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("kaiming_normal+lp(target=0.8,rescale=unit)", "kaiming_normal+lp(rescale=unit,target=0.8)"),
        ("default+quantile_bias(rescale=unit, q=0.80)", "default+quantile_bias(q=0.8,rescale=unit)"),
        ("lsuv+lp(radius=0.1,anchor=mean,rescale=unit)", "lsuv+lp(radius=0.1,rescale=unit,anchor=mean)"),
        ("default", "default"),
        ("default+lp()", "default+lp()"),
    ],
)
def test_composed_names_have_one_canonical_spelling(name, canonical):
    assert str(parse_init_name(name)) == canonical
    assert str(parse_init_name(canonical)) == canonical


@pytest.mark.parametrize(
    "bad, message",
    [
        ("he+lp()", "Unknown base init 'he'.*Valid inits"),
        ("default+lpx(radius=0.1)", "Unknown step 'lpx'.*Valid steps: lp, quantile_bias, bias_shift"),
        (
            "default+lp(radus=0.1)",
            "Unknown option 'radus=0.1'.*Valid keys: radius, margin, rescale, anchor, l1, target",
        ),
        ("default+lp(target=1.2)", r"target in \(0, 1\)"),
        ("default+quantile_bias(rescale=unit)", "needs q"),
        ("default+quantile_bias(q=0.5,rescale=row)", "Unknown rescale 'row'.*Valid: unit, layer"),
        ("default+lp(target=0.5,l1=0.1)", "drop l1"),
        ("default+lp(radius=0.1,radius=0.2)", "given twice"),
        ("default+lp", "Expected a step like lp"),
        ("default+lp(anchor=median)", "Unknown anchor 'median'"),
    ],
)
def test_bad_composed_names_list_the_valid_ones(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_init_name(bad)


def test_composed_names_have_families_and_controls():
    assert inits.family("kaiming_normal+lp(target=0.8)") == "lp"
    assert inits.family("default+quantile_bias(q=0.5)") == "quantile_bias"
    assert inits.family("lsuv") == "data-dependent"
    assert inits.control_of("kaiming_normal+lp(rescale=unit,target=0.8)") == (
        "kaiming_normal+bias_shift(rescale=unit,target=0.8)"
    )
    assert inits.is_control("default+bias_shift(target=0.3)")
    assert inits.control_of("default+quantile_bias(q=0.5)") is None


def test_composed_steps_apply_in_order_with_lpinit(image_batch):
    """quantile_bias with rescale: 75% of the batch active per unit, the
    pre-activation RMS of each unit what the base left (independent recount)."""
    batch = image_batch[:64]
    model = build_model("mlp", 2)
    initialize("kaiming_normal", model, batch, 2)
    with torch.no_grad():
        before = model.fc1(batch.flatten(1)).pow(2).mean(0).sqrt()
    composed = build_model("mlp", 2)
    info = initialize("kaiming_normal+quantile_bias(q=0.75,rescale=unit)", composed, batch, 2)
    assert [layer["name"] for layer in info["quantile_bias"]] == ["fc1", "fc2", "fc3"]
    with torch.no_grad():
        z = composed.fc1(batch.flatten(1))
    assert ((z > 0).sum(0) == 48).all()
    assert torch.allclose(z.pow(2).mean(0).sqrt(), before, rtol=1e-4)


def test_a_composed_bias_shift_matches_its_lp(image_batch):
    """default+bias_shift(k=v) reaches, layer by layer, the zero fractions of default+lp(k=v)."""
    batch = image_batch[:48]
    lp = _small_seed_like_mlp()
    initialize("default+lp(target=0.7,radius=1,rescale=unit)", lp, batch, 0)
    want = inits.relu_zero_fractions(lp, batch)
    shift = _small_seed_like_mlp()
    info = initialize("default+bias_shift(target=0.7,radius=1,rescale=unit)", shift, batch, 0)
    assert info["bias_shift_targets"] == pytest.approx(want)
    assert inits.relu_zero_fractions(shift, batch) == pytest.approx(want, abs=1 / 48 + 1e-6)


def test_kaiming_normal_on_a_cnn_uses_each_kernels_fan_in(image_batch):
    model = build_model("cnn", 0)
    initialize("kaiming_normal", model, image_batch, 0)
    for layer, fan_in in ((model.conv1, 25), (model.conv2, 150), (model.fc1, 256)):
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0


def test_lsuv_on_a_cnn_gives_unit_variance_over_samples_channels_and_positions(image_batch):
    model = build_model("cnn", 0)
    initialize("lsuv", model, image_batch, 0)
    x = image_batch  # independent oracle: the forward pass written out by hand
    with torch.no_grad():
        z1 = torch.nn.functional.conv2d(x, model.conv1.weight, model.conv1.bias)
        z2 = torch.nn.functional.conv2d(torch.max_pool2d(torch.relu(z1), 2), model.conv2.weight, model.conv2.bias)
        h = torch.max_pool2d(torch.relu(z2), 2).flatten(1)
        z3 = h @ model.fc1.weight.T + model.fc1.bias
    for z in (z1, z2, z3):
        assert z.var().item() == pytest.approx(1.0, abs=0.011)
    # the kernels started orthonormal: rows of the reshaped kernel are orthogonal before scaling
    kernel = model.conv2.weight.reshape(16, -1)
    gram = kernel @ kernel.T
    assert torch.allclose(gram, torch.diag(torch.diag(gram)), atol=1e-5)


def test_rai_on_a_cnn_has_one_beta_entry_per_output_channel(image_batch):
    model = build_model("cnn", 0)
    initialize("rai", model, image_batch, 0)
    v = torch.cat([model.conv2.weight.reshape(16, -1), model.conv2.bias[:, None]], 1).detach()
    assert v.shape == (16, 151)
    big = v > 0.3  # N(0, 0.6007^2/150) entries are ~6 std below this; Beta(2, 1) is above it 91% of the time
    assert (big.sum(1) <= 1).all() and big.sum() >= 10


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lp@0.1", dict(radius=0.1, margin=0.1, rescale=None, anchor=None, l1=0.0, target_active=None, coverage=None)),
        (
            "default+lp(rescale=unit)",
            dict(radius=0.1, margin=0.1, rescale="unit", anchor=None, l1=0.0, target_active=None, coverage=None),
        ),
        (
            "default+lp(radius=3,rescale=unit,target=0.5)",
            dict(radius=3.0, margin=0.1, rescale="unit", anchor=None, l1=0.0, target_active=0.5, coverage=None),
        ),
        (
            "default+lp(radius=3,rescale=unit,target=0.1,coverage=1)",
            dict(radius=3.0, margin=0.1, rescale="unit", anchor=None, l1=0.0, target_active=0.1, coverage=1),
        ),
        (
            "lsuv+lp(radius=0.2,margin=0.3,anchor=mean,l1=0.5)",
            dict(radius=0.2, margin=0.3, rescale=None, anchor="mean", l1=0.5, target_active=None, coverage=None),
        ),
    ],
)
def test_an_lp_step_passes_every_option_so_a_name_does_not_follow_the_library_defaults(name, expected):
    (step,) = parse_init_name(name).steps
    assert lp_options(step, default_margin=0.1) == expected


def test_the_harness_name_of_the_defaults_is_lp_initializes_defaults():
    from experiments.settings import DEFAULT_LP
    from lpinit.initialize import DEFAULTS

    (step,) = parse_init_name(f"default+{DEFAULT_LP}").steps
    assert lp_options(step, default_margin=0.1) == DEFAULTS
