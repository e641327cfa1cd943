"""Exceptions for bad user input, and `shown`, how a message quotes the value it refuses. The CLI prints them
as one line and exits non-zero."""

import math
import reprlib


class BcrdistError(Exception):
    """Base class: a user-facing error whose message names the file/key and what was expected."""


class ConfigError(BcrdistError, ValueError):
    """Malformed or invalid configuration (YAML syntax, unknown key, wrong type or value)."""


class DataError(BcrdistError, ValueError):
    """Malformed, inconsistent or corrupt data (wrong HDF5 layout, truncated shard, NaN, checksum)."""


class HangError(BcrdistError):
    """A rank of a distributed run did not answer within the process group's timeout (stopped, hung, or lost
    with its node). Not a user error: the CLI exits with status 1."""


class _BoundedRepr(reprlib.Repr):
    """reprlib's bounded repr (a few items per container, a few levels deep), for subclasses of the built-in
    types too, and for huge integers and byte strings, whose plain repr would be built whole first."""

    _KINDS = (str, bytes, bool, int, list, tuple, dict, set, frozenset)

    def repr1(self, x, level):
        kind = next((k for k in self._KINDS if isinstance(x, k)), None)
        if kind is None or kind is bool:
            return self.repr_instance(x, level)
        return getattr(self, f"repr_{kind.__name__}")(x, level)

    def repr_int(self, x, level):
        if x.bit_length() <= 3 * self.maxlong:
            return repr(int(x))
        return f"<an integer of {int(x.bit_length() * math.log10(2)) + 1} digits>"

    def repr_bytes(self, x, level):
        return repr(bytes(x[:self.maxstring])) + ("..." if len(x) > self.maxstring else "")


def shown(value, limit: int = 200, *, quotes: bool = True) -> str:
    """`value` as an error message quotes it: its repr on one line, at most `limit` characters (with `quotes`
    False a string as it is, for a name such as a data set's id). Never builds the whole repr of a large or
    deeply nested value (a YAML alias bomb is a few hundred bytes of file and billions of items once
    expanded): at most 6 items of a container and 3 levels are looked at."""
    bounded = _BoundedRepr()
    bounded.maxlevel = 3
    bounded.maxlist = bounded.maxtuple = bounded.maxset = bounded.maxfrozenset = bounded.maxdict = 6
    bounded.maxstring = bounded.maxother = limit
    text = value[:limit + 1] if isinstance(value, str) and not quotes else bounded.repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
