"""Launch-environment detection and process groups."""

from bcrdist.distributed.launch_env import LaunchEnv, LaunchError, detect_environment, parse_nodelist, slurm_port
from bcrdist.distributed.process_group import DistContext, init_distributed, shutdown_distributed

__all__ = ["LaunchEnv", "LaunchError", "detect_environment", "parse_nodelist", "slurm_port", "DistContext",
           "init_distributed", "shutdown_distributed"]
