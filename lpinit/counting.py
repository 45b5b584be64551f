"""Count the zeros that a model's ReLUs output on a dataset.

The seed notebook's semantics: every element of every ReLU application's
output that equals 0 is one zero, so a ReLU module reused four times is four
sites. Counting is a side effect of one ordinary forward pass per batch
(``lpinit.tracing`` sees each ReLU), with no Python loop over elements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpinit.tracing import ReluCall, eval_mode, site_names, watch_relus
from lpinit.validation import check_data_tensor, check_model, run_model


@dataclass
class SiteZeros:
    """Zeros of one ReLU application site (``name`` = the layer feeding it).

    A unit is one value of a sample's ReLU output: one neuron after a Linear
    layer, one (channel, position) element after a convolution, so a site's
    ``zeros_per_unit[u]`` counts the samples on which unit ``u`` of the output,
    flattened in C order from ``shape``, is 0. ``zeros_per_channel()`` sums
    those over the positions of each channel.
    """

    name: str
    zeros: int
    elements: int
    zeros_per_unit: np.ndarray  # (units,) zeros of each unit over the samples
    samples: int
    shape: tuple[int, ...]  # one sample's ReLU output: (units,) after a Linear, (C, H, W) after a Conv2d
    silent_samples: int = 0  # samples on which every unit of the site is 0: the layer passes nothing of them

    @property
    def units(self) -> int:
        return self.zeros_per_unit.size

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.elements

    @property
    def dead_units(self) -> np.ndarray:
        """Indices of units that output 0 on every sample."""
        return np.flatnonzero(self.zeros_per_unit == self.samples)

    @property
    def always_active_units(self) -> np.ndarray:
        """Indices of units that are positive on every sample."""
        return np.flatnonzero(self.zeros_per_unit == 0)

    def zeros_per_channel(self) -> np.ndarray:
        """Zeros of each channel (the first axis of ``shape``), over the samples
        and the channel's positions: ``zeros_per_unit`` for a Linear site, one
        count per feature map for a convolution (out of ``samples * H * W``)."""
        return self.zeros_per_unit.reshape(self.shape[0] if self.shape else 1, -1).sum(axis=1)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "zeros": self.zeros,
            "elements": self.elements,
            "units": self.units,
            "shape": list(self.shape),
            "zero_fraction": self.zero_fraction,
            "dead_units": int(self.dead_units.size),
            "always_active_units": int(self.always_active_units.size),
            "silent_samples": self.silent_samples,
            "zeros_per_unit": self.zeros_per_unit.tolist(),
        }


@dataclass
class ReluZeros:
    """What ``count_relu_zeros`` found: totals, per-site detail, and patterns."""

    samples: int
    sites: list[SiteZeros]
    distinct_patterns: int | None  # None when pattern counting was turned off

    @property
    def total_zeros(self) -> int:
        return sum(site.zeros for site in self.sites)

    @property
    def total_elements(self) -> int:
        return sum(site.elements for site in self.sites)

    @property
    def zero_fraction(self) -> float:
        return self.total_zeros / self.total_elements

    @property
    def dead_units(self) -> int:
        return sum(site.dead_units.size for site in self.sites)

    def site(self, name: str) -> SiteZeros:
        for s in self.sites:
            if s.name == name:
                return s
        valid = ", ".join(s.name for s in self.sites)
        raise KeyError(f"No ReLU site named {name!r}. Sites: {valid}.")

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "total_zeros": self.total_zeros,
            "total_elements": self.total_elements,
            "zero_fraction": self.zero_fraction,
            "dead_units": self.dead_units,
            "distinct_patterns": self.distinct_patterns,
            "sites": [s.to_dict() for s in self.sites],
        }

    def __str__(self) -> str:
        rows = [f"{'site':<12}{'units':>7}{'zeros':>14}{'fraction':>10}{'dead':>7}{'always on':>11}"]
        for s in self.sites:
            rows.append(
                f"{s.name:<12}{s.units:>7}{s.zeros:>14,}{s.zero_fraction:>10.4f}"
                f"{s.dead_units.size:>7}{s.always_active_units.size:>11}"
            )
        patterns = "not counted" if self.distinct_patterns is None else f"{self.distinct_patterns:,}"
        rows.append(
            f"{'total':<12}{sum(s.units for s in self.sites):>7}{self.total_zeros:>14,}"
            f"{self.zero_fraction:>10.4f}{self.dead_units:>7}"
        )
        rows.append(f"{self.samples:,} samples, {patterns} distinct activation patterns")
        return "\n".join(rows)


def _batches(data, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield input batches from a tensor, an (inputs, labels) pair, or an
    iterable of batches such as a DataLoader (of tensors or (X, y) tuples)."""
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        data = data[0]
    if isinstance(data, torch.Tensor):
        check_data_tensor(data)
        yield from torch.split(data, batch_size)
        return
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise TypeError(
            "Expected data as a tensor of samples, an (inputs, labels) pair, or an "
            f"iterable of batches (e.g. a DataLoader), got {type(data).__name__}."
        )
    for batch in data:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield check_data_tensor(batch, "batch")


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()  # e.g. half or bfloat16, which numpy lacks
    return tensor.detach().cpu().numpy()


