"""The wheel: built from a copy of the clone, installed into a new virtual
environment, and run from another folder."""

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "cache", "__pycache__", ".pytest_cache", "results")


def _run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy: setuptools reuses build/ in the source folder, which
    # can hold modules the clone no longer has.
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"), str(source)])
    (built,) = (root / "dist").glob("lpinit-*.whl")
    return built


def test_wheel_holds_lpinit_and_the_bundled_mnist_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"lpinit"}  # no `experiments` package
    # every module of the clone, subpackages included (pyproject.toml lists them)
    modules = {str(p.relative_to(REPO)) for p in (REPO / "lpinit").rglob("*.py") if "__pycache__" not in p.parts}
    missing = modules - set(names)
    assert not missing, (
        f"not in the wheel: {sorted(missing)}; list their packages in pyproject.toml's [tool.setuptools]"
    )
    assert {name for name in names if name.endswith(".py")} == modules
    bundled = {name for name in names if name.startswith("lpinit/mnist/")}
    expected = {"SHA256SUMS", "SHA256SUMS.raw"} | {f.name for f in (REPO / "data" / "mnist").glob("*.gz")}
    assert bundled == {f"lpinit/mnist/{name}" for name in expected}


def test_installed_wheel_runs_the_cli_outside_the_clone(wheel, tmp_path):
    # Reproduces: in an installed lpinit, `python -m lpinit.optimize` found no
    # MNIST (it looked for data/ beside the package), and `experiments` was
    # installed as a top-level package.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site_packages = next((env_dir / "lib").glob("python*/site-packages"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site_packages), str(wheel)])
    # torch and the other dependencies come from this interpreter's
    # site-packages (installing them again would take minutes); lpinit does not,
    # since the new environment's own site-packages come first.
    ours = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (site_packages / "dependencies.pth").write_text("\n".join(ours) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LPINIT_", "PYTHON"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"), OMP_NUM_THREADS="1")

    where = _run([str(python), "-c", "import lpinit; print(lpinit.__file__)"], cwd=elsewhere, env=env)
    package = Path(where.stdout.strip()).parent
    assert package == site_packages / "lpinit"
    no_experiments = subprocess.run([str(python), "-c", "import experiments"], cwd=elsewhere, env=env)
    assert no_experiments.returncode != 0

    before = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    cli = [str(python), "-m", "lpinit.optimize", "--model", "mlp:784,16,10", "--batch-size", "32", "--jobs", "1"]
    result = _run([*cli, "--quiet", "--json", "--out", "out"], cwd=elsewhere, env=env)
    report = json.loads(result.stdout)
    assert report["report"]["layers"][0]["batch_size"] == 32
    assert (elsewhere / "out" / "model.pt").is_file() and (elsewhere / "out" / "report.json").is_file()
    # the decompressed MNIST went to the user's cache, not into site-packages
    assert sorted(p.name for p in (tmp_path / "xdg" / "lpinit" / "MNIST" / "raw").iterdir() if p.suffix != ".lock")
    after = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    assert after == before
