"""One run: build, initialize, measure at init, train, measure again.

``run_one(task, settings)`` is what the runner sends to a worker; it returns
the run's record (a JSON-ready dict), which becomes one line of runs.jsonl.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from experiments import stability
from experiments.data import load_splits, lp_batch
from experiments.inits import build_model, family, initialize, relu_zero_fractions
from experiments.train import pick_device, train
from lpinit import count_relu_zeros


def run_key(task: dict) -> str:
    """The identity of a run: init, arch, seed and learning rate."""
    return f"{task['init']}|{task['arch']}|seed={task['seed']}|lr={task['lr']:g}"


def zeros_summary(model, data, batch_size: int, patterns: bool = True) -> dict:
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
                "units": s.units,
            }
            for s in z.sites
        },
    }


def _lp_targets_cache(results_dir: Path, arch: str, seed: int, margin: float, batch, model_factory):
    """A callable radius -> the LP's per-layer zero fractions on the LP batch.

    The lp@ run of the same seed/arch writes them to ``lp_targets/``; if it has
    not yet, the LP is run here (deterministic given the seed) and cached.
    """

    def targets(radius: float) -> list[float]:
        path = results_dir / "lp_targets" / f"{arch}_seed{seed}_r{radius:g}_m{margin:g}.json"
        if path.is_file():
            return json.loads(path.read_text())
        from experiments.inits import lp_

        model = model_factory()
        lp_(model, batch, radius, margin)
        values = relu_zero_fractions(model, batch)
        write_lp_targets(path, values)
        return values

    return targets


def write_lp_targets(path: Path, values: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(values))
    tmp.replace(path)  # atomic: a reader sees all of it or nothing


def run_one(task: dict, settings: dict) -> dict:
    """Run one (init, arch, seed, lr) and return its record."""
    if settings.get("_single_thread"):
        torch.set_num_threads(1)
    t_start = time.perf_counter()
    s = settings
    init, arch, seed, lr = task["init"], task["arch"], task["seed"], task["lr"]
    splits = load_splits(s["holdout"], s["train_subset"])
    batch = lp_batch(splits, s["lp_batch"], seed)
    results_dir = Path(s["results_root"]) / s["name"]

    model = build_model(arch, seed)
    t0 = time.perf_counter()
    targets = _lp_targets_cache(results_dir, arch, seed, s["lp_margin"], batch, lambda: build_model(arch, seed))
    init_info = initialize(init, model, batch, seed, lp_margin=s["lp_margin"], lp_targets=targets)
    init_time = time.perf_counter() - t0
    if init.startswith("lp@"):
        radius = float(init.split("@")[1])
        write_lp_targets(
            results_dir / "lp_targets" / f"{arch}_seed{seed}_r{radius:g}_m{s['lp_margin']:g}.json",
            relu_zero_fractions(model, batch),
        )

    eb = s["eval_batch"]
    at_init = {
        "lp_batch": zeros_summary(model, batch, eb),
        "heldout": zeros_summary(model, splits.heldout_x, eb) if splits.heldout_x is not None else None,
        "test": zeros_summary(model, splits.test_x, eb),
    }
    stab_images = splits.test_x[: s["stability_images"]]
    stability_rows = _stability_rows(model, stab_images, init, arch, seed, "init")

    device = pick_device(s["device"])
    model.to(device)
    history = train(
        model,
        splits.train_x.to(device),
        splits.train_y.to(device),
        splits.test_x.to(device),
        splits.test_y.to(device),
        lr=lr,
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        seed=seed,
        eval_batch=eb,
    )
    model.to("cpu")
    stability_rows += _stability_rows(model, stab_images, init, arch, seed, "trained")
    final = history[-1]
    return {
        "key": run_key(task),
        **task,
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
        },
        "stability": stability_rows,
        "device": str(device),
        "host": platform.node(),
        "torch": torch.__version__,
        "wall_time_s": time.perf_counter() - t_start,
    }


def _stability_rows(model, images, init, arch, seed, stage) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = stability.measure_stability(model, images, generator=g)
    return [{**row, "init": init, "arch": arch, "seed": seed, "stage": stage} for row in rows]
