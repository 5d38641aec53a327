"""The state RaftCore is made of, its options, and what every part shares."""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .._messages import (
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
)
from .._observations import (
    LeaderObservation,
    Observation,
    StateObservation,
)
from .._types import (
    Configuration,
    Log,
    LogType,
    RaftState,
    ServerAddress,
    ServerID,
)
from ._log import RaftLog
from ._membership import (
    Membership,
    decode_configuration,
)
from ._progress import Progress
from ._ready import (
    Completion,
    Envelope,
    Failure,
    Ready,
)

logger = logging.getLogger("traft.core")

# Test-only switches that plant known protocol bugs, so the simulator can
# prove it catches them (traft.testing.planted_bugs). Never set in production.
PLANTABLE_BUGS = frozenset({"commit_previous_term", "count_stale_votes", "vote_without_log_check",
                            "skip_consistency_check"})
_PLANTED_BUGS: set[str] = set()

# At most this many committed entries are handed to the applier per Ready,
# so one huge catch-up does not build one huge batch.
MAX_APPLY_BATCH = 1024


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"

    @property
    def public(self) -> RaftState:
        if self is Role.LEADER:
            return RaftState.LEADER
        if self is Role.FOLLOWER:
            return RaftState.FOLLOWER
        return RaftState.CANDIDATE


@dataclass(frozen=True)
class CoreOptions:
    """The timing and size knobs the core needs, in seconds (from Config)."""

    heartbeat_timeout: float = 1.0
    election_timeout: float = 1.0
    commit_timeout: float = 0.05
    leader_lease_timeout: float = 0.5
    max_append_entries: int = 64
    prevote: bool = True

    @property
    def heartbeat_interval(self) -> float:
        # hashicorp sends heartbeats every HeartbeatTimeout/10.
        return self.heartbeat_timeout / 10

    @property
    def replicate_timeout(self) -> float:
        # A pipelined append unanswered this long is presumed lost: fall back
        # to probing from the known match.
        return self.heartbeat_timeout / 2


@dataclass
class _Transfer:
    """A leadership transfer in progress (thesis §3.10)."""

    request_id: int
    target: ServerID
    deadline: float
    sent: bool = False


@dataclass
class _Read:
    """A pending linearizable read on the leader (etcd ReadIndex)."""

    request_id: int
    origin: tuple[ServerID, ServerAddress] | None  # None: asked locally
    index: int = 0
    seq: int = 0


