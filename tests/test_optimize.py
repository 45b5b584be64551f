"""The command line, run in-process (and as a real subprocess where signals or
a fresh interpreter matter)."""

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import joblib
import pytest
import torch

import lpinit.data as data_module
import lpinit.initialize as initialize_module
import lpinit.lp as lp_module
from lpinit.optimize import PROG, build_parser, cli_message, main
from lpinit.validation import check_non_negative

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--model", "mlp:784,16,10", "--batch-size", "32", "--jobs", "1"]


REAL_LOAD_MNIST = data_module.load_mnist


@pytest.fixture(autouse=True)
def mnist_loaded_once(monkeypatch, mnist_train, mnist_test):
    """The CLI gets the session's MNIST instead of loading it again (1 s a run);
    tests of the data path put the real loader back."""
    monkeypatch.setattr(data_module, "load_mnist", lambda train=True: mnist_train if train else mnist_test)


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--radius", "-1"], "--radius: expected a finite number >= 0"),
        (["--batch-size", "0"], "--batch-size: expected a positive integer"),
        (["--solver", "gurobi"], "invalid choice: 'gurobi'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--out", ""], "--out: expected a folder name, got ''"),  # once wrote into the current folder
        (["--target-active", "1"], "--target-active: expected a number in (0, 1)"),
        (["--l1", "nan"], "--l1: expected a finite number >= 0"),
        (["--rescale", "row"], "--rescale: expected one of unit, layer, none, got row"),
        (["--anchor", "median"], "--anchor: expected one of mean, none, got median"),
        (["--target-active", "half"], "--target-active: expected a number in (0, 1) or none, got half"),
        (["--exact"], "pass --target-active none (the default is 0.5)"),
        (["--target-active", "0.5", "--margin", "0"], "--margin > 0 with --target-active"),
        (["--target-active", "0.5", "--exact"], "--exact solves the plain LP"),
        (["--coverage", "0"], "--coverage: expected a positive integer, got 0"),
        (["--target-active", "none", "--coverage", "1"], "but --target-active is None"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in _one_line(capsys.readouterr().err)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the CLI loads MNIST or runs the LP."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the CLI went on to load data or run the LP")

    monkeypatch.setattr(data_module, "load_mnist", forbidden)
    monkeypatch.setattr(initialize_module, "lp_initialize", forbidden)


@pytest.mark.parametrize(
    "model, message",
    [
        ("resnet", "unknown --model 'resnet'"),
        ("mlp:784,x,10", "integer widths"),
        ("no_such_module:make", "cannot load --model"),
        ("mlp:100,10,10", "input width of 784"),
        ("lpinit.models:no_such_factory", "module lpinit.models has no attribute 'no_such_factory'"),
    ],
)
def test_bad_model_exits_2(model, message, tmp_path, capsys, no_work):
    assert main(["--model", model, "--out", str(tmp_path)]) == 2
    assert message in _one_line(capsys.readouterr().err)


FACTORIES = {
    "raises": ("def make():\n    raise RuntimeError('needs a GPU')\n", r"'\w+:make' raised RuntimeError: needs a GPU"),
    "not-callable": ("make = 3\n", r"'\w+:make' is a int, expected a function or class that takes no arguments"),
    "a-module-not-a-factory": (
        "from torch import nn\nmake = nn.Linear(784, 10)\n",
        r"'\w+:make' is a Linear, expected a function or class",
    ),
    "needs-arguments": (
        "def make(width):\n    pass\n",
        r"'\w+:make' cannot be called without arguments \(missing a required argument: 'width'\)",
    ),
    "returns-no-module": ("def make():\n    return {'fc1': 1}\n", r"'\w+:make' returned dict, expected an nn.Module"),
    "syntax-error": ("def make(:\n    pass\n", r"cannot load --model '\w+:make': invalid syntax in .*\.py, line 1"),
    "module-raises": ("1 / 0\n", r"cannot load --model '\w+:make': importing \w+ raised ZeroDivisionError"),
}


