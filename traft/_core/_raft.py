"""RaftCore: the whole Raft protocol as a pure, synchronous state machine.

Rules of this package (after h11's ``_state.py``):

1. Everything that changes protocol state lives in this package: the entry
   points here, one module per part of the protocol beside it
   (``_election``, ``_follower``, ``_leader``, ``_read_index``,
   ``_reconfiguration``, ``_snapshots``; the state they share is in
   ``_state``) and the pure helpers (``_log``, ``_progress``, ``_quorum``,
   ``_membership``).
   No Trio, no sockets, no stores, no clock, no global randomness: time comes
   in as ``now`` arguments and randomness from the ``rng`` it is given.
2. Inputs are ``step(message)``, ``tick()``, ``propose()``, ``bootstrap()``,
   ``verify_leader()``/``read_index()`` and ``report_applied()``; every
   effect comes out through ``ready()`` (see ``_ready.Ready`` for the order
   the driver must follow), acknowledged by ``advance()``.
3. Remote input is never trusted to be sane: a message that makes no sense
   is logged and ignored, never raised. Exceptions are for local misuse.

The role loops of hashicorp (``runFollower``, ``runCandidate``,
``runLeader``) are the ``_step_follower``/``_step_candidate``/``_step_leader``
functions and the ``_tick_*`` timers.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import (
    CantBootstrapError,
    LeadershipTransferInProgressError,
    NotLeaderError,
)
from .._messages import (
    AppendEntries,
    Heartbeat,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
)
from .._types import (
    Configuration,
    Log,
    LogType,
    ServerAddress,
    ServerID,
)
from ._membership import (
    check_configuration,
    encode_configuration,
)
from ._ready import (
    Completion,
    Failure,
    HardState,
    Ready,
)
from ._election import ElectionMixin
from ._follower import FollowerMixin
from ._leader import LeaderMixin
from ._read_index import ReadIndexMixin
from ._reconfiguration import ReconfigurationMixin
from ._snapshots import SnapshotMixin
from ._state import (  # re-exported
    MAX_APPLY_BATCH,
    PLANTABLE_BUGS,
    _PLANTED_BUGS,
    CoreOptions,
    CoreState,
    Role,
    logger,
)

__all__ = ["CoreOptions", "CoreState", "MAX_APPLY_BATCH", "PLANTABLE_BUGS", "RaftCore", "Role",
           "logger"]


class RaftCore(ElectionMixin, FollowerMixin, LeaderMixin, ReadIndexMixin, ReconfigurationMixin, SnapshotMixin):
    """The sans-IO Raft state machine: feed it inputs, take ``ready()``."""

    def bootstrap(self, configuration: Configuration) -> None:
        """hashicorp ``BootstrapCluster``: the first configuration, at index 1
        of term 1, only on a server with no state at all."""
        self._check_not_in_ready()
        if self.term != 0 or self.log.last_index != 0 or self.log.base_index != 0:
            raise CantBootstrapError("bootstrap only works on new clusters")
        check_configuration(configuration)
        self.term = 1
        self.voted_for = None
        self._hard_state_dirty = True
        entry = Log(index=1, term=1, type=LogType.CONFIGURATION,
                    data=encode_configuration(configuration))
        self.log.append([entry])
        self._note_configuration_entry(entry)
        self._reset_election_timer()
        logger.info("%s bootstrapped with %d servers", self.id, len(configuration.servers))

    def propose(self, items: Sequence[tuple[LogType, bytes, bytes]], *,
                appended_at: float = 0.0) -> list[Log]:
        """Append entries as leader; returns them with their index and term.
        Replication goes out with the next ``ready()``."""
        self._check_not_in_ready()
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id, self.leader_address)
        if self._transfer is not None:
            raise LeadershipTransferInProgressError("leadership transfer in progress")
        entries: list[Log] = []
        index = self.log.last_index
        for kind, data, extensions in items:
            index += 1
            entries.append(Log(index=index, term=self.term, type=kind, data=data,
                               extensions=extensions, appended_at=appended_at))
        self.log.append(entries)
        for e in entries:
            if e.type is LogType.CONFIGURATION:
                self._note_configuration_entry(e)
        self._replicate_all = True
        return entries

    def step(self, m: Message, now: float) -> None:
        """Feed one received message."""
        self._check_not_in_ready()
        self._now = now
        if m.dst != self.id:
            logger.warning("%s dropped %s meant for %r", self.id, type(m).__name__, m.dst)
            return
        if isinstance(m, ReadIndexRequest):
            self._on_read_index_request(m)
            return
        if isinstance(m, ReadIndexResponse):
            self._on_read_index_response(m)
            return
        if isinstance(m, RequestVote):
            self._on_request_vote(m)
            return

        if m.term > self.term:
            if isinstance(m, RequestVoteResponse) and m.prevote and m.granted:
                pass  # a granted pre-vote carries the term we would run in (§9.6)
            else:
                leader = isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot))
                logger.info("%s saw term %d from %s (was %d)", self.id, m.term, m.src, self.term)
                self._become_follower(m.term, m.src if leader else None,
                                      m.src_address if leader else None)
        elif m.term < self.term:
            if isinstance(m, RequestVoteResponse) and "count_stale_votes" in _PLANTED_BUGS:
                if self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
                    self._step_candidate(m)
                return
            if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
                # Tell the stale leader about our term so it steps down (§5.1).
                self._reject_stale_leader(m)
            return

        if self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def tick(self, now: float) -> None:
        """Advance time: fire whatever timers are due."""
        self._check_not_in_ready()
        self._now = now
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            if self._election_deadline is not None and now >= self._election_deadline:
                self._on_election_timeout()
        for rid, deadline in list(self._remote_reads.items()):
            if now >= deadline:
                del self._remote_reads[rid]
                self._complete(Completion(rid, failure=Failure.NOT_LEADER,
                                          leader_id=self.leader_id,
                                          leader_address=self.leader_address))

    def report_applied(self, index: int) -> None:
        self.applied_index = max(self.applied_index, index)

    def has_ready(self) -> bool:
        return bool(
            self._hard_state_dirty
            or self._pending_delete is not None
            or self.log.last_index > self._stable_last
            or self._messages
            or self._completions
            or self._observations
            or self._replicate_all
            or self._heartbeat_now
            or self._applying < min(self.commit_index, self._stable_last)
            or self._pending_compact is not None
            or self._snapshot_requests
            or self._install_chunks
        )

    def ready(self) -> Ready:
        self._check_not_in_ready()
        if self.role is Role.LEADER:
            if self._heartbeat_now:
                self._broadcast_heartbeat()
            if self._replicate_all:
                for pr in self.progress.values():
                    self._send_appends(pr)
        self._heartbeat_now = False
        self._replicate_all = False
        rd = Ready(
            hard_state=HardState(self.term, self.voted_for) if self._hard_state_dirty else None,
            delete_range=self._pending_delete,
            entries=self.log.slice(self._stable_last + 1, self.log.last_index),
            messages=self._messages,
            # Only entries already durable here, or made durable by this very
            # Ready (the driver persists before it applies).
            committed=self.log.slice(self._applying + 1,
                                     min(self.commit_index, self.log.last_index),
                                     MAX_APPLY_BATCH),
            completions=self._completions,
            observations=self._observations,
            compact_through=self._pending_compact,
            send_snapshot=self._snapshot_requests,
            install=self._install_chunks,
        )
        self._messages, self._completions, self._observations = [], [], []
        self._snapshot_requests, self._install_chunks = [], []
        self._ready_outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver has done everything ``rd`` asked."""
        self._ready_outstanding = False
        if rd.hard_state is not None and rd.hard_state == HardState(self.term, self.voted_for):
            self._hard_state_dirty = False
        if rd.delete_range is not None and rd.delete_range == self._pending_delete:
            self._pending_delete = None
        if rd.entries:
            self._stable_last = rd.entries[-1].index
        if rd.committed:
            self._applying = rd.committed[-1].index
        if rd.compact_through is not None and rd.compact_through == self._pending_compact:
            self._pending_compact = None
        if self.role is Role.LEADER and rd.entries:
            # Our own copy now counts towards the quorum.
            self._maybe_commit()

    def _become_follower(self, term: int, leader_id: ServerID | None,
                         leader_address: ServerAddress | None) -> None:
        was_leader = self.role is Role.LEADER
        if term > self.term:
            self.term = term
            self.voted_for = None
            self._hard_state_dirty = True
        self._set_role(Role.FOLLOWER)
        if was_leader:
            self._end_leadership()
        self._set_leader(leader_id, leader_address)
        self._reset_election_timer()
