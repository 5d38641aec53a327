"""Observation values delivered to ``Raft.observe`` (hashicorp ``observer.go``).

Frozen dataclasses; the core produces them, the node fans them out to
observers without ever blocking on one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._types import RaftState, Server, ServerAddress, ServerID


@dataclass(frozen=True)
class LeaderObservation:
    leader_id: ServerID | None
    leader_address: ServerAddress | None


@dataclass(frozen=True)
class StateObservation:
    state: RaftState


@dataclass(frozen=True)
class PeerObservation:
    server: Server
    removed: bool


@dataclass(frozen=True)
class FailedHeartbeatObservation:
    peer_id: ServerID
    last_contact: float | None


@dataclass(frozen=True)
class ResumedHeartbeatObservation:
    peer_id: ServerID


@dataclass(frozen=True)
class RequestVoteObservation:
    term: int
    candidate_id: ServerID
    prevote: bool


Observation = (
    LeaderObservation
    | StateObservation
    | PeerObservation
    | FailedHeartbeatObservation
    | ResumedHeartbeatObservation
    | RequestVoteObservation
)
