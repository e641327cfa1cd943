"""The sbatch scripts that ship with bcrdist (`bcrdist/launch/sbatch/*.sbatch`, package data; a checkout also
has them as `slurm/NAME.sbatch`, links to these), and `write_scripts`, which copies them into a folder for
`sbatch` (`bcrdist slurm-scripts --out DIR`).

The scripts hold no path of their own: they run `$BCRDIST_VENV`'s python, else the python on PATH, so they
work from an installed wheel. A file already in the folder is kept when it has the same bytes and refused
when it differs; a symbolic link there is refused and never written through.
"""

from __future__ import annotations

import errno
import os
import stat
from importlib import resources
from pathlib import Path

from bcrdist.errors import BcrdistError
from bcrdist.fileio import fsync_dir


class ScriptsError(BcrdistError):
    """The output folder is not a folder, or holds a different file or a link where a script goes."""


def packaged_scripts() -> dict[str, bytes]:
    """The packaged sbatch scripts, name → bytes, sorted by name."""
    folder = resources.files("bcrdist.launch").joinpath("sbatch")
    return {entry.name: entry.read_bytes() for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".sbatch")}


def _existing(path: Path) -> bytes | None:
    """The bytes of the regular file at `path`, None where nothing is; a link or anything else is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ScriptsError(f"{path}: is a symbolic link; nothing written (remove it, or choose another --out)") \
                from None
        raise
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ScriptsError(f"{path}: exists and is not a regular file; nothing written")
        return fh.read()


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` with `data`, durably; O_EXCL: a file or link that appeared meanwhile is never replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink()
        raise
    os.close(fd)


def write_scripts(out: str | Path) -> tuple[list[str], list[str]]:
    """Write every packaged script into the folder `out` (created if missing). Returns the names written and
    those already there with the same bytes; refuses, writing nothing, when a script's name is taken by a
    different file, a link or anything else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScriptsError(f"{out}: not a folder")
    scripts = packaged_scripts()
    differ = [name for name, data in scripts.items() if _existing(out / name) not in (None, data)]
    if differ:
        one = len(differ) == 1
        raise ScriptsError(f"{', '.join(str(out / n) for n in differ)}: {'exists' if one else 'exist'} and "
                           f"{'differs' if one else 'differ'} from bcrdist's; nothing overwritten (remove "
                           f"{'it' if one else 'them'}, or choose another --out)")
    out.mkdir(parents=True, exist_ok=True)
    written, same = [], []
    for name, data in scripts.items():
        if _existing(out / name) == data:
            same.append(name)
        else:
            _write_new(out / name, data)
            written.append(name)
    fsync_dir(out)
    return written, same
