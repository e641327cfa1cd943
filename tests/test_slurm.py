"""The Slurm launch path on a real Slurm cluster: the sbatch scripts (`bcrdist/launch/sbatch/`, run through
their checkout links `slurm/*.sbatch`), preemption + requeue, `bcrdist submit`.

These tests submit real jobs to the two-node cluster that `tools/local_slurm.sh start` runs on this machine
(nodes n1 and n2 on 127.0.0.1; `tools/run_tests.sh` starts it when run as root) and skip when there is no
Slurm or its nodes are not up. Jobs are tiny (one CPU per task); every job a test submits is cancelled when
the test ends, and when a test fails the jobs' output files are printed with it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bcrdist.models.checkpoint import load_checkpoint
from train_helpers import (ROOT, assert_same_weights, clean_env, final_weights, finish, make_dataset, start_torchrun,
                           torchrun, write_config)

pytestmark = pytest.mark.slurm

VENV = Path(sys.prefix)        # the virtual environment that runs the tests; the jobs activate it too
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}


def cluster_problem() -> str | None:
    """None when the local cluster accepts jobs, else why the Slurm tests are skipped."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm client (sinfo/sbatch) on this machine; start one with `tools/local_slurm.sh start` (root)"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: is slurmctld running? (`tools/local_slurm.sh start`)"
    if out.returncode != 0:
        return f"Slurm is down ({out.stderr.strip() or 'sinfo failed'}); start it with `tools/local_slurm.sh start`"
    states = dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)
    up = [n for n in ("n1", "n2") if states.get(n, "").rstrip("*~#!%$@^-") in ("idle", "mix", "alloc")]
    if up != ["n1", "n2"]:
        return f"the local cluster's nodes n1 and n2 are not both up (sinfo: {states}); `tools/local_slurm.sh start`"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)


def job_env() -> dict:
    env = clean_env()
    env["BCRDIST_VENV"] = str(VENV)         # the jobs use the interpreter that runs the tests
    return env


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict ({} once Slurm has forgotten the job)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout.splitlines()[0])) if out.stdout.strip() else {}


class Jobs:
    """Submits jobs, waits for them, and cancels them and prints their output files when the test ends
    (pytest shows that output only for failing tests)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.ids: list[str] = []
        self.logs: list[Path] = []

    def sbatch(self, *args: str) -> str:
        out = subprocess.run(["sbatch", "--parsable", f"--output={self.tmp}/sbatch-%j.out", *args], cwd=ROOT,
                             env=job_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"sbatch {' '.join(args)} failed: {out.stderr}"
        job_id = out.stdout.strip().split(";")[0]
        self.track(job_id)
        return job_id

    def track(self, job_id: str, *logs: Path) -> None:
        if job_id not in self.ids:
            self.ids.append(job_id)
        self.logs += logs

    def state(self, job_id: str) -> str:
        return job_info(job_id).get("JobState", "GONE")

    def wait(self, job_id: str, until=ENDED, timeout: float = 180) -> dict[str, str]:
        """Poll until the job's state is in `until` (or, for ended states, Slurm forgot it); its info."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = job_info(job_id)
            if info.get("JobState", "GONE") in until or (not info and until is ENDED):
                return info
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not in {sorted(until)} after {timeout:.0f} s: {job_info(job_id)}")

    def wait_ok(self, job_id: str, timeout: float = 180) -> None:
        info = self.wait(job_id, timeout=timeout)
        assert info.get("JobState") == "COMPLETED", f"job {job_id} ended {info.get('JobState')}: {info}"

    def release(self, job_id: str) -> None:
        """A requeued job waits out Slurm's begin-time delay (about 2 minutes): start it now."""
        subprocess.run(["scontrol", "release", job_id], capture_output=True, timeout=30)
        out = subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, f"scontrol update jobid={job_id} StartTime=now: {out.stderr}"

    def cleanup(self) -> None:
        for job_id in self.ids:
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
        files = sorted(self.tmp.glob("sbatch-*.out")) + sorted(self.tmp.rglob("*_log.*")) + self.logs
        for path in dict.fromkeys(files):
            if path.is_file():
                print(f"===== {path}\n{path.read_text(errors='replace')[-6000:]}")


