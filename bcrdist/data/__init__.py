"""Sharded HDF5 data sets: format and writers, splits, statistics, and rank-aware readers for DDP.

    from bcrdist.data import ShardedDataset, Preprocess
    ds = ShardedDataset("data/scafull", split="train", rank=rank, world_size=world, batch_size=32,
                        preprocess=Preprocess(input="measure", target="coe", antipodal=True))
    loader = ds.loader(pin_memory=True)       # prefetch thread; set_epoch(e) before each epoch

See docs/data-format.md. Names are imported lazily, so the writer API (`bcrdist.data.format`) and the
command-line tools do not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ShardedDataset": "bcrdist.data.dataset",
    "ShardedLoader": "bcrdist.data.loader",
    "epoch_order": "bcrdist.data.order",
    "Preprocess": "bcrdist.data.preprocess",
    "write_shard": "bcrdist.data.format",
    "existing_shard": "bcrdist.data.format",
    "write_manifest": "bcrdist.data.format",
    "read_manifest": "bcrdist.data.format",
    "ShardWriter": "bcrdist.data.format",
    "make_splits": "bcrdist.data.splits",
    "write_splits": "bcrdist.data.splits",
    "load_split": "bcrdist.data.splits",
    "compute_statistics": "bcrdist.data.stats",
    "store_statistics": "bcrdist.data.stats",
    "shard_file": "bcrdist.data.convert",
    "merge_dataset": "bcrdist.data.merge",
    "verify_dataset": "bcrdist.data.verify",
    "generate": "bcrdist.data.generate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bcrdist.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
