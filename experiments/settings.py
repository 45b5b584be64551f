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
import importlib.util
import json
import math
import os
import socket
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from experiments.inits import ARCHS, FIXED_INITS, LEGACY_INITS, VALID_INITS, parse_init_name
from experiments.ledger import folder_lock
from lpinit.files import write_atomic

DEFAULT_RESULTS_ROOT = Path(__file__).resolve().parent / "results"

MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000

BACKENDS = {
    "loky": "worker processes on this machine (joblib's loky)",
    "threading": "threads in this process",
    "multiprocessing": "worker processes on this machine (the standard library's)",
    "dask": "a Dask distributed cluster (--scheduler, or a local one)",
    "ray": "a Ray cluster (--scheduler, or a local one)",
}

LOCAL_BACKENDS = ("loky", "threading", "multiprocessing")
"""Backends whose workers run on this machine (``--n-jobs`` is capped at its cores)."""

ALL_INITS = FIXED_INITS + LEGACY_INITS

DOSES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.97)
"""Per-unit activity targets q of the dose preset: from 90% zeros per unit to 3%."""
DOSE_RADIUS = 3.0
"""The box of the dose preset's LPs: wide enough that the targets, not the box, decide."""


def dose_inits(doses: tuple[float, ...], controls: tuple[float, ...], bases: tuple[str, ...]) -> tuple[str, ...]:
    """For each base: the bare base, the activity-target LP and ``quantile_bias``
    at every dose (both rescaled per unit), and the LP's matched ``bias_shift``
    at the ``controls`` doses."""
    names: list[str] = []
    for base in bases:
        names.append(base)
        for q in doses:
            names.append(f"{base}+lp(radius={DOSE_RADIUS:g},rescale=unit,target={q:g})")
            names.append(f"{base}+quantile_bias(q={q:g},rescale=unit)")
        for q in controls:
            names.append(f"{base}+bias_shift(radius={DOSE_RADIUS:g},rescale=unit,target={q:g})")
    return tuple(names)


DEFAULT_CANDIDATES = (
    "default+lp(rescale=unit)",
    "default+lp(rescale=unit,anchor=mean)",
    "default+lp(anchor=mean)",
)
"""LP settings at lp_initialize's radius and margin, candidates for its defaults (issue 11)."""

DOSE_INITS = (*dose_inits(DOSES, (0.3, 0.9), ("default", "kaiming_normal")), "lsuv", *DEFAULT_CANDIDATES)
DOSE_LR_INITS = dose_inits((DOSES[0], DOSES[-1]), (), ("default", "kaiming_normal"))

DEFAULT_LP = "lp(radius=3,rescale=unit,target=0.5)"
"""lp_initialize's defaults as a step (chosen from the dose results: README)."""
DEFAULT_LP_CONTROL = "quantile_bias(q=0.5,rescale=unit)"
"""Its closed-form control: the same activity per unit, by the bias alone."""
COVERAGE_DOSE = 0.1
"""The dose at which per-unit targets leave samples without an active unit
(the seed MLP's 10 logits, each active on a tenth of the batch)."""
COVERAGE_INITS = tuple(
    f"default+lp(radius={DOSE_RADIUS:g},rescale=unit,target={COVERAGE_DOSE:g}{cover})" for cover in ("", ",coverage=1")
)
CNN_INITS = ("default", "kaiming_normal", "lsuv", "rai", f"default+{DEFAULT_LP}", f"default+{DEFAULT_LP_CONTROL}")


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
    n_jobs: int = _help(
        "runs in parallel (worker processes); -1: one per core (or, on a --scheduler cluster, per worker thread)", 2
    )
    backend: str = _help("where runs execute: " + " | ".join(BACKENDS) + " (see runner.py)", "loky")
    scheduler: str = _help(
        "address of a running cluster for --backend dask (tcp://HOST:PORT) or ray (HOST:PORT); "
        "empty: start a local one with --n-jobs workers",
        "",
    )
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


# Fields that change what a run computes; the run axes say which runs exist;
# everything else only changes how they are scheduled or reported.
RUN_AXES = ("inits", "archs", "seeds", "first_seed", "lrs")
RECIPE_FIELDS = (
    "epochs",
    "batch_size",
    "holdout",
    "train_subset",
    "lp_batch",
    "stability_images",
    "lp_margin",
)

