"""Launch-environment detection, GPU selection, Slurm hostlists and process groups."""

from bcrdist.distributed.hostlist import HostlistError, expand_hostlist, hostnames
from bcrdist.distributed.launch_env import LaunchEnv, LaunchError, cuda_device_index, detect_environment, slurm_port

__all__ = ["LaunchEnv", "LaunchError", "detect_environment", "cuda_device_index", "slurm_port", "HostlistError",
           "expand_hostlist", "hostnames", "DistContext", "init_distributed", "shutdown_distributed"]


def __getattr__(name: str):
    """The process group's names, imported when first used: a command that needs only `distributed.mpi` (`bcrdist
    stats`, `split`, `verify`) does not import torch (about 1 s of its start)."""
    if name in ("DistContext", "init_distributed", "shutdown_distributed"):
        from bcrdist.distributed import process_group
        return getattr(process_group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
