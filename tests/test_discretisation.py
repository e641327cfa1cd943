"""The discretisation-error estimate of a data set (`bcrdist.physics.discretisation`, `bcrdist.data.discretisation`):
the package's Mie series against the optical theorem and reciprocity, the fine-grid estimate against the Mie
series for a disc, the manifest record written by `bcrdist generate` and `bcrdist verify --physics` (kept by a
rerun, the same for 1 and 2 MPI ranks), printed by `bcrdist stats`/`verify`, and bad input."""

import json
import shutil

import numpy as np
import pytest

from bcrdist.cli import main as cli_main
from bcrdist.config import from_dict
from bcrdist.data.discretisation import compute_record
from bcrdist.data.generate import generate
from bcrdist.physics.discretisation import DiscretisationCheck, single_disc
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.mie import mie_far_field
from generation_helpers import TINY, VENV_BIN, as_plain_process, mpiexec_generate, write_config


# single discs of the study's family at k = 16 in the box [−1, 1]², 16 directions on the endpoint grid
DISC = {"n": 16, "box": 2.0, "k_over_pi": 16 / np.pi, "Na": 16, "layout": "farfield", "angles": "endpoint",
        "samples": 4, "samples_per_shard": 2, "seed": 11,
        "family": {"name": "discs", "support_radius": 0.5,
                   "discs": {"count": [1, 1], "contrast": [0.1, 0.8], "radius": [0.05, 0.15]}}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def disc_config(**changes) -> GenerationConfig:
    return from_dict(GenerationConfig, {**DISC, **changes})


def test_mie_series_satisfies_the_optical_theorem_and_reciprocity():
    k, na = 16.0, 96
    theta = 2 * np.pi * np.arange(na) / na
    f = mie_far_field(k, 0.25, 0.6, np.array([0.2, -0.1]), theta, theta)     # (inc, obs)
    scattered = (2 * np.pi / na) * np.sum(np.abs(f) ** 2, axis=1)
    extinction = -np.sqrt(8 * np.pi / k) * np.real(np.exp(0.25j * np.pi) * np.diag(f))
    assert np.max(np.abs(scattered - extinction) / extinction) < 1e-10
    # u_∞(x̂; d) = u_∞(−d; −x̂): θ ↦ θ + π is index + na/2
    opposite = (np.arange(na) + na // 2) % na
    assert np.allclose(f, f[np.ix_(opposite, opposite)].T, rtol=0, atol=1e-12 * np.abs(f).max())


def test_single_disc_recognised_only_when_the_scatterer_is_one_disc():
    check = DiscretisationCheck(disc_config())
    found = single_disc(check.maker.scatterer(0))
    assert found is not None and found[2].imag == 0
    absorbing = DiscretisationCheck(disc_config(family={**DISC["family"], "absorption": [1.0]}))
    assert single_disc(absorbing.maker.scatterer(0))[2] == pytest.approx(found[2] * (1 + 1j))
    many = DiscretisationCheck(disc_config(family={**DISC["family"], "discs": {"count": [3, 3]}}))
    assert single_disc(many.maker.scatterer(0)) is None
    assert many.chosen_samples(2)[1] == []


def test_fine_grid_estimate_agrees_with_the_mie_error_and_falls_with_n():
    fine, mie = [], []
    for n in (16, 32):
        check = DiscretisationCheck(disc_config(n=n))
        samples, discs = check.chosen_samples(2)
        assert samples == discs and len(samples) == 2      # every sample is a single disc
        errors = [check.errors(i) for i in samples]
        fine.append(max(e for e, _ in errors))
        mie.append(max(e for _, e in errors))
        for estimate, exact in errors:     # e_n − e_2n against e_n: the same magnitude (first order: about half)
            assert 0.25 * exact < estimate < 2 * exact
    print(f"disc, n = 16, 32: fine-grid estimate {fine}, against Mie {mie}")
    assert fine[1] < 0.7 * fine[0] and mie[1] < 0.7 * mie[0]
    assert mie[1] < 0.1


def test_generate_records_it_a_rerun_keeps_it_stats_and_verify_print_it(tmp_path, capsys, monkeypatch):
    cfg_path = write_config(tmp_path / "disc.yaml", DISC)
    out = tmp_path / "data"
    assert cli_main(["generate", "--config", str(cfg_path), "--out", str(out), "--quiet",
                     "--accuracy-samples", "2"]) == 0
    record = json.loads((out / "manifest.json").read_text())["discretisation"]
    assert record["n"] == 16 and record["n_fine"] == 32 and record["requested"] == 2
    assert record["directions"] == 15 and len(record["samples"]) == 2 and record["mie_samples"] == record["samples"]
    assert record == {**compute_record(disc_config(), 2), "seconds": record["seconds"]}
    fine, mie = record["far_field_error_fine"], record["far_field_error_mie"]
    assert 0 < fine["median"] <= fine["max"] < 0.5 and 0 < mie["median"] <= mie["max"] < 0.5

    # a rerun of a complete data set keeps the record (nothing is re-computed), with or without K
    monkeypatch.setattr("bcrdist.data.generate.compute_record", lambda *a, **k: pytest.fail("re-computed"))
    for extra in ([], ["--accuracy-samples", "2"], ["--accuracy-samples", "0"]):
        assert cli_main(["generate", "--config", str(cfg_path), "--out", str(out), "--quiet", *extra]) == 0
        assert json.loads((out / "manifest.json").read_text())["discretisation"] == record
    monkeypatch.undo()

    capsys.readouterr()
    assert cli_main(["stats", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("far-field discretisation error (n=16 vs 32, 2 samples): median ")
    assert "; vs Mie (2 single-disc samples): median " in line
    assert json.loads((out / "manifest.json").read_text())["discretisation"] == record   # stats kept it
    assert cli_main(["verify", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == line


def test_verify_physics_records_it_for_an_existing_data_set(tmp_path, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", TINY)      # Gaussian bumps: no single disc, no Mie comparison
    out = tmp_path / "data"
    assert cli_main(["generate", "--config", str(cfg), "--out", str(out), "--quiet", "--accuracy-samples", "0"]) == 0
    assert "discretisation" not in json.loads((out / "manifest.json").read_text())
    assert cli_main(["verify", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("not recorded (`bcrdist verify --physics DATA` records it)")
    assert cli_main(["verify", str(out), "--quiet", "--physics", "--accuracy-samples", "1"]) == 0
    record = json.loads((out / "manifest.json").read_text())["discretisation"]
    assert record["samples"] == record["samples"][:1] and record["mie_samples"] == []
    assert record["far_field_error_mie"] is None
    assert record["far_field_error_fine"]["max"] < 1e-3      # smooth bumps: spectral accuracy
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("far-field discretisation error (n=16 vs 32, 1 samples): median ") and "Mie" not in line


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "data"
    assert cli_main(["generate", "--config", str(cfg), "--out", str(out), "--accuracy-samples", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--accuracy-samples: expected an integer ≥ 0" in err, err
    assert not out.exists()
    with pytest.raises(Exception, match="accuracy_samples: expected an integer ≥ 0"):
        generate(from_dict(GenerationConfig, TINY), out, progress=False, accuracy_samples=-1)
    assert not out.exists()

    assert cli_main(["generate", "--config", str(cfg), "--out", str(out), "--quiet", "--accuracy-samples", "0"]) == 0
    before = (out / "manifest.json").read_bytes()
    assert cli_main(["verify", str(out), "--quiet", "--physics", "--accuracy-samples", "-1"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    # a data set not made by `bcrdist generate` has no scatterers to re-solve
    raw = json.loads(before)
    raw["provenance"]["tool"] = "bcrdist shard"
    (out / "manifest.json").write_text(json.dumps(raw))
    assert cli_main(["verify", str(out), "--quiet", "--physics"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not made by `bcrdist generate`" in err, err
    assert "discretisation" not in json.loads((out / "manifest.json").read_text())


@pytest.mark.mpi
def test_one_and_two_mpi_ranks_give_the_same_data_and_record(tmp_path, monkeypatch):
    if shutil.which("mpiexec", path=str(VENV_BIN)) is None:
        pytest.skip("mpiexec not installed in the environment")
    cfg_path = write_config(tmp_path / "disc.yaml", DISC)
    as_plain_process(monkeypatch)
    generate(from_dict(GenerationConfig, DISC), tmp_path / "p1", progress=False, accuracy_samples=3)
    two = mpiexec_generate(cfg_path, tmp_path / "p2", "--accuracy-samples", "3")
    assert two.returncode == 0, two.stderr
    m1, m2 = (json.loads((tmp_path / p / "manifest.json").read_text()) for p in ("p1", "p2"))
    for m in (m1, m2):
        del m["discretisation"]["seconds"]
    assert m1 == m2 and len(m1["discretisation"]["samples"]) == 3
    for shard in m1["shards"]:
        assert (tmp_path / "p1" / shard["file"]).read_bytes() == (tmp_path / "p2" / shard["file"]).read_bytes()
