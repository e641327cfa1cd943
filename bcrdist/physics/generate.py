"""Training-data generation: random scatterers → far fields → the original's `measure`/`coe` layout, sharded.

Every sample depends only on (seed, sample index) (`np.random.default_rng([seed, index])`), and each is solved on
its own, so the data set is byte-identical for any number of MPI ranks. Shard s (samples s·S … s·S + S − 1)
is written by rank s mod P; rank 0 writes the manifest once every rank is done. Re-running the same command
resumes: complete, checksum-verified shards are kept. An output directory that holds shards or a manifest made
with other settings is refused.

Datasets per sample (sample axis first in the files):
    measure        (Na, Na/2) float32   Re of F[(i + j) mod Na, (i − j) mod Na]
    measure_imag   (Na, Na/2) float32   Im of the same
    coe            (Na, Nr)   float32   η(ρ_i cos θ_j, ρ_i sin θ_j), θ_j = 2πj/Na, ρ_i = (i + ½)R/Nr
    eta            (n, n)     float32   the raster the solver saw, eta[i, j] = η(x_i, y_j)
    farfield       (Na, Na)   complex64 F[obs, src] = u_∞(θ_obs; θ_src)
    family         ()         int32     0 gaussian, 1 shapes, 2 shepp_logan
    num_primitives ()         int32     rows used in `primitives`
    primitives     (P, C)     float64   the scatterer's primitive table, zero-padded (see scatterers.Scatterer)
    iterations     ()         int32     most GMRES iterations over the solved right-hand sides
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import h5py
import numpy as np
import torch

from bcrdist import __version__
from bcrdist.config import to_dict
from bcrdist.data.format import MANIFEST_NAME, existing_shard, write_manifest, write_shard
from bcrdist.data.mpi import check_srun_world, launched_by_mpi
from bcrdist.errors import BcrdistError, ConfigError, DataError
from bcrdist.physics.layout import measure_from_far_field
from bcrdist.physics.scatterers import (BASE_COLUMNS, FAMILY_IDS, SHEPP_LOGAN_PRIMITIVES, Scatterer,
                                        sample_gaussian, sample_shapes, sample_shepp_logan)
from bcrdist.physics.solver import ConvergenceError, ScatteringSolver


def _check_range(name: str, bounds: tuple, *, low: float = 0.0, strict: bool = False) -> None:
    """A [lower, upper] range with lower ≤ upper and lower ≥ low (> low when strict)."""
    lo, hi = bounds
    if lo > hi:
        raise ConfigError(f"{name}: lower bound {lo} exceeds upper bound {hi}")
    if lo < low or (strict and lo <= low):
        raise ConfigError(f"{name}: values must be {'>' if strict else '≥'} {low}, got {list(bounds)}")


@dataclass
class GaussianFamily:
    """Sums of Gaussian bumps; widths are standard deviations as fractions of the box."""

    count: tuple[int, int] = (2, 5)
    amplitude: tuple[float, float] = (0.05, 0.25)
    width: tuple[float, float] = (0.03, 0.06)
    tail_sigmas: float = 4.0

    def validate(self) -> None:
        _check_range("count", self.count, low=1)
        _check_range("amplitude", self.amplitude)
        _check_range("width", self.width, strict=True)
        if not self.tail_sigmas > 0:
            raise ConfigError(f"tail_sigmas: must be > 0, got {self.tail_sigmas}")


@dataclass
class ShapesFamily:
    """Non-overlapping ellipses and polygons; sizes are circumradii as fractions of the box."""

    count: tuple[int, int] = (1, 4)
    contrast: tuple[float, float] = (0.1, 0.4)
    size: tuple[float, float] = (0.05, 0.15)
    polygon_fraction: float = 0.5
    vertices: tuple[int, int] = (3, 7)
    gap: float = 0.01

    def validate(self) -> None:
        _check_range("count", self.count, low=1)
        _check_range("contrast", self.contrast)
        _check_range("size", self.size, strict=True)
        _check_range("vertices", self.vertices, low=3)
        if not 0 <= self.polygon_fraction <= 1:
            raise ConfigError(f"polygon_fraction: must lie in [0, 1], got {self.polygon_fraction}")
        if self.gap < 0:
            raise ConfigError(f"gap: must be ≥ 0, got {self.gap}")


@dataclass
class SheppLoganFamily:
    """Jittered, randomly rotated Shepp–Logan-like phantoms; `contrast` is η of the outer shell."""

    contrast: tuple[float, float] = (0.1, 0.4)
    jitter: float = 0.05

    def validate(self) -> None:
        _check_range("contrast", self.contrast)
        if not 0 <= self.jitter < 0.5:
            raise ConfigError(f"jitter: must lie in [0, 0.5), got {self.jitter}")


@dataclass
class FamilyConfig:
    """Which family, its parameters, the support radius (fraction of box) and the raster supersampling."""

    name: Literal["gaussian", "shapes", "shepp_logan"] = "gaussian"
    support_radius: float = 0.45
    supersample: int = 8
    gaussian: GaussianFamily = field(default_factory=GaussianFamily)
    shapes: ShapesFamily = field(default_factory=ShapesFamily)
    shepp_logan: SheppLoganFamily = field(default_factory=SheppLoganFamily)

    def validate(self) -> None:
        if not 0 < self.support_radius <= 0.5:
            raise ConfigError(f"support_radius: must lie in (0, 0.5] (a fraction of box), got {self.support_radius}")
        if self.supersample < 1:
            raise ConfigError(f"supersample: must be ≥ 1, got {self.supersample}")
        g = self.gaussian
        if g.tail_sigmas * g.width[1] >= self.support_radius:
            raise ConfigError(f"gaussian.width: tail_sigmas·width ({g.tail_sigmas}·{g.width[1]}) must stay "
                              f"below support_radius {self.support_radius}")
        if self.shapes.size[1] >= self.support_radius:
            raise ConfigError(f"shapes.size: {self.shapes.size[1]} must stay below support_radius "
                              f"{self.support_radius}")


@dataclass
class SolverConfig:
    """GMRES stopping rule: relative residual `tol` per incident direction."""

    tol: float = 1e-8
    restart: int = 40
    max_iterations: int = 400

    def validate(self) -> None:
        if not 0 < self.tol < 1:
            raise ConfigError(f"tol: must lie in (0, 1), got {self.tol}")
        if self.restart < 1:
            raise ConfigError(f"restart: must be ≥ 1, got {self.restart}")
        if self.max_iterations < 1:
            raise ConfigError(f"max_iterations: must be ≥ 1, got {self.max_iterations}")


@dataclass
class DataConfig:
    """A generated data set: grid, wavenumber k = k_over_pi·π, angles, polar target, family, size, seed."""

    n: int = 64
    box: float = 1.0
    k_over_pi: float = 8.0
    Na: int = 64
    Nr: int = 16
    polar_radius: float = 0.5
    samples: int = 1024
    samples_per_shard: int = 256
    seed: int = 0
    family: FamilyConfig = field(default_factory=FamilyConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)

    def validate(self) -> None:
        if self.n < 8:
            raise ConfigError(f"n: must be ≥ 8, got {self.n}")
        for key in ("box", "k_over_pi", "polar_radius"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.Na < 4 or self.Na % 4:
            raise ConfigError(f"Na: must be a positive multiple of 4 (measure has Na/2 half-offsets, which the "
                              f"antipodal preprocessing halves again), got {self.Na}")
        if self.Nr < 1:
            raise ConfigError(f"Nr: must be ≥ 1, got {self.Nr}")
        if self.samples < 1 or self.samples_per_shard < 1:
            raise ConfigError(f"samples, samples_per_shard: must be ≥ 1, got {self.samples}, "
                              f"{self.samples_per_shard}")
        if self.seed < 0:
            raise ConfigError(f"seed: must be ≥ 0, got {self.seed}")

    @property
    def k(self) -> float:
        return self.k_over_pi * math.pi

    def sha256(self) -> str:
        """Hash of the settings that determine the data (canonical JSON of the whole config)."""
        return hashlib.sha256(json.dumps(to_dict(self), sort_keys=True).encode()).hexdigest()


class SampleMaker:
    """Builds the arrays of one sample from its index (or from a given scatterer)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        angles = 2 * np.pi * np.arange(cfg.Na) / cfg.Na
        s = cfg.solver
        self.solver = ScatteringSolver(cfg.n, cfg.k, angles, angles, box=cfg.box, tol=s.tol, restart=s.restart,
                                       max_iterations=s.max_iterations)
        fam = cfg.family
        self.max_primitives = {"gaussian": fam.gaussian.count[1], "shapes": fam.shapes.count[1],
                               "shepp_logan": SHEPP_LOGAN_PRIMITIVES}[fam.name]
        self.columns = BASE_COLUMNS + (2 * fam.shapes.vertices[1] if fam.name == "shapes" else 0)

    def scatterer(self, index: int) -> Scatterer:
        """The random scatterer of sample `index` (depends on (seed, index) only)."""
        cfg, fam = self.cfg, self.cfg.family
        rng = np.random.default_rng([cfg.seed, index])
        support = fam.support_radius * cfg.box
        if fam.name == "gaussian":
            g = fam.gaussian
            return sample_gaussian(rng, count=g.count, amplitude=g.amplitude,
                                   width=(g.width[0] * cfg.box, g.width[1] * cfg.box), tail_sigmas=g.tail_sigmas,
                                   support_radius=support)
        if fam.name == "shapes":
            p = fam.shapes
            return sample_shapes(rng, count=p.count, contrast=p.contrast,
                                 size=(p.size[0] * cfg.box, p.size[1] * cfg.box), polygon_fraction=p.polygon_fraction,
                                 vertices=p.vertices, gap=p.gap * cfg.box, support_radius=support)
        p = fam.shepp_logan
        return sample_shepp_logan(rng, contrast=p.contrast, jitter=p.jitter, support_radius=support)

    def arrays(self, scatterer: Scatterer) -> dict[str, np.ndarray]:
        """The per-sample arrays (no sample axis) listed in the module docstring."""
        cfg = self.cfg
        eta = scatterer.raster(cfg.n, cfg.box, cfg.family.supersample)
        farfield = self.solver.far_field(eta).T
        measure = measure_from_far_field(farfield)
        return {
            "measure": measure.real.astype(np.float32),
            "measure_imag": measure.imag.astype(np.float32),
            "coe": scatterer.polar(cfg.Na, cfg.Nr, cfg.polar_radius * cfg.box).astype(np.float32),
            "eta": eta.astype(np.float32),
            "farfield": farfield.astype(np.complex64),
            "family": np.int32(FAMILY_IDS[scatterer.family]),
            "num_primitives": np.int32(len(scatterer.primitives)),
            "primitives": scatterer.padded(self.max_primitives, self.columns),
            "iterations": np.int32(self.solver.last_iterations.max(initial=0)),
        }

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        try:
            return self.arrays(self.scatterer(index))
        except ConvergenceError as exc:
            raise ConvergenceError(f"sample {index}: {exc}; raise solver.max_iterations or lower the contrast") \
                from None


