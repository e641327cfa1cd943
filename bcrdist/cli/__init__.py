"""The command layer: every `bcrdist` command, argument parsing only here (see `bcrdist.cli.main`)."""

from bcrdist.cli.main import main

__all__ = ["main"]
