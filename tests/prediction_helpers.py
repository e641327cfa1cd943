"""Tiny data sets with grid records, one per layout, and checkpoints of every registered network on them (random
weights and normalisation): what `bcrdist predict` and `bcrdist evaluate` are compared on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import torch

from bcrdist.data.format import read_manifest, write_manifest, write_shard
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.models import BCNN, BCRNet, CNN, CNNB, NIO, StudyBCNN
from bcrdist.models.checkpoint import save_model
from bcrdist.models.scattering import ScatteringModel
from bcrdist.physics.born_definition import BornDefinition
from bcrdist.physics.layout import GridInfo, columns_from_samples

N = 20                      # samples of every data set: test split = the last 10
SIDE = 12                   # directions and image side of the Cartesian far-field layout
GRIDS = {
    # Fan's layout: measure (16, 8) → coe (16, 6)
    "measure": GridInfo(k=8.0, angles="periodic", n_obs=16, n_inc=16, target="polar", polar_nt=16, polar_nr=6,
                        polar_radius=0.5, farfield_sign=-1),
    # the far field (12, 12) complex → image (12, 12), the port's grid
    "cartesian": GridInfo(k=16.0, angles="endpoint", n_obs=SIDE, n_inc=SIDE, target="cartesian", image_size=SIDE,
                          image_extent=2.0, image_points="nodes", farfield_sign=1),
    # the far field (8, 8) complex → coe (8, 4)
    "polar_far": GridInfo(k=6.0, angles="periodic", n_obs=8, n_inc=8, target="polar", polar_nt=8, polar_nr=4,
                          polar_radius=0.5, farfield_sign=-1),
}


def arrays(layout: str, n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if layout == "measure":
        return {"measure": rng.standard_normal((n, 16, 8)).astype(np.float32),
                "measure_imag": rng.standard_normal((n, 16, 8)).astype(np.float32),
                "coe": np.abs(rng.standard_normal((n, 16, 6))).astype(np.float32)}
    side, target = (SIDE, "image") if layout == "cartesian" else (8, "coe")
    far = (rng.standard_normal((n, side, side)) + 1j * rng.standard_normal((n, side, side))).astype(np.complex64)
    shape = (side, side) if layout == "cartesian" else (8, 4)
    return {"farfield": far, target: np.abs(rng.standard_normal((n, *shape))).astype(np.float32)}


def write_dataset(root: Path, layout: str, grid: GridInfo | None = None, n: int = N, seed: int = 0) -> Path:
    """A data set of `layout` in 3 shards with statistics, its grid record (`grid`, default GRIDS[layout]) and a
    50 % split (train: the first n/2 samples, test: the rest)."""
    data = arrays(layout, n, seed)
    infos = []
    for shard, first in enumerate(range(0, n, 7)):
        infos.append(write_shard(root, shard, first, {k: v[first:first + 7] for k, v in data.items()}))
    write_manifest(root, infos, provenance={"tool": "tests/prediction_helpers.py", "seed": seed},
                   grid=(grid or GRIDS[layout]).to_record())
    store_statistics(root)
    write_splits(root, 0.5)
    return root


def born(layout: str) -> BornDefinition:
    grid = GRIDS[layout]
    return BornDefinition(grid=grid, method="lsqr" if grid.cartesian else "tikhonov",
                          parameter=1.0 if grid.cartesian else 1e-2)


def with_born(net, layout: str):
    definition = born(layout)
    net.set_born(definition, {"parameter": definition.parameter})
    return net


def farfield_model(net, target: str = "image", both: bool = True, normalization: str = "minmax") -> ScatteringModel:
    return ScatteringModel(net, antipodal=False, use_imag=both, input="farfield.real", target=target,
                           normalization=normalization)


# (the data set's layout, the model): every registered network, and each layout a network reads
CASES = {
    "bcrnet-measure": ("measure", lambda: ScatteringModel(
        BCRNet(n_input=(16, 16), n_output=(16, 6), alpha=3, n_cnn=1, n_cnn3=2), antipodal=True, use_imag=True)),
    "bcrnet-farfield-real": ("cartesian", lambda: farfield_model(
        BCRNet(n_input=(SIDE, SIDE), n_output=(SIDE, SIDE), alpha=2, n_cnn=1, n_cnn3=1), both=False,
        normalization="rms")),
    "bcnn-polar": ("polar_far", lambda: farfield_model(
        with_born(BCNN(n_input=[8, 16], n_output=[8, 4], channels=2, depth=1, convs=1, periodic_rows=True),
                  "polar_far"), target="coe", normalization="rms")),
    "bcnn-cartesian": ("cartesian", lambda: farfield_model(
        with_born(BCNN(n_input=[SIDE, 2 * SIDE], n_output=[SIDE, SIDE], channels=2, depth=1, convs=1), "cartesian"))),
    "cnn": ("cartesian", lambda: farfield_model(CNN([SIDE, 2 * SIDE], [SIDE, SIDE], channels=[4, 4], widths=[8]))),
    "cnnb": ("cartesian", lambda: farfield_model(
        with_born(CNNB(n_input=[SIDE, 2 * SIDE], n_output=[SIDE, SIDE], channels=[6, 5], widths=[7]), "cartesian"))),
    "study_bcnn": ("cartesian", lambda: farfield_model(
        with_born(StudyBCNN(n_input=[SIDE, 2 * SIDE], n_output=[SIDE, SIDE], channels=[6, 5], widths=[7]),
                  "cartesian"))),
    "nio": ("cartesian", lambda: farfield_model(NIO([SIDE, 2 * SIDE], [SIDE, SIDE], trunk_layers=2, width=8,
                                                    n_basis=4, fno_width=4, fno_modes=4, fno_layers=1))),
}


def model_of(case: str) -> ScatteringModel:
    """The case's model with random weights and normalisation (seeded by the case)."""
    return randomised(CASES[case][1], sorted(CASES).index(case))