class CoreState:
    """All of RaftCore's state, and the helpers every part shares. The
    protocol rules live in the mixins beside this module; RaftCore in
    ``_raft.py`` puts them together."""

    def __init__(
        self,
        id: ServerID,
        address: ServerAddress,
        *,
        options: CoreOptions,
        rng: random.Random,
        now: float,
        term: int = 0,
        voted_for: ServerID | None = None,
        entries: Sequence[Log] = (),
        snapshot_index: int = 0,
        snapshot_term: int = 0,
        snapshot_configuration: Configuration = Configuration(),
        snapshot_configuration_index: int = 0,
        log_base_index: int | None = None,
        log_base_term: int | None = None,
    ) -> None:
        self.id = id
        self.address = address
        self.opts = options
        self._rng = rng
        self._now = now

        self.term = term
        self.voted_for = voted_for
        self._hard_state_dirty = False

        self.role = Role.FOLLOWER
        # The in-memory log may start before the snapshot (trailing logs are
        # kept so a slightly lagging follower needs no snapshot).
        if log_base_index is None:
            log_base_index, log_base_term = snapshot_index, snapshot_term
        if log_base_index > snapshot_index:
            raise ValueError("log base cannot be after the snapshot")
        self.log = RaftLog(log_base_index, log_base_term or 0, entries)
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.membership = Membership(snapshot_configuration_index, snapshot_configuration)
        for e in entries:
            if e.type is LogType.CONFIGURATION and e.index > snapshot_configuration_index:
                self._note_configuration_entry(e)
        self._stable_last = self.log.last_index
        self._pending_delete: tuple[int, int] | None = None
        self._pending_compact: int | None = None
        self._snapshot_requests: list[tuple[ServerID, ServerAddress]] = []
        self._install_chunks: list[InstallSnapshot] = []

        # Everything up to the snapshot is committed and applied (the driver
        # restores the FSM from it before the core runs).
        self.commit_index = snapshot_index
        self._applying = snapshot_index  # handed to the applier
        self.applied_index = snapshot_index  # reported back by the applier

        self.leader_id: ServerID | None = None
        self.leader_address: ServerAddress | None = None
        self.last_leader_contact: float | None = None
        self._election_deadline: float | None = None
        self._votes: dict[ServerID, bool] = {}

        # leader state
        self.progress: dict[ServerID, Progress] = {}
        self._hb_seq = 0
        self._heartbeat_due: float | None = None
        self._heartbeat_now = False
        self._lease_deadline: float | None = None
        self._reads_waiting_commit: list[_Read] = []
        self._reads_verifying: list[_Read] = []
        self._replicate_all = False

        # membership changes awaiting commit: entry index -> request id
        self._config_waiters: dict[int, int] = {}
        # add_voter of a new server: it catches up as a nonvoter first
        # (thesis §4.2.1); server -> request id
        self._promotions: dict[ServerID, int] = {}
        self._transfer: _Transfer | None = None
        self.removed_self = False  # a leader that committed its own removal

        # follower state: read-index requests forwarded to the leader
        self._remote_reads: dict[int, float] = {}

        self._messages: list[Envelope] = []
        self._completions: list[Completion] = []
        self._observations: list[Observation] = []
        self._ready_outstanding = False

        self._reset_election_timer()

    @property
    def state(self) -> RaftState:
        return self.role.public

    @property
    def configuration(self) -> Configuration:
        return self.membership.latest

    @property
    def voters(self) -> frozenset[ServerID]:
        return self.membership.latest.voters

    def committed_configuration(self) -> tuple[int, Configuration]:
        return self.membership.committed(self.commit_index)

    def configuration_at(self, index: int) -> tuple[int, Configuration]:
        """The configuration in force at ``index`` (for snapshot metadata)."""
        return self.membership.committed(index)

    def next_deadline(self) -> float | None:
        """The earliest time at which ``tick`` has something to do."""
        times = [self._election_deadline, self._heartbeat_due, self._lease_deadline,
                 self._transfer.deadline if self._transfer is not None else None]
        times.extend(self._remote_reads.values())
        for pr in self.progress.values():
            times.append(pr.commit_notify_at)
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def _set_role(self, role: Role) -> None:
        old = self.role.public
        self.role = role
        if role.public is not old:
            self._observations.append(StateObservation(role.public))

    def _set_leader(self, leader_id: ServerID | None, address: ServerAddress | None) -> None:
        if leader_id != self.leader_id or address != self.leader_address:
            self.leader_id = leader_id
            self.leader_address = address
            self._observations.append(LeaderObservation(leader_id, address))
        if leader_id is not None and leader_id != self.id:
            self.last_leader_contact = self._now

    def _reset_election_timer(self) -> None:
        cfg = self.membership.latest
        if self.role is Role.LEADER or not cfg.is_voter(self.id):
            # hashicorp: a server with no configuration, or not a voter in
            # it, never starts an election.
            self._election_deadline = None
            return
        base = (self.opts.heartbeat_timeout if self.role is Role.FOLLOWER
                else self.opts.election_timeout)
        # Randomized in [T, 2T) so split votes resolve (§5.2).
        self._election_deadline = self._now + base + self._rng.random() * base

    def _note_configuration_entry(self, e: Log) -> None:
        try:
            cfg = decode_configuration(e.data)
        except ValueError as exc:
            logger.error("%s: configuration entry %d unreadable: %s", self.id, e.index, exc)
            return
        self.membership.appended(e.index, cfg)
        if self.role is Role.LEADER:
            self._sync_progress()

    def _not_leader(self, request_id: int) -> Completion:
        return Completion(request_id, failure=Failure.NOT_LEADER,
                          leader_id=self.leader_id, leader_address=self.leader_address)

    def _complete(self, completion: Completion) -> None:
        self._completions.append(completion)

    def _send(self, dst: ServerID, address: ServerAddress, kind: type[Message],
              **fields: object) -> None:
        fields.setdefault("term", self.term)
        msg = kind(src=self.id, src_address=self.address, dst=dst, **fields)  # type: ignore[arg-type]
        self._messages.append(Envelope(address, msg))

    def _check_not_in_ready(self) -> None:
        if self._ready_outstanding:
            raise RuntimeError("advance() the previous Ready before feeding the core again")

    # Implemented by the mixins (declared here for the type checker).

    def _advance_transfer(self) -> None:
        raise NotImplementedError

    def _become_follower(self, term: int, leader_id: ServerID | None,
                         leader_address: ServerAddress | None) -> None:
        raise NotImplementedError

    def _become_leader(self) -> None:
        raise NotImplementedError

    def _broadcast_heartbeat(self) -> None:
        raise NotImplementedError

    def _check_promotions(self) -> None:
        raise NotImplementedError

    def _check_reads(self) -> None:
        raise NotImplementedError

    def _end_leadership(self) -> None:
        raise NotImplementedError

    def _fail_read(self, read: _Read, failure: Failure) -> None:
        raise NotImplementedError

    def _maybe_commit(self) -> None:
        raise NotImplementedError

    def _on_election_timeout(self) -> None:
        raise NotImplementedError

    def _on_read_index_request(self, m: ReadIndexRequest) -> None:
        raise NotImplementedError

    def _on_read_index_response(self, m: ReadIndexResponse) -> None:
        raise NotImplementedError

    def _on_request_vote(self, m: RequestVote) -> None:
        raise NotImplementedError

    def _reject_stale_leader(self, m: Message) -> None:
        raise NotImplementedError

    def _send_appends(self, pr: Progress, *, allow_empty: bool = False) -> None:
        raise NotImplementedError

    def _start_read(self, read: _Read) -> None:
        raise NotImplementedError

    def _step_candidate(self, m: Message) -> None:
        raise NotImplementedError

    def _step_down_removed(self) -> None:
        raise NotImplementedError

    def _step_follower(self, m: Message) -> None:
        raise NotImplementedError

    def _step_leader(self, m: Message) -> None:
        raise NotImplementedError

    def _sync_progress(self) -> None:
        raise NotImplementedError

    def _tick_leader(self) -> None:
        raise NotImplementedError

    def campaign(self, now: float, *, transfer: bool = False) -> None:
        raise NotImplementedError

    def propose(self, items: Sequence[tuple[LogType, bytes, bytes]], *,
                appended_at: float = 0.0) -> list[Log]:
        raise NotImplementedError
