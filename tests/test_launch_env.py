"""Launch-environment detection and GPU selection (bcrdist.distributed.launch_env) from explicit environment
mappings and faked device counts (the 'mpi' path is tested with mpiexec elsewhere; hostlists in
tests/test_hostlist.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bcrdist.distributed.launch_env import LaunchEnv, LaunchError, cuda_device_index, detect_environment, slurm_port

ROOT = Path(__file__).resolve().parents[1]


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


def test_srun_rendezvous_host_from_multi_bracket_nodelist():
    """`rack[1-2]-node[01-02]` was once expanded to '1-2]-node01'."""
    env = _srun(SLURM_STEP_NODELIST="rack[1-2]-node[01-02]")
    assert detect_environment(env).master_addr == "rack1-node01"


# ------------------------------------------------------------------------------------- GPU selection
def _node(visible: list[list[int]], method: str = "slurm", cgroup: bool = False,
          **extra) -> list[tuple[LaunchEnv, dict, list[int]]]:
    """Every rank of one node as (LaunchEnv, environment, physical GPUs it sees) for a binding in which local
    rank k sees the physical GPUs `visible[k]`: CUDA_VISIBLE_DEVICES names them as Slurm does without device
    cgroups, or, with `cgroup` (ConstrainDevices=yes), as 0..n-1 of the task's cgroup."""
    ranks = []
    n = len(visible)
    for k, gpus in enumerate(visible):
        names = range(len(gpus)) if cgroup else gpus
        env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, names)), **extra}
        if method == "slurm":
            env.update(SLURM_PROCID=str(k), SLURM_LOCALID=str(k), SLURM_STEP_ID="0", SLURM_JOB_ID="9")
        elif method == "submitit":      # submitit's ranks are Slurm tasks that export the torchrun variables
            env.update(SLURM_PROCID=str(k), SLURM_LOCALID=str(k), SLURM_STEP_ID="0", RANK=str(k), LOCAL_RANK=str(k))
        else:
            env.update(TORCHELASTIC_RUN_ID="r", RANK=str(k), LOCAL_RANK=str(k))
        kind = "slurm" if method == "slurm" else "torchrun"
        ranks.append((LaunchEnv(kind, k, n, k, "h", 1, n), env, gpus))
    return ranks


GPUS_PER_TASK_1 = {"SLURM_GPUS_PER_TASK": "1"}
BINDINGS = {
    # srun --ntasks-per-node=4 --gpus-per-node=4: every task sees the node's 4 GPUs
    "gpus-per-node": _node([[0, 1, 2, 3]] * 4, SLURM_GPUS_PER_NODE="4"),
    # srun --gpus-per-task=1: each task sees its own GPU (as cuda:0)
    "gpus-per-task=1": _node([[0], [1], [2], [3]], **GPUS_PER_TASK_1),
    # ... with device cgroups (ConstrainDevices=yes) every task's one GPU is device 0 of its cgroup
    "gpus-per-task=1 (cgroup)": _node([[0], [1], [2], [3]], cgroup=True, **GPUS_PER_TASK_1),
    # srun --gpus-per-task=2, 4 tasks on 8 GPUs: disjoint pairs
    "gpus-per-task=2": _node([[0, 1], [2, 3], [4, 5], [6, 7]], SLURM_GPUS_PER_TASK="2"),
    # --gpus-per-task=1 --gpu-bind=none: the binding is undone, every task sees all
    "gpus-per-task=1 gpu-bind=none": _node([[0, 1, 2, 3]] * 4, SLURM_GPU_BIND="none", **GPUS_PER_TASK_1),
    # --gpu-bind=single:1 and --gpu-bind=map_gpu:3,2,1,0: one GPU each
    "gpu-bind=single:1": _node([[0], [1], [2], [3]], SLURM_GPU_BIND="single:1"),
    "gpu-bind=map_gpu": _node([[3], [2], [1], [0]], SLURM_GPU_BIND="map_gpu:3,2,1,0"),
    # --gpu-bind=closest, 2 tasks on 2 sockets of 2 GPUs each
    "gpu-bind=closest, a task per socket": _node([[0, 1], [2, 3]], SLURM_GPU_BIND="closest"),
    # a site prolog that sets CUDA_VISIBLE_DEVICES per task, or for the whole job
    "site CUDA_VISIBLE_DEVICES per task": _node([[5], [6]]),
    "site CUDA_VISIBLE_DEVICES per job": _node([[4, 5, 6, 7]] * 4),
    # torchrun --nproc-per-node=4: the workers share their agent's GPUs
    "torchrun": _node([[0, 1, 2, 3]] * 4, method="torchrun"),
    # srun --ntasks-per-node=1 --gpus-per-task=4 torchrun --nproc-per-node=4: the same, inside the task's set
    "srun --gpus-per-task=4 torchrun": _node([[4, 5, 6, 7]] * 4, method="torchrun",
                                            SLURM_GPUS_PER_TASK="4", SLURM_PROCID="0", SLURM_LOCALID="0",
                                            SLURM_STEP_ID="0"),
    # bcrdist submit (submitit) with --gpus-per-task=1 and with --gpus-per-node=2
    "submitit gpus-per-task=1": _node([[0], [1]], method="submitit", **GPUS_PER_TASK_1),
    "submitit gpus-per-node": _node([[0, 1]] * 2, method="submitit"),
}


