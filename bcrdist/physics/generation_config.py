"""The settings of a generated data set (`bcrdist generate --config`, configs/data/*.yaml): grid,
wavenumber, angles, polar target, scatterer family and solver tolerances. `GenerationConfig.sha256()` names
the data they determine."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Literal

from bcrdist.config import to_dict
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
class GenerationConfig:
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
