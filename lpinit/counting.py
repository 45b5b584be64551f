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
    """Zeros of one ReLU application site (``name`` = the layer feeding it)."""

    name: str
    zeros: int
    elements: int
    zeros_per_unit: np.ndarray  # (units,) zeros of each unit over the samples
    samples: int

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

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "zeros": self.zeros,
            "elements": self.elements,
            "units": self.units,
            "zero_fraction": self.zero_fraction,
            "dead_units": int(self.dead_units.size),
            "always_active_units": int(self.always_active_units.size),
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


class _Tally:
    """Accumulates per-site zero counts and packed activation patterns."""

    def __init__(self, patterns: bool):
        self.patterns = patterns
        self.per_unit: list[np.ndarray] = []  # one (units,) int64 array per site
        self.packed: list[np.ndarray] = []  # one (batch, bytes) array per batch
        self.calls: list[ReluCall] | None = None  # the first batch's sites, for names
        self.samples = 0

    def add(self, calls: list[ReluCall], batch_size: int) -> None:
        if self.calls is None:
            self.calls = calls
            self.per_unit = [np.zeros(c.output[0].numel(), dtype=np.int64) for c in calls]
        elif len(calls) != len(self.calls):
            raise ValueError(
                f"Expected every forward pass to apply the same ReLUs, but one applied "
                f"{len(calls)} and the first {len(self.calls)}. Counting needs a model "
                "whose ReLU sites do not depend on the batch."
            )
        active = []
        for i, call in enumerate(calls):
            # numpy's single-threaded reductions beat torch's on these small
            # (batch, units) arrays, and avoid thread hand-offs on a busy machine.
            out = _as_numpy(call.output.reshape(batch_size, -1))
            self.per_unit[i] += batch_size - np.count_nonzero(out, axis=0)
            if self.patterns:
                active.append(out > 0)
        if self.patterns:
            self.packed.append(np.packbits(np.concatenate(active, axis=1), axis=1))
        self.samples += batch_size

    def result(self) -> ReluZeros:
        names = site_names(self.calls)
        sites = []
        for name, per_unit in zip(names, self.per_unit, strict=True):
            sites.append(SiteZeros(name, int(per_unit.sum()), per_unit.size * self.samples, per_unit, self.samples))
        distinct = None
        if self.patterns:
            rows = np.ascontiguousarray(np.concatenate(self.packed))
            distinct = len(np.unique(rows.view(np.dtype((np.void, rows.shape[1])))))
        return ReluZeros(self.samples, sites, distinct)


def count_relu_zeros(model: nn.Module, data, batch_size: int = 1000, *, patterns: bool = True) -> ReluZeros:
    """Count the zeros output by every ReLU application of ``model`` on ``data``.

    A sample's activation pattern is the set of units with a positive output,
    across all sites; ``distinct_patterns`` counts the different patterns.
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
        >>> from lpinit import count_relu_zeros, seed_mlp, load_mnist
        >>> images, _ = load_mnist(train=False)
        >>> zeros = count_relu_zeros(seed_mlp(), images)
        >>> zeros.total_zeros, zeros.site("fc1").zero_fraction
    """
    check_model(model)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"Expected batch_size to be a positive int, got {batch_size!r}.")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    tally = _Tally(patterns)
    calls: list[ReluCall] = []
    with eval_mode(model), torch.no_grad(), watch_relus(model, calls.append):
        for batch in _batches(data, batch_size):
            calls.clear()
            batch = batch.to(device)
            run_model(model, batch)
            if not calls:
                raise ValueError(
                    f"Expected a model that applies at least one ReLU, got a "
                    f"{type(model).__name__} whose forward pass applied none. Use a "
                    "model with nn.ReLU modules or F.relu/torch.relu calls."
                )
            tally.add(list(calls), batch.shape[0])
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