@pytest.mark.parametrize("binding", list(BINDINGS))
def test_every_rank_of_a_node_gets_its_own_physical_gpu(binding):
    ranks = BINDINGS[binding]
    physical = []
    for env, environ, visible in ranks:
        index = cuda_device_index(env, len(visible), environ)
        assert 0 <= index < len(visible)
        physical.append(visible[index])
    assert len(set(physical)) == len(ranks), f"{binding}: ranks share GPUs {physical}"


@pytest.mark.parametrize("binding, expected", [
    ("gpus-per-node", [0, 1, 2, 3]), ("gpus-per-task=1", [0, 0, 0, 0]), ("gpus-per-task=2", [0, 1, 0, 0]),
    ("gpu-bind=map_gpu", [0, 0, 0, 0]), ("torchrun", [0, 1, 2, 3]), ("submitit gpus-per-task=1", [0, 0]),
])
def test_device_indices(binding, expected):
    got = [cuda_device_index(env, len(gpus), e) for env, e, gpus in BINDINGS[binding]]
    assert got == expected


def test_closest_binding_with_more_tasks_than_gpus_per_socket_is_refused():
    """4 tasks, 2 sockets of 2 GPUs, Slurm's default block:cyclic distribution: tasks 0 and 2 see GPUs 0,1."""
    ranks = _node([[0, 1], [2, 3], [0, 1], [2, 3]], SLURM_GPU_BIND="closest")
    assert cuda_device_index(*_args(ranks[1])) == 1
    with pytest.raises(LaunchError, match="local rank 2 of 4") as err:
        cuda_device_index(*_args(ranks[2]))
    msg = str(err.value)
    assert "CUDA_VISIBLE_DEVICES='0,1'" in msg and "--gpus-per-task=1" in msg and "--gpu-bind=none" in msg


def _args(rank):
    env, environ, gpus = rank
    return env, len(gpus), environ


def test_torchrun_with_more_workers_than_gpus_is_refused():
    ranks = _node([[0]] * 2, method="torchrun")
    assert cuda_device_index(*_args(ranks[0])) == 0
    with pytest.raises(LaunchError, match="local rank 1 of 2.*sees 1 GPU.*--nproc-per-node"):
        cuda_device_index(*_args(ranks[1]))


def test_no_visible_gpu_is_refused():
    env, environ, _ = _node([[0]])[0]
    with pytest.raises(LaunchError, match="sees no GPU.*CUDA_VISIBLE_DEVICES=''.*runtime.device: cpu"):
        cuda_device_index(env, 0, dict(environ, CUDA_VISIBLE_DEVICES=""))
    with pytest.raises(LaunchError, match="CUDA_VISIBLE_DEVICES unset"):
        cuda_device_index(LaunchEnv("single", 0, 1, 0), 0, {})


def test_single_process_takes_the_first_gpu():
    assert cuda_device_index(LaunchEnv("single", 0, 1, 0), 8, {}) == 0
