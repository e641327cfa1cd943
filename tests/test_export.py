"""Portable weights (`bcrdist export`, `bcrdist.models.export`): every registered network round-trips from a
checkpoint through model.safetensors + model.json to bit-identical predictions, loading never unpickles, the
files read with safetensors and json alone, bad inputs are one line with nothing written, a changed export is
refused naming the file, and `bcrdist predict` takes an export wherever it takes a checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import bcrdist
from bcrdist.cli.main import main
from bcrdist.errors import DataError
from bcrdist.models import BCNN, BCRNet, CNN, CNNB, NIO, StudyBCNN, network_class, network_names
from bcrdist.models.checkpoint import atomic_save, load_model, model_state, save_model
from bcrdist.models.export import EXPORT_FORMAT, RECORD_NAME, WEIGHTS_NAME, export_model
from bcrdist.models.scattering import ScatteringModel
from bcrdist.physics.born_definition import BornDefinition
from bcrdist.physics.layout import GridInfo
from bcrdist.train.state import TRAINING_FORMAT
from prediction_helpers import randomised

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE = 12                   # directions and image side of the Cartesian Born networks
POLAR = (8, 4)              # (Nt = n_obs = n_inc, Nr) of the polar BCNN


def cartesian_born() -> BornDefinition:
    grid = GridInfo(k=16.0, angles="endpoint", n_obs=SIDE, n_inc=SIDE, target="cartesian", image_size=SIDE,
                    image_extent=2.0, image_points="nodes", farfield_sign=1)
    return BornDefinition(grid=grid, method="lsqr", parameter=1.0)


def polar_born() -> BornDefinition:
    nt, nr = POLAR
    grid = GridInfo(k=6.0, angles="periodic", n_obs=nt, n_inc=nt, target="polar", polar_nt=nt, polar_nr=nr,
                    polar_radius=0.5, farfield_sign=-1)
    return BornDefinition(grid=grid, method="tikhonov", parameter=1e-2)


def with_born(net, definition: BornDefinition):
    net.set_born(definition, {"parameter": definition.parameter})
    return net


def farfield_model(net, target: str = "image", normalization: str = "minmax") -> ScatteringModel:
    return ScatteringModel(net, antipodal=False, use_imag=True, input="farfield", target=target,
                           normalization=normalization)


# one tiny model per registered network and per layout where a network's differ (polar / Cartesian targets,
# Fan's measure layout padded to the network's size, rms / min–max normalisation)
CASES = {
    "bcrnet": lambda: ScatteringModel(BCRNet(n_input=(16, 16), n_output=(16, 6), alpha=3, n_cnn=1, n_cnn3=2),
                                      antipodal=True, use_imag=True),
    "bcrnet-padded": lambda: ScatteringModel(BCRNet(n_input=(16, 8), n_output=(16, 6), alpha=2, n_cnn=1,
                                                    n_cnn3=1), antipodal=False, data_input=(15, 8),
                                             data_output=(15, 5)),
    "bcnn-polar": lambda: farfield_model(with_born(BCNN(n_input=[POLAR[0], 2 * POLAR[0]], n_output=list(POLAR),
                                                        channels=2, depth=1, convs=1, periodic_rows=True),
                                                   polar_born()), target="coe", normalization="rms"),
    "bcnn-cartesian": lambda: farfield_model(with_born(BCNN(n_input=[SIDE, 2 * SIDE], n_output=[SIDE, SIDE],
                                                            channels=2, depth=1, convs=1), cartesian_born())),
    "cnn": lambda: farfield_model(CNN([32, 64], [32, 32], channels=[4, 4, 4], widths=[8])),
    "cnnb": lambda: farfield_model(with_born(CNNB(n_input=[SIDE, 2 * SIDE], n_output=[SIDE, SIDE], channels=[6, 5],
                                                  widths=[7]), cartesian_born())),
    "study_bcnn": lambda: farfield_model(with_born(StudyBCNN(n_input=[SIDE, 2 * SIDE], n_output=[SIDE, SIDE],
                                                             channels=[6, 5], widths=[7]), cartesian_born())),
    "nio": lambda: farfield_model(NIO([32, 64], [32, 32], trunk_layers=2, width=8, n_basis=4, fno_width=4,
                                      fno_modes=4, fno_layers=1)),
}


def trained(case: str) -> ScatteringModel:
    """The case's model with random weights (none left at an initialisation of zeros) and normalisation."""
    return randomised(CASES[case], sorted(CASES).index(case))


