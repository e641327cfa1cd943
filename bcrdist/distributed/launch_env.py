"""Launch-environment detection: torchrun, Slurm `srun` tasks, `mpiexec` (mpi4py), or one process.

`detect_environment()` reads environment variables (and, for a Slurm step without MASTER_ADDR, expands the
node list with `bcrdist.distributed.hostlist`; mpi4py is imported only when MPI launched the process) and
returns a `LaunchEnv`; `BCRDIST_DIST_METHOD=torchrun|slurm|mpi|single` forces the method.
`cuda_device_index()` picks this rank's GPU from the launch environment and the visible device count
(a pure function, so every Slurm binding is tested without GPUs).
"""

from __future__ import annotations

import os
import re
import socket
import zlib
from dataclasses import dataclass
from typing import Mapping

from bcrdist.distributed.hostlist import hostnames
from bcrdist.distributed.mpi import MPI_RANK_VARS
from bcrdist.errors import BcrdistError

METHOD_VAR = "BCRDIST_DIST_METHOD"
METHODS = ("torchrun", "slurm", "mpi", "single")


class LaunchError(BcrdistError):
    """The process world is inconsistent (e.g. several Slurm tasks allocated but not started by srun)."""


@dataclass(frozen=True)
class LaunchEnv:
    """Who this process is: `method` ∈ METHODS, global `rank` of `world_size`, `local_rank` on its node,
    and the rendezvous `master_addr:master_port` (empty/0 for one process)."""

    method: str
    rank: int
    world_size: int
    local_rank: int
    master_addr: str = ""
    master_port: int = 0
    local_world_size: int = 1


def slurm_port(job_id: str) -> int:
    """A rendezvous port derived from the job id: the same after a requeue, different across jobs."""
    return 20000 + zlib.crc32(job_id.encode()) % 20000


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise LaunchError(f"environment variable {name} is missing or not an integer") from None


def _torchrun(env: Mapping[str, str]) -> LaunchEnv:
    return LaunchEnv("torchrun", _int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK"),
                     env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500")),
                     int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))


