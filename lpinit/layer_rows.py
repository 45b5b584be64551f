r"""A layer as rows of a matrix: what the per-unit LPs of ``lp_initialize``
and the closed-form controls see of a ``nn.Linear`` or a ``nn.Conv2d``.

Both layers compute ``Z = H W^T + b`` for some matrix ``H`` of inputs and
their weights ``W`` as a (units x d_in) matrix:

- ``nn.Linear``: a row of ``H`` is the input of one sample (or of one
  position, for inputs of shape (n, ..., d_in)); a unit is an output feature.
- ``nn.Conv2d`` (``groups=1``): a row of ``H`` is one input patch, for one
  (sample, output position) pair, the ``in_channels * kh * kw`` values the
  kernel sees there (the columns of ``torch.nn.functional.unfold``, after
  the layer's own padding, in any ``padding_mode``); a unit is an output channel, and ``W``
  its kernel reshaped to ``(out_channels, in_channels * kh * kw)``. A batch
  of n images with an ``oh x ow`` output has ``n oh ow`` rows per channel.

Rows are numbered sample-major: row ``s L + p`` is sample ``s`` at output
position ``p`` (row-major over the ``L = oh ow`` positions), as in the layer's
output. ``choose_rows`` draws the seeded subsample of rows that a layer's LP
sees when the batch has more than ``max_rows`` of them.
"""

from __future__ import annotations

import zlib
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}
"""``nn.Conv2d.padding_mode`` -> the ``F.pad`` mode that pads the same way."""

PATCH_CHUNK_ELEMENTS = 1 << 24
"""A layer's patch matrix with at most this many entries (128 MiB) is built
once and kept; a larger one is never built whole: every row's
pre-activations are computed this many entries at a time."""


class LinearRows:
    """A ``nn.Linear``'s input as rows: ``H`` is the input, flattened to
    (rows, in_features)."""

    def __init__(self, layer: nn.Linear, x: torch.Tensor):
        self.samples = x.shape[0] if x.dim() > 1 else 1
        self.X = x.detach().reshape(-1, layer.in_features).to("cpu", torch.float64).numpy()

    @property
    def count(self) -> int:
        return self.X.shape[0]

    def take(self, rows: np.ndarray | None) -> np.ndarray:
        """Rows of ``H`` (all of them for ``None``), float64."""
        return self.X if rows is None else self.X[rows]

    def preactivations(self, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``H W^T + b`` on every row, (rows, units)."""
        return self.X @ W.T + b


class Conv2dRows:
    """A ``nn.Conv2d``'s input as rows of patches (module docstring)."""

    def __init__(self, layer: nn.Conv2d, x: torch.Tensor):
        check_conv(layer, "")
        x = x.detach().to("cpu", torch.float64)
        if x.dim() == 3:  # an unbatched input (C, H, W)
            x = x.unsqueeze(0)
        padded = F.pad(x, conv_padding(layer), mode=PADDING_MODES[layer.padding_mode]).numpy()
        (kh, kw), (dh, dw), (sh, sw) = layer.kernel_size, layer.dilation, layer.stride
        span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        # a view, no copy: windows[s, i, j] is the patch (C, kh, kw) of sample s at output position (i, j)
        windows = sliding_window_view(padded, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
        self.windows = windows.transpose(0, 2, 3, 1, 4, 5)
        self.samples, out_h, out_w = self.windows.shape[:3]
        self.output_size = (out_h, out_w)
        self.positions = out_h * out_w
        self.d_in = int(np.prod(self.windows.shape[3:]))

    @property
    def count(self) -> int:
        return self.samples * self.positions

    def _sample_chunks(self) -> range:
        """Starts of chunks of samples whose patches hold about ``PATCH_CHUNK_ELEMENTS`` entries."""
        return range(0, self.samples, max(1, PATCH_CHUNK_ELEMENTS // (self.positions * self.d_in)))

    @cached_property
    def _every_row(self) -> np.ndarray | None:
        """``H`` itself when it holds at most ``PATCH_CHUNK_ELEMENTS`` entries (else ``None``)."""
        if self.count * self.d_in > PATCH_CHUNK_ELEMENTS:
            return None
        return self.windows.reshape(self.count, self.d_in)  # a copy, in row order

    def take(self, rows: np.ndarray | None) -> np.ndarray:
        """Rows of ``H`` (all of them for ``None``), float64."""
        if rows is None:
            every_row = self._every_row
            return every_row if every_row is not None else self.windows.reshape(self.count, self.d_in)
        sample, position = np.divmod(rows, self.positions)
        i, j = np.divmod(position, self.output_size[1])
        return self.windows[sample, i, j].reshape(len(rows), self.d_in)

    def preactivations(self, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``H W^T + b`` on every row, (rows, units), a chunk of samples at a time."""
        if self._every_row is not None:
            return self._every_row @ W.T + b
        step = self._sample_chunks().step
        return np.concatenate(
            [self.windows[s : s + step].reshape(-1, self.d_in) @ W.T + b for s in self._sample_chunks()]
        )


LayerRows = LinearRows | Conv2dRows


def layer_rows(layer: nn.Module, x: torch.Tensor) -> LayerRows:
    """The rows of ``layer`` (a Linear or a Conv2d) for its input ``x``."""
    if isinstance(layer, nn.Conv2d):
        return Conv2dRows(layer, x)
    if isinstance(layer, nn.Linear):
        return LinearRows(layer, x)
    raise TypeError(f"Expected an nn.Linear or nn.Conv2d layer, got {type(layer).__name__}.")


def check_conv(layer: nn.Conv2d, name: str) -> None:
    """Refuse what the rows cannot express: grouped convolutions (each output
    channel sees only its group's input channels, so the channels of a layer
    no longer share one ``H``)."""
    if layer.groups != 1:
        raise ValueError(
            f"Layer {name!r} is a Conv2d with groups={layer.groups}; lpinit adjusts Conv2d layers with "
            f"groups=1 only (each output channel's LP must see every input channel). Leave it out with "
            f"layers=[...] (the other ReLU-fed layers by name)."
        )
    if layer.padding_mode not in PADDING_MODES:
        raise ValueError(
            f"Layer {name!r} has padding_mode={layer.padding_mode!r}; expected one of {', '.join(PADDING_MODES)}."
        )


def conv_padding(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)``: the padding that ``layer`` applies, for
    ``F.pad``. ``padding="same"`` puts the odd one on the right and bottom,
    as PyTorch does."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0, 0, 0)
        totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
        (top, left) = (totals[0] // 2, totals[1] // 2)
        return (left, totals[1] - left, top, totals[0] - top)
    ph, pw = layer.padding
    return (pw, pw, ph, ph)


def choose_rows(count: int, max_rows: int | None, seed: int, name: str) -> np.ndarray | None:
    """The sorted row numbers of a uniform sample of ``max_rows`` of ``count``
    rows, without replacement, drawn from a generator seeded by ``seed`` and
    the layer's ``name`` (so a layer's sample does not depend on which other
    layers are adjusted); ``None`` (every row) when ``count <= max_rows`` or
    ``max_rows`` is ``None``."""
    if max_rows is None or count <= max_rows:
        return None
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(count, size=max_rows, replace=False))