@pytest.fixture
def jobs(cluster, tmp_path):
    tracker = Jobs(tmp_path)
    try:
        yield tracker
    finally:
        tracker.cleanup()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("slurm-data") / "ds")


def test_sbatch_on_two_nodes_matches_local_torchrun(jobs, data, tmp_path):
    sched = {"max_steps": 12, "pretrain_stages": [[1, 1.0]], "finetune": False}
    cfg = write_config(tmp_path / "slurm.yaml", data, tmp_path / "slurm", schedule=sched)
    job = jobs.sbatch("--nodes=2", "--ntasks-per-node=1", "--export=ALL,BCRDIST_SETUP=echo site-setup-ran",
                      "slurm/train.sbatch", str(cfg))
    log = tmp_path / "slurm" / f"slurm-{job}.out"
    # the variant: one torchrun agent per node (c10d rendezvous on n1), one worker each
    cfg_tr = write_config(tmp_path / "tr.yaml", data, tmp_path / "torchrun", schedule=sched)
    job_tr = jobs.sbatch("--nodes=2", "slurm/train_torchrun.sbatch", str(cfg_tr))
    log_tr = tmp_path / "torchrun" / f"slurm-{job_tr}.out"
    jobs.track(job, log)
    jobs.track(job_tr, log_tr)
    local = write_config(tmp_path / "local.yaml", data, tmp_path / "local", schedule=sched)
    torchrun(2, "train", "--config", str(local))          # meanwhile, the same run with torchrun here
    jobs.wait_ok(job)
    jobs.wait_ok(job_tr)

    assert "site-setup-ran" in (tmp_path / f"sbatch-{job}.out").read_text()     # BCRDIST_SETUP ran first
    text = log.read_text()
    assert f"job {job} (restart 0) on n[1-2]: 2 task(s)" in text
    assert "task 0/2 on n1" in text and "task 1/2 on n2" in text      # one rank on each node
    assert "2 rank(s) via slurm" in text
    assert "done: reached schedule.max_steps = 12" in text
    assert load_checkpoint(tmp_path / "slurm/checkpoints/last.pt")["world_size"] == 2
    assert_same_weights(final_weights(tmp_path / "local"), final_weights(tmp_path / "slurm"), atol=1e-5)

    text = log_tr.read_text()
    assert re.search(rf"job {job_tr} \(restart 0\) on n\[1-2\]: 2 node\(s\) × 1, rendezvous n1:\d+", text), text
    assert "agent 0 on n1" in text and "agent 1 on n2" in text
    assert "2 rank(s) via torchrun" in text
    assert_same_weights(final_weights(tmp_path / "local"), final_weights(tmp_path / "torchrun"), atol=1e-5)


def signal_mid_run_and_check_requeue(jobs, job: str, last: Path, step: int = 20) -> None:
    """Wait until `last` is at `step` or later, send USR2 to the job's tasks (what `#SBATCH --signal=USR2@120`
    does before the time limit) and check that the job was requeued once."""
    deadline = time.time() + 120
    while not (last.is_file() and load_checkpoint(last)["progress"]["step"] >= step):
        assert time.time() < deadline and jobs.state(job) in ("PENDING", "RUNNING", "CONFIGURING"), \
            f"job {job} did not reach step {step}: {job_info(job)}"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    info = jobs.wait(job, until={"PENDING"} | ENDED, timeout=60)
    assert info.get("JobState") == "PENDING" and info.get("Restarts") == "1", f"job {job} not requeued: {info}"