def checkpoint(tmp_path: Path, case: str = "bcrnet") -> tuple[Path, ScatteringModel]:
    model = trained(case)
    path = save_model(tmp_path / "best.pt", model, config={"seed": 5, "model": {"type": model.model_type}},
                      provenance={"bcrdist_version": bcrdist.__version__, "git_revision": "abc123",
                                  "dataset_id": "ds-1"})
    return path, model


def refuse_pickle(monkeypatch) -> None:
    def refused(*args, **kwargs):
        raise AssertionError("unpickling refused")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                         (torch.serialization, "load")):
        monkeypatch.setattr(module, name, refused)


def test_every_registered_network_is_a_case():
    builtin = {name for name in network_names() if network_class(name).__module__.startswith("bcrdist.")}
    assert builtin and builtin <= {trained(case).model_type for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_gives_identical_predictions_without_unpickling(tmp_path, monkeypatch, case):
    path, model = checkpoint(tmp_path, case)
    done = export_model(path, tmp_path / "export")
    assert sorted(os.listdir(tmp_path / "export")) == [RECORD_NAME, WEIGHTS_NAME]
    assert done.parameters == sum(p.numel() for p in model.parameters()) and done.model_type == model.model_type
    from_checkpoint = load_model(path)
    with monkeypatch.context() as patched:
        refuse_pickle(patched)
        with pytest.raises(DataError, match="unpickling refused"):
            load_model(path)                                # the patch is in force: a checkpoint cannot load
        exported = bcrdist.load_model(tmp_path / "export")
        by_file = [bcrdist.load_model(tmp_path / "export" / name) for name in (RECORD_NAME, WEIGHTS_NAME)]
    x = torch.randn(3, *model.data_input, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = from_checkpoint(x)
        assert torch.equal(exported(x), expected) and all(torch.equal(m(x), expected) for m in by_file)
    assert exported.record() == from_checkpoint.record()
    doc = json.loads((tmp_path / "export" / RECORD_NAME).read_text())
    assert doc["grid"] == (from_checkpoint.record()["net"].get("born") or {}).get("grid")


def test_the_record_describes_the_model_and_where_it_came_from(tmp_path):
    path, model = checkpoint(tmp_path, "bcnn-polar")
    export_model(path, tmp_path / "export")
    doc = json.loads((tmp_path / "export" / RECORD_NAME).read_text())
    assert doc["format"] == EXPORT_FORMAT and doc["format_version"] == 1 and doc["model_type"] == "bcnn"
    assert doc["model_config"] == json.loads(json.dumps(model.record()))
    assert doc["normalization"]["kind"] == "rms" and doc["normalization"]["out_scale"] == 2.5
    assert doc["normalization"]["in_scale"] == model.in_scale.tolist()
    assert doc["layout"] == {"input": "farfield", "target": "coe", "antipodal": False, "use_imag": True,
                             "data_input": [8, 16], "data_output": [8, 4], "network_input": [8, 16],
                             "network_output": [8, 4]}
    assert doc["grid"]["k"] == 6.0 and doc["grid"]["polar_radius"] == 0.5 and "conventions" in doc["grid"]
    provenance = doc["provenance"]
    assert provenance["run"] == {"bcrdist_version": bcrdist.__version__, "git_revision": "abc123",
                                 "dataset_id": "ds-1"}
    assert provenance["checkpoint"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance["checkpoint"]["format"] == "bcrdist-model-2" and doc["config"]["seed"] == 5
    weights = (tmp_path / "export" / WEIGHTS_NAME).read_bytes()
    assert doc["weights"] == {"file": WEIGHTS_NAME, "sha256": hashlib.sha256(weights).hexdigest(),
                              "bytes": len(weights)}
    assert not any(".born." in name for name in doc["tensors"])         # rebuilt from the definition, as on load


READER = """
import json, sys
from safetensors import safe_open
from safetensors.torch import load_file
directory = sys.argv[1]
record = json.load(open(directory + "/model.json"))
tensors = load_file(directory + "/model.safetensors")
with safe_open(directory + "/model.safetensors", "pt") as fh:
    metadata = fh.metadata()
assert not [name for name in sys.modules if name.startswith("bcrdist")]
print(json.dumps({"metadata": metadata, "type": record["model_type"],
                  "tensors": {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                              for k, t in tensors.items()}}))
"""


def test_the_export_reads_with_safetensors_and_json_alone(tmp_path):
    path, model = checkpoint(tmp_path, "nio")                          # complex spectral weights among them
    export_model(path, tmp_path / "export")
    out = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "export")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    read = json.loads(out.stdout)
    doc = json.loads((tmp_path / "export" / RECORD_NAME).read_text())
    assert read["metadata"]["format"] == EXPORT_FORMAT and read["type"] == "nio"
    assert read["tensors"] == doc["tensors"] and list(doc["tensors"]) == list(model.state_dict())
    assert "complex64" in {t["dtype"] for t in doc["tensors"].values()}


def test_a_training_state_exports_its_current_weights(tmp_path):
    current, best = trained("bcrnet"), trained("bcrnet")
    with torch.no_grad():
        for p in best.parameters():
            p.add_(1.0)
    last = atomic_save({"format": TRAINING_FORMAT, "version": bcrdist.__version__, "model": model_state(current),
                        "best_model": model_state(best), "model_config": current.record(), "optimizer": {},
                        "progress": {"stage": 1, "epoch": 3, "step": 40}}, tmp_path / "last.pt")
    assert main(["export", str(last), "--out", str(tmp_path / "export")]) == 0
    exported = load_model(tmp_path / "export")
    for name, value in current.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name
    doc = json.loads((tmp_path / "export" / RECORD_NAME).read_text())
    assert doc["provenance"]["progress"]["step"] == 40 and doc["provenance"]["checkpoint"]["format"] == TRAINING_FORMAT


def snapshot(root: Path) -> dict:
    """Every entry under `root` (not following links) with the hash of its bytes, or its link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            entry = Path(dirpath, name)
            if entry.is_symlink():
                out[str(entry)] = "-> " + os.readlink(entry)
            elif entry.is_file():
                out[str(entry)] = hashlib.sha256(entry.read_bytes()).hexdigest()
            else:
                out[str(entry)] = "dir"
    return out


def one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bcrdist {argv[0]}: error: "), captured.err
    assert captured.out == ""
    return lines[0]


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys):
    path, _ = checkpoint(tmp_path / "ck")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    torch.save({"weights": torch.ones(3)}, tmp_path / "plain.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    held = tmp_path / "held"
    held.mkdir()
    (held / RECORD_NAME).write_text("{}")
    (tmp_path / "held_weights").mkdir()
    (tmp_path / "held_weights" / WEIGHTS_NAME).write_bytes(b"old weights")
    (tmp_path / "a_file").write_text("not a directory")
    victim = tmp_path / "victim.txt"
    victim.write_text("must stay")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / RECORD_NAME).symlink_to(victim)
    before = snapshot(tmp_path)
    cases = [
        ([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o1")], "not found"),
        ([str(tmp_path / "random.pt"), "--out", str(tmp_path / "o2")], "not a readable bcrdist checkpoint"),
        ([str(tmp_path / "plain.pt"), "--out", str(tmp_path / "o3")], "not a bcrdist model checkpoint"),
        ([str(tmp_path / "tensor.pt"), "--out", str(tmp_path / "o4")], "not a bcrdist model checkpoint"),
        ([str(tmp_path / "ck"), "--out", str(tmp_path / "o5")], "a directory, not a checkpoint file"),
        ([str(path), "--out", str(held)], "already exists"),
        ([str(path), "--out", str(tmp_path / "held_weights")], "already exists"),
        ([str(path), "--out", str(tmp_path / "a_file")], "not a directory"),
        ([str(path), "--out", str(tmp_path / "linked")], "already exists"),
    ]
    for argv, expected in cases:
        assert expected in one_error_line(capsys, ["export", *argv]), argv
    assert snapshot(tmp_path) == before                 # nothing written, overwritten or left behind
    assert victim.read_text() == "must stay"


def test_a_symlink_planted_as_a_temporary_is_not_followed(tmp_path, capsys):
    path, _ = checkpoint(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("must stay")
    out = tmp_path / "export"
    out.mkdir()
    for name in (RECORD_NAME, WEIGHTS_NAME):
        (out / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    assert main(["export", str(path), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "bcrnet" in line and "parameters" in line and str(out / RECORD_NAME) in line
    assert victim.read_text() == "must stay" and sorted(os.listdir(out)) == [RECORD_NAME, WEIGHTS_NAME]
    load_model(out)


def test_a_changed_export_is_refused_naming_the_file(tmp_path, capsys):
    path, _ = checkpoint(tmp_path)
    export_model(path, tmp_path / "export")
    weights, record = tmp_path / "export" / WEIGHTS_NAME, tmp_path / "export" / RECORD_NAME
    data, text = weights.read_bytes(), record.read_text()

    def refused(match: str, where: Path) -> None:
        with pytest.raises(DataError) as info:
            load_model(tmp_path / "export")
        message = str(info.value)
        assert "\n" not in message and message.startswith(str(where)) and match in message, message
        h5 = tmp_path / "in.h5"
        with h5py.File(h5, "w") as fh:
            fh["measure"] = np.zeros((1, 16, 8), np.float32)
            fh["measure_imag"] = np.zeros((1, 16, 8), np.float32)
        assert str(where) in one_error_line(capsys, ["predict", "--checkpoint", str(tmp_path / "export"),
                                                     "--input", str(h5), "--out", str(tmp_path / "p.h5")])
        assert not (tmp_path / "p.h5").exists()

    flipped = bytearray(data)
    flipped[-1] ^= 1
    weights.write_bytes(bytes(flipped))
    refused("does not match", weights)
    weights.write_bytes(data[: len(data) // 2])
    refused("does not match", weights)
    # a malformed file whose hash model.json was made to agree with: the safetensors reader refuses its header
    forged = (10 ** 9).to_bytes(8, "little") + b"{}"
    weights.write_bytes(forged)
    record.write_text(text.replace(hashlib.sha256(data).hexdigest(), hashlib.sha256(forged).hexdigest()))
    refused("not a readable safetensors file", weights)
    weights.write_bytes(data)
    doc = json.loads(text)
    record.write_text(json.dumps({**doc, "format_version": 2}))
    refused("version 2", record)
    record.write_text(json.dumps({**doc, "format": "something-else"}))
    refused("not a bcrdist export", record)


def test_predict_with_an_export_writes_what_the_checkpoint_writes(tmp_path):
    path, model = checkpoint(tmp_path)
    export_model(path, tmp_path / "export")
    rng = np.random.default_rng(2)
    with h5py.File(tmp_path / "in.h5", "w") as fh:
        fh["measure"] = rng.standard_normal((5, 16, 8)).astype(np.float32)
        fh["measure_imag"] = rng.standard_normal((5, 16, 8)).astype(np.float32)
    preds = []
    for source, out in ((path, "a.h5"), (tmp_path / "export", "b.h5")):
        assert main(["predict", "--checkpoint", str(source), "--input", str(tmp_path / "in.h5"), "--out",
                     str(tmp_path / out)]) == 0
        with h5py.File(tmp_path / out, "r") as fh:
            preds.append(fh["pred"][()])
    assert preds[0].shape == (5, 16, 6) and np.array_equal(preds[0], preds[1])
