"""The LP's options (rescale, anchor, l1, activity targets) and the
closed-form controls, against scipy's linprog, hand-made cases and literal
counts."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import linprog
from torch import nn

from lpinit import bias_shift_, count_relu_zeros, lp_initialize, mlp, quantile_bias_
from lpinit.controls import quantile_thresholds
from lpinit.initialize import PLAIN_LP
from lpinit.lp import SOLVERS, solve_layer
from lpinit.lp.highs import FORMS, WORKING_ROWS
from lpinit.lp.problem import Formulation


def linprog_general(H: np.ndarray, Z: np.ndarray, f: Formulation, active: np.ndarray | None = None) -> np.ndarray:
    """Each unit's optimum of the general LP, written out for scipy's linprog
    from the module docstring of ``lpinit.lp.problem``: variables
    ``[d+, d-, e+, e-, s]``, one row ``sigma_i (z_i + H_i d + e) + s_i >= m`` per
    sample, ``sigma_i = +1`` on the ``ceil(q n)`` largest ``z_i`` (all rows
    without a target) and ``-1`` on the others, then every group of samples
    with the same input row on the side most of the group is on (half: +1);
    or ``+1`` where ``active`` (n, k) is True, when given."""
    n, d_in = H.shape
    optima = []
    for j in range(Z.shape[1]):
        if active is not None:
            sigma = np.where(active[:, j], 1.0, -1.0)
        elif f.target_active is None:
            sigma = np.ones(n)
        else:
            count = math.ceil(f.target_active * n - 1e-9)
            sigma = -np.ones(n)
            sigma[np.argsort(-Z[:, j], kind="stable")[:count]] = 1.0
            groups: dict[bytes, list[int]] = {}
            for i in range(n):
                groups.setdefault(H[i].tobytes(), []).append(i)
            for rows in groups.values():
                sigma[rows] = 1.0 if sigma[rows].sum() >= 0 else -1.0
        signed = sigma[:, None]
        A_ub = -np.hstack([signed * H, -signed * H, signed, -signed, np.eye(n)])
        b_ub = -(f.margin - sigma * Z[:, j])
        change = 1.0 if f.target_active is not None else f.l1
        w_cost = change / f.weight_bound if f.weight_bound else 0.0
        b_cost = change / f.bias_bound if f.bias_bound else 0.0
        changeable = d_in * (f.weight_bound > 0) + (f.bias_bound > 0)
        C = 1.0 if f.target_active is None else 2 * changeable / f.margin  # C = 2 N / m
        cost = np.r_[np.full(2 * d_in, w_cost), b_cost, b_cost, np.full(n, C)]
        bounds = [(0, f.weight_bound)] * (2 * d_in) + [(0, f.bias_bound)] * 2 + [(0, None)] * n
        A_eq = b_eq = None
        if f.anchor:
            mean = H.mean(axis=0)
            A_eq, b_eq = np.r_[mean, -mean, 1.0, -1.0, np.zeros(n)][None, :], [0.0]
        result = linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
        assert result.status == 0, result.message
        optima.append(result.fun)
    return np.array(optima)


OPTIONS = {
    "l1": dict(l1=0.05),
    "anchor": dict(anchor=True),
    "anchor+l1": dict(anchor=True, l1=0.1),
    "target": dict(target_active=0.3),
    "target+anchor": dict(target_active=0.8, anchor=True),
}


def small_layer(seed: int, relu_input: bool, n=30, d_in=5, k=6):
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(n, d_in))
    if relu_input:
        H = np.maximum(H, 0.0)
    W = rng.normal(size=(k, d_in)) / np.sqrt(d_in)
    b = rng.normal(size=k) * 0.1
    return H, W, b


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("relu_input", [False, True])
def test_every_option_matches_linprog_in_both_solvers(name, relu_input):
    H, W, b = small_layer(1, relu_input)
    options = OPTIONS[name]
    bounds = dict(weight_bound=0.3, bias_bound=0.2, margin=0.2)
    f = Formulation(
        H.shape[1], 0.3, 0.2, 0.2, options.get("l1", 0.0), options.get("anchor", False), options.get("target_active")
    )
    oracle = linprog_general(H, H @ W.T + b, f)
    assert (oracle > 1e-3).sum() >= len(W) - 1  # not trivially zero
    for solver in SOLVERS:
        solution = solve_layer(H, W, b, solver=solver, n_jobs=1, **bounds, **options)
        assert solution.status_counts() == {"optimal": len(W)}, solver
        np.testing.assert_allclose(solution.objective, oracle, rtol=1e-6, atol=1e-9, err_msg=solver)
        # the changes returned achieve the objective they claim, inside the box
        assert np.abs(solution.delta_weight).max() <= 0.3 + 1e-12
        assert np.abs(solution.delta_bias).max() <= 0.2 + 1e-12
        Z = H @ W.T + b
        achieved = f.objective(H, Z, solution.delta_weight, solution.delta_bias, f.active_rows(Z, H))
        np.testing.assert_allclose(achieved, solution.objective, rtol=1e-9, atol=1e-12)


def force_form(monkeypatch, form: str) -> list:
    """Make ``solve_layer`` hand every general LP to HiGHS in ``form``;
    returns the list that each ``GeneralLPs`` built is appended to."""
    import lpinit.lp.highs
    import lpinit.lp.solve

    original = lpinit.lp.highs.GeneralLPs.from_layer
    built: list = []

    def forced(H, Z, formulation, hot_start, form_asked=None, active=None):
        built.append(original(H, Z, formulation, hot_start, form=form, active=active))
        return built[-1]

    monkeypatch.setattr(lpinit.lp.solve.GeneralLPs, "from_layer", forced)
    return built


FORMS_OF_OPTIONS = [
    (name, form) for name in OPTIONS for form in FORMS if not (form in WORKING_ROWS and "anchor" in name)
]
"""Every option with every form that holds it (working rows hold no anchor)."""


@pytest.mark.parametrize("name, form", FORMS_OF_OPTIONS)
@pytest.mark.parametrize("case", ["tall", "wide", "shifted", "no bias"])
def test_every_form_matches_linprog(name, form, case, monkeypatch):
    """The fast path solves a unit's general LP as written, as its dual, or
    on working rows (row generation) as written or as its dual; every form,
    on any shape, gives linprog's optimum."""
    options = OPTIONS[name]
    n, d_in = (12, 20) if case == "wide" else (30, 5)
    H, W, b = small_layer(2, relu_input=False, n=n, d_in=d_in)
    if case == "shifted":  # most of each column at one value, as MNIST's background: the shift applies
        H[np.random.default_rng(3).random(H.shape) < 0.7] = -0.42
    bias_bound = 0.0 if case == "no bias" else 0.2
    f = Formulation(
        d_in, 0.3, bias_bound, 0.2, options.get("l1", 0.0), options.get("anchor", False), options.get("target_active")
    )
    built = force_form(monkeypatch, form)
    solution = solve_layer(H, W, b, weight_bound=0.3, bias_bound=bias_bound, margin=0.2, n_jobs=1, **options)
    assert [lps.form for lps in built] == [form]
    assert built[0].c.any() == (case == "shifted")
    oracle = linprog_general(H, H @ W.T + b, f)
    assert (oracle > 1e-3).sum() >= len(W) - 1  # not trivially zero
    assert solution.status_counts() == {"optimal": len(W)}
    np.testing.assert_allclose(solution.objective, oracle, rtol=1e-6, atol=1e-9)
    Z = H @ W.T + b
    achieved = f.objective(H, Z, solution.delta_weight, solution.delta_bias, f.active_rows(Z, H))
    np.testing.assert_allclose(achieved, solution.objective, rtol=1e-9, atol=1e-12)
    assert np.abs(solution.delta_weight).max() <= 0.3 + 1e-12
    assert np.abs(solution.delta_bias).max() <= bias_bound + 1e-12
    if options.get("anchor"):
        np.testing.assert_allclose(solution.delta_weight @ H.mean(axis=0) + solution.delta_bias, 0.0, atol=1e-9)