# The MLP studies (full, dose) predate the CNN and keep to the two MLPs.
MLP_ARCHS = ("seed", "mlp")

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
    "full": dict(inits=ALL_INITS, archs=MLP_ARCHS, seeds=10, epochs=5),
    # The notebook's question at a fixed scale (issue 11): per-unit activity
    # targets q, reached by the LP or by a bias only, both rescaled to the
    # start's pre-activation RMS, from two random starts; 10 seeds at lr 0.01.
    "dose": dict(inits=DOSE_INITS, archs=MLP_ARCHS, seeds=10, epochs=5, stability_images=64),
    # Its learning-rate check, into the same folder: the extreme doses at lr
    # 0.001 and 0.003, 3 seeds.
    "dose-lr": dict(
        name="dose", inits=DOSE_LR_INITS, archs=MLP_ARCHS, seeds=3, lrs=(0.001, 0.003), stability_images=64
    ),
    # The CNN (issue 13): the random and data-dependent baselines, lp_initialize's
    # defaults and their closed-form control, 10 seeds.
    "cnn": dict(inits=CNN_INITS, archs=("cnn",), seeds=10, epochs=5, stability_images=64),
    # Coverage (issue 10, item 5): the sparse dose's LP with per-unit targets
    # against the same LP with every sample active in at least one unit of
    # each layer, from PyTorch's default start (where the sparse dose trained
    # best); 10 seeds at lr 0.01.
    "coverage": dict(inits=COVERAGE_INITS, archs=MLP_ARCHS, seeds=10, epochs=5, stability_images=64),
}


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _field_type(f: dataclasses.Field):
    hints = typing.get_type_hints(Settings)
    return hints[f.name]


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """``text`` split at the separators outside parentheses:
    ``"a,b+lp(x=1,y=2)"`` -> ``["a", "b+lp(x=1,y=2)"]``."""
    parts, depth, start = [], 0, 0
    for position, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == separator and depth == 0:
            parts.append(text[start:position])
            start = position + 1
    return [*parts, text[start:]]


def _parser_for(tp):
    """The argparse ``type`` for a field's annotation; comma-separated lists for tuples."""
    if typing.get_origin(tp) is tuple:
        (inner, _) = typing.get_args(tp)

        def items(text: str) -> tuple:
            return tuple(inner(item.strip()) for item in split_top_level(text) if item.strip())

        items.__name__ = f"comma-separated {inner.__name__}"  # argparse names it in errors
        return items
    return tp


class _OneLineParser(argparse.ArgumentParser):
    """Bad flags end with one line on stderr (``prog: error: ...``) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
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
    """Settings = class defaults, then the preset's values, then ``overrides``;
    validated, with repeated list items dropped and init names in canonical form."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Valid presets: {', '.join(sorted(PRESETS))}.")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["preset"] = preset
    valid = {f.name for f in dataclasses.fields(Settings)}
    unknown = set(values) - valid
    if unknown:
        raise ValueError(f"Unknown settings {sorted(unknown)}. Valid settings: {sorted(valid)}.")
    for key in ("inits", "archs", "lrs"):
        values[key] = tuple(dict.fromkeys(values.get(key, getattr(Settings, key))))
    settings = Settings(**values)
    validate(settings)
    return dataclasses.replace(settings, inits=tuple(dict.fromkeys(str(parse_init_name(n)) for n in settings.inits)))


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Settings from command-line flags; a bad value exits 2 with one line on stderr."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    preset = args.pop("preset") or "quick"
    try:
        return resolve(preset, args)
    except ValueError as err:
        parser.error(str(err))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(s: Settings) -> None:
    """Raise ValueError, naming the flag, for any setting that would fail a run.

    Checks everything a run would otherwise only discover after training
    began: names, ranges, finiteness, the device, and the image counts
    against the data splits.
    """
    if not s.inits:
        raise ValueError(f"Expected at least one init in --inits, got none. Valid inits: {VALID_INITS}.")
    for name in s.inits:
        try:
            parse_init_name(name)
        except ValueError as err:
            raise ValueError(f"--inits: {err}") from None
    if not s.archs:
        raise ValueError(f"Expected at least one arch in --archs, got none. Valid archs: {', '.join(ARCHS)}.")
    for arch in s.archs:
        if arch not in ARCHS:
            raise ValueError(f"Unknown arch {arch!r} in --archs. Valid archs: {', '.join(ARCHS)}.")
    for key in ("seeds", "epochs", "batch_size", "lp_batch", "eval_batch", "stability_images", "n_boot"):
        if getattr(s, key) < 1:
            raise ValueError(f"Expected {_flag(key)} >= 1, got {getattr(s, key)}.")
    if s.first_seed < 0:
        raise ValueError(f"Expected --first-seed >= 0, got {s.first_seed}.")
    if not s.lrs or any(not 0 < lr < math.inf for lr in s.lrs):
        raise ValueError(f"Expected positive, finite learning rates in --lrs, got {_show(s.lrs) or 'none'}.")
    if not 0 <= s.lp_margin < math.inf:
        raise ValueError(
            f"Expected a finite --lp-margin >= 0 (0.1: a tenth of the pre-activations' std), got {s.lp_margin}."
        )
    if not 0 <= s.holdout < MNIST_TRAIN_IMAGES:
        raise ValueError(f"Expected 0 <= --holdout < {MNIST_TRAIN_IMAGES}, got {s.holdout}.")
    left = MNIST_TRAIN_IMAGES - s.holdout
    if not 0 <= s.train_subset <= left:
        raise ValueError(
            f"Expected 0 <= --train-subset <= {left} (images left after the holdout), got {s.train_subset}."
        )
    train_images = s.train_subset or left
    if s.lp_batch > train_images:
        raise ValueError(
            f"Expected --lp-batch <= {train_images} (the training images: "
            f"{'--train-subset' if s.train_subset else '60,000 less --holdout'}), got {s.lp_batch}. "
            "Lower --lp-batch or train on more images."
        )
    if s.stability_images > MNIST_TEST_IMAGES:
        raise ValueError(
            f"Expected --stability-images <= {MNIST_TEST_IMAGES} (the test images), got {s.stability_images}."
        )
    if s.n_jobs == 0 or s.n_jobs < -1:
        raise ValueError(f"Expected --n-jobs >= 1 or -1 (one per core), got {s.n_jobs}.")
    _validate_backend(s)
    _validate_device(s)


