"""What the README states, checked against the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

import lpinit.lp.problem

README = Path(__file__).resolve().parent.parent / "README.md"


def _lp_block(text: str) -> list[str]:
    """The lines of the LP: from 'minimize' to the anchor's line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("minimize    C sum_i s_i"))
    end = next(i for i in range(start, len(lines)) if "anchor=" in lines[i])
    return [line.strip() for line in lines[start : end + 1]]


def test_the_lp_is_written_the_same_in_the_readme_and_its_module():
    written = _lp_block(lpinit.lp.problem.__doc__ or "")
    assert len(written) == 6
    assert _lp_block(README.read_text()) == written


def test_the_coverage_set_lp_is_written_the_same_in_the_readme_and_its_module():
    import lpinit.lp.coverage

    def block(text: str) -> list[str]:
        lines = [line.strip() for line in text.splitlines()]
        start = lines.index("maximize    sum_ij a_ij z_ij / sigma_j")
        return lines[start : start + 4]

    written = block(lpinit.lp.coverage.__doc__ or "")
    assert written[-1].startswith("sum_j a_ij >= k")
    assert block(README.read_text()) == written


def test_the_readme_names_only_modules_that_exist():
    root = README.parent
    for path in set(re.findall(r"`((?:lpinit|experiments)/[\w/]+\.py)`", README.read_text())):
        assert (root / path).is_file(), path


def test_the_readme_states_lp_initializes_defaults():
    """The README's line ``lp_initialize(model, batch)  # = lp_initialize(model, batch, k=v, ...)``
    names every LP option and max_rows with the default the signature has."""
    import ast
    import inspect

    from lpinit.initialize import DEFAULTS, lp_initialize

    (stated,) = re.findall(
        r"lp_initialize\(model, batch\)\s+# = lp_initialize\(model, batch, (.*)\)", README.read_text()
    )
    call = ast.parse(f"f({stated})").body[0].value  # type: ignore[attr-defined]
    readme = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    signature = {name: p.default for name, p in inspect.signature(lp_initialize).parameters.items()}
    assert set(readme) == {*DEFAULTS, "max_rows"}
    assert readme == {name: signature[name] for name in readme}
    assert {name: signature[name] for name in DEFAULTS} == DEFAULTS
