"""A data set's discretisation-error record: the estimate of `bcrdist.physics.discretisation` on a few samples,
stored in the manifest under `discretisation` by `bcrdist generate` (`--accuracy-samples K`, default 4) and by
`bcrdist verify --physics`, and printed by `bcrdist stats` and `bcrdist verify`.

The record (JSON):
    n, n_fine                 the data set's grid and the finer one (2n)
    directions                distinct directions of the far fields compared (obs × inc, each)
    requested                 the K asked for
    samples                   indices of the fine-grid estimate (K, or all samples when fewer)
    far_field_error_fine      {median, max, per_sample}: ‖F_n − F_2n‖/‖F_2n‖
    mie_samples               indices of the single-disc samples compared with the Mie series (may be empty)
    far_field_error_mie       {median, max, per_sample}: ‖F_n − F_Mie‖/‖F_Mie‖, or null without such samples
    seconds                   the wall time of the computation
Under MPI the samples are shared among the ranks and gathered; each sample's numbers depend only on
(config, index), so the record (but `seconds`) is the same for any number of ranks. Errors are stored to 6
significant digits.
"""

from __future__ import annotations

import time

import numpy as np

from bcrdist.config import from_dict
from bcrdist.data.format import read_manifest, update_manifest
from bcrdist.distributed.mpi import gather_or_raise, world
from bcrdist.errors import BcrdistError, ConfigError, DataError
from bcrdist.physics.generation_config import GenerationConfig

DEFAULT_SAMPLES = 4
RECORD_KEY = "discretisation"


def check_sample_count(count, key: str = "--accuracy-samples") -> int:
    """`count` as a non-negative int, else ConfigError naming `key`."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"{key}: expected an integer ≥ 0 (0 skips the discretisation-error estimate), got {count}")
    return count


def _digits(value: float) -> float:
    return float(f"{value:.6g}")


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": _digits(float(np.median(values))), "max": _digits(max(values)),
            "per_sample": [_digits(v) for v in values]}


def compute_record(cfg: GenerationConfig, count: int, *, comm=None) -> dict | None:
    """The record of the module docstring for `count` samples of `cfg` (None when `count` is 0); collective
    under MPI (every rank returns it, or raises the first rank's error)."""
    # the solver and the Mie series (SciPy) are imported here: `describe` and the checks, which `bcrdist stats`
    # and `bcrdist verify` use, do not need them
    from bcrdist.physics.discretisation import FINE_FACTOR, DiscretisationCheck
    from bcrdist.physics.solver import ConvergenceError

    check_sample_count(count)
    if count == 0:
        return None
    comm = comm if comm is not None else world()
    start = time.monotonic()
    check = DiscretisationCheck(cfg)
    fine, mie = check.chosen_samples(count)
    todo = sorted(set(fine) | set(mie))
    mine, error = {}, None
    try:
        for index in todo[comm.rank::comm.size]:
            try:
                mine[index] = check.errors(index, fine=index in fine, mie=index in mie)
            except ConvergenceError as exc:
                raise ConvergenceError(f"discretisation estimate, sample {index} (n = {cfg.n} and "
                                       f"{FINE_FACTOR * cfg.n}): {exc}; raise solver.max_iterations, or pass "
                                       "--accuracy-samples 0") from None
    except Exception as exc:  # noqa: BLE001 (every rank must hear of it, see gather_or_raise)
        error = exc
    results = {}
    for part in gather_or_raise(comm, mine, error):
        results.update(part)
    mie = [i for i in mie if results[i][1] is not None]
    return {"n": cfg.n, "n_fine": FINE_FACTOR * cfg.n, "directions": len(check.angles), "requested": count,
            "samples": fine, "far_field_error_fine": _summary([results[i][0] for i in fine]),
            "mie_samples": mie, "far_field_error_mie": _summary([results[i][1] for i in mie]),
            "seconds": round(time.monotonic() - start, 3)}


def _percent(value: float) -> str:
    shown = 100 * value
    return f"{shown:.2g} %" if shown >= 1e-3 else f"{shown:.1e} %"


def describe(record: dict | None) -> str:
    """One line saying the record, e.g. "far-field discretisation error (n=32 vs 64, 4 samples): median 3.3 %,
    max 7.6 %; vs Mie (2 single-disc samples): median 3.5 %, max 4.1 %"."""
    if not record:
        return "far-field discretisation error: not recorded (`bcrdist verify --physics DATA` records it)"
    fine = record["far_field_error_fine"]
    text = (f"far-field discretisation error (n={record['n']} vs {record['n_fine']}, {len(record['samples'])} "
            f"samples): median {_percent(fine['median'])}, max {_percent(fine['max'])}")
    mie = record.get("far_field_error_mie")
    if mie:
        text += (f"; vs Mie ({len(record['mie_samples'])} single-disc samples): median {_percent(mie['median'])}, "
                 f"max {_percent(mie['max'])}")
    return text


def generation_config(manifest) -> GenerationConfig:
    """The config `bcrdist generate` recorded in `manifest`, checked to still name the same data (DataError)."""
    provenance = manifest.provenance
    recorded = provenance.get("config")
    if provenance.get("tool") != "bcrdist generate" or not isinstance(recorded, dict):
        raise DataError(f"{manifest.path}: not made by `bcrdist generate` (no generation config recorded); the "
                        "discretisation error needs the scatterers' analytic description")
    try:
        cfg = from_dict(GenerationConfig, recorded, "provenance.config")
    except ConfigError as exc:
        raise DataError(f"{manifest.path}: {exc}") from None
    if cfg.sha256() != provenance.get("config_sha256"):
        raise DataError(f"{manifest.path}: the recorded generation config no longer hashes to the data set's "
                        f"config_sha256 {str(provenance.get('config_sha256'))[:12]}… (made by another bcrdist "
                        "version?); its discretisation error cannot be re-computed")
    return cfg


def store_record(path, count: int, *, comm=None) -> dict | None:
    """Compute the record for `count` samples of the data set at `path` and write it into its manifest
    (atomically, rank 0; only while the manifest still describes the same data set); every rank returns it.
    `count` 0 computes and writes nothing and returns the record already there (or None)."""
    check_sample_count(count)
    comm = comm if comm is not None else world()
    manifest = read_manifest(path)
    if count == 0:
        return manifest.raw.get(RECORD_KEY)
    record = compute_record(generation_config(manifest), count, comm=comm)
    error = None
    if comm.rank == 0:
        try:
            update_manifest(path, expect_id=manifest.dataset_id, **{RECORD_KEY: record})
        except BcrdistError as exc:
            error = exc
    gather_or_raise(comm, None, error)
    return record
