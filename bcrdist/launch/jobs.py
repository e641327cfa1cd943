"""The jobs a user submitted: recorded by `bcrdist submit` in `RUN_DIR/submissions.jsonl`, listed (with their
current state) and cancelled by `bcrdist jobs RUN_DIR [--cancel]`.

Every submission appends one JSON line (`submission_record`): the time (ISO-8601, UTC), the cluster (`slurm`
or `local`), the command line, the working directory, submitit's log folder, the array job id of a Slurm job
array, and one entry per job: its id (`42`, or `41_3` for element 3 of array 41: what scancel takes), its
index in the sweep (None for a single job) and its run directory. RUN_DIR is the base config's run directory:
for a sweep, the folder that holds the points' run directories. The line is appended with
O_APPEND|O_NOFOLLOW (a symbolic link planted at the path is refused, its target is never written) and
fsynced before `bcrdist submit` returns.

A Slurm job's state comes from `sacct` where accounting works, else from the controller (`squeue`, or
`scontrol show job` where squeue fails), which knows ended jobs only for MinJobAge (300 s by default);
afterwards the state is unknown, completed by what submitit's result file of task 0 says. A `--local` job's
state comes from submitit's files (its result file) and its controller process on this machine.
"""

from __future__ import annotations

import errno
import json
import os
import pickletools
import re
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from submitit.core.utils import JobPaths

from bcrdist.errors import BcrdistError
from bcrdist.fileio import NotFollowedError, fsync_dir, one_line, open_nofollow

SUBMISSIONS = "submissions.jsonl"
CLUSTERS = ("slurm", "local")
# Slurm states after which a job never runs again (a requeued job is PENDING, not one of these)
ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})


# scontrol's ArrayTaskId of an array's own record once no element is left pending in it (NO_VAL)
NO_TASK = "4294967294"
# what scancel says of a job that ended (or was forgotten) between reading its state and cancelling it
_ENDED_MEANWHILE = ("already completing or completed", "Invalid job id")


class JobsError(BcrdistError):
    """No submissions recorded, a corrupt record, a symbolic link at the record's path, or a failed scancel."""


@dataclass(frozen=True)
class RecordedJob:
    """One job of a recorded submission."""

    job_id: str             # "42", or "41_3" for element 3 of array 41
    index: int | None       # the sweep point (the array index on Slurm); None for a single job
    run_dir: str
    submitted: str          # ISO-8601 UTC
    cluster: str            # "slurm" or "local"
    folder: str             # submitit's log folder


@dataclass(frozen=True)
class JobState:
    """What `bcrdist jobs` shows of a job, and whether it may still run (then `--cancel` cancels it)."""

    text: str
    live: bool


def submission_record(jobs, configs: list[dict], *, argv: list[str], cluster: str, folder: Path,
                      cwd: str | None = None) -> dict:
    """The record of one submission: submitit's `jobs`, one per training config of `configs` (in order)."""
    entries, array_job_id = [], None
    for position, (job, cfg) in enumerate(zip(jobs, configs)):
        base, sep, element = str(job.job_id).partition("_")
        if sep:                                        # a Slurm array element: ARRAY_INDEX
            array_job_id, index = base, int(element)
        else:
            index = position if len(configs) > 1 else None
        entries.append({"job_id": str(job.job_id), "index": index, "run_dir": os.path.abspath(cfg["run_dir"])})
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cluster": cluster, "argv": list(argv),
            "cwd": cwd or os.getcwd(), "folder": os.path.abspath(folder), "array_job_id": array_job_id,
            "jobs": entries}


def submitted_text(record: dict) -> str:
    """'job 42', 'array job 41 (elements 0-2)' or 'jobs 7001, 7002': the ids a user needs if the record is lost."""
    ids = [entry["job_id"] for entry in record["jobs"]]
    if record.get("array_job_id"):
        indices = [entry["index"] for entry in record["jobs"]]
        return f"array job {record['array_job_id']} (elements {min(indices)}-{max(indices)})"
    return f"job{'s' if len(ids) > 1 else ''} {', '.join(ids)}"


def record_submission(run_dir: str | Path, record: dict) -> Path:
    """Append `record` as one line to RUN_DIR/submissions.jsonl, durably (fsync), never through a symbolic link
    planted at that path. A failure names the jobs that were submitted, so their ids are not lost."""
    path = Path(run_dir) / SUBMISSIONS
    line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode()
    lost = f"the submission is not recorded (submitted: {submitted_text(record)})"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_nofollow(path, "append")
    except NotFollowedError as exc:
        what = "is a symbolic link, not written through" if exc.errno == errno.ELOOP else "not a regular file"
        raise JobsError(f"{path}: {what}: {lost}") from None
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: cannot write: {exc.strerror}: {lost}") from None
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: cannot write: {exc.strerror}: {lost}") from None
    finally:
        os.close(fd)
    fsync_dir(path.parent)          # a file created just now: its directory entry too
    return path


