#!/usr/bin/env python
"""Same as `bcrdist split` (see `tools/split.py --help`), runnable without installing the package."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bcrdist.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["split", *sys.argv[1:]]))
