"""The study's settings: one typed dataclass, parsed into flags (cleanrl style).

As in ``experiments.settings``: every field carries its help text; a preset
fills the fields, flags override it; the resolved settings are written to
``settings.json`` beside the results, and a rerun into the same folder with a
different recipe (``RECIPE_FIELDS``) is refused, while more tasks, widths,
depths, inits or seeds only add cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from experiments.collapse.inits import is_lp_family, parse_init
from experiments.collapse.tasks import TASKS
from experiments.settings import SettingsMismatch as SettingsMismatch  # raised by record_settings
from experiments.settings import refuse_other_recipe
from lpinit.files import write_atomic

DEFAULT_RESULTS_ROOT = Path(__file__).resolve().parent.parent / "results"
BASE_INITS = ("he", "default", "rai", "orthogonal", "lsuv")
LP_FAMILY = (
    "lp@0.1",
    "lp@0.5",
    "lp@1",
    "lp@3",
    "lp_target@0.3",
    "lp_target@0.5",
    "lp_target@0.7",
    "quantile_bias@0.3",
    "quantile_bias@0.5",
    "quantile_bias@0.7",
)
HEADLINE_INITS = (*BASE_INITS, "lp@0.1", "lp@3", *LP_FAMILY[4:])
# The LP family on the whole grid: the activity target that collapsed least at the headline
# cells, and its closed-form control (the plain LP's cells are the headline preset's).
GRID_LP_INITS = ("lp_target@0.7", "quantile_bias@0.7")
_ALL_DEPTHS = tuple(range(2, 21))
_SPARSE_DEPTHS = (2, 5, 10, 15, 20)
MAX_WIDTH = 35  # dead-unit counts are stored as one base-36 digit per layer


def _help(text: str, default, **kwargs):
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class CollapseSettings:
    """Everything that defines one born-dead / collapse study (see ``PRESETS``)."""

    preset: str = _help(
        "named starting point: quick | collapse | collapse-lp | collapse-headline; flags override it", "quick"
    )
    name: str = _help(
        "results folder under --results-root (default: 'collapse' for collapse and collapse-lp, else the preset)",
        "",
    )
    results_root: str = _help("folder holding one sub-folder of results per name", str(DEFAULT_RESULTS_ROOT))
    tasks: tuple[str, ...] = _help(f"comma-separated tasks: {', '.join(TASKS)}", tuple(TASKS))
    widths: tuple[int, ...] = _help("hidden widths N (every hidden layer has N units)", (2, 3, 4, 5, 10))
    depths: tuple[int, ...] = _help("numbers L of hidden ReLU layers", _ALL_DEPTHS)
    inits: tuple[str, ...] = _help(
        "comma-separated inits: he, default, rai, orthogonal, lsuv, lp@<radius>, lp_target@<q>, quantile_bias@<q>",
        BASE_INITS,
    )
    init_seeds: int = _help("seeds per (inputs, width, depth, init) cell for the born-dead rates", 1000)
    train_seeds: int = _help("seeds per (task, width, depth, init) cell trained for the collapse rates", 200)
    train_widths: tuple[int, ...] = _help("widths whose cells are also trained (subset of --widths)", (2,))
    train_depths: tuple[int, ...] = _help("depths whose cells are also trained (subset of --depths)", (10,))
    dense_train_widths: tuple[int, ...] = _help(
        "trained widths whose cells are trained at every --depths, not only --train-depths", ()
    )
    lp_depths: tuple[int, ...] = _help(
        "depths at which LP-family inits run (each seed costs HiGHS time); empty: all --depths", ()
    )
    lp_init_seeds: int = _help("born-dead seeds per cell for LP-family inits", 1000)
    lp_train_seeds: int = _help("trained seeds per cell for LP-family inits", 200)
    first_seed: int = _help("seeds are first_seed, first_seed + 1, ...; seed s fixes the init's random draw", 0)
    n_train: int = _help("training inputs, uniform on [-1, 1]^d (born dead and collapse are judged on them)", 128)
    n_test: int = _help("test inputs, uniform on [-1, 1]^d, for the test MSE", 1024)
    data_seed: int = _help("seed of the training inputs (the test inputs use data_seed + 1)", 0)
    lr: float = _help("Adam learning rate (full batch)", 1e-3)
    steps: int = _help("full-batch Adam steps", 2000)
    collapse_tol: float = _help(
        "output spread (std f / std y) at or below which a trained net counts as constant", 1e-3
    )
    lp_radius: float = _help(
        "radius for lp_target@q (lp@<radius> names its own); 3, as the harness's dose study: a target needs room",
        3.0,
    )
    lp_margin: float = _help("margin passed to lp_initialize", 0.1)
    chunk_seeds: int = _help("most networks trained in one batched model (cache and memory)", 250)
    threads: int = _help("torch CPU threads", 1)

    def __post_init__(self):
        if not self.name:
            self.name = "collapse" if self.preset in ("collapse", "collapse-lp") else self.preset

    @property
    def results_dir(self) -> Path:
        return Path(self.results_root) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPE_FIELDS = ("n_train", "n_test", "data_seed", "lr", "steps", "collapse_tol", "lp_radius", "lp_margin")


PRESETS: dict[str, dict] = {
    # Smoke-sized: a few seconds end to end.
    "quick": dict(
        tasks=("abs", "abs2d"),
        widths=(2, 3),
        depths=(2, 4),
        inits=("he", "rai", "lsuv", "lp@0.5"),
        init_seeds=40,
        train_seeds=8,
        train_widths=(2,),
        train_depths=(4,),
        lp_init_seeds=8,
        lp_train_seeds=4,
        n_train=64,
        n_test=128,
        steps=60,
    ),
    # The study without the LP family (which costs HiGHS time per seed): born dead at every
    # depth, every width trained at 5 depths.
    "collapse": dict(inits=BASE_INITS, train_widths=(2, 3, 4, 5, 10), train_depths=_SPARSE_DEPTHS),
    # The LP family, into the same folder: born dead at 5 depths of every width, trained at
    # width 2, where training collapses most.
    "collapse-lp": dict(
        inits=GRID_LP_INITS,
        train_widths=(2,),
        train_depths=_SPARSE_DEPTHS,
        lp_depths=_SPARSE_DEPTHS,
    ),
    # The paper's headline cells only, every init, into their own folder: width 2, 10 hidden layers,
    # on the three 1-D tasks and the 2-D target.
    "collapse-headline": dict(inits=HEADLINE_INITS, widths=(2,), depths=(10,), train_widths=(2,), train_depths=(10,)),
}


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _parser_for(tp):
    if typing.get_origin(tp) is tuple:
        (inner, _) = typing.get_args(tp)
        return lambda text: tuple(inner(item.strip()) for item in text.split(",") if item.strip())
    return tp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.collapse",
        description="Born-dead and collapse rates of deep, narrow ReLU networks under several inits.",
        epilog="presets (flags override them): "
        + "; ".join(f"{n}: " + ", ".join(f"{k}={_show(v)}" for k, v in vals.items()) for n, vals in PRESETS.items()),
    )
    hints = typing.get_type_hints(CollapseSettings)
    defaults = CollapseSettings()
    for f in dataclasses.fields(CollapseSettings):
        kwargs: dict = dict(dest=f.name, default=None)
        kwargs["help"] = f"{f.metadata['help']} (default without a preset: {_show(getattr(defaults, f.name))})"
        if f.name == "preset":
            kwargs["choices"] = sorted(PRESETS)
        else:
            kwargs["type"] = _parser_for(hints[f.name])
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return parser


def resolve(preset: str, overrides: dict | None = None) -> CollapseSettings:
    """Class defaults, then the preset's values, then ``overrides`` (None = not given)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Valid presets: {', '.join(sorted(PRESETS))}.")
    values = {**PRESETS[preset], **{k: v for k, v in (overrides or {}).items() if v is not None}, "preset": preset}
    valid = {f.name for f in dataclasses.fields(CollapseSettings)}
    unknown = set(values) - valid
    if unknown:
        raise ValueError(f"Unknown settings {sorted(unknown)}. Valid settings: {sorted(valid)}.")
    settings = CollapseSettings(**values)
    validate(settings)
    return settings


