"""The jobs a user submitted (`RUN/submissions.jsonl`, `bcrdist jobs RUN [--cancel]`) and the sbatch scripts
that ship with the package (`bcrdist slurm-scripts --out DIR`).

Without a cluster: the record and its refusals, every source of a job's state (sacct, squeue, scontrol, none)
through stand-in Slurm commands on PATH, the scripts written and refused. On the local two-node Slurm
(`slurm` marker, skipped without it): `bcrdist submit` records a job and a sweep, `bcrdist jobs` shows their
live state and cancels them, a symbolic link at the record's path is refused after the job was submitted, and
the scripts written by an installed wheel run a training job from a folder outside the repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest

from bcrdist.cli.main import main
from bcrdist.errors import BcrdistError
from bcrdist.launch.jobs import SUBMISSIONS, record_submission, submission_record
from bcrdist.launch.slurm_scripts import packaged_scripts
from test_packaging import install_wheel
from test_slurm import ENDED, cluster, data, job_env, job_info, jobs  # noqa: F401 (fixtures used by name)
from train_helpers import ROOT, write_config

SHORT = {"max_steps": 4, "pretrain_stages": [[1, 1.0]], "finetune": False}
LONG = {"max_steps": 100000, "epochs": 1000, "pretrain_stages": [[1, 1.0]], "finetune": False}


def record(run: Path, job_ids: list[str], run_dirs: list[str], cluster_name: str = "slurm") -> dict:
    """Record a submission of the jobs `job_ids` (as submitit names them) into `run`, as `bcrdist submit` does."""
    rec = submission_record([SimpleNamespace(job_id=i) for i in job_ids], [{"run_dir": d} for d in run_dirs],
                            argv=["bcrdist", "submit"], cluster=cluster_name, folder=run / "submitit")
    record_submission(run, rec)
    return rec


def jobs_command(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(["jobs", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def rows(lines: list[str]) -> dict[str, str]:
    """`bcrdist jobs` output: job id → its whole row."""
    return {line.split()[0]: line for line in lines[1:]}


def fake_slurm(tmp_path: Path, monkeypatch, **scripts: str) -> Path:
    """Stand-ins for Slurm commands (name → shell body) in front of PATH; each appends its arguments to
    tmp_path/calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {tmp_path}/calls.log\n{body}\n')
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "calls.log"


def test_record_lines_and_what_a_lost_record_says(tmp_path):
    run = tmp_path / "run"
    first = record(run, ["41_0", "41_1"], [str(run / "seed=0"), str(run / "seed=1")])
    record(run, ["42"], [str(run)])
    lines = [json.loads(line) for line in (run / SUBMISSIONS).read_text().splitlines()]
    assert lines[0] == first and first["array_job_id"] == "41" and first["cluster"] == "slurm"
    assert [(j["job_id"], j["index"]) for j in first["jobs"]] == [("41_0", 0), ("41_1", 1)]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["time"])
    assert first["folder"] == str(run / "submitit") and first["argv"] == ["bcrdist", "submit"]
    assert lines[1]["array_job_id"] is None and lines[1]["jobs"] == [{"job_id": "42", "index": None,
                                                                      "run_dir": str(run)}]


