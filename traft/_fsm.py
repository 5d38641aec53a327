"""The user's state machine contract (hashicorp ``fsm.go``).

``apply`` must be deterministic: every server applies the same entries in the
same order and must reach the same state. ``snapshot`` should only capture
(cheaply, e.g. a reference to immutable state); ``FSMSnapshot.persist`` does
the slow writing in a worker thread while applies go on.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Protocol, runtime_checkable

from ._storage import SnapshotSink
from ._types import Log


class FSMSnapshot(Protocol):
    def persist(self, sink: SnapshotSink) -> None: ...
    def release(self) -> None: ...


@runtime_checkable
class FSM(Protocol):
    def apply(self, log: Log) -> Any: ...  # may be ``async def``
    def snapshot(self) -> Any: ...  # FSMSnapshot, or an awaitable of one
    def restore(self, source: BinaryIO) -> None: ...  # runs in a worker thread


@runtime_checkable
class BatchingFSM(FSM, Protocol):
    def apply_batch(self, logs: list[Log]) -> list[Any]: ...
