"""Command line: LP-initialize a network on a batch of bundled MNIST.

    python -m lpinit.optimize                      # seed MLP, 256 images, defaults
    python -m lpinit.optimize --model mlp:784,300,10 --radius 0.05 --out runs/a

Prints the per-layer report and the ReLU-zero fractions on the held-out test
images before and after, and saves the initialized ``state_dict`` (model.pt)
and the report (report.json) into ``--out``, both new or both as they were.
Exit status: 0 on success, 1 if the solver failed on some unit, 2 for bad
input (a flag, the model, the output folder, a missing or damaged data file),
130 if interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # torch and the library are imported in main, so that a
    from torch import nn  # Ctrl-C during their slow import is handled there too

PROG = "python -m lpinit.optimize"

FLAGS = {
    "radius": "--radius",
    "margin": "--margin",
    "rescale": "--rescale",
    "anchor": "--anchor",
    "l1": "--l1",
    "target_active": "--target-active",
    "coverage": "--coverage",
    "solver": "--solver",
    "n_jobs": "--jobs",
    "time_limit_s": "--time-limit",
    "exact": "--exact",
}
"""lp_initialize's arguments -> this CLI's flags, for the library's messages."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage too; one line is enough
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _open_unit_interval(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


def _target_active(text: str) -> float | None:
    if text == "none":
        return None
    try:
        return _open_unit_interval(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) or none, got {text}") from None


def _none_or(choices: tuple[str, ...]):
    def parse(text: str) -> str | None:
        if text == "none":
            return None
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join((*choices, 'none'))}, got {text}")
        return text

    return parse


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _folder_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a folder name, got {text!r}")
    return text


def build_model(spec: str) -> nn.Module:
    """``seed-mlp``, ``cnn`` (``lpinit.cnn``), ``mlp:784,750,10`` (ReLU-fed hidden
    layers), or ``package.module:factory`` (a no-argument callable returning an nn.Module).
    Raises ValueError, with a one-line message, for anything else."""
    from lpinit.models import cnn, mlp, seed_mlp

    if spec == "seed-mlp":
        return seed_mlp()
    if spec == "cnn":
        return cnn()
    if spec.startswith("mlp:"):
        try:
            widths = [int(w) for w in spec[4:].split(",")]
        except ValueError:
            raise ValueError(f"expected --model mlp:W0,W1,... with integer widths, got {spec!r}") from None
        if widths[0] != 784:
            raise ValueError(f"expected an MNIST input width of 784 in --model, got {widths[0]}")
        return mlp(widths)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"unknown --model {spec!r}; expected seed-mlp, cnn, mlp:784,...,10 or package.module:factory")
    return _call_factory(spec, _load_factory(spec, module_name, attr))


def _load_factory(spec: str, module_name: str, attr: str):
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as err:
        raise ValueError(
            f"cannot load --model {spec!r}: {err.msg} in {err.filename}, line {err.lineno}; fix the module"
        ) from None
    except ImportError as err:
        raise ValueError(f"cannot load --model {spec!r}: {err}") from None
    except Exception as err:  # the user's module ran and raised: say so, in one line
        raise ValueError(
            f"cannot load --model {spec!r}: importing {module_name} raised {type(err).__name__}: {err}"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"cannot load --model {spec!r}: module {module_name} has no attribute {attr!r}") from None


def _call_factory(spec: str, factory) -> nn.Module:
    from torch import nn

    expected = "expected a function or class that takes no arguments and returns an nn.Module"
    if isinstance(factory, nn.Module) or not callable(factory):
        raise ValueError(f"--model {spec!r} is a {type(factory).__name__}, {expected}")
    try:
        inspect.signature(factory).bind()
    except TypeError as err:
        raise ValueError(f"--model {spec!r} cannot be called without arguments ({err}); {expected}") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): calling it will tell
    try:
        model = factory()
    except Exception as err:  # the user's factory raised: say so, in one line
        raise ValueError(f"--model {spec!r} raised {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r} returned {type(model).__name__}, expected an nn.Module")
    return model


