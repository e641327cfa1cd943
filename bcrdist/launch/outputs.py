"""When is a pipeline step's output complete? Each function reads what a command wrote and returns None when
it validates, else one line saying what is missing or wrong. Parsing is not enough: a data set's shards must
all be there at the sizes its manifest records, statistics must cover every sample, splits must belong to the
data set as it is now, a training must have stopped for good and left its best checkpoint, and an evaluation or
baseline must score every sample of the split it names, at the noise level asked, with finite errors of every
metric asked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bcrdist.data.format import read_manifest
from bcrdist.data.splits import load_split
from bcrdist.data.verify import statistics_problems, check_shard
from bcrdist.errors import BcrdistError


def read_json(path: Path) -> tuple[dict | None, str | None]:
    """(document, None), or (None, why it is not a JSON object)."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, f"{path}: missing"
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{path}: unreadable ({type(exc).__name__})"
    return (doc, None) if isinstance(doc, dict) else (None, f"{path}: not a JSON object")


def dataset_problem(data: Path) -> str | None:
    """The data set's manifest reads and every shard it lists is there, at its recorded size and shapes."""
    try:
        manifest = read_manifest(data)
    except BcrdistError as exc:
        return str(exc)
    for shard in range(len(manifest.shards)):
        found = check_shard(manifest, shard, checksums=False, scan=False)
        if found:
            return found[0]
    return None


def statistics_problem(data: Path) -> str | None:
    problem = dataset_problem(data)
    if problem:
        return problem
    manifest = read_manifest(data)
    if not manifest.statistics:
        return f"{manifest.path}: no statistics yet"
    stale = statistics_problems(manifest)
    return stale[0] if stale else None


def splits_problem(data: Path, names: tuple[str, ...] = ("train", "val", "test")) -> str | None:
    problem = dataset_problem(data)
    if problem:
        return problem
    manifest = read_manifest(data)
    for name in names:
        try:
            load_split(manifest, name)
        except BcrdistError as exc:
            return str(exc)
    return None


def split_size(data: Path, split: str) -> int | None:
    """Samples in `split` of the data set ('all': every sample); None when it cannot be read yet."""
    try:
        manifest = read_manifest(data)
        return manifest.num_samples if split == "all" else len(load_split(manifest, split))
    except BcrdistError:
        return None


def training_problem(run: Path) -> str | None:
    """results.json says why the run stopped and the best checkpoint is there (a run stopped by preemption or
    interrupted writes no results.json)."""
    doc, problem = read_json(run / "results.json")
    if problem:
        return problem
    if not doc.get("stop_reason") or not isinstance(doc.get("steps"), int) or doc["steps"] < 1:
        return f"{run / 'results.json'}: no stop_reason or steps (an unfinished run)"
    best = run / "checkpoints" / "best.pt"
    if not best.is_file() or best.stat().st_size == 0:
        return f"{best}: missing or empty"
    return None


def scores_problem(path: Path, *, data: Path, split: str, noise: float, metrics: list[str],
                   checkpoint: Path | None = None) -> str | None:
    """An evaluation's metrics.json or a baseline's JSON: made on `data`'s `split` at `noise`, every metric of
    `metrics` with a finite mean over every sample of the split, and (an evaluation) after `checkpoint` was
    written: a network trained again makes its old scores stale."""
    doc, problem = read_json(path)
    if problem:
        return problem
    if checkpoint is not None and checkpoint.is_file() and checkpoint.stat().st_mtime > Path(path).stat().st_mtime:
        return f"{path}: older than {checkpoint} (the network was trained again)"
    if str(doc.get("split")) != split or Path(str(doc.get("data"))) != Path(data):
        return f"{path}: scores {doc.get('data')} split {doc.get('split')}, expected {data} split {split}"
    if not isinstance(doc.get("noise"), (int, float)) or not math.isclose(float(doc["noise"]), noise,
                                                                         abs_tol=1e-12):
        return f"{path}: noise {doc.get('noise')}, expected {noise:g}"
    expected = split_size(data, split)
    found = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
    for name in metrics:
        entry = found.get(name)
        if not isinstance(entry, dict):
            return f"{path}: no metric {name!r} (it has {sorted(found)}; 'weighted' exists on polar targets only)"
        mean, count = entry.get("mean"), entry.get("count")
        if not isinstance(mean, (int, float)) or not math.isfinite(mean):
            return f"{path}: metric {name!r} has no finite mean ({mean})"
        if expected is not None and count != expected:
            return f"{path}: metric {name!r} covers {count} samples, the split has {expected}"
    return None
