"""Raft's safety properties (paper Figure 3), checked while a cluster runs.

The checker is fed every durable Ready of every node through the node's
test hook, so it sees each leadership and each applied entry at the moment
it happens, not by polling:

- Election Safety: at most one leader per term.
- Leader Completeness: a new leader's log holds every entry that any server
  has applied (applied implies committed).
- State Machine Safety: no two servers apply different entries at one index.
- Log Matching (checked on demand, e.g. at the end): two logs that hold an
  entry with the same index and term are identical up to it.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._core import RaftCore, Ready, Role
from .._types import LogType, ServerID


class InvariantChecker:
    def __init__(self) -> None:
        self.violations: list[str] = []
        self.leaders: dict[int, ServerID] = {}
        # index -> (term, type, data) of every entry applied anywhere
        self.applied: dict[int, tuple[int, LogType, bytes]] = {}
        self._leading: dict[ServerID, int] = {}

    def _violate(self, text: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(text)

    def on_ready(self, node: ServerID, core: RaftCore, rd: Ready) -> None:
        if core.role is Role.LEADER:
            holder = self.leaders.setdefault(core.term, node)
            if holder != node:
                self._violate(f"Election Safety: {holder} and {node} both lead term {core.term}")
            if self._leading.get(node) != core.term:
                self._leading[node] = core.term
                self._check_leader_completeness(node, core)
        else:
            self._leading.pop(node, None)
        for e in rd.committed:
            value = (e.term, e.type, e.data)
            seen = self.applied.setdefault(e.index, value)
            if seen != value:
                self._violate(
                    f"State Machine Safety: {node} applied {value[:2]} at index {e.index}, "
                    f"another server applied {seen[:2]}")

    def _check_leader_completeness(self, node: ServerID, core: RaftCore) -> None:
        for index, (term, _, _) in self.applied.items():
            if index <= core.log.base_index:
                continue  # covered by its snapshot
            have = core.log.term(index)
            if have != term:
                self._violate(
                    f"Leader Completeness: {node} leads term {core.term} without applied "
                    f"entry {index} (term {term}; it has {have})")

    def check_log_matching(self, cores: Iterable[tuple[ServerID, RaftCore]]) -> None:
        items = list(cores)
        for i, (a_id, a) in enumerate(items):
            for b_id, b in items[i + 1:]:
                lo = max(a.log.base_index, b.log.base_index) + 1
                hi = min(a.log.last_index, b.log.last_index)
                # the highest index where both hold the same term
                top = hi
                while top >= lo and a.log.term(top) != b.log.term(top):
                    top -= 1
                for index in range(lo, top + 1):
                    ea, eb = a.log.entry(index), b.log.entry(index)
                    if (ea.term, ea.type, ea.data) != (eb.term, eb.type, eb.data):
                        self._violate(
                            f"Log Matching: {a_id} and {b_id} agree at {top} but differ at "
                            f"{index}")
                        break
