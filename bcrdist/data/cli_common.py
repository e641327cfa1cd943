"""Shared helpers of the data subcommands (`bcrdist shard | verify | merge | split | stats`)."""

from __future__ import annotations

import sys
from typing import Callable


def progress(comm, quiet: bool) -> Callable[[str], None]:
    """A logger for per-shard progress lines: flushed at once, prefixed with the rank under MPI."""
    if quiet:
        return lambda _: None
    prefix = f"[rank {comm.rank}/{comm.size}] " if comm.size > 1 else ""

    def log(message: str) -> None:
        print(prefix + message, flush=True)

    return log


def megabytes(value: str) -> int:
    """argparse type: a positive size in MiB → bytes."""
    size = float(value)
    if not size > 0:
        raise ValueError(f"size must be positive, got {value}")
    return int(size * (1 << 20))


def fail(problems: list[str]) -> int:
    """Print each problem on its own line to stderr; exit status 2."""
    for problem in problems:
        print(problem, file=sys.stderr)
    return 2
