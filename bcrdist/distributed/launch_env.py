"""Launch-environment detection: torchrun, Slurm `srun` tasks, `mpiexec` (mpi4py), or one process.

`detect_environment()` reads only environment variables (mpi4py is imported only when MPI launched the
process) and returns a `LaunchEnv`; `BCRDIST_DIST_METHOD=torchrun|slurm|mpi|single` forces the method.
"""

from __future__ import annotations

import os
import re
import socket
import zlib
from dataclasses import dataclass
from typing import Mapping

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


def parse_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist: 'n[1-2],gpu[01-03,07],login' → ['n1', 'n2', 'gpu01', …, 'login']."""
    hosts: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?(?:,|$)", nodelist.strip()):
        prefix, ranges = m.group(1), m.group(2)
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(prefix + lo)
                continue
            width = len(lo)
            hosts += [f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    return hosts


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
    hosts = parse_nodelist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""))
    addr = env.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1")
    port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else slurm_port(env.get("SLURM_JOB_ID", "0"))
    # SLURM_STEP_TASKS_PER_NODE looks like "2(x3)" or "2,1": tasks on this node ≤ the first count
    per_node = re.match(r"\d+", env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")))
    local_world = int(per_node.group()) if per_node else 1
    return LaunchEnv("slurm", _int(env, "SLURM_PROCID"), world, _int(env, "SLURM_LOCALID"), addr, port, local_world)


def _mpi() -> LaunchEnv:
    from mpi4py import MPI

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
