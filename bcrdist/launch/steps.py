"""Pipeline steps as commands, shared by `bcrdist demo` and `bcrdist matrix`: one rule for how a bcrdist command
is launched here (a plain process, `torchrun` for training, `mpiexec` for generation), how it is shown, and how
it is run.

A `Step` is one bcrdist command: `args` are bcrdist's own arguments (what a ledger records and what a Slurm
job runs), `kind` its subcommand (`generate`, `stats`, `split`, `train`, `evaluate`, `baseline`: what decides
its launcher and its resources), `needs` the names of the steps whose outputs it reads, and `problem()` says
why its outputs are not complete yet (None once they validate; `bcrdist.launch.outputs`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

KINDS = ("generate", "stats", "split", "train", "evaluate", "baseline")


@dataclasses.dataclass
class Step:
    name: str
    kind: str
    args: list[str]
    output: Path
    problem: Callable[[], str | None]
    needs: tuple[str, ...] = ()


def tool(name: str, *module: str) -> list[str]:
    """`name` when the one on PATH belongs to this Python's environment, else the one next to this interpreter,
    else `python -m module...` (so a command printed is exactly the one run, by this interpreter)."""
    here = Path(sys.executable).absolute().parent
    exe = shutil.which(name)
    if exe and Path(exe).absolute().parent == here:
        return [name]
    if (here / name).is_file():
        return [str(here / name)]
    return [sys.executable, "-m", *module]


def mpiexec() -> str | None:
    """The mpiexec that starts this environment's MPI ranks (next to this interpreter first), when mpi4py is
    installed; None otherwise (generation then runs as one process)."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    here = Path(sys.executable).absolute().parent
    return shutil.which("mpiexec", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")


def launch_prefix(kind: str, nproc: int) -> list[str]:
    """How a step of `kind` starts with `nproc` processes on this machine: training under torchrun (standalone
    rendezvous), generation under mpiexec (when MPI is installed), everything else as one process."""
    bcrdist = tool("bcrdist", "bcrdist")
    if nproc > 1 and kind == "train":
        return tool("torchrun", "torch.distributed.run") + ["--standalone", f"--nproc-per-node={nproc}", "-m",
                                                            "bcrdist"]
    if nproc > 1 and kind == "generate" and (exe := mpiexec()):
        return [exe, "-n", str(nproc)] + bcrdist
    return bcrdist


def local_command(step: Step, nproc: int) -> list[str]:
    return launch_prefix(step.kind, nproc) + step.args


def shown(command: list[str]) -> str:
    """A command as a results file lists it: this environment's tools by name (`bcrdist`, `torchrun`, `mpiexec`)."""
    here = Path(sys.executable).absolute().parent
    return shlex.join([Path(a).name if Path(a).parent == here and Path(a).is_file() else a for a in command])


def run_command(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run one command in the foreground (its output goes to ours); its exit status."""
    return subprocess.run(command, env=env).returncode