def parse_settings(argv: list[str] | None = None) -> CollapseSettings:
    args = vars(build_parser().parse_args(argv))
    preset = args.pop("preset") or "quick"
    try:
        return resolve(preset, args)
    except ValueError as err:
        build_parser().error(str(err))


def validate(s: CollapseSettings) -> None:
    for task in s.tasks:
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}. Valid tasks: {', '.join(TASKS)}.")
    for name in s.inits:
        parse_init(name)
    for key in ("widths", "depths", "train_widths", "train_depths", "lp_depths", "dense_train_widths"):
        values = getattr(s, key)
        if any(v < 1 for v in values):
            raise ValueError(f"Expected positive --{key.replace('_', '-')}, got {_show(values)}.")
    if any(w > MAX_WIDTH for w in s.widths):
        raise ValueError(f"Expected --widths <= {MAX_WIDTH} (narrow networks), got {_show(s.widths)}.")
    subsets = (
        ("train_widths", "widths"),
        ("train_depths", "depths"),
        ("lp_depths", "depths"),
        ("dense_train_widths", "train_widths"),
    )
    for sub, full in subsets:
        extra = set(getattr(s, sub)) - set(getattr(s, full))
        if extra:
            raise ValueError(
                f"Expected --{sub.replace('_', '-')} to be a subset of --{full}, but {sorted(extra)} "
                f"is not in {_show(getattr(s, full))}."
            )
    for key in ("init_seeds", "n_train", "n_test", "chunk_seeds", "threads", "lp_init_seeds"):
        if getattr(s, key) < 1:
            raise ValueError(f"Expected --{key.replace('_', '-')} >= 1, got {getattr(s, key)}.")
    for key in ("train_seeds", "lp_train_seeds", "steps", "first_seed"):
        if getattr(s, key) < 0:
            raise ValueError(f"Expected --{key.replace('_', '-')} >= 0, got {getattr(s, key)}.")
    for key in ("lr", "collapse_tol", "lp_radius"):
        if not getattr(s, key) > 0:
            raise ValueError(f"Expected --{key.replace('_', '-')} > 0, got {getattr(s, key)}.")
    if s.lp_margin < 0:
        raise ValueError(f"Expected --lp-margin >= 0, got {s.lp_margin}.")


