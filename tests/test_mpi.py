"""MPI (`bcrdist.distributed.mpi`): launch detection, a plain process never imports mpi4py, and ranks that
convert, verify and compute statistics of their own shards under a real mpiexec."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from bcrdist.data.format import read_manifest
from bcrdist.data.synthetic import make_fan_file
from bcrdist.distributed.mpi import launched_by_mpi
from data_helpers import cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_mpi_launch_detection_and_plain_process():
    assert not launched_by_mpi({})
    assert launched_by_mpi({"PMI_RANK": "0", "PMI_SIZE": "2"})
    assert launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "4"})
    assert launched_by_mpi({"PMIX_RANK": "1"})
    assert launched_by_mpi({"SLURM_NTASKS": "4"})
    assert not launched_by_mpi({"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1"})
    assert not launched_by_mpi({"PMI_RANK": "0", "BCRDIST_MPI": "0"})
    code = ("import sys; from bcrdist.cli import main; rc = main(sys.argv[1:]); "
            "assert 'mpi4py' not in sys.modules; raise SystemExit(rc)")
    env = {k: v for k, v in os.environ.items() if not launched_by_mpi({k: v})}
    src = REPO / "tests" / "fixtures" / "keras" / "bcr_wcomp3_io.h5"
    result = subprocess.run([sys.executable, "-c", code, "verify", str(src)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no manifest" in result.stderr


@pytest.mark.mpi
def test_mpi_ranks_convert_their_own_shards(tmp_path, capsys):
    mpiexec = pathlib.Path(sys.executable).with_name("mpiexec")
    if not mpiexec.exists():
        pytest.skip("no mpiexec next to the Python interpreter")
    src = make_fan_file(tmp_path / "src.h5", 130)
    assert cli(capsys, "shard", src, tmp_path / "serial", "--samples-per-shard", 25, "--quiet")[0] == 0
    env = {k: v for k, v in os.environ.items() if not launched_by_mpi({k: v})}
    result = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "bcrdist", "shard", str(src),
                             str(tmp_path / "mpi"), "--samples-per-shard", "25"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[rank 1/2] shard-00001.h5: samples 25–49 written" in result.stdout
    assert "[rank 0/2] shard-00002.h5: samples 50–74 written" in result.stdout
    serial, mpi = read_manifest(tmp_path / "serial"), read_manifest(tmp_path / "mpi")
    assert mpi.provenance["mpi_ranks"] == 2
    assert [s["sha256"] for s in mpi.shards] == [s["sha256"] for s in serial.shards]
    assert mpi.statistics == serial.statistics
    result = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "bcrdist", "verify",
                             str(tmp_path / "mpi"), "--quiet"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.count(": ok (130 samples in 6 shards") == 1, result.stderr
    raw = json.loads((tmp_path / "mpi" / "manifest.json").read_text())
    raw["statistics"] = None
    (tmp_path / "mpi" / "manifest.json").write_text(json.dumps(raw))
    result = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "bcrdist", "stats", str(tmp_path / "mpi")],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.count("measure2") == 1, result.stderr
    assert read_manifest(tmp_path / "mpi").statistics == serial.statistics
