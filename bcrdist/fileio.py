"""Atomic, durable file writes and file hashing, for every file bcrdist writes (shards, manifests, splits,
checkpoints, results).

A file is written under a hidden temporary name in its own directory, flushed to disk and renamed over the
final name, so an interrupted writer never leaves a file that looks complete. A failed write (disk full, I/O
error) removes the temporary and raises an OSError whose message is one line naming the final file.

Every file bcrdist opens for writing is opened by `open_nofollow`, which never writes through a symbolic link
or into anything but a regular file: a temporary is created anew (whatever has its name is removed first), and
a log or lock file that is a link is refused with one line naming it, its target untouched. A rename over a
final name that is a link replaces the link itself, never its target.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import pathlib
import socket
import stat
import time
from typing import Any, BinaryIO, Callable

PathLike = str | os.PathLike


def one_line(text: Any) -> str:
    """`text` with every run of whitespace (HDF5 messages hold newlines) made one space."""
    return " ".join(str(text).split())


def os_message(exc: OSError) -> str:
    """One line for an OSError: "FILE: reason" when it names a file, else its reason (no "[Errno N]")."""
    if exc.filename is not None and exc.strerror:
        return one_line(f"{exc.filename}: {exc.strerror}")
    return one_line(exc.strerror or exc)


def write_error(path: PathLike, exc: OSError) -> OSError:
    """An OSError of the same kind (errno) as `exc` saying, in one line, that writing `path` failed."""
    reason = exc.strerror or one_line(exc) or type(exc).__name__
    return OSError(exc.errno, f"{path}: cannot write: {one_line(reason)}")


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


class NotFollowedError(OSError):
    """A write refused because its path is a symbolic link or not a regular file; nothing was written."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}" if self.filename is not None else super().__str__()


NOT_FOLLOWED = "is a symbolic link, not followed: nothing written"
NOT_REGULAR = "is not a regular file: nothing written"

# O_NOFOLLOW: a link at the final component fails the open (ELOOP) instead of being followed; O_NONBLOCK: a
# FIFO fails (no reader) or opens at once instead of blocking, and is then refused as not a regular file
_OPEN_FLAGS = {"new": os.O_RDWR | os.O_CREAT | os.O_EXCL, "append": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
               "update": os.O_RDWR | os.O_CREAT, "truncate": os.O_RDWR | os.O_CREAT}


def _refusal(path: PathLike) -> NotFollowedError | None:
    """The refusal of writing `path` when it is a link or not a regular file; None when it is neither or absent."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return NotFollowedError(errno.ELOOP, NOT_FOLLOWED, str(path))
    if not stat.S_ISREG(mode):
        return NotFollowedError(errno.EINVAL, NOT_REGULAR, str(path))
    return None


def check_write_target(path: PathLike) -> None:
    """Refuse now, as `open_nofollow` would when the file is opened later, a symbolic link or anything but a
    regular file at `path` (NotFollowedError); nothing there is fine."""
    refusal = _refusal(path)
    if refusal is not None:
        raise refusal


def open_nofollow(path: PathLike, mode: str) -> int:
    """A descriptor of the regular file `path` opened for writing, never through a symbolic link at its last
    component (the directories above may be links: a run directory on scratch space often is).

    `mode`: "new", a temporary of bcrdist's own: whatever has its name (a killed writer's leftover, a planted
    link) is removed and the file created exclusively; "append", a log, created when missing, every write at its
    end; "update", read and write without truncating (a lock file: it is truncated only once it is locked);
    "truncate", read and write from an empty file, truncated only once it is known to be a regular file.
    A link or anything but a regular file (a FIFO, a device) raises NotFollowedError, one line naming `path`;
    the file it points at is not opened, let alone changed.
    """
    if mode == "new":
        pathlib.Path(path).unlink(missing_ok=True)
    try:
        fd = os.open(path, _OPEN_FLAGS[mode] | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        # ELOOP: a link at the last component; ENXIO: a FIFO without a reader, or a socket
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            check_write_target(path)
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotFollowedError(errno.EINVAL, NOT_REGULAR, str(path))
        if mode == "truncate":
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


class LockBusy(Exception):
    """Another process holds the lock; `holder` is what it wrote into the file (pid, host, since when)."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


# lockf's answers of a file system that does not lock (some NFS mounts without lockd)
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def take_lock(path: PathLike) -> int | None:
    """Hold the exclusive lock (fcntl.lockf) on the file `path` without waiting, the file created when missing
    and never opened through a link (NotFollowedError); then write "pid P on HOST, since TIME" into it. Returns
    the descriptor (closing it, or the process ending in any way, releases the lock), None on a file system that
    does not lock; raises LockBusy when another process holds it."""
    fd = open_nofollow(path, "update")
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 400, 0).decode(errors="replace").strip()
        # closing our descriptor cannot release a lock this process does not hold
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise LockBusy(holder) from None
        if exc.errno in _NO_LOCKS:
            return None
        raise
    # never truncate before holding the lock: that would erase the holder's name
    info = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)
    os.fsync(fd)
    return fd


