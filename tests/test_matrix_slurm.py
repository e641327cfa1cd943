"""`bcrdist matrix --launcher slurm` on the local two-node Slurm (`tools/local_slurm.sh start`; skipped without
it): a tiny matrix (one network, one Born, one noise level, one other family) submitted as jobs with afterok
dependencies completes over a few launches, with its two generations running at the same time and a training
job killed mid-run submitted again by the next launch; its section equals the local launcher's. Also `status`,
`--dry-run` (the job graph and costs, nothing written) and a resource Slurm refuses (one line, exit 2, nothing
submitted).

The local cluster has no accounting (no sacct): when jobs ran is read from submitit's own log lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from test_matrix import TINY_DATA, TINY_OOD, TINY_TRAIN, undated, write_yaml
from test_slurm import cluster, job_env, job_info  # noqa: F401 (cluster: the fixture that skips without Slurm)
from train_helpers import ROOT

pytestmark = pytest.mark.slurm

RESULTS = "# Results\n\n<!-- matrix: tiny -->\nold\n<!-- /matrix: tiny -->\n"


def slurm_spec(tmp: Path, **changes) -> Path:
    """The tiny matrix with one method of each kind; generation as 2 MPI ranks, training on both nodes."""
    spec = {"name": "tiny", "title": "Tiny matrix", "intro": "A tiny matrix of the test.",
            "data": {"config": str(write_yaml(tmp / "tiny-data.yaml", TINY_DATA)), "percent": 0.75, "val": 16},
            "methods": [{"name": "bcr", "label": "BCR-Net Re F", "kind": "network",
                         "config": str(write_yaml(tmp / "tiny-train.yaml", TINY_TRAIN)),
                         # long enough, and with last.pt early, for the test to kill it mid-training
                         "set": ["schedule.epochs=12", "checkpoint.every_steps=8"]},
                        {"name": "born", "label": "Born", "kind": "born"}],
            "noise": {"levels": [0]},
            "ood": {"families": {"shapes": str(write_yaml(tmp / "tiny-ood.yaml", TINY_OOD))}},
            "metrics": ["rel_l2", "rel_l1"],
            "resources": {"default": {"time": 10}, "generate": {"tasks_per_node": 2}, "train": {"nodes": 2}}}
    spec.update(changes)
    return write_yaml(tmp / "tiny.yaml", spec)


def matrix(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bcrdist", "matrix", *map(str, args)], cwd=ROOT, env=job_env(),
                          capture_output=True, text=True, timeout=120, **kwargs)


def recorded(work: Path) -> dict[str, dict]:
    return json.loads((work / "matrix-jobs.json").read_text())["steps"]


def wait_quiet(work: Path, timeout: float = 240) -> None:
    """Until none of the recorded jobs is pending or running (cheaper than a launch per poll)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ids = [e["job_id"] for e in recorded(work).values()]
        out = subprocess.run(["squeue", "-h", "-o", "%i|%r", "-j", ",".join(ids)], capture_output=True, text=True,
                             timeout=30)
        waiting = [line for line in out.stdout.splitlines() if "DependencyNeverSatisfied" not in line]
        if not waiting:
            return
        time.sleep(2)
    raise AssertionError(f"jobs of {work} still queued after {timeout:.0f} s")


def span(log: str) -> tuple[datetime, datetime]:
    """When a job's task 0 started and ended, from submitit's log lines (in the task's stdout log)."""
    stamps = re.findall(r"submitit INFO \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\) - (Starting|Job completed)",
                        Path(log).with_suffix(".out").read_text())
    when = {word: datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t, word in stamps}
    return when["Starting"], when["Job completed"]


def section(results: Path, work: Path) -> str:
    """The spec's section without what differs by launcher: the date, the tool's command, the work folder, and
    the training's processes and time (the last two columns of the runs table)."""
    text = undated(results.read_text()).replace(str(work), "WORK")
    text = re.sub(r"^bcrdist matrix .*$", "bcrdist matrix …", text, flags=re.M)
    return re.sub(r"^(\| BCR-Net .*)\| \d+ \| [\d.]+ s \|$", r"\1| P | T |", text, flags=re.M)


