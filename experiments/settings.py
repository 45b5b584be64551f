"""The experiment's settings: one typed dataclass, parsed into flags (cleanrl style).

Every field carries its help text in ``metadata["help"]``; ``parse_settings``
turns the fields into ``--flags``. A preset fills the fields first and flags
override it. The resolved settings are written to ``settings.json`` next to
the results; the fields in ``RECIPE_FIELDS`` decide what a run computes, so a
rerun into the same folder with a different recipe is refused, while adding
seeds, inits, architectures or learning rates only adds runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from experiments.inits import ARCHS, VALID_INITS, parse_init_name
from lpinit.files import write_atomic

DEFAULT_RESULTS_ROOT = Path(__file__).resolve().parent / "results"

BACKENDS = {
    "loky": "worker processes on this machine (joblib's loky)",
    "threading": "threads in this process",
    "multiprocessing": "worker processes on this machine (the standard library's)",
    "dask": "a Dask distributed cluster (--scheduler, or a local one)",
    "ray": "a Ray cluster (--scheduler, or a local one)",
}

RANDOM_INITS = ("default", "kaiming_normal", "xavier_uniform", "orthogonal")
BASELINE_INITS = ("lsuv", "rai")
LP_RADII = (0.02, 0.05, 0.1, 0.2)
ALL_INITS = (
    RANDOM_INITS + BASELINE_INITS + tuple(f"lp@{r:g}" for r in LP_RADII) + tuple(f"bias_shift@{r:g}" for r in LP_RADII)
)


def _help(text: str, default, **kwargs):
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class Settings:
    """Everything that defines one comparison (see ``PRESETS`` for the named ones)."""

    preset: str = _help("named starting point: quick | seed | full; flags override it", "quick")
    name: str = _help("results folder name under --results-root (default: the preset name)", "")
    results_root: str = _help("folder holding one sub-folder of results per name", str(DEFAULT_RESULTS_ROOT))
    inits: tuple[str, ...] = _help(f"comma-separated initializations ({VALID_INITS})", ("default",))
    archs: tuple[str, ...] = _help(
        "comma-separated architectures: " + " | ".join(f"{k} ({v})" for k, v in ARCHS.items()), ("seed",)
    )
    seeds: int = _help(
        "number of seeds per (init, arch, lr); seed s fixes the random start, LP batch and data order", 2
    )
    first_seed: int = _help("first seed; runs use first_seed .. first_seed + seeds - 1", 0)
    lrs: tuple[float, ...] = _help(
        "comma-separated SGD learning rates (a small grid guards against an LR effect)", (0.01,)
    )
    epochs: int = _help("training epochs (the notebook: 5)", 5)
    batch_size: int = _help("SGD minibatch size (the notebook: 64)", 64)
    holdout: int = _help("training images held out of training, for measuring zeros (0: train on all 60,000)", 10_000)
    train_subset: int = _help("train on only the first N non-held-out images (0: all of them)", 0)
    lp_batch: int = _help("training images (chosen by the seed) given to the LP and data-dependent inits", 256)
    stability_images: int = _help("fixed test images used by the stability measurement", 256)
    eval_batch: int = _help("batch size for evaluation and zero counting", 1000)
    n_jobs: int = _help("parallel runs (processes with loky); -1: one per core", 2)
    backend: str = _help("where runs execute: " + " | ".join(BACKENDS) + " (see runner.py)", "loky")
    device: str = _help("torch device for training: auto (cuda if present) | cpu | cuda", "auto")
    lp_margin: float = _help("margin passed to lp_initialize", 0.1)
    n_boot: int = _help("bootstrap resamples for correlation confidence intervals", 2000)

    def __post_init__(self):
        if not self.name:
            self.name = self.preset

    @property
    def results_dir(self) -> Path:
        return Path(self.results_root) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Settings:
        """Settings from ``to_dict``'s output or a settings.json (lists become tuples; other keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known: dict[str, typing.Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**{k: v for k, v in known.items() if k in names})


# Fields that change what a run computes; everything else only changes which
# runs exist or how they are scheduled.
RECIPE_FIELDS = (
    "epochs",
    "batch_size",
    "holdout",
    "train_subset",
    "lp_batch",
    "stability_images",
    "lp_margin",
)

PRESETS: dict[str, dict] = {
    # Real MNIST, small: finishes in well under two minutes on two CPU cores.
    "quick": dict(
        inits=("default", "kaiming_normal", "lsuv", "rai", "lp@0.1", "bias_shift@0.1"),
        archs=("seed",),
        seeds=2,
        epochs=1,
        train_subset=10_000,
        stability_images=64,
        n_boot=500,
    ),
    # The notebook's exact setting: default init, all 60,000 training images,
    # SGD lr 0.01, batch 64, 5 epochs; it reported 77.25% test accuracy from one
    # unseeded init, so several seeds show where that figure falls.
    "seed": dict(inits=("default",), archs=("seed",), seeds=5, epochs=5, holdout=0),
    "full": dict(inits=ALL_INITS, archs=tuple(ARCHS), seeds=10, epochs=5),
}


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _field_type(f: dataclasses.Field):
    hints = typing.get_type_hints(Settings)
    return hints[f.name]


