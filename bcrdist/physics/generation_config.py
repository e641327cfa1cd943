"""The settings of a generated data set (`bcrdist generate --config`, configs/data/*.yaml): grid,
wavenumber, angles, polar target, scatterer family and solver tolerances. `GenerationConfig.sha256()` names
the data they determine. Each key's meaning is declared with its field (docs/configuration.md tables them)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Literal

from bcrdist.config import section, setting, to_dict
from bcrdist.errors import ConfigError


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

    count: tuple[int, int] = setting((2, 5), help="[min, max] number of bumps (drawn per sample)")
    amplitude: tuple[float, float] = setting((0.05, 0.25), help="[min, max] peak value a of a bump")
    width: tuple[float, float] = setting((0.03, 0.06), help="[min, max] standard deviation σ of a bump, a "
                                         "fraction of the box")
    tail_sigmas: float = setting(4.0, help="bump centres lie at least tail_sigmas·σ inside the support disk (the "
                                 "cut there is a jump ≤ a·e^{−τ²/2}: 3·10⁻⁴·a at τ = 4)")

    def validate(self) -> None:
        _check_range("count", self.count, low=1)
        _check_range("amplitude", self.amplitude)
        _check_range("width", self.width, strict=True)
        if not self.tail_sigmas > 0:
            raise ConfigError(f"tail_sigmas: must be > 0, got {self.tail_sigmas}")


@dataclass
class ShapesFamily:
    """Non-overlapping ellipses and polygons; sizes are circumradii as fractions of the box."""

    count: tuple[int, int] = setting((1, 4), help="[min, max] number of shapes (a crowded draw may place fewer: "
                                     "50 tries per shape)")
    contrast: tuple[float, float] = setting((0.1, 0.4), help="[min, max] η inside a shape")
    size: tuple[float, float] = setting((0.05, 0.15), help="[min, max] circumradius, a fraction of the box")
    polygon_fraction: float = setting(0.5, help="probability that a shape is a star-shaped polygon rather than an "
                                      "ellipse")
    vertices: tuple[int, int] = setting((3, 7), help="[min, max] vertices of a polygon")
    gap: float = setting(0.01, help="least distance between the circumscribed disks of two shapes, a fraction "
                         "of the box")

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

    contrast: tuple[float, float] = setting((0.1, 0.4), help="[min, max] η of the outer shell")
    jitter: float = setting(0.05, help="random change of the ellipses: semi-axes × (1 ± jitter), centres ± "
                            "jitter/2, angles ± jitter·45°")

    def validate(self) -> None:
        _check_range("contrast", self.contrast)
        if not 0 <= self.jitter < 0.5:
            raise ConfigError(f"jitter: must lie in [0, 0.5), got {self.jitter}")


@dataclass
class FamilyConfig:
    """Which family, its parameters, the support radius (fraction of box) and the raster supersampling."""

    name: Literal["gaussian", "shapes", "shepp_logan"] = setting("gaussian", help="the family every sample is "
                                                                 "drawn from (its section below)")
    support_radius: float = setting(0.45, help="η = 0 outside the disk |x| ≤ support_radius·box, in (0, 0.5]")
    supersample: int = setting(8, help="piecewise-constant families are rasterised by cell averages over "
                               "supersample² points (area-fraction anti-aliasing)")
    gaussian: GaussianFamily = section(GaussianFamily, help="`gaussian`: sums of Gaussian bumps "
                                       "a·e^{−|x−c|²/(2σ²)}, rasterised by point values")
    shapes: ShapesFamily = section(ShapesFamily, help="`shapes`: non-overlapping ellipses and star-shaped polygons "
                                   "(placed by rejection sampling with a gap)")
    shepp_logan: SheppLoganFamily = section(SheppLoganFamily, help="`shepp_logan`: a jittered, randomly rotated "
                                            "Shepp–Logan-like phantom scaled to the support disk, clipped at 0")

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

    tol: float = setting(1e-8, help="GMRES stops when every incident direction's relative residual is below this")
    restart: int = setting(40, help="GMRES restart length (Krylov vectors kept)")
    max_iterations: int = setting(400, help="iterations after which a sample fails with ConvergenceError (naming "
                                  "the sample)")

    def validate(self) -> None:
        if not 0 < self.tol < 1:
            raise ConfigError(f"tol: must lie in (0, 1), got {self.tol}")
        if self.restart < 1:
            raise ConfigError(f"restart: must be ≥ 1, got {self.restart}")
        if self.max_iterations < 1:
            raise ConfigError(f"max_iterations: must be ≥ 1, got {self.max_iterations}")


@dataclass
class GenerationConfig:
    """A generated data set: grid, wavenumber k = k_over_pi·π, angles, polar target, family, size, seed."""

    n: int = setting(64, help="cells across the box: η is sampled at the centres of an n×n grid on "
                     "[−box/2, box/2]² (≥ 8)")
    box: float = setting(1.0, help="side of the square box; lengths given as fractions are fractions of it")
    k_over_pi: float = setting(8.0, help="wavenumber k = k_over_pi·π")
    Na: int = setting(64, help="incident directions = receivers θ_j = 2πj/Na; a multiple of 4 (measure has Na/2 "
                      "half-offsets, which the antipodal preprocessing halves again)")
    Nr: int = setting(16, help="radii of the polar target `coe` (Na, Nr): ρ_i = (i + ½)·R/Nr")
    polar_radius: float = setting(0.5, help="radius R of the polar target, a fraction of the box")
    samples: int = setting(1024, help="samples in the data set")
    samples_per_shard: int = setting(256, help="samples per shard file (shard s is written by rank s mod P)")
    seed: int = setting(0, help="sample i depends only on (seed, i), so the data are the same for any number of "
                        "ranks")
    family: FamilyConfig = section(FamilyConfig, help="the scatterer family: which one, its parameters, the "
                                   "support radius and the raster supersampling")
    solver: SolverConfig = section(SolverConfig, help="the GMRES stopping rule of the Lippmann–Schwinger solver")

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
