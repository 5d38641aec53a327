"""Exception-group hygiene for traft's public context managers.

Trio wraps everything that leaves a nursery in an ExceptionGroup, the user's
own exception included. Like trio-websocket's ``open_websocket``, traft's
async context managers hand back the one real exception instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """Every non-group exception inside ``exc``, depth first."""
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from leaves(sub)
    else:
        yield exc


def collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The single real exception in ``group`` (Cancelled ignored); a
    Cancelled if that is all there is; the group itself if several real
    exceptions happened at once."""
    found = list(leaves(group))
    real = [e for e in found if not isinstance(e, trio.Cancelled)]
    if len(real) == 1:
        return real[0]
    if not real:
        return found[0]
    return group