@pytest.mark.parametrize("form", WORKING_ROWS)
@pytest.mark.parametrize("name", ["l1", "target"])
@pytest.mark.parametrize("case", ["wide", "tall", "shifted", "no bias"])
def test_working_rows_add_rows_until_none_left_out_misses(form, name, case, monkeypatch):
    """Row generation from a working set of 3 rows, on the LP itself or its
    dual: several rounds per unit, every row added at most once, and
    linprog's optimum on the whole LP."""
    from lpinit.lp.highs import _MODELS, GeneralLPs, _WorkingRowsModel

    model_class = _MODELS[form]
    monkeypatch.setattr(_WorkingRowsModel, "INITIAL_ROWS", 3)
    n, d_in = (40, 60) if case == "wide" else (120, 4)
    H, W, b = small_layer(7, relu_input=case != "shifted", n=n, d_in=d_in, k=5)
    if case == "shifted":
        H[np.random.default_rng(8).random(H.shape) < 0.7] = -0.42
    bias_bound = 0.0 if case == "no bias" else 0.2
    options = OPTIONS[name]
    f = Formulation(d_in, 0.3, bias_bound, 0.2, options.get("l1", 0.0), target_active=options.get("target_active"))
    Z = H @ W.T + b
    lps = GeneralLPs.from_layer(H, Z, f, hot_start=False, form=form)
    assert lps.c.any() == (case == "shifted")
    model = model_class(lps, threads=0)
    model.tall = False  # start from INITIAL_ROWS rows on any shape
    added = []
    original_add = model_class._add
    monkeypatch.setattr(model_class, "_add", lambda self, new, *a: (added.append(new), original_add(self, new, *a)))
    rounds, sizes = [], []
    oracle = linprog_general(H, Z, f)
    for j in range(len(W)):
        added.clear()
        status, _ = model.solve(Z[:, j], lps.active[:, j], None)
        assert status == "optimal"
        d, e = model.change(model.highs.getSolution())  # the whole LP's objective at it
        objective = f.objective(H, Z[:, [j]], d[None], np.array([e]), lps.active[:, [j]])[0]
        np.testing.assert_allclose(objective, oracle[j], rtol=1e-6, atol=1e-9)
        every = np.concatenate(added)
        assert len(every) == len(np.unique(every)) == len(model.rows)  # no row twice
        rounds.append(len(added))
        sizes.append(len(every))
    assert max(rounds) >= 2  # rows were generated
    assert min(sizes) < n  # and some unit's LP was solved on part of its rows
    force_form(monkeypatch, form)
    solution = solve_layer(H, W, b, weight_bound=0.3, bias_bound=bias_bound, margin=0.2, n_jobs=1, **options)
    assert solution.status_counts() == {"optimal": len(W)}
    assert solution.resolves == 0  # every answer passed the duality check as it came
    np.testing.assert_allclose(solution.objective, oracle, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("form", FORMS)
def test_a_time_limit_keeps_the_weights_in_every_form(form, monkeypatch):
    """time_limit_s=0: every unit of a target LP stops at its first run, in
    any form, and keeps its weights."""
    force_form(monkeypatch, form)
    H, W, b = small_layer(3, relu_input=False, n=60, d_in=5, k=4)
    solution = solve_layer(
        H, W, b, weight_bound=0.3, bias_bound=0.2, margin=0.2, n_jobs=1, target_active=0.5, time_limit_s=0.0
    )
    assert solution.status_counts() == {"time_limit": 4}
    assert not solution.delta_weight.any() and not solution.delta_bias.any()
    assert np.isnan(solution.objective).all()


@pytest.mark.parametrize("form", WORKING_ROWS)
def test_a_tall_layers_working_rows_start_from_every_row_missed(form):
    """On a tall layer the first working set is every row that misses its
    side at the bias-only change, if more than INITIAL_ROWS; on a wide one,
    INITIAL_ROWS rows. So for the LP itself and for its dual."""
    from lpinit.lp.highs import _MODELS, GeneralLPs, _WorkingRowsModel

    f = Formulation(3, 0.01, 0.0, 1.0, target_active=0.5)  # a tiny box, no bias: most rows stay missed
    for n, d_in, tall in [(400, 3, True), (70, 30, False)]:
        H, W, b = small_layer(9, relu_input=False, n=n, d_in=d_in, k=1)
        f = replace(f, in_features=d_in)
        Z = H @ W.T + b
        lps = GeneralLPs.from_layer(H, Z, f, hot_start=False, form=form)
        model = _MODELS[form](lps, threads=0)
        assert model.tall == tall
        first: list[int] = []
        add = model._add

        def counted(new, *args, add=add, first=first):
            first.append(len(new))
            add(new, *args)

        model._add = counted  # type: ignore[method-assign]
        model.solve(Z[:, 0], lps.active[:, 0], None)
        z, a = Z[:, 0], lps.active[:, 0]
        missed = int(np.where(a, z < 1.0, z > -1.0).sum())  # no bias: no shift
        assert missed > _WorkingRowsModel.INITIAL_ROWS
        assert first[0] == (missed if tall else _WorkingRowsModel.INITIAL_ROWS)


def test_csr_rows_are_scipys_rows():
    from lpinit.lp.highs import _csr_rows

    dense = sp.random(50, 30, density=0.3, random_state=1).toarray()
    dense[4] = 0.0  # an empty row
    M = sp.csr_matrix(dense)
    for rows in [np.array([3, 0, 49, 4, 7]), np.arange(50), np.array([4])]:
        starts, indices, values = _csr_rows(M, rows)
        expected = M[rows]
        np.testing.assert_array_equal(starts, expected.indptr[:-1])
        np.testing.assert_array_equal(indices, expected.indices)
        np.testing.assert_array_equal(values, expected.data)


def test_each_layer_gets_its_form():
    """LPs go to the dual on tall layers, the LP itself on wide ones. Target
    LPs without the anchor (unless started from the previous unit's basis) go
    to the dual's working rows on tall layers of few weights, and to the LP's
    working rows on wide layers."""
    from lpinit.lp.highs import GeneralLPs

    l1, target = Formulation(5, 0.3, 0.2, 0.2, l1=0.1), Formulation(5, 0.3, 0.2, 0.2, target_active=0.5)
    anchored = replace(target, anchor=True)
    # 6 columns (5 weights and the bias): the dual from 24 rows, or 15 with targets
    cases = [(l1, 30, 5, False, "dual"), (l1, 23, 5, False, "lp"), (l1, 12, 20, False, "lp")]
    shapes = [(24, 5, "dual_rows"), (23, 5, "dual"), (15, 5, "dual"), (14, 5, "rows"), (12, 20, "rows")]
    cases += [(target, n, d_in, False, form) for n, d_in, form in shapes]
    many = Formulation(300, 0.3, 0.2, 0.2, target_active=0.5)  # 301 weights: too many for the dual's working rows
    cases += [(many, 1204, 300, False, "dual")]
    cases += [(target, 15, 5, True, "dual"), (target, 14, 5, True, "lp"), (anchored, 15, 5, False, "dual")]
    cases += [(anchored, 14, 5, False, "lp")]
    for f, n, d_in, hot_start, form in cases:
        H, W, b = small_layer(0, relu_input=False, n=n, d_in=d_in)
        assert GeneralLPs.from_layer(H, H @ W.T + b, f, hot_start=hot_start).form == form, (f, n, d_in, hot_start)
    H, W, b = small_layer(0, relu_input=False, n=30, d_in=5)
    for form in WORKING_ROWS:
        with pytest.raises(ValueError, match=r"working rows \('rows', 'dual_rows'\) without the anchor"):
            GeneralLPs.from_layer(H, H @ W.T + b, anchored, hot_start=False, form=form)


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("warm_start", [None, True])
def test_each_start_gives_linprogs_optimum(name, warm_start):
    """The l1 and target LPs start from the slack basis (no change), the
    anchored ones from the crash start; warm_start=True from the previous
    unit's basis. Every start ends at linprog's optimum."""
    from lpinit.lp.highs import GeneralLPs, _GeneralModel

    H, W, b = small_layer(4, relu_input=True, n=12, d_in=20, k=8)
    options = OPTIONS[name]
    f = Formulation(
        20, 0.3, 0.2, 0.2, options.get("l1", 0.0), options.get("anchor", False), options.get("target_active")
    )
    Z = H @ W.T + b
    model = _GeneralModel(GeneralLPs.from_layer(H, Z, f, hot_start=False, form="lp"), threads=0)
    assert model.slack_start == (not options.get("anchor"))
    assert (model.crash_basis(Z[:, 0], f.active_rows(Z, H)[:, 0]) is None) == model.slack_start
    solution = solve_layer(
        H, W, b, weight_bound=0.3, bias_bound=0.2, margin=0.2, n_jobs=1, warm_start=warm_start, **options
    )
    oracle = linprog_general(H, Z, f)
    assert (oracle > 1e-3).sum() >= len(W) // 2  # not trivially zero
    assert solution.status_counts() == {"optimal": len(W)}
    np.testing.assert_allclose(solution.objective, oracle, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["l1", "target", "target+anchor"])
def test_scaled_rows_keep_every_objective(name):
    """Dividing the rows by k (input, pre-activations, margin, bias bound)
    changes no objective at a change (d, e / k): written out from the
    objective's definition, for the targets' C = 2 N / m and l1's C = 1."""
    rng = np.random.default_rng(5)
    H, Z = rng.normal(size=(20, 4)), rng.normal(size=(20, 3))
    D, e = rng.normal(size=(3, 4)) * 0.1, rng.normal(size=3) * 0.1
    options = OPTIONS[name]
    f = Formulation(
        4, 0.3, 0.2, 0.2, options.get("l1", 0.0), options.get("anchor", False), options.get("target_active")
    )
    active = f.active_rows(Z, H)
    for k in (1e-3, 7.0, 1e8):
        np.testing.assert_allclose(
            f.scaled(k).objective(H / k, Z / k, D, e / k, active), f.objective(H, Z, D, e, active), rtol=1e-12
        )


def test_rows_are_scaled_by_a_power_of_2_only_far_from_unit_scale():
    from lpinit.lp.solve import UNIT_SCALE_RANGE, row_scale

    assert UNIT_SCALE_RANGE == 64.0
    cases = [(0.5, 1.0), (1 / 64, 1.0), (64.0, 1.0), (100.0, 128.0), (3e7, 2.0**25), (1e-9, 2.0**-30)]
    for rms, scale in [*cases, (1e300, 2.0**997)]:  # 1e300: no overflow on the way
        Z = np.full((4, 3), rms)
        Z[::2] *= -1  # the sign does not matter
        assert row_scale(Z) == scale, rms
    for bad in (0.0, np.inf, np.nan):
        assert row_scale(np.full((2, 2), bad)) == 1.0
    assert row_scale(np.zeros((0, 3))) == 1.0


@pytest.mark.parametrize("name", ["l1", "target", "target+anchor"])
@pytest.mark.parametrize("K, n, d_in", [(1e7, 40, 4), (1e8, 128, 2)])
def test_a_layer_in_the_millions_solves_as_at_unit_scale(name, K, n, d_in):
    """Reproduces: in deep narrow nets, pre-activations of 1e6 to 1e8 made
    HiGHS's answers fail the duality check (absolute tolerances), and the
    units kept their weights. At scale K the target LPs have the optimum of
    the unit-scale LP; an l1 LP at scale K with l1 = K lambda has K times the
    optimum of the unit-scale LP with l1 = lambda."""
    H, W, b = small_layer(6, relu_input=True, n=n, d_in=d_in, k=8)
    options = dict(OPTIONS[name])
    at_unit = solve_layer(H, W, b, weight_bound=0.3, bias_bound=0.2, margin=0.2, n_jobs=1, **options)
    factor = K if "l1" in options else 1.0  # the objective's scale
    if "l1" in options:
        options["l1"] *= K
    scaled = solve_layer(K * H, W, K * b, weight_bound=0.3, bias_bound=0.2 * K, margin=0.2 * K, n_jobs=1, **options)
    assert at_unit.status_counts() == scaled.status_counts() == {"optimal": len(W)}
    np.testing.assert_allclose(scaled.objective, factor * at_unit.objective, rtol=1e-6)
    assert (at_unit.objective > 1e-3).sum() >= len(W) // 2  # not trivially zero


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.mark.parametrize("name", ["anchor", "target+anchor", "l1"])
def test_lp_initialize_matches_linprog_on_every_unit_of_a_small_network(name, mnist_train):
    """Every unit of every layer, each LP built from the layer's input with the
    earlier layers already changed; both solvers."""
    images, _ = mnist_train
    batch = images[:40]
    options = {("anchor" if k == "anchor" else k): v for k, v in OPTIONS[name].items()}
    if options.get("anchor"):
        options["anchor"] = "mean"
    objectives = {}
    for solver in SOLVERS:
        torch.manual_seed(3)
        model = mlp([784, 10, 6, 10]).double()
        old = {
            n: (m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy())
            for n, m in linear_layers(model).items()
        }
        report = lp_initialize(model, batch.double(), solver=solver, n_jobs=1, **{**PLAIN_LP, "radius": 0.3, **options})
        x = batch.flatten(1).double()
        with torch.no_grad():
            inputs = {"fc1": x.numpy(), "fc2": torch.relu(model.fc1(x)).numpy()}
        for layer in report.layers:
            W, b = old[layer.name]
            H = inputs[layer.name]
            f = Formulation(
                H.shape[1],
                layer.weight_bound,
                layer.bias_bound,
                layer.margin,
                layer.l1,
                name.endswith("anchor") or name.startswith("anchor"),
                options.get("target_active"),
            )
            oracle = linprog_general(H, H @ W.T + b, f).sum()
            assert layer.lp_objective == pytest.approx(oracle, rel=1e-6), (solver, layer.name)
            assert layer.status_counts == {"optimal": W.shape[0]}
            objectives[solver, layer.name] = layer.lp_objective
    # the same LPs in the first layer; later layers see what each solver chose among equal optima
    assert objectives["highs", "fc1"] == pytest.approx(objectives["cvxpy", "fc1"], rel=1e-6)


@pytest.mark.parametrize("mode", ["unit", "layer"])
def test_rescale_keeps_every_sign_and_restores_the_rms(mode, mnist_train):
    images, _ = mnist_train
    batch = images[:64]
    torch.manual_seed(5)
    plain = mlp([784, 32, 16, 10], final_relu=True)
    rescaled = mlp([784, 32, 16, 10], final_relu=True)
    rescaled.load_state_dict(plain.state_dict())
    options = dict(radius=0.2, margin=0.1, target_active=0.7, layers=["fc1"], n_jobs=1)
    lp_initialize(plain, batch, **{**PLAIN_LP, **options})
    report = lp_initialize(rescaled, batch, **{**PLAIN_LP, **options, "rescale": mode})
    # zeros of the changed layer: identical, element by element
    with torch.no_grad():
        z_plain, z_rescaled = plain.fc1(batch.flatten(1)), rescaled.fc1(batch.flatten(1))
    assert torch.equal(z_plain > 0, z_rescaled > 0)
    layer = report.layers[0]
    assert layer.preact_rms_after == pytest.approx(layer.preact_rms_before, rel=1e-5)
    if mode == "unit":  # each unit's RMS on the batch is what it was before the LP
        torch.manual_seed(5)
        original = mlp([784, 32, 16, 10], final_relu=True)
        with torch.no_grad():
            before = original.fc1(batch.flatten(1)).double().pow(2).mean(0).sqrt()
        np.testing.assert_allclose(z_rescaled.double().pow(2).mean(0).sqrt(), before, rtol=1e-5)


def test_rescaling_changes_no_zero_count_anywhere(mnist_train):
    """A positive factor per unit keeps the sign of every pre-activation of the
    layer it scales; later layers see rescaled inputs, so only the changed
    layer is compared."""
    images, _ = mnist_train
    batch = images[:64]
    counts = []
    for rescale in (None, "unit", "layer"):
        torch.manual_seed(7)
        model = mlp([784, 20, 10], final_relu=True)
        lp_initialize(model, batch, radius=0.1, layers=["fc1"], rescale=rescale, n_jobs=1, target_active=None)
        counts.append(count_relu_zeros(model, batch).site("fc1").zeros_per_unit)
    np.testing.assert_array_equal(counts[0], counts[1])
    np.testing.assert_array_equal(counts[0], counts[2])


def test_anchor_keeps_each_units_batch_mean_and_needs_real_lps_on_hidden_layers(mnist_train):
    images, _ = mnist_train
    batch = images[:64].double()
    torch.manual_seed(8)
    model = mlp([784, 24, 12, 10]).double()
    x = batch.flatten(1)
    with torch.no_grad():
        h1 = torch.relu(model.fc1(x))
        mean_before = model.fc2(h1).mean(0)
    report = lp_initialize(
        model, batch, radius=0.2, margin=0.1, anchor="mean", layers=["fc2"], n_jobs=1, rescale=None, target_active=None
    )
    with torch.no_grad():
        mean_after = model.fc2(h1).mean(0)
    np.testing.assert_allclose(mean_after, mean_before, atol=1e-9)
    layer = report.layers[0]
    assert layer.zeros_after < layer.zeros_before  # by reshaping, not by shifting
    assert layer.iterations > 0 and layer.solver_time_s > 0  # no closed form on a ReLU-fed layer


def test_l1_does_not_take_the_corner_when_it_is_not_needed():
    """On a hidden layer (H >= 0) the plain LP's answer is the corner
    d = +rho_w, e = +rho_b, even for a unit that needs only a small raise.
    With l1 > 0 the smallest change that does the same wins."""
    rng = np.random.default_rng(0)
    H = np.abs(rng.normal(size=(20, 8)))
    W = np.full((1, 8), 0.1)
    b = np.array([-0.05 - (H @ W[0]).min()])  # every row short of the margin 0.1 by at most 0.15
    bounds = dict(weight_bound=0.5, bias_bound=0.5, margin=0.1, n_jobs=1)
    corner = solve_layer(H, W, b, **bounds)
    np.testing.assert_allclose(corner.delta_weight, 0.5)
    np.testing.assert_allclose(corner.delta_bias, 0.5)
    assert corner.objective[0] == 0.0
    smallest = solve_layer(H, W, b, l1=1e-3, **bounds)
    Z_new = H @ (W + smallest.delta_weight).T + (b + smallest.delta_bias)
    assert (Z_new >= 0.1 - 1e-9).all()  # every margin met, as at the corner
    change = np.abs(smallest.delta_weight).sum() / 0.5 + np.abs(smallest.delta_bias).sum() / 0.5
    # the corner costs 9 box units; raising the bias alone by 0.15 meets every margin for 0.3
    assert change <= 0.3 + 1e-9
    f = Formulation(8, 0.5, 0.5, 0.1, 1e-3)
    assert smallest.objective[0] == pytest.approx(linprog_general(H, H @ W.T + b, f)[0], rel=1e-6)


def test_activity_targets_are_met_whenever_the_box_allows_it():
    """C = 2 N / m: when some change in the box meets every target with margin
    m, every target row ends on its side by at least m / 2."""
    rng = np.random.default_rng(4)
    H = rng.normal(size=(50, 6))
    W = rng.normal(size=(5, 6)) / np.sqrt(6)
    b = np.zeros(5)
    Z = H @ W.T + b
    m = 0.05
    for q in (0.1, 0.5, 0.9):
        solution = solve_layer(H, W, b, weight_bound=2.0, bias_bound=3.0, margin=m, target_active=q, n_jobs=1)
        Z_new = H @ (W + solution.delta_weight).T + (b + solution.delta_bias)
        count = math.ceil(q * 50)
        for j in range(5):
            active = np.zeros(50, dtype=bool)
            active[np.argsort(-Z[:, j], kind="stable")[:count]] = True
            assert (Z_new[active, j] >= m / 2).all() and (Z_new[~active, j] <= -m / 2).all()
        assert ((Z_new > 0).sum(axis=0) == count).all()


def test_quantile_bias_gives_the_lp_targets_zero_fraction_with_the_weights_untouched(mnist_train):
    images, _ = mnist_train
    batch = images[:50]
    torch.manual_seed(9)
    model = mlp([784, 16, 8, 10])
    weights = {n: m.weight.clone() for n, m in linear_layers(model).items()}
    result = quantile_bias_(model, batch, 0.7)
    assert all(torch.equal(weights[n], m.weight) for n, m in linear_layers(model).items())
    x = batch.flatten(1)
    with torch.no_grad():
        z1 = model.fc1(x)
        z2 = model.fc2(torch.relu(z1))
    for z in (z1, z2):  # 35 of 50 samples active, unit by unit: a literal count
        assert ((z > 0).sum(0) == 35).all()
    assert [change.name for change, _ in result.layers] == ["fc1", "fc2"]


def test_quantile_thresholds_against_a_sorted_list():
    Z = np.array([[3.0, -1.0], [1.0, 5.0], [2.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(quantile_thresholds(Z, 0.5), [1.5, 1.0])  # 2 of 4 above
    np.testing.assert_allclose(quantile_thresholds(Z, 0.2), [2.5, 3.5])  # ceil(0.8) = 1 above


@pytest.mark.parametrize("rescale", [None, "unit"])
def test_bias_shift_matches_the_zero_fraction_of_each_layer(rescale, mnist_train):
    images, _ = mnist_train
    batch = images[:50]
    torch.manual_seed(10)
    model = mlp([784, 16, 8, 10])
    result = bias_shift_(model, batch, [0.2, 0.9], rescale=rescale)
    fractions = [change.zeros_after / change.elements for change, _ in result.layers]
    assert fractions == pytest.approx([0.2, 0.9], abs=1 / 400)
    for change, _ in result.layers:
        if rescale:  # each layer's scale as it was at the start, whatever the earlier layers did
            assert change.after.rms == pytest.approx(change.start.rms, rel=1e-5)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(target_active=0.5, exact=True), ValueError, "exact=True solves the plain LP"),
        (dict(anchor="mean", exact=True), ValueError, "exact=True solves the plain LP"),
        (dict(target_active=1.0), ValueError, r"target_active in \(0, 1\)"),
        (dict(target_active=0.0), ValueError, r"target_active in \(0, 1\)"),
        (dict(target_active="most"), TypeError, "target_active"),
        (dict(target_active=0.5, l1=0.1), ValueError, "Drop l1"),
        (dict(target_active=0.5, margin=0.0), ValueError, "margin > 0"),
        (dict(l1=-0.1), ValueError, "l1"),
        (dict(l1=float("nan")), ValueError, "l1"),
        (dict(rescale="row"), ValueError, "'unit', 'layer'"),
        (dict(anchor="median"), ValueError, "'mean'"),
    ],
)
def test_invalid_option_combinations_leave_the_model_bit_identical(kwargs, error, message, mnist_train):
    images, _ = mnist_train
    torch.manual_seed(11)
    model = mlp([784, 8, 10])
    before = snapshot(model)
    with pytest.raises(error, match=message):
        lp_initialize(model, images[:16], n_jobs=1, **{**PLAIN_LP, **kwargs})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("q", [0.0, 1.0, -0.5, float("nan")])
def test_quantile_bias_rejects_q_outside_the_open_interval(q, mnist_train):
    images, _ = mnist_train
    model = mlp([784, 8, 10])
    before = snapshot(model)
    with pytest.raises(ValueError, match="q"):
        quantile_bias_(model, images[:16], q)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tiny_matrix_entries_are_not_a_solver_failure():
    """HiGHS drops entries below 1e-9 with a warning (kWarning), which is no
    reason to refuse the layer: here one column's mean (the anchor's row) is 3e-13."""
    rng = np.random.default_rng(0)
    H = np.abs(rng.normal(size=(30, 4)))
    H[:, 0] = 0.0
    H[0, 0] = 1e-11
    W, b = rng.normal(size=(3, 4)), np.zeros(3)
    for solver in SOLVERS:
        solution = solve_layer(
            H, W, b, weight_bound=0.1, bias_bound=0.1, margin=0.1, anchor=True, n_jobs=1, solver=solver
        )
        assert solution.status_counts() == {"optimal": 3}


def test_rescale_holds_every_layers_start_scale_through_the_network(mnist_train):
    """With activity targets that make most units active, the later layers'
    inputs grow; rescaling holds each unit at the RMS it had at the start."""
    images, _ = mnist_train
    batch = images[:64]
    torch.manual_seed(12)
    start = mlp([784, 32, 16, 10], final_relu=True)
    changed = mlp([784, 32, 16, 10], final_relu=True)
    changed.load_state_dict(start.state_dict())
    quantile_bias_(changed, batch, 0.9, rescale="unit")
    x = batch.flatten(1)
    with torch.no_grad():
        h0, h1 = x, x
        for name in ("fc1", "fc2", "fc3"):
            z0, z1 = getattr(start, name)(h0), getattr(changed, name)(h1)
            np.testing.assert_allclose(z1.pow(2).mean(0).sqrt(), z0.pow(2).mean(0).sqrt(), rtol=1e-4)
            assert ((z1 > 0).sum(0) == 58).all()  # ceil(0.9 * 64) active, unit by unit
            h0, h1 = torch.relu(z0), torch.relu(z1)


def test_a_layer_with_constant_preactivations_and_a_target_gets_a_clear_error():
    # reproduction (issue 14's deep, narrow nets): a dead first layer makes the
    # next layer's input constant; target_active then reported "Expected
    # margin > 0 with target_active ... got 0.0" although margin=0.1 was passed
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.fill_(-5.0)  # zero on every input in [-1, 1]^2: dead
        model[2].bias.zero_()  # as He's zero biases: the next layer's pre-activations are all 0
    before = snapshot(model)
    x = torch.rand(32, 2) * 2 - 1
    with pytest.raises(ValueError, match=r"Layer '2' has the same pre-activation on every row.*dead"):
        lp_initialize(model, x, n_jobs=1, layers=["2"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name, form", [("anchor", "lp"), ("target", "rows"), ("target", "dual_rows")])
def test_a_stalled_lp_is_finished_on_its_dual(name, form, monkeypatch):
    """Simplex stopped by the iteration cap (a stall) on the LP itself, whole
    or on working rows, or on the dual's working rows: the unit is solved
    again as the whole dual, and the answer is still linprog's."""
    import lpinit.lp.highs as highs_path

    n, d_in = (60, 5) if form == "dual_rows" else (12, 20)  # tall: the dual's working rows; wide: the LP itself
    H, W, b = small_layer(4, relu_input=True, n=n, d_in=d_in)
    options = OPTIONS[name]
    f = Formulation(
        d_in, 0.3, 0.2, 0.2, anchor=options.get("anchor", False), target_active=options.get("target_active")
    )
    caps = []

    def tiny_cap(rows):
        caps.append(rows)
        return 1  # every first run stalls; the dual's run then finishes by IPM

    monkeypatch.setattr(highs_path, "iteration_cap", tiny_cap)
    solution = solve_layer(H, W, b, weight_bound=0.3, bias_bound=0.2, margin=0.2, n_jobs=1, **options)
    assert solution.status_counts() == {"optimal": len(W)}
    np.testing.assert_allclose(solution.objective, linprog_general(H, H @ W.T + b, f), rtol=1e-6, atol=1e-9)
    models = highs_path._general_models.last[1]
    assert set(models) == {form, "dual"}  # the LP (in its form) and its dual were both built
    # two stalls of the LP, then the dual directly: one capped run per unit, plus the two stalled ones
    assert len(caps) == len(W) + 2


def test_the_anchor_reach_summary_is_computed_from_its_cells():
    from experiments.anchor_reach import summary, table

    def cell(batch_size, radius, after_batch, after_heldout):
        layers = {"fc1": after_batch}
        return {
            "batch_size": batch_size,
            "radius": radius,
            "zeros_before_batch": 0.5,
            "zeros_after_batch": after_batch,
            "zeros_before_heldout": 0.49,
            "zeros_after_heldout": after_heldout,
            "layers_after_batch": layers,
            "layers_after_heldout": layers,
            "lp_seconds": 1.0,
        }

    cells = [cell(256, 0.1, 0.45, 0.48), cell(256, 1.0, 0.36, 0.51), cell(1024, 0.1, 0.47, 0.46)]
    assert summary(cells).splitlines() == [
        "Batch 256: at radius 1 the zeros fall from 0.500 to 0.360 on the batch and from 0.490 to 0.510 held out "
        "(gap 0.150); held out they fall by at most 0.010 (radius 0.1) and rise at radius 1.",
        "Batch 1024: at radius 0.1 the zeros fall from 0.500 to 0.470 on the batch and from 0.490 to 0.460 held out "
        "(gap -0.010); held out they fall by at most 0.030 (radius 0.1).",
    ]
    assert table(cells).count("\n") == 4
