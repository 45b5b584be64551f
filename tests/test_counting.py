"""ReLU-zero counting, checked against literal per-element counts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lpinit import ReluCount, count_relu_zeros, mlp, seed_mlp
from lpinit.counting import _add_column_counts


def literal_zeros(tensor: torch.Tensor) -> int:
    """The seed notebook's oracle: one Python comparison per element."""
    return sum(1 for entry in torch.flatten(tensor) if entry.item() == 0)


class SeedReluCount(nn.ReLU):
    """The notebook's ReluCount, verbatim in behaviour (element loop)."""

    def __init__(self, inplace: bool = False):
        super().__init__(inplace)
        self.zero_count = 0
        self.count_zeros = False

    def forward(self, input):
        true_result = F.relu(input, inplace=self.inplace)
        if self.count_zeros:
            for entry in torch.flatten(true_result):
                if entry.item() == 0:
                    self.zero_count += 1
        return true_result


class Functional(nn.Module):
    """ReLUs as F.relu, Tensor.relu_, torch.relu and in-place F.relu."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 5), nn.Linear(5, 4)

    def stages(self, x):
        h1 = F.relu(self.a(x))
        h2 = self.b(h1).relu_()
        h3 = torch.relu(self.c(h2) - 0.1)
        h4 = F.relu(h3 - 0.2, inplace=True)
        return [h1, h2, h3, h4]

    def forward(self, x):
        return self.stages(x)[-1]


@pytest.fixture
def small_data(generator):
    return torch.randn(97, 6, generator=generator)


def test_functional_and_inplace_relus_match_literal_count(small_data):
    torch.manual_seed(0)
    model = Functional()
    with torch.no_grad():
        stages = model.stages(small_data)
    result = count_relu_zeros(model, small_data, batch_size=10)
    assert [s.name for s in result.sites] == ["a", "b", "relu@2", "relu@3"]
    assert [s.zeros for s in result.sites] == [literal_zeros(h) for h in stages]
    assert result.total_zeros == sum(literal_zeros(h) for h in stages)
    for site, h in zip(result.sites, stages, strict=True):
        assert site.elements == h.numel()
        np.testing.assert_array_equal(site.zeros_per_unit, (h == 0).sum(0).numpy())


def test_reused_relu_module_counts_every_site(small_data):
    torch.manual_seed(1)
    relu = nn.ReLU(inplace=True)
    model = nn.Sequential(nn.Linear(6, 7), relu, nn.Linear(7, 7), relu, nn.Linear(7, 3), relu)
    with torch.no_grad():
        h1 = torch.relu(model[0](small_data))
        h2 = torch.relu(model[2](h1))
        h3 = torch.relu(model[4](h2))
    result = count_relu_zeros(model, small_data, batch_size=32)
    assert [s.name for s in result.sites] == ["0", "2", "4"]
    assert result.total_zeros == literal_zeros(h1) + literal_zeros(h2) + literal_zeros(h3)


def test_seed_model_matches_the_notebooks_loop(mnist_test):
    images = mnist_test[0][:200]
    torch.manual_seed(0)
    model = seed_mlp()
    counter = SeedReluCount()
    model.relu = counter
    counter.count_zeros = True
    with torch.no_grad():
        for batch in images.split(100):
            model(batch)
    counter.count_zeros = False
    result = count_relu_zeros(model, images, batch_size=64)
    assert result.total_zeros == counter.zero_count
    assert [s.name for s in result.sites] == ["fc1", "fc2", "fc3", "fc4"]


def test_vectorized_relucount_is_a_drop_in(mnist_test):
    images = mnist_test[0][:100]
    torch.manual_seed(0)
    model = seed_mlp()
    seed_counter, fast_counter = SeedReluCount(), ReluCount()
    totals = []
    for counter in (seed_counter, fast_counter):
        model.relu = counter
        counter.count_zeros = True
        with torch.no_grad():
            out = model(images)
        counter.count_zeros = False
        model(images)  # not counted
        totals.append((counter.zero_count, out))
    assert totals[0][0] == totals[1][0] > 0
    assert torch.equal(totals[0][1], totals[1][1])


def test_dead_and_always_active_units_and_patterns():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]]))
        model[0].bias.copy_(torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    data = torch.tensor([[1.0, 1, 0], [1, -1, 0], [-1, 1, 0], [1, 1, 5], [2, 3, 0]])
    result = count_relu_zeros(model, data, batch_size=2)
    site = result.sites[0]
    assert site.dead_units.tolist() == [0]
    assert site.always_active_units.tolist() == [1]
    assert site.zeros_per_unit.tolist() == [5, 0, 1, 1]
    # patterns (unit 2, unit 3 active): (1,1), (1,0), (0,1), (1,1), (1,1) -> 3 distinct
    assert result.distinct_patterns == 3
    assert result.dead_units == 1
    assert site.silent_samples == 0  # unit 1 is on for every sample
    with torch.no_grad():
        model[0].bias[1] = -1.0
    # units 2 and 3 are relu(x0) and relu(x1), the others now 0: only [-1, -2, 3] is silent
    silent = count_relu_zeros(model, torch.cat([data, torch.tensor([[-1.0, -2, 3]])]), batch_size=2).sites[0]
    assert silent.silent_samples == 1 and silent.to_dict()["silent_samples"] == 1


def test_distinct_patterns_match_a_set_of_tuples(generator):
    torch.manual_seed(2)
    model = mlp([5, 6, 4, 3])
    data = torch.randn(300, 5, generator=generator)
    with torch.no_grad():
        h1 = torch.relu(model.fc1(data))
        h2 = torch.relu(model.fc2(h1))
    pattern = torch.cat([h1 > 0, h2 > 0], dim=1)
    expected = len({tuple(row.tolist()) for row in pattern})
    assert count_relu_zeros(model, data, batch_size=7).distinct_patterns == expected
    assert count_relu_zeros(model, data, patterns=False).distinct_patterns is None


def test_distinct_patterns_of_functional_relus_match_a_set_of_tuples(small_data):
    torch.manual_seed(3)
    model = Functional()
    with torch.no_grad():
        stages = model.stages(small_data)
    expected = len({tuple(bool(v > 0) for h in stages for v in h[i]) for i in range(small_data.shape[0])})
    for batch_size in (1, 10, 97):
        assert count_relu_zeros(model, small_data, batch_size=batch_size).distinct_patterns == expected


@pytest.mark.parametrize("rows", [0, 1, 254, 255, 256, 510, 511, 1000])
def test_column_counts_in_byte_blocks_match_a_literal_sum(rows, generator):
    mask = (torch.rand(rows, 13, generator=generator) < 0.9).numpy()
    totals = np.full(13, 7, dtype=np.int64)
    _add_column_counts(mask, totals)
    expected = [7 + sum(1 for r in range(rows) if mask[r, c]) for c in range(13)]
    assert totals.tolist() == expected


def test_batches_longer_than_a_byte_block_match_literal_counts(generator):
    torch.manual_seed(4)
    model = mlp([5, 9, 3], final_relu=True)
    data = torch.randn(700, 5, generator=generator)
    with torch.no_grad():
        h1 = torch.relu(model.fc1(data))
        h2 = torch.relu(model.fc2(h1))
    result = count_relu_zeros(model, data, batch_size=600)  # one batch of 600, one of 100
    for site, h in zip(result.sites, (h1, h2), strict=True):
        literal = [sum(1 for i in range(700) if h[i, u].item() == 0) for u in range(h.shape[1])]
        assert site.zeros_per_unit.tolist() == literal
    assert result.site("fc1").dead_units.tolist() == [u for u in range(9) if (h1[:, u] == 0).all()]
    for site, h in zip(result.sites, (h1, h2), strict=True):
        assert site.silent_samples == sum(1 for i in range(700) if all(v == 0 for v in h[i].tolist()))
    assert result.site("fc1").shape == (9,)
    assert result.site("fc1").zeros_per_channel().tolist() == result.site("fc1").zeros_per_unit.tolist()


class OverwritesItsActivations(nn.Module):
    """Changes a ReLU's output in place after the ReLU ran, as residual code may."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        h = torch.relu(self.fc(x))
        out = h.sum(1, keepdim=True)
        h.mul_(0)
        return out


