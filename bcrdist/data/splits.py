"""Train/validation/test splits: small JSON files that reference samples of a data set (no data copied).

A split file (`DATA/splits/train.json` by default) holds either `ranges` ([[start, stop), …]) or `indices`
(sorted global sample indices, used for the seeded random split), plus the `dataset_id` of the data set it
was made for, so a split is never silently applied to other data.

The original rule (no shuffling): n_train = int(N·percent), n_test = min(max(n_train, 5000), N − n_train);
train = the first n_train samples, test = the next n_test. The optional validation split is carved from the
end of the training part, so the test part stays exactly the original's.

Existing split files are never replaced silently: writing splits where different ones exist is refused (a
run trained on the old ones could no longer be resumed or compared) unless `overwrite=True`; identical
ones are left as they are. All files of one call are written together: a failure leaves the old set.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from bcrdist.data.format import Manifest, read_manifest
from bcrdist.fileio import atomic_write_files, os_message, to_json
from bcrdist.errors import ConfigError, DataError, shown

SPLIT_FORMAT = "bcrdist-split"
SPLIT_VERSION = 1
SPLITS_DIR = "splits"
_SPLIT_STREAM = 0x53504C54  # keeps the split's random stream apart from the reader's


def parse_fraction(text: str | float) -> float:
    """A fraction given as a number or as a quotient: "0.8", "4/5", ".3/.4" (= 0.7499999999999999)."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"percent: expected a number or a quotient like 4/5, got {shown(text)}") from None


def original_split_counts(num_samples: int, percent: float) -> tuple[int, int]:
    """(n_train, n_test) of the original rule; e.g. N=20000: 0.8 → (16000, 4000), .3/.4 → (14999, 5001)."""
    if not 0 < percent < 1:
        raise ConfigError(f"percent: must lie in (0, 1), got {percent}")
    n_train = int(num_samples * percent)
    n_test = min(max(n_train, 5000), num_samples - n_train)
    if n_train < 1 or n_test < 1:
        raise ConfigError(f"percent {percent} of {num_samples} samples leaves an empty train or test split "
                          f"({n_train}/{n_test})")
    return n_train, n_test


