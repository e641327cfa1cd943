"""Launch-environment detection (bcrdist.distributed.launch_env) from explicit environment mappings (the 'mpi' path is
tested with mpiexec elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bcrdist.distributed.launch_env import LaunchEnv, LaunchError, detect_environment, parse_nodelist, slurm_port

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- parse_nodelist
@pytest.mark.parametrize("nodelist, hosts", [
    ("n[1-2]", ["n1", "n2"]),
    ("gpu[01-03,07],login", ["gpu01", "gpu02", "gpu03", "gpu07", "login"]),
    ("a1,b[5]", ["a1", "b5"]),
    ("single", ["single"]),
    ("node-[008-011]", ["node-008", "node-009", "node-010", "node-011"]),
    ("x[9-10]", ["x9", "x10"]),
    ("c[1,3-4],d[2]", ["c1", "c3", "c4", "d2"]),
])
def test_parse_nodelist(nodelist, hosts):
    assert parse_nodelist(nodelist) == hosts


# ----------------------------------------------------------------------------------------- slurm_port
def test_slurm_port_range_and_stability():
    ids = [str(i) for i in range(1000, 1200)] + ["12345_7", "987654321"]
    ports = [slurm_port(j) for j in ids]
    assert all(20000 <= p < 40000 for p in ports)
    assert ports == [slurm_port(j) for j in ids]                  # same job id → same port
    assert len(set(ports)) > 190                                   # different jobs → (almost always) different


def test_slurm_port_same_in_every_process():
    """Every task of a job (separate interpreters, different hash seeds) must compute the same port."""
    # launch_env.py is loaded on its own (importing bcrdist.distributed would import torch: seconds per interpreter)
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('env', sys.argv[1]); "
            "m = sys.modules['env'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.slurm_port('4242'))")
    outs = set()
    for seed in ("0", "1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", code, str(ROOT / "bcrdist" / "distributed" / "launch_env.py")], env=env,
                             capture_output=True, text=True, check=True, timeout=60)
        outs.add(int(out.stdout.strip()))
    assert outs == {slurm_port("4242")}


# ------------------------------------------------------------------------------- detect_environment
def test_no_variables_is_single():
    assert detect_environment({}) == LaunchEnv("single", 0, 1, 0)


def test_torchrun():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29511",
           "TORCHELASTIC_RUN_ID": "abc", "LOCAL_WORLD_SIZE": "4"}
    assert detect_environment(env) == LaunchEnv("torchrun", 3, 8, 1, "10.0.0.5", 29511, 4)


def test_torchrun_defaults_and_priority_over_slurm():
    """`srun torchrun ...`: the torchrun variables describe the worker, not the Slurm task."""
    env = {"RANK": "5", "WORLD_SIZE": "6", "LOCAL_RANK": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
           "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n[1-2]"}
    got = detect_environment(env)
    assert (got.method, got.rank, got.world_size, got.local_rank) == ("torchrun", 5, 6, 2)
    assert (got.master_addr, got.master_port) == ("127.0.0.1", 29500)


def _srun(**extra):
    env = {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3",
           "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "gpu[07-08]",
           "SLURM_JOB_NODELIST": "gpu[05-08]", "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}
    env.update(extra)
    return env


def test_srun_step():
    got = detect_environment(_srun())
    assert got == LaunchEnv("slurm", 3, 4, 1, "gpu07", slurm_port("123456"), 2)    # master = first step node


def test_srun_step_without_step_variables_uses_job_values():
    env = _srun()
    del env["SLURM_STEP_NUM_TASKS"], env["SLURM_STEP_NODELIST"], env["SLURM_STEP_ID"]
    env["SLURM_STEPID"] = "2"                                                   # the older spelling
    got = detect_environment(env)
    assert (got.method, got.world_size, got.master_addr) == ("slurm", 8, "gpu05")


def test_srun_master_overrides():
    got = detect_environment(_srun(MASTER_ADDR="head.cluster", MASTER_PORT="31337"))
    assert (got.master_addr, got.master_port) == ("head.cluster", 31337)
    got = detect_environment(_srun(MASTER_PORT="31338"))
    assert (got.master_addr, got.master_port) == ("gpu07", 31338)


def test_sbatch_multi_task_without_srun_is_an_error():
    env = {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_JOB_NODELIST": "n[1-2]"}
    with pytest.raises(LaunchError, match="srun") as err:
        detect_environment(env)
    assert "2" in str(err.value)


def test_sbatch_single_task_is_single():
    env = {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert detect_environment(env).method == "single"
    assert detect_environment({"SLURM_JOB_ID": "5"}).method == "single"


@pytest.mark.parametrize("value", ["single", " SINGLE ", "Single"])
def test_forced_single_overrides_launcher(value):
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "BCRDIST_DIST_METHOD": value}
    assert detect_environment(env) == LaunchEnv("single", 0, 1, 0)
    sb = {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "2", "BCRDIST_DIST_METHOD": value}
    assert detect_environment(sb).method == "single"                # forcing also skips the sbatch check


def test_forced_torchrun_and_slurm():
    env = _srun(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", BCRDIST_DIST_METHOD="slurm")
    assert detect_environment(env).method == "slurm"
    no_step = {k: v for k, v in _srun(BCRDIST_DIST_METHOD="slurm").items() if k != "SLURM_STEP_ID"}
    assert detect_environment(no_step).rank == 3
    with pytest.raises(LaunchError, match="RANK"):
        detect_environment({"BCRDIST_DIST_METHOD": "torchrun"})
    assert detect_environment({"BCRDIST_DIST_METHOD": "torchrun", "RANK": "0", "WORLD_SIZE": "1",
                               "LOCAL_RANK": "0"}).method == "torchrun"


@pytest.mark.parametrize("value", ["nccl", "srun", "auto"])
def test_forced_invalid_value(value):
    with pytest.raises(LaunchError) as err:
        detect_environment({"BCRDIST_DIST_METHOD": value})
    msg = str(err.value)
    assert "BCRDIST_DIST_METHOD" in msg and value in msg
    assert all(m in msg for m in ("torchrun", "slurm", "mpi", "single"))


def test_bad_integer_variables():
    with pytest.raises(LaunchError, match="WORLD_SIZE"):
        detect_environment({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"})
    with pytest.raises(LaunchError, match="SLURM_LOCALID"):
        detect_environment({k: v for k, v in _srun().items() if k != "SLURM_LOCALID"})


def test_reads_os_environ_by_default(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("SLURM_", "OMPI_", "PMI", "MPI_")) or k in (
                "RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "BCRDIST_DIST_METHOD"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert detect_environment().rank == 2


def test_mpirun_inside_slurm_allocation_is_not_a_slurm_step():
    """Ranks started by mpirun inherit the Slurm variables of its daemons; their sizes disagree."""
    env = _srun(PMI_SIZE="16", PMI_RANK="9", BCRDIST_DIST_METHOD="")
    import bcrdist.distributed.launch_env as envmod
    assert any(v in env for v in envmod.MPI_RANK_VARS)
    env_slurm_consistent = _srun(PMI_SIZE="4", PMI_RANK="3")
    assert detect_environment(env_slurm_consistent).method == "slurm"
