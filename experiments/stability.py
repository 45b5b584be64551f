"""Does the activation pattern survive perturbations, and is L_gen == A'x' then?

The seed notebook argues that for perturbations x', P' that keep the
activation pattern, L_gen = (f(x,P) - f(x,P*)) - (f(x*,P) - f(x*,P*)) equals
A'x', so an initialization with fewer activation patterns (fewer ReLU zeros)
should generalize better. ``measure_stability`` measures each step on real
images with ``lpinit.theory``; ``experiments.plots.plot_stability`` and
``experiments.report.stability_section`` turn the harness's records into a
figure and a report section.

Perturbations, for a relative ``size`` s:

- input: x'_i = s * ||x_i|| / sqrt(d) * eps_i with eps_i ~ N(0, I_d), so
  E||x'_i||^2 = s^2 ||x_i||^2 (d = features per image);
- parameters: P'_k = s * rms(P_k) * eps_k for every parameter tensor P_k
  (rms = sqrt(mean(P_k^2)); a tensor of zeros stays unperturbed).

Each of ``n_perturbations`` draws perturbs every sample's input and all
parameters at once; the same random directions are reused at every size, so
the curves over size are not blurred by fresh noise.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import torch
from torch import nn

from lpinit.theory import activation_pattern, evaluate_perturbation
from lpinit.validation import check_data_tensor, check_model

IDENTITY_RTOL = 1e-6
"""L_gen == A'x' "holds" when ||L_gen - A'x'|| <= IDENTITY_RTOL * (||A'x'|| + 1e-6 ||f(x)||)."""


def _check_count(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Expected {name} to be a positive int, got {value!r}. Pass e.g. {name}=4.")
    return value


def _check_sizes(sizes) -> list[float]:
    try:
        sizes = [float(s) for s in sizes]
    except (TypeError, ValueError):
        raise TypeError(f"Expected sizes as a sequence of numbers, got {sizes!r}.") from None
    if not sizes or any(not (0 < s < math.inf) for s in sizes):
        raise ValueError(
            f"Expected a non-empty sequence of positive, finite sizes, got {sizes!r}. "
            "Pass e.g. sizes=(1e-3, 1e-2, 1e-1)."
        )
    return sorted(sizes)


def _mean(values: torch.Tensor) -> float | None:
    return float(values.double().mean()) if values.numel() else None


def measure_stability(
    model: nn.Module,
    images: torch.Tensor,
    *,
    sizes=(1e-3, 1e-2, 1e-1),
    n_samples: int = 256,
    n_perturbations: int = 2,
    generator: torch.Generator | None = None,
) -> list[dict]:
    """Pattern stability and L_gen under random perturbations, one row per size.

    Runs on a float64 CPU copy of ``model`` (the model itself is untouched),
    on the first ``n_samples`` images (pass a shuffled tensor for a random
    subset). Per (sample, perturbation) pair it measures f(x, P), L_gen, A'x'
    and the pattern change with :func:`lpinit.theory.evaluate_perturbation`.

    Args:
        model: a Linear/ReLU network (see ``lpinit.theory``).
        images: inputs (n, ...), normalized as for training.
        sizes: relative perturbation sizes s (see the module docstring).
        n_samples: images used; fewer if ``images`` has fewer.
        n_perturbations: random (x', P') draws, each over all samples.
        generator: the source of the perturbations; None means a fresh one
            seeded with 0.

    Returns:
        One JSON-ready dict per size with keys: ``size``, ``n_samples``,
        ``n_perturbations``, ``units`` (ReLU units per sample), ``zero_fraction``
        (unit outputs equal to 0 at P on these images), ``pattern_changed``
        (fraction of pairs where some evaluation's pattern differs from that of
        f(x, P): the notebook's precondition fails), ``input_pattern_changed``
        and ``param_pattern_changed`` (the same for f(x*, P) and f(x, P*)
        alone), ``flipped_units`` (mean fraction of units that flip),
        ``identity_exact`` (fraction of pairs whose patterns make L_gen == A'x'
        exact), ``identity_holds`` (fraction where it holds numerically, see
        ``IDENTITY_RTOL``), ``identity_holds_when_exact`` and
        ``identity_holds_when_not_exact`` (None when no such pair),
        ``identity_rel_error`` (mean of ||L_gen - A'x'|| / (||L_gen|| + ||A'x'||),
        0 = equal, at most 1), ``l_gen`` (mean ||L_gen||), ``predicted`` (mean
        ||A'x'||), ``output_norm`` (mean ||f(x)||), ``l_gen_rel`` (mean ||L_gen||
        / mean ||f(x)||), ``l_gen_rel_when_unchanged`` (the same over pairs whose
        pattern did not change; None if none), ``output_change_rel`` (mean
        ||f(x*, P*) - f(x, P)|| / mean ||f(x)||) and ``l_gen_over_change``
        (mean ||L_gen|| / mean ||f(x*, P*) - f(x, P)||).

    Example:
        >>> images, _ = load_mnist(train=False)
        >>> rows = measure_stability(seed_mlp(), images, generator=torch.Generator().manual_seed(0))
        >>> [(r["size"], r["pattern_changed"]) for r in rows]
    """
    check_model(model)
    check_data_tensor(images, "images")
    sizes = _check_sizes(sizes)
    _check_count(n_samples, "n_samples")
    _check_count(n_perturbations, "n_perturbations")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected generator to be a torch.Generator or None, got {type(generator).__name__}.")

    # float64: L_gen is a difference of differences of nearly equal outputs.
    work = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    x = images[:n_samples].detach().to(device="cpu", dtype=torch.float64)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    x_scale = (flat.norm(dim=1) / math.sqrt(flat.shape[1])).reshape(n, *([1] * (x.dim() - 1)))
    params = dict(work.named_parameters())
    rms = {name: p.detach().pow(2).mean().sqrt() for name, p in params.items()}
    directions = [
        (
            torch.randn(x.shape, generator=generator, dtype=torch.float64) * x_scale,
            {
                name: torch.randn(p.shape, generator=generator, dtype=torch.float64) * rms[name]
                for name, p in params.items()
            },
        )
        for _ in range(n_perturbations)
    ]
    pattern = activation_pattern(work, x)

    rows = []
    for size in sizes:
        pairs = defaultdict(list)
        for x_dir, p_dir in directions:
            effect = evaluate_perturbation(work, x, size * x_dir, {k: size * v for k, v in p_dir.items()})
            change = effect.change
            pairs["f"].append(effect.output.norm(dim=1))
            pairs["l_gen"].append(effect.l_gen.norm(dim=1))
            pairs["predicted"].append(effect.predicted.norm(dim=1))
            pairs["error"].append((effect.l_gen - effect.predicted).norm(dim=1))
            pairs["out_change"].append((effect.perturbed_output - effect.output).norm(dim=1))
            for key in ("changed", "input_changed", "param_changed", "identity_exact", "flipped_fraction"):
                pairs[key].append(getattr(change, key))
        p = {key: torch.cat(values) for key, values in pairs.items()}
        holds = p["error"] <= IDENTITY_RTOL * (p["predicted"] + 1e-6 * p["f"])
        exact, changed = p["identity_exact"], p["changed"]
        scale = p["l_gen"] + p["predicted"]
        rel_error = torch.where(scale > 0, p["error"] / scale.clamp_min(1e-300), torch.zeros_like(scale))
        f_mean = float(p["f"].mean())
        f_unchanged = _mean(p["f"][~changed])
        l_unchanged = _mean(p["l_gen"][~changed])
        rows.append(
            {
                "size": size,
                "n_samples": n,
                "n_perturbations": n_perturbations,
                "units": int(pattern.shape[1]),
                "zero_fraction": float(1 - pattern.double().mean()),
                "pattern_changed": _mean(changed),
                "input_pattern_changed": _mean(p["input_changed"]),
                "param_pattern_changed": _mean(p["param_changed"]),
                "flipped_units": _mean(p["flipped_fraction"]),
                "identity_exact": _mean(exact),
                "identity_holds": _mean(holds),
                "identity_holds_when_exact": _mean(holds[exact]),
                "identity_holds_when_not_exact": _mean(holds[~exact]),
                "identity_rel_error": _mean(rel_error),
                "l_gen": _mean(p["l_gen"]),
                "predicted": _mean(p["predicted"]),
                "output_norm": f_mean,
                "l_gen_rel": _ratio(_mean(p["l_gen"]), f_mean),
                "l_gen_rel_when_unchanged": _ratio(l_unchanged, f_unchanged),
                "output_change_rel": _ratio(_mean(p["out_change"]), f_mean),
                "l_gen_over_change": _ratio(_mean(p["l_gen"]), _mean(p["out_change"])),
            }
        )
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def main(argv=None) -> None:
    """Print the stability rows of the seed network at PyTorch's default init."""
    import argparse
    import json
    import time

    from experiments.report import stability_section
    from lpinit import load_mnist, seed_mlp

    parser = argparse.ArgumentParser(prog="python -m experiments.stability", description=main.__doc__)
    parser.add_argument("--n-samples", type=int, default=256, help="first test images used")
    parser.add_argument("--n-perturbations", type=int, default=2, help="random draws per size")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model init and the perturbations")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)  # a script, not the library: the init draws from the global RNG
    model = seed_mlp()
    images, _ = load_mnist(train=False)
    start = time.perf_counter()
    rows = measure_stability(
        model,
        images,
        n_samples=args.n_samples,
        n_perturbations=args.n_perturbations,
        generator=torch.Generator().manual_seed(args.seed),
    )
    elapsed = time.perf_counter() - start
    for row in rows:
        print(json.dumps(row))
    print(f"measured in {elapsed:.1f} s")
    print(
        stability_section([{**r, "init": "default", "stage": "init", "seed": args.seed, "arch": "seed"} for r in rows])
    )


if __name__ == "__main__":
    main()
