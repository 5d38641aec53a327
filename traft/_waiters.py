"""One-shot results that a Trio task can wait for (hashicorp's futures).

The node resolves them from its own tasks; a caller that was cancelled
simply stops waiting, and resolving an abandoned future costs nothing.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Future(Generic[T]):
    __slots__ = ("_event", "_result", "_error")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, value: T) -> None:
        if not self._event.is_set():
            self._result = value
            self._event.set()

    def set_exception(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class IndexWaiters:
    """Tasks waiting for a counter (the applied index) to reach a value."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Future[None]]] = []
        self._seq = itertools.count()

    def add(self, index: int) -> Future[None]:
        fut: Future[None] = Future()
        heapq.heappush(self._heap, (index, next(self._seq), fut))
        return fut

    def release_through(self, index: int) -> None:
        while self._heap and self._heap[0][0] <= index:
            heapq.heappop(self._heap)[2].set_result(None)

    def fail_all(self, error_factory: type[BaseException], message: str) -> None:
        heap, self._heap = self._heap, []
        for _, _, fut in heap:
            fut.set_exception(error_factory(message))
