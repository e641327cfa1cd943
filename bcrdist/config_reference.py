"""The key tables of docs/configuration.md, generated from the config dataclasses (`bcrdist.config.config_keys`).

A table sits between the lines `<!-- keys:NAME ... -->` and `<!-- /keys:NAME -->`; `update_reference(text,
tables)` rewrites each from the dataclass `tables[NAME]` and keeps the prose around them as it is
(`bcrdist config reference --write docs/configuration.md`). The test suite checks that the file is what this
makes of it, so a key added without a meaning, a renamed key or a changed default fails it.
"""

from __future__ import annotations

import re

from bcrdist.config import config_keys
from bcrdist.errors import ConfigError

BLOCK = re.compile(r"^(<!-- keys:(?P<name>[\w-]+)\b[^\n]*-->\n)(?P<body>.*?)^(<!-- /keys:(?P=name) -->)$",
                   re.MULTILINE | re.DOTALL)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(cls: type) -> str:
    """Every key of `cls` as a Markdown table (key, type, default, meaning); a section is a bold row."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in config_keys(cls):
        if key.is_section:
            lines.append(f"| **{key.name}** | section | | {_cell(key.help)} |")
        else:
            lines.append(f"| `{key.name}` | {_cell(key.type)} | `{_cell(key.default)}` | {_cell(key.help)} |")
    return "\n".join(lines) + "\n"


def update_reference(text: str, tables: dict[str, type], where: str = "reference") -> str:
    """`text` with the table of every marked block regenerated from its dataclass. A block naming no known
    table, or a table without a block, is a ConfigError naming `where`."""
    found = [m.group("name") for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(tables))
    if unknown:
        raise ConfigError(f"{where}: <!-- keys:{unknown[0]} --> names no config (known: {', '.join(tables)})")
    missing = [name for name in tables if name not in found]
    if missing:
        raise ConfigError(f"{where}: no table marked <!-- keys:{missing[0]} --> ... <!-- /keys:{missing[0]} -->")
    return BLOCK.sub(lambda m: m.group(1) + markdown_table(tables[m.group("name")]) + m.group(4), text)
