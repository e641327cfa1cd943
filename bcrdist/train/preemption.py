"""Preemption and time-limit signals: the handler only sets a flag; the loop acts at a step boundary.

Checkpointing inside a signal handler can deadlock (it may interrupt I/O or a collective), so the handler
records the signal and the training loop, at its next step boundary, agrees across ranks (a MAX
all-reduce), saves `last.pt`, and — under Slurm — rank 0 requeues the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


class PreemptionFlag:
    """Installs handlers for `signal_names` (e.g. ('USR2', 'TERM')) that set `requested`."""

    def __init__(self, signal_names=("USR2", "TERM")):
        self.requested = False
        self.signal_name = ""
        self._previous = {}
        for name in signal_names:
            sig = getattr(signal, f"SIG{name.upper().removeprefix('SIG')}")
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def forward_to_previous(self) -> bool:
        """Call the handler that was installed before ours (submitit's requeue logic), if any."""
        sig = getattr(signal, f"SIG{self.signal_name}", None) if self.signal_name else None
        handler = self._previous.get(sig)
        if callable(handler):
            handler(sig, None)
            return True
        return False

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_in_worker(_worker_id: int) -> None:
    """DataLoader worker_init_fn: workers must survive the signal the main process handles."""
    for name in ("SIGUSR1", "SIGUSR2", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def slurm_job_id() -> str | None:
    """The id to requeue: `ARRAYJOB_TASK` for array jobs, else the job id; None outside Slurm."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_slurm_job(log=print) -> bool:
    """`scontrol requeue` this job; True on success."""
    job = slurm_job_id()
    if job is None:
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        log(f"scontrol requeue {job} failed: {result.stderr.strip()}")
        return False
    log(f"requeued Slurm job {job}")
    sys.stdout.flush()
    return True
