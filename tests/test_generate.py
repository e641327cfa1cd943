"""The MPI generation job (`bcrdist.data.generate`, `bcrdist generate`): layout of the written data, resume,
refusal of other settings, and byte-identical data from 1 and 2 MPI ranks."""

import json
import shutil

import numpy as np
import pytest

from bcrdist.cli import main as cli_main
from bcrdist.config import load_config
from bcrdist.data.generate import generate
from bcrdist.errors import DataError
from bcrdist.physics.generation_config import GenerationConfig
from generation_helpers import (DATASETS, TINY, VENV_BIN, as_plain_process, mpiexec_generate,
                                read_dataset, write_config)



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_generate_resume_and_refuse_other_settings(tmp_path, capsys):
    cfg_path = write_config(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "data"
    assert cli_main(["generate", "--config", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 6 and len(manifest["shards"]) == 3
    assert manifest["provenance"]["config"]["seed"] == 3
    data = read_dataset(out)
    for name, (shape, dtype) in DATASETS.items():
        assert data[name].shape == (6, *shape) and data[name].dtype == np.dtype(dtype), name
    f = data["farfield"]
    i, j = np.meshgrid(np.arange(8), np.arange(4), indexing="ij")
    assert np.array_equal(data["measure"], f[:, (i + j) % 8, (i - j) % 8].real)
    assert np.array_equal(data["measure_imag"], f[:, (i + j) % 8, (i - j) % 8].imag)
    assert np.all(data["family"] == 0) and np.all(data["num_primitives"] >= 1)
    assert np.all(data["eta"] >= 0) and np.all(data["iterations"] > 0)

    # an interrupted run: one shard lost; the rerun rewrites it identically and keeps the others
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.h5")}
    (out / "shard-00001.h5").unlink()
    summary = generate(load_config(cfg_path, GenerationConfig), out, progress=False)
    assert summary["written"] == 2  # the two samples of the lost shard
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.h5")} == before

    # other settings: refused, naming the manifest; nothing is touched
    with pytest.raises(DataError, match="manifest.json: the directory holds a data set made with other settings"):
        generate(load_config(cfg_path, GenerationConfig, ["seed=4"]), out, progress=False)
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="shard-00000.h5: made with other settings"):
        generate(load_config(cfg_path, GenerationConfig, ["seed=4"]), out, progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.h5")} == before


@pytest.mark.mpi
def test_mpi_two_ranks_write_byte_identical_data(tmp_path, monkeypatch):
    if shutil.which("mpiexec", path=str(VENV_BIN)) is None:
        pytest.skip("mpiexec not installed in the environment")
    cfg_path = write_config(tmp_path / "tiny.yaml", TINY)
    # P = 1 in this process, two threads (the ranks below use one each), with mpi4py made unimportable:
    # a plain run must not initialise MPI
    as_plain_process(monkeypatch)
    generate(load_config(cfg_path, GenerationConfig), tmp_path / "p1", threads=2, progress=False)
    # the record's seconds differ: tests/test_discretisation.py
    two = mpiexec_generate(cfg_path, tmp_path / "p2", "--accuracy-samples", "0")
    assert two.returncode == 0, two.stderr
    m1 = json.loads((tmp_path / "p1" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "p2" / "manifest.json").read_text())
    assert m1 == m2  # same shard checksums, same provenance
    for shard in m1["shards"]:
        assert (tmp_path / "p1" / shard["file"]).read_bytes() == (tmp_path / "p2" / shard["file"]).read_bytes()


def test_generate_reports_solves_and_refuses_a_sample_that_does_not_converge(tmp_path, capsys):
    cfg_path = write_config(tmp_path / "tiny.yaml", TINY)
    summary = generate(load_config(cfg_path, GenerationConfig), tmp_path / "ok", progress=False)
    data = read_dataset(tmp_path / "ok")
    assert summary["max_iterations"] == int(data["iterations"].max()) > 0
    assert summary["max_residual"] == pytest.approx(float(data["residual"].max()), rel=1e-6)
    assert 0 < summary["max_residual"] <= 1.1e-8   # solver.tol, to the accuracy of GMRES's estimate
    # GMRES out of iterations: exit 2 with one line naming the sample; no shard or manifest is written
    out = tmp_path / "stuck"
    assert cli_main(["generate", "--config", str(cfg_path), "--out", str(out), "--quiet",
                     "--set", "solver.max_iterations=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("bcrdist generate: error: sample 0: GMRES did not converge"), err
    assert not list(out.glob("shard-*.h5")) and not (out / "manifest.json").exists()


def test_the_summary_says_what_this_call_computed(tmp_path, capsys):
    # issue 21: a fresh data set was reported as "N computed now, the rest already complete"
    cfg_path = write_config(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "ds"
    assert cli_main(["generate", "--config", str(cfg_path), "--out", str(out)]) == 0
    assert "(all computed now;" in capsys.readouterr().err
    assert cli_main(["generate", "--config", str(cfg_path), "--out", str(out)]) == 0
    assert "(all already complete, none computed now;" in capsys.readouterr().err
    (out / json.loads((out / "manifest.json").read_text())["shards"][0]["file"]).unlink()
    assert cli_main(["generate", "--config", str(cfg_path), "--out", str(out)]) == 0
    assert "(2 computed now, the rest already complete;" in capsys.readouterr().err
