"""Atomic, durable file writes and file hashing, for every file bcrdist writes (shards, manifests, splits,
checkpoints, results).

A file is written under a hidden temporary name in its own directory, flushed to disk and renamed over the
final name, so an interrupted writer never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
from typing import Any, BinaryIO, Callable

PathLike = str | os.PathLike


def fsync_dir(directory: PathLike) -> None:
    """Make a rename inside `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: pathlib.Path) -> None:
    """Flush a closed file's data to disk (before renaming it into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(final: pathlib.Path) -> pathlib.Path:
    """A hidden temporary name next to `final` (same directory, so the rename is atomic)."""
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def remove_stale_temps(final: pathlib.Path) -> None:
    """Delete temporaries of `final` left by an interrupted earlier run."""
    for stale in pathlib.Path(final).parent.glob(f".{pathlib.Path(final).name}.*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> pathlib.Path:
    """Call `write(fh)` on a temporary file in `path`'s directory, fsync it and rename it over `path`.

    Readers see the old file or the new one, never a part; the temporary is removed if `write` fails or
    the process is interrupted (a killed process leaves `.NAME.PID.tmp`, see `remove_stale_temps`). The file
    gets the usual mode (0666 less the umask), so a shared run directory stays readable by the group.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> pathlib.Path:
    """`atomic_write` of the bytes `data`."""
    return atomic_write(path, lambda fh: fh.write(data))


def to_json(obj: Any, indent: str = "") -> str:
    """JSON with one key per line, but lists of scalars (shapes, ranges, index lists) kept on one line."""
    inner = indent + "  "
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {to_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in obj):
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj, allow_nan=False)


def atomic_write_json(path: PathLike, obj: Any) -> pathlib.Path:
    """`atomic_write_bytes` of `obj` as JSON (`to_json`; NaN/inf are rejected: they are not JSON)."""
    return atomic_write_bytes(path, (to_json(obj) + "\n").encode())


def file_sha256(path: PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in `chunk_bytes` pieces."""
    digest = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(view)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def json_safe(obj):
    """Non-finite floats (e.g. a best error that never improved) → None, so results stay valid JSON."""
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
