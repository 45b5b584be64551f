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


def test_the_readme_names_only_modules_that_exist():
    root = README.parent
    for path in set(re.findall(r"`((?:lpinit|experiments)/[\w/]+\.py)`", README.read_text())):
        assert (root / path).is_file(), path
