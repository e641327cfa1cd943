"""Which rank stopped answering: one heartbeat per rank in the rendezvous store.

When a collective times out, torch says only that it timed out. Here every rank of a multi-process run writes
its wall time to the store (`bcrdist/heartbeat/<rank>`) from a daemon thread every `interval` seconds (a tenth
of the process group's timeout, within [1 s, 30 s]) and notes when the store last answered it. After a failed
collective, `Heartbeat.silence()` names the ranks that went quiet: those whose heartbeat is more than
`STALE_INTERVALS` intervals old, or rank 0 when the store itself (a server in rank 0's process, or in
torchrun's agent on rank 0's node) stopped answering. A healthy process keeps beating while its main thread
waits in a collective, so a silent rank is one whose process is stopped, hung with the interpreter locked, or
unreachable (its node or network lost). Heartbeats compare wall clocks of different nodes: synchronised
clocks (NTP, as on any cluster) are far closer than a stale interval.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass

import torch.distributed as dist

KEY = "bcrdist/heartbeat/{rank}"
MIN_INTERVAL_S, MAX_INTERVAL_S = 1.0, 30.0
# a heartbeat older than this many intervals is stale (a live rank is at most one interval behind)
STALE_INTERVALS = 3
# how long reading the heartbeats may take: the store answered within the last stale interval, so a store
# that takes longer has stopped answering since
READ_WAIT_S = 5.0
# how long stopping waits for the thread: it waits between beats, or is stuck on a store that stopped
# answering (a daemon thread, left to the interpreter's exit)
STOP_WAIT_S = 1.0


def heartbeat_interval(timeout_s: float) -> float:
    """Seconds between heartbeats for a process group timeout of `timeout_s`: a tenth, within [1 s, 30 s]."""
    return min(max(timeout_s / 10, MIN_INTERVAL_S), MAX_INTERVAL_S)


@dataclass(frozen=True)
class Silence:
    """Ranks that stopped answering: `ranks`, the longest time one of them has been silent (`seconds`), and
    `store`: True when what fell silent is the rendezvous store, on rank 0's node."""

    ranks: tuple[int, ...]
    seconds: float
    store: bool = False

    def message(self, when: str, waits: str) -> str:
        """One line: 'rank 1 did not answer WHEN (no heartbeat for 41 s; collectives wait WAITS): its process is
        stopped, hung or gone'."""
        if self.store:
            return (f"rank 0 did not answer {when} (the rendezvous store on its node has not answered for "
                    f"{self.seconds:.0f} s; collectives wait {waits}): its process is stopped, hung or gone")
        if len(self.ranks) == 1:
            who, whose = f"rank {self.ranks[0]}", "its process is"
        else:
            who, whose = f"ranks {', '.join(map(str, self.ranks))}", "their processes are"
        return (f"{who} did not answer {when} (no heartbeat for {self.seconds:.0f} s; collectives wait {waits}): "
                f"{whose} stopped, hung or gone")


class Heartbeat:
    """This rank's heartbeat (module docstring), started at once; `stop()` ends it.

    `store` is the rendezvous store (read after a failure); the thread writes through a client connection of
    its own to `host:port`, so a write stuck on a store that stopped answering blocks nothing else.
    """

    def __init__(self, store: dist.Store, host: str, port: int, rank: int, world_size: int, timeout_s: float):
        self.rank, self.world_size = rank, world_size
        self.interval = heartbeat_interval(timeout_s)
        self._store = store
        self._client = dist.TCPStore(host, port, is_master=False, wait_for_workers=False,
                                     timeout=datetime.timedelta(seconds=timeout_s))
        self._key = KEY.format(rank=rank)
        self._started = time.monotonic()
        self._last_answer = self._started
        self._wake = threading.Event()
        self._stopped = False
        self._beat()        # before the first collective, so that every rank's key exists
        self._thread = threading.Thread(target=self._run, name="bcrdist-heartbeat", daemon=True)
        self._thread.start()

    def set_timeout(self, timeout_s: float) -> None:
        """Follow a new process group timeout: beat every `heartbeat_interval(timeout_s)` from now on."""
        self.interval = heartbeat_interval(timeout_s)
        self._wake.set()

    def stop(self) -> None:
        """End the thread (waits at most STOP_WAIT_S: a thread stuck on a silent store is left behind) and,
        once it has ended, the store connections: the store's server too where this process hosts it (rank 0
        outside torchrun), so that none of its threads is left to the interpreter's exit."""
        self._stopped = True
        self._wake.set()
        self._thread.join(STOP_WAIT_S)
        if not self._thread.is_alive():
            self._client = self._store = None

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped:
                return
            self._beat()

    def _beat(self) -> None:
        try:
            self._client.set(self._key, f"{time.time():.3f}")
            # a set is sent without waiting for the store; a check waits for its answer
            self._client.check([self._key])
        except RuntimeError:
            # the store is unreachable (rank 0 stopped, or ended first at the end of the run): the time since
            # the last answer says so when a collective fails
            return
        self._last_answer = time.monotonic()

    def silence(self) -> Silence | None:
        """The ranks that stopped answering, or None: every other rank's heartbeat is fresh, or the store
        refused (the process hosting it ended). Call it after a collective failed; it returns within
        READ_WAIT_S."""
        if self._store is None:
            return None         # stopped: the run is over
        stale = STALE_INTERVALS * self.interval
        unanswered = time.monotonic() - self._last_answer
        if self.rank != 0 and unanswered > stale:
            return Silence((0,), unanswered, store=True)
        try:
            stamps = self._read()
        except RuntimeError:
            # the store refused: the process hosting it ended (its own error says why), this is no hang
            return None
        if stamps is None:
            return Silence((0,), unanswered + READ_WAIT_S, store=True) if self.rank != 0 else None
        now, since_start = time.time(), time.monotonic() - self._started
        # a rank without a heartbeat stopped before its first one: silent since this rank started
        ages = {r: now - stamps[r] if r in stamps else since_start for r in range(self.world_size) if r != self.rank}
        silent = tuple(r for r, age in ages.items() if age > stale)
        return Silence(silent, max(ages[r] for r in silent)) if silent else None

    def _read(self) -> dict[int, float] | None:
        """{rank: wall time of its last heartbeat}, or None when the store did not answer within READ_WAIT_S;
        the store's RuntimeError when it refused. The read runs in a daemon thread: a TCPStore request to a
        stopped host can block far longer than the store's own timeout, and the caller must go on to stop the
        run."""
        found: dict[int, float] = {}
        refused: list[RuntimeError] = []
        done = threading.Event()

        def read() -> None:
            keys = [KEY.format(rank=r) for r in range(self.world_size)]
            try:
                # multi_get waits for missing keys: ask only for those that exist
                present = keys if self._store.check(keys) else [k for k in keys if self._store.check([k])]
                values = self._store.multi_get(present) if present else []
                found.update({keys.index(k): float(v) for k, v in zip(present, values)})
            except RuntimeError as exc:
                refused.append(exc)
            done.set()

        threading.Thread(target=read, name="bcrdist-heartbeat-read", daemon=True).start()
        if not done.wait(READ_WAIT_S):
            return None
        if refused:
            raise refused[0]
        return found
