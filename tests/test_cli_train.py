"""`bcrdist train`'s own command line: --print's suggestions, the help that documents run directories and exit
statuses, and how a trainer outcome becomes the exit status."""

from __future__ import annotations

import pytest

from bcrdist.cli import main
from bcrdist.cli.train import exit_status


def help_text(capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_print_of_an_unknown_key_suggests_the_closest(tmp_path, capsys):
    argv = ["train", "--set", f"run_dir={tmp_path / 'run'}", "--print"]
    assert main(argv + ["schedule.epoch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bcrdist train: error: --print: no config key 'schedule.epoch' (did you mean 'schedule.epochs'?)"
    assert main(argv + ["zzzzqqqq"]) == 2
    assert "did you mean" not in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_help_documents_print_set_restart_and_the_exit_statuses(capsys):
    text = help_text(capsys)
    assert "--print KEY|all" in text
    assert ("validate the config, print the resolved value of KEY (a key such as schedule.epochs, a section such "
            "as schedule as YAML, or 'all' for the whole config) and exit without training") in text
    assert "(repeatable; list them with `bcrdist config keys`)" in text
    assert "--restart" in text and "RUN.old-YYYYmmdd-HHMMSS" in text and "nothing is deleted" in text
    for status in ("130 Ctrl-C", "140 SIGUSR2", "143 SIGTERM", "2 user error"):
        assert status in text, status


@pytest.mark.parametrize("result, code", [
    ({"steps": 10, "errors": {}}, 0),
    ({"status": "complete", "stop_reason": "schedule complete"}, 0),
    ({"status": "preempted", "signal": "USR2", "requeued": True}, 0),
    ({"status": "preempted", "signal": "USR2", "requeued": False}, 140),
    ({"status": "preempted", "signal": "TERM", "requeued": False}, 143),
    ({"status": "interrupted", "signal": "INT", "requeued": False}, 130),
    ({"status": "failed"}, 1),
])
def test_exit_status_of_each_outcome(result, code):
    assert exit_status(result) == code