def _entry(path: Path, number: int, line: str) -> list[RecordedJob]:
    """The jobs of line `number` of `path`; a line that is not a submission record is one error naming it."""
    def bad(reason: str) -> JobsError:
        return JobsError(f"{path}:{number}: not a submission record ({reason})")

    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise bad(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(record, dict):
        raise bad("not a JSON object")
    for key, kind in (("time", str), ("cluster", str), ("folder", str), ("jobs", list)):
        if not isinstance(record.get(key), kind):
            raise bad(f"'{key}' missing or not a {kind.__name__}")
    if record["cluster"] not in CLUSTERS:
        raise bad(f"cluster {record['cluster']!r} is not one of {', '.join(CLUSTERS)}")
    jobs = []
    for entry in record["jobs"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("job_id"), str) and entry["job_id"]
                and isinstance(entry.get("run_dir"), str)
                and (entry.get("index") is None or type(entry.get("index")) is int)):
            raise bad("a job without a job_id, run_dir and integer or null index")
        jobs.append(RecordedJob(entry["job_id"], entry.get("index"), entry["run_dir"], record["time"],
                                record["cluster"], record["folder"]))
    return jobs


def recorded_jobs(run_dir: str | Path) -> list[RecordedJob]:
    """Every job recorded in RUN_DIR/submissions.jsonl, oldest first."""
    run_dir = Path(run_dir)
    path = run_dir / SUBMISSIONS
    if not run_dir.is_dir():
        raise JobsError(f"{run_dir}: no such folder")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        hint = ""
        if (run_dir.parent / SUBMISSIONS).is_file():
            hint = f"; a sweep's submissions are recorded in its base folder {run_dir.parent}"
        raise JobsError(f"{run_dir}: no {SUBMISSIONS}: no job was submitted into it with `bcrdist submit`{hint}") \
            from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise JobsError(f"{path}: is a symbolic link, not read through") from None
        raise
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise JobsError(f"{path}: not a regular file")
        data = fh.read()
    jobs = []
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise JobsError(f"{path}:{number}: not a submission record (not UTF-8 text)") from None
        jobs += _entry(path, number, text)
    if not jobs:
        raise JobsError(f"{path}: records no jobs")
    return jobs


def _tool(args: list[str]) -> subprocess.CompletedProcess | None:
    """Run a Slurm client command; None where it is missing or hangs."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _array_indices(spec: str) -> list[int]:
    """Slurm's array index list '1-3,7,10-14:2%4' → [1, 2, 3, 7, 10, 12, 14] (the %limit dropped)."""
    found = []
    for part in spec.split("%")[0].split(","):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        found += range(int(first), int(last or first) + 1, int(step or 1))
    return found


def _expand(job_id: str) -> list[str]:
    """'41_[1-3]' (pending array elements, as sacct lists them) → ['41_1', '41_2', '41_3']; others as given."""
    match = re.fullmatch(r"(\d+)_\[([0-9,:%-]+)\]", job_id)
    if not match:
        return [job_id]
    return [f"{match.group(1)}_{i}" for i in _array_indices(match.group(2))]


def _first_word(state: str) -> str:
    """'CANCELLED by 1000' → 'CANCELLED'; '' stays ''."""
    return (state.split() or [""])[0]


def _sacct(job_ids: list[str]) -> dict[str, str] | None:
    """State by job id from the accounting database; None where accounting does not work."""
    out = _tool(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)])
    if out is None or out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.partition("|")
        for one in _expand(job_id.strip()):
            states[one] = _first_word(state)
    return states


def _bases(job_ids: list[str]) -> list[str]:
    """The jobs to ask the controller about: an array's id for its elements ('41_3' → '41'), which lists all of
    them, and its own record once no element is left pending (see `job_states`)."""
    return list(dict.fromkeys(job_id.partition("_")[0] for job_id in job_ids))


def _squeue(job_ids: list[str]) -> dict[str, str] | None:
    """State by job id from the controller (every job it still knows, ended ones too, each array element on its
    own); None where squeue fails."""
    out = _tool(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(_bases(job_ids))])
    if out is None:
        return None
    if out.returncode != 0:
        # with one id, a job the controller forgot is an error rather than an empty list
        return {} if "Invalid job id" in out.stderr else None
    return {job_id.strip(): _first_word(state) for job_id, _, state in
            (line.partition("|") for line in out.stdout.splitlines())}


