"""Tests of the deep-narrow study (experiments/collapse/): inits against the
harness's own, measurements against literal loops, the batched trainer against
the one-at-a-time loop, the theory against scipy and Monte Carlo, settings and
resumability."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy import stats as sps
from torch import nn

from experiments import inits as harness_inits
from experiments.collapse import inits, measure, runner, summary, theory
from experiments.collapse.settings import SettingsMismatch, parse_settings, record_settings, resolve
from experiments.collapse.stacked import StackedMLP, mlp_widths
from experiments.collapse.tasks import TASKS, sample_inputs, task_data
from experiments.collapse.train import train_one, train_stacked


def _sequential(widths, dtype=torch.float32) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], dtype=dtype))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _linears(model):
    return [m for m in model if isinstance(m, nn.Linear)]


# ---------------------------------------------------------------- tasks


def test_targets_match_their_formulas():
    x = torch.tensor([[-0.5], [0.25]])
    assert torch.equal(TASKS["abs"].target(x), torch.tensor([[0.5], [0.25]]))
    assert torch.allclose(TASKS["xsin5x"].target(x), x * torch.sin(5 * x))
    assert torch.allclose(
        TASKS["step_sin"].target(x), torch.tensor([[0.2 * math.sin(-2.5)], [1 + 0.2 * math.sin(1.25)]])
    )
    x2 = torch.tensor([[0.5, -0.25]])
    assert torch.allclose(TASKS["abs2d"].target(x2), torch.tensor([[0.25, 0.75]]))


def test_inputs_are_uniform_on_the_box_and_fixed_by_the_seed():
    x = sample_inputs(2, 4000, 0)
    assert x.shape == (4000, 2) and x.min() >= -1 and x.max() <= 1
    assert abs(float(x.mean())) < 0.03 and float(x.var()) == pytest.approx(1 / 3, rel=0.05)
    assert torch.equal(x, sample_inputs(2, 4000, 0)) and not torch.equal(x, sample_inputs(2, 4000, 1))
    data = task_data("abs", 16, 8, 3)
    assert torch.equal(data.train_x, sample_inputs(1, 16, 3)) and torch.equal(data.test_x, sample_inputs(1, 8, 4))


# ---------------------------------------------------------------- stacked model


def test_stacked_forward_equals_each_sequential():
    model = inits.draw("default", mlp_widths(2, 3, 4, 2), [0, 1, 2])
    x = sample_inputs(2, 50, 0)
    out, hidden = model.forward(x, hidden=True)
    for i in range(3):
        seq = model.to_sequential(i)
        assert torch.allclose(out[i], seq(x), atol=1e-6)
        h = x
        for j, layer in enumerate(_linears(seq)[:-1]):
            h = torch.relu(layer(h))
            assert torch.allclose(hidden[j][i].t(), h, atol=1e-6)
    back = StackedMLP.from_sequentials([model.to_sequential(i) for i in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), model.parameters(), strict=True))


def test_stacked_rejects_mismatched_layers():
    with pytest.raises(ValueError, match="takes 3 inputs but layer 0 gives 2"):
        StackedMLP([torch.zeros(1, 2, 1), torch.zeros(1, 1, 3)], [torch.zeros(1, 2), torch.zeros(1, 1)])


# ---------------------------------------------------------------- inits


@pytest.mark.parametrize(("ours", "theirs"), [("he", "kaiming_normal"), ("orthogonal", "orthogonal"), ("rai", "rai")])
def test_random_inits_repeat_the_harness_draws(ours, theirs):
    widths = mlp_widths(1, 3, 5, 1)
    x = sample_inputs(1, 32, 0)
    stacked = inits.draw(ours, widths, [7, 8])
    for i, seed in enumerate((7, 8)):
        seq = _sequential(widths)
        harness_inits.initialize(theirs, seq, x, seed)
        for l, layer in enumerate(_linears(seq)):
            assert torch.equal(stacked.weights[l][i], layer.weight.detach())
            assert torch.equal(stacked.biases[l][i], layer.bias.detach())


def test_default_init_is_pytorch_nn_linear_under_manual_seed():
    widths = mlp_widths(2, 4, 3, 2)
    stacked = inits.draw("default", widths, [5])
    torch.manual_seed(5)
    seq = _sequential(widths)
    for l, layer in enumerate(_linears(seq)):
        assert torch.equal(stacked.weights[l][0], layer.weight.detach())
        assert torch.equal(stacked.biases[l][0], layer.bias.detach())


def test_lsuv_matches_the_harness_lsuv():
    widths = mlp_widths(1, 4, 6, 1)
    x = sample_inputs(1, 64, 0)
    stacked, _ = inits.initialize("lsuv", widths, [0, 1, 2], x)
    for i in range(3):
        seq = _sequential(widths)
        harness_inits.initialize("lsuv", seq, x, i)
        for l, layer in enumerate(_linears(seq)):
            assert torch.allclose(stacked.weights[l][i], layer.weight.detach(), rtol=1e-5, atol=1e-7)


def test_rai_beta_entry_is_beta_2_1():
    # sqrt(U) has CDF x^2 on [0, 1]: Beta(2, 1). Oracle: scipy's Beta CDF.
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0)).sqrt().numpy()
    assert sps.kstest(u, sps.beta(2, 1).cdf).pvalue > 0.01


def test_init_names_are_checked():
    assert inits.parse_init("lp@0.5") == ("lp", 0.5)
    assert inits.parse_init("quantile_bias@0.25") == ("quantile_bias", 0.25)
    for bad, match in (("lp@-1", "positive radius"), ("lp_target@1.5", "0 < q < 1"), ("kaiming", "Unknown init")):
        with pytest.raises(ValueError, match=match):
            inits.parse_init(bad)


@pytest.mark.parametrize("name", ["lp_target@0.7", "quantile_bias@0.5"])
def test_well_posed_inits_call_lpinit_on_the_he_draw(name):
    """Oracle: lpinit called by hand on each He network, with the settings the names stand for."""
    import lpinit

    widths = mlp_widths(1, 3, 3, 1)
    x = sample_inputs(1, 48, 0)
    stacked, info = inits.initialize(name, widths, [2, 5], x, lp_radius=3.0, lp_margin=0.1)
    he = inits.draw("he", widths, [2, 5])
    for i in range(2):
        seq = he.to_sequential(i)
        if name.startswith("lp_target"):
            lpinit.lp_initialize(seq, x, radius=3.0, margin=0.1, target_active=0.7, rescale="unit", n_jobs=1)
        else:
            lpinit.quantile_bias_(seq, x, 0.5, rescale="unit")
        for l, layer in enumerate(_linears(seq)):
            assert torch.equal(stacked.weights[l][i], layer.weight.detach())
            assert torch.equal(stacked.biases[l][i], layer.bias.detach())
    assert info["lp_errors"] == 0


@torch.no_grad()
def test_quantile_bias_first_layer_is_active_on_its_quantile():
    """Literal count: after quantile_bias@q each first-layer unit is active on ceil(q n) of the n inputs
    (continuous inputs: no ties), whatever the rescaling does to its scale."""
    x = sample_inputs(1, 50, 0)
    model, _ = inits.initialize("quantile_bias@0.3", mlp_widths(1, 4, 2, 1), [0, 1, 2], x)
    z = torch.baddbmm(model.biases[0].unsqueeze(2), model.weights[0], x.t().expand(3, -1, -1))
    for s in range(3):
        for j in range(4):
            assert sum(float(z[s, j, i]) > 0 for i in range(50)) == 15


def test_an_init_that_raises_keeps_the_he_draw_and_says_so(monkeypatch):
    import lpinit

    def refuse(*args, **kwargs):
        raise ValueError("refused")

    monkeypatch.setattr(lpinit, "quantile_bias_", refuse)
    widths = mlp_widths(1, 2, 10, 1)
    x = sample_inputs(1, 32, 0)
    stacked, info = inits.initialize("quantile_bias@0.5", widths, [0, 1, 2], x)
    he = inits.draw("he", widths, [0, 1, 2])
    assert all(torch.equal(a, b) for a, b in zip(stacked.parameters(), he.parameters(), strict=True))
    assert info["lp_errors"] == 3 and info["lp_error_details"][0] == {"seed": 0, "error": "refused"}
    dead = int(measure.born_dead(measure.dead_units(he, x), 2).sum())
    assert dead > 0 and info["lp_left_dead_reasons"] == {"error": dead}


def test_lp_init_equals_lp_initialize_on_the_he_draw():
    widths = mlp_widths(1, 2, 4, 1)
    x = sample_inputs(1, 32, 0)
    stacked, info = inits.initialize("lp@0.5", widths, [3, 4], x, lp_margin=0.1)
    he = inits.draw("he", widths, [3, 4])
    from lpinit import lp_initialize
    from lpinit.initialize import PLAIN_LP

    for i in range(2):
        seq = he.to_sequential(i)
        lp_initialize(seq, x, **{**PLAIN_LP, "radius": 0.5}, n_jobs=1, progress=False)
        for l, layer in enumerate(_linears(seq)):
            assert torch.equal(stacked.weights[l][i], layer.weight.detach())
    assert info["lp_seconds"] > 0 and "lp_left_dead_reasons" in info


# ---------------------------------------------------------------- measurements


@torch.no_grad()
def test_dead_units_and_born_dead_match_a_literal_loop():
    widths = mlp_widths(1, 2, 8, 1)
    x = sample_inputs(1, 40, 0)
    model = inits.draw("he", widths, list(range(30)))
    dead = measure.dead_units(model, x)
    for s in range(30):
        seq = model.to_sequential(s)
        h, expected = x, []
        for layer in _linears(seq)[:-1]:
            h = torch.relu(layer(h))
            expected.append(sum(all(float(h[i, j]) == 0.0 for i in range(len(x))) for j in range(h.shape[1])))
        assert dead[s].tolist() == expected
        assert bool(measure.born_dead(dead, 2)[s]) == any(e == 2 for e in expected)
    assert measure.born_dead(dead, 2).any() and not measure.born_dead(dead, 2).all()  # the test sees both cases


def test_counts_and_bits_round_trip():
    counts = torch.tensor([[0, 10, 35], [1, 2, 3]])
    assert measure.encode_counts(counts) == ["0az", "123"]
    assert measure.decode_counts(["0az", "123"]).tolist() == counts.tolist()
    assert measure.unbits(measure.bits(torch.tensor([True, False, True]))).tolist() == [True, False, True]
    with pytest.raises(ValueError, match=r"0\.\.35"):
        measure.encode_counts(torch.tensor([[36]]))


def test_output_spread_is_zero_for_a_constant_net():
    model = inits.draw("he", mlp_widths(1, 2, 3, 1), [0])
    for w in model.weights[:-1]:
        w.zero_()
    model.biases[-1].fill_(0.7)
    x = sample_inputs(1, 20, 0)
    assert float(measure.output_spread(model, x, x.abs())[0]) < 1e-5  # float32 std of a constant: rounding only


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("width", [2, 3, 10])
def test_batched_training_equals_the_one_at_a_time_loop(width):
    """float64: the two differ only in how BLAS sums the matmuls, so after 40
    Adam steps they agree to rounding; the flags derived from them are equal."""
    data = task_data("xsin5x", 64, 32, 0, dtype=torch.float64)
    widths = mlp_widths(1, width, 4, 1)
    model = inits.draw("rai", widths, list(range(6)), dtype=torch.float64)
    trained, history = train_stacked(model, data.train_x, data.train_y, steps=40, lr=1e-2, checkpoints=(0, 40))
    loop = []
    for i in range(6):
        seq = train_one(model.to_sequential(i), data.train_x, data.train_y, steps=40, lr=1e-2)
        for l, layer in enumerate(_linears(seq)):
            assert torch.allclose(trained.weights[l][i], layer.weight.detach(), rtol=0, atol=1e-10)
            assert torch.allclose(trained.biases[l][i], layer.bias.detach(), rtol=0, atol=1e-10)
        final = float(nn.functional.mse_loss(seq(data.train_x), data.train_y))
        assert float(history[40][i]) == pytest.approx(final, rel=1e-9)
        loop.append(seq)
    assert torch.equal(
        measure.dead_units(trained, data.train_x), measure.dead_units(StackedMLP.from_sequentials(loop), data.train_x)
    )


def test_a_seed_trains_the_same_whatever_its_batch():
    """Seeds never mix: network s is bitwise the same trained alone or beside others."""
    data = task_data("abs", 64, 32, 0)
    model = inits.draw("he", mlp_widths(1, 3, 5, 1), list(range(8)))
    together, _ = train_stacked(model, data.train_x, data.train_y, steps=30, lr=1e-2)
    for i in (0, 5):
        alone, _ = train_stacked(model.select([i]), data.train_x, data.train_y, steps=30, lr=1e-2)
        reordered, _ = train_stacked(model.select([7 - i, i]), data.train_x, data.train_y, steps=30, lr=1e-2)
        for a, b, c in zip(alone.parameters(), together.parameters(), reordered.parameters(), strict=True):
            assert torch.equal(a[0], b[i]) and torch.equal(a[0], c[1])


def test_born_dead_networks_stay_dead():
    data = task_data("abs", 64, 32, 0)
    model = inits.draw("he", mlp_widths(1, 2, 10, 1), list(range(40)))
    before = measure.born_dead(measure.dead_units(model, data.train_x), 2)
    trained, _ = train_stacked(model, data.train_x, data.train_y, steps=50, lr=1e-2)
    after = measure.born_dead(measure.dead_units(trained, data.train_x), 2)
    assert before.any() and bool((after | ~before).all())


# ---------------------------------------------------------------- theory


@pytest.mark.parametrize(("k", "n"), [(0, 1000), (3, 200), (100, 200), (200, 200), (5, 7)])
def test_wilson_matches_scipy(k, n):
    ci = sps.binomtest(k, n).proportion_ci(method="wilson")
    assert theory.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_bound_is_the_chance_of_a_dead_layer_at_one_input():
    """Monte Carlo oracle: He (zero bias) nets at one input x0 = 1 are dead there
    with probability exactly 1 - (1 - 2^-N)^L."""
    torch.manual_seed(0)
    S, N, L = 40000, 2, 5
    h = torch.randn(S, N, 1) * math.sqrt(2.0)  # first layer at x0 = 1: h = relu(w)
    dead = torch.zeros(S, dtype=torch.bool)
    h = torch.relu(h)
    dead |= (h == 0).all(1).squeeze(1)
    for _ in range(L - 1):
        h = torch.relu(torch.bmm(torch.randn(S, N, N) * math.sqrt(2.0 / N), h))
        dead |= (h == 0).all(1).squeeze(1)
    p = theory.born_dead_bound([N] * L)
    assert p == pytest.approx(1 - 0.75**5)
    assert float(dead.float().mean()) == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / S))


def test_safe_depths():
    for width in (2, 3, 5, 10):
        for t in (0.1, 0.01):
            d = theory.bound_safe_depth(width, t)
            assert theory.born_dead_bound([width] * d) < t or d == 0
            assert theory.born_dead_bound([width] * (d + 1)) >= t
    assert theory.safe_depth([2, 3, 4, 5], [0.0, 0.05, 0.2, 0.01], 0.1) == 3  # stops at the first failure
    assert theory.safe_depth([2, 3], [0.5, 0.0], 0.1) == 0


# ---------------------------------------------------------------- settings and runner


def test_settings_flags_and_errors():
    s = parse_settings(
        ["--preset", "collapse", "--widths", "2,3", "--train-widths", "2", "--dense-train-widths", "2", "--steps", "10"]
    )
    assert s.widths == (2, 3) and s.steps == 10 and s.name == "collapse" and s.inits == inits.BASE_INITS
    for overrides, match in (
        ({"train_widths": (7,)}, "subset of --widths"),
        ({"train_widths": (2,), "dense_train_widths": (3,)}, "dense-train-widths to be a subset"),
        ({"widths": (40,), "train_widths": ()}, "widths <= 35"),
        ({"lr": 0.0}, "lr > 0"),
        ({"tasks": ("sine",)}, "Unknown task"),
    ):
        with pytest.raises(ValueError, match=match):
            resolve("quick", overrides)
    with pytest.raises(SystemExit):
        parse_settings(["--steps", "-1"])


def test_record_settings_refuses_another_recipe(tmp_path):
    s = resolve("quick", {"results_root": str(tmp_path)})
    record_settings(s)
    record_settings(resolve("quick", {"results_root": str(tmp_path), "widths": (2, 3, 4)}))  # more cells: fine
    assert json.loads((s.results_dir / "settings.json").read_text())["widths"] == [2, 3, 4]
    with pytest.raises(SettingsMismatch, match="steps: folder has 60, you asked 61"):
        record_settings(resolve("quick", {"results_root": str(tmp_path), "steps": 61}))


def test_runner_resumes_and_repairs(tmp_path):
    s = resolve(
        "quick",
        {"results_root": str(tmp_path), "tasks": ("abs",), "widths": (2,), "depths": (3,), "train_depths": (3,),
         "inits": ("he", "rai"), "steps": 5},
    )  # fmt: skip
    record_settings(s)
    assert runner.execute(s, progress=False) == 4  # 2 init cells + 2 train cells
    path = s.results_dir / "runs.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])  # the last write cut short
    with pytest.warns(UserWarning, match="partial last line"):
        assert runner.execute(s, progress=False) == 1  # only the lost cell reruns
    keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 4
    assert runner.execute(s, progress=False) == 0


def test_summary_rates_and_bits(tmp_path):
    s = resolve("quick", {"results_root": str(tmp_path), "tasks": ("abs",), "widths": (2,), "depths": (10,),
                          "train_depths": (), "inits": ("he",), "init_seeds": 300})  # fmt: skip
    record_settings(s)
    runner.execute(s, progress=False)
    from experiments.ledger import read_lines

    (row,) = summary.born_dead_rows(read_lines(s.results_dir / "runs.jsonl"))
    model = inits.draw("he", mlp_widths(1, 2, 10, 1), list(range(300)))
    expected = int(measure.born_dead(measure.dead_units(model, sample_inputs(1, s.n_train, 0)), 2).sum())
    assert row["k"] == expected and row["n"] == 300
    assert (row["ci_low"], row["ci_high"]) == theory.wilson(expected, 300)
    assert row["rate"] <= row["bound"] + 3 * math.sqrt(row["bound"] / 300)
    # born dead = some layer dead: at least the likeliest layer's rate, at most the sum of all
    assert max(row["dead_layer_fraction"]) <= row["rate"] <= sum(row["dead_layer_fraction"]) + 1e-12


def test_headline_preset_plans_the_papers_cells_with_every_init(tmp_path):
    s = resolve("collapse-headline", {"results_root": str(tmp_path)})
    assert s.results_dir == tmp_path / "collapse-headline" and s.lp_radius == 3.0
    cells, groups = runner.plan(s)
    names = {"he", "default", "rai", "orthogonal", "lsuv", "lp@0.1", "lp@3"} | {
        f"{kind}@{q}" for kind in ("lp_target", "quantile_bias") for q in (0.3, 0.5, 0.7)
    }
    assert {c.init for c in cells} == names and len(cells) == 2 * len(names)  # x1d and x2d
    assert {(c.width, c.depth, c.count) for c in cells} == {(2, 10, 1000)}
    # per task, the random inits trained in one batch and the LP family in another, random first
    assert sorted(g.task for g in groups) == sorted([*TASKS, *TASKS])
    lp = [inits.is_lp_family(g.inits[0]) for g in groups]
    assert lp == sorted(lp) and all(
        inits.is_lp_family(i) == f for g, f in zip(groups, lp, strict=True) for i in g.inits
    )
    for task in TASKS:
        assert sorted(i for g in groups if g.task == task for i in g.inits) == sorted(names)
    assert [inits.is_lp_family(c.init) for c in cells] == sorted(inits.is_lp_family(c.init) for c in cells)
    assert {(g.width, g.depth) for g in groups} == {(2, 10)} and {c for g in groups for c in g.counts} == {200}


@pytest.mark.parametrize("n", [1, 7, 200, 1000])
def test_wilson_holds_the_rate_even_at_0_and_1(n):
    for k in (0, n):
        low, high = theory.wilson(k, n)
        assert low <= k / n <= high
