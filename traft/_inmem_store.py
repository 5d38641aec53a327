"""A volatile in-memory LogStore and StableStore (hashicorp ``InmemStore``).

Meant for tests and for nodes whose state may be lost on restart. Every async
method starts with a Trio checkpoint, so under the scheduler it behaves like
real I/O (other tasks run, cancellation is honoured) while staying
deterministic. The checkpoint comes *before* any change, so a cancelled call
has changed nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ._errors import LogNotFoundError
from ._types import Log

__all__ = ["InmemStore"]

_UINT64_MAX = 2**64 - 1


def _check_key(key: object) -> bytes:
    # Durable stores key on raw bytes; accepting str here would let code pass
    # with InmemStore and then fail against SQLiteStore.
    if not isinstance(key, bytes):
        raise TypeError(f"stable store keys must be bytes, not {type(key).__name__}")
    return key


def _check_index(index: object, what: str = "index") -> int:
    # bool is an int subclass, but True as an index is always a bug.
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"{what} must be an int, not {type(index).__name__}")
    return index


class InmemStore:
    """Log store and stable store kept in dicts; nothing survives the object.

    Entries are stored by reference: a :class:`Log` is never mutated once
    created, so sharing it with the caller is safe and saves copies.

    ``first_index``/``last_index`` are tracked on every write and delete
    instead of being recomputed, so both are O(1). Like hashicorp's store it
    assumes the log is contiguous between them, which Raft guarantees
    (it only appends, truncates a suffix, or compacts a prefix).
    """

    def __init__(self) -> None:
        self._logs: dict[int, Log] = {}
        self._first = 0  # 0 when empty
        self._last = 0  # 0 when empty
        # uint64 values live in the same dict as 8-byte big-endian, the way
        # the durable stores encode them, so get()/get_uint64() agree.
        self._kv: dict[bytes, bytes] = {}

    # -- LogStore --------------------------------------------------------

    async def first_index(self) -> int:
        """Index of the oldest stored entry, or 0 when the log is empty."""
        await trio.lowlevel.checkpoint()
        return self._first

    async def last_index(self) -> int:
        """Index of the newest stored entry, or 0 when the log is empty."""
        await trio.lowlevel.checkpoint()
        return self._last

    async def get_log(self, index: int) -> Log:
        """The entry at ``index``; :class:`LogNotFoundError` if absent."""
        await trio.lowlevel.checkpoint()
        try:
            return self._logs[index]
        except (KeyError, TypeError):
            raise LogNotFoundError(f"log entry at index {index!r} not found") from None

    async def store_logs(self, logs: Sequence[Log]) -> None:
        """Store ``logs``, replacing any entries already at their indexes."""
        await trio.lowlevel.checkpoint()
        # Validate the whole batch first so a bad entry leaves no partial write.
        for log in logs:
            if not isinstance(log, Log):
                raise TypeError(f"expected Log, not {type(log).__name__}")
            if _check_index(log.index, "Log.index") < 1:
                raise ValueError(f"Log.index must be >= 1, got {log.index}")
        for log in logs:
            i = log.index
            self._logs[i] = log
            if self._first == 0 or i < self._first:
                self._first = i
            if i > self._last:
                self._last = i

    async def delete_range(self, lo: int, hi: int) -> None:
        """Delete entries ``lo`` through ``hi`` inclusive (absent ones are
        ignored)."""
        await trio.lowlevel.checkpoint()
        _check_index(lo, "lo")
        _check_index(hi, "hi")
        if not self._logs:
            return
        # Only indexes inside [first, last] can exist, so a huge range (e.g.
        # "everything up to 2**63") costs no more than the entries it holds.
        start, stop = max(lo, self._first), min(hi, self._last)
        if start > stop:
            return
        for i in range(start, stop + 1):
            self._logs.pop(i, None)
        if not self._logs:
            self._first = self._last = 0
            return
        if start <= self._first:
            # A prefix went: the new first is just past it. The loop only
            # skips holes, which a contiguous Raft log does not have.
            self._first = stop + 1
            while self._first not in self._logs:
                self._first += 1
        if stop >= self._last:
            self._last = start - 1
            while self._last not in self._logs:
                self._last -= 1

    # -- StableStore -----------------------------------------------------

    async def set(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``."""
        await trio.lowlevel.checkpoint()
        _check_key(key)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"stable store values must be bytes, not {type(value).__name__}")
        # bytes() so a caller mutating its bytearray later cannot change us.
        self._kv[key] = bytes(value)

    async def get(self, key: bytes) -> bytes | None:
        """The value under ``key``, or ``None`` when unset."""
        await trio.lowlevel.checkpoint()
        return self._kv.get(_check_key(key))

    async def set_uint64(self, key: bytes, value: int) -> None:
        """Store an unsigned 64-bit integer under ``key``."""
        await trio.lowlevel.checkpoint()
        _check_key(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"uint64 value must be an int, not {type(value).__name__}")
        if not 0 <= value <= _UINT64_MAX:
            raise ValueError(f"uint64 value out of range: {value}")
        self._kv[key] = value.to_bytes(8, "big")

    async def get_uint64(self, key: bytes) -> int:
        """The integer under ``key``, or 0 when unset."""
        await trio.lowlevel.checkpoint()
        raw = self._kv.get(_check_key(key))
        if raw is None:
            return 0
        if len(raw) != 8:
            raise ValueError(f"value under key {key!r} is not a uint64 ({len(raw)} bytes)")
        return int.from_bytes(raw, "big")

    # -- test helpers ----------------------------------------------------

    def logs(self) -> list[Log]:
        """Every stored entry in index order (synchronous, for test
        invariants; O(n log n))."""
        return [self._logs[i] for i in sorted(self._logs)]

    def __repr__(self) -> str:
        return f"<InmemStore logs {self._first}..{self._last} ({len(self._logs)} entries)>"
