"""In-memory snapshot stores (hashicorp ``InmemSnapshotStore`` and
``DiscardSnapshotStore``).

Sinks are plain synchronous file-like objects because ``FSMSnapshot.persist``
writes them from a worker thread; the store's own methods are async (with a
checkpoint) to match the :class:`~traft._storage.SnapshotStore` protocol.
"""

from __future__ import annotations

import io
import itertools
import threading
from types import TracebackType
from typing import BinaryIO, Self

import trio

from ._types import Configuration, SnapshotMeta

__all__ = [
    "DiscardSnapshotSink",
    "DiscardSnapshotStore",
    "InmemSnapshotSink",
    "InmemSnapshotStore",
]


class _SinkBase:
    """Shared file-object behaviour: open -> (closed | cancelled), once."""

    def __init__(self, id: str) -> None:
        self._id = id
        self._closed = False
        self._cancelled = False

    @property
    def id(self) -> str:
        """The id the snapshot will have once committed."""
        return self._id

    @property
    def closed(self) -> bool:
        """True after ``close()`` or ``cancel()``, as for any file object."""
        return self._closed or self._cancelled

    def writable(self) -> bool:
        # Lets io wrappers (TextIOWrapper, BufferedWriter) accept the sink.
        return True

    def flush(self) -> None:
        """Nothing is buffered outside the sink itself."""

    def _check_open(self) -> None:
        if self._cancelled:
            raise ValueError(f"snapshot sink {self._id} was cancelled")
        if self._closed:
            raise ValueError(f"snapshot sink {self._id} is closed")

    def write(self, b: bytes) -> int:
        """Accept ``b``; returns the number of bytes taken (all of them)."""
        self._check_open()
        return memoryview(b).nbytes

    def close(self) -> None:
        """Commit. Closing twice is a no-op; closing after ``cancel`` raises,
        since the data is gone and silently losing a snapshot would hide a bug."""
        if self._closed:
            return
        if self._cancelled:
            raise ValueError(f"snapshot sink {self._id} was cancelled")
        self._closed = True
        self._commit()

    def cancel(self) -> None:
        """Abandon the snapshot. A no-op once closed or cancelled, so error
        paths may call it unconditionally."""
        if self._closed or self._cancelled:
            return
        self._cancelled = True
        self._abandon()

    def _commit(self) -> None:
        pass

    def _abandon(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        # Commit on success, abandon on error: what persist() should do.
        if exc_type is None:
            self.close()
        else:
            self.cancel()


class InmemSnapshotSink(_SinkBase):
    """Buffers a snapshot in memory; ``close`` hands it to the store."""

    def __init__(self, store: InmemSnapshotStore, meta: SnapshotMeta, order: tuple[int, int, int]) -> None:
        super().__init__(meta.id)
        self._store = store
        self._meta = meta
        self._order = order
        self._buf = bytearray()

    @property
    def meta(self) -> SnapshotMeta:
        """The metadata as it stands (``size`` grows with each write)."""
        return _with_size(self._meta, len(self._buf))

    def write(self, b: bytes) -> int:
        self._check_open()
        self._buf += b
        return memoryview(b).nbytes

    def _commit(self) -> None:
        self._store._commit(_with_size(self._meta, len(self._buf)), self._order, bytes(self._buf))

    def _abandon(self) -> None:
        self._buf = bytearray()  # free the memory now, not when the sink dies


def _with_size(meta: SnapshotMeta, size: int) -> SnapshotMeta:
    return SnapshotMeta(id=meta.id, index=meta.index, term=meta.term,
                        configuration=meta.configuration,
                        configuration_index=meta.configuration_index,
                        size=size, version=meta.version)


class InmemSnapshotStore:
    """Keeps the newest committed snapshot only, in memory.

    A snapshot becomes visible (in ``list()``/``open()``) when its sink is
    closed. "Newest" orders by ``(term, index)`` and then creation order, the
    same order ``list()`` uses in every store; so if an older snapshot is
    committed after a newer one, the newer one is kept (exactly what a
    file store retaining one snapshot would do).
    """

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        # Sinks are closed from worker threads while list()/open() run in the
        # Trio thread: the lock keeps (meta, order, data) consistent.
        self._lock = threading.Lock()
        self._latest: tuple[SnapshotMeta, tuple[int, int, int], bytes] | None = None

    async def create(self, version: int, index: int, term: int,
                     configuration: Configuration,
                     configuration_index: int) -> InmemSnapshotSink:
        """Start a snapshot; write it through the returned sink."""
        await trio.lowlevel.checkpoint()
        n = next(self._counter)
        meta = SnapshotMeta(id=f"{term}-{index}-{n}", index=index, term=term,
                            configuration=configuration,
                            configuration_index=configuration_index,
                            size=0, version=version)
        return InmemSnapshotSink(self, meta, (term, index, n))

    def _commit(self, meta: SnapshotMeta, order: tuple[int, int, int], data: bytes) -> None:
        with self._lock:
            if self._latest is None or order > self._latest[1]:
                self._latest = (meta, order, data)

    async def list(self) -> list[SnapshotMeta]:
        """The committed snapshot, if any (newest first: at most one)."""
        await trio.lowlevel.checkpoint()
        with self._lock:
            return [] if self._latest is None else [self._latest[0]]

    async def open(self, id: str) -> tuple[SnapshotMeta, BinaryIO]:
        """Metadata and a fresh reader of the snapshot ``id``; ``ValueError``
        if it is not the snapshot this store holds."""
        await trio.lowlevel.checkpoint()
        with self._lock:
            latest = self._latest
        if latest is None or latest[0].id != id:
            raise ValueError(f"no snapshot with id {id!r} in this store")
        # A new BytesIO per open: readers are independent and the caller may
        # close it without affecting the store.
        return latest[0], io.BytesIO(latest[2])


class DiscardSnapshotSink(_SinkBase):
    """Accepts and forgets every write (hashicorp ``DiscardSnapshotSink``)."""


class DiscardSnapshotStore:
    """Stores nothing: for nodes that never need to restore a snapshot
    (hashicorp ``DiscardSnapshotStore``)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    async def create(self, version: int, index: int, term: int,
                     configuration: Configuration,
                     configuration_index: int) -> DiscardSnapshotSink:
        """A sink whose writes go nowhere."""
        await trio.lowlevel.checkpoint()
        return DiscardSnapshotSink(f"{term}-{index}-{next(self._counter)}")

    async def list(self) -> list[SnapshotMeta]:
        """Always empty."""
        await trio.lowlevel.checkpoint()
        return []

    async def open(self, id: str) -> tuple[SnapshotMeta, BinaryIO]:
        """Always fails: nothing is ever kept."""
        await trio.lowlevel.checkpoint()
        raise ValueError(f"DiscardSnapshotStore keeps no snapshots; cannot open {id!r}")