def make_splits(num_samples: int, percent: float, *, val: int = 0, random: bool = False,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Sorted global indices (int64) per split name: "train", "test" and, when val > 0, "val".

    With `random`, the samples are first permuted with a generator seeded by `seed`; split sizes are those of
    the original rule in both cases.
    """
    n_train, n_test = original_split_counts(num_samples, percent)
    if not 0 <= val < n_train:
        raise ConfigError(f"val: must lie in [0, {n_train}) (the training part), got {val}")
    if random:
        rng = np.random.default_rng(np.random.SeedSequence([_SPLIT_STREAM, int(seed)]))
        order = rng.permutation(num_samples).astype(np.int64)
    else:
        order = np.arange(num_samples, dtype=np.int64)
    parts = {"train": order[:n_train - val], "test": order[n_train:n_train + n_test]}
    if val:
        parts["val"] = order[n_train - val:n_train]
    return {name: np.sort(idx) for name, idx in parts.items()}


def _runs(indices: np.ndarray) -> np.ndarray:
    """Sorted unique indices → (k, 2) array of [start, stop) runs."""
    if len(indices) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = indices[np.r_[0, breaks]]
    stops = indices[np.r_[breaks - 1, len(indices) - 1]] + 1
    return np.stack([starts, stops], axis=1)


def split_document(name: str, indices: np.ndarray, manifest: Manifest, rule: dict) -> dict:
    """The JSON content of a split file: ranges when they are compact, else the index list."""
    runs = _runs(np.asarray(indices, dtype=np.int64))
    doc = {"format": SPLIT_FORMAT, "format_version": SPLIT_VERSION, "name": name,
           "dataset_id": manifest.dataset_id, "dataset_num_samples": manifest.num_samples,
           "num_samples": int(len(indices)), "rule": rule}
    if 2 * len(runs) <= len(indices):
        doc["ranges"] = runs.tolist()
    else:
        doc["indices"] = np.asarray(indices).tolist()
    return doc


def write_splits(path, percent: float, *, val: int = 0, random: bool = False, seed: int = 0,
                 out_dir=None, overwrite: bool = False) -> dict[str, pathlib.Path]:
    """Make the splits of the data set at `path` and write them to `out_dir` (default `path/splits`).

    Split files that exist with other contents are refused (DataError naming the first) unless `overwrite`;
    then a `val.json` this call does not make is removed too (it would overlap the new training split).
    """
    manifest = read_manifest(path)
    parts = make_splits(manifest.num_samples, percent, val=val, random=random, seed=seed)
    out_dir = pathlib.Path(out_dir) if out_dir is not None else manifest.root / SPLITS_DIR
    rule = {"kind": "random" if random else "original", "percent": percent, "val": val,
            "seed": seed if random else None}
    docs = {out_dir / f"{name}.json": split_document(name, idx, manifest, rule) for name, idx in parts.items()}
    stale = [out_dir / f"{name}.json" for name in ("train", "val", "test") if name not in parts]
    changed = {p: doc for p, doc in docs.items() if _existing(p) != doc}
    clashes = [p for p in changed if p.exists()] + [p for p in stale if p.exists()]
    if clashes and not overwrite:
        raise DataError(f"{clashes[0]}: holds another split ({_describe(clashes[0])}); a run made with it could "
                        "not be resumed or compared; pass --overwrite to replace the splits, or --out DIR")
    try:
        if changed:
            atomic_write_files({p: (to_json(doc) + "\n").encode() for p, doc in changed.items()})
        for p in stale if overwrite else []:
            p.unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(os_message(exc)) from None
    return {p.stem: p for p in docs}


def _existing(path: pathlib.Path):
    """The parsed JSON of an existing split file (None when absent or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def _describe(path: pathlib.Path) -> str:
    doc = _existing(path)
    if not isinstance(doc, dict):
        return "unreadable"
    return (f"{shown(doc.get('num_samples'))} samples of data set {shown(doc.get('dataset_id'), quotes=False)}, "
            f"rule {shown(doc.get('rule'))}")


def split_path(manifest: Manifest, split: str | pathlib.Path) -> pathlib.Path:
    """`split` is a name ("train" → DATA/splits/train.json) or a path to a split file."""
    text = str(split)
    if text.endswith(".json") or "/" in text or isinstance(split, pathlib.Path):
        return pathlib.Path(split)
    return manifest.root / SPLITS_DIR / f"{text}.json"


def load_split(manifest: Manifest, split: str | pathlib.Path | np.ndarray | None) -> np.ndarray:
    """Sorted unique global indices (int64) of `split`: a name, a split file, or an index array (sorted,
    unique); all samples when `split` is None."""
    if split is None:
        return np.arange(manifest.num_samples, dtype=np.int64)
    if isinstance(split, np.ndarray):
        return _check_indices(np.asarray(split, dtype=np.int64).reshape(-1), manifest, "split indices")
    path = split_path(manifest, split)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found (make one with `bcrdist split {manifest.root}`)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable split file: {exc}") from None
    except RecursionError:
        raise DataError(f"{path}: unreadable split file: nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise DataError(f"{path}: not a {SPLIT_FORMAT} file")
    if doc.get("dataset_id") != manifest.dataset_id:
        raise DataError(f"{path}: made for data set {shown(doc.get('dataset_id'), quotes=False)}, but "
                        f"{manifest.root} is {manifest.dataset_id}; re-run `bcrdist split`")
    try:
        count = doc.get("num_samples")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise ValueError(f"num_samples must be an integer, got {shown(count)}")
        if "ranges" in doc:
            runs = _integers(doc["ranges"], "ranges")
            if runs.size and (runs.ndim != 2 or runs.shape[1] != 2):
                raise ValueError(f"ranges: expected [start, stop) pairs, got {shown(doc['ranges'])}")
            runs = runs.reshape(-1, 2)
            # every range inside the data set and after the previous one, before the index array is made: a
            # split file then never asks for more memory than the data set's own size
            lengths = runs[:, 1] - runs[:, 0]
            if (lengths < 0).any():
                raise ValueError("a range has stop < start")
            outside = (runs[:, 0] < 0) | (runs[:, 1] > manifest.num_samples)
            if outside.any():
                start, stop = runs[outside][0]
                raise ValueError(f"range [{start}, {stop}) lies outside the data set's samples "
                                 f"[0, {manifest.num_samples})")
            if (runs[1:, 0] < runs[:-1, 1]).any():
                raise ValueError("ranges must be sorted and disjoint")
            indices = (np.repeat(runs[:, 0] - np.cumsum(lengths) + lengths, lengths)
                       + np.arange(int(lengths.sum()), dtype=np.int64))
        else:
            indices = _integers(doc["indices"], "indices").reshape(-1)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed split ({exc})") from None
    _check_indices(indices, manifest, path)
    if count is not None and count != len(indices):
        raise DataError(f"{path}: num_samples {count} differs from the {len(indices)} listed")
    return indices


def _integers(value, key: str) -> np.ndarray:
    """The integers of a split file's `key` (a list, of pairs for ranges) as int64; ValueError for anything
    else (a fraction, a string, an integer beyond int64)."""
    array = np.asarray(value)
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind != "i":
        raise ValueError(f"{key}: expected integers, got {shown(value)}")
    return array.astype(np.int64, copy=False)


def _check_indices(indices: np.ndarray, manifest: Manifest, where) -> np.ndarray:
    if len(indices) == 0:
        raise DataError(f"{where}: the split is empty")
    if (np.diff(indices) <= 0).any():
        raise DataError(f"{where}: indices must be sorted and unique")
    if indices[0] < 0 or indices[-1] >= manifest.num_samples:
        raise DataError(f"{where}: indices outside [0, {manifest.num_samples})")
    return indices


def list_splits(path) -> list[pathlib.Path]:
    """Split files stored in a data set's `splits/` directory."""
    return sorted((read_manifest(path).root / SPLITS_DIR).glob("*.json"))