def test_usr2_saves_requeues_and_resumes_to_the_uninterrupted_result(jobs, data, tmp_path):
    sched = {"max_steps": 300, "epochs": 40, "pretrain_stages": [[1, 1.0]], "finetune": False}
    cfg = write_config(tmp_path / "slurm.yaml", data, tmp_path / "slurm", schedule=sched)
    job = jobs.sbatch("--nodes=2", "--ntasks-per-node=1", "slurm/train.sbatch", str(cfg))
    log = tmp_path / "slurm" / f"slurm-{job}.out"
    jobs.track(job, log)
    # meanwhile, the same run without interruption
    full = write_config(tmp_path / "full.yaml", data, tmp_path / "full", schedule=sched)
    uninterrupted = start_torchrun(2, "train", "--config", full)
    last = tmp_path / "slurm/checkpoints/last.pt"
    try:
        signal_mid_run_and_check_requeue(jobs, job, last)
        signalled_at = load_checkpoint(last)["progress"]["step"]
        assert 20 <= signalled_at < 300, f"last.pt at step {signalled_at}: the run was not signalled mid-way"
        jobs.release(job)
        finish(uninterrupted)
    finally:
        if uninterrupted.poll() is None:        # the test failed first: torchrun's agent stops its workers
            uninterrupted.terminate()
            uninterrupted.wait(timeout=180)
    jobs.wait_ok(job)

    text = log.read_text()
    assert f"received SIGUSR2: saving last.pt at step {signalled_at}" in text
    assert f"requeued Slurm job {job}" in text
    assert f"job {job} (restart 1)" in text
    assert re.search(rf"resumed from {re.escape(str(last))} at stage pretrain-0, .*step {signalled_at}$", text,
                     flags=re.M), text
    assert "done: reached schedule.max_steps = 300" in text
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "slurm"), atol=1e-6)
    a = json.loads((tmp_path / "full/results.json").read_text())["errors"]["test"]["weighted"]["mean"]
    b = json.loads((tmp_path / "slurm/results.json").read_text())["errors"]["test"]["weighted"]["mean"]
    assert abs(a - b) < 1e-6


def submit(jobs: Jobs, *args: str, timeout: float = 240) -> str:
    """`bcrdist submit ... --wait`; its job ids are tracked (and cancelled at the end) even on a timeout."""
    out_path = jobs.tmp / f"submit-{len(jobs.ids)}.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bcrdist", "submit", *args, "--wait"], cwd=ROOT,
                                env=job_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = out_path.read_text()
    for job_id in re.findall(r"^job (\S+): run", text, flags=re.M):
        jobs.track(job_id.split("_")[0])
    assert proc.returncode == 0, f"bcrdist submit {' '.join(args)} exited {proc.returncode}:\n{text}"
    return text


def test_bcrdist_submit_two_nodes_and_a_sweep_as_job_array(jobs, data, tmp_path):
    sched = {"max_steps": 12, "pretrain_stages": [[1, 1.0]], "finetune": False}
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "sub", schedule=sched)
    text = submit(jobs, "--config", str(cfg), "--nodes", "2", "--time", "20", "--setup", "echo bcrdist-setup-ran",
                  "--sbatch", "comment=bcrdist-submit-test")
    assert re.search(r"^job \d+: run .*/sub, logs .*/sub/submitit/\d+_0_log.out$", text, flags=re.M), text
    first = re.search(r"^job (\d+): run", text, flags=re.M).group(1)
    assert "bcrdist-setup-ran" in (tmp_path / f"sub/submitit/{first}_0_log.out").read_text()   # --setup ran
    assert job_info(first).get("Comment") == "bcrdist-submit-test"                            # --sbatch reached Slurm
    assert "finished: reached schedule.max_steps = 12" in text
    assert "2 rank(s) via torchrun" in (tmp_path / "sub/train.log").read_text()    # submitit's rank variables
    assert load_checkpoint(tmp_path / "sub/checkpoints/last.pt")["world_size"] == 2

    sweep = write_config(tmp_path / "s.yaml", data, tmp_path / "sweep", schedule=sched)
    text = submit(jobs, "--config", str(sweep), "--sweep", "seed=0,1", "--time", "20")
    ids = re.findall(r"^job (\d+_\d+): run", text, flags=re.M)
    assert len(ids) == 2 and ids[0].split("_")[0] == ids[1].split("_")[0], text     # one array, two elements
    assert text.count("finished: reached schedule.max_steps = 12") == 2, text
    for seed in (0, 1):
        run = tmp_path / "sweep" / f"seed={seed}"
        assert json.loads((run / "results.json").read_text())["stop_reason"] == "reached schedule.max_steps = 12"
        assert f"seed: {seed}" in (run / "config.yaml").read_text()
    a, b = (final_weights(tmp_path / "sweep" / f"seed={s}") for s in (0, 1))
    assert any(not torch.equal(a[k], b[k]) for k in a), "the two sweep points trained the same model"


