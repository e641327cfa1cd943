"""`bcrdist train --nproc N`: torchrun's agent as a child process, with an exit status to rely on.

Under a plain `torchrun … -m bcrdist train …`, a Ctrl-C or SIGTERM reaches torchrun's agent, which sends the
same signal to its workers (each in a session of its own), waits for them (30 s; here `SHUTDOWN_TIMEOUT_S`
unless TORCH_ELASTIC_SHUTDOWN_TIMEOUT is set), SIGKILLs what is left, and then ends in a traceback of its
own `SignalException` and exit status 1, whatever the workers did; a worker that fails ends it in a
`ChildFailedError` table and status 1, whatever the worker's own status. Here two processes split that work:

- `run_torchrun(nproc, train_args)`, the user's process, starts the agent in a session of its own (a
  terminal's Ctrl-C reaches this process only), forwards the first SIGINT or SIGTERM to it, and returns its
  status; a second signal ends the agent and its workers at once (SIGKILL: `last.pt` stays as last saved).
- the agent, `python -m bcrdist.launch.torchrun NPROC ARGS…`, runs torchrun's `run()` (`--standalone
  --nproc-per-node NPROC -m bcrdist train ARGS…`) in-process with its log lines up to ERROR silenced, and
  exits `agent_status`: 128 + the signal's number after a signal (the workers stopped at a step boundary and
  saved `last.pt`: 130, 143), the first failed worker's status after a failure (128 + N for a worker killed
  by signal N), 0 otherwise. It prints nothing itself: every worker prints its own one line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

FORWARDED = (signal.SIGINT, signal.SIGTERM)
SHUTDOWN_TIMEOUT_S = 120


def run_torchrun(nproc: int, train_args: list[str]) -> int:
    """Run `bcrdist train TRAIN_ARGS` on `nproc` local ranks under torchrun's agent (module docstring) and
    return the exit status."""
    received: list[int] = []
    agent: list[subprocess.Popen] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        if agent:
            _signal_agent(agent[0], signum, first=len(received) == 1)

    # installed before the agent starts, so that no signal in between goes unforwarded
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        env = dict(os.environ)
        # torchrun sets it to 1 for several workers anyway, with a banner; bcrdist sets its own threads
        env.setdefault("OMP_NUM_THREADS", "1")
        # how long the agent waits for the workers to save last.pt after a signal before it SIGKILLs them
        # (torchrun's default, 30 s, can be shorter than a large model's step and checkpoint)
        env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
        agent.append(subprocess.Popen([sys.executable, "-m", "bcrdist.launch.torchrun", str(nproc), *train_args],
                                      env=env, start_new_session=True))
        for i, signum in enumerate(received):
            _signal_agent(agent[0], signum, first=i == 0)
        status = agent[0].wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - status if status < 0 else status


def _signal_agent(agent: subprocess.Popen, signum: int, first: bool) -> None:
    """The first signal goes to the agent (which forwards it to the workers); a later one kills the workers
    and the agent at once."""
    if agent.poll() is not None:
        return
    if first:
        agent.send_signal(signum)
        return
    for pid in _children(agent.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    agent.kill()


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux's /proc; none found elsewhere)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def agent_status(exc: BaseException | None) -> int:
    """The agent's exit status for how torchrun's `run()` ended: None (every worker succeeded) → 0; its
    SignalException → 128 + the signal's number; its ChildFailedError → the first failed worker's status (a
    negative exit code, a worker killed by signal N, → 128 + N)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if exc is None:
        return 0
    if isinstance(exc, SignalException):
        return 128 + int(exc.sigval)
    if isinstance(exc, ChildFailedError):
        code = exc.get_first_failure()[1].exitcode
        return 128 - code if code < 0 else code
    raise TypeError(f"not an outcome of torchrun's run(): {exc!r}")


def agent_main(argv: list[str]) -> int:
    """The agent process: `NPROC TRAIN_ARGS…` → torchrun's `run()` for `python -m bcrdist train TRAIN_ARGS…`
    on NPROC local ranks; returns `agent_status`. Any other failure of the agent (a rendezvous that cannot
    start) is one line on stderr and status 1."""
    # in this process only torchrun's agent logs: its warnings and errors repeat, less clearly, what the
    # workers say in their own one line
    logging.disable(logging.ERROR)
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    nproc, train_args = argv[0], argv[1:]
    args = torchrun.parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "bcrdist", "train",
                                *train_args])
    try:
        torchrun.run(args)
    except (SignalException, ChildFailedError) as exc:
        return agent_status(exc)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT     # a SIGINT before torchrun's own handlers were in place
    except Exception as exc:  # noqa: BLE001 - the agent's own failure: one line, not torchrun's traceback
        reason = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"bcrdist train: torchrun's agent failed: {reason}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(agent_main(sys.argv[1:]))