def _scontrol(job_ids: list[str]) -> dict[str, str] | None:
    """State by job id from `scontrol show job` (one call per job or array); None where scontrol fails."""
    states = {}
    for base in _bases(job_ids):
        out = _tool(["scontrol", "show", "job", "-o", base])
        if out is None:
            return None
        if out.returncode != 0:
            if "Invalid job id" in out.stderr:
                continue
            return None
        for line in out.stdout.splitlines():
            info = dict(re.findall(r"(\w+)=(\S*)", line))
            if info.get("ArrayTaskId", NO_TASK) != NO_TASK:
                for index in _array_indices(info["ArrayTaskId"]):
                    states[f"{info['ArrayJobId']}_{index}"] = _first_word(info.get("JobState", ""))
            elif info.get("JobId"):
                states[info["JobId"]] = _first_word(info.get("JobState", ""))
    return states


def _result_outcome(folder: str, job_id: str) -> str | None:
    """'success' or 'error' from submitit's result file of task 0, None without one. The pickle's opcodes are
    only scanned for its first string (submitit writes the tuple (outcome, result)): nothing is unpickled."""
    try:
        with open(JobPaths(folder, job_id, 0).result_pickle, "rb") as fh:
            for opcode, arg, _ in pickletools.genops(fh):
                if isinstance(arg, str) and "UNICODE" in opcode.name:
                    return arg
    except (OSError, ValueError):
        return None
    return None


def _local_controller_running(job: RecordedJob) -> bool:
    """Whether the job's submitit controller (its id is the controller's pid) still runs on this machine."""
    try:
        args = Path(f"/proc/{int(job.job_id)}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return b"submitit.local._local" in args and job.folder.encode() in args


def _local_state(job: RecordedJob) -> JobState:
    outcome = _result_outcome(job.folder, job.job_id)
    if outcome is not None:
        return JobState(f"{'COMPLETED' if outcome == 'success' else 'FAILED'} (local)", False)
    if _local_controller_running(job):
        return JobState("RUNNING (local)", True)
    return JobState("local (no result, and no submitit process for it on this machine)", False)


def job_states(jobs: list[RecordedJob]) -> dict[str, JobState]:
    """The current state of every job, by job id (see the module docstring for where it comes from)."""
    slurm_ids = [job.job_id for job in jobs if job.cluster == "slurm"]
    known: dict[str, str] = {}
    reachable = False
    if slurm_ids:
        accounted = _sacct(slurm_ids)
        known.update(accounted or {})
        missing = [i for i in slurm_ids if i not in known]
        controller = _squeue(missing) if missing else {}
        if controller is None:
            controller = _scontrol(missing)
        known.update(controller or {})
        reachable = accounted is not None or controller is not None
    states = {}
    for job in jobs:
        if job.cluster == "local":
            states[job.job_id] = _local_state(job)
        elif known.get(job.job_id) or known.get(job.job_id.partition("_")[0]):
            # elements of an array cancelled while pending have no record of their own: the controller keeps
            # only the array's (listed under the bare array id), whose state is theirs
            state = known.get(job.job_id) or known[job.job_id.partition("_")[0]]
            states[job.job_id] = JobState(state, state not in ENDED)
        else:
            why = "Slurm no longer knows the job" if reachable else "no working Slurm client here"
            outcome = _result_outcome(job.folder, job.job_id)
            result = f"; submitit result: {outcome}" if outcome else ""
            states[job.job_id] = JobState(f"unknown ({why}{result})", False)
    return states


def cancel_jobs(jobs: list[RecordedJob], states: dict[str, JobState]) -> list[RecordedJob]:
    """Cancel every job that may still run: Slurm jobs with one `scancel`, local ones with the signal submitit
    itself cancels them with (SIGINT to the controller). The jobs cancelled."""
    live = [job for job in jobs if states[job.job_id].live]
    slurm_ids = [job.job_id for job in live if job.cluster == "slurm"]
    if slurm_ids:
        out = _tool(["scancel", *slurm_ids])
        if out is None:
            raise JobsError(f"scancel {' '.join(slurm_ids)} failed: scancel not found or not answering")
        # a job that ended since its state was read is no failure (some Slurm versions exit 1 for it)
        errors = [line for line in out.stderr.splitlines()
                  if line.strip() and not any(benign in line for benign in _ENDED_MEANWHILE)]
        if out.returncode != 0 and (errors or not out.stderr.strip()):
            reason = one_line("; ".join(errors)) or f"exit status {out.returncode}"
            raise JobsError(f"scancel {' '.join(slurm_ids)} failed: {reason}")
    cancelled = [job for job in live if job.cluster == "slurm"]
    for job in live:
        if job.cluster == "local":
            try:
                os.kill(int(job.job_id), signal.SIGINT)
            except ProcessLookupError:
                continue                            # it ended since its state was read
            cancelled.append(job)
    return cancelled
