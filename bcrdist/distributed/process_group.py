"""Process-group setup and the few collectives the trainer needs, valid for one process too.

`init_distributed()` detects the launcher (`bcrdist.distributed.launch_env`), initialises torch.distributed (nccl on
the GPU `cuda_device_index` picks for this rank's Slurm binding, gloo on CPU) and returns a `DistContext`.
Every collective helper here is a no-op for one process, so the training loop has one code path.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bcrdist.distributed.launch_env import LaunchEnv, LaunchError, cuda_device_index, detect_environment


@dataclass
class DistContext:
    """This process's place in the world and its device."""

    env: LaunchEnv
    device: torch.device
    backend: str = ""

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    @property
    def distributed(self) -> bool:
        return self.env.world_size > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place on a copy); the identity for one process."""
        t = t.detach().clone()
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_max(self, value: float) -> float:
        """Maximum of a float over ranks."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (a MAX all-reduce)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_object(self, obj, src: int = 0):
        """Rank `src`'s `obj` on every rank (decisions taken on rank 0 reach all ranks)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def broadcast_module(self, module: torch.nn.Module, src: int = 0) -> None:
        """Overwrite every rank's parameters and buffers with rank `src`'s."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=src)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Detect the launcher and initialise the process group.

    `device`: 'auto' (this rank's GPU if CUDA is available, else CPU), 'cpu' or 'cuda'.
    """
    env = detect_environment()
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise LaunchError("device 'cuda' requested but CUDA is not available")
        dev = torch.device("cuda", cuda_device_index(env, torch.cuda.device_count(), os.environ))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    ctx = DistContext(env, dev)
    if env.world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        os.environ["MASTER_ADDR"] = env.master_addr
        os.environ["MASTER_PORT"] = str(env.master_port)
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                                rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        ctx.backend = backend
    return ctx


def shutdown_distributed() -> None:
    """Destroy the process group; must run before MPI finalises (mpi4py finalises at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
