"""Wire value objects: every message one server sends another.

Messages are one-way, in the etcd style: a response is just another message
back, matched by term and index, never by a pending call. That suits
WebSocket framing (pipelining for free) and makes loss an ordinary event.
Every message carries the header hashicorp puts in ``RPCHeader``: who sent it
(id and address, so a receiver can answer a server it has no configuration
for), whom it is for, and the sender's term.

Don't subclass these outside this module: transports encode them by type.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._types import Configuration, Log, ServerAddress, ServerID


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    term: int
    src: ServerID
    src_address: ServerAddress
    dst: ServerID


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestVote(Message):
    """§5.2 RequestVote; with ``prevote`` the thesis §9.6 pre-vote, whose
    ``term`` is the term the candidate *would* use, not its own."""

    last_log_index: int
    last_log_term: int
    prevote: bool = False
    leadership_transfer: bool = False  # from TimeoutNow: bypasses stickiness


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestVoteResponse(Message):
    granted: bool
    prevote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntries(Message):
    """§5.3 AppendEntries. An empty ``entries`` is a probe or a commit notice."""

    prev_log_index: int
    prev_log_term: int
    entries: tuple[Log, ...]
    leader_commit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntriesResponse(Message):
    """``success``: the log matches the leader's through ``match_index``.
    On rejection, ``hint`` is the index the leader should retry after (the
    follower's last index, or the index before the conflicting term)."""

    success: bool
    match_index: int = 0
    hint: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    """Keeps followers from starting elections. Sent apart from
    AppendEntries so it never queues behind a large batch. ``leader_commit``
    is min(follower's match, commit): safe to apply without a log check.
    ``seq`` lets the leader match answers to verify-leader rounds."""

    leader_commit: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse(Message):
    seq: int
    last_log_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow(Message):
    """Leadership transfer: start an election now, skipping pre-vote."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshot(Message):
    """One chunk of a snapshot stream (§7). ``offset`` is the byte offset of
    ``data``; ``done`` marks the last chunk."""

    snapshot_id: str
    last_log_index: int
    last_log_term: int
    configuration: Configuration
    configuration_index: int
    size: int
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshotResponse(Message):
    snapshot_id: str
    success: bool
    next_offset: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexRequest(Message):
    """A follower asks the leader for a linearizable read fence (etcd
    ReadIndex). Not gated by term: a lagging follower may ask."""

    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexResponse(Message):
    request_id: int
    success: bool
    index: int = 0
    leader_id: ServerID | None = None
    leader_address: ServerAddress | None = None


MESSAGE_TYPES: tuple[type[Message], ...] = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    TimeoutNow,
    InstallSnapshot,
    InstallSnapshotResponse,
    ReadIndexRequest,
    ReadIndexResponse,
)
