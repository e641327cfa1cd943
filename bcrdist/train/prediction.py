"""Predictions of a trained model on whatever holds its input: the library half of `bcrdist predict`.

Every model reads one raw input (`ScatteringModel.raw_input()`): Fan's real `measure` (N, Ns, Nd) (and
`measure_imag` with it) for BCR-Net on the polar layout, or the complex far field `farfield` (N, n_obs, n_inc) —
both parts for BCNN and the study's networks, one named part (`farfield.real`) for a far-field BCR-Net. It is
read from

- an HDF5 file (`.h5`, `.hdf5`): per-sample datasets (N, a, b) by the model's dataset name (a shard, a merged
  data set, `measure`/`measure_imag`, a complex `farfield`), or the PyTorch port's layout, `farfield.real` and
  `farfield.imag` stored (M, N) by columns (`bcrdist.physics.layout.samples_from_columns`);
- a bcrdist data-set folder (its manifest and shards), all samples or one split; its recorded physics are
  compared with the training data's first (`bcrdist.train.physics_check`);
- a NumPy `.npy` array (N, a, b) or one sample (a, b): the model's dataset itself, complex when the model reads
  both parts (the far field, or `measure` + i·`measure_imag`).

A complex input to a model trained on one part of it (a far-field BCR-Net on Re F) is read as in training, that
part, and the output says so (a note printed and stored); a complex input to a model of a real dataset is
refused, as is anything else the model does not read: one line naming what the model reads and what the input
holds. The output file holds `pred` (N, Nt, Nr) polar or (N, H, W) Cartesian η in physical units, `index` (N,)
(the samples' indices in the input; global indices for a data set), and the target's grid — the training data's
as the checkpoint records it, else the input data set's: `theta` and `rho` (polar) or `x` and `y` (Cartesian)
coordinates with the layout and the axes' meaning as attributes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import torch

from bcrdist.data.convert import FARFIELD_NAMES
from bcrdist.data.dataset import ShardedDataset
from bcrdist.data.format import MANIFEST_NAME, read_manifest
from bcrdist.data.grid import TARGET_DATASET
from bcrdist.errors import ConfigError, DataError
from bcrdist.fileio import atomic_write_held, one_line
from bcrdist.models.checkpoint import load_model
from bcrdist.models.scattering import RawInput, ScatteringModel
from bcrdist.physics.layout import GridInfo, polar_grid, samples_from_columns
from bcrdist.train.physics_check import PhysicsCheck, check_physics, data_grid, training_grid

SHOWN = 6


@dataclasses.dataclass
class Inputs:
    """The raw input read for a model: `values` (N, a, b) real or complex, `second` (N, a, b) or None (Fan's
    `measure_imag`), `index` (N,) the samples' indices in the source, `kind` ("hdf5", "npy", "dataset"),
    `notes` (what the output should say about how the input was read), `physics` (a data set's check)."""

    values: np.ndarray
    second: np.ndarray | None
    index: np.ndarray
    kind: str
    notes: list[str]
    physics: PhysicsCheck | None = None


def _listing(items: dict[str, tuple[tuple, object]]) -> str:
    """'coe (20, 16, 6) float64, measure (20, 16, 8) float32' of {name: (shape, dtype)}."""
    shown = [f"{name} {tuple(shape)} {np.dtype(dtype)}" for name, (shape, dtype) in sorted(items.items())]
    return ", ".join(shown[:SHOWN]) + (f", … ({len(shown)} datasets)" if len(shown) > SHOWN else "") or "nothing"


def _ignored_part_note(raw: RawInput) -> str:
    other = "imaginary" if raw.part == "real" else "real"
    return (f"the model reads the {raw.part} part of {raw.dataset!r} only (it was trained on it); the {other} part "
            f"of the input is not used")


def select(where: str, raw: RawInput, get, listing: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(values, second part or None, notes) of what `raw` names, from `get(name)`: a dataset's samples
    (N, a, b) or None when absent; DataError naming `where`, what the model reads and `listing` (what is
    there) otherwise."""
    def refuse(problem: str) -> DataError:
        return DataError(f"{where}: {problem}; the model reads {raw.describe()} (the input holds {listing})")

    name = raw.dataset
    values = get(name)
    if raw.part is None:
        if values is None:
            raise refuse(f"no dataset {name!r}")
        if np.iscomplexobj(values):
            if raw.second is None:
                raise refuse(f"{name!r} is complex (pass its real part)")
            return values, None, []                       # measure + i·measure_imag
        if raw.second is None:
            return values, None, []
        second = get(raw.second)
        if second is None:
            raise refuse(f"no {raw.second!r} (or give {name!r} complex, {name} + i·{raw.second})")
        return values, second, []
    if values is not None:
        if np.iscomplexobj(values):
            return values, None, ([] if raw.part == "both" else [_ignored_part_note(raw)])
        if raw.part == "real":
            return values, None, []                       # a real far field is the real part the model reads
        raise refuse(f"{name!r} is real, without the imaginary part")
    real, imag = get(f"{name}.real"), get(f"{name}.imag")
    if raw.part == "both":
        if real is None or imag is None:
            raise refuse(f"no {name!r}" + (f" and no {name}.real/{name}.imag" if real is None and imag is None else
                                           f" and no {name}.{'real' if real is None else 'imag'}"))
        return real + 1j * imag.astype(real.dtype), None, []
    wanted, other = (real, imag) if raw.part == "real" else (imag, real)
    if wanted is None:
        raise refuse(f"no {name!r} and no {name}.{raw.part}")
    return wanted, None, ([] if other is None else [_ignored_part_note(raw)])


def _check(where: str, raw: RawInput, model: ScatteringModel, values: np.ndarray, second, index) -> None:
    """Refuse samples of another shape or with NaN/inf, naming the samples' indices."""
    for what, a in ((raw.dataset, values), (raw.second, second)):
        if a is None:
            continue
        if a.ndim != 3 or tuple(a.shape[1:]) != raw.shape:
            found = f"{a.shape[1]}×{a.shape[2]} samples (N = {a.shape[0]})" if a.ndim == 3 else f"shape {a.shape}"
            raise DataError(f"{where}: {what!r} has {found}; the model ({model.model_type}) reads {raw.describe()}")
        bad = ~np.isfinite(a).all(axis=(1, 2))
        if bad.any():
            shown = ", ".join(str(int(i)) for i in index[bad][:SHOWN])
            raise DataError(f"{where}: {what!r} holds NaN or inf in samples {shown}"
                            + (f", … ({int(bad.sum())} samples)" if bad.sum() > SHOWN else ""))


def _from_hdf5(path: Path, raw: RawInput) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot read as HDF5 ({one_line(exc)})") from None
    with fh:
        sets = {name: obj for name, obj in fh.items() if isinstance(obj, h5py.Dataset)}

        def get(name):
            d = sets.get(name)
            if d is None or d.ndim not in (2, 3):
                return None
            if d.ndim == 3:
                return d[()]
            if name not in FARFIELD_NAMES:
                return d[()][None]                        # one sample (a, b)
            # the port's layout stores a dataset (M, N), sample j = column j (a (√M, √M) image)
            try:
                return samples_from_columns(d[()])
            except ValueError:
                raise DataError(f"{path}: {name!r} {d.shape} is not the port's layout (M, N) by columns, M a "
                                f"perfect square") from None

        return select(str(path), raw, get, _listing({n: (d.shape, d.dtype) for n, d in sets.items()}))


def _from_npy(path: Path, raw: RawInput) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as a NumPy array ({one_line(exc)})") from None
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3 or values.dtype.kind not in "iufc":
        raise DataError(f"{path}: a {values.dtype} array of shape {values.shape}; the model reads "
                        f"{raw.describe()} (or one sample {raw.shape})")
    listing = f"a {values.dtype} array {values.shape}"
    return select(str(path), raw, lambda name: values if name == raw.dataset else None, listing)


def _manifest_listing(manifest) -> str:
    return _listing({n: ((manifest.num_samples, *d.shape), d.dtype) for n, d in manifest.datasets.items()})


def _from_dataset(path: Path, manifest, raw: RawInput, split: str | None, batch_size: int):
    """(values, second, notes, index) of the data-set folder `path` (`manifest`: its manifest), all samples
    (`split` None or "all") or one split."""
    split = None if split in (None, "all") else split
    reader_cache: dict[str, np.ndarray] = {}
    index: list[np.ndarray] = []

    def get(name):
        if name not in manifest.datasets:
            return None
        if name not in reader_cache:
            ds = ShardedDataset(path, split=split, shuffle=False, exact=True, batch_size=batch_size,
                                datasets=[name])
            parts = list(ds)
            reader_cache[name] = np.concatenate([b[name].numpy() for b in parts])
            if not index:
                index.append(np.concatenate([b["index"].numpy() for b in parts]))
        return reader_cache[name]

    values, second, notes = select(str(path), raw, get, _manifest_listing(manifest))
    return values, second, notes, index[0]


def read_inputs(path, model: ScatteringModel, meta: dict, split: str | None = None, batch_size: int = 256,
                allow_physics_mismatch: bool = False) -> Inputs:
    """The raw input of `model` in `path` (module docstring); `split` only for a data-set folder, whose
    physics are checked against the training data's of `model` (`meta`: `load_model(..., with_meta=True)`)."""
    path = Path(path)
    raw = model.raw_input()
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise DataError(f"{path}: a folder without {MANIFEST_NAME} (not a bcrdist data set); predict reads a "
                            f"data set, an HDF5 file or a .npy array")
        manifest = read_manifest(path)
        # before a shard is read: whether the data set holds what the model reads (empty stand-ins of its
        # datasets), then whether its physics are the training data's
        empty = {name: np.zeros((0, *d.shape), d.dtype) for name, d in manifest.datasets.items()}
        found = select(str(path), raw, empty.get, _manifest_listing(manifest))
        _check(str(path), raw, model, found[0], found[1], np.zeros(0, dtype=np.int64))
        physics = check_physics(model.record(), meta, manifest, str(path), allow_physics_mismatch)
        values, second, notes, index = _from_dataset(path, manifest, raw, split, batch_size)
        kind = "dataset"
    else:
        if split is not None:
            raise ConfigError(f"--split {split}: applies to a data-set folder; {path} is a file")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found")
        kind = "npy" if path.suffix == ".npy" else "hdf5"
        values, second, notes = (_from_npy if kind == "npy" else _from_hdf5)(path, raw)
        index, physics = np.arange(len(values)), None
    _check(str(path), raw, model, values, second, index)
    if physics is not None and physics.differing:
        notes.append(f"physics differ from the training data's ({physics.summary()}); predicted anyway "
                     f"(--allow-physics-mismatch)")
    return Inputs(values, second, index, kind, notes, physics)


def target_kind(model: ScatteringModel, grid: GridInfo | None) -> str | None:
    """"polar" or "cartesian": the grid's, else the target dataset's (`coe`, `image`), else the network's only
    target kind; None when unknown."""
    if grid is not None:
        return grid.target
    by_name = {name: kind for kind, name in TARGET_DATASET.items()}
    if model.target in by_name:
        return by_name[model.target]
    targets = tuple(type(model.net).targets)
    return targets[0] if len(targets) == 1 else None


def grid_datasets(model: ScatteringModel, grid: GridInfo | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The coordinates of the target's grid ({name: array}) and the attributes describing it, for (Nt, Nr) or
    (H, W) outputs of `model` on `grid` (None: what the layout alone gives)."""
    kind, (n0, n1) = target_kind(model, grid), model.data_output
    attrs = {"layout": kind or "unknown"}
    if kind == "polar":
        if grid is not None and (grid.polar_nt, grid.polar_nr) == (n0, n1):
            theta, rho = polar_grid(n0, n1, grid.polar_radius)
            return ({"theta": theta, "rho": rho},
                    {**attrs, "axes": "pred[n, j, i] = eta(rho[i] cos theta[j], rho[i] sin theta[j]); theta in "
                                      "radians, rho in the length unit of 1/k"})
        theta, rho = polar_grid(n0, n1, 1.0)
        return ({"theta": theta, "rho_over_radius": rho},
                {**attrs, "axes": "pred[n, j, i] = eta at angle theta[j], radius rho_over_radius[i]·R",
                 "grid_note": "the polar radius R is not recorded"})
    if kind == "cartesian":
        if grid is not None and grid.image_size == n0 == n1:
            x = grid.image_axis()
            index = "pred[n, i, j] = eta(x[i], y[j])" if grid.image_index == "xy" else \
                "pred[n, i, j] = eta(x[j], y[i])"
            return ({"x": x, "y": x}, {**attrs, "axes": f"{index}; pixel {grid.image_points} of the square of side "
                                                         f"{grid.image_extent:g} centred at 0"})
        return {}, {**attrs, "grid_note": "the Cartesian grid (box, pixel points) is not recorded: pixel indices only"}
    return {}, {**attrs, "grid_note": "the target's layout is not recorded"}


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What `predict` wrote: the file, the number of samples, one sample's shape and the notes."""

    out: Path
    count: int
    shape: tuple[int, int]
    layout: str
    notes: tuple[str, ...]


def predict(checkpoint, input_path, out, *, split: str | None = None, batch_size: int = 256,
            allow_physics_mismatch: bool = False) -> Prediction:
    """Predict η with the model of `checkpoint` (a checkpoint file or an export) for every sample of
    `input_path` (module docstring) and write `out` (HDF5) atomically: `pred` (N, Nt, Nr) or (N, H, W), `index`
    (N,), the grid's coordinates and attributes (checkpoint, input, split, model type, what it reads, layout,
    grid record, notes, physics check)."""
    model, meta = load_model(checkpoint, with_meta=True)
    inputs = read_inputs(input_path, model, meta, split, batch_size, allow_physics_mismatch)
    with torch.no_grad():
        pred = model.predict_eta(inputs.values, inputs.second, batch_size=batch_size)
    grid, grid_source = training_grid(model.record(), meta)
    if grid is None and inputs.kind == "dataset":
        grid, grid_source = data_grid(read_manifest(input_path)), f"the data set {input_path}"
    coords, grid_attrs = grid_datasets(model, grid)

    def write(fh) -> None:
        with h5py.File(fh, "w") as f:
            f["pred"] = pred.astype(np.float32)
            f["index"] = np.asarray(inputs.index, dtype=np.int64)
            for name, values in coords.items():
                f[name] = values
            f.attrs.update({"checkpoint": str(checkpoint), "model_type": model.model_type, "input": str(input_path),
                            "input_kind": inputs.kind, "split": "all" if split is None else str(split),
                            "model_input": model.raw_input().describe(), "target": model.target,
                            "grid": json.dumps(grid.to_record()) if grid is not None else "",
                            "grid_source": grid_source if grid is not None else "", "notes": "\n".join(inputs.notes),
                            "physics": json.dumps(inputs.physics.record()) if inputs.physics else "", **grid_attrs})

    out = Path(out)
    atomic_write_held(out, write)
    return Prediction(out, len(pred), tuple(pred.shape[1:]), grid_attrs["layout"], tuple(inputs.notes))
