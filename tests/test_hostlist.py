"""Slurm hostlist expansion (bcrdist.distributed.hostlist): the parser on every form of Slurm's hostlist
expressions, checked against `scontrol show hostnames` where Slurm is installed, and the scontrol path."""

from __future__ import annotations

import re
import shutil

import pytest

from bcrdist.distributed import hostlist
from bcrdist.distributed.hostlist import HostlistError, expand_hostlist, hostnames

# (expression, hosts in Slurm's order); every one of these is also accepted by Slurm 22.05's scontrol
FORMS = [
    ("single", ["single"]),
    ("n1,n2", ["n1", "n2"]),
    ("n1 n2", ["n1", "n2"]),                                           # whitespace separates too
    ("n1,,n2", ["n1", "n2"]),
    ("n[1-2]", ["n1", "n2"]),
    ("n[1-3,5]", ["n1", "n2", "n3", "n5"]),
    ("n[2,1]", ["n2", "n1"]),                                          # Slurm's order, not sorted
    ("n[1-2],n1", ["n1", "n2", "n1"]),                                 # duplicates kept
    ("x[9-10]", ["x9", "x10"]),
    ("gpu[01-03,07],login", ["gpu01", "gpu02", "gpu03", "gpu07", "login"]),
    ("node-[008-011]", ["node-008", "node-009", "node-010", "node-011"]),
    ("n[001-3]", ["n001", "n002", "n003"]),                            # the width of the range start
    ("n[1-010]", [f"n{i}" for i in range(1, 11)]),
    ("n[7,01-02]", ["n7", "n01", "n02"]),
    ("a1,b[5]", ["a1", "b5"]),
    ("c[1,3-4],d[2]", ["c1", "c3", "c4", "d2"]),
    ("[1-2]", ["1", "2"]),
    ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
    ("rack[1-2]-node[01-02],login1", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02", "login1"]),
    ("n[0-1]s[1],m", ["n0s1", "n1s1", "m"]),
    ("rack[0-1]_blade[8-10]", ["rack0_blade8", "rack0_blade9", "rack0_blade10",
                               "rack1_blade8", "rack1_blade9", "rack1_blade10"]),
]


@pytest.mark.parametrize("text, hosts", FORMS, ids=[f[0] for f in FORMS])
def test_parser_expands_every_form(text, hosts):
    assert expand_hostlist(text) == hosts


def test_three_bracket_groups_give_slurms_hosts():
    """Slurm orders three or more groups its own way; the hosts and the first host are the same."""
    hosts = expand_hostlist("c[1-2]e[1-2]f[01-02]")
    assert hosts[0] == "c1e1f01" and len(hosts) == 8
    assert set(hosts) == {f"c{c}e{e}f0{f}" for c in (1, 2) for e in (1, 2) for f in (1, 2)}


def test_text_after_the_last_bracket():
    """Newer Slurm allows a suffix (`n[1-2]-ib`); the parser does."""
    assert expand_hostlist("n[1-2]-ib,m[3-4]-ib") == ["n1-ib", "n2-ib", "m3-ib", "m4-ib"]
    assert expand_hostlist("a[1-2]b,c[3,5-6]d") == ["a1b", "a2b", "c3d", "c5d", "c6d"]


@pytest.mark.parametrize("text, problem", [
    ("n[1-2", "'[' without ']'"),
    ("n1-2]", "']' without '['"),
    ("n[10-8]", "runs backwards"),
    ("n[a-b]", "not a list of numbers"),
    ("n[1-2[3]]", "nested"),
    ("n[]", "not a list of numbers"),
])
def test_malformed_expressions_are_one_clear_error(text, problem):
    with pytest.raises(HostlistError, match=re.escape(problem)) as err:
        expand_hostlist(text)
    assert text in str(err.value)


needs_scontrol = pytest.mark.skipif(shutil.which("scontrol") is None, reason="no scontrol (Slurm) on this machine")


@needs_scontrol
@pytest.mark.parametrize("text, hosts", FORMS, ids=[f[0] for f in FORMS])
def test_parser_agrees_with_scontrol(text, hosts):
    assert hostlist.scontrol_hostnames(text) == hosts


@needs_scontrol
def test_parser_and_scontrol_give_the_same_hosts_for_three_groups():
    text = "c[1-2]e[1-2]f[01-02]"
    by_slurm = hostlist.scontrol_hostnames(text)
    assert by_slurm[0] == expand_hostlist(text)[0] and sorted(by_slurm) == sorted(expand_hostlist(text))


def test_hostnames_falls_back_to_the_parser_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert hostlist.scontrol_hostnames("n[1-2]") is None
    assert hostnames("rack[1-2]-node[01-02]")[:2] == ["rack1-node01", "rack1-node02"]
    assert hostnames("  ") == []
