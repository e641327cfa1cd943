"""Slurm hostlists: `SLURM_JOB_NODELIST`-style expressions expanded into host names.

`hostnames(text)` asks Slurm itself (`scontrol show hostnames`, which parses locally without the controller)
and falls back to `expand_hostlist`, a parser for the forms of Slurm's hostlist expressions:

    n1,n2            comma- (or space-) separated names        → n1 n2
    n[1-3,5]         ranges and single numbers in brackets      → n1 n2 n3 n5
    gpu[001-010]     zero padding: the width of the range start → gpu001 … gpu010
    rack[1-2]-node[01-02]   several bracket groups              → rack1-node01 rack1-node02 rack2-node01 …
    a[1-2],b,c[7,01-02]     lists mixing all of these           → a1 a2 b c7 c01 c02

Hosts keep Slurm's order (no sorting, duplicates kept). With two bracket groups the first varies slowest,
as in Slurm; with three or more Slurm's own order is unusual (the same hosts, the same first host), which
only `scontrol` reproduces. The parser also accepts text after the last bracket (`n[1-2]-ib`), which newer
Slurm releases allow and 22.05 rejects.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess

from bcrdist.errors import BcrdistError


class HostlistError(BcrdistError):
    """A hostlist expression that Slurm's syntax does not allow."""


_RANGE = re.compile(r"(\d+)(?:-(\d+))?$")


def _expand_brackets(body: str, where: str) -> list[str]:
    """'1-3,5' → ['1', '2', '3', '5']; '01-03' → ['01', '02', '03'] (the width of the range start)."""
    values: list[str] = []
    for part in body.split(","):
        m = _RANGE.match(part.strip())
        if m is None:
            raise HostlistError(f"hostlist {where!r}: [{body}] is not a list of numbers and ranges like 1-3,5")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise HostlistError(f"hostlist {where!r}: range {lo}-{hi} runs backwards")
        values += [f"{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
    return values


def _expand_one(name: str, where: str) -> list[str]:
    """One comma-free hostlist item: literal text and bracket groups, expanded as a Cartesian product
    (the first group varies slowest)."""
    pieces: list[list[str]] = []
    rest = name
    while rest:
        open_at = rest.find("[")
        close_at = rest.find("]")
        if open_at < 0:
            if close_at >= 0:
                raise HostlistError(f"hostlist {where!r}: ']' without '['")
            pieces.append([rest])
            break
        if 0 <= close_at < open_at:
            raise HostlistError(f"hostlist {where!r}: ']' without '['")
        close_at = rest.find("]", open_at)
        if close_at < 0:
            raise HostlistError(f"hostlist {where!r}: '[' without ']'")
        if "[" in rest[open_at + 1:close_at]:
            raise HostlistError(f"hostlist {where!r}: nested '['")
        if open_at:
            pieces.append([rest[:open_at]])
        pieces.append(_expand_brackets(rest[open_at + 1:close_at], where))
        rest = rest[close_at + 1:]
    return ["".join(combo) for combo in itertools.product(*pieces)]


def _split_top_level(text: str) -> list[str]:
    """Split at commas and whitespace outside brackets: 'a[1,2],b c' → ['a[1,2]', 'b', 'c']."""
    items, current, depth = [], [], 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if depth == 0 and (ch == "," or ch.isspace()):
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [item for item in items if item]


def expand_hostlist(text: str) -> list[str]:
    """Expand a Slurm hostlist expression without Slurm (see the module docstring for the forms)."""
    hosts: list[str] = []
    for item in _split_top_level(text.strip()):
        hosts += _expand_one(item, text)
    return hosts


def scontrol_hostnames(text: str) -> list[str] | None:
    """`scontrol show hostnames TEXT`, or None when scontrol is missing, fails or takes over 20 s."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return None
    try:
        out = subprocess.run([scontrol, "show", "hostnames", text], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    hosts = out.stdout.split()
    return hosts if out.returncode == 0 and hosts else None


def hostnames(text: str) -> list[str]:
    """The hosts of a hostlist: Slurm's own expansion when `scontrol` works here, else `expand_hostlist`."""
    if not text.strip():
        return []
    return scontrol_hostnames(text) or expand_hostlist(text)