def _validate_backend(s: Settings) -> None:
    if s.backend not in BACKENDS:
        raise ValueError(f"Unknown backend {s.backend!r}. Valid backends: {', '.join(BACKENDS)}.")
    if s.scheduler and s.backend not in ("dask", "ray"):
        raise ValueError(f"--scheduler is for --backend dask or ray, got --backend {s.backend}.")
    needs = {"dask": ("dask", "distributed"), "ray": ("ray",)}.get(s.backend, ())
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"--backend {s.backend} needs {' and '.join(missing)}, which is not installed here. "
            "Install the cluster extra: pip install -e '.[cluster]'."
        )


def _validate_device(s: Settings) -> None:
    from experiments.train import pick_device

    try:
        # On a --scheduler cluster the workers, not this machine, must have the device; they check per run.
        pick_device(s.device, check_available=not s.scheduler)
    except ValueError as err:
        raise ValueError(f"--device: {err}") from None


def fit_to_machine(s: Settings) -> tuple[Settings, str | None]:
    """``s`` with ``n_jobs`` resolved and capped at this machine's cores when the
    workers run here, and a one-line note when it was capped."""
    if s.scheduler:  # the remote cluster's size decides
        return s, None
    from joblib import cpu_count

    cores = cpu_count()
    asked = cores if s.n_jobs == -1 else s.n_jobs
    note = None
    if asked > cores:
        note = f"note: --n-jobs {asked} is more than the {cores} cores here; running {cores} at a time."
    return dataclasses.replace(s, n_jobs=min(asked, cores)), note


class SettingsMismatch(RuntimeError):
    """A results folder holds runs made with a different recipe, or a seed range it cannot describe."""


def refuse_other_recipe(
    folder: Path, old: dict, asked: dict, fields: tuple[str, ...], name: Callable[[str], str] = str
) -> None:
    """Raise ``SettingsMismatch`` if ``asked`` differs from the folder's
    ``settings.json`` (``old``) in a recipe field, each field shown by ``name``."""
    diff = {k: (old.get(k), asked[k]) for k in fields if old.get(k) != asked[k]}
    if diff:
        lines = ", ".join(f"{name(k)}: folder has {a!r}, you asked {b!r}" for k, (a, b) in diff.items())
        raise SettingsMismatch(
            f"{folder} holds runs made with a different recipe ({lines}). "
            "Use another --name (or --results-root), or delete that folder to start over."
        )


def _seed_range(values: dict) -> tuple[int, int]:
    return values["first_seed"], values["first_seed"] + values["seeds"]


def record_settings(s: Settings) -> dict:
    """Write ``settings.json`` for a run of ``s`` into its folder and return it.

    In a folder that holds runs already, the recipe must match
    (``RECIPE_FIELDS``) and the run axes are merged, so the file describes
    every run the folder was asked for: inits, archs and learning rates are
    the union, and the seeds one range (a request that would leave a gap in
    it is refused). ``invocations`` lists each invocation's own axes and
    scheduling. Done under the folder lock, so concurrent invocations merge.
    """
    folder = s.results_dir
    path = folder / "settings.json"
    asked = s.to_dict()
    invocation = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": sys.argv[1:],
        **{k: asked[k] for k in (*RUN_AXES, "n_jobs", "backend", "scheduler", "device")},
    }
    with folder_lock(folder):
        if not path.is_file():
            merged = {**asked, "invocations": [invocation]}
        else:
            old = json.loads(path.read_text())
            refuse_other_recipe(folder, old, asked, RECIPE_FIELDS, _flag)
            (a, b), (c, d) = _seed_range(old), _seed_range(asked)
            if c > b or a > d:
                raise SettingsMismatch(
                    f"{folder} holds seeds {a}..{b - 1}; seeds {c}..{d - 1} would leave a gap its settings.json "
                    f"cannot describe. Ask --first-seed {min(a, c)} --seeds {max(b, d) - min(a, c)} to cover both "
                    "(finished runs are skipped), or use another --name."
                )
            merged = {**asked}
            for k in ("inits", "archs", "lrs"):
                merged[k] = list(dict.fromkeys([*old.get(k, []), *asked[k]]))
            merged["first_seed"], merged["seeds"] = min(a, c), max(b, d) - min(a, c)
            merged["invocations"] = [*old.get("invocations", []), invocation]
        write_atomic(path, json.dumps(merged, indent=2) + "\n")
    return merged


def load_settings(results_dir: Path) -> dict:
    path = Path(results_dir) / "settings.json"
    if not path.is_file():
        raise FileNotFoundError(f"No settings.json in {results_dir}; is it a results folder of experiments.compare?")
    return json.loads(path.read_text())
