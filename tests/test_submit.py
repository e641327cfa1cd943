"""`bcrdist submit` without running jobs: the batch script submitit generates for the site options
(`--dry-run`, the script submitit would hand to sbatch), the resource file and its merging with the
options, rejection of values that would break the batch script, and sbatch's refusal as one line (against
the real sbatch; jobs on the local cluster are in tests/test_slurm.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from bcrdist.cli.main import main
from bcrdist.errors import ConfigError
from bcrdist.launch.submit import SLURM_CONFIG_VAR, JobResources, check_configs, load_resources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_site_file(monkeypatch):
    monkeypatch.delenv(SLURM_CONFIG_VAR, raising=False)


needs_slurm_client = pytest.mark.skipif(shutil.which("srun") is None or shutil.which("sbatch") is None,
                                        reason="no Slurm client (srun, sbatch): submitit builds scripts only there")


def submit(capsys, tmp_path, *args: str) -> tuple[int, str, str]:
    code = main(["submit", "--config", "configs/demo.yaml", "--set", f"run_dir={tmp_path / 'run'}", *args])
    out, err = capsys.readouterr()
    return code, out, err


def sbatch_lines(script: str) -> dict[str, str]:
    """'#SBATCH --key=value' lines as {key: value} ('' for a bare flag)."""
    lines = [line[len("#SBATCH --"):] for line in script.splitlines() if line.startswith("#SBATCH --")]
    return dict((line.split("=", 1) + [""])[:2] for line in lines)


@needs_slurm_client
def test_dry_run_script_carries_every_site_option(capsys, tmp_path):
    code, script, _ = submit(
        capsys, tmp_path, "--dry-run", "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu",
        "--account", "proj42", "--qos", "high", "--constraint", "a100&ib", "--mem", "64G", "--exclusive",
        "--sbatch", "mail-type=END", "--sbatch", "requeue", "--setup", "module load cuda/12.4",
        "--setup", "export NCCL_DEBUG=WARN", "--time", "240")
    assert code == 0
    flags = sbatch_lines(script)
    assert flags["account"] == "proj42" and flags["qos"] == "high" and flags["partition"] == "gpu"
    assert flags["constraint"] == "'a100&ib'"                     # quoted for sbatch's directive parser
    assert flags["mem"] == "64G" and flags["exclusive"] == "" and flags["requeue"] == ""
    assert flags["mail-type"] == "END" and flags["time"] == "240" and flags["nodes"] == "2"
    assert flags["ntasks-per-node"] == "4" and flags["gpus-per-node"] == "4" and flags["signal"] == "USR2@120"
    assert flags["output"].startswith(str(tmp_path / "run" / "submitit"))
    lines = script.splitlines()
    setup = lines.index("module load cuda/12.4")
    assert lines[setup + 1] == "export NCCL_DEBUG=WARN"
    srun = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert setup < srun and "submitit.core._submit" in lines[srun]
    assert not (tmp_path / "run").exists()                        # a dry run writes nothing


@needs_slurm_client
def test_dry_run_of_a_sweep_is_a_job_array_and_gpus_per_task(capsys, tmp_path):
    code, script, _ = submit(capsys, tmp_path, "--dry-run", "--sweep", "seed=0,1,2", "--gpus-per-task", "1",
                             "--tasks-per-node", "2")
    assert code == 0
    flags = sbatch_lines(script)
    assert flags["array"] == "0-2%3" and flags["gpus-per-task"] == "1" and flags["ntasks-per-node"] == "2"
    assert "account" not in flags and "exclusive" not in flags and "mem" not in flags


def test_resource_file_and_options(tmp_path, monkeypatch):
    site = tmp_path / "site.yaml"
    site.write_text("account: proj42\npartition: gpu\nmem: 0\nsetup: [module load openmpi]\n"
                    "sbatch: {mail-type: END, gres: 'gpu:4'}\nexclusive: true\n")
    res = load_resources(site, partition="debug", setup=["module load cuda"], sbatch={"mail-user": "a@b"})
    assert (res.account, res.partition, res.mem, res.exclusive) == ("proj42", "debug", 0, True)
    assert res.setup == ["module load openmpi", "module load cuda"]                  # appended
    assert res.sbatch == {"mail-type": "END", "gres": "gpu:4", "mail-user": "a@b"}   # merged
    assert load_resources(site, exclusive=False).exclusive is False
    monkeypatch.setenv(SLURM_CONFIG_VAR, str(site))                                   # the site-wide default
    assert load_resources(None).account == "proj42"
    assert load_resources(None, nodes=3).nodes == 3 and load_resources(None).nodes == 1


@needs_slurm_client
def test_dry_run_uses_the_site_file_from_the_environment(capsys, tmp_path, monkeypatch):
    site = tmp_path / "site.yaml"
    site.write_text("account: proj7\nqos: low\n")
    monkeypatch.setenv(SLURM_CONFIG_VAR, str(site))
    code, script, _ = submit(capsys, tmp_path, "--dry-run", "--qos", "high")
    assert code == 0 and sbatch_lines(script)["account"] == "proj7" and sbatch_lines(script)["qos"] == "high"


@needs_slurm_client
@pytest.mark.parametrize("args, message", [
    (["--partition", "gpu\n#SBATCH --account=stolen"], r"partition: .* control character '\\n'"),
    (["--account", "my project"], "account: expected one word"),
    (["--qos", "hi\rgh"], "qos: .*control character"),
    (["--constraint", "a100\x00"], "constraint: .*control character"),
    (["--mem", "lots"], "mem: expected a size such as 64G"),
    (["--mem", "64 G"], "mem: expected a size"),
    (["--setup", "module load cuda\nrm -rf ~"], r"setup\[0\]: .*control character"),
    (["--sbatch", "mail-type=END\nx"], r"sbatch.mail-type: .*control character"),
    (["--sbatch", "output=/tmp/x"], "sbatch.output: bcrdist sets it"),
    (["--sbatch", "account=x"], r"sbatch.account: use account \(--account\)"),
    (["--sbatch", "Bad_Key=1"], "not an sbatch option name"),
    (["--folder", "/tmp/f\nx"], r"--folder: .*control character"),
    (["--nodes", "0"], "nodes: must be ≥ 1"),
    (["--gpus-per-task", "-1"], "gpus_per_task: must be ≥ 0"),
    (["--time", "0"], "time: must be ≥ 1"),
])
def test_values_that_would_break_the_batch_script_are_refused(capsys, tmp_path, args, message):
    code, out, err = submit(capsys, tmp_path, "--dry-run", *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("bcrdist submit: error: ")
    assert re.search(message, err), err


@needs_slurm_client
def test_run_dir_with_a_newline_is_refused(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('run_dir: "/tmp/a\\n#SBATCH --account=stolen"\n')      # a quoted YAML string keeps the \n
    assert main(["submit", "--config", str(cfg), "--folder", str(tmp_path / "f"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^bcrdist submit: error: {re.escape(str(cfg))}: run_dir: .*control character '\\n'", err) \
        and err.count("\n") == 1


def test_bad_resource_file_names_the_file_and_key(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("acount: x\n")
    with pytest.raises(ConfigError, match=f"{site}: unknown key 'acount'"):
        load_resources(site)
    site.write_text("sbatch: {mail-type: [a, b]}\n")
    with pytest.raises(ConfigError, match="sbatch.mail-type: expected a string"):
        load_resources(site)
    site.write_text("sbatch: {requeue: false}\n")
    with pytest.raises(ConfigError, match="false is not an sbatch value"):
        load_resources(site)


def test_batch_size_must_divide_by_the_ranks():
    cfg = {"run_dir": "/tmp/r", "schedule": {"batch_size": 16}}
    check_configs([cfg], JobResources(nodes=2, gpus_per_node=4))
    with pytest.raises(ConfigError, match="not divisible by 12 ranks"):
        check_configs([cfg], JobResources(nodes=3, gpus_per_node=4))


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="no sbatch (Slurm client) on this machine")
def test_sbatch_refusal_is_one_line_with_sbatchs_message(tmp_path):
    """The real sbatch refuses the partition (or, with the cluster down, cannot reach the controller)."""
    out = subprocess.run([sys.executable, "-m", "bcrdist", "submit", "--config", "configs/demo.yaml", "--set",
                          f"run_dir={tmp_path / 'run'}", "--partition", "nosuchpartition", "--time", "5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("bcrdist submit: error: sbatch refused the job: sbatch: error: "), lines[0]
    assert "nosuchpartition" in lines[0] or "Unable to contact slurm controller" in lines[0]
    assert [p for p in (tmp_path / "run").rglob("*") if p.is_file()] == []     # no pickles of the refused job


def test_no_sbatch_is_one_line(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    out = subprocess.run([sys.executable, "-m", "bcrdist", "submit", "--config", "configs/demo.yaml", "--set",
                          f"run_dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["bcrdist submit: error: sbatch not found: submit from a machine "
                                               "with the Slurm client, or run here with --local"]


def test_local_executor_runs_the_job_here(tmp_path):
    """`--local`: submitit's LocalExecutor on this machine, without Slurm; the site options do not apply."""
    from train_helpers import clean_env, make_dataset, write_config

    data = make_dataset(tmp_path / "ds", n=120)
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run",
                       schedule={"max_steps": 4, "pretrain_stages": [[1, 1.0]], "finetune": False})
    out = subprocess.run([sys.executable, "-m", "bcrdist", "submit", "--config", str(cfg), "--local", "--wait",
                          "--account", "ignored-here"], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "finished: reached schedule.max_steps = 4" in out.stdout
    assert (tmp_path / "run" / "results.json").is_file()
    # the submission is recorded; its state comes from submitit's result file (no Slurm involved)
    listed = subprocess.run([sys.executable, "-m", "bcrdist", "jobs", str(tmp_path / "run")], cwd=ROOT,
                            env=clean_env(), capture_output=True, text=True, timeout=120)
    job = re.search(r"^job (\d+) finished", out.stdout, flags=re.M).group(1)
    assert listed.returncode == 0 and f"COMPLETED (local)  {tmp_path / 'run'}" in listed.stdout, listed.stdout
    assert listed.stdout.splitlines()[1].startswith(f"{job}  ")


def test_a_missing_site_file_is_one_line_naming_it(capsys, tmp_path, monkeypatch):
    # issue 21: a missing --slurm-config listed bcrdist's packaged training configs
    site = tmp_path / "site.yaml"
    code, out, err = submit(capsys, tmp_path, "--slurm-config", str(site), "--dry-run")
    assert code == 2 and not out
    assert err == f"bcrdist submit: error: {site}: Slurm site config not found (given by --slurm-config)\n", err
    monkeypatch.setenv(SLURM_CONFIG_VAR, str(site))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(site))}: .* \(given by \${SLURM_CONFIG_VAR}\)$"):
        load_resources()
