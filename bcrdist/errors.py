"""Exceptions for bad user input. The CLI prints them as one line and exits non-zero."""


class BcrdistError(Exception):
    """Base class: a user-facing error whose message names the file/key and what was expected."""


class ConfigError(BcrdistError, ValueError):
    """Malformed or invalid configuration (YAML syntax, unknown key, wrong type or value)."""


class DataError(BcrdistError, ValueError):
    """Malformed, inconsistent or corrupt data (wrong HDF5 layout, truncated shard, NaN, checksum)."""


class HangError(BcrdistError):
    """A rank of a distributed run did not answer within the process group's timeout (stopped, hung, or lost
    with its node). Not a user error: the CLI exits with status 1."""