def lp_depths(s: CollapseSettings) -> tuple[int, ...]:
    return s.lp_depths or s.depths


def seeds_for(s: CollapseSettings, init: str, phase: str) -> int:
    """How many seeds a cell of ``init`` gets in ``phase`` ("init" or "train")."""
    lp = is_lp_family(init)
    if phase == "init":
        return s.lp_init_seeds if lp else s.init_seeds
    return s.lp_train_seeds if lp else s.train_seeds


def record_settings(s: CollapseSettings) -> None:
    """Write ``settings.json``; refuse if the folder's recipe differs. The run
    axes (tasks, widths, depths, inits, ...) keep the union of what was asked."""
    path = s.results_dir / "settings.json"
    s.results_dir.mkdir(parents=True, exist_ok=True)
    merged = s.to_dict()
    if path.is_file():
        old = json.loads(path.read_text())
        refuse_other_recipe(s.results_dir, old, merged, RECIPE_FIELDS)
        for k in ("tasks", "widths", "depths", "inits", "train_widths", "train_depths", "dense_train_widths"):
            merged[k] = list(dict.fromkeys([*old.get(k, []), *merged[k]]))
    write_atomic(path, json.dumps(merged, indent=2) + "\n")


def load_settings(results_dir: Path) -> dict:
    path = Path(results_dir) / "settings.json"
    if not path.is_file():
        raise FileNotFoundError(f"No settings.json in {results_dir}; is it a results folder of experiments.collapse?")
    return json.loads(path.read_text())