def build_parser() -> argparse.ArgumentParser:
    from lpinit.initialize import ANCHORS, DEFAULTS
    from lpinit.layerwise import RESCALE_MODES
    from lpinit.lp import SOLVERS

    parser = _OneLineParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add(
        "--model",
        default="seed-mlp",
        help="seed-mlp (default), cnn (a LeNet-5-style CNN), mlp:784,W1,...,10, or package.module:factory",
    )
    add("--batch-size", type=_positive_int, default=256, help="MNIST training images in the LP batch (default 256)")
    add(
        "--radius",
        type=_non_negative_float,
        default=DEFAULTS["radius"],
        help="max weight change relative to sqrt(3) std(W); bias change relative to the "
        f"pre-activation spread (default {DEFAULTS['radius']:g})",
    )
    add(
        "--margin",
        type=_non_negative_float,
        default=DEFAULTS["margin"],
        help=f"target pre-activation relative to its spread (default {DEFAULTS['margin']:g})",
    )
    add(
        "--rescale",
        type=_none_or(RESCALE_MODES),
        default=DEFAULTS["rescale"],
        metavar="{" + ",".join((*RESCALE_MODES, "none")) + "}",
        help="after each layer's LP, scale each unit (or the layer) so that the pre-activations keep their "
        f"RMS on the batch; none: no rescaling (default {DEFAULTS['rescale']})",
    )
    add(
        "--anchor",
        type=_none_or(ANCHORS),
        default=DEFAULTS["anchor"],
        metavar="{" + ",".join((*ANCHORS, "none")) + "}",
        help=f"mean: each unit's batch-mean pre-activation may not move (default {DEFAULTS['anchor']})",
    )
    add(
        "--l1",
        type=_non_negative_float,
        default=DEFAULTS["l1"],
        help="weight of the change (in box units) in the LP's objective, relative to the pre-activation "
        f"spread; among equally good changes the smallest wins (default {DEFAULTS['l1']:g})",
    )
    add(
        "--target-active",
        type=_target_active,
        default=DEFAULTS["target_active"],
        help="q in (0, 1): make each unit active on its ceil(q n) samples of largest pre-activation and "
        "inactive on the others, with the smallest change; none: every pre-activation to reach the margin "
        f"(the plain LP) (default {DEFAULTS['target_active']})",
    )
    add(
        "--coverage",
        type=_positive_int,
        default=DEFAULTS["coverage"],
        help="k: with --target-active, choose the target rows of a layer's units together so that every "
        "sample is active in at least k units (default: none, per-unit targets)",
    )
    add("--solver", choices=SOLVERS, default="highs", help="highs (fast, default) or cvxpy (reference)")
    add(
        "--jobs",
        type=_positive_int,
        default=None,
        help="processes for the highs solver: this one and jobs-1 workers, started while the data "
        "loads if the model's layers are wide enough to use them (default and most: one per core)",
    )
    add("--time-limit", type=_non_negative_float, default=None, help="per-unit time limit in seconds")
    add("--seed", type=int, default=0, help="seeds the model's init and the batch choice (default 0)")
    add("--exact", action="store_true", help="solve the mixed-integer version (small layers only)")
    add("--out", type=_folder_name, default="lpinit-out", help="output folder for model.pt and report.json")
    add("--quiet", action="store_true", help="no progress bars and no table")
    add("--json", action="store_true", help="print the report as JSON on stdout")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with the LP's options also checked against each other, so that
    a bad combination exits 2 before any data is loaded."""
    from lpinit.initialize import DEFAULTS
    from lpinit.lp.problem import is_plain
    from lpinit.validation import check_coverage_option, check_lp_options

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_lp_options(args.margin, args.l1, args.anchor is not None, args.target_active)
        check_coverage_option(args.coverage, args.target_active)
    except ValueError as err:
        parser.error(cli_message(str(err)))
    if args.exact and not is_plain(args.l1, args.anchor, args.target_active):
        parser.error(
            "--exact solves the plain LP's mixed-integer form only; pass --target-active none "
            f"(the default is {DEFAULTS['target_active']}) and drop --l1 and --anchor"
        )
    return args


def cli_message(message: str) -> str:
    """A library message with its Python arguments written as this CLI's flags:
    ``Pass e.g. radius=0.1.`` -> ``Pass e.g. --radius 0.1.``"""
    names = "|".join(FLAGS)
    message = re.sub(r"`?\bexact=True`?", FLAGS["exact"], message)
    message = re.sub(
        rf"`?\b({names})=([^\s`,;)\]]*[^\s`,;)\].])?`?",
        lambda m: f"{FLAGS[m[1]]} {m[2]}" if m[2] else FLAGS[m[1]],
        message,
    )
    message = re.sub(rf"\b([Ee]xpected) ({names})\b", lambda m: f"{m[1]} {FLAGS[m[2]]}", message)
    return re.sub(r"(?<![-\w])(n_jobs|time_limit_s|target_active|coverage)\b", lambda m: FLAGS[m[1]], message)


def _say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr)


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    _say(f"warning: {message}")


def _prepare_out(out: Path) -> list[Path]:
    """Create ``out`` if needed and check that a file can be written in it,
    before any work is done. Returns the folders it created, deepest first."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; expected a folder (new or existing)")
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        _remove_empty(created)
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(out) else ""
        raise ValueError(
            f"cannot write to --out {str(out)!r}: {err.strerror or err}{where}; pass a folder you can write to"
        ) from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or gone: leave it
            folder.rmdir()


