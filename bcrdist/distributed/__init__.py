"""Launch-environment detection, GPU selection, Slurm hostlists and process groups."""

from bcrdist.distributed.hostlist import HostlistError, expand_hostlist, hostnames
from bcrdist.distributed.launch_env import LaunchEnv, LaunchError, cuda_device_index, detect_environment, slurm_port
from bcrdist.distributed.process_group import DistContext, init_distributed, shutdown_distributed

__all__ = ["LaunchEnv", "LaunchError", "detect_environment", "cuda_device_index", "slurm_port", "HostlistError",
           "expand_hostlist", "hostnames", "DistContext", "init_distributed", "shutdown_distributed"]
