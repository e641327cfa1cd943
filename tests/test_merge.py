"""`bcrdist merge` (`bcrdist.data.merge`): a sharded data set written back into one HDF5 file."""

import h5py
import numpy as np

from bcrdist.cli import main
from bcrdist.data.format import write_manifest, write_shard


def test_merge_samples_layout_of_generated_data(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [{"measure": rng.random((n, 3, 4)).astype("f4"), "farfield": rng.random((n, 2)).astype("c8")}
              for n in (4, 3)]
    infos = [write_shard(tmp_path / "ds", i, first, a) for i, (first, a) in enumerate(zip((0, 4), arrays))]
    write_manifest(tmp_path / "ds", infos, provenance={"tool": "generator"})
    assert main(["merge", str(tmp_path / "ds"), str(tmp_path / "all.h5")]) == 0
    with h5py.File(tmp_path / "all.h5") as fh:
        for name in ("measure", "farfield"):
            np.testing.assert_array_equal(fh[name][()], np.concatenate([a[name] for a in arrays]))
