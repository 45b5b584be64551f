"""One run: build, initialize, measure at init, train, measure again.

``run_one(spec, settings)`` is what the runner sends to a worker; it returns
the run's record (a JSON-ready dict), which becomes one line of runs.jsonl.
A run is deterministic given its spec and the settings' recipe (on one
machine, with one torch thread).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from experiments import stability
from experiments.data import load_splits, lp_batch
from experiments.inits import (
    InitSpec,
    LPTargets,
    build_model,
    family,
    initialize,
    parse_init_name,
    relu_zero_fractions,
)
from experiments.settings import Settings
from experiments.train import pick_device, train
from lpinit import count_relu_zeros
from lpinit.files import write_atomic
from lpinit.tracing import capture_layer_io, relu_fed_layers


@dataclass(frozen=True)
class RunSpec:
    """The identity of a run: which init, on which architecture, seed and learning rate."""

    init: str
    arch: str
    seed: int
    lr: float

    @property
    def key(self) -> str:
        return run_key(asdict(self))

    def to_dict(self) -> dict:
        return asdict(self)


def run_key(run: dict) -> str:
    """The key of a run record (or of a ``RunSpec`` as a dict): init, arch, seed and learning rate."""
    return f"{run['init']}|{run['arch']}|seed={run['seed']}|lr={run['lr']:g}"


def zeros_summary(model: nn.Module, data: torch.Tensor, batch_size: int, patterns: bool = True) -> dict:
    z = count_relu_zeros(model, data, batch_size=batch_size, patterns=patterns)
    return {
        "samples": z.samples,
        "total_zeros": z.total_zeros,
        "zero_fraction": z.zero_fraction,
        "dead_units": z.dead_units,
        "distinct_patterns": z.distinct_patterns,
        "layers": {
            s.name: {
                "zeros": s.zeros,
                "elements": s.elements,
                "zero_fraction": s.zero_fraction,
                "dead_units": int(s.dead_units.size),
                "silent_samples": s.silent_samples,
                "units": s.units,
            }
            for s in z.sites
        },
    }


def lp_targets_path(results_dir: Path, arch: str, seed: int, lp_init: InitSpec, margin: float) -> Path:
    """Where the per-layer zero fractions that ``lp_init`` (an init ending with
    an ``lp`` step) reaches for (arch, seed) are kept; the margin is that of
    ``--lp-margin``, which ``lp`` steps without their own take."""
    if lp_init.legacy:  # the file names of the first results
        radius = lp_init.steps[-1].get("radius")
        return Path(results_dir) / "lp_targets" / f"{arch}_seed{seed}_r{radius:g}_m{margin:g}.json"
    return Path(results_dir) / "lp_targets" / f"{arch}_seed{seed}_{lp_init}_m{margin:g}.json"


def write_lp_targets(path: Path, values: list[float]) -> None:
    """Cache the LP's zero fractions; a worker that cannot write the results folder
    (a cluster node without the shared folder) skips the cache: it only saves time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(values))  # a concurrent reader sees all of it or nothing
    except OSError:
        pass


def _lp_targets_cache(
    results_dir: Path, arch: str, seed: int, margin: float, batch: torch.Tensor, model_factory: Callable[[], nn.Module]
) -> LPTargets:
    """A callable ``lp_init`` -> the per-layer zero fractions it reaches on the LP batch.

    The run of ``lp_init`` itself (same seed and arch) writes them to
    ``lp_targets/``; if it has not yet, the LP is run here (deterministic given
    the seed) and cached.
    """

    def targets(lp_init: InitSpec) -> list[float]:
        path = lp_targets_path(results_dir, arch, seed, lp_init, margin)
        if path.is_file():
            return json.loads(path.read_text())
        model = model_factory()
        initialize(str(lp_init), model, batch, seed, lp_margin=margin)
        values = relu_zero_fractions(model, batch)
        write_lp_targets(path, values)
        return values

    return targets