def _slurm(env: Mapping[str, str]) -> LaunchEnv:
    world = _int(env, "SLURM_STEP_NUM_TASKS") if "SLURM_STEP_NUM_TASKS" in env else _int(env, "SLURM_NTASKS")
    addr = env.get("MASTER_ADDR")
    if not addr:
        hosts = hostnames(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""))
        addr = hosts[0] if hosts else "127.0.0.1"
    port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else slurm_port(env.get("SLURM_JOB_ID", "0"))
    # SLURM_STEP_TASKS_PER_NODE looks like "2(x3)" or "2,1": tasks on this node ≤ the first count
    per_node = re.match(r"\d+", env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")))
    local_world = int(per_node.group()) if per_node else 1
    return LaunchEnv("slurm", _int(env, "SLURM_PROCID"), world, _int(env, "SLURM_LOCALID"), addr, port, local_world)


def _mpi() -> LaunchEnv:
    try:
        from mpi4py import MPI
    except ImportError:
        raise LaunchError("an MPI launcher started this process but mpi4py is not installed: "
                          "pip install 'bcrdist[mpi]' (see docs/slurm.md for the site's MPI)") from None

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node.Free()
    if rank == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        root = (os.environ.get("MASTER_ADDR") or socket.gethostname(), int(os.environ.get("MASTER_PORT", port)))
    else:
        root = None
    addr, port = comm.bcast(root, root=0)
    return LaunchEnv("mpi", rank, size, local_rank, addr, port, local_size)


def detect_environment(env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Detect the launcher: torchrun > srun tasks > mpiexec > one process (or BCRDIST_DIST_METHOD)."""
    env = os.environ if env is None else env
    forced = env.get(METHOD_VAR, "").strip().lower()
    if forced and forced not in METHODS:
        raise LaunchError(f"{METHOD_VAR}={forced!r}: expected one of {', '.join(METHODS)}")
    by_torchrun = "TORCHELASTIC_RUN_ID" in env or all(v in env for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if forced == "torchrun" or (not forced and by_torchrun):
        return _torchrun(env)
    in_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
    by_mpi = any(v in env for v in MPI_RANK_VARS)
    mpi_size = env.get("OMPI_COMM_WORLD_SIZE") or env.get("PMI_SIZE")
    if in_step and mpi_size and mpi_size != env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS")):
        in_step = False     # mpirun inside an allocation: ranks inherit its daemons' Slurm variables
    if forced == "slurm" or (not forced and "SLURM_PROCID" in env and in_step):
        return _slurm(env)
    if forced == "mpi" or (not forced and by_mpi):
        return _mpi()
    if not forced and "SLURM_JOB_ID" in env and not in_step and int(env.get("SLURM_NTASKS", "1")) > 1:
        raise LaunchError(f"this Slurm job has {env['SLURM_NTASKS']} tasks but the process was not started by "
                          "srun: run `srun python -m bcrdist ...` (or `srun torchrun ...`) in the batch script")
    return LaunchEnv("single", 0, 1, 0)


_SHARED_GPUS_ADVICE = ("give every task one GPU (`--gpus-per-task=1`, or `--gpu-bind=single:1`) or every task all "
                       "of the node's GPUs (`--gpus-per-node=N --gpu-bind=none`)")


def _own_slurm_task(env: LaunchEnv, environ: Mapping[str, str]) -> bool:
    """True when this process is itself a Slurm task (srun, or submitit's ranks), whose GPUs Slurm may have
    bound to it alone; torchrun's workers (TORCHELASTIC_RUN_ID) share their agent's GPUs."""
    if env.method == "slurm":
        return True
    return (env.method == "torchrun" and "TORCHELASTIC_RUN_ID" not in environ and "SLURM_PROCID" in environ
            and ("SLURM_STEP_ID" in environ or "SLURM_STEPID" in environ))


def _gpus_per_task(environ: Mapping[str, str]) -> bool:
    """Slurm gave each task GPUs of its own (`--gpus-per-task`, unless `--gpu-bind=none` undoes the binding)."""
    per_task = environ.get("SLURM_GPUS_PER_TASK") or "gpu" in environ.get("SLURM_TRES_PER_TASK", "")
    return bool(per_task) and "none" not in environ.get("SLURM_GPU_BIND", "")


def cuda_device_index(env: LaunchEnv, device_count: int, environ: Mapping[str, str] | None = None) -> int:
    """The CUDA device (an index into this process's visible devices) this rank trains on.

    `device_count` is `torch.cuda.device_count()`: the GPUs this process sees after Slurm's binding and
    CUDA_VISIBLE_DEVICES. The ranks of a node must never pick the same physical GPU:

    - one visible GPU, and this process is its own Slurm task: cuda:0. That is `--gpus-per-task=1`,
      `--gpu-bind=single:1` or `map_gpu`, or a site that sets CUDA_VISIBLE_DEVICES per task; every task
      sees its GPU as cuda:0.
    - the local rank is a visible index: cuda:LOCAL_RANK. That is torchrun, mpiexec, and srun with
      `--gpus-per-node` (each task sees all the node's GPUs). It is also safe when tasks see disjoint sets.
    - its own Slurm task with several GPUs of its own (`--gpus-per-task=K`): cuda:0, the first of them.
    - anything else (fewer visible GPUs than ranks sharing them, e.g. `--gpu-bind=closest` with more tasks
      than GPUs per socket) cannot be told apart from two ranks on one GPU: a LaunchError saying what to do.
    """
    environ = {} if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    if device_count < 1:
        raise LaunchError(f"rank {env.rank} (local rank {env.local_rank}) sees no GPU ({seen}): "
                          "request GPUs from the scheduler or set runtime.device: cpu")
    own_task = _own_slurm_task(env, environ)
    if device_count == 1 and own_task:
        return 0
    if env.local_rank < device_count:
        return env.local_rank
    if own_task and _gpus_per_task(environ):
        return 0
    raise LaunchError(f"local rank {env.local_rank} of {env.local_world_size} on this node has no GPU of its own: "
                      f"it sees {device_count} GPU(s) ({seen}) shared with other ranks; "
                      + ("start one process per GPU (torchrun --nproc-per-node = GPUs per node)"
                         if not own_task else _SHARED_GPUS_ADVICE))
