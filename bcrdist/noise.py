"""Measurement noise models of the far field, per sample and seeded, levels in percent.

Each model acts on one sample's array (any shape; the whole array is the sample) with a NumPy Generator the
caller seeds; `apply_noise(F, model, level, rng)` dispatches by name (`MODELS`). δ = level/100.

- `fan`: the original's real multiplicative noise X(1 + δε), ε ~ N(0, 1) per entry; on a complex array the
  real and imaginary parts separately, Re(F)(1 + δε₁) + i·Im(F)(1 + δε₂), ε₁ drawn before ε₂
  (`multiplicative_noise`, whose draws the original's `--noise` runs and the data pipeline have always used).
- `complex`: the complex multiplicative noise (1 + δZ)·F of Desai et al. (arXiv 2503.01596), Z complex
  standard normal: Re Z, Im Z ~ N(0, ½) independent, so E Z = 0, E|Z|² = 1, E Z² = 0 (circularly symmetric).
- `additive`: F + δ·‖F‖/√n·Z (MFISNets' model), ‖F‖ the sample's Frobenius norm over its n entries and Z as
  above, so E‖noise‖² = δ²‖F‖²: the noise is δ relative to the data in the mean-square sense.

`complex` and `additive` need a complex array (the far field). Per-sample seeds: `sample_rng(model, seed,
index, epoch)`, a stream constant per model (one for per-epoch draws, one for the fixed draw) followed by the
run's seed, [the epoch,] and the sample's global index, so a sample's draw does not depend on batching, rank
or worker; `noisy_samples` applies a model to a batch that way (the data pipeline and the Born baseline both
use it, so they see the same noisy far field); with `level_max` each sample draws its level in [level,
level_max] first (the training split's `data.noise_max`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bcrdist.errors import ConfigError

MODELS = ("fan", "complex", "additive")
# the highest noise level, percent: noise ten times the data (δ = 10) already drowns them; far beyond it the
# noisy inputs and their squares in the loss overflow float32, and a run would fail blaming its data
MAX_LEVEL = 1000.0
# first words of the per-sample seeds, (per-epoch draw, fixed draw) per model; they keep the streams apart
# from each other and from the reader's shuffle and split streams. `fan`'s are the data pipeline's
# historical ones, so its draws are unchanged.
STREAMS = {"fan": (0x4E4F4953, 0x4E4F4658), "complex": (0x43504C58, 0x43504658),
           "additive": (0x4144444E, 0x41444658)}


def multiplicative_noise(x, noise_percent: float, generator: np.random.Generator | torch.Generator):
    """The original's measurement noise X·(1 + σε) on a real array, σ = noise_percent/100, ε ~ N(0, 1)
    elementwise, ε in x's dtype.

    Seeded through `generator` (the original drew it unseeded): a NumPy Generator for arrays, a torch
    Generator for tensors.
    """
    sigma = float(noise_percent) / 100.0
    if sigma == 0:
        return x
    if isinstance(x, torch.Tensor):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x * (1 + sigma * eps)
    eps = generator.standard_normal(x.shape).astype(x.dtype, copy=False)
    return x * (1 + sigma * eps)


def complex_normal(shape, rng: np.random.Generator) -> np.ndarray:
    """Z complex128 of `shape`, Re Z and Im Z ~ N(0, ½) independent (E|Z|² = 1); the real parts are drawn
    first, as one block."""
    z = rng.standard_normal((2, *shape))
    return (z[0] + 1j * z[1]) * math.sqrt(0.5)


def _complex_only(F: np.ndarray, model: str) -> None:
    if not np.iscomplexobj(F):
        raise ValueError(f"noise model {model!r} acts on a complex far field, got a {np.asarray(F).dtype} array")


def fan(F: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Fan's X(1 + δε): on a real array; on a complex one Re and Im separately (Re's ε drawn first)."""
    if not np.iscomplexobj(F):
        return multiplicative_noise(F, level, rng)
    out = np.empty_like(F)
    out.real = multiplicative_noise(np.ascontiguousarray(F.real), level, rng)
    out.imag = multiplicative_noise(np.ascontiguousarray(F.imag), level, rng)
    return out


def complex_multiplicative(F: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """(1 + δZ)·F, Z complex standard normal per entry (`complex_normal`); F's dtype."""
    _complex_only(F, "complex")
    return (F * (1 + (level / 100.0) * complex_normal(F.shape, rng))).astype(F.dtype, copy=False)


def additive(F: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """F + δ‖F‖/√n·Z, ‖F‖ the Frobenius norm of the n entries of F, Z complex standard normal; F's dtype."""
    _complex_only(F, "additive")
    rms = math.sqrt(float(np.vdot(F, F).real) / max(F.size, 1))
    return (F + (level / 100.0) * rms * complex_normal(F.shape, rng)).astype(F.dtype, copy=False)


NOISE = {"fan": fan, "complex": complex_multiplicative, "additive": additive}


def check_model(model: str, key: str = "noise_model") -> str:
    """`model` if it names a noise model, else a ConfigError naming `key` and the choices."""
    if model not in NOISE:
        raise ConfigError(f"{key}: expected one of {', '.join(MODELS)}, got {model!r}")
    return model


def apply_noise(F: np.ndarray, model: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """One sample F (any shape) with noise `model` at `level` percent, drawn from `rng`; F itself at level 0."""
    check_model(model)
    if not level >= 0:
        raise ValueError(f"noise level must be ≥ 0 (percent), got {level}")
    if level == 0:
        return F
    return NOISE[model](F, level, rng)


def sample_rng(model: str, seed: int, index: int, epoch: int | None = None) -> np.random.Generator:
    """The Generator of sample `index`'s draw: seeded by (stream of `model`, seed, epoch, index), or with
    `epoch` None (one fixed draw per sample) by (fixed stream of `model`, seed, index)."""
    per_epoch, fixed = STREAMS[check_model(model)]
    key = [fixed, int(seed), int(index)] if epoch is None else [per_epoch, int(seed), int(epoch), int(index)]
    return np.random.default_rng(key)


def noisy_samples(F: np.ndarray, model: str, level: float, indices, seed: int, epoch: int | None = None,
                  level_max: float | None = None) -> np.ndarray:
    """A batch F (B, …) with each sample's noise drawn by `sample_rng(model, seed, indices[b], epoch)`: a new
    array of F's dtype, or F itself at level 0. With `level_max`, each sample first draws its own level
    uniformly from [level, level_max] from that Generator (augmentation over noise levels: one network for a
    range of them)."""
    check_model(model)
    if level_max is not None:
        if not level_max >= level:
            raise ValueError(f"noise level_max {level_max} is below the level {level}")
        if level_max == level:
            level_max = None
    if not level and level_max is None:
        return F
    indices = np.asarray(indices).reshape(-1)
    if len(indices) != len(F):
        raise ValueError(f"noisy_samples: {len(indices)} indices for {len(F)} samples")
    out = np.empty_like(F)
    for b, gidx in enumerate(indices.tolist()):
        rng = sample_rng(model, seed, gidx, epoch)
        out[b] = apply_noise(F[b], model, level if level_max is None else rng.uniform(level, level_max), rng)
    return out
