"""Preemption, time-limit and Ctrl-C signals: the handler only sets a flag; the loop acts at a step boundary.

Checkpointing inside a signal handler can deadlock (it may interrupt I/O or a collective), so the handler
records the signal and the training loop, at its next step boundary, agrees across ranks (an all-reduce),
saves `last.pt`, and then:
- SIGUSR2 / SIGTERM (a Slurm time limit or preemption): under Slurm rank 0 requeues the job (`scontrol
  requeue`, or submitit's handler under `bcrdist submit`) and the ranks exit 0, as Slurm and submitit expect of
  a requeued job; anywhere else, or when the requeue fails, they exit 128 + the signal's number (SIGTERM 143,
  SIGUSR2 140) so that `timeout … bcrdist train … && bcrdist evaluate …` does not go on with a half-trained
  model.
- SIGINT (Ctrl-C): no requeue, exit 130. The first Ctrl-C also restores the default action, so a second one
  ends the process at once (the last complete `last.pt` stays; a checkpoint being written is a temporary).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

REQUEUE_TIMEOUT_S = 60


def exit_code(signal_name: str) -> int:
    """The shell's status of a process ended by SIG`signal_name`: 128 + its number ('TERM' → 143)."""
    return 128 + int(getattr(signal, f"SIG{signal_name}"))


class PreemptionFlag:
    """Installs handlers for `signal_names` (e.g. ('USR2', 'TERM')), and for SIGINT with `interrupt`, that
    set `requested`. `announce`: the first Ctrl-C prints a line saying what happens (rank 0).

    `signal_name` is the name without the SIG prefix ('USR2') of the last signal this process received.
    """

    def __init__(self, signal_names=("USR2", "TERM"), interrupt: bool = False, announce: bool = False):
        self.requested = False
        self.signal_name = ""
        self.announce = announce
        self._previous = {}
        self._primary = None
        for name in signal_names:
            sig = getattr(signal, f"SIG{name.upper().removeprefix('SIG')}")
            self._primary = self._primary or sig
            self._previous[sig] = signal.signal(sig, self._handle)
        if interrupt:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name.removeprefix("SIG")
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if self.announce:
                # stdout, with the run's log lines: stderr keeps the one line the run ends with
                os.write(1, b"Ctrl-C: stopping at the next step and saving last.pt (Ctrl-C again to abort at "
                            b"once)\n")

    @property
    def signal_number(self) -> int:
        """The number of the received signal, 0 for none."""
        return int(getattr(signal, f"SIG{self.signal_name}")) if self.signal_name else 0

    def forward_to_previous(self) -> bool:
        """Call the handler that was installed before ours (submitit's requeue logic), if any. A rank that
        did not receive the signal itself (the ranks agree by an all-reduce) forwards the first one of
        `signal_names`."""
        sig = getattr(signal, f"SIG{self.signal_name}") if self.signal_name else self._primary
        handler = self._previous.get(sig)
        if callable(handler) and sig != signal.SIGINT:
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
    """`scontrol requeue` this job; True on success (False outside Slurm)."""
    job = slurm_job_id()
    if job is None:
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                                timeout=REQUEUE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"scontrol requeue {job} failed: {exc}")
        return False
    if result.returncode != 0:
        log(f"scontrol requeue {job} failed: {result.stderr.strip()}")
        return False
    log(f"requeued Slurm job {job}")
    sys.stdout.flush()
    return True
