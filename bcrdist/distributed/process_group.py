"""Process-group setup and the few collectives the trainer needs, valid for one process too.

`init_distributed()` detects the launcher (`bcrdist.distributed.launch_env`), initialises torch.distributed (nccl on
the GPU `cuda_device_index` picks for this rank's Slurm binding, gloo on CPU) and returns a `DistContext`.
Every collective helper here is a no-op for one process, so the training loop has one code path.

The process group's timeout bounds every collective: `DistContext.set_timeout` changes it (the trainer allows
start-up longer than a training step). The rendezvous store is made here, so that each rank's heartbeat
(`bcrdist.distributed.heartbeat`) can name the rank that stopped answering when a collective fails
(`DistContext.silence`); an NCCL process group also gets NCCL's error handling and flight recorder
(`bcrdist.distributed.nccl_debug`).
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
# imported before any process group exists: its functions take the default group as a default argument
# (`group=group.WORLD`, evaluated at import), so importing it later (DDP's constructor does, through
# torch._dynamo) keeps the group, its gloo threads and its pending work alive after `shutdown_distributed`,
# into the interpreter's exit (where a gloo thread freeing a tensor needs the GIL: std::terminate, exit 134)
import torch.distributed.nn  # noqa: F401

from bcrdist.distributed.heartbeat import Heartbeat, Silence
from bcrdist.distributed.launch_env import LaunchEnv, LaunchError, cuda_device_index, detect_environment
from bcrdist.distributed.nccl_debug import use_nccl_debug_env

# the heartbeat of this process's process group (one per process, as the process group), ended by
# `shutdown_distributed`
_heartbeat: Heartbeat | None = None


@dataclass
class DistContext:
    """This process's place in the world and its device."""

    env: LaunchEnv
    device: torch.device
    backend: str = ""
    timeout_s: float = 0.0
    heartbeat: Heartbeat | None = None
    nccl_trace_dir: Path | None = None

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

    def broadcast_buffers(self, module: torch.nn.Module, src: int = 0) -> None:
        """Overwrite every rank's persistent buffers (those of the state dict: BatchNorm's running statistics)
        with rank `src`'s, as DDP does before each training forward; non-persistent buffers are rebuilt alike
        on every rank and stay."""
        if not self.distributed:
            return
        buffers = dict(module.named_buffers())
        with torch.no_grad():
            for name, t in module.state_dict(keep_vars=True).items():
                if name in buffers:
                    dist.broadcast(t.data, src=src)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def set_timeout(self, timeout_s: float) -> None:
        """Bound every later collective by `timeout_s` seconds (no-op for one process or an unchanged value)."""
        if not self.distributed or timeout_s == self.timeout_s:
            return
        dist.distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=timeout_s))
        self.timeout_s = timeout_s
        if self.heartbeat is not None:
            self.heartbeat.set_timeout(timeout_s)

    def silence(self) -> Silence | None:
        """After a failed collective: the ranks that stopped answering, or None (every rank is alive, or one
        process)."""
        return self.heartbeat.silence() if self.heartbeat is not None else None


def init_distributed(device: str = "auto", timeout_s: float = 600.0,
                     nccl_trace_dir: str | os.PathLike | None = None) -> DistContext:
    """Detect the launcher and initialise the process group, whose collectives time out after `timeout_s`
    seconds (rendezvous included), and start this rank's heartbeat.

    `device`: 'auto' (this rank's GPU if CUDA is available, else CPU), 'cpu' or 'cuda'. `nccl_trace_dir`: for
    an NCCL process group, NCCL's error handling and flight recorder dumping into this folder
    (`nccl_debug.use_nccl_debug_env`; the site's own settings win), made when the dumps go there (then it is
    the context's `nccl_trace_dir`).
    """
    global _heartbeat
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
        if backend == "nccl" and nccl_trace_dir is not None:
            if "TORCH_FR_DUMP_TEMP_FILE" in use_nccl_debug_env(nccl_trace_dir):
                ctx.nccl_trace_dir = Path(nccl_trace_dir)
                ctx.nccl_trace_dir.mkdir(parents=True, exist_ok=True)
        os.environ["MASTER_ADDR"] = env.master_addr
        os.environ["MASTER_PORT"] = str(env.master_port)
        timeout = datetime.timedelta(seconds=timeout_s)
        # the store init_process_group makes from tcp://ADDR:PORT (a server in rank 0's process, or in
        # torchrun's agent on the first node), made here so that the heartbeats can use it; the process group
        # gets it under the prefix init_process_group gives it
        store, _, _ = next(dist.rendezvous(f"tcp://{env.master_addr}:{env.master_port}", env.rank,
                                           env.world_size, timeout=timeout))
        store.set_timeout(timeout)
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=env.rank,
                                world_size=env.world_size, timeout=timeout, **kwargs)
        ctx.backend, ctx.timeout_s = backend, timeout_s
        ctx.heartbeat = _heartbeat = Heartbeat(store, env.master_addr, env.master_port, env.rank, env.world_size,
                                               timeout_s)
    return ctx


def shutdown_distributed() -> None:
    """End the heartbeat and destroy the process group; must run before MPI finalises (mpi4py finalises at
    exit). It returns promptly also after a peer stopped answering: gloo's destroy waits for no peer, and a
    heartbeat stuck on a silent store is left to the interpreter's exit (a daemon thread).

    The group's threads end here, not at the interpreter's exit, only when nothing else holds the group: the
    caller drops what does (a DDP wrapper: `Trainer.close`) before calling this."""
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
    if dist.is_available() and dist.is_initialized():
        # a DDP wrapper its owner dropped can still sit in a reference cycle, holding the group: collected now
        gc.collect()
        dist.destroy_process_group()