def preactivation_summary(model: nn.Module, data: torch.Tensor, batch_size: int) -> dict:
    """Mean and RMS of each ReLU-fed layer's pre-activations on ``data``:
    the scale the init leaves, per layer."""
    layers = relu_fed_layers(model, data[:1])
    sums = {name: [0.0, 0.0, 0] for name, _ in layers}
    with torch.no_grad():
        for chunk in torch.split(data, batch_size):
            outputs = capture_layer_io(model, [m for _, m in layers], partial(model, chunk), "output")
            for (name, _), (z, *_) in zip(layers, outputs, strict=True):
                z = z.double()
                sums[name][0] += float(z.sum())
                sums[name][1] += float((z * z).sum())
                sums[name][2] += z.numel()
    return {name: {"mean": s / n, "rms": math.sqrt(q / n)} for name, (s, q, n) in sums.items()}


def run_one(spec: RunSpec, settings: Settings) -> dict:
    """Run one (init, arch, seed, lr) under ``settings``' recipe and return its record."""
    t_start = time.perf_counter()
    s = settings
    init, arch, seed = spec.init, spec.arch, spec.seed
    splits = load_splits(s.holdout, s.train_subset)
    batch = lp_batch(splits, s.lp_batch, seed)

    model = build_model(arch, seed)
    t0 = time.perf_counter()
    targets = _lp_targets_cache(s.results_dir, arch, seed, s.lp_margin, batch, lambda: build_model(arch, seed))
    init_info = initialize(init, model, batch, seed, lp_margin=s.lp_margin, lp_targets=targets)
    init_time = time.perf_counter() - t0
    parsed = parse_init_name(init)
    if parsed.method == "lp":  # the zero fractions its control matches
        path = lp_targets_path(s.results_dir, arch, seed, parsed, s.lp_margin)
        write_lp_targets(path, relu_zero_fractions(model, batch))

    eb = s.eval_batch
    held = splits.heldout_x if splits.heldout_x is not None else splits.test_x
    at_init = {
        "lp_batch": zeros_summary(model, batch, eb),
        "heldout": zeros_summary(model, splits.heldout_x, eb) if splits.heldout_x is not None else None,
        "test": zeros_summary(model, splits.test_x, eb),
        "preactivations": preactivation_summary(model, held, eb),
    }
    stab_images = splits.test_x[: s.stability_images]
    stability_rows = _stability_rows(model, stab_images, spec, "init")

    device = pick_device(s.device)
    model.to(device)
    history = train(
        model,
        splits.train_x.to(device),
        splits.train_y.to(device),
        splits.test_x.to(device),
        splits.test_y.to(device),
        lr=spec.lr,
        epochs=s.epochs,
        batch_size=s.batch_size,
        seed=seed,
        eval_batch=eb,
    )
    model.to("cpu")
    trained = zeros_summary(model, held, eb, patterns=False)  # dead units after training, on the same images
    stability_rows += _stability_rows(model, stab_images, spec, "trained")
    final = history[-1]
    return {
        "key": spec.key,
        **spec.to_dict(),
        "family": family(init),
        "init_info": init_info,
        "init_time_s": init_time,
        "at_init": at_init,
        "history": history,
        "final": {
            "test_accuracy": final["test_accuracy"],
            "test_loss": final["test_loss"],
            "train_loss": final["train_loss"],
            "zero_fraction": final["zero_fraction"],
            "dead_units": trained["dead_units"],
            "layers": trained["layers"],
        },
        "stability": stability_rows,
        "device": str(device),
        "host": platform.node(),
        "torch": torch.__version__,
        "wall_time_s": time.perf_counter() - t_start,
    }


STABILITY_ARCHS = ("seed", "mlp")
"""Architectures the stability measurement applies to: ``lpinit.theory`` works on
chains of Linear layers and ReLUs (the CNN's runs record no stability rows)."""


def _stability_rows(model: nn.Module, images: torch.Tensor, spec: RunSpec, stage: str) -> list[dict]:
    if spec.arch not in STABILITY_ARCHS:
        return []
    g = torch.Generator().manual_seed(spec.seed)
    rows = stability.measure_stability(model, images, generator=g)
    return [{**row, "init": spec.init, "arch": spec.arch, "seed": spec.seed, "stage": stage} for row in rows]