def test_bcrdist_submit_preempted_job_is_requeued_by_submitit_and_resumes(jobs, data, tmp_path):
    sched = {"max_steps": 300, "epochs": 40, "pretrain_stages": [[1, 1.0]], "finetune": False}
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", schedule=sched)
    out = subprocess.run([sys.executable, "-m", "bcrdist", "submit", "--config", str(cfg), "--nodes", "2",
                          "--time", "20"], cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    job = re.search(r"^job (\d+): run", out.stdout, flags=re.M).group(1)
    jobs.track(job)
    last = tmp_path / "run/checkpoints/last.pt"
    signal_mid_run_and_check_requeue(jobs, job, last)
    jobs.release(job)
    jobs.wait_ok(job)

    train_log = (tmp_path / "run/train.log").read_text()
    assert "received SIGUSR2" in train_log and "handing over to submitit to requeue the job" in train_log
    assert f"resumed from {last}" in train_log
    assert "done: reached schedule.max_steps = 300" in train_log
    rank0 = (tmp_path / f"run/submitit/{job}_0_log.out").read_text()      # submitit's own log lines
    assert "Caught signal SIGUSR2" in rank0 and "this job is preempted" in rank0, rank0
    assert f"Requeued job {job}" in rank0, rank0
    assert load_checkpoint(last)["progress"]["step"] == 300


def test_generate_sbatch_with_two_mpi_tasks_writes_the_same_data_as_one_process(jobs, tmp_path):
    args = ["--set", "samples=64", "--set", "samples_per_shard=16"]
    job = jobs.sbatch("--ntasks=2", "slurm/generate.sbatch", "configs/data/demo.yaml", str(tmp_path / "srun"), *args)
    subprocess.run([sys.executable, "-m", "bcrdist", "generate", "--config", "configs/data/demo.yaml", "--out",
                    str(tmp_path / "one"), "--threads", "1", *args], cwd=ROOT, env=clean_env(), check=True,
                   capture_output=True, timeout=240)
    jobs.wait_ok(job)
    assert "on 2 rank(s)" in (tmp_path / f"sbatch-{job}.out").read_text()

    def shards(path):
        manifest = json.loads((path / "manifest.json").read_text())
        return [(s["file"], s["num_samples"], s["sha256"]) for s in manifest["shards"]]

    assert len(shards(tmp_path / "one")) == 4
    assert shards(tmp_path / "srun") == shards(tmp_path / "one")

    # srun without an MPI plugin would start two one-rank worlds that each write everything: refused
    job = jobs.sbatch("--ntasks=2", "--export=ALL,BCRDIST_SRUN_MPI=none", "slurm/generate.sbatch",
                      "configs/data/demo.yaml", str(tmp_path / "nompi"), *args)
    info = jobs.wait(job)
    assert info.get("JobState") == "FAILED"
    assert "MPI sees a one-rank world" in (tmp_path / f"sbatch-{job}.out").read_text()
    assert not (tmp_path / "nompi" / "manifest.json").exists()


def test_shard_sbatch_with_two_tasks_writes_the_same_shards_as_one_process(jobs, tmp_path):
    from bcrdist.data.synthetic import make_fan_file

    make_fan_file(tmp_path / "src.h5", 100)
    job = jobs.sbatch("--ntasks=2", "slurm/shard.sbatch", str(tmp_path / "src.h5"), str(tmp_path / "srun"),
                      "--samples-per-shard", "16")
    subprocess.run([sys.executable, "-m", "bcrdist", "shard", str(tmp_path / "src.h5"), str(tmp_path / "one"),
                    "--samples-per-shard", "16", "--quiet"], cwd=ROOT, env=clean_env(), check=True,
                   capture_output=True, timeout=120)
    jobs.wait_ok(job, timeout=120)
    out = (tmp_path / f"sbatch-{job}.out").read_text()
    assert "[rank 1/2] shard-00001.h5" in out and "100 samples in 7 shards" in out

    def shards(path):
        return [(s["file"], s["sha256"]) for s in json.loads((path / "manifest.json").read_text())["shards"]]

    assert len(shards(tmp_path / "one")) == 7 and shards(tmp_path / "srun") == shards(tmp_path / "one")
