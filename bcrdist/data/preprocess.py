"""On-the-fly preprocessing of batches read from a sharded data set (the original's transforms, per batch).

`Preprocess` says which datasets form the network input and target and which of the original's transforms
apply; `Preprocessor` checks it against a manifest and turns raw batches into {"index", "input", "target"}.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bcrdist.noise import MODELS, check_model, noisy_samples
from bcrdist.transforms import network_input, output_scale
from bcrdist.data.format import Manifest
from bcrdist.errors import ConfigError, DataError, shown


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
    - noise, noise_model, noise_max: measurement noise at `noise` percent (with `noise_max`, at a level each
      sample draws uniformly from [noise, noise_max]), a model of `bcrdist.noise` (`fan`, `complex`,
      `additive`). The draw for a sample is seeded by (the model's stream, seed, epoch, global index)
      (`bcrdist.noise.sample_rng`), so it is reproducible and independent of rank, worker and batch
      composition; with noise_fixed the epoch is left out, giving one fixed draw per sample as the original
      (which drew once, unseeded). Where the noise acts (`noise_source`): on the complex far field, before
      any part is taken, the antipodal map applied or the parts concatenated. A complex input dataset
      (`farfield.real`, …) is that far field; on Fan's layout it is `measure` + i·`measure_imag` (read even
      when the network takes `measure` only): measure[i, j] = F[(i + j) mod Na, (i − j) mod Na] re-indexes F,
      so per-entry noise on it is noise on F's entries (Na²/2 of the Na², the ones BCR-Net sees; `additive`
      takes ‖·‖ and n over those). Exception, `fan` on a real input (Fan's layout): it acts on the final
      network input, as the original did, with the draws of every run before; its entries are a permutation
      of measure's and measure_imag's, so the noisy far field has the same distribution either way. (`fan` on
      a complex far field draws Re's ε before Im's, so the real-part input the port fed BCR-Net keeps its
      earlier draws bit for bit; with both parts, the Im draw now follows the whole Re one.)
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
    noise_model: str = "fan"
    noise_max: float | None = None
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
            raise DataError(f"{manifest.path}: {where}: dataset {shown(base)} is real; it has no imaginary part")
        return base, part
    raise DataError(f"{manifest.path}: {where}: no dataset {shown(field)} (datasets: {', '.join(manifest.datasets)})")


def noise_source(manifest: Manifest, spec: Preprocess, key: str = "preprocess.noise_model"
                 ) -> tuple[str, str | None] | None:
    """Where the noise of `spec` acts (see `Preprocess`): None for no noise or on the network input (`fan` on
    a real input); (name, None) for the complex dataset `name`; (real name, imaginary name) for a pair of
    real datasets (`measure`, `measure_imag`: by default the input's `NAME_imag`). ConfigError naming `key`
    for an unknown model, or a `complex`/`additive` model on an input without imaginary part."""
    model = check_model(spec.noise_model, key)
    if not spec.noise and not spec.noise_max:
        return None
    name, _ = resolve_field(manifest, spec.input, "preprocess.input")
    imag = resolve_field(manifest, spec.input_imag, "preprocess.input_imag")[0] if spec.input_imag else None
    if manifest.datasets[name].dtype.kind == "c":
        if imag not in (None, name):
            raise ConfigError(f"{key}: the noise acts on one complex far field; the input {shown(spec.input)} and "
                              f"{shown(spec.input_imag)} are not its two parts")
        return name, None
    if model == "fan":
        return None
    imag = imag or f"{name}_imag"
    if imag not in manifest.datasets or manifest.datasets[imag].dtype.kind == "c":
        raise ConfigError(f"{key}: {shown(model)} noise acts on the complex far field, but the input "
                          f"{shown(spec.input)} is real and {manifest.root} has no real dataset {shown(imag)} with its "
                          f"imaginary part; choose one of {', '.join(MODELS)} that fits (`fan` acts on real data)")
    if manifest.datasets[imag].shape != manifest.datasets[name].shape:
        raise DataError(f"{manifest.path}: {key}: {shown(imag)} has per-sample shape {manifest.datasets[imag].shape}, "
                        f"{shown(name)} has {manifest.datasets[name].shape}")
    return name, imag


class Preprocessor:
    """A `Preprocess` checked against a data set. `datasets` lists the datasets a batch needs."""

    def __init__(self, spec: Preprocess, manifest: Manifest):
        self.spec = spec
        try:
            self.dtype = np.dtype(spec.dtype)
        except TypeError:
            raise ConfigError(f"preprocess.dtype: not a dtype: {shown(spec.dtype)}") from None
        if self.dtype.kind != "f":
            raise ConfigError(f"preprocess.dtype: must be a floating dtype, got {shown(spec.dtype)}")
        if spec.noise < 0:
            raise ConfigError(f"preprocess.noise: must be ≥ 0 (percent), got {spec.noise}")
        if spec.noise_max is not None and not spec.noise_max >= spec.noise:
            raise ConfigError(f"preprocess.noise_max: must be ≥ preprocess.noise ({spec.noise}), got {spec.noise_max}")
        self.input = resolve_field(manifest, spec.input, "preprocess.input")
        self.input_imag = (resolve_field(manifest, spec.input_imag, "preprocess.input_imag")
                           if spec.input_imag else None)
        self.target = resolve_field(manifest, spec.target, "preprocess.target") if spec.target else None
        self.keep = [resolve_field(manifest, k, "preprocess.keep")[0] for k in spec.keep]
        shape = manifest.datasets[self.input[0]].shape
        if self.input_imag and manifest.datasets[self.input_imag[0]].shape != shape:
            raise DataError(f"{manifest.path}: preprocess.input_imag: {shown(spec.input_imag)} has per-sample shape "
                            f"{manifest.datasets[self.input_imag[0]].shape}, {shown(spec.input)} has {shape}")
        if spec.antipodal and (len(shape) < 2 or shape[-2] % 2 or shape[-1] % 2):
            raise DataError(f"{manifest.path}: preprocess.antipodal needs an input of even shape (Ns, Nd), "
                            f"{shown(spec.input)} is {shape}")
        self.target_scale = 1.0
        if spec.normalize_target:
            if self.target is None:
                raise ConfigError("preprocess.normalize_target needs a target")
            stats = manifest.field_statistics(spec.target)
            try:
                self.target_scale = output_scale(stats["min"], stats["max"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{manifest.path}: statistics of {shown(spec.target)}: {exc}") from None
        self.noise_source = noise_source(manifest, spec)
        names = [self.input[0]] + ([self.input_imag[0]] if self.input_imag else []) \
            + [n for n in (self.noise_source or ()) if n] + ([self.target[0]] if self.target else []) + self.keep
        self.datasets = list(dict.fromkeys(names))

    def _field(self, raw: dict[str, np.ndarray], field: tuple[str, str | None],
               noisy: dict[tuple[str, str | None], np.ndarray]) -> np.ndarray:
        if field in noisy:
            return np.asarray(noisy[field], dtype=self.dtype)
        name, part = field
        arr = raw[name]
        if part == "real":
            arr = arr.real
        elif part == "imag":
            arr = arr.imag
        return np.asarray(arr, dtype=self.dtype)

    def _noisy_parts(self, raw: dict[str, np.ndarray], index: np.ndarray, seed: int, epoch: int | None
                     ) -> dict[tuple[str, str | None], np.ndarray]:
        """The noisy complex far field F (B, …) of `noise_source`, in the complex dtype of `dtype`, as the
        fields that name its parts: {(name, part): Re F or Im F}."""
        name, imag = self.noise_source
        cdtype = np.result_type(self.dtype, np.complex64)
        if imag is None:
            F = np.asarray(raw[name], dtype=cdtype)
        else:
            F = np.empty(raw[name].shape, dtype=cdtype)
            F.real, F.imag = raw[name], raw[imag]
        F = noisy_samples(F, self.spec.noise_model, self.spec.noise, index, seed, epoch, self.spec.noise_max)
        if imag is None:
            return {(name, None): F.real, (name, "real"): F.real, (name, "imag"): F.imag}
        return {(name, None): F.real, (name, "real"): F.real, (imag, None): F.imag, (imag, "real"): F.imag}

    def __call__(self, raw: dict[str, np.ndarray], index: np.ndarray, *, seed: int,
                 epoch: int) -> dict[str, torch.Tensor]:
        """raw: dataset → (B, …) arrays; index (B,) global indices → {"index", "input", "target", *keep}."""
        spec = self.spec
        draw_epoch = None if spec.noise_fixed else epoch
        noisy = self._noisy_parts(raw, index, seed, draw_epoch) if self.noise_source else {}
        x = network_input(self._field(raw, self.input, noisy),
                          self._field(raw, self.input_imag, noisy) if self.input_imag else None,
                          apply_antipodal=spec.antipodal)
        if (spec.noise or spec.noise_max) and self.noise_source is None:
            # `fan` on a real input: on the network input, as the original
            x = noisy_samples(np.ascontiguousarray(x), spec.noise_model, spec.noise, index, seed, draw_epoch,
                              spec.noise_max)
        out = {"index": torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)),
               "input": torch.from_numpy(np.ascontiguousarray(x))}
        if self.target:
            y = self._field(raw, self.target, {})
            if self.target_scale != 1.0:
                y = y / self.dtype.type(self.target_scale)
            out["target"] = torch.from_numpy(np.ascontiguousarray(y))
        for name in self.keep:
            out[name] = torch.from_numpy(np.ascontiguousarray(raw[name]))
        return out
