"""`bcrdist matrix` without running anything heavy: the step graph of a spec (needs, seeds, a given data set and
checkpoint), the checks made before anything runs (test sets on another grid, unknown keys, another spec's work
folder, a second launch), and what counts as a finished step (outputs that validate, not outputs that parse)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bcrdist.errors import ConfigError
from bcrdist.launch import outputs
from bcrdist.launch.matrix import Ledger, Matrix, MatrixError, WorkLock
from bcrdist.launch.matrix_spec import load_spec, step_resources
from test_matrix import TINY_DATA, TINY_OOD, tiny_spec, write_yaml

ROOT = Path(__file__).resolve().parent.parent


def spec_file(tmp: Path, **changes) -> Path:
    return write_yaml(tmp / "spec.yaml", tiny_spec(tmp, **changes))


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bcrdist", "matrix", *args], cwd=cwd, capture_output=True,
                          text=True)


def test_every_step_needs_only_steps_before_it(tmp_path):
    matrix = Matrix(load_spec(str(spec_file(tmp_path))), tmp_path / "work")
    seen = set()
    for step in matrix.steps:
        assert set(step.needs) <= seen, (step.name, step.needs)
        seen.add(step.name)
    by_name = {s.name: s for s in matrix.steps}
    assert by_name["train bcr"].needs == ("split the training data",)
    assert by_name["evaluate bcr on ood-shapes"].needs == ("train bcr", "generate the out-of-distribution set shapes")
    assert by_name["baseline born on noise0"].needs == ("split the training data",)


def test_seeds_give_one_run_and_one_evaluation_each(tmp_path):
    spec = tiny_spec(tmp_path)
    spec["methods"][0]["seeds"] = [3, 5]
    matrix = Matrix(load_spec(str(write_yaml(tmp_path / "s.yaml", spec))), tmp_path / "work")
    trains = [s for s in matrix.steps if s.kind == "train" and s.name.startswith("train bcr")]
    assert [s.name for s in trains] == ["train bcr seed 3", "train bcr seed 5"]
    assert trains[0].args[-4:] == ["--set", "seed=3", "--resume", "auto"]
    assert any(a.endswith("runs/bcr-seed5") for a in trains[1].args)
    evals = [s.name for s in matrix.steps if s.name.startswith("evaluate bcr seed") and s.name.endswith("noise0")]
    assert evals == ["evaluate bcr seed 3 on noise0", "evaluate bcr seed 5 on noise0"]


def test_a_given_data_set_and_checkpoint_are_used_as_they_are(tmp_path):
    from train_helpers import make_dataset

    data = make_dataset(tmp_path / "given", n=40, per_shard=20, val=4)
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    spec = {"name": "given", "title": "Given", "data": {"path": str(data)},
            "methods": [{"name": "net", "label": "Net", "kind": "network", "checkpoint": str(ckpt)},
                        {"name": "born", "label": "Born", "kind": "born"}],
            "noise": {"levels": [0]}, "metrics": ["weighted"]}
    matrix = Matrix(load_spec(str(write_yaml(tmp_path / "g.yaml", spec))), tmp_path / "work")
    assert [s.kind for s in matrix.steps] == ["evaluate", "baseline"]
    assert matrix.steps[0].needs == () and str(ckpt) in matrix.steps[0].args
    assert matrix.train_data == data


@pytest.mark.parametrize("change, key", [
    (lambda s, t: s["ood"].update(set=["Na=8"]), "ood.families.shapes: its samples are not on the training data's grid"),
    (lambda s, t: s["methods"][0].setdefault("set", []).append("model.alfa=3"), "methods[0]"),
    (lambda s, t: s.update(resources={"train": {"nodes": 0}}), "resources.train"),
    (lambda s, t: s.update(resources={"trian": {}}), "resources.trian"),
    (lambda s, t: s["methods"][0].update(seeds=[1, 1]), "methods[0].seeds"),
    (lambda s, t: s["data"].update(path="x"), "data.config"),
    (lambda s, t: s["data"].update(set=["samples=-3"]), "data.config: "),
    (lambda s, t: s["methods"][0].update(checkpoint="x.pt"), "methods[0].config"),
])
def test_a_bad_spec_is_one_line_before_anything_is_written(tmp_path, change, key):
    spec = tiny_spec(tmp_path)
    change(spec, tmp_path)
    path = write_yaml(tmp_path / "bad.yaml", spec)
    out = run_cli("--spec", str(path), "--work", str(tmp_path / "work"), "--results", str(tmp_path / "r.md"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and key in lines[0], out.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "r.md").exists()


def test_an_ood_family_on_the_training_grid_is_accepted_with_ood_set(tmp_path):
    spec = tiny_spec(tmp_path)
    write_yaml(tmp_path / "tiny-ood.yaml", {**TINY_OOD, "Na": 8})
    spec["ood"]["set"] = ["Na=16"]
    load_spec(str(write_yaml(tmp_path / "ok.yaml", spec)))
    assert TINY_DATA["Na"] == 16


def test_resources_merge_default_and_kind(tmp_path):
    spec = load_spec(str(spec_file(tmp_path, resources={"default": {"time": 30, "partition": "cpu"},
                                                        "train": {"nodes": 2, "gpus_per_node": 4}})))
    train, gen = step_resources(spec, "train"), step_resources(spec, "generate")
    assert (train.nodes, train.gpus_per_node, train.time, train.partition) == (2, 4, 30, "cpu")
    assert (gen.nodes, gen.gpus_per_node, gen.time) == (1, 0, 30)


def test_a_parseable_but_incomplete_output_is_not_a_finished_step(tmp_path):
    from train_helpers import make_dataset

    data = make_dataset(tmp_path / "d", n=40, per_shard=20, val=4)
    out = tmp_path / "scores.json"
    good = {"data": str(data), "split": "test", "noise": 0.0,
            "metrics": {"rel_l2": {"mean": 0.5, "count": outputs.split_size(data, "test")}}}
    out.write_text(json.dumps(good))
    assert outputs.scores_problem(out, data=data, split="test", noise=0.0, metrics=["rel_l2"]) is None
    for bad, why in [({**good, "metrics": {}}, "no metric"), ({**good, "noise": 10.0}, "noise 10"),
                     ({**good, "split": "val"}, "expected"),
                     ({**good, "metrics": {"rel_l2": {"mean": 0.5, "count": 3}}}, "covers 3 samples"),
                     ({**good, "metrics": {"rel_l2": {"mean": None, "count": 8}}}, "no finite mean")]:
        out.write_text(json.dumps(bad))
        assert why in outputs.scores_problem(out, data=data, split="test", noise=0.0, metrics=["rel_l2"])
    out.write_text("{}")
    assert outputs.scores_problem(out, data=data, split="test", noise=0.0, metrics=["rel_l2"]) is not None
    out.write_text(json.dumps(good))
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"w")
    os.utime(out, (1e9, 1e9))               # scores older than the checkpoint: it was trained again since
    assert "older than" in outputs.scores_problem(out, data=data, split="test", noise=0.0, metrics=["rel_l2"],
                                                  checkpoint=checkpoint)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{}")
    assert "unfinished" in outputs.training_problem(run)
    (run / "results.json").write_text(json.dumps({"stop_reason": "schedule complete", "steps": 5}))
    assert "best.pt" in outputs.training_problem(run)
    shard = next(data.glob("shard-*.h5"))
    with open(shard, "r+b") as fh:
        fh.truncate(100)
    assert "truncated" in outputs.dataset_problem(data) or "bytes" in outputs.dataset_problem(data)


def test_a_work_folder_of_another_spec_is_refused(tmp_path):
    (tmp_path / "matrix.json").write_text(json.dumps({"spec": "other", "made": {}}))
    with pytest.raises(MatrixError, match="holds the results of spec 'other'"):
        Ledger(tmp_path, "tiny")
    assert Ledger(tmp_path, "other").made == {}


def test_two_launches_on_one_work_folder_are_refused(tmp_path):
    held = WorkLock(tmp_path)
    held.acquire()
    code = ("import sys; from pathlib import Path; from bcrdist.launch.matrix import WorkLock\n"
            "try:\n    WorkLock(Path(sys.argv[1])).acquire()\nexcept Exception as e:\n    print(e); sys.exit(3)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 3 and "another launch is using this work folder" in out.stdout
    assert f"pid {os.getpid()}" in out.stdout
    # `matrix status` names the holder (from another process: a POSIX lock is the process's own)
    ask = "import sys; from pathlib import Path; from bcrdist.launch.matrix import WorkLock; print(WorkLock(Path(sys.argv[1])).holder())"
    out = subprocess.run([sys.executable, "-c", ask, str(tmp_path)], capture_output=True, text=True)
    assert out.stdout.startswith(f"pid {os.getpid()} on ")
    held.release()
    out = subprocess.run([sys.executable, "-c", ask, str(tmp_path)], capture_output=True, text=True)
    assert out.stdout.strip() == "None"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_a_planted_link_at_the_lock_is_not_followed(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "matrix.lock").symlink_to(target)
    with pytest.raises(MatrixError):
        WorkLock(tmp_path / "work").acquire()
    assert target.read_text() == "keep"


def test_dry_run_writes_nothing(tmp_path):
    out = run_cli("--spec", str(spec_file(tmp_path)), "--work", str(tmp_path / "work"), "--results",
                  str(tmp_path / "r.md"), "--dry-run", "--nproc", "1")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("$ ")]
    assert lines[0].startswith("$ bcrdist generate") and any(" train " in line for line in lines)
    assert not (tmp_path / "work").exists() and not (tmp_path / "r.md").exists()


def test_the_spec_can_be_given_as_an_argument_and_a_config_error_names_the_key(tmp_path):
    out = run_cli("status")
    assert out.returncode == 2 and "--spec" in out.stderr
    with pytest.raises(ConfigError, match="nois"):
        load_spec(str(spec_file(tmp_path, nois={"levels": [1]})))


def test_the_report_gives_mean_and_sd_over_seeds_and_a_paired_verdict_per_seed(tmp_path):
    """The section from outputs written here: two seeds of a network against Born on 40 test samples; the first
    seed is better than Born on every sample, the second only by noise, so the seeds say yes and tie and the
    intersection-union verdict is tie."""
    from bcrdist.data.format import read_manifest
    from bcrdist.data.splits import load_split
    from bcrdist.launch.matrix_report import write_results
    from train_helpers import make_dataset

    spec = tiny_spec(tmp_path)
    spec["methods"] = [{"name": "bcr", "label": "BCR", "kind": "network", "config": spec["methods"][0]["config"],
                        "seeds": [3, 5]}, {"name": "born", "label": "Born", "kind": "born"}]
    spec.update(noise={"levels": [0]}, ood={}, absorption={}, metrics=["rel_l2"])
    matrix = Matrix(load_spec(str(write_yaml(tmp_path / "s.yaml", spec))), tmp_path / "work")
    data = make_dataset(matrix.train_data, n=160, per_shard=40, val=8)
    index = load_split(read_manifest(data), "test")
    rng = np.random.default_rng(0)
    born = 0.6 + 0.05 * rng.random(len(index))
    seeds = {3: born - 0.2, 5: born + 0.01 * rng.standard_normal(len(index))}

    def scores(path: Path, errors: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        order = rng.permutation(len(index))       # pairing is by index, not by position
        path.write_text(json.dumps({"data": str(data), "split": "test", "noise": 0.0,
                                    "metrics": {"rel_l2": {"mean": float(errors.mean()), "count": len(index)}},
                                    "samples": {"index": index[order].tolist(), "rel_l2": errors[order].tolist()}}))

    for run in matrix.runs:
        (run.path / "checkpoints").mkdir(parents=True)
        (run.path / "checkpoints" / "best.pt").write_bytes(b"w")
        (run.path / "results.json").write_text(json.dumps({"stop_reason": "schedule complete", "steps": 9,
                                                           "parameters": 1234, "seed": run.seed}))
        scores(matrix.output(run.method, matrix.conditions[0], run), seeds[run.seed])
    scores(matrix.output(matrix.spec.methods[1], matrix.conditions[0]), born)
    assert all(s.problem() is None for s in matrix.steps if s.kind in ("evaluate", "baseline"))
    results = tmp_path / "results.md"
    write_results(matrix, results, ["bcrdist x"], "bcrdist matrix --spec s.yaml", "s.yaml")
    row = next(line for line in results.read_text().splitlines() if line.startswith("| in distribution"))
    means = [seeds[3].mean(), seeds[5].mean()]
    mean, sd = np.mean(means), np.std(means, ddof=1)
    assert f"| {100 * mean:.1f} ± {100 * sd:.1f} % |" in row
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-3:] == ["BCR", "tie", "yes tie"]
    facts = json.loads((matrix.work / "matrix-results.json").read_text())
    assert facts["verdicts"][0]["test"]["per_seed"]["3"]["n"] == len(index)