def test_relu_outputs_are_counted_before_later_inplace_ops(generator):
    torch.manual_seed(5)
    model = OverwritesItsActivations()
    data = torch.randn(40, 4, generator=generator)
    with torch.no_grad():
        h = torch.relu(model.fc(data))
    result = count_relu_zeros(model, data, batch_size=16)
    assert result.total_zeros == literal_zeros(h) < h.numel()


class SmallConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


def test_conv_site_counts_channel_and_position_elements(generator):
    torch.manual_seed(6)
    model = SmallConvNet()
    data = torch.randn(25, 1, 6, 6, generator=generator)
    with torch.no_grad():
        h = F.relu(model.conv(data))  # (25, 2, 4, 4)
    result = count_relu_zeros(model, data, batch_size=8)
    site = result.site("conv")
    assert site.shape == (2, 4, 4)
    assert site.units == 32
    assert site.elements == 25 * 32
    for c in range(2):
        for i in range(4):
            for j in range(4):
                literal = sum(1 for n in range(25) if h[n, c, i, j].item() == 0)
                assert site.zeros_per_unit[c * 16 + i * 4 + j] == literal
    per_channel = [
        sum(1 for n in range(25) for i in range(4) for j in range(4) if h[n, c, i, j].item() == 0) for c in range(2)
    ]
    assert site.zeros_per_channel().tolist() == per_channel
    assert site.zeros == sum(per_channel) == literal_zeros(h)


