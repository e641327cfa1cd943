"""Optional MPI parallelism for the data tools (`generate`, `shard`, `verify`, `stats`).

Under `mpiexec`/`mpirun`/`srun` every rank processes its own share of the shards and the results are gathered
with mpi4py; `world()` is the one way to get the communicator (a `SerialComm` in a plain process). mpi4py is imported only when the environment says an MPI launcher started this process: merely
importing it initialises MPI, which in a plain process can hang, print PMI errors, or break DataLoader forks
(Lightning #20049, pytorch #13787). `BCRDIST_MPI=0` forces serial mode, `BCRDIST_MPI=1` forces MPI.
"""

from __future__ import annotations

import os
from typing import Any

MPI_RANK_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def launched_by_mpi(environ: dict[str, str] | None = None) -> bool:
    """True when an MPI launcher (MPICH/Intel PMI, Open MPI, PMIx) or a multi-task `srun` started us."""
    env = os.environ if environ is None else environ
    forced = env.get("BCRDIST_MPI", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if any(var in env for var in MPI_RANK_VARS):
        return True
    # srun exports the task count of its step; the batch shell only has the allocation's SLURM_NTASKS
    tasks = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))
    try:
        return int(tasks) > 1
    except ValueError:
        return False


class SerialComm:
    """The one-process stand-in with the subset of the mpi4py communicator API the tools use."""

    rank = 0
    size = 1

    def allgather(self, value: Any) -> list[Any]:
        return [value]

    def barrier(self) -> None:
        return None


def world():
    """`MPI.COMM_WORLD` when launched by MPI, else a `SerialComm` (never initialises MPI in a plain process)."""
    if not launched_by_mpi():
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        from bcrdist.errors import BcrdistError

        raise BcrdistError("an MPI launcher started this process but mpi4py is not installed: pip install "
                           "'bcrdist[mpi]' (docs/slurm.md: using the site's MPI)") from None

    check_srun_world(MPI.COMM_WORLD.Get_size())
    return MPI.COMM_WORLD


def check_srun_world(size: int, environ: dict[str, str] | None = None) -> None:
    """Fail clearly when srun started several tasks without an MPI plugin (`--mpi=none`, the default of many
    clusters): each task then sees a one-rank MPI world and would redo all the work into the same files."""
    from bcrdist.errors import BcrdistError

    env = os.environ if environ is None else environ
    tasks = env.get("SLURM_STEP_NUM_TASKS", "1")
    if size == 1 and tasks.isdigit() and int(tasks) > 1 and not any(v in env for v in MPI_RANK_VARS + ("PMI_FD",)):
        raise BcrdistError(f"srun started {tasks} tasks but MPI sees a one-rank world in each: launch with an MPI "
                           "plugin, e.g. `srun --mpi=pmi2` (see `srun --mpi=list`)")


def gather_or_raise(comm, result: Any, error: BaseException | None) -> list[Any]:
    """All-gather one result per rank; if any rank failed, raise on every rank.

    The failing rank raises its own error; the others raise the first failure's type (a `BcrdistError` or
    `ValueError` subclass, else RuntimeError) with its message, prefixed "rank R:" when there are several
    ranks. Every rank reaches the collective even after a local error, so a bad shard or sample on one rank
    cannot leave the others waiting forever in a later collective.
    """
    from bcrdist.errors import BcrdistError

    failure = None if error is None else (type(error), str(error) or type(error).__name__)
    gathered = comm.allgather((result, failure))
    if error is not None:
        raise error
    for rank, (_, failed) in enumerate(gathered):
        if failed is None:
            continue
        kind, message = failed
        kind = kind if isinstance(kind, type) and issubclass(kind, (BcrdistError, ValueError)) else RuntimeError
        raise kind(message if comm.size == 1 else f"rank {rank}: {message}")
    return [res for res, _ in gathered]
