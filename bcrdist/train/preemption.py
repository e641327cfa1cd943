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
    """Installs handlers for `signal_names` (e.g. ('USR2', 'TERM')) that set `requested`.

    `signal_name` is the name without the SIG prefix ('USR2') of the last signal this process received.
    """

    def __init__(self, signal_names=("USR2", "TERM")):
        self.requested = False
        self.signal_name = ""
        self._previous = {}
        self._primary = None
        for name in signal_names:
            sig = getattr(signal, f"SIG{name.upper().removeprefix('SIG')}")
            self._primary = self._primary or sig
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name.removeprefix("SIG")

    def forward_to_previous(self) -> bool:
        """Call the handler that was installed before ours (submitit's requeue logic), if any. A rank that
        did not receive the signal itself (the ranks agree by an all-reduce) forwards the first one of
        `signal_names`."""
        sig = getattr(signal, f"SIG{self.signal_name}") if self.signal_name else self._primary
        handler = self._previous.get(sig)
        if callable(handler):
            handler(sig, None)
            return True
        return False

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
