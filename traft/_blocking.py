"""Where traft runs blocking calls (FSM restore, snapshot persist, snapshot
file reads): in a worker thread, so the event loop never stalls.

Simulations on ``MockClock(autojump_threshold=0)`` switch to running them
inline (``inline_blocking()``): the autojump clock would otherwise race the
thread, and a replayed seed must not depend on a thread's timing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

import trio

T = TypeVar("T")

_inline: ContextVar[bool] = ContextVar("traft_inline_blocking", default=False)


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    if _inline.get():
        await trio.lowlevel.checkpoint()
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args)


@contextlib.contextmanager
def inline_blocking() -> Iterator[None]:
    """Run traft's blocking calls inline in tasks started within this block
    (tests on the autojump clock only: it stalls the event loop)."""
    token = _inline.set(True)
    try:
        yield
    finally:
        _inline.reset(token)