@pytest.fixture(scope="module")
def done(cluster, tmp_path_factory):  # noqa: F811
    """The matrix through --launcher slurm to the end (the training job killed once while running), and the
    same spec through the local launcher, side by side."""
    tmp = tmp_path_factory.mktemp("matrix-slurm")
    spec = slurm_spec(tmp)
    for name in ("slurm", "local"):
        (tmp / name).mkdir()
        (tmp / name / "results.md").write_text(RESULTS)
    local = subprocess.Popen([sys.executable, "-m", "bcrdist", "matrix", "--spec", str(spec), "--work",
                              str(tmp / "local" / "work"), "--results", str(tmp / "local" / "results.md"), "--nproc",
                              "1"], cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    work, results = tmp / "slurm" / "work", tmp / "slurm" / "results.md"
    launches = [matrix("--spec", spec, "--work", work, "--results", results, "--launcher", "slurm")]
    try:
        assert launches[0].returncode == 0, launches[0].stderr
        killed = recorded(work)["train bcr"]
        deadline = time.time() + 240
        last = work / "runs" / "bcr" / "checkpoints" / "last.pt"
        while not last.exists():
            assert time.time() < deadline, f"training never saved last.pt: {job_info(killed['job_id'])}"
            time.sleep(0.05)
        subprocess.run(["scancel", killed["job_id"]], check=True, timeout=30)
        status_after_kill = None
        for _ in range(6):
            wait_quiet(work)
            if status_after_kill is None:
                status_after_kill = matrix("status", "--spec", spec, "--work", work)
            launches.append(matrix("--spec", spec, "--work", work, "--results", results, "--launcher", "slurm"))
            if "every step done" in launches[-1].stderr:
                break
        local_out, _ = local.communicate(timeout=300)
        assert local.returncode == 0, local_out[-3000:]
        status = matrix("status", "--spec", spec, "--work", work)
        yield {"tmp": tmp, "spec": spec, "work": work, "results": results, "launches": launches, "killed": killed,
               "status_after_kill": status_after_kill, "status": status}
    finally:
        local.kill()
        if (work / "matrix-jobs.json").is_file():
            subprocess.run(["scancel", *(e["job_id"] for e in recorded(work).values())], capture_output=True)


def test_the_matrix_completes_and_its_section_equals_the_local_one(done):
    last = done["launches"][-1]
    assert last.returncode == 0 and "every step done" in last.stderr, last.stdout + last.stderr
    slurm = section(done["results"], done["work"])
    local = section(done["tmp"] / "local" / "results.md", done["tmp"] / "local" / "work")
    assert "<!-- matrix: tiny -->\n## Tiny matrix" in slurm
    assert slurm == local
    # the training ran as one rank on each node, resumed from the last.pt of the killed job
    assert re.search(r"^\| BCR-Net .*\| 2 \| [\d.]+ s \|$", done["results"].read_text(), re.M)


def test_independent_steps_ran_at_the_same_time(done):
    jobs = recorded(done["work"])
    train_data = span(jobs["generate the training data"]["log"])
    ood = span(jobs["generate the out-of-distribution set shapes"]["log"])
    assert max(train_data[0], ood[0]) < min(train_data[1], ood[1]), (train_data, ood)


def test_a_killed_training_job_is_submitted_again(done):
    first, second = done["launches"][:2]
    killed = done["killed"]["job_id"]
    assert re.search(rf"^train bcr +failed +job {killed}\b", done["status_after_kill"].stdout, re.M), \
        done["status_after_kill"].stdout
    # the evaluations waited on the killed job: blocked, then cancelled and submitted again
    assert re.search(r"^evaluate bcr on noise0 +blocked", done["status_after_kill"].stdout, re.M)
    assert second.returncode == 1
    assert f"step 'train bcr' failed: job {killed} (CANCELLED" in second.stderr
    assert re.search(r"^submitted  train bcr: job \d+", second.stdout, re.M)
    assert recorded(done["work"])["train bcr"]["job_id"] != killed
    assert "resumed from" in (done["work"] / "runs" / "bcr" / "train.log").read_text()
    assert "submitted  generate" not in second.stdout      # done steps are never submitted again
    assert len(first.stdout.splitlines()) == 9


def test_status_lists_every_step_done_with_its_job(done):
    lines = done["status"].stdout.splitlines()
    assert done["status"].returncode == 0
    assert len(lines) == 10 and lines[-1] == "# 9 steps: 9 done"
    for line in lines[:-1]:
        assert re.fullmatch(r".+? +done +job \d+  log \S+_0_log\.err", line), line


def test_dry_run_prints_the_job_graph_with_costs_and_writes_nothing(cluster, tmp_path):  # noqa: F811
    spec = slurm_spec(tmp_path)
    out = matrix("--spec", spec, "--work", tmp_path / "work", "--launcher", "slurm", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "work").exists()
    text = out.stdout
    assert "[5] train bcr\n" in text and "resources: 2 nodes × 1 task × 1 cpu, 10 min" in text
    assert re.search(r"\[6\] evaluate bcr on noise0\n.*\n.*\n    waits for: \[5\], \[3\] \(afterok\)", text)
    assert len(re.findall(r"estimated cost: \S+ core-h", text)) == 9
    assert "0.46 CPU-s/sample at n = 100, Na = 100" in text and "69 core-ms" in text


def test_a_resource_slurm_refuses_is_one_line_and_nothing_is_submitted(cluster, tmp_path):  # noqa: F811
    spec = slurm_spec(tmp_path, resources={"train": {"partition": "nosuchpartition"}})
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    out = matrix("--spec", spec, "--work", tmp_path / "work", "--launcher", "slurm")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "resources.train: sbatch refused the job" in lines[0] and "partition" in lines[0]
    assert out.stdout == "" and not (tmp_path / "work" / "matrix-jobs.json").exists()
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before