def _units(layer: nn.Module) -> int:
    """The LP's units of a layer: a Linear's outputs, a Conv2d's output channels."""
    from torch import nn

    return int(layer.out_features if isinstance(layer, nn.Linear) else getattr(layer, "out_channels", 0))


def lp_processes(model: nn.Module, jobs: int, solver: str, general: bool = False) -> int:
    """How many processes the LP will use for ``model`` with ``n_jobs=jobs``:
    the highs path gives each process at least ``MIN_UNITS_PER_PROCESS`` units
    of a layer (``MIN_GENERAL_UNITS_PER_PROCESS`` for the ``general`` form:
    anchor, ``l1``, targets), so a narrow model uses this one only."""
    if solver != "highs" or jobs <= 1:
        return 1
    import torch

    from lpinit.lp.highs import MIN_GENERAL_UNITS_PER_PROCESS, MIN_UNITS_PER_PROCESS
    from lpinit.tracing import relu_fed_layers

    reference = next(model.parameters(), None)
    example = torch.zeros(2, 1, 28, 28)
    if reference is not None:
        example = example.to(device=reference.device, dtype=reference.dtype)
    try:
        layers = relu_fed_layers(model, example)
    except Exception:  # the model does not run on MNIST: lp_initialize reports why, clearly
        return 1
    units = [_units(layer) for _, layer in layers]
    widest = max(units, default=0)
    return max(1, min(jobs, widest // (MIN_GENERAL_UNITS_PER_PROCESS if general else MIN_UNITS_PER_PROCESS)))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        with warnings.catch_warnings():
            warnings.showwarning = _warn_in_one_line
            return _run(args)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130


def _run(args: argparse.Namespace) -> int:
    import torch
    from joblib import cpu_count

    from lpinit.files import write_atomic_group
    from lpinit.lp.problem import is_plain

    torch.manual_seed(args.seed)
    try:
        model = build_model(args.model)
        out = Path(args.out)
        created = _prepare_out(out)
    except ValueError as err:
        _say(f"error: {err}")
        return 2
    try:
        cores = cpu_count()
        if args.jobs is not None and args.jobs > cores:
            _say(f"note: --jobs {args.jobs} is more than the {cores} cores here; using {cores}")
            args.jobs = cores
        general = not is_plain(args.l1, args.anchor, args.target_active)
        outcome = _initialize(args, model, lp_processes(model, args.jobs or cores, args.solver, general))
        if isinstance(outcome, int):
            return outcome
        result, report, before, after = outcome
        try:
            write_atomic_group(
                {
                    out / "model.pt": lambda f: torch.save(model.state_dict(), f),
                    out / "report.json": lambda f: f.write(json.dumps(result, indent=2).encode()),
                }
            )
        except OSError as err:
            _say(f"error: cannot write model.pt and report.json to --out {str(out)!r}: {err}; both are as they were")
            return 2
    finally:
        _remove_empty(created)  # only if nothing was written there

    if args.json:
        print(json.dumps(result, indent=2))
    elif not args.quiet:
        print(report)
        print(f"\nReLU zeros on the {before.samples:,} MNIST test images (held out):")
        print(f"  {'site':<8}{'before':>9}{'after':>9}")
        for b, a in zip(before.sites, after.sites, strict=True):
            print(f"  {b.name:<8}{b.zero_fraction:>9.4f}{a.zero_fraction:>9.4f}")
        print(f"  {'total':<8}{before.zero_fraction:>9.4f}{after.zero_fraction:>9.4f}")
        print(f"\nSaved {out / 'model.pt'} and {out / 'report.json'}")
    failed = result["report"]["status_counts"].get("failed", 0)
    if failed:
        _say(f"solver failure: {failed} unit(s) failed and kept their weights")
        return 1
    return 0


def _initialize(args: argparse.Namespace, model: nn.Module, processes: int):
    """Load MNIST and LP-initialize ``model`` on a batch of it. Returns
    ``(result to save, report, zeros before, zeros after)`` on the test images,
    or the exit status after an error."""
    import torch

    from lpinit.counting import count_relu_zeros
    from lpinit.data import load_mnist
    from lpinit.initialize import lp_initialize
    from lpinit.lp import start_workers
    from lpinit.validation import DataIntegrityError, LPInitError

    if processes > 1:
        # start the LP's worker processes now: they take ~0.5 s, which the
        # data loading below hides, and the LP then uses them from its start
        start_workers(processes)
    try:
        train_images, _ = load_mnist(train=True)
        test_images, _ = load_mnist(train=False)
    except (DataIntegrityError, OSError) as err:
        _say(f"error: {err}")
        return 2
    if args.batch_size > train_images.shape[0]:
        _say(f"error: --batch-size {args.batch_size} is more than the {train_images.shape[0]:,} MNIST training images")
        return 2
    generator = torch.Generator().manual_seed(args.seed)
    batch = train_images[torch.randperm(train_images.shape[0], generator=generator)[: args.batch_size]]

    try:
        before = count_relu_zeros(model, test_images, patterns=False)
        report = lp_initialize(
            model,
            batch,
            radius=args.radius,
            margin=args.margin,
            rescale=args.rescale,
            anchor=args.anchor,
            l1=args.l1,
            target_active=args.target_active,
            coverage=args.coverage,
            solver=args.solver,
            n_jobs=args.jobs,
            time_limit_s=args.time_limit,
            exact=args.exact,
            progress=not args.quiet,
        )
    except (ValueError, TypeError) as err:
        _say(f"error: {cli_message(str(err))}")
        return 2
    except LPInitError as err:
        _say(f"solver failure: {cli_message(str(err))}")
        return 1
    after = count_relu_zeros(model, test_images, patterns=False)
    result = {
        "settings": vars(args),
        "report": report.to_dict(),
        "test_zero_fraction_before": before.zero_fraction,
        "test_zero_fraction_after": after.zero_fraction,
        "test_sites_before": {s.name: s.zero_fraction for s in before.sites},
        "test_sites_after": {s.name: s.zero_fraction for s in after.sites},
    }
    return result, report, before, after


if __name__ == "__main__":
    sys.exit(main())
