"""The order of an epoch over a split of a sharded data set.

Order of an epoch (a function of seed, epoch, the split and the two block parameters only — never of the
rank, the world size, the worker count or the batch size):

1. the split's samples, in index order, are cut into blocks of `block_size` consecutive samples;
2. the blocks are permuted by a generator seeded with (seed, epoch);
3. consecutive runs of `shuffle_blocks` blocks form shuffle windows; the samples inside each window are
   permuted with the same generator.
"""

from __future__ import annotations

import numpy as np

SHUFFLE_STREAM = 0x53485546
BLOCK_BYTES = 4 << 20


def default_block_size(sample_nbytes: int) -> int:
    """Largest power of two ≤ 4 MiB / bytes per sample, between 1 and 1024."""
    n = max(1, BLOCK_BYTES // max(1, sample_nbytes))
    return int(min(1024, 1 << (n.bit_length() - 1)))


def epoch_order(num_samples: int, *, seed: int, epoch: int, shuffle: bool, block_size: int,
                shuffle_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, window) of one epoch, both (num_samples,) int64.

    positions[k] is the position in the split (0 … N−1) of the k-th sample of the epoch's global order;
    window[k] is the shuffle window that sample belongs to (windows are read as a unit).
    """
    n, bs = int(num_samples), int(block_size)
    nblocks = -(-n // bs)
    if not shuffle:
        pos = np.arange(n, dtype=np.int64)
        return pos, pos // (bs * shuffle_blocks)
    rng = np.random.default_rng(np.random.SeedSequence([SHUFFLE_STREAM, int(seed), int(epoch)]))
    blocks = rng.permutation(nblocks).astype(np.int64)
    starts = blocks * bs
    lengths = np.minimum(bs, n - starts)
    block_window = np.arange(nblocks, dtype=np.int64) // shuffle_blocks
    # block order → sample positions, without a Python loop: the k-th sample of block b is starts[b] + k
    pos = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(n, dtype=np.int64)
    window = np.repeat(block_window, lengths)
    within = np.lexsort((rng.random(n), window))
    return pos[within], window
