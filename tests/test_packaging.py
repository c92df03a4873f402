"""What `pip install .` puts into an environment: alexpipe and its sub-packages, nothing generic at the top."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_installed_packages_are_alexpipe_and_its_sub_packages_only(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info into the source folder
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "alexpipe", "pipeline", "model", "train", "bench"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__", "results")}
                                           if (ROOT / name).is_dir() else {}))
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)]
    res = subprocess.run([*build, "--no-build-isolation"], capture_output=True, text=True, timeout=600)
    if res.returncode:  # this environment's setuptools is too old for pyproject.toml: let pip fetch one
        res = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    (wheel,) = wheels.glob("alexpipe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"alexpipe", wheel.name.split("-py")[0] + ".dist-info"}, names
    for needed in ("alexpipe/pipeline/loaders/dali/plugin/pca_jitter.cu", "alexpipe/bench/schema.json",
                   "alexpipe/model/alexnet.py", "alexpipe/train/run.py"):
        assert needed in names

    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    probe = ("import importlib, sys\n"
             "import alexpipe.pipeline, alexpipe.model, alexpipe.train, alexpipe.bench\n"
             "print(alexpipe.pipeline.__file__)\n"
             "for name in ('model', 'train', 'pipeline', 'bench'):\n"
             "    try:\n"
             "        importlib.import_module(name)\n"
             "        print('importable:', name)\n"
             "    except ImportError:\n"
             "        pass\n")
    # from another folder than the checkout, with the installed copy first on the path
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(str(site / "alexpipe" / "pipeline")), lines
    assert lines[1:] == []  # no top-level model, train, pipeline or bench


def test_the_command_line_starts_without_torch():
    """`alexpipe --help` and every sub-command's --help answer at once: nothing imports torch or NumPy for them."""
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from alexpipe.cli import app\n"
            "for args in ([], ['convert'], ['info'], ['train'], ['evaluate'], ['bench']):\n"
            "    res = CliRunner().invoke(app, [*args, '--help'])\n"
            "    assert res.exit_code == 0 and 'Usage' in res.output, (args, res.output)\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
