"""The data-generation job (`bcrdist generate`): samples of `bcrdist.physics.sampling` written as a sharded
data set, in parallel under MPI.

Every sample depends only on (seed, sample index) (`np.random.default_rng([seed, index])`), and each is solved on
its own, so the data set is byte-identical for any number of MPI ranks. Shard s (samples s·S … s·S + S − 1)
is written by rank s mod P; rank 0 writes the manifest once every rank is done. Re-running the same command
resumes: complete, checksum-verified shards are kept. An output directory that holds shards or a manifest made
with other settings is refused. A full disk or an I/O error stops every rank with one line naming the file;
the shards completed before stay, and the same command resumes once there is space.
The arrays per sample are listed in `bcrdist.physics.sampling`; the manifest's `grid` record
(`bcrdist.physics.layout.grid_info_from_config`) says the angle grid and the target's kind and pixels, its
`discretisation` record (`bcrdist.data.discretisation`) the far fields' estimated discretisation error. A rerun
keeps the record it finds instead of re-computing it, unless asked for another number of samples.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import h5py
import numpy as np
import torch

from bcrdist import __version__
from bcrdist.config import to_dict
from bcrdist.data.discretisation import DEFAULT_SAMPLES, RECORD_KEY, check_sample_count, compute_record
from bcrdist.data.format import MANIFEST_NAME, existing_shard, write_manifest, write_shard
from bcrdist.distributed.launch_env import cuda_device_index, detect_environment
from bcrdist.distributed.mpi import gather_or_raise, world
from bcrdist.errors import DataError
from bcrdist.fileio import os_message
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.layout import grid_info_from_config
from bcrdist.physics.sampling import SampleMaker
from bcrdist.progress import Progress


def _shard_ranges(cfg: GenerationConfig) -> list[tuple[int, int]]:
    """(first_index, num_samples) of every shard."""
    per = cfg.samples_per_shard
    return [(first, min(per, cfg.samples - first)) for first in range(0, cfg.samples, per)]


def check_output(out_dir: pathlib.Path, config_sha: str) -> dict | None:
    """Refuse an output directory whose manifest or shards were made with other settings (DataError); returns
    the discretisation record of the manifest found there (None when there is none)."""
    manifest = out_dir / MANIFEST_NAME
    record = None
    if manifest.is_file():
        try:
            raw = json.loads(manifest.read_text())
            found = raw.get("provenance", {}).get("config_sha256")
            record = raw.get(RECORD_KEY)
        except (OSError, ValueError, AttributeError):
            found = None
        if found != config_sha:
            raise DataError(f"{manifest}: the directory holds a data set made with other settings "
                            f"(config sha256 {str(found)[:12]}…, this config {config_sha[:12]}…); "
                            f"choose another --out")
    for shard in sorted(out_dir.glob("shard-*.h5")):
        try:
            with h5py.File(shard, "r") as fh:
                found = fh.attrs.get("config_sha256")
        except OSError:
            continue  # unreadable: an interrupted write, rewritten below if it is in range
        if found is not None and str(found) != config_sha:
            raise DataError(f"{shard}: made with other settings (config sha256 {str(found)[:12]}…, this config "
                            f"{config_sha[:12]}…); choose another --out")
    return record if isinstance(record, dict) else None


def solver_device(device: str) -> str:
    """The torch device of this rank's solver: `cpu`, or for `cuda` the rank's own GPU (its local rank under
    mpiexec/srun/torchrun, `distributed.launch_env.cuda_device_index`)."""
    if device != "cuda":
        return device
    return f"cuda:{cuda_device_index(detect_environment(), torch.cuda.device_count(), os.environ)}"


def _write_shards(cfg: GenerationConfig, out_dir: pathlib.Path, shards: list[int], attrs: dict,
                  bar: Progress, device: str) -> tuple[list[dict], int, dict]:
    """Write (or keep, when complete) the given shards; returns (shard infos, samples written, the most GMRES
    iterations and the largest relative residual of the samples written: {"iterations", "residual"}).
    Samples are solved in runs of `solver.batch` from each shard's first sample, whatever rank writes it."""
    ranges = _shard_ranges(cfg)
    maker = SampleMaker(cfg, solver_device(device))
    batch = cfg.solver.batch
    infos, written, solves = [], 0, {"iterations": 0, "residual": 0.0}
    for s in shards:
        first, count = ranges[s]
        info = existing_shard(out_dir, s, first, count)
        if info is None:
            samples = []
            for start in range(first, first + count, batch):
                samples.extend(maker.many(start, min(batch, first + count - start)))
                bar.update(min(batch, first + count - start))
            arrays = {key: np.stack([smp[key] for smp in samples]) for key in samples[0]}
            solves["iterations"] = max(solves["iterations"], int(arrays["iterations"].max()))
            solves["residual"] = max(solves["residual"], float(arrays["residual"].max()))
            info = write_shard(out_dir, s, first, arrays, attrs)
            written += count
            bar.update(0, force=True)
        else:
            bar.update(count, force=True, skipped=True)
        infos.append(info)
    return infos, written, solves


