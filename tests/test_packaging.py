"""The package works from any install: a non-editable one carries its data with it."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convredunet import datasets

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "convredunet"
DATA_FILES = (datasets.MNIST_IMAGES_FILE, datasets.MNIST_LABELS_FILE)


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_package_names_no_path_outside_itself():
    # What made the package run from one folder only: paths computed from the
    # source tree (parent.parent, ..), or named in messages (../shared/...).
    pattern = re.compile(r"parent\.parent|os\.pardir|\.\./|\.\.\\\\")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_non_editable_install_carries_the_mnist_files(tmp_path):
    # Install a copy of the project (pip builds in the source folder: keep the
    # checkout clean) into a plain folder, without network or build isolation.
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source / "convredunet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr

    installed = target / "convredunet" / "data"
    for name in DATA_FILES:
        assert (installed / name).is_file(), sorted(p.name for p in installed.parent.iterdir())
        assert _md5(installed / name) == _md5(PACKAGE / "data" / name)

    # load_mnist from the installed copy, run from a folder that is not the checkout.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CONVREDUNET_DATA"}
    env["PYTHONPATH"] = str(target)
    code = ("import convredunet; from convredunet.datasets import load_mnist; "
            "X, y = load_mnist(); print(convredunet.__file__); print(X.shape, y.shape)")
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    where, shapes = run.stdout.strip().splitlines()
    assert Path(where).resolve().is_relative_to(target.resolve())
    assert shapes == "(10000, 28, 28) (10000,)"

    # The command line of that install names the bench/ scripts in one line, exit 2.
    bench = subprocess.run([sys.executable, "-m", "convredunet", "bench", "construction"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert bench.returncode == 2
    assert bench.stderr.strip().splitlines() == [
        "convredunet bench needs a source checkout (the bench/ scripts are not installed); "
        "from a clone of convredunet run: python3 bench/construction.py"]
