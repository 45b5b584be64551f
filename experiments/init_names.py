"""The grammar of init names: a base init followed by steps.

    name  := base ("+" step)*
    base  := default | kaiming_normal | xavier_uniform | orthogonal | lsuv | rai
    step  := kind "(" [key "=" value ("," key "=" value)*] ")"

Steps, applied in order after the base:

- ``lp(radius=, margin=, rescale=, anchor=, l1=, target=, coverage=)``:
  ``lp_initialize`` with those options (``target`` is ``target_active``); an unset key is off
  (radius 0.1, no rescaling, anchor, l1 term or target: the LP as first
  posed, whatever lp_initialize's defaults are), the margin the harness's
  ``--lp-margin``.
- ``quantile_bias(q=, rescale=)``: ``lpinit.quantile_bias_``.
- ``bias_shift(<lp keys>)``: the control of ``lp(<same keys>)``: one constant
  per layer, matching the per-layer zero fractions that LP reaches from the
  same start (``lpinit.bias_shift_``, with the same ``rescale``).

For example ``kaiming_normal+lp(target=0.8,rescale=unit)`` or
``default+quantile_bias(q=0.8,rescale=unit)``. The names of the first results,
``lp@<radius>`` and ``bias_shift@<radius>``, still parse: they are
``default+lp(radius=<radius>)`` and its control, and keep their spelling.

``parse_init_name`` is the one parser; ``str()`` of what it returns is the
canonical spelling (keys in the order above, numbers as ``%g``), which the
harness records in ``runs.jsonl``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

BASES = ("default", "kaiming_normal", "xavier_uniform", "orthogonal", "lsuv", "rai")
LP_KEYS = ("radius", "margin", "rescale", "anchor", "l1", "target", "coverage")
STEP_KEYS = {"lp": LP_KEYS, "quantile_bias": ("q", "rescale"), "bias_shift": LP_KEYS}
RESCALE_CHOICES = ("unit", "layer")
ANCHOR_CHOICES = ("mean",)
LEGACY = {"lp": "lp", "bias_shift": "bias_shift"}  # lp@<radius>, bias_shift@<radius>

BASE_FAMILIES = {
    "default": "random",
    "kaiming_normal": "random",
    "xavier_uniform": "random",
    "orthogonal": "random",
    "lsuv": "data-dependent",
    "rai": "data-dependent",
}

VALID_INITS = (
    f"a base ({', '.join(BASES)}) optionally followed by steps "
    f"+{'(...), +'.join(STEP_KEYS)}(...) (e.g. kaiming_normal+lp(target=0.8,rescale=unit)), "
    "or lp@<radius>, bias_shift@<radius>"
)

Value = float | str


@dataclass(frozen=True)
class Step:
    """One step after the base: its kind and its options (canonical order)."""

    kind: str
    options: tuple[tuple[str, Value], ...] = ()

    def get(self, key: str, default: Value | None = None) -> Value | None:
        return dict(self.options).get(key, default)

    def number(self, key: str, default: float) -> float:
        """A numeric option (radius, margin, l1, target, q)."""
        return float(dict(self.options).get(key, default))

    def __str__(self) -> str:
        return f"{self.kind}(" + ",".join(f"{k}={_show(v)}" for k, v in self.options) + ")"


@dataclass(frozen=True)
class InitSpec:
    """A parsed init name (module docstring)."""

    base: str
    steps: tuple[Step, ...] = ()
    legacy: bool = False  # spelled lp@<radius> or bias_shift@<radius>

    def __str__(self) -> str:
        if self.legacy:
            (step,) = self.steps
            return f"{step.kind}@{step.number('radius', 0.0):g}"
        return self.base + "".join(f"+{step}" for step in self.steps)

    @property
    def last(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    @property
    def method(self) -> str:
        """What the init ends with: the base's name, or the kind of its last step."""
        return self.last.kind if self.last else self.base

    def control(self) -> InitSpec | None:
        """``...+lp(k=v)`` -> ``...+bias_shift(k=v)`` (its control), else None."""
        if self.last is None or self.last.kind != "lp":
            return None
        return InitSpec(self.base, (*self.steps[:-1], Step("bias_shift", self.last.options)), self.legacy)

    def quantile_control(self) -> InitSpec | None:
        """``...+lp(target=q, rescale=r, ...)`` -> ``...+quantile_bias(q=q, rescale=r)``: the same
        per-unit activity set by the bias alone; None without an activity target."""
        target, rescale = (None, None) if self.last is None else (self.last.get("target"), self.last.get("rescale"))
        if self.last is None or self.last.kind != "lp" or target is None:
            return None
        options: list[tuple[str, Value]] = [("q", target)]
        if rescale is not None:
            options.append(("rescale", rescale))
        return InitSpec(self.base, (*self.steps[:-1], Step("quantile_bias", tuple(options))), self.legacy)

    def matched_lp(self) -> InitSpec:
        """For a ``bias_shift`` last step: the init whose zero fractions it matches."""
        assert self.last is not None and self.last.kind == "bias_shift"
        return InitSpec(self.base, (*self.steps[:-1], Step("lp", self.last.options)), self.legacy)


