"""RaftLog: the in-memory view of the log the core reasons about.

It holds every entry after the newest snapshot (the "base"), like etcd's
MemoryStorage: the LogStore is its durable mirror, written by the driver from
``Ready``. Compaction (snapshots) bounds its size.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._types import Log


class RaftLog:
    def __init__(self, base_index: int = 0, base_term: int = 0,
                 entries: Iterable[Log] = ()) -> None:
        self.base_index = base_index
        self.base_term = base_term
        self._entries: list[Log] = []
        self.append(list(entries))

    @property
    def last_index(self) -> int:
        return self.base_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.base_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None when compacted away or absent."""
        if index == self.base_index:
            return self.base_term
        if index < self.base_index or index > self.last_index:
            return None
        return self._entries[index - self.base_index - 1].term

    def entry(self, index: int) -> Log:
        if not self.base_index < index <= self.last_index:
            raise IndexError(f"no entry {index} in memory "
                             f"(have {self.base_index + 1}..{self.last_index})")
        return self._entries[index - self.base_index - 1]

    def slice(self, lo: int, hi: int, max_count: int | None = None) -> list[Log]:
        """Entries ``lo..hi`` inclusive, at most ``max_count`` of them."""
        lo = max(lo, self.base_index + 1)
        hi = min(hi, self.last_index)
        if max_count is not None:
            hi = min(hi, lo + max_count - 1)
        if hi < lo:
            return []
        off = self.base_index + 1
        return self._entries[lo - off:hi - off + 1]

    def append(self, entries: list[Log]) -> None:
        if not entries:
            return
        expect = self.last_index + 1
        for e in entries:
            if e.index != expect:
                raise ValueError(f"log entries not contiguous: got {e.index}, expected {expect}")
            expect += 1
        self._entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop entries ``index..last`` (§5.3 conflicting suffix)."""
        if index <= self.base_index:
            raise ValueError(f"cannot truncate at {index}: at or below the snapshot base")
        del self._entries[index - self.base_index - 1:]

    def compact(self, index: int, term: int) -> None:
        """Make ``index``/``term`` the new base, dropping entries up to it
        (snapshot). Entries after ``index`` that agree are kept."""
        if index <= self.base_index:
            return
        if self.term(index) == term:
            del self._entries[:index - self.base_index]
        else:
            self._entries = []
        self.base_index, self.base_term = index, term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def first_index_of_term(self, index: int) -> int:
        """Lowest index (above base) whose term equals that at ``index``:
        lets a rejection skip a whole conflicting term at once."""
        t = self.term(index)
        i = index
        while i - 1 > self.base_index and self.term(i - 1) == t:
            i -= 1
        return i
