"""Random files in the two original layouts, for tests, benchmarks and trying the tools without real data.

A symbolic link at the path is refused (`open_nofollow`), not written through."""

from __future__ import annotations

import pathlib

import h5py
import numpy as np

from bcrdist.fileio import open_nofollow


def make_fan_file(path, num_samples: int, *, ns: int = 16, nd: int = 8, nt: int = 16, nr: int = 6,
                  measure2: bool = True, dtype="float32", coe_dtype="float64", seed: int = 0,
                  slab: int = 256) -> pathlib.Path:
    """Fan's `{prefix}.h5`: `measure` (N, ns, nd), `coe` (N, nt, nr), optional `measure2` (N, ns, nd).

    Contiguous datasets (h5py's default, as the original files), written in slabs of `slab` samples so large
    files need little memory. `coe` defaults to float64, which mixes dtypes as some original files do.
    """
    rng = np.random.default_rng(seed)
    path = pathlib.Path(path)
    with open(open_nofollow(path, "truncate"), "r+b") as raw, h5py.File(raw, "w") as fh:
        names = {"measure": ((ns, nd), dtype), "coe": ((nt, nr), coe_dtype)}
        if measure2:
            names["measure2"] = ((ns, nd), dtype)
        dsets = {name: fh.create_dataset(name, shape=(num_samples, *shape), dtype=dt)
                 for name, (shape, dt) in names.items()}
        for start in range(0, num_samples, slab):
            stop = min(num_samples, start + slab)
            for name, dset in dsets.items():
                dset[start:stop] = rng.standard_normal((stop - start, *dset.shape[1:])).astype(dset.dtype)
        fh.attrs["description"] = "synthetic Fan-layout file"
        fh.attrs["ns"] = np.int32(ns)
    return path


def make_farfield_file(path, num_samples: int, *, side: int = 10, image_side: int = 8, imag: bool = True,
                       seed: int = 0) -> pathlib.Path:
    """The far-field/image `.hdf5`: `farfield.real`, `farfield.imag`, `image`, each (side², N) float32."""
    rng = np.random.default_rng(seed)
    path = pathlib.Path(path)
    with open(open_nofollow(path, "truncate"), "r+b") as raw, h5py.File(raw, "w") as fh:
        fh["farfield.real"] = rng.standard_normal((side * side, num_samples)).astype("float32")
        if imag:
            fh["farfield.imag"] = rng.standard_normal((side * side, num_samples)).astype("float32")
        fh.create_dataset("image", data=rng.random((image_side * image_side, num_samples)).astype("float32"),
                          chunks=(image_side, min(num_samples, 64)), compression="gzip")
        fh["image"].attrs["grid"] = "cartesian"
    return path