def parse_init_name(name: str) -> InitSpec:
    """The one parser of init names; raises with the valid names and keys."""
    if not isinstance(name, str):
        raise TypeError(f"Expected an init name (str), got {type(name).__name__}. Valid inits: {VALID_INITS}.")
    text = name.strip()
    legacy = re.fullmatch(r"(\w+)@(.*)", text)
    if legacy:
        kind, arg = legacy.groups()
        if kind not in LEGACY:
            raise ValueError(f"Unknown init {name!r}: only lp@<radius> and bias_shift@<radius> take '@'.")
        radius = _number(arg, name, "radius")
        if not 0 < radius < math.inf:
            raise ValueError(
                f"Expected a positive, finite radius after '@' in {name!r}, got {arg!r}; write e.g. {kind}@0.1."
            )
        return InitSpec("default", (Step(kind, (("radius", radius),)),), legacy=True)
    base, *rest = text.split("+")
    if base not in BASES:
        raise ValueError(f"Unknown base init {base!r} in {name!r}. Valid inits: {VALID_INITS}.")
    return InitSpec(base, tuple(_parse_step(part, name) for part in rest))


def _parse_step(text: str, name: str) -> Step:
    match = re.fullmatch(r"(\w+)\((.*)\)", text.strip())
    if not match:
        raise ValueError(f"Expected a step like lp(target=0.8) after '+' in {name!r}, got {text!r}.")
    kind, body = match.groups()
    if kind not in STEP_KEYS:
        raise ValueError(f"Unknown step {kind!r} in {name!r}. Valid steps: {', '.join(STEP_KEYS)}.")
    valid = STEP_KEYS[kind]
    given: dict[str, Value] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in valid:
            raise ValueError(f"Unknown option {item!r} of {kind}(...) in {name!r}. Valid keys: {', '.join(valid)}.")
        if key in given:
            raise ValueError(f"Option {key!r} given twice in {kind}(...) of {name!r}.")
        given[key] = _value(kind, key, value, name)
    _check_combination(kind, given, name)
    return Step(kind, tuple((key, given[key]) for key in valid if key in given))


def _value(kind: str, key: str, text: str, name: str) -> Value:
    if key == "rescale":
        return _choice(text, RESCALE_CHOICES, key, name)
    if key == "anchor":
        return _choice(text, ANCHOR_CHOICES, key, name)
    number = _number(text, name, key)
    if key in ("target", "q") and not 0 < number < 1:
        raise ValueError(f"Expected {key} in (0, 1) in {kind}(...) of {name!r}, got {text!r}.")
    if key == "radius" and not 0 < number < math.inf:
        raise ValueError(f"Expected a positive, finite radius in {kind}(...) of {name!r}, got {text!r}.")
    if key == "coverage" and not (number >= 1 and number == int(number)):
        raise ValueError(f"Expected a whole coverage >= 1 in {kind}(...) of {name!r}, got {text!r}.")
    if key in ("margin", "l1") and not 0 <= number < math.inf:
        raise ValueError(f"Expected a finite {key} >= 0 in {kind}(...) of {name!r}, got {text!r}.")
    return number


def _check_combination(kind: str, given: dict[str, Value], name: str) -> None:
    if kind == "quantile_bias" and "q" not in given:
        raise ValueError(f"quantile_bias(...) needs q, e.g. quantile_bias(q=0.8), in {name!r}.")
    if "target" in given and given.get("l1"):
        raise ValueError(f"target sets its own objective; drop l1 from {kind}(...) in {name!r}.")
    if "coverage" in given and "target" not in given:
        raise ValueError(f"coverage chooses activity targets; add target to {kind}(...) in {name!r}.")
    if "target" in given and given.get("margin") == 0:
        raise ValueError(f"target needs a margin > 0 in {kind}(...) of {name!r}.")


def _number(text: str, name: str, key: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"Expected a number for {key} in {name!r}, got {text!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"Expected a finite number for {key} in {name!r}, got {text!r}.")
    return value


def _choice(text: str, choices: tuple[str, ...], key: str, name: str) -> str:
    if text not in choices:
        raise ValueError(f"Unknown {key} {text!r} in {name!r}. Valid: {', '.join(choices)}.")
    return text


def _show(value: Value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def family(name: str) -> str:
    """The init's family for the report: the base's (random, data-dependent)
    when there is no step, else the last step's kind (lp, quantile_bias, bias_shift)."""
    spec = parse_init_name(name)
    return BASE_FAMILIES[spec.base] if spec.last is None else spec.last.kind


def control_of(name: str) -> str | None:
    """The name of the control run for ``name`` (``lp@0.1`` -> ``bias_shift@0.1``,
    ``x+lp(k=v)`` -> ``x+bias_shift(k=v)``), or None."""
    control = parse_init_name(name).control()
    return None if control is None else str(control)


def controls_of(name: str) -> list[str]:
    """Every control run of ``name``: its matched bias shift and, for an
    activity-target LP, its quantile bias (empty for a name without an LP step)."""
    spec = parse_init_name(name)
    return [str(c) for c in (spec.control(), spec.quantile_control()) if c is not None]


def is_control(name: str) -> bool:
    """Whether ``name`` ends with a ``bias_shift`` step (the control of an LP)."""
    return parse_init_name(name).method == "bias_shift"