def lock_holder(path: PathLike) -> str | None:
    """Who holds the lock on `path` now (what `take_lock` wrote), or None when nobody does; creates and writes
    nothing. Ask from a process that does not hold it: closing a descriptor drops this process's own locks."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return os.pread(fd, 400, 0).decode(errors="replace").strip() or "holder unknown"
        return None
    finally:
        os.close(fd)
    return None


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
    def fill(tmp: pathlib.Path) -> None:
        with open(open_nofollow(tmp, "new"), "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())

    return _replace_atomically(path, fill)


def _replace_atomically(path: PathLike, fill: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """`fill(tmp)` writes the durable content of a temporary next to `path`, which then replaces `path`; an
    OSError becomes one line naming `path`, and the temporary never outlives a failure."""
    path = pathlib.Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fill(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_held(path: PathLike, write: Callable[["HeldErrorFile"], None]) -> pathlib.Path:
    """`atomic_write` for writers that must not meet an error half-way, HDF5 above all:
    `write(raw)` writes into a `HeldErrorFile` (e.g. `with h5py.File(raw, "w") as fh: …`) and may stop early
    once `raw.error` is set; the held error is raised afterwards, as one line naming `path`."""
    def fill(tmp: pathlib.Path) -> None:
        with HeldErrorFile(tmp) as raw:
            write(raw)
        if raw.error is not None:
            raise raw.error
        fsync_file(tmp)

    return _replace_atomically(path, fill)


def atomic_write_files(contents: dict[pathlib.Path, bytes]) -> list[pathlib.Path]:
    """Write several files so that a failure leaves all of the old ones: every temporary is written and
    fsynced first, and only then are they renamed into place (renames do not need space)."""
    temps: dict[pathlib.Path, pathlib.Path] = {}
    current = None
    try:
        for path, data in contents.items():
            current = pathlib.Path(path)
            current.parent.mkdir(parents=True, exist_ok=True)
            temps[current] = temp_path(current)
            # a new file, never one a symlink planted under the temporary's name points at
            with open(open_nofollow(temps[current], "new"), "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for path, tmp in temps.items():
            current = path
            os.replace(tmp, path)
    except OSError as exc:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise write_error(current, exc) from None
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    for directory in {p.parent for p in temps}:
        fsync_dir(directory)
    return list(temps)


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
    fd = os.open(path, os.O_RDONLY)
    try:
        return fd_sha256(fd, chunk_bytes)
    finally:
        os.close(fd)


def fd_sha256(fd: int, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of the whole file open as `fd` (positional reads: the descriptor's offset is untouched)."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(chunk_bytes))
    offset = 0
    while n := os.preadv(fd, [view], offset):
        digest.update(view[:n])
        offset += n
    return digest.hexdigest()


class HeldErrorFile(io.RawIOBase):
    """A file for h5py to write through (`h5py.File(HeldErrorFile(path), "w")`) that never fails under it.

    When HDF5 itself meets a write error (disk full, I/O error) it cannot close the file any more: every
    later flush fails again, h5py prints a traceback for each object it finalises and the process may end in
    a segmentation fault. Here the first OSError is held instead (`error`), HDF5 carries on undisturbed and
    closes the file, and the caller raises the error afterwards (see `atomic_write_held`). Writes after the
    error are kept in memory, so that what HDF5 reads back is what it wrote; the caller stops writing data
    as soon as `error` is set, which bounds that memory by one slab plus HDF5's caches. `path` is a temporary,
    created anew (`open_nofollow`'s "new"): h5py writes through this object, never by name, so no link is
    followed between a check and the open.
    """

    def __init__(self, path: PathLike):
        super().__init__()
        self.path = pathlib.Path(path)
        self.error: OSError | None = None
        self._fd = open_nofollow(self.path, "new")
        self._pos = 0
        self._held: list[tuple[int, bytes]] = []

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _size(self) -> int:
        return max([os.fstat(self._fd).st_size] + [off + len(data) for off, data in self._held])

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        self._pos = pos + (0 if whence == os.SEEK_SET else self._pos if whence == os.SEEK_CUR else self._size())
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        """Fill all of `buffer`: h5py's driver wants every byte it asks for, and HDF5 reads space it
        allocated but did not write yet as zeros (as its POSIX driver does)."""
        view = memoryview(buffer).cast("B")
        n = os.preadv(self._fd, [view], self._pos)
        view[n:] = bytes(len(view) - n)
        for off, data in self._held:
            lo, hi = max(off, self._pos), min(off + len(data), self._pos + len(view))
            if lo < hi:
                view[lo - self._pos:hi - self._pos] = data[lo - off:hi - off]
        self._pos += len(view)
        return len(view)

    def readall(self) -> bytes:
        raise io.UnsupportedOperation(f"{self.path}: read a given number of bytes")

    def write(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as exc:
                self.error = exc
        if self.error is not None:
            self._held.append((self._pos, bytes(view)))
        self._pos += len(view)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()


def json_safe(obj):
    """Non-finite floats (e.g. a best error that never improved) → None, so results stay valid JSON."""
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