def _shard_ranges(cfg: DataConfig) -> list[tuple[int, int]]:
    """(first_index, num_samples) of every shard."""
    per = cfg.samples_per_shard
    return [(first, min(per, cfg.samples - first)) for first in range(0, cfg.samples, per)]


def check_output(out_dir: pathlib.Path, config_sha: str) -> None:
    """Refuse an output directory whose manifest or shards were made with other settings (DataError)."""
    manifest = out_dir / MANIFEST_NAME
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text()).get("provenance", {}).get("config_sha256")
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


def _mpi_comm():
    """`MPI.COMM_WORLD` when an MPI launcher started this process, else None (MPI is not initialised)."""
    if not launched_by_mpi():
        return None
    from mpi4py import MPI

    check_srun_world(MPI.COMM_WORLD.Get_size())
    return MPI.COMM_WORLD


class _Progress:
    """Rank 0's progress over its own samples: tqdm on a terminal, else a line every 30 s and per shard."""

    def __init__(self, total: int, ranks: int, enabled: bool):
        self.total, self.done, self.skipped, self.enabled = total, 0, 0, enabled
        self.start = self.last = time.monotonic()
        self.bar = None
        self.label = "rank 0" + (f" (1/{ranks} of the work)" if ranks > 1 else "")
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"generate, {self.label}", unit="sample")

    def update(self, count: int = 1, *, shard_done: bool = False, skipped: bool = False) -> None:
        self.done += count
        self.skipped += count if skipped else 0
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.monotonic()
        if shard_done or now - self.last >= 30:
            self.last = now
            rate = (now - self.start) / max(self.done - self.skipped, 1)
            eta = rate * (self.total - self.done)
            print(f"generate: {self.label}: {self.done}/{self.total} samples, {rate:.3f} s/sample, "
                  f"{eta / 60:.1f} min left", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _agree(comm, error: BaseException | None) -> None:
    """Collective: if any rank failed, raise on every rank (the failing rank its own error, the others the
    first failure's type and message), so that no rank is left waiting in a later collective."""
    if comm is None:
        if error is not None:
            raise error
        return
    failures = [m for m in comm.allgather(None if error is None else (type(error), str(error))) if m is not None]
    if error is not None:
        raise error
    if failures:
        kind, text = failures[0]
        raise (kind if issubclass(kind, (BcrdistError, ValueError)) else RuntimeError)(text)


def _write_shards(cfg: DataConfig, out_dir: pathlib.Path, shards: list[int], attrs: dict,
                  bar: _Progress) -> tuple[list[dict], int]:
    """Write (or keep, when complete) the given shards; returns (shard infos, samples written)."""
    ranges = _shard_ranges(cfg)
    maker = SampleMaker(cfg)
    infos, written = [], 0
    for s in shards:
        first, count = ranges[s]
        info = existing_shard(out_dir, s, first, count)
        if info is None:
            samples = []
            for index in range(first, first + count):
                samples.append(maker(index))
                bar.update()
            arrays = {key: np.stack([smp[key] for smp in samples]) for key in samples[0]}
            info = write_shard(out_dir, s, first, arrays, attrs)
            written += count
            bar.update(0, shard_done=True)
        else:
            bar.update(count, shard_done=True, skipped=True)
        infos.append(info)
    return infos, written


def generate(cfg: DataConfig, out_dir, *, threads: int = 1, progress: bool = True) -> dict:
    """Generate (or resume) the data set of `cfg` in `out_dir`; collective under MPI.

    `threads`: torch threads per process during the run. Parallelism is meant to come from MPI ranks (one
    per core): an iteration's work is a few milliseconds, and on a busy node spinning thread pools cost more
    than they give (13× slower measured on a shared 2-core machine), while ranks scale without contention.

    Returns {"samples", "shards", "written", "seconds", "ranks"} ("written": samples computed by this run,
    all ranks; the others were in complete shards already). Raises DataError for a directory made with other
    settings and ConvergenceError (naming the sample) when GMRES fails; under MPI every rank raises.
    """
    comm = _mpi_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    out_dir = pathlib.Path(out_dir)
    config_sha = cfg.sha256()
    start = time.monotonic()

    error = None
    if rank == 0:
        try:
            check_output(out_dir, config_sha)
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            error = DataError(f"{out_dir}: {exc}")
        except Exception as exc:  # noqa: BLE001 (every rank must hear of it, see _agree)
            error = exc
    _agree(comm, error)

    ranges = _shard_ranges(cfg)
    mine = list(range(rank, len(ranges), size))
    attrs = {"config_sha256": config_sha, "generator": f"bcrdist {__version__} generate"}
    bar = _Progress(sum(ranges[s][1] for s in mine), size, progress and rank == 0)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    infos, written, error = [], 0, None
    try:
        infos, written = _write_shards(cfg, out_dir, mine, attrs, bar)
    except OSError as exc:
        error = DataError(f"{out_dir}: {exc}")
    except Exception as exc:  # noqa: BLE001
        error = exc
    finally:
        bar.close()
        torch.set_num_threads(saved_threads)
    _agree(comm, error)

    all_infos = [i for part in (comm.allgather(infos) if comm is not None else [infos]) for i in part]
    total_written = sum(comm.allgather(written)) if comm is not None else written
    if rank == 0:
        try:
            write_manifest(out_dir, all_infos, provenance={
                "tool": "bcrdist generate", "config": to_dict(cfg), "config_sha256": config_sha,
                "conventions": "farfield[obs, src] = u_inf(theta_obs; theta_src), theta_j = 2*pi*j/Na; "
                               "measure[i, j] = farfield[(i + j) % Na, (i - j) % Na]; "
                               "coe[j, i] = eta(rho_i cos theta_j, rho_i sin theta_j), rho_i = (i + 1/2) R / Nr",
            })
        except OSError as exc:
            error = DataError(f"{out_dir}: {exc}")
        except Exception as exc:  # noqa: BLE001
            error = exc
    _agree(comm, error)
    if comm is not None:
        comm.Barrier()
    return {"samples": cfg.samples, "shards": len(ranges), "written": total_written,
            "seconds": time.monotonic() - start, "ranks": size}


__all__ = ["DataConfig", "FamilyConfig", "GaussianFamily", "ShapesFamily", "SheppLoganFamily", "SolverConfig",
           "SampleMaker", "check_output", "generate"]
