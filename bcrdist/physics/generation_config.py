"""The settings of a generated data set (`bcrdist generate --config`, configs/data/*.yaml): grid,
wavenumber, angles, layout and target, scatterer family and solver tolerances. `GenerationConfig.sha256()` names
the data they determine. Each key's meaning and, for a number, its range are declared with its field (the
loader checks the ranges and refuses inf and NaN; docs/configuration.md tables them)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from bcrdist.config import check_ranges, section, setting, to_dict
from bcrdist.errors import ConfigError, shown


def _check_order(key: str, bounds: tuple) -> None:
    """A [min, max] pair has min ≤ max."""
    lo, hi = bounds
    if lo > hi:
        raise ConfigError(f"{key}: lower bound {lo} exceeds upper bound {hi}")


@dataclass
class GaussianFamily:
    """Sums of Gaussian bumps; widths are standard deviations as fractions of the box."""

    count: tuple[int, int] = setting((2, 5), help="[min, max] number of bumps (drawn per sample)", low=1)
    amplitude: tuple[float, float] = setting((0.05, 0.25), help="[min, max] peak value a of a bump", low=0)
    width: tuple[float, float] = setting((0.03, 0.06), help="[min, max] standard deviation σ of a bump, a "
                                         "fraction of the box", low=0, low_open=True)
    tail_sigmas: float = setting(4.0, help="bump centres lie at least tail_sigmas·σ inside the support disk (the "
                                 "cut there is a jump ≤ a·e^{−τ²/2}: 3·10⁻⁴·a at τ = 4)", low=0, low_open=True)

    def validate(self) -> None:
        check_ranges(self, "family.gaussian")
        for key in ("count", "amplitude", "width"):
            _check_order(f"family.gaussian.{key}", getattr(self, key))


@dataclass
class ShapesFamily:
    """Non-overlapping ellipses and polygons; sizes are circumradii as fractions of the box."""

    count: tuple[int, int] = setting((1, 4), help="[min, max] number of shapes (a crowded draw may place fewer: "
                                     "50 tries per shape)", low=1)
    contrast: tuple[float, float] = setting((0.1, 0.4), help="[min, max] η inside a shape", low=0)
    size: tuple[float, float] = setting((0.05, 0.15), help="[min, max] circumradius, a fraction of the box", low=0,
                                        low_open=True)
    polygon_fraction: float = setting(0.5, help="probability that a shape is a star-shaped polygon rather than an "
                                      "ellipse", low=0, high=1)
    vertices: tuple[int, int] = setting((3, 7), help="[min, max] vertices of a polygon", low=3)
    gap: float = setting(0.01, help="least distance between the circumscribed disks of two shapes, a fraction "
                         "of the box", low=0)

    def validate(self) -> None:
        check_ranges(self, "family.shapes")
        for key in ("count", "contrast", "size", "vertices"):
            _check_order(f"family.shapes.{key}", getattr(self, key))


@dataclass
class SheppLoganFamily:
    """Jittered, randomly rotated Shepp–Logan-like phantoms; `contrast` is η of the outer shell."""

    contrast: tuple[float, float] = setting((0.1, 0.4), help="[min, max] η of the outer shell", low=0)
    jitter: float = setting(0.05, help="random change of the ellipses: semi-axes × (1 ± jitter), centres ± "
                            "jitter/2, angles ± jitter·45°", low=0, high=0.5, high_open=True)

    def validate(self) -> None:
        check_ranges(self, "family.shepp_logan")
        _check_order("family.shepp_logan.contrast", self.contrast)


@dataclass
class DiscsFamily:
    """Non-overlapping discs (the study's training family); radii are fractions of the box."""

    count: tuple[int, int] = setting((1, 3), help="[min, max] number of discs (a crowded draw may place fewer: "
                                     "50 tries per disc)", low=1)
    contrast: tuple[float, float] = setting((0.1, 0.8), help="[min, max] η inside a disc (drawn per disc; the "
                                            "study's refractive index n = 1 + η ∈ [1.1, 1.8])", low=0)
    radius: tuple[float, float] = setting((0.05, 0.15), help="[min, max] disc radius, a fraction of the box (the "
                                          "study's 0.1–0.3 on [−1, 1]²)", low=0, low_open=True)
    gap: float = setting(0.01, help="least distance between two discs, a fraction of the box", low=0)
    placement: Literal["disk", "square"] = setting("disk", help="where a centre is drawn (uniformly) for a disc of "
                                                   "radius r: `disk` |c| ≤ R − r, or the study's `square` "
                                                   "[−R + r, R − r]² (R = support_radius·box; the corners of the "
                                                   "square hold discs too)")

    def validate(self) -> None:
        check_ranges(self, "family.discs")
        for key in ("count", "contrast", "radius"):
            _check_order(f"family.discs.{key}", getattr(self, key))


@dataclass
class SquaresFamily:
    """Non-overlapping, randomly rotated squares; sides are fractions of the box."""

    count: tuple[int, int] = setting((1, 3), help="[min, max] number of squares (a crowded draw may place fewer: "
                                     "50 tries per square)", low=1)
    contrast: tuple[float, float] = setting((0.1, 0.4), help="[min, max] η inside a square (drawn per square)",
                                            low=0)
    side: tuple[float, float] = setting((0.1, 0.2), help="[min, max] side, a fraction of the box (circumradius "
                                        "side/√2)", low=0, low_open=True)
    gap: float = setting(0.01, help="least distance between the circumscribed disks of two squares, a fraction "
                         "of the box", low=0)

    def validate(self) -> None:
        check_ranges(self, "family.squares")
        for key in ("count", "contrast", "side"):
            _check_order(f"family.squares.{key}", getattr(self, key))


@dataclass
class UShapesFamily:
    """Non-overlapping, randomly rotated U-shapes: a square with a rectangular notch cut from one edge."""

    count: tuple[int, int] = setting((1, 2), help="[min, max] number of U-shapes (a crowded draw may place fewer: "
                                     "50 tries per shape)", low=1)
    contrast: tuple[float, float] = setting((0.1, 0.4), help="[min, max] η inside a U (drawn per shape)", low=0)
    side: tuple[float, float] = setting((0.15, 0.3), help="[min, max] side of the square, a fraction of the box "
                                        "(circumradius side/√2)", low=0, low_open=True)
    notch_width: tuple[float, float] = setting((0.3, 0.5), help="[min, max] width of the notch, a fraction of "
                                               "the side", low=0, high=1, low_open=True, high_open=True)
    notch_depth: tuple[float, float] = setting((0.4, 0.7), help="[min, max] depth of the notch, a fraction of "
                                               "the side", low=0, high=1, low_open=True, high_open=True)
    gap: float = setting(0.01, help="least distance between the circumscribed disks of two U-shapes, a fraction "
                         "of the box", low=0)

    def validate(self) -> None:
        check_ranges(self, "family.u_shapes")
        for key in ("count", "contrast", "side", "notch_width", "notch_depth"):
            _check_order(f"family.u_shapes.{key}", getattr(self, key))


@dataclass
class RingsFamily:
    """Non-overlapping bullseyes: concentric bands of equal width, η drawn and 0 alternating from the outside."""

    count: tuple[int, int] = setting((1, 2), help="[min, max] number of bullseyes (a crowded draw may place "
                                     "fewer: 50 tries per bullseye)", low=1)
    contrast: tuple[float, float] = setting((0.1, 0.4), help="[min, max] η of a non-empty band (drawn per band)",
                                            low=0)
    radius: tuple[float, float] = setting((0.1, 0.2), help="[min, max] outer radius, a fraction of the box",
                                          low=0, low_open=True)
    bands: tuple[int, int] = setting((2, 3), help="[min, max] bands of a bullseye, each radius/bands wide, η and "
                                     "0 alternating from the outside: 2 a ring, 3 a ring around a disc", low=2)
    gap: float = setting(0.01, help="least distance between two bullseyes, a fraction of the box", low=0)

    def validate(self) -> None:
        check_ranges(self, "family.rings")
        for key in ("count", "contrast", "radius", "bands"):
            _check_order(f"family.rings.{key}", getattr(self, key))


FAMILY_NAMES = ("gaussian", "shapes", "shepp_logan", "discs", "squares", "u_shapes", "rings")


@dataclass
class FamilyConfig:
    """Which family, its parameters, the support radius (fraction of box), the raster supersampling and the
    absorption levels."""

    name: Literal["gaussian", "shapes", "shepp_logan", "discs", "squares", "u_shapes", "rings", "mixture"] = \
        setting("gaussian", help="the family every sample is drawn from (its section below), or `mixture`: each "
                "sample draws one by the weights of `family.mixture`")
    support_radius: float = setting(0.45, help="η = 0 outside the disk |x| ≤ support_radius·box", low=0,
                                    high=0.5, low_open=True)
    supersample: int = setting(8, help="piecewise-constant families are rasterised by cell averages over "
                               "supersample² points (area-fraction anti-aliasing)", low=1)
    # values are checked in validate(): the loader's ranges apply to numbers and lists, not to a mapping's values
    mixture: dict[str, Any] = setting(default_factory=dict, help="name `mixture`: family name → weight ≥ 0; "
                                        "sample i draws its family with probability weight/Σ weights, seeded by "
                                        "(seed, i)")
    absorption: tuple[float, ...] = setting((0.0,), help="loss tangents α: each sample draws one uniformly "
                                            "(seeded by (seed, i)); the solver's contrast is η·(1 + iα), "
                                            "Im η = α·Re η (docs/physics.md, Absorption)", low=0)
    gaussian: GaussianFamily = section(GaussianFamily, help="`gaussian`: sums of Gaussian bumps "
                                       "a·e^{−|x−c|²/(2σ²)}, rasterised by point values")
    shapes: ShapesFamily = section(ShapesFamily, help="`shapes`: non-overlapping ellipses and star-shaped polygons "
                                   "(placed by rejection sampling with a gap)")
    shepp_logan: SheppLoganFamily = section(SheppLoganFamily, help="`shepp_logan`: a jittered, randomly rotated "
                                            "Shepp–Logan-like phantom scaled to the support disk, clipped at 0")
    discs: DiscsFamily = section(DiscsFamily, help="`discs`: non-overlapping discs, η drawn per disc (placed by "
                                 "rejection sampling with a gap)")
    squares: SquaresFamily = section(SquaresFamily, help="`squares`: non-overlapping, randomly rotated squares")
    u_shapes: UShapesFamily = section(UShapesFamily, help="`u_shapes`: non-overlapping, randomly rotated U-shapes "
                                      "(a square less a rectangular notch)")
    rings: RingsFamily = section(RingsFamily, help="`rings`: non-overlapping bullseyes of concentric bands, η and "
                                 "0 alternating")

    def members(self) -> tuple[str, ...]:
        """The families samples are drawn from: `name`, or the mixture's members of positive weight."""
        if self.name != "mixture":
            return (self.name,)
        return tuple(name for name, weight in self.mixture.items() if weight > 0)

    def validate(self) -> None:
        check_ranges(self, "family")
        if not self.absorption:
            raise ConfigError("family.absorption: expected a non-empty list of loss tangents α ≥ 0 (default [0.0])")
        for name, weight in self.mixture.items():
            if name not in FAMILY_NAMES:
                raise ConfigError(f"family.mixture: unknown family {shown(name)} (expected some of "
                                  f"{', '.join(FAMILY_NAMES)})")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ConfigError(f"family.mixture.{name}: weight must be a finite number ≥ 0, got {shown(weight)}")
        if self.name == "mixture" and not self.members():
            raise ConfigError("family.mixture: name `mixture` needs at least one family of positive weight, e.g. "
                              "{gaussian: 1, discs: 1}")
        if self.name != "mixture" and self.mixture:
            raise ConfigError(f"family.mixture: applies to family.name: mixture only (name is {self.name!r})")
        members = self.members()
        g = self.gaussian
        if "gaussian" in members and g.tail_sigmas * g.width[1] >= self.support_radius:
            raise ConfigError(f"family.gaussian.width: tail_sigmas·width ({g.tail_sigmas}·{g.width[1]}) must stay "
                              f"below family.support_radius {self.support_radius}")
        circumradii = {"shapes": ("size", self.shapes.size[1]), "discs": ("radius", self.discs.radius[1]),
                       "squares": ("side", self.squares.side[1] / math.sqrt(2.0)),
                       "u_shapes": ("side", self.u_shapes.side[1] / math.sqrt(2.0)),
                       "rings": ("radius", self.rings.radius[1])}
        for family, (key, radius) in circumradii.items():
            if (family in members or family == "shapes") and radius >= self.support_radius:
                raise ConfigError(f"family.{family}.{key}: the largest shape (circumradius {radius:.4g}) must stay "
                                  f"inside family.support_radius {self.support_radius}")


@dataclass
class SolverConfig:
    """GMRES stopping rule (relative residual `tol` per incident direction) and where the solver runs."""

    tol: float = setting(1e-8, help="GMRES stops when every incident direction's relative residual is below this",
                         low=0, high=1, low_open=True, high_open=True)
    restart: int = setting(40, help="GMRES restart length (Krylov vectors kept)", low=1)
    max_iterations: int = setting(400, help="iterations after which a sample fails with ConvergenceError (naming "
                                  "the sample)", low=1)
    backend: Literal["numpy", "torch"] = setting("numpy", help="`numpy`: the CPU solver (NumPy set-up, torch "
                                                 "FFTs and GMRES per sample); `torch`: every step on the device "
                                                 "of `bcrdist generate --device`, `batch` samples per GMRES solve "
                                                 "(far fields equal to 1e-10 in complex128)")
    precision: Literal["complex128", "complex64"] = setting("complex128", help="backend torch: the solver's "
                                                            "arithmetic; complex64 needs tol ≥ 1e-5 and a "
                                                            "piecewise-constant family (its error, ~1e-5, must "
                                                            "stay below the discretisation error)")
    batch: int = setting(1, help="backend torch: consecutive samples of a shard solved in one GMRES batch (a fixed "
                         "run of indices, so the data do not depend on the number of ranks)", low=1)

    def validate(self) -> None:
        check_ranges(self, "solver")
        if self.backend == "numpy" and (self.precision != "complex128" or self.batch != 1):
            raise ConfigError(f"solver.backend: numpy solves one sample in complex128; precision "
                              f"{self.precision} and batch {self.batch} need solver.backend: torch")
        if self.precision == "complex64" and self.tol < 1e-5:
            raise ConfigError(f"solver.precision: complex64 reaches relative residuals of about 1e-6 only; "
                              f"set solver.tol ≥ 1e-5 (got {self.tol:g}) or use complex128")


# top-level key → the default that reproduces the data of the configs written before the key existed
KEYS_ADDED_LATER = {"layout": "fan", "angles": "periodic", "image_size": 0, "image_points": "centres"}
# the same for the keys of `family`
FAMILY_KEYS_ADDED_LATER = {"mixture": {}, "absorption": [0.0], "discs": to_dict(DiscsFamily()),
                           "squares": to_dict(SquaresFamily()), "u_shapes": to_dict(UShapesFamily()),
                           "rings": to_dict(RingsFamily())}
# the same for keys of a family's section: (family, key) → default
FAMILY_SECTION_KEYS_ADDED_LATER = {("discs", "placement"): "disk"}
# the same for the keys of `solver` (a numpy-backend config's hash and data are those it had before)
SOLVER_KEYS_ADDED_LATER = {"backend": "numpy", "precision": "complex128", "batch": 1}


@dataclass
class GenerationConfig:
    """A generated data set: grid, wavenumber k = k_over_pi·π, angles, layout (polar or Cartesian target),
    family, size, seed."""

    n: int = setting(64, help="cells across the box: η is sampled at the centres of an n×n grid on "
                     "[−box/2, box/2]²", low=8)
    box: float = setting(1.0, help="side of the square box; lengths given as fractions are fractions of it", low=0,
                         low_open=True)
    k_over_pi: float = setting(8.0, help="wavenumber k = k_over_pi·π", low=0, low_open=True)
    Na: int = setting(64, help="incident directions = receivers (see `angles`); layout fan: a multiple of 4 "
                      "(measure has Na/2 half-offsets, which the antipodal preprocessing halves again)", low=4)
    Nr: int = setting(16, help="radii of the polar target `coe` (Na, Nr): ρ_i = (i + ½)·R/Nr", low=1)
    polar_radius: float = setting(0.5, help="radius R of the polar target, a fraction of the box", low=0,
                                  low_open=True)
    layout: Literal["fan", "farfield"] = setting("fan", help="arrays per sample: `fan` Fan's measure/measure_imag "
                                                 "and the polar coe; `farfield` the PyTorch port's far field "
                                                 "F[obs, inc] and a Cartesian image of η")
    angles: Literal["periodic", "endpoint"] = setting("periodic", help="the direction grid: `periodic` θ_j = "
                                                      "2πj/Na, or `endpoint` θ_j = −π + 2πj/(Na − 1), the port's "
                                                      "(first = last; layout farfield only)")
    image_size: int = setting(0, help="layout farfield: pixels per side of `image`, η at the `image_points` of "
                              "[−box/2, box/2]²; 0: n (the solver's raster)", low=0)
    image_points: Literal["centres", "nodes"] = setting("centres", help="layout farfield: where `image` samples η: "
                                                        "the cell `centres` (rasterised like the solver's η), or "
                                                        "the `nodes` −box/2 + i·box/(m − 1), both edges included "
                                                        "(the study's linspace(−1, 1, 100) at box 2; point values, "
                                                        "as the study's)")
    samples: int = setting(1024, help="samples in the data set", low=1)
    samples_per_shard: int = setting(256, help="samples per shard file (shard s is written by rank s mod P)", low=1)
    seed: int = setting(0, help="sample i depends only on (seed, i), so the data are the same for any number of "
                        "ranks", low=0)
    family: FamilyConfig = section(FamilyConfig, help="the scatterer family: which one, its parameters, the "
                                   "support radius and the raster supersampling")
    solver: SolverConfig = section(SolverConfig, help="the GMRES stopping rule of the Lippmann–Schwinger solver")

    def validate(self) -> None:
        check_ranges(self)
        if self.layout == "fan":
            if self.Na % 4:
                raise ConfigError(f"Na: must be a positive multiple of 4 (measure has Na/2 half-offsets, which the "
                                  f"antipodal preprocessing halves again), got {self.Na}")
            if self.angles != "periodic":
                raise ConfigError(f"angles: {self.angles!r} needs layout: farfield (Fan's measure and the polar coe "
                                  f"are defined on the periodic grid θ_j = 2πj/Na)")
            if self.image_size:
                raise ConfigError(f"image_size: {self.image_size} applies to layout: farfield only (layout fan "
                                  f"writes the polar coe, no image)")
            if self.image_points != "centres":
                raise ConfigError(f"image_points: {self.image_points!r} applies to layout: farfield only (layout fan "
                                  f"writes the polar coe, no image)")
        elif self.image_size == 1:
            raise ConfigError("image_size: must be 0 (the solver's n) or ≥ 2, got 1")
        if self.solver.precision == "complex64" and "gaussian" in self.family.members():
            # smooth η: the truncated kernel's error is spectrally small (~1e-7 at n = 64), below complex64's
            raise ConfigError("solver.precision: complex64 is allowed for piecewise-constant families only (their "
                              "discretisation error, ≥ 1e-3 up to n = 1024, is far above complex64's ~1e-5); the "
                              "gaussian family needs complex128")

    @property
    def absorbing(self) -> bool:
        """Some sample may have α > 0: `eta` is stored complex and `absorption` is stored."""
        return any(alpha > 0 for alpha in self.family.absorption)

    @property
    def k(self) -> float:
        return self.k_over_pi * math.pi

    def sha256(self) -> str:
        """Hash of the settings that determine the data: canonical JSON of the whole config, without the keys
        added after data sets were made while they hold their defaults (`KEYS_ADDED_LATER`,
        `FAMILY_KEYS_ADDED_LATER`, `FAMILY_SECTION_KEYS_ADDED_LATER`), so that those
        data sets keep the hash they were made with and still resume."""
        data = to_dict(self)
        for key, default in KEYS_ADDED_LATER.items():
            if data[key] == default:
                del data[key]
        for key, default in FAMILY_KEYS_ADDED_LATER.items():
            if data["family"][key] == default:
                del data["family"][key]
        for key, default in SOLVER_KEYS_ADDED_LATER.items():
            if data["solver"][key] == default:
                del data["solver"][key]
        # after the whole sections: a section left at its defaults (new key included) is gone already
        for (family, key), default in FAMILY_SECTION_KEYS_ADDED_LATER.items():
            if family in data["family"] and data["family"][family][key] == default:
                del data["family"][family][key]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

