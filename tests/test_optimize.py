"""The command line, run in-process (and once as a real subprocess)."""

import json
import subprocess
import sys

import pytest
import torch

import lpinit.initialize as initialize_module
from lpinit.optimize import main

SMALL = ["--model", "mlp:784,16,10", "--batch-size", "32", "--jobs", "1"]


def test_runs_and_saves_model_and_report(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*SMALL, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ReLU zeros on the 10,000 MNIST test images" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["report"]["layers"][0]["name"] == "fc1"
    assert report["settings"]["batch_size"] == 32
    state = torch.load(out / "model.pt")
    assert state["fc1.weight"].shape == (16, 784)


def test_json_flag_prints_json(tmp_path, capsys):
    assert main([*SMALL, "--out", str(tmp_path), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["test_zero_fraction_after"] <= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--radius", "-1"], "--radius: expected a finite number >= 0"),
        (["--batch-size", "0"], "--batch-size: expected a positive integer"),
        (["--solver", "gurobi"], "invalid choice: 'gurobi'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "model, message",
    [
        ("resnet", "unknown --model 'resnet'"),
        ("mlp:784,x,10", "integer widths"),
        ("no_such_module:make", "cannot load --model"),
        ("mlp:100,10,10", "input width of 784"),
    ],
)
def test_bad_model_exits_2(model, message, tmp_path, capsys):
    assert main(["--model", model, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_solver_failure_exits_1(tmp_path, monkeypatch, capsys):
    real_solve = initialize_module.solve_layer

    def fail_all(*args, **kwargs):
        solution = real_solve(*args, **kwargs)
        solution.status[:] = "failed"
        solution.delta_weight[:] = 0.0
        solution.delta_bias[:] = 0.0
        return solution

    monkeypatch.setattr(initialize_module, "solve_layer", fail_all)
    assert main([*SMALL, "--out", str(tmp_path), "--quiet"]) == 1
    assert "solver failure" in capsys.readouterr().err


def test_help_documents_every_flag():
    result = subprocess.run(
        [sys.executable, "-m", "lpinit.optimize", "--help"], capture_output=True, text=True, check=True
    )
    for flag in [
        "--model",
        "--batch-size",
        "--radius",
        "--margin",
        "--solver",
        "--jobs",
        "--seed",
        "--exact",
        "--out",
        "--quiet",
        "--json",
    ]:
        assert flag in result.stdout
