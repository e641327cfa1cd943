"""Are these data the physics a model was trained on? The training data's grid a checkpoint records, the grid a
data set records, and the one-line refusal when they differ (`bcrdist evaluate`, `bcrdist predict`).

The physics of a data set is its grid (`bcrdist.physics.layout.GridInfo`): the wavenumber k, the angle grid and
its sizes (n_obs, n_inc), the target's layout (polar: Nt, Nr and the radius R; Cartesian: its size, the box side
`image_extent`, pixel points and index order) and the far field's sign convention. A network has learnt the
inverse map of one such grid; on data of another k or box it returns confident nonsense (a k = 4π, box 1 model
on k = 16, box 2 data: relative L2 1.93), which no metric flags as a mistake of the user. So the two records are
compared before any sample is read.

The checkpoint's side, the first of:
  provenance.dataset_grid   the training data's grid, recorded by the trainer (`run_provenance`)
  the Born layer's grid     the definition of a Born-based network's layer (`model_config.net.*.grid`)
  the training data set     `config.data.path`, while its manifest is there with the id `provenance.dataset_id`
The data's side: the manifest's grid record, else the generator's config of a data set `bcrdist generate` made
before grid records. Either side may record nothing (Fan's original files): then nothing is compared, and the
result says so. A sign recorded as unknown (None) on either side is not compared.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from bcrdist.data.format import read_manifest
from bcrdist.data.grid import grid_from_manifest
from bcrdist.errors import ConfigError, DataError
from bcrdist.models.export import born_grid
from bcrdist.physics.layout import GridInfo

ALLOW_FLAG = "--allow-physics-mismatch"


def data_grid(manifest) -> GridInfo | None:
    """The grid a data set records (`manifest`: a `bcrdist.data.format.Manifest`): its grid record, or one
    derived from the generator's config (`k_over_pi`, …) in its provenance; None when it records neither."""
    if manifest.grid is not None:
        return manifest.grid
    if "k_over_pi" not in ((manifest.provenance or {}).get("config") or {}):
        return None
    try:
        return grid_from_manifest(manifest)
    except (DataError, ConfigError):
        # a generator config without the datasets a grid is read from (no far field): nothing recorded
        return None


def training_grid(record: dict, meta: dict) -> tuple[GridInfo | None, str]:
    """(the grid of the data the model was trained on, where it was read), or (None, why none is known).

    record: the model's `ScatteringModel.record()`; meta: {"config", "provenance"} of its checkpoint or export
    (`load_model(..., with_meta=True)`)."""
    provenance = meta.get("provenance") or {}
    if isinstance(provenance.get("dataset_grid"), dict):
        return GridInfo.from_record(provenance["dataset_grid"], "provenance.dataset_grid"), \
            "the training data's grid in the checkpoint"
    born = born_grid(record.get("net") or {})
    if born is not None:
        return GridInfo.from_record(born, "model_config: Born layer grid"), "the grid of the model's Born layer"
    path = ((meta.get("config") or {}).get("data") or {}).get("path")
    dataset_id = provenance.get("dataset_id")
    if path and dataset_id and (Path(path) / "manifest.json").is_file():
        try:
            manifest = read_manifest(path)
        except DataError:
            return None, f"the training data set {path} is unreadable"
        if manifest.dataset_id == dataset_id:
            grid = data_grid(manifest)
            if grid is not None:
                return grid, f"the training data set {path}"
            return None, f"the training data set {path} records no grid"
        return None, f"{path} now holds another data set than the training data"
    return None, "the checkpoint records no grid of its training data"


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def differences(trained: GridInfo, data: GridInfo) -> list[tuple[str, object, object]]:
    """(key, training value, data value) for every grid field that differs, in the record's order. Fields of
    the other target kind are not compared (the `target` field differs then), nor an unknown sign."""
    a, b = trained.to_record(), data.to_record()
    out = []
    for key in a:
        if key in ("version", "conventions") or key not in b:
            continue
        if key == "farfield_sign" and None in (a[key], b[key]):
            continue
        if not _same(a[key], b[key]):
            out.append((key, a[key], b[key]))
    return out


def _value(v) -> str:
    return f"{v:.10g}" if isinstance(v, float) else str(v)


@dataclasses.dataclass(frozen=True)
class PhysicsCheck:
    """The outcome of `check_physics`: whether both sides recorded a grid (`compared`), where the training
    grid was read (`source`, or why none is known), the differing fields and whether they were accepted."""

    compared: bool
    source: str
    differing: tuple[tuple[str, object, object], ...] = ()
    allowed: bool = False

    def summary(self) -> str:
        """'k 16 (training data: 12.56637061), image_extent 2 (training data: 1)'."""
        return ", ".join(f"{key} {_value(have)} (training data: {_value(want)})" for key, want, have in self.differing)

    def record(self) -> dict:
        """JSON for metrics.json and the attributes of an output file."""
        return {"compared": self.compared, "source": self.source, "allowed": self.allowed,
                "differences": {key: {"training": want, "data": have} for key, want, have in self.differing}}


def check_physics(record: dict, meta: dict, manifest, where: str, allow: bool = False) -> PhysicsCheck:
    """Compare the training data's grid of a model (`record`, `meta`: as `training_grid`) with the grid of the
    data set `manifest`; DataError, one line starting with `where` and naming both values of each differing
    field, unless `allow` (the user's `--allow-physics-mismatch`), which returns the differences instead."""
    trained, source = training_grid(record, meta)
    data = data_grid(manifest)
    if trained is None or data is None:
        why = source if trained is None else f"{manifest.root} records no grid"
        return PhysicsCheck(compared=False, source=why)
    check = PhysicsCheck(compared=True, source=source, differing=tuple(differences(trained, data)), allowed=allow)
    if check.differing and not allow:
        raise DataError(f"{where}: the data's physics differ from the model's training data ({source}): "
                        f"{check.summary()}; use data made like the training data, or pass {ALLOW_FLAG} to "
                        f"run on them anyway")
    return check