_BLOCK_ROWS = 255  # the most 0/1 rows whose sum fits a uint8


def _add_column_counts(mask: np.ndarray, totals: np.ndarray) -> None:
    """``totals += mask.sum(axis=0)`` for a 2-D boolean ``mask``.

    Summed as bytes in blocks of 255 rows, then the block sums as int64: numpy
    adds uint8 to uint8 with SIMD, while a bool-to-int sum casts element by element.
    """
    rows = mask.view(np.uint8)
    whole = rows.shape[0] // _BLOCK_ROWS * _BLOCK_ROWS
    if whole:
        blocks = rows[:whole].reshape(-1, _BLOCK_ROWS, rows.shape[1]).sum(axis=1, dtype=np.uint8)
        totals += blocks.sum(axis=0, dtype=np.int64)
    if whole < rows.shape[0]:
        totals += rows[whole:].sum(axis=0, dtype=np.uint8)


@dataclass
class _SiteTally:
    shape: tuple[int, ...]  # one sample's ReLU output
    zeros: np.ndarray  # (units,) int64
    silent: int  # samples with every unit 0
    packed: list[np.ndarray]  # one (batch, ceil(units / 8)) uint8 array per batch


class _Tally:
    """Per-site zero counts and packed activation patterns, updated as each ReLU
    runs, while its output is still in cache and before any later in-place op
    can change it."""

    def __init__(self, patterns: bool):
        self.patterns = patterns
        self.sites: list[_SiteTally] = []
        self.first_pass: list[ReluCall] | None = []  # kept until the sites are named
        self.names: list[str] = []
        self.batch_size = 0
        self.applied = 0  # ReLUs applied in the current pass
        self.samples = 0

    def start(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.applied = 0

    def on_relu(self, call: ReluCall) -> None:
        out = call.output
        if out.numel() % self.batch_size:
            raise ValueError(
                f"Expected every ReLU output to hold the same number of values for each sample, but ReLU "
                f"#{call.position + 1} returned shape {tuple(out.shape)} for a batch of {self.batch_size}. "
                "Counting needs ReLUs applied to batch-first tensors."
            )
        values = _as_numpy(out.reshape(self.batch_size, -1))
        if self.first_pass is not None:
            shape = tuple(out.shape[1:]) if out.shape[0] == self.batch_size else (values.shape[1],)
            self.sites.append(_SiteTally(shape, np.zeros(values.shape[1], dtype=np.int64), 0, []))
            self.first_pass.append(call)
        elif self.applied >= len(self.sites):
            raise ValueError(
                f"Expected every forward pass to apply the same ReLUs, but one applied more than the "
                f"{len(self.sites)} of the first. Counting needs a model whose ReLU sites do not depend on the batch."
            )
        elif values.shape[1] != self.sites[self.applied].zeros.size:
            raise ValueError(
                f"Expected every forward pass to apply the same ReLUs, but ReLU #{self.applied + 1} output "
                f"{values.shape[1]} values per sample, and {self.sites[self.applied].zeros.size} in the first "
                "pass. Counting needs a model whose ReLU sites do not depend on the batch."
            )
        site = self.sites[self.applied]
        zero = values == 0
        _add_column_counts(zero, site.zeros)
        site.silent += int(zero.all(axis=1).sum())
        if self.patterns:
            site.packed.append(np.packbits(values > 0, axis=1))
        self.applied += 1

    def finish(self) -> None:
        if self.first_pass is not None:
            self.names = site_names(self.first_pass)
            self.first_pass = None  # drop the references to the first batch's outputs
        elif self.applied != len(self.sites):
            raise ValueError(
                f"Expected every forward pass to apply the same ReLUs, but one applied "
                f"{self.applied} and the first {len(self.sites)}. Counting needs a model "
                "whose ReLU sites do not depend on the batch."
            )
        self.samples += self.batch_size

    def result(self) -> ReluZeros:
        sites = [
            SiteZeros(
                name,
                int(site.zeros.sum()),
                site.zeros.size * self.samples,
                site.zeros,
                self.samples,
                site.shape,
                site.silent,
            )
            for name, site in zip(self.names, self.sites, strict=True)
        ]
        distinct = None
        if self.patterns:
            # One row of bits per sample, each site padded to whole bytes (the
            # padding bits are 0 in every row, so they change no comparison).
            rows = np.concatenate([np.concatenate(site.packed) for site in self.sites], axis=1)
            distinct = len(np.unique(rows.view(np.dtype((np.void, rows.shape[1])))))
        return ReluZeros(self.samples, sites, distinct)


def count_relu_zeros(
    model: nn.Module,
    data: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Iterable,
    batch_size: int = 1000,
    *,
    patterns: bool = True,
) -> ReluZeros:
    """Count the zeros output by every ReLU application of ``model`` on ``data``.

    Each ReLU output is counted as the ReLU produces it, before a later
    in-place op can change it. A sample's activation pattern is the set of
    units with a positive output, across all sites; ``distinct_patterns``
    counts the different patterns. A unit is one value of a sample's ReLU
    output (see ``SiteZeros``: a channel and position after a convolution).
    The model runs in eval mode under ``torch.no_grad()``; its outputs,
    parameters and train/eval mode are left as they were.

    Args:
        model: any ``nn.Module`` applying ReLUs (modules, reused modules,
            ``F.relu``/``torch.relu`` calls, in-place variants).
        data: a float tensor of samples (n, ...), an (inputs, labels) pair, or
            an iterable of such batches (e.g. a ``DataLoader``); batches are
            moved to the model's device.
        batch_size: samples per forward pass when ``data`` is a tensor.
        patterns: also count distinct activation patterns (keeps one bit per
            unit and sample in memory).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        ...     _ = net[0].bias.zero_()
        >>> zeros = count_relu_zeros(net, torch.tensor([[1.0, 2.0], [-1.0, 3.0]]))
        >>> zeros.total_zeros, zeros.site("0").zeros_per_unit.tolist(), zeros.distinct_patterns
        (3, [1, 0, 2], 2)
    """
    check_model(model)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"Expected batch_size to be a positive int, got {batch_size!r}.")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    tally = _Tally(patterns)
    with eval_mode(model), torch.no_grad(), watch_relus(model, tally.on_relu):
        for batch in _batches(data, batch_size):
            batch = batch.to(device)
            tally.start(batch.shape[0])
            run_model(model, batch)
            if tally.applied == 0:
                raise ValueError(
                    f"Expected a model that applies at least one ReLU, got a "
                    f"{type(model).__name__} whose forward pass applied none. Use a "
                    "model with nn.ReLU modules or F.relu/torch.relu calls."
                )
            tally.finish()
    if tally.samples == 0:
        raise ValueError("Expected at least one sample in data, got an empty iterable of batches.")
    return tally.result()


class ReluCount(nn.ReLU):
    """Drop-in, vectorized replacement for the seed notebook's ``ReluCount``.

    Behaves as ``nn.ReLU``; while ``count_zeros`` is True it adds the number of
    zeros in each output to ``zero_count``.
    """

    def __init__(self, inplace: bool = False):
        super().__init__(inplace)
        self.zero_count = 0
        self.count_zeros = False

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        result = F.relu(input, inplace=self.inplace)
        if self.count_zeros:
            self.zero_count += int((result == 0).sum())
        return result