def generate(cfg: GenerationConfig, out_dir, *, threads: int = 1, progress: bool = True,
             accuracy_samples: int | None = 0, device: str = "cpu") -> dict:
    """Generate (or resume) the data set of `cfg` in `out_dir`; collective under MPI.

    `device`: `cpu` or `cuda` (one GPU per rank, by local rank), where a `solver.backend: torch` solver runs.

    `accuracy_samples`: K ≥ 0 samples whose far fields are re-solved on a grid twice as fine (and single discs
    against the Mie series), recorded in the manifest (`bcrdist.data.discretisation`); a record already there
    for the same K is kept; 0: none computed (a record already there is kept); None (`bcrdist generate`'s
    default): the record already there, else 4.

    `threads`: torch threads per process during the run. Parallelism is meant to come from MPI ranks (one
    per core): an iteration's work is a few milliseconds, and on a busy node spinning thread pools cost more
    than they give (13× slower measured on a shared 2-core machine), while ranks scale without contention.

    Returns {"samples", "shards", "written", "seconds", "ranks", "max_iterations", "max_residual",
    "discretisation"} ("seconds": the generation's, not the discretisation estimate's, which its record
    holds; "discretisation": the manifest's record or None; "written":
    samples computed by this run, all ranks; the others were in complete shards already; the most GMRES
    iterations and the largest relative residual are those of the samples computed by this run, 0 if none). Raises DataError for a directory made with other
    settings and ConvergenceError (naming the sample) when GMRES fails; under MPI every rank raises.
    """
    if accuracy_samples is not None:
        check_sample_count(accuracy_samples, "accuracy_samples")
    comm = world()
    rank, size = comm.rank, comm.size
    out_dir = pathlib.Path(out_dir)
    config_sha = cfg.sha256()
    start = time.monotonic()

    error, found = None, None
    if rank == 0:
        try:
            found = check_output(out_dir, config_sha)
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            error = DataError(f"{out_dir}: {os_message(exc)}")
        except Exception as exc:  # noqa: BLE001 (every rank must hear of it, see gather_or_raise)
            error = exc
    found = gather_or_raise(comm, found, error)[0]

    ranges = _shard_ranges(cfg)
    mine = list(range(rank, len(ranges), size))
    attrs = {"config_sha256": config_sha, "generator": f"bcrdist {__version__} generate"}
    label = "generate, rank 0" + (f" (1/{size} of the work)" if size > 1 else "")
    bar = Progress(sum(ranges[s][1] for s in mine), label, unit="sample", enabled=progress and rank == 0,
                   every_s=30.0)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    infos, written, solves, error = [], 0, {"iterations": 0, "residual": 0.0}, None
    try:
        infos, written, solves = _write_shards(cfg, out_dir, mine, attrs, bar, device)
    except OSError as exc:
        error = DataError(f"{out_dir}: {os_message(exc)}")
    except Exception as exc:  # noqa: BLE001
        error = exc
    finally:
        bar.close()
        torch.set_num_threads(saved_threads)
    gather_or_raise(comm, None, error)

    # the record of an earlier run of this config is kept unless another K is asked for
    record, generated = found, time.monotonic()
    if accuracy_samples is None:
        accuracy_samples = DEFAULT_SAMPLES if found is None else 0
    if accuracy_samples and (found is None or found.get("requested") != accuracy_samples):
        torch.set_num_threads(threads)
        try:
            record = compute_record(cfg, accuracy_samples, comm=comm)
        finally:
            torch.set_num_threads(saved_threads)

    all_infos = [i for part in comm.allgather(infos) for i in part]
    total_written = sum(comm.allgather(written))
    all_solves = comm.allgather(solves)
    if rank == 0:
        try:
            grid = grid_info_from_config(cfg)
            write_manifest(out_dir, all_infos, provenance={
                "tool": "bcrdist generate", "config": to_dict(cfg), "config_sha256": config_sha,
                "conventions": grid.conventions(),
            }, grid=grid.to_record(), discretisation=record)
        except OSError as exc:
            error = DataError(f"{out_dir}: {os_message(exc)}")
        except Exception as exc:  # noqa: BLE001
            error = exc
    gather_or_raise(comm, None, error)
    comm.barrier()
    return {"samples": cfg.samples, "shards": len(ranges), "written": total_written,
            "seconds": generated - start, "ranks": size,
            "max_iterations": max(part["iterations"] for part in all_solves),
            "max_residual": max(part["residual"] for part in all_solves), "discretisation": record}
