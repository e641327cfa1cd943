"""On-the-fly preprocessing of batches read from a sharded data set (the original's transforms, per batch).

`Preprocess` says which datasets form the network input and target and which of the original's transforms
apply; `Preprocessor` checks it against a manifest and turns raw batches into {"index", "input", "target"}.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bcrdist.transforms import multiplicative_noise, network_input, output_scale
from bcrdist.data.format import Manifest
from bcrdist.errors import ConfigError, DataError

# first words of the per-sample noise seeds; they keep these streams apart from each other and from the
# reader's shuffle stream
NOISE_STREAM = 0x4E4F4953
NOISE_FIXED_STREAM = 0x4E4F4658


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """What a batch holds and how it is transformed.

    input / input_imag / target / keep name datasets of the data set; a complex dataset is used through one
    part, written `name.real` or `name.imag` (e.g. "farfield.real" for Ma's training input).

    - input (B, Ns, Nd) → batch "input" (B, Ns, Nd), or (B, Ns, 2·Nd) when `input_imag` names a second
      dataset of the same shape, concatenated after it along the last (detector) axis.
    - antipodal: the original's input transform (`bcrdist.transforms.antipodal`), applied to input and
      input_imag separately, before the concatenation (both by `bcrdist.transforms.network_input`, the
      assembly inference uses too). Needs even Ns and Nd.
    - noise: multiplicative noise X·(1 + noise/100·ε), ε ~ N(0, 1) per entry, on the final input. The draw for
      a sample is seeded by (seed, epoch, global index), so it is reproducible and independent of rank,
      worker and batch composition; with noise_fixed the epoch is left out, giving one fixed draw per sample
      as the original (which drew once, unseeded).
    - target (B, Nt, Nr) → batch "target"; with normalize_target divided by
      `output_scale(min, max)` = half the range of the target over the whole data set, read from the
      manifest statistics (the original's normalisation; no shift).
    - keep: further datasets passed through unchanged under their own names.
    - dtype: floating dtype of input and target.
    """

    input: str = "measure"
    target: str | None = "coe"
    input_imag: str | None = None
    antipodal: bool = False
    normalize_target: bool = False
    noise: float = 0.0
    noise_fixed: bool = False
    keep: tuple[str, ...] = ()
    dtype: str = "float32"


def resolve_field(manifest: Manifest, field: str, where: str) -> tuple[str, str | None]:
    """'coe' → ("coe", None); 'farfield.real' → ("farfield", "real") for a complex dataset 'farfield'."""
    if field in manifest.datasets:
        return field, None
    base, _, part = field.rpartition(".")
    if part in ("real", "imag") and base in manifest.datasets:
        if manifest.datasets[base].dtype.kind != "c" and part == "imag":
            raise DataError(f"{manifest.path}: {where}: dataset {base!r} is real; it has no imaginary part")
        return base, part
    raise DataError(f"{manifest.path}: {where}: no dataset {field!r} (datasets: {', '.join(manifest.datasets)})")


class Preprocessor:
    """A `Preprocess` checked against a data set. `datasets` lists the datasets a batch needs."""

    def __init__(self, spec: Preprocess, manifest: Manifest):
        self.spec = spec
        try:
            self.dtype = np.dtype(spec.dtype)
        except TypeError:
            raise ConfigError(f"preprocess.dtype: not a dtype: {spec.dtype!r}") from None
        if self.dtype.kind != "f":
            raise ConfigError(f"preprocess.dtype: must be a floating dtype, got {spec.dtype!r}")
        if spec.noise < 0:
            raise ConfigError(f"preprocess.noise: must be ≥ 0 (percent), got {spec.noise}")
        self.input = resolve_field(manifest, spec.input, "preprocess.input")
        self.input_imag = (resolve_field(manifest, spec.input_imag, "preprocess.input_imag")
                           if spec.input_imag else None)
        self.target = resolve_field(manifest, spec.target, "preprocess.target") if spec.target else None
        self.keep = [resolve_field(manifest, k, "preprocess.keep")[0] for k in spec.keep]
        shape = manifest.datasets[self.input[0]].shape
        if self.input_imag and manifest.datasets[self.input_imag[0]].shape != shape:
            raise DataError(f"{manifest.path}: preprocess.input_imag: {spec.input_imag!r} has per-sample shape "
                            f"{manifest.datasets[self.input_imag[0]].shape}, {spec.input!r} has {shape}")
        if spec.antipodal and (len(shape) < 2 or shape[-2] % 2 or shape[-1] % 2):
            raise DataError(f"{manifest.path}: preprocess.antipodal needs an input of even shape (Ns, Nd), "
                            f"{spec.input!r} is {shape}")
        self.target_scale = 1.0
        if spec.normalize_target:
            if self.target is None:
                raise ConfigError("preprocess.normalize_target needs a target")
            stats = manifest.field_statistics(spec.target)
            try:
                self.target_scale = output_scale(stats["min"], stats["max"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{manifest.path}: statistics of {spec.target!r}: {exc}") from None
        names = [self.input[0]] + ([self.input_imag[0]] if self.input_imag else []) \
            + ([self.target[0]] if self.target else []) + self.keep
        self.datasets = list(dict.fromkeys(names))

    def _field(self, raw: dict[str, np.ndarray], field: tuple[str, str | None]) -> np.ndarray:
        name, part = field
        arr = raw[name]
        if part == "real":
            arr = arr.real
        elif part == "imag":
            arr = arr.imag
        return np.asarray(arr, dtype=self.dtype)

    def __call__(self, raw: dict[str, np.ndarray], index: np.ndarray, *, seed: int,
                 epoch: int) -> dict[str, torch.Tensor]:
        """raw: dataset → (B, …) arrays; index (B,) global indices → {"index", "input", "target", *keep}."""
        spec = self.spec
        x = network_input(self._field(raw, self.input),
                          self._field(raw, self.input_imag) if self.input_imag else None,
                          apply_antipodal=spec.antipodal)
        if spec.noise:
            x = np.ascontiguousarray(x)
            for row, gidx in enumerate(index.tolist()):
                key = [NOISE_FIXED_STREAM, seed, gidx] if spec.noise_fixed else [NOISE_STREAM, seed, epoch, gidx]
                x[row] = multiplicative_noise(x[row], spec.noise, np.random.default_rng(key))
        out = {"index": torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)),
               "input": torch.from_numpy(np.ascontiguousarray(x))}
        if self.target:
            y = self._field(raw, self.target)
            if self.target_scale != 1.0:
                y = y / self.dtype.type(self.target_scale)
            out["target"] = torch.from_numpy(np.ascontiguousarray(y))
        for name in self.keep:
            out[name] = torch.from_numpy(np.ascontiguousarray(raw[name]))
        return out
