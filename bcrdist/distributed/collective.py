"""One collective pattern: rank 0 does it, every rank gets its result or the same one-line error.

Claiming the run directory, making the run plan, fitting a Born layer, writing a checkpoint or a results file:
rank 0 alone does the work, and every other rank waits in the broadcast that carries the outcome, so an error
on rank 0 must travel in that broadcast too or the others would wait forever. `on_main(ctx, fn)` is that
pattern, once: rank 0 calls `fn()`; its return value (picklable) reaches every rank; an exception raised by
`fn` is re-raised on rank 0 as it was and, on every other rank, as the same class of bcrdist error with the
same message (`BcrdistError` for a class the other ranks cannot rebuild).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from bcrdist.errors import BcrdistError

T = TypeVar("T")


def _error_classes(base: type = BcrdistError) -> dict[str, type]:
    """Every subclass of `base` by qualified name (a class defined in any imported module)."""
    found = {f"{base.__module__}.{base.__qualname__}": base}
    for sub in base.__subclasses__():
        found.update(_error_classes(sub))
    return found


def on_main(ctx, fn: Callable[[], T]) -> T:
    """Rank 0 calls `fn()`; every rank returns its result or raises its error (see the module docstring).
    Every rank of `ctx` must call this."""
    result, error, outcome = None, None, None
    if ctx.is_main:
        try:
            result = fn()
            outcome = ("ok", result)
        except Exception as exc:        # every rank waits for this broadcast: it must carry any failure
            error = exc
            outcome = ("error", f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc))
    if ctx.distributed:
        outcome = ctx.broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise _error_classes().get(outcome[1], BcrdistError)(outcome[2])
    return result if ctx.is_main else outcome[1]
