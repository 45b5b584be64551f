"""The harness settings (experiments/settings.py): flags, presets, validation,
and settings.json staying true to what a results folder holds."""

from __future__ import annotations

import json

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


# --- validated before any run starts ----------------------------------------------

BAD_SETTINGS = [
    # (flags, what the one-line error must say); each reproduced a failure only after runs had started
    (["--device", "cuda"], "--device: Device 'cuda' asked for, but torch sees no CUDA GPU here"),
    (["--device", "cuda:3"], "--device: Device 'cuda:3' asked for, but torch sees no CUDA GPU here"),
    (["--device", "bogus"], "--device: Unknown device 'bogus'. Valid devices: auto, cpu, cuda, cuda:<index>."),
    (["--lrs", "nan"], "Expected positive, finite learning rates in --lrs, got nan."),
    (["--lrs", "0.01,inf"], "Expected positive, finite learning rates in --lrs, got 0.01,inf."),
    (["--inits", ""], "Expected at least one init in --inits, got none."),
    (["--inits", "default,lp@1e400"], "--inits: Expected a finite number for radius in 'lp@1e400'"),
    (["--lp-margin", "-1"], "Expected a finite --lp-margin >= 0"),
    (["--lp-margin", "nan"], "Expected a finite --lp-margin >= 0"),
    (["--stability-images", "0"], "Expected --stability-images >= 1, got 0."),
    (["--stability-images", "10001"], "Expected --stability-images <= 10000 (the test images), got 10001."),
    (["--lp-batch", "5000"], "Expected --lp-batch <= 1000 (the training images: --train-subset), got 5000."),
    (["--train-subset", "0", "--holdout", "59990", "--lp-batch", "64"], "Expected --lp-batch <= 10 "),
    (["--archs", ""], "Expected at least one arch in --archs, got none."),
    (["--n-boot", "0"], "Expected --n-boot >= 1, got 0."),
    (["--first-seed", "-1"], "Expected --first-seed >= 0, got -1."),
    (["--scheduler", "tcp://1.2.3.4:8786"], "--scheduler is for --backend dask or ray, got --backend loky."),
    (["--seeds", "two"], "argument --seeds: invalid int value: 'two'"),
    (["--lrs", "0.1,fast"], "argument --lrs: invalid comma-separated float value: '0.1,fast'"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_SETTINGS, ids=[" ".join(f) or "''" for f, _ in BAD_SETTINGS])
def test_bad_settings_exit_2_with_one_line_before_any_run(flags, message, tiny_argv, tmp_path, capsys, monkeypatch):
    import torch

    from experiments.compare import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_argv(*flags))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m experiments.compare: error: "), err
    assert message in err
    assert not (tmp_path / "quick").exists()  # nothing was started, not even the results folder


def test_duplicates_are_dropped_and_init_names_made_canonical():
    s = resolve("quick", {"inits": ("lp@0.10", "default", "lp@.1", "default"), "lrs": (0.01, 0.01)})
    assert (s.inits, s.lrs) == (("lp@0.1", "default"), (0.01,))


# --- settings.json stays true to what the folder holds ----------------------------


def _recorded(tmp_path):
    return json.loads((tmp_path / "quick" / "settings.json").read_text())


def test_rerun_with_other_seeds_keeps_settings_json_true(tmp_path):
    """Reproduces: --seeds 2, then --first-seed 5 --seeds 1 into the same folder left
    settings.json saying seeds 5..6 while the folder held seeds 0, 1 and 5."""
    base = {"results_root": str(tmp_path), "inits": ("default",)}
    record_settings(resolve("quick", {**base, "seeds": 2}))
    record_settings(resolve("quick", {**base, "first_seed": 2, "seeds": 2, "inits": ("lsuv",)}))
    recorded = _recorded(tmp_path)
    assert (recorded["first_seed"], recorded["seeds"]) == (0, 4)  # seeds 0..3
    assert recorded["inits"] == ["default", "lsuv"]
    assert [(i["first_seed"], i["seeds"], i["inits"]) for i in recorded["invocations"]] == [
        (0, 2, ["default"]),
        (2, 2, ["lsuv"]),
    ]
    record_settings(resolve("quick", {**base, "first_seed": 1, "seeds": 1}))  # inside the range: nothing new
    assert (_recorded(tmp_path)["first_seed"], _recorded(tmp_path)["seeds"]) == (0, 4)
    with pytest.raises(
        SettingsMismatch, match=r"holds seeds 0..3; seeds 5..5 would leave a gap .* --first-seed 0 --seeds 6"
    ):
        record_settings(resolve("quick", {**base, "first_seed": 5, "seeds": 1}))
    assert (_recorded(tmp_path)["first_seed"], _recorded(tmp_path)["seeds"]) == (0, 4)  # refused: unchanged


def test_inits_with_options_split_at_top_level_commas_only():
    from experiments.settings import parse_settings

    settings = parse_settings(["--inits", "default,kaiming_normal+lp(radius=3,rescale=unit,target=0.9),lsuv"])
    assert settings.inits == ("default", "kaiming_normal+lp(radius=3,rescale=unit,target=0.9)", "lsuv")
