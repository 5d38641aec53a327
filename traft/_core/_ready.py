"""Ready: everything the core wants done, and the order it must be done in.

The driver handles a Ready in exactly this order (etcd ``node.go`` Ready):

1. Persist: ``hard_state`` to the StableStore, then ``delete_range`` and
   ``entries`` to the LogStore, and write the ``install`` snapshot chunks. These must be durable before step 2: a vote
   or an acknowledgement sent before it is on disk can be forgotten in a
   crash and break Election Safety (§5.2) or lose a commit (§5.3).
2. Send ``messages``. Loss is allowed; reordering is allowed. One
   exception (Raft thesis §10.2.1): when ``hard_state`` is None, a leader's
   AppendEntries and Heartbeats may go out before step 1 finishes; the core
   counts the leader's own copy only after ``advance``.
3. Hand ``committed`` to the FSM applier, in order, losslessly.
4. Deliver ``completions`` and ``observations``; start streaming a snapshot
   to each peer in ``send_snapshot``.
5. Call ``core.advance(ready)``.
6. Afterwards (not before the entries above are durable), drop log entries
   up to ``compact_through`` from the LogStore: a snapshot covers them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .._messages import InstallSnapshot, Message
from .._observations import Observation
from .._types import Log, ServerAddress, ServerID


@dataclass(frozen=True)
class HardState:
    """What §5 says must survive a crash besides the log: the current term
    and the vote cast in it."""

    term: int
    voted_for: ServerID | None


@dataclass(frozen=True)
class Envelope:
    address: ServerAddress
    message: Message


class Failure(enum.Enum):
    NOT_LEADER = "not_leader"
    LEADERSHIP_LOST = "leadership_lost"
    TRANSFER_TIMED_OUT = "transfer_timed_out"


@dataclass(frozen=True)
class Completion:
    """The answer to a request the driver made with an id (verify_leader,
    read_index). ``index`` on success, else ``failure`` with the known leader."""

    request_id: int
    index: int | None = None
    failure: Failure | None = None
    leader_id: ServerID | None = None
    leader_address: ServerAddress | None = None


@dataclass
class Ready:
    hard_state: HardState | None = None
    delete_range: tuple[int, int] | None = None
    entries: list[Log] = field(default_factory=list)
    messages: list[Envelope] = field(default_factory=list)
    committed: list[Log] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    compact_through: int | None = None
    send_snapshot: list[tuple[ServerID, ServerAddress]] = field(default_factory=list)
    install: list[InstallSnapshot] = field(default_factory=list)
