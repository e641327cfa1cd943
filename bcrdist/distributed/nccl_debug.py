"""NCCL's asynchronous error handling and flight recorder, on for every NCCL process group bcrdist starts.

`nccl_debug_env(trace_dir)` is the environment torch's ProcessGroupNCCL reads when it is created: a rank whose
collective exceeds the timeout is torn down by NCCL's watchdog (asynchronous error handling 3) instead of
waiting forever, and each rank first writes its last 2000 collectives (the flight recorder) to
`trace_dir/rank_<rank>`. `use_nccl_debug_env` sets them where the site has not set them itself.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

TRACE_PREFIX = "rank_"
# other names torch reads for the same setting: a site that set one of them keeps its value
ALIASES = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": ("NCCL_ASYNC_ERROR_HANDLING",),
    "TORCH_NCCL_TRACE_BUFFER_SIZE": ("TORCH_FR_BUFFER_SIZE",),
    "TORCH_FR_DUMP_TEMP_FILE": ("TORCH_NCCL_DEBUG_INFO_TEMP_FILE",),
    "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": ("TORCH_FR_DUMP_TEMP_FILE",),
}


def nccl_debug_env(trace_dir: str | os.PathLike) -> dict[str, str]:
    """The variables: asynchronous error handling 3 (tear the process down), a flight-recorder buffer of 2000
    entries dumped on a timeout, to the file prefix `trace_dir/rank_` under its current name
    (TORCH_FR_DUMP_TEMP_FILE) and the name older torch releases read (TORCH_NCCL_DEBUG_INFO_TEMP_FILE)."""
    prefix = str(Path(trace_dir) / TRACE_PREFIX)
    return {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
            "TORCH_NCCL_DUMP_ON_TIMEOUT": "1", "TORCH_FR_DUMP_TEMP_FILE": prefix,
            "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": prefix}


def use_nccl_debug_env(trace_dir: str | os.PathLike, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set `nccl_debug_env(trace_dir)` in `environ` (default `os.environ`) except the settings the site gave,
    under any of their names (`ALIASES`); returns what it set."""
    environ = os.environ if environ is None else environ
    site = set(environ)
    chosen = {name: value for name, value in nccl_debug_env(trace_dir).items()
              if name not in site and not site.intersection(ALIASES.get(name, ()))}
    environ.update(chosen)
    return chosen
