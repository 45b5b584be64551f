"""Rates with Wilson intervals, the born-dead bound, and the safe depth.

**The bound.** Lu, Shin, Su & Karniadakis (2019) prove that a ReLU network
whose weights (and biases) are drawn independently from continuous
distributions symmetric around 0 is born dead with probability tending to 1 as
the depth grows, and bound it for finite depth. With L hidden layers of widths
N_1..N_L the bound used here is

.. math::
    P(\\text{born dead on } X) \\le 1 - \\prod_{l=1}^{L} \\left(1 - 2^{-N_l}\\right).

Why it holds: fix one input x in X. Given the layer's input h (zero or not),
each of the N_l pre-activations w_j . h + b_j is symmetric and continuous and
independent of the others, so all are <= 0 with probability exactly 2^{-N_l},
whatever happened before. The probability that no hidden layer is zero at x is
therefore the product above, and a network with a layer zero on all of X has
one zero at x. The right side is exactly P(some layer is zero at x); the gap to
P(born dead on X) is the chance that a network dead at x lives elsewhere in X.
It holds for He (zero bias), PyTorch's default init and orthogonal weights (a
Haar-orthogonal W sends h to a uniformly random direction, every orthant
equally likely); not for RAI or the LP, which are not symmetric.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (nan, nan for n = 0).

    .. math::
        \\frac{\\hat p + z^2/2n \\pm z \\sqrt{\\hat p(1-\\hat p)/n + z^2/4n^2}}{1 + z^2/n}
    """
    if n == 0:
        return math.nan, math.nan
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at p = 0 or 1 the exact bound is p itself: rounding must not put it past p
    return min(p, max(0.0, center - half)), max(p, min(1.0, center + half))


def born_dead_bound(widths) -> float:
    """``1 - prod_l (1 - 2^-N_l)`` over the hidden widths."""
    return 1.0 - float(np.prod([1.0 - 2.0 ** (-int(n)) for n in widths]))


def bound_safe_depth(width: int, threshold: float) -> int:
    """The largest depth L whose bound for L hidden layers of ``width`` is below ``threshold``."""
    # 1 - (1 - 2^-N)^L < t  <=>  L < log(1 - t) / log(1 - 2^-N)
    limit = math.log(1 - threshold) / math.log(1 - 2.0 ** (-width))
    depth = math.ceil(limit) - 1
    return max(depth, 0)


def safe_depth(depths, rates, threshold: float) -> int:
    """The largest depth d such that the rate at d and at every smaller depth
    (of those measured) is below ``threshold``; 0 if the smallest already fails."""
    best = 0
    for depth, rate in sorted(zip(depths, rates, strict=True)):
        if not rate < threshold:
            break
        best = depth
    return best