def _parser_for(tp):
    """Return (argparse type callable) for a field's annotation."""
    if typing.get_origin(tp) is tuple:
        (inner, _) = typing.get_args(tp)
        return lambda text: tuple(inner(item.strip()) for item in text.split(",") if item.strip())
    return tp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description="Compare initializations of ReLU MLPs on MNIST: initial ReLU zeros vs training.",
        epilog="presets (flags override them): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k}={_show(v)}" for k, v in values.items()) for name, values in PRESETS.items()
        ),
    )
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        tp = _field_type(f)
        default = getattr(defaults, f.name)
        shown = _show(default)
        help_text = f"{f.metadata['help']} (default without a preset: {shown})"
        if f.name == "preset":
            parser.add_argument(flag, dest=f.name, default=None, help=help_text, choices=sorted(PRESETS))
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text, type=_parser_for(tp))
    return parser


def resolve(preset: str, overrides: dict | None = None) -> Settings:
    """Settings = class defaults, then the preset's values, then ``overrides``."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Valid presets: {', '.join(sorted(PRESETS))}.")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["preset"] = preset
    valid = {f.name for f in dataclasses.fields(Settings)}
    unknown = set(values) - valid
    if unknown:
        raise ValueError(f"Unknown settings {sorted(unknown)}. Valid settings: {sorted(valid)}.")
    settings = Settings(**values)
    validate(settings)
    return settings


def parse_settings(argv: list[str] | None = None) -> Settings:
    args = vars(build_parser().parse_args(argv))
    preset = args.pop("preset") or "quick"
    try:
        return resolve(preset, args)
    except ValueError as err:
        build_parser().error(str(err))


def validate(s: Settings) -> None:
    for name in s.inits:
        parse_init_name(name)
    for arch in s.archs:
        if arch not in ARCHS:
            raise ValueError(f"Unknown arch {arch!r}. Valid archs: {', '.join(ARCHS)}.")
    for key in ("seeds", "epochs", "batch_size", "lp_batch", "eval_batch"):
        if getattr(s, key) < 1:
            raise ValueError(f"Expected --{key.replace('_', '-')} >= 1, got {getattr(s, key)}.")
    if s.n_jobs == 0 or s.n_jobs < -1:
        raise ValueError(f"Expected --n-jobs >= 1 or -1 (one per core), got {s.n_jobs}.")
    if s.backend not in BACKENDS:
        raise ValueError(f"Unknown backend {s.backend!r}. Valid backends: {', '.join(BACKENDS)}.")
    if not 0 <= s.holdout < 60_000:
        raise ValueError(f"Expected 0 <= --holdout < 60000, got {s.holdout}.")
    if s.train_subset < 0 or s.train_subset > 60_000 - s.holdout:
        raise ValueError(
            f"Expected 0 <= --train-subset <= {60_000 - s.holdout} (images left after the "
            f"holdout), got {s.train_subset}."
        )
    if not s.lrs or any(lr <= 0 for lr in s.lrs):
        raise ValueError(f"Expected positive learning rates, got {s.lrs}.")


class SettingsMismatch(RuntimeError):
    """A results folder holds runs made with a different recipe."""


def record_settings(s: Settings) -> None:
    """Write ``settings.json``; refuse if the folder's recipe differs."""
    path = s.results_dir / "settings.json"
    s.results_dir.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), getattr(s, k)) for k in RECIPE_FIELDS if old.get(k) != getattr(s, k)}
        if diff:
            lines = ", ".join(f"{k}: folder has {a!r}, you asked {b!r}" for k, (a, b) in diff.items())
            raise SettingsMismatch(
                f"{s.results_dir} holds runs made with a different recipe ({lines}). "
                "Use another --name (or --results-root), or delete that folder to start over."
            )
        # Keep the union of the run axes, so the report knows what was asked over time.
        merged = s.to_dict()
        for k in ("inits", "archs", "lrs"):
            merged[k] = list(dict.fromkeys(list(old.get(k, [])) + list(merged[k])))
        merged["seeds"] = max(old.get("seeds", 0), s.seeds)
        text = json.dumps(merged, indent=2)
    else:
        text = json.dumps(s.to_dict(), indent=2)
    write_atomic(path, text + "\n")


def load_settings(results_dir: Path) -> dict:
    path = Path(results_dir) / "settings.json"
    if not path.is_file():
        raise FileNotFoundError(f"No settings.json in {results_dir}; is it a results folder of experiments.compare?")
    return json.loads(path.read_text())