def test_a_symlink_at_the_record_is_refused_and_its_target_untouched(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (run / SUBMISSIONS).symlink_to(victim)
    with pytest.raises(BcrdistError) as info:
        record(run, ["41_0", "41_1", "41_2"], [str(run / f"p{i}") for i in range(3)])
    assert str(info.value) == (f"{run / SUBMISSIONS}: is a symbolic link, not written through: the submission "
                               "is not recorded (submitted: array job 41 (elements 0-2))")
    assert victim.read_bytes() == b"precious\n" and (run / SUBMISSIONS).is_symlink()


def test_no_submissions_or_a_corrupt_line_is_one_line_and_status_2(tmp_path, capsys):
    code, out, err = jobs_command(capsys, tmp_path / "absent")
    assert (code, out, err) == (2, [], f"bcrdist jobs: error: {tmp_path / 'absent'}: no such folder\n")
    code, out, err = jobs_command(capsys, tmp_path)
    assert code == 2 and out == [] and err.count("\n") == 1
    assert err.startswith(f"bcrdist jobs: error: {tmp_path}: no {SUBMISSIONS}: no job was submitted into it")
    # a sweep point's folder: the record is in the sweep's base folder
    record(tmp_path, ["7"], [str(tmp_path / "seed=0")])
    (tmp_path / "seed=0").mkdir()
    code, _, err = jobs_command(capsys, tmp_path / "seed=0")
    assert code == 2 and err.rstrip().endswith(f"a sweep's submissions are recorded in its base folder {tmp_path}")

    with open(tmp_path / SUBMISSIONS, "a") as fh:
        fh.write('{"time": "2026-01-01T00:00:00Z", "cluster": "slurm", "folder": "/f", "jobs": [{"job_id": \n')
    code, out, err = jobs_command(capsys, tmp_path)
    assert code == 2 and out == [] and err.count("\n") == 1
    assert err.startswith(f"bcrdist jobs: error: {tmp_path / SUBMISSIONS}:2: not a submission record (invalid JSON")


def test_states_from_sacct_and_cancel_of_the_live_ones(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    record(run, ["41_0", "41_1", "41_2"], [str(run / f"seed={i}") for i in range(3)])
    record(run, ["42"], [str(run)])
    sacct = "printf '41_0|RUNNING\\n41_[1-2%%1]|PENDING\\n42|CANCELLED by 0\\n'"
    calls = fake_slurm(tmp_path, monkeypatch, sacct=sacct, scancel="exit 0")
    code, lines, _ = jobs_command(capsys, run)
    assert code == 0 and lines[0].split() == ["JOB", "INDEX", "SUBMITTED", "STATE", "RUN"]
    got = rows(lines)
    assert got["41_0"].split()[1:] == ["0", got["41_0"].split()[2], "RUNNING", str(run / "seed=0")]
    assert got["41_2"].split()[3] == "PENDING" and got["42"].split()[1] == "-" and got["42"].split()[3] == "CANCELLED"

    code, lines, _ = jobs_command(capsys, run, "--cancel")
    assert code == 0
    assert lines == [f"cancelled job 41_{i} ({'RUNNING' if i == 0 else 'PENDING'}): run {run / f'seed={i}'}"
                     for i in range(3)] + ["cancelled 3 of 4 recorded job(s); 1 had ended"]
    assert "scancel 41_0 41_1 41_2" in calls.read_text().splitlines()

    # a job that ended meanwhile is no failure; scancel's own refusal is one line, status 2
    fake_slurm(tmp_path, monkeypatch, scancel="echo 'scancel: error: Kill job error on job id 41_0: Job/step "
                                              "already completing or completed' >&2; exit 1")
    assert jobs_command(capsys, run, "--cancel")[0] == 0
    fake_slurm(tmp_path, monkeypatch, scancel="echo 'scancel: error: Access/permission denied' >&2; exit 1")
    code, lines, err = jobs_command(capsys, run, "--cancel")
    assert (code, lines) == (2, []) and err == ("bcrdist jobs: error: scancel 41_0 41_1 41_2 failed: scancel: error: "
                                                "Access/permission denied\n")


def test_states_without_accounting_from_scontrol_or_unknown(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    record(run, ["41_0", "41_1", "41_2"], [str(run / f"seed={i}") for i in range(3)])
    record(run, ["42"], [str(run)])
    record(run, ["50_0", "50_1"], [str(run / f"noise={i}") for i in range(2)])
    (run / "submitit").mkdir()
    (run / "submitit" / "42_0_result.pkl").write_bytes(cloudpickle.dumps(("success", {"status": "done"})))
    down = "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1"
    scontrol = """case "$4" in
    41) echo 'JobId=43 ArrayJobId=41 ArrayTaskId=0 JobState=RUNNING Reason=None'
        echo 'JobId=41 ArrayJobId=41 ArrayTaskId=1-2 JobState=PENDING Reason=Priority' ;;
    50) echo 'JobId=50 ArrayJobId=50 ArrayTaskId=4294967294 JobState=CANCELLED Reason=None' ;;
    *) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1 ;;
esac"""
    fake_slurm(tmp_path, monkeypatch, sacct="echo 'Slurm accounting storage is disabled' >&2; exit 1",
               squeue=down, scontrol=scontrol)
    code, lines, _ = jobs_command(capsys, run)
    got = rows(lines)
    assert code == 0 and got["41_0"].split()[3] == "RUNNING" and got["41_1"].split()[3] == "PENDING"
    assert "unknown (Slurm no longer knows the job; submitit result: success)" in got["42"]
    # elements cancelled while pending: only the array's own record is left, and its state is theirs
    assert got["50_0"].split()[3] == "CANCELLED" and got["50_1"].split()[3] == "CANCELLED"

    fake_slurm(tmp_path, monkeypatch, scontrol=down)          # the controller is down: nothing knows
    code, lines, _ = jobs_command(capsys, run)
    assert all("unknown (no working Slurm client here" in row for row in rows(lines).values())
    code, lines, _ = jobs_command(capsys, run, "--cancel")
    assert code == 0 and lines == ["cancelled 0 of 6 recorded job(s); 6 had ended"]


def test_slurm_scripts_written_again_identical_and_never_over_another_file(tmp_path, capsys):
    out = tmp_path / "scripts"
    names = sorted(packaged_scripts())
    assert names == ["generate.sbatch", "shard.sbatch", "train.sbatch", "train_torchrun.sbatch"]
    assert main(["slurm-scripts", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote 4 sbatch script(s) to {out}: {', '.join(names)}\n"
    for name in names:
        assert (out / name).read_bytes() == (ROOT / "bcrdist/launch/sbatch" / name).read_bytes()
        # a checkout keeps slurm/NAME.sbatch as a relative link to the packaged file
        assert os.readlink(ROOT / "slurm" / name) == f"../bcrdist/launch/sbatch/{name}"
    assert main(["slurm-scripts", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 0 sbatch script(s) to {out}; 4 already there, unchanged")

    (out / "train.sbatch").write_text("#!/bin/bash\n# my site's version\n")
    (out / "shard.sbatch").unlink()
    assert main(["slurm-scripts", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"bcrdist slurm-scripts: error: {out / 'train.sbatch'}: exists and differs from bcrdist's; nothing "
        "overwritten (remove it, or choose another --out)\n")
    assert (out / "train.sbatch").read_text().endswith("my site's version\n") and not (out / "shard.sbatch").exists()

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (out / "train.sbatch").unlink()
    (out / "train.sbatch").symlink_to(victim)
    assert main(["slurm-scripts", "--out", str(out)]) == 2
    assert "train.sbatch: is a symbolic link; nothing written" in capsys.readouterr().err
    assert victim.read_bytes() == b"precious\n" and not (out / "shard.sbatch").exists()


@pytest.mark.parametrize("name", ["train.sbatch", "train_torchrun.sbatch"])
def test_nccl_flight_recorder_defaults_and_the_sites_values_win(tmp_path, name):
    block = [line for line in (ROOT / "bcrdist/launch/sbatch" / name).read_text().splitlines()
             if line.startswith((': "${TORCH_', "export TORCH_"))]
    assert len(block) == 6

    def exported(**site: str) -> list[str]:
        return subprocess.run(["bash", "-c", "\n".join(block + ["env | grep ^TORCH_ | sort"])], capture_output=True,
                              text=True, check=True, env={"RUN_DIR": "/r", **site}).stdout.splitlines()

    assert exported(TORCH_NCCL_TRACE_BUFFER_SIZE="77") == [
        "TORCH_FR_DUMP_TEMP_FILE=/r/nccl_trace/rank_", "TORCH_NCCL_ASYNC_ERROR_HANDLING=3",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE=/r/nccl_trace/rank_", "TORCH_NCCL_DUMP_ON_TIMEOUT=1",
        "TORCH_NCCL_TRACE_BUFFER_SIZE=77"]
    # the site's value under the older name torch also reads wins too
    assert exported(TORCH_NCCL_DEBUG_INFO_TEMP_FILE="/site/fr_")[:3] == [
        "TORCH_FR_DUMP_TEMP_FILE=/site/fr_", "TORCH_NCCL_ASYNC_ERROR_HANDLING=3",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE=/site/fr_"]


def submit(jobs, *args: str) -> subprocess.CompletedProcess:  # noqa: F811 (the fixture `jobs`, passed in)
    """`bcrdist submit ...` without waiting; the ids it prints are tracked (and cancelled when the test ends)."""
    out = subprocess.run([sys.executable, "-m", "bcrdist", "submit", *args], cwd=ROOT, env=job_env(),
                         capture_output=True, text=True, timeout=120)
    for job_id in re.findall(r"^job (\S+): run", out.stdout, flags=re.M):
        jobs.track(job_id)
    return out


def listed(run: Path) -> dict[str, list[str]]:
    """`bcrdist jobs RUN` (a separate process, like a user's) as job id → [index, submitted, state, run]."""
    out = subprocess.run([sys.executable, "-m", "bcrdist", "jobs", str(run)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:]}


@pytest.mark.slurm
def test_submissions_are_recorded_listed_with_their_state_and_cancelled(jobs, data, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    out = submit(jobs, "--config", str(write_config(tmp_path / "c.yaml", data, run, schedule=SHORT)),
                 "--time", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    first = re.search(r"^job (\d+): run", out.stdout, flags=re.M).group(1)
    rec = json.loads((run / SUBMISSIONS).read_text())
    assert rec["cluster"] == "slurm" and rec["array_job_id"] is None and rec["folder"] == str(run / "submitit")
    assert rec["jobs"] == [{"job_id": first, "index": None, "run_dir": str(run)}]
    assert rec["argv"][1:] == ["submit", "--config", str(tmp_path / "c.yaml"), "--time", "5"]
    index, submitted, state, run_dir = listed(run)[first]
    assert (index, submitted, run_dir) == ("-", rec["time"], str(run))
    assert state in {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "COMPLETED"}, state
    jobs.wait_ok(first)
    assert listed(run)[first][2] == "COMPLETED"

    # a sweep of long runs into the same folder: one array, each element recorded, then cancelled
    out = submit(jobs, "--config", str(write_config(tmp_path / "long.yaml", data, run, schedule=LONG)),
                 "--sweep", "seed=0,1", "--time", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    array = re.search(r"^job (\d+)_0: run", out.stdout, flags=re.M).group(1)
    rec = json.loads((run / SUBMISSIONS).read_text().splitlines()[1])
    assert rec["array_job_id"] == array
    assert rec["jobs"] == [{"job_id": f"{array}_{i}", "index": i, "run_dir": str(run / f"seed={i}")} for i in (0, 1)]
    now = listed(run)
    assert [now[f"{array}_{i}"][0] for i in (0, 1)] == ["0", "1"]
    assert all(now[f"{array}_{i}"][2] in {"PENDING", "CONFIGURING", "RUNNING"} for i in (0, 1)), now

    out = subprocess.run([sys.executable, "-m", "bcrdist", "jobs", str(run), "--cancel"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == [f"{array}_0", f"{array}_1"], lines
    assert lines[-1] == "cancelled 2 of 3 recorded job(s); 1 had ended"
    for i in (0, 1):
        info = jobs.wait(f"{array}_{i}", timeout=60)
        assert info.get("JobState", "CANCELLED") == "CANCELLED", info
    now = listed(run)
    assert [now[f"{array}_{i}"][2] for i in (0, 1)] == ["CANCELLED", "CANCELLED"] and now[first][2] == "COMPLETED"


@pytest.mark.slurm
def test_a_symlink_at_the_record_is_refused_after_the_job_id_is_printed(jobs, data, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (run / SUBMISSIONS).symlink_to(victim)
    out = submit(jobs, "--config", str(write_config(tmp_path / "c.yaml", data, run, schedule=LONG)), "--time", "1")
    job = re.search(r"^job (\d+): run", out.stdout, flags=re.M).group(1)      # submitted, and said so
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"bcrdist submit: error: {run / SUBMISSIONS}: is a symbolic link, not written "
                                       f"through: the submission is not recorded (submitted: job {job})"]
    assert victim.read_bytes() == b"precious\n" and (run / SUBMISSIONS).is_symlink()
    assert job_info(job).get("JobState") in {"PENDING", "CONFIGURING", "RUNNING"} | ENDED


@pytest.mark.slurm
def test_scripts_written_by_an_installed_wheel_run_on_the_cluster(jobs, data, tmp_path):  # noqa: F811
    venv, _, env = install_wheel(tmp_path)
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run([str(venv / "bin" / "bcrdist"), "slurm-scripts", "--out", "scripts"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("wrote 4 sbatch script(s) to scripts"), out.stderr
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", schedule=SHORT)

    def sbatch(job_env: dict, *args: str) -> str:
        done = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/sbatch-%j.out", *args], cwd=work,
                              env=job_env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip().split(";")[0]
        jobs.track(job_id)
        return job_id

    job = sbatch({**env, "BCRDIST_VENV": str(venv)}, "--nodes=2", "--ntasks-per-node=1", "scripts/train.sbatch",
                 str(cfg))
    # without BCRDIST_VENV and with no bcrdist on PATH: one clear line, no traceback
    bare = sbatch({k: v for k, v in env.items() if k != "BCRDIST_VENV"} | {"PATH": "/usr/bin:/bin"},
                  "scripts/train.sbatch", str(cfg))
    jobs.track(job, tmp_path / "run" / f"slurm-{job}.out")
    jobs.wait_ok(job)
    text = (tmp_path / "run" / f"slurm-{job}.out").read_text()
    assert "task 0/2 on n1" in text and "2 rank(s) via slurm" in text and "done: reached schedule.max_steps = 4" in text
    provenance = json.loads((tmp_path / "run" / "results.json").read_text())["provenance"]
    assert provenance["git_revision"] is None, "the job ran bcrdist from the checkout, not from the wheel"
    assert (tmp_path / "run" / "nccl_trace").is_dir()
    assert jobs.wait(bare).get("JobState", "FAILED") == "FAILED"
    assert "bcrdist is not importable by '/usr/bin/python3': set BCRDIST_VENV" in \
        (tmp_path / f"sbatch-{bare}.out").read_text()
