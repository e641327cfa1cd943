"""Packaging: one home for the metadata (setup.cfg), the licence file, configs shipped as package data and
found by the CLI, and a wheel built with `python -m build` that runs `bcrdist demo` in a fresh virtual
environment outside the repository."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from bcrdist.config import PACKAGED_CONFIGS, find_config
from bcrdist.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_setup_cfg_is_the_one_home_of_the_metadata():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(pyproject) == {"build-system"}, "pyproject.toml declares only the build backend"
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == "MIT" and cfg["metadata"]["license_files"] == "LICENSE"
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "Copyright (c) 2026 the bcrdist developers" in licence


def test_default_install_brings_no_mpi_and_the_extras_do():
    """`pip install bcrdist` must not put an mpiexec in front of the site's MPI; the extras are explicit."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    required = cfg["options"]["install_requires"].lower()
    assert "mpi4py" not in required and "mpich" not in required
    extras = {k: v.split() for k, v in cfg["options.extras_require"].items()}
    assert extras["mpi"] == ["mpi4py>=3.1"]
    assert "mpich" in extras["mpich"] and "mpi4py>=3.1" in extras["mpich"]
    assert any(r.startswith("tensorboard") for r in extras["tensorboard"])
    setup_env = (ROOT / "tools/setup_env.sh").read_text()
    assert "test,mpi,mpich" in setup_env        # the tests and the demo use the bundled MPICH


def test_repository_configs_are_the_packaged_ones():
    assert (ROOT / "configs").resolve() == PACKAGED_CONFIGS
    assert (PACKAGED_CONFIGS / "demo.yaml").is_file() and (PACKAGED_CONFIGS / "data" / "demo.yaml").is_file()


def test_find_config_falls_back_to_the_packaged_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("configs/demo.yaml") == PACKAGED_CONFIGS / "demo.yaml"
    assert find_config("demo.yaml") == PACKAGED_CONFIGS / "demo.yaml"
    assert find_config("configs/data/demo.yaml") == PACKAGED_CONFIGS / "data" / "demo.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("seed: 3\n")
    assert find_config("configs/demo.yaml") == Path("configs/demo.yaml")      # a file here wins
    with pytest.raises(ConfigError, match=r"nosuch.yaml: config file not found.*demo.yaml"):
        find_config("configs/nosuch.yaml")
    absent = tmp_path / "absent.yaml"
    assert find_config(absent) == absent          # an absolute path is never replaced: the loader reports it


def _sources(dest: Path) -> Path:
    """The files a source checkout builds from, copied so that the build leaves nothing in the repository."""
    dest.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "bcrdist", dest / "bcrdist", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def install_wheel(tmp_path: Path) -> tuple[Path, Path, dict]:
    """Build bcrdist's wheel and install it into a fresh virtual environment `tmp_path/venv` whose dependencies
    come from the test environment; (the venv, its site-packages, an environment to run its commands in)."""
    src = _sources(tmp_path / "src")
    dist = tmp_path / "dist"
    # --no-isolation: the backend (setuptools.build_meta) from this environment, so nothing is downloaded
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                            str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheel, = dist.glob("bcrdist-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, numpy, ...) come from the test environment, found after the venv's own
    # site-packages; its editable bcrdist is not (an editable install hooks in through a .pth of its own)
    (site / "test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin", OMP_NUM_THREADS="1")
    return venv, site, env


@pytest.mark.slow
def test_wheel_runs_the_demo_in_a_fresh_environment_outside_the_repository(tmp_path):
    venv, site, env = install_wheel(tmp_path)
    py = venv / "bin" / "python"
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([py, "-c", "import bcrdist; print(bcrdist.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), f"bcrdist imported from {where}, not from the wheel"

    bcrdist = str(venv / "bin" / "bcrdist")
    help_text = subprocess.run([bcrdist, "demo", "--help"], cwd=work, env=env, capture_output=True, text=True,
                               timeout=120)
    assert help_text.returncode == 0 and "--dir" in help_text.stdout and "packaged configs" in help_text.stdout
    run = subprocess.run([bcrdist, "demo", "--dir", "out", "--nproc", "1", "--set", "schedule.epochs=1",
                          "--set", "schedule.pretrain_stages=[[1, 1.0]]", "--set", "schedule.finetune_stages=[[1, 0.5]]",
                          "--set", "data.n_valid=16", "--data-set", "samples=64", "--data-set", "samples_per_shard=32",
                          "--val", "16"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "Demo finished" in run.stdout
    assert str(site / "bcrdist" / "configs" / "demo.yaml") in run.stdout       # the wheel's own config
    for path in ("out/data/demo/manifest.json", "out/runs/demo/results.json", "out/runs/demo/checkpoints/best.pt",
                 "out/runs/demo/eval-test/samples.png", "out/runs/demo/born_baseline.json"):
        assert (work / path).is_file(), path