def test_model_is_left_as_it_was(mnist_test):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 20), nn.Dropout(0.5), nn.ReLU(), nn.Linear(20, 10))
    model.train()
    images = mnist_test[0][:50]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    expected = model(images)
    model.train()
    count_relu_zeros(model, images)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    assert torch.equal(model(images), expected)


def test_accepts_pairs_and_dataloaders(mnist_test):
    images, labels = mnist_test[0][:120], mnist_test[1][:120]
    torch.manual_seed(0)
    model = seed_mlp()
    reference = count_relu_zeros(model, images)
    loader = DataLoader(TensorDataset(images, labels), batch_size=50)
    assert count_relu_zeros(model, (images, labels)).total_zeros == reference.total_zeros
    from_loader = count_relu_zeros(model, loader)
    assert from_loader.total_zeros == reference.total_zeros
    assert from_loader.distinct_patterns == reference.distinct_patterns
    assert from_loader.samples == 120


def test_train_eval_flags_are_restored_per_module(generator):
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.3), nn.Linear(5, 2))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    flags = [m.training for m in model.modules()]
    count_relu_zeros(model, torch.randn(10, 4, generator=generator))
    assert [m.training for m in model.modules()] == flags
    with pytest.raises(ValueError, match="could not run on a batch"):
        count_relu_zeros(model, torch.randn(10, 7, generator=generator))
    assert [m.training for m in model.modules()] == flags


class BatchDependent(nn.Module):
    """Applies a second ReLU, or a wider one, only to some batches."""

    def __init__(self, change: str):
        super().__init__()
        self.change = change
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        z = self.fc(x)
        h = torch.relu(torch.cat([z, z], 1) if x.shape[0] < 5 and self.change == "wider" else z)
        if x.shape[0] < 5 and self.change == "more":
            h = torch.relu(h - 1)
        if x.shape[0] >= 5 and self.change == "fewer":
            h = torch.relu(h - 1)
        return h


@pytest.mark.parametrize(
    "change, message",
    [
        ("more", "applied more than the 1 of the first"),
        ("wider", "output 8 values per sample, and 4"),
        ("fewer", "applied 1 and the first 2"),
    ],
)
def test_relus_that_change_between_batches_are_rejected(change, message, generator):
    model = BatchDependent(change)
    model.train()
    with pytest.raises(ValueError, match=message):
        count_relu_zeros(model, torch.randn(7, 3, generator=generator), batch_size=5)
    assert model.training


@pytest.mark.parametrize(
    "data, error, message",
    [
        (torch.zeros(4, 5), ValueError, "could not run on a batch of shape \\(4, 5\\).*784 features"),
        (torch.zeros(4, 784, dtype=torch.int64), TypeError, "floating dtype, got torch.int64"),
        (torch.zeros(0, 784), ValueError, "at least one sample"),
        (torch.zeros(3, 784).index_fill_(1, torch.tensor([5]), float("nan")), ValueError, "3 NaN or inf"),
        (torch.tensor([[float("inf")] * 784]), ValueError, "784 NaN or inf"),
        ([], ValueError, "empty iterable"),
        (DataLoader(TensorDataset(torch.zeros(0, 784)), batch_size=4), ValueError, "empty iterable"),
        ("images", TypeError, "Expected data as a tensor"),
    ],
)
def test_bad_data_gets_a_clear_error(data, error, message):
    with pytest.raises(error, match=message):
        count_relu_zeros(seed_mlp(), data)


def test_model_without_relu_is_rejected():
    with pytest.raises(ValueError, match=r"at least one ReLU.*Sequential"):
        count_relu_zeros(nn.Sequential(nn.Linear(3, 2), nn.Tanh()), torch.zeros(2, 3))


def test_bad_batch_size_and_model():
    with pytest.raises(ValueError, match="batch_size"):
        count_relu_zeros(seed_mlp(), torch.zeros(2, 784), batch_size=0)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        count_relu_zeros(lambda x: x, torch.zeros(2, 784))


def test_result_serializes_and_prints(mnist_test):
    result = count_relu_zeros(seed_mlp(), mnist_test[0][:30])
    as_dict = result.to_dict()
    assert as_dict["total_zeros"] == result.total_zeros
    assert [s["name"] for s in as_dict["sites"]] == ["fc1", "fc2", "fc3", "fc4"]
    assert "distinct activation patterns" in str(result)
    with pytest.raises(KeyError, match="Sites: fc1, fc2, fc3, fc4"):
        result.site("fc9")


class ReluOnAParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.gate = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return self.fc(x) * torch.relu(self.gate).sum()


def test_relu_outputs_that_are_not_batch_first_are_rejected():
    with pytest.raises(ValueError, match=r"ReLU #1 returned shape \(5,\) for a batch of 4.*batch-first"):
        count_relu_zeros(ReluOnAParameter(), torch.zeros(4, 3))
