"""The harness settings (experiments/settings.py): flags, presets, validation,
and settings.json staying true to what a results folder holds."""

from __future__ import annotations

import pytest

from experiments.settings import SettingsMismatch, parse_settings, record_settings, resolve


def test_flags_override_preset(tmp_path):
    s = parse_settings(["--preset", "full", "--seeds", "3", "--inits", "default,lsuv", "--results-root", str(tmp_path)])
    assert (s.seeds, s.inits, s.epochs, s.name) == (3, ("default", "lsuv"), 5, "full")
    assert s.results_dir == tmp_path / "full"
    with pytest.raises(SystemExit):
        parse_settings(["--inits", "nope"])


def test_different_recipe_in_same_folder_is_refused(tmp_path):
    record_settings(resolve("quick", {"results_root": str(tmp_path)}))
    record_settings(resolve("quick", {"results_root": str(tmp_path), "seeds": 5}))  # more runs: fine
    with pytest.raises(SettingsMismatch, match="epochs"):
        record_settings(resolve("quick", {"results_root": str(tmp_path), "epochs": 3}))