@pytest.mark.parametrize("case", FACTORIES)
def test_broken_factory_module_exits_2_with_one_line(case, tmp_path, monkeypatch, capsys, no_work):
    # Reproduces: each of these ended in a traceback (RuntimeError, TypeError,
    # SyntaxError, ZeroDivisionError escaping main).
    source, message = FACTORIES[case]
    module = "factory_" + case.replace("-", "_")
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--model", f"{module}:make", "--out", str(tmp_path / "out")]) == 2
    assert re.search(message, _one_line(capsys.readouterr().err))
    assert not (tmp_path / "out").exists()


def test_a_class_is_a_factory(tmp_path, monkeypatch):
    (tmp_path / "a_class.py").write_text(
        "from torch import nn\n\n"
        "class Net(nn.Sequential):\n"
        "    def __init__(self):\n"
        "        super().__init__(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--model", "a_class:Net", "--batch-size", "16", "--jobs", "1", "--out", str(tmp_path / "out")]) == 0


def _unwritable(tmp_path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return folder / "out"
    if not Path("/proc/self").is_dir():
        pytest.skip("root writes anywhere, and there is no /proc to refuse a folder")
    return Path("/proc/lpinit-cannot-create-this")


@pytest.mark.parametrize("case", ["a-file", "under-a-file", "unwritable"])
def test_bad_out_is_refused_before_any_work(case, tmp_path, capsys, no_work):
    # Reproduces: the LP ran first, then saving raised FileExistsError,
    # NotADirectoryError or PermissionError with a traceback, and the work was lost.
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    out = {"a-file": a_file, "under-a-file": a_file / "out", "unwritable": _unwritable(tmp_path)}[case]
    assert main([*SMALL, "--out", str(out)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"--out '{out}'" in err
    assert {"a-file": "is a file", "under-a-file": "Not a directory", "unwritable": "cannot write to"}[case] in err
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_damaged_data_exits_2_with_one_line(damage, tmp_path, monkeypatch, capsys):
    # Reproduces: DataIntegrityError (or a bare EOFError) escaped as a traceback.
    monkeypatch.setattr(data_module, "load_mnist", REAL_LOAD_MNIST)
    bundle = tmp_path / "data" / "mnist"
    bundle.mkdir(parents=True)
    if damage == "truncated":
        for path in data_module.bundled_dir().iterdir():
            (bundle / path.name).write_bytes(path.read_bytes())
        gz = bundle / "train-labels-idx1-ubyte.gz"
        gz.write_bytes(gz.read_bytes()[:1000])
    monkeypatch.setenv("LPINIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LPINIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "new" / "out"
    assert main([*SMALL, "--out", str(out)]) == 2
    err = _one_line(capsys.readouterr().err)
    expected = "SHA256SUMS.raw" if damage == "missing" else "train-labels-idx1-ubyte.gz is damaged (EOFError"
    assert f"{PROG}: error: " in err and expected in err and "LPINIT_DATA_DIR" in err
    assert not (tmp_path / "new").exists()  # the folders made for --out are gone again


def test_a_repaired_cache_file_is_one_warning_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data_module, "load_mnist", REAL_LOAD_MNIST)
    monkeypatch.setenv("LPINIT_CACHE_DIR", str(tmp_path / "cache"))
    data_module.ensure_mnist_raw()
    (tmp_path / "cache" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"torn")
    assert main([*SMALL, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    err = _one_line(capsys.readouterr().err)
    assert err.startswith(f"{PROG}: warning: The cached MNIST file ") and "t10k-labels-idx1-ubyte was corrupt" in err


def test_a_batch_larger_than_mnist_exits_2(tmp_path, capsys):
    # Reproduces: --batch-size 100000 ran on the 60,000 images there are, and
    # recorded batch_size 100000 in report.json.
    assert main([*SMALL[:2], "--batch-size", "60001", "--out", str(tmp_path / "out")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "--batch-size 60001 is more than the 60,000 MNIST training images" in err


def test_library_hints_name_the_cli_flags(tmp_path, monkeypatch, capsys):
    def rejects_radius(*args, **kwargs):
        check_non_negative(-1.0, "radius")  # the library's own message

    monkeypatch.setattr(initialize_module, "lp_initialize", rejects_radius)
    assert main([*SMALL, "--out", str(tmp_path)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "Expected --radius to be a finite number >= 0, got -1.0. Pass e.g. --radius 0.1." in err
    assert "radius=" not in err


@pytest.mark.parametrize(
    "library, cli",
    [
        ("Pass e.g. margin=0.1.", "Pass e.g. --margin 0.1."),
        (
            "Expected n_jobs >= 1, got 0. Pass n_jobs=1 to solve here.",
            "Expected --jobs >= 1, got 0. Pass --jobs 1 to solve here.",
        ),
        ("got solver='cvxpy', exact=True.", "got --solver 'cvxpy', --exact."),
        ("lower `radius=` for layer fc2", "lower --radius for layer fc2"),
        ("Expected time_limit_s to be finite", "Expected --time-limit to be finite"),
        ("below the margin of fc1", "below the margin of fc1"),  # prose stays prose
    ],
)
def test_cli_message_translates_python_arguments(library, cli):
    assert cli_message(library) == cli


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


STALLING_MODEL = """
import time
from pathlib import Path
from torch import nn

class Stall(nn.Module):
    def forward(self, x):
        Path("working").touch()
        time.sleep(300)
        return x

def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), Stall(), nn.Linear(16, 10))
"""


def test_ctrl_c_ends_with_one_line_and_exit_130(tmp_path):
    # Reproduces: Ctrl-C printed a KeyboardInterrupt traceback.
    (tmp_path / "stalling.py").write_text(STALLING_MODEL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "lpinit.optimize", "--model", "stalling:make", "--jobs", "1", "--quiet"]
    cli = subprocess.Popen(
        [*argv, "--out", "out"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test run started in the background of a shell without job control
        # inherits SIGINT ignored, and the CLI would then sleep through it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        while not (tmp_path / "working").exists():  # the model is running on the test images
            assert cli.poll() is None, cli.communicate()
            time.sleep(0.05)
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
    assert cli.returncode == 130
    assert err == f"{PROG}: interrupted\n" and out == ""
    assert not (tmp_path / "out").exists()


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("failing", ["model.pt", "report.json"])
def test_outputs_are_both_new_or_both_old(failing, tmp_path, monkeypatch, capsys):
    # Reproduces: a failure while writing report.json left a new model.pt
    # beside the old report.json, a temporary file, and a traceback.
    assert main([*SMALL, "--out", str(tmp_path), "--quiet", "--seed", "1"]) == 0
    old = _outputs(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "model.pt":
        monkeypatch.setattr(torch, "save", disk_full)
    else:
        real_dumps = json.dumps
        monkeypatch.setattr(
            json, "dumps", lambda obj, **kw: disk_full() if "settings" in obj else real_dumps(obj, **kw)
        )
    assert main([*SMALL, "--out", str(tmp_path), "--quiet", "--seed", "2"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "No space left on device; both are as they were" in err
    assert _outputs(tmp_path) == old  # both old, and no temporary left


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_get_the_usual_permissions(umask, mode, tmp_path):
    # Reproduces: both files were 0600 whatever the umask.
    previous = os.umask(umask)
    try:
        assert main([*SMALL, "--out", str(tmp_path), "--quiet"]) == 0
    finally:
        os.umask(previous)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "model.pt": mode,
        "report.json": mode,
    }


@pytest.fixture
def calls(monkeypatch):
    """What the CLI asked of the library, in order: worker starts, data loads,
    lp_initialize (its batch and arguments) and solve_layer (its arguments)."""
    seen: list[tuple[str, object]] = []

    def record(module, name, real):
        def wrapper(*args, **kwargs):
            seen.append((name, (args, kwargs)))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    record(lp_module, "start_workers", lambda *args, **kwargs: None)  # recorded, not started
    record(data_module, "load_mnist", data_module.load_mnist)
    record(initialize_module, "lp_initialize", initialize_module.lp_initialize)
    record(initialize_module, "solve_layer", initialize_module.solve_layer)
    return seen


def _called(calls, name):
    return [arguments for called, arguments in calls if called == name]


def test_jobs_above_the_cores_are_capped_with_a_note(tmp_path, monkeypatch, calls, capsys):
    # Reproduces: --jobs 64 on 2 cores asked the LP for 64 processes, silently.
    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    assert main([*SMALL[:-2], "--jobs", "64", "--out", str(tmp_path), "--quiet"]) == 0
    note = _one_line(capsys.readouterr().err)
    assert note == f"{PROG}: note: --jobs 64 is more than the 2 cores here; using 2\n"
    ((_args, kwargs),) = _called(calls, "lp_initialize")
    assert kwargs["n_jobs"] == 2
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["jobs"] == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "mlp:784,8,10", "--jobs", "2"],  # 8 units: too few to share
        ["--model", "mlp:784,8,10"],  # the default, one per core
        ["--model", "mlp:784,64,10", "--jobs", "2", "--solver", "cvxpy"],  # cvxpy runs here only
    ],
)
def test_no_worker_process_the_lp_will_not_use(argv, tmp_path, monkeypatch, calls):
    # Reproduces: the CLI started jobs-1 workers before it knew the model or solver.
    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    assert main([*argv, "--batch-size", "8", "--out", str(tmp_path), "--quiet"]) == 0
    assert _called(calls, "start_workers") == []
    report = json.loads((tmp_path / "report.json").read_text())["report"]
    assert [layer["processes"] for layer in report["layers"]] == [1]


def test_the_general_form_shares_narrower_layers():
    """A general LP runs HiGHS on every unit, so a layer of 40 units is worth
    two processes; the plain LP's mostly closed-form units are not."""
    from lpinit.lp.highs import MIN_GENERAL_UNITS_PER_PROCESS, MIN_UNITS_PER_PROCESS
    from lpinit.optimize import build_model, lp_processes

    units = 2 * MIN_GENERAL_UNITS_PER_PROCESS
    assert units < 2 * MIN_UNITS_PER_PROCESS
    model = build_model(f"mlp:784,{units},10")
    assert lp_processes(model, 2, "highs", general=False) == 1
    assert lp_processes(model, 2, "highs", general=True) == 2
    assert lp_processes(model, 2, "cvxpy", general=True) == 1


def test_workers_the_lp_will_use_start_before_the_data_loads(tmp_path, monkeypatch, calls):
    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    assert main(["--model", "mlp:784,64,10", "--batch-size", "32", "--jobs", "2", "--out", str(tmp_path)]) == 0
    order = [name for name, _ in calls]
    assert order[:3] == ["start_workers", "load_mnist", "load_mnist"]
    assert calls[0][1] == ((2,), {})  # n_jobs=2: this process and one worker


# ---------------------------------------------------------------- each flag does what it says


def _run(calls, tmp_path, *argv, out="out"):
    """Run the CLI on the small model; return (report.json, lp_initialize's batch and kwargs, solve_layer kwargs)."""
    assert main([*SMALL, "--out", str(tmp_path / out), "--quiet", *argv]) == 0
    ((lp_args, lp_kwargs),) = _called(calls, "lp_initialize")
    solves = [kwargs for _args, kwargs in _called(calls, "solve_layer")]
    calls.clear()
    return json.loads((tmp_path / out / "report.json").read_text()), lp_args[1], lp_kwargs, solves


def check_model(calls, tmp_path, capsys):
    result, *_ = _run(calls, tmp_path, "--model", "mlp:784,24,12,10", out="mlp")
    assert [(x["name"], x["out_features"]) for x in result["report"]["layers"]] == [("fc1", 24), ("fc2", 12)]
    result, *_ = _run(calls, tmp_path, "--model", "cnn", out="cnn")
    names = [(x["name"], x["out_features"]) for x in result["report"]["layers"]]
    assert names == [("conv1", 6), ("conv2", 16), ("fc1", 120), ("fc2", 84)]


def check_batch_size(calls, tmp_path, capsys):
    result, batch, *_ = _run(calls, tmp_path, "--batch-size", "20")
    assert batch.shape == (20, 1, 28, 28) and result["report"]["layers"][0]["batch_size"] == 20


def check_radius(calls, tmp_path, capsys):
    small, _, kwargs, _ = _run(calls, tmp_path, "--radius", "0.01", out="a")
    large, *_ = _run(calls, tmp_path, "--radius", "1", out="b")
    assert kwargs["radius"] == 0.01
    assert large["report"]["layers"][0]["weight_bound"] == pytest.approx(
        100 * small["report"]["layers"][0]["weight_bound"]
    )


def check_margin(calls, tmp_path, capsys):
    low, _, kwargs, _ = _run(calls, tmp_path, "--margin", "0.05", out="a")
    high, *_ = _run(calls, tmp_path, "--margin", "0.5", out="b")
    assert kwargs["margin"] == 0.05
    assert high["report"]["layers"][0]["margin"] == pytest.approx(10 * low["report"]["layers"][0]["margin"])


def check_solver(calls, tmp_path, capsys):
    result, _, kwargs, solves = _run(calls, tmp_path, "--solver", "cvxpy")
    assert kwargs["solver"] == "cvxpy" and solves[0]["solver"] == "cvxpy" and result["report"]["solver"] == "cvxpy"


def check_jobs(calls, tmp_path, capsys):
    _, _, kwargs, solves = _run(calls, tmp_path)  # SMALL has --jobs 1
    assert kwargs["n_jobs"] == 1 and solves[0]["n_jobs"] == 1


def check_time_limit(calls, tmp_path, capsys):
    result, _, _, solves = _run(calls, tmp_path, "--time-limit", "7.5")
    assert [kwargs["time_limit_s"] for kwargs in solves] == [7.5]  # it reaches the solver
    assert result["settings"]["time_limit"] == 7.5


def check_seed(calls, tmp_path, capsys):
    _, batch0, *_ = _run(calls, tmp_path, "--seed", "0", out="a")
    _, batch0_again, *_ = _run(calls, tmp_path, "--seed", "0", out="b")
    _, batch1, *_ = _run(calls, tmp_path, "--seed", "1", out="c")
    assert torch.equal(batch0, batch0_again) and not torch.equal(batch0, batch1)
    initial = [torch.load(tmp_path / name / "model.pt")["fc2.weight"] for name in "abc"]  # fc2 is not ReLU-fed
    assert torch.equal(initial[0], initial[1]) and not torch.equal(initial[0], initial[2])


def check_exact(calls, tmp_path, capsys):
    result, _, kwargs, solves = _run(calls, tmp_path, "--exact", "--target-active", "none")
    assert kwargs["exact"] is True and solves[0]["exact"] is True and result["report"]["exact"] is True


def check_out(calls, tmp_path, capsys):
    _run(calls, tmp_path, out="deep/er")
    assert sorted(p.name for p in (tmp_path / "deep" / "er").iterdir()) == ["model.pt", "report.json"]


def check_quiet(calls, tmp_path, capsys):
    assert main([*SMALL, "--out", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr()
    assert "ReLU zeros on the 10,000 MNIST test images" in loud.out and "fc1" in loud.err  # table, progress bar
    assert main([*SMALL, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def check_json(calls, tmp_path, capsys):
    assert main([*SMALL, "--out", str(tmp_path), "--json", "--radius", "0.07"]) == 0
    printed = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert printed["settings"] == {**printed["settings"], "radius": 0.07, "batch_size": 32, "json": True}
    assert printed == json.loads((tmp_path / "report.json").read_text())


def check_rescale(calls, tmp_path, capsys):
    plain, *_ = _run(calls, tmp_path, "--target-active", "0.9", "--radius", "1", "--rescale", "none", out="a")
    rescaled, _, kwargs, _ = _run(
        calls, tmp_path, "--target-active", "0.9", "--radius", "1", "--rescale", "unit", out="b"
    )
    assert kwargs["rescale"] == "unit" and rescaled["report"]["rescale"] == "unit"
    before, after = plain["report"]["layers"][0], rescaled["report"]["layers"][0]
    assert after["preact_rms_after"] == pytest.approx(after["preact_rms_before"], rel=1e-5)
    assert before["preact_rms_after"] != pytest.approx(before["preact_rms_before"], rel=1e-3)
    assert after["zeros_after"] == before["zeros_after"]  # a positive scale keeps every sign


def check_anchor(calls, tmp_path, capsys):
    result, _, kwargs, solves = _run(calls, tmp_path, "--anchor", "mean", "--target-active", "none")
    assert kwargs["anchor"] == "mean" and solves[0]["anchor"] is True
    layer = result["report"]["layers"][0]
    assert layer["preact_mean_lp"] == pytest.approx(layer["preact_mean_before"], abs=1e-6)


def check_l1(calls, tmp_path, capsys):
    result, _, kwargs, solves = _run(calls, tmp_path, "--l1", "0.01", "--target-active", "none")
    assert kwargs["l1"] == 0.01 and solves[0]["l1"] > 0 and result["report"]["layers"][0]["l1"] > 0


def check_target_active(calls, tmp_path, capsys):
    result, _, kwargs, solves = _run(calls, tmp_path, "--target-active", "0.75", "--radius", "2")
    assert kwargs["target_active"] == 0.75 and solves[0]["target_active"] == 0.75
    layer = result["report"]["layers"][0]
    assert layer["met_target"] == 16 and layer["zeros_after"] == 16 * 8  # 24 of 32 samples active per unit
    _, _, kwargs, solves = _run(calls, tmp_path, "--target-active", "none", out="plain")
    assert kwargs["target_active"] is None and solves[0]["target_active"] is None


def check_coverage(calls, tmp_path, capsys):
    # 16 units, each active on 4 of 32 samples: 2 active units per sample on average
    result, _, kwargs, solves = _run(calls, tmp_path, "--target-active", "0.125", "--coverage", "2", "--radius", "2")
    assert kwargs["coverage"] == 2 and solves[0]["coverage"] == 2
    layer = result["report"]["layers"][0]
    assert result["settings"]["coverage"] == 2 and layer["met_target"] == 16 and layer["covered"] == 32
    assert (
        main([*SMALL, "--out", str(tmp_path / "wide"), "--quiet", "--target-active", "0.125", "--coverage", "3"]) == 2
    )
    assert "--coverage 3 asks every row of layer 'fc1' to be active in 3 units" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "wide" / "report.json").exists()
    calls.clear()
    result, _, kwargs, _ = _run(calls, tmp_path, out="per_unit")
    assert kwargs["coverage"] is None and result["report"]["layers"][0]["covered"] is None


BEHAVIOUR = {
    "--model": check_model,
    "--batch-size": check_batch_size,
    "--radius": check_radius,
    "--margin": check_margin,
    "--rescale": check_rescale,
    "--anchor": check_anchor,
    "--l1": check_l1,
    "--target-active": check_target_active,
    "--coverage": check_coverage,
    "--solver": check_solver,
    "--jobs": check_jobs,
    "--time-limit": check_time_limit,
    "--seed": check_seed,
    "--exact": check_exact,
    "--out": check_out,
    "--quiet": check_quiet,
    "--json": check_json,
}


@pytest.mark.parametrize("flag", BEHAVIOUR)
def test_flag_changes_what_happens(flag, calls, tmp_path, capsys):
    BEHAVIOUR[flag](calls, tmp_path, capsys)


def test_every_flag_has_a_behaviour_test():
    flags = {option for action in build_parser()._actions for option in action.option_strings}
    assert flags - {"-h", "--help"} == set(BEHAVIOUR)


def test_the_demo_uses_lp_initializes_defaults_and_leaves_no_logit_dead(tmp_path):
    """The seed MLP has a ReLU on its logits: a logit unit that is zero on every
    image of the batch costs a whole class. With the defaults every unit is
    active on exactly its top half of the batch (met_target), so none is dead."""
    from lpinit.initialize import DEFAULTS

    assert main(["--batch-size", "64", "--out", str(tmp_path), "--quiet"]) == 0
    result = json.loads((tmp_path / "report.json").read_text())
    assert {key: result["settings"][key] for key in DEFAULTS} == DEFAULTS
    logits = result["report"]["layers"][-1]
    assert logits["name"] == "fc4" and logits["met_target"] == logits["out_features"] == 10
    assert logits["zeros_after"] == 10 * 32  # each of the 10 units zero on 32 of the 64 images, no more