def randomised(build, seed: int) -> ScatteringModel:
    """The model `build()` makes after seeding torch with `seed`, with random weights (none left at an
    initialisation of zeros) and normalisation, in eval mode."""
    torch.manual_seed(seed)
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    nd = model.data_input[1]
    model.set_normalization(0.1 * torch.randn(nd), 0.5 + torch.rand(nd), 2.5, out_gain=0.7, out_bias=0.05)
    return model.eval()


def save_checkpoint(path: Path, model: ScatteringModel, data: Path, grid: GridInfo | None | bool = True) -> Path:
    """`model` as a model checkpoint of a run on the data set `data`; its provenance records the data's grid
    (`grid` True), another grid, or none (None)."""
    manifest = read_manifest(data)
    recorded = manifest.grid if grid is True else grid
    return save_model(path, model, config={"seed": 0, "data": {"path": str(data)}},
                      provenance={"dataset_id": manifest.dataset_id,
                                  "dataset_grid": recorded.to_record() if recorded else None})


def split_samples(data: Path) -> dict[str, np.ndarray]:
    """Every dataset of the test split of `data` (the last N/2 samples), in index order."""
    parts: dict[str, list] = {}
    for shard in sorted(data.glob("shard-*.h5")):
        with h5py.File(shard, "r") as fh:
            for name in fh:
                parts.setdefault(name, []).append(fh[name][()])
    return {name: np.concatenate(v)[N // 2:] for name, v in parts.items()}


def port_file(path: Path, farfield: np.ndarray, image: np.ndarray, imag: bool = True) -> Path:
    """The PyTorch port's `.hdf5` layout: `farfield.real`, `farfield.imag`, `image` stored (M, N) by columns."""
    with h5py.File(path, "w") as fh:
        fh["farfield.real"] = columns_from_samples(farfield.real)
        if imag:
            fh["farfield.imag"] = columns_from_samples(farfield.imag)
        fh["image"] = columns_from_samples(image)
    return path


def other_grid(layout: str, **changes) -> GridInfo:
    return dataclasses.replace(GRIDS[layout], **changes)
