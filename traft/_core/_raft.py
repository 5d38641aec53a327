"""RaftCore: the whole Raft protocol as a pure, synchronous state machine.

Rules of this file (after h11's ``_state.py``):

1. Everything that changes protocol state lives here or in the small pure
   modules beside it (``_log``, ``_progress``, ``_quorum``, ``_membership``).
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

import enum
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .._errors import (
    CantBootstrapError,
    ConfigurationChangeError,
    LeadershipTransferInProgressError,
    NotLeaderError,
    RaftError,
)
from .._messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from .._observations import (
    FailedHeartbeatObservation,
    LeaderObservation,
    Observation,
    PeerObservation,
    RequestVoteObservation,
    ResumedHeartbeatObservation,
    StateObservation,
)
from .._types import (
    Configuration,
    Log,
    LogType,
    RaftState,
    Server,
    ServerAddress,
    ServerID,
)
from ._log import RaftLog
from ._membership import (
    ChangeKind,
    Membership,
    check_configuration,
    decode_configuration,
    encode_configuration,
    next_configuration,
)
from ._progress import Progress, ProgressState
from ._quorum import VoteResult, committed_index, quorum_contact, vote_result
from ._ready import Completion, Envelope, Failure, HardState, Ready

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


class RaftCore:
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

    # ------------------------------------------------------------------
    # Read-only views

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

    # ------------------------------------------------------------------
    # Inputs

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

    def campaign(self, now: float, *, transfer: bool = False) -> None:
        """Start an election now (tests; TimeoutNow)."""
        self._check_not_in_ready()
        self._now = now
        if self.role is Role.LEADER:
            # etcd hup: "ignoring MsgHup because already leader". Becoming a
            # candidate here would skip _end_leadership (stale leader timers,
            # orphaned reads).
            return
        if not self.membership.latest.is_voter(self.id):
            return
        if transfer or not self.opts.prevote:
            self._become_candidate(transfer=transfer)
        else:
            self._become_pre_candidate()

    def verify_leader(self, request_id: int, now: float) -> None:
        """Confirm leadership with a quorum; answered by a Completion."""
        self._check_not_in_ready()
        self._now = now
        if self.role is not Role.LEADER:
            self._complete(self._not_leader(request_id))
            return
        read = _Read(request_id, None, index=self.commit_index, seq=self._hb_seq + 1)
        self._reads_verifying.append(read)
        self._heartbeat_now = True

    def read_index(self, request_id: int, now: float) -> None:
        """Ask for a linearizable read fence (etcd ReadIndex): the Completion
        carries an index at least the leader's commit index at this moment."""
        self._check_not_in_ready()
        self._now = now
        if self.role is Role.LEADER:
            self._start_read(_Read(request_id, None))
        elif self.leader_id is not None and self.leader_address is not None:
            self._remote_reads[request_id] = now + self.opts.election_timeout
            self._send(self.leader_id, self.leader_address, ReadIndexRequest,
                       request_id=request_id)
        else:
            self._complete(self._not_leader(request_id))

    def report_applied(self, index: int) -> None:
        self.applied_index = max(self.applied_index, index)

    def change_configuration(self, request_id: int, kind: ChangeKind, id: ServerID,
                             address: ServerAddress | None, prev_index: int) -> None:
        """A membership change (hashicorp requestConfigChange): one at a time,
        effective when appended, answered by a Completion once committed."""
        self._check_not_in_ready()
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id, self.leader_address)
        if self._transfer is not None:
            raise LeadershipTransferInProgressError("leadership transfer in progress")
        latest = self.membership.latest_index
        if latest > self.commit_index:
            raise ConfigurationChangeError(
                f"configuration change at index {latest} is not committed yet")
        if prev_index and prev_index != latest:
            raise ConfigurationChangeError(
                f"configuration changed since {prev_index} (latest is {latest})")
        current = self.membership.latest
        if kind is ChangeKind.ADD_VOTER and not current.is_voter(id) and id != self.id:
            # Catch up first as a nonvoter, so the quorum is not held back by
            # a server with an empty log; promote once it is close (§4.2.1).
            existing = current.server(id)
            if existing is None or (address is not None and existing.address != address):
                staged = next_configuration(current, ChangeKind.ADD_NONVOTER, id, address)
                self._propose_configuration(staged)
            self._promotions[id] = request_id
            self._check_promotions()
            return
        new = next_configuration(current, kind, id, address)
        if kind is not ChangeKind.REMOVE_SERVER or new.servers:
            check_configuration(new)
        index = self._propose_configuration(new)
        self._config_waiters[index] = request_id

    def transfer_leadership(self, request_id: int, target: ServerID | None,
                            address: ServerAddress | None, now: float) -> None:
        """Hand leadership to ``target`` (or the most up-to-date voter): bring
        it up to date, then send TimeoutNow (thesis §3.10). New proposals are
        refused meanwhile; it fails after ``election_timeout``."""
        self._check_not_in_ready()
        self._now = now
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id, self.leader_address)
        if self._transfer is not None:
            raise LeadershipTransferInProgressError("leadership transfer in progress")
        cfg = self.membership.latest
        candidates = sorted(v for v in cfg.voters if v != self.id)
        if not candidates:
            raise RaftError("cannot transfer leadership: there is no other voter")
        if target is None and address is not None:
            target = next((s.id for s in cfg.servers if s.address == address), None)
            if target is None:
                raise RaftError(f"no server at address {address!r} in the configuration")
        if target is None:
            target = max(candidates, key=lambda v: (self.progress[v].match_index
                                                     if v in self.progress else -1))
        server = cfg.server(target)
        if server is None or target == self.id or not cfg.is_voter(target):
            raise RaftError(f"cannot transfer leadership to {target!r}: not another voter")
        if address is not None and server.address != address:
            raise RaftError(f"{target!r} is at {server.address!r}, not {address!r}")
        self._transfer = _Transfer(request_id, target, now + self.opts.election_timeout)
        logger.info("%s transferring leadership to %s", self.id, target)
        self._advance_transfer()

    def snapshot_taken(self, index: int, term: int, trailing_logs: int) -> None:
        """A snapshot through ``index`` is durable: compact the log up to
        min(index, last_index - trailing_logs) (hashicorp compactLogs)."""
        self._check_not_in_ready()
        if index > self.snapshot_index:
            self.snapshot_index, self.snapshot_term = index, term
        upto = min(self.snapshot_index, self.log.last_index - trailing_logs, self._stable_last)
        if upto <= self.log.base_index:
            return
        term_at = self.log.term(upto)
        assert term_at is not None
        self.membership.compacted(*self._configuration_at(upto))
        self.log.compact(upto, term_at)
        self._pending_compact = upto

    def install_snapshot(self, index: int, term: int, configuration: Configuration,
                         configuration_index: int) -> bool:
        """A snapshot received from the leader is durable (§7): discard the
        log it covers (keeping a suffix that agrees), adopt its configuration
        and commit it. False if it was stale and nothing changed."""
        self._check_not_in_ready()
        if index <= self.commit_index:
            return False
        keep_suffix = self.log.term(index) == term
        if not keep_suffix:
            self._pending_compact = max(self._stable_last, index)
            self._pending_delete = None
            self.log = RaftLog(index, term)
            self.membership = Membership(configuration_index, configuration)
        else:
            self.membership.compacted(configuration_index, configuration)
            self.log.compact(index, term)
            self._pending_compact = index
        self._stable_last = max(self._stable_last, index) if keep_suffix else index
        self.snapshot_index, self.snapshot_term = index, term
        self.commit_index = index
        self._applying = max(self._applying, index)
        self._reset_election_timer()
        logger.info("%s installed snapshot at %d (term %d)", self.id, index, term)
        return True

    def report_snapshot(self, peer: ServerID, ok: bool, index: int) -> None:
        """The leader's stream of snapshot ``index`` to ``peer`` ended
        (etcd ReportSnapshot)."""
        self._check_not_in_ready()
        pr = self.progress.get(peer)
        if self.role is not Role.LEADER or pr is None:
            return
        if ok:
            pr.acknowledge(index)
        pr.become_probe()
        self._send_appends(pr, allow_empty=True)

    def restore_user_snapshot(self, index: int) -> int:
        """hashicorp Restore on the leader: the FSM now holds a user
        snapshot; the log restarts after it at a fresh index, above both the
        old last index and ``index``, so every follower installs it."""
        self._check_not_in_ready()
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id, self.leader_address)
        new_index = max(index, self.log.last_index) + 1
        _, cfg = self.membership.committed(self.commit_index)
        self._pending_compact = max(self._stable_last, new_index)
        self._pending_delete = None
        self.log = RaftLog(new_index, self.term)
        self.membership = Membership(new_index, cfg)
        self._stable_last = new_index
        self.snapshot_index, self.snapshot_term = new_index, self.term
        self.commit_index = self._applying = new_index
        for pr in self.progress.values():
            pr.match_index = 0
            pr.become_probe()
            pr.next_index = new_index + 1
        self._replicate_all = True
        return new_index

    def _propose_configuration(self, configuration: Configuration) -> int:
        entry = Log(index=self.log.last_index + 1, term=self.term, type=LogType.CONFIGURATION,
                    data=encode_configuration(configuration))
        self.log.append([entry])
        self._note_configuration_entry(entry)
        self._replicate_all = True
        return entry.index

    def _check_promotions(self) -> None:
        if not self._promotions or self.role is not Role.LEADER:
            return
        if self.membership.latest_index > self.commit_index:
            return  # one change at a time
        cfg = self.membership.latest
        for id, rid in list(self._promotions.items()):
            server = cfg.server(id)
            if server is None:
                del self._promotions[id]
                self._complete(Completion(rid, failure=Failure.LEADERSHIP_LOST))
                continue
            pr = self.progress.get(id)
            # "within one round": it has answered, and is no more than one
            # batch behind our log
            if (pr is None or pr.match_index == 0
                    or pr.match_index < self.log.last_index - self.opts.max_append_entries):
                continue
            del self._promotions[id]
            index = self._propose_configuration(
                next_configuration(cfg, ChangeKind.PROMOTE, id, None))
            self._config_waiters[index] = rid
            logger.info("%s promoting %s to voter at index %d", self.id, id, index)
            return

    def _advance_transfer(self) -> None:
        t = self._transfer
        if t is None or t.sent:
            return
        pr = self.progress.get(t.target)
        if pr is None:
            return
        if pr.match_index >= self.log.last_index:
            self._send(t.target, pr.address, TimeoutNow)
            t.sent = True
        else:
            self._send_appends(pr, allow_empty=True)

    def _configuration_at(self, index: int) -> tuple[int, Configuration]:
        return self.membership.committed(index)

    # ------------------------------------------------------------------
    # Output

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

    # ------------------------------------------------------------------
    # Role transitions

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

    def _become_pre_candidate(self) -> None:
        # §9.6: ask whether we could win before disturbing anyone's term.
        self._set_role(Role.PRE_CANDIDATE)
        self._set_leader(None, None)
        self._votes = {self.id: True}
        self._reset_election_timer()
        logger.info("%s became pre-candidate at term %d", self.id, self.term)
        self._request_votes(self.term + 1, prevote=True, transfer=False)
        self._tally(prevote=True)

    def _become_candidate(self, *, transfer: bool = False) -> None:
        # §5.2: increment the term, vote for self, ask everyone else.
        self.term += 1
        self.voted_for = self.id
        self._hard_state_dirty = True
        self._set_role(Role.CANDIDATE)
        self._set_leader(None, None)
        self._votes = {self.id: True}
        self._reset_election_timer()
        logger.info("%s became candidate at term %d", self.id, self.term)
        self._request_votes(self.term, prevote=False, transfer=transfer)
        self._tally(prevote=False)

    def _become_leader(self) -> None:
        self._set_role(Role.LEADER)
        self._set_leader(self.id, self.address)
        self._election_deadline = None
        self.progress = {}
        self._sync_progress()
        now = self._now
        self._heartbeat_due = now + self.opts.heartbeat_interval
        self._lease_deadline = now + self.opts.leader_lease_timeout
        logger.info("%s became leader at term %d", self.id, self.term)
        # §8: a no-op entry of our own term lets us learn what is committed,
        # and commits everything before it (Figure 8 forbids counting older
        # entries directly).
        self.propose([(LogType.NOOP, b"", b"")])

    def _end_leadership(self) -> None:
        for read in self._reads_waiting_commit + self._reads_verifying:
            self._fail_read(read, Failure.LEADERSHIP_LOST)
        self._reads_waiting_commit = []
        self._reads_verifying = []
        for rid in list(self._config_waiters.values()) + list(self._promotions.values()):
            self._complete(Completion(rid, failure=Failure.LEADERSHIP_LOST))
        self._config_waiters = {}
        self._promotions = {}
        if self._transfer is not None:
            t, self._transfer = self._transfer, None
            # Losing leadership after TimeoutNow went out is the success case.
            self._complete(Completion(t.request_id, index=0) if t.sent else
                           Completion(t.request_id, failure=Failure.LEADERSHIP_LOST))
        self.progress = {}
        self._heartbeat_due = None
        self._lease_deadline = None
        self._heartbeat_now = False
        self._replicate_all = False

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

    def _on_election_timeout(self) -> None:
        if not self.membership.latest.is_voter(self.id):
            self._election_deadline = None
            return
        logger.info("%s election timeout at term %d", self.id, self.term)
        if self.opts.prevote:
            self._become_pre_candidate()
        else:
            self._become_candidate()

    # ------------------------------------------------------------------
    # Elections

    def _request_votes(self, term: int, *, prevote: bool, transfer: bool) -> None:
        for server in self.membership.latest.servers:
            if server.id == self.id or not self.membership.latest.is_voter(server.id):
                continue
            self._send(server.id, server.address, RequestVote, term=term,
                       last_log_index=self.log.last_index, last_log_term=self.log.last_term,
                       prevote=prevote, leadership_transfer=transfer)

    def _tally(self, *, prevote: bool) -> None:
        result = vote_result(self.voters, self._votes)
        if result is VoteResult.WON:
            if prevote:
                self._become_candidate()
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            logger.info("%s lost the %s at term %d", self.id,
                        "pre-vote" if prevote else "election", self.term)
            self._become_follower(self.term, None, None)

    def _in_lease(self) -> bool:
        """Leader stickiness: we heard from a live leader within the election
        timeout, so a vote request is a disruption, not a need."""
        if self.role is Role.LEADER:
            return True
        return (self.leader_id is not None and self.last_leader_contact is not None
                and self._now - self.last_leader_contact < self.opts.election_timeout)

    def _on_request_vote(self, m: RequestVote) -> None:
        self._observations.append(RequestVoteObservation(m.term, m.src, m.prevote))
        cfg = self.membership.latest
        if cfg.servers and not cfg.is_voter(m.src):
            # hashicorp: ignore candidates that are not voters in our configuration.
            self._reply_vote(m, granted=False, term=self.term)
            return
        if m.term < self.term or (m.prevote and m.term == self.term):
            self._reply_vote(m, granted=False, term=self.term)
            return
        if self._in_lease() and not m.leadership_transfer:
            logger.info("%s rejected %svote from %s at term %d: leader %s is alive",
                        self.id, "pre-" if m.prevote else "", m.src, m.term, self.leader_id)
            self._reply_vote(m, granted=False, term=self.term)
            return
        log_ok = (self.log.is_up_to_date(m.last_log_index, m.last_log_term)
                  or "vote_without_log_check" in _PLANTED_BUGS)
        if m.prevote:
            # Never change our term or vote for a pre-vote (§9.6).
            self._reply_vote(m, granted=log_ok, term=m.term if log_ok else self.term)
            return
        if m.term > self.term:
            self._become_follower(m.term, None, None)
        can_vote = self.voted_for in (None, m.src)
        if can_vote and log_ok:
            self.voted_for = m.src
            self._hard_state_dirty = True
            self._reset_election_timer()  # §5.2: granting a vote resets the timer
            logger.info("%s voted for %s at term %d", self.id, m.src, self.term)
            self._reply_vote(m, granted=True, term=self.term)
        else:
            self._reply_vote(m, granted=False, term=self.term)

    def _reply_vote(self, m: RequestVote, *, granted: bool, term: int) -> None:
        self._send(m.src, m.src_address, RequestVoteResponse, term=term,
                   granted=granted, prevote=m.prevote)

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            # A leader of our own term exists: follow it (§5.2).
            self._become_follower(self.term, m.src, m.src_address)
            self._step_follower(m)
            return
        if isinstance(m, RequestVoteResponse):
            if self.role is Role.PRE_CANDIDATE:
                if not m.prevote:
                    return
                if m.granted and m.term != self.term + 1:
                    return  # an answer to an older pre-vote round
            elif m.prevote or (m.term != self.term and "count_stale_votes" not in _PLANTED_BUGS):
                return
            if m.src not in self.voters:
                return
            self._votes[m.src] = m.granted
            self._tally(prevote=self.role is Role.PRE_CANDIDATE)

    # ------------------------------------------------------------------
    # Follower

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, AppendEntries):
            self._note_leader_contact(m)
            self._on_append_entries(m)
        elif isinstance(m, Heartbeat):
            self._note_leader_contact(m)
            commit = min(m.leader_commit, self.log.last_index)
            if commit > self.commit_index:
                self.commit_index = commit
            self._send(m.src, m.src_address, HeartbeatResponse, term=self.term,
                       seq=m.seq, last_log_index=self.log.last_index)
        elif isinstance(m, TimeoutNow):
            # Leadership transfer: the leader asks us to run at once,
            # bypassing pre-vote and stickiness (thesis §3.10).
            logger.info("%s got TimeoutNow from %s at term %d", self.id, m.src, self.term)
            self.campaign(self._now, transfer=True)
        elif isinstance(m, InstallSnapshot):
            # §7: the driver writes the chunks; install_snapshot() follows
            # once the whole snapshot is durable.
            self._note_leader_contact(m)
            self._install_chunks.append(m)

    def _note_leader_contact(self, m: Message) -> None:
        if self.leader_id != m.src or self.leader_address != m.src_address:
            self._set_leader(m.src, m.src_address)
        self.last_leader_contact = self._now
        self._reset_election_timer()

    def _on_append_entries(self, m: AppendEntries) -> None:
        prev, prev_term = m.prev_log_index, m.prev_log_term
        entries = list(m.entries)
        if not self._entries_well_formed(m):
            logger.warning("%s ignored malformed AppendEntries from %s", self.id, m.src)
            return
        if prev < self.log.base_index:
            # Our snapshot already covers these: they are committed, so they match.
            entries = [e for e in entries if e.index > self.log.base_index]
            prev, prev_term = self.log.base_index, self.log.base_term
            if entries and entries[0].index != prev + 1:
                self._reply_append(m, success=False, index=m.prev_log_index,
                                   hint=self.log.last_index)
                return
        local_term = self.log.term(prev)
        if local_term is None:
            # §5.3: we lack prev; hint our last index so the leader jumps there.
            self._reply_append(m, success=False, index=m.prev_log_index,
                               hint=self.log.last_index)
            return
        if local_term != prev_term and "skip_consistency_check" not in _PLANTED_BUGS:
            # Skip the whole conflicting term, but never below what is committed.
            hint = max(self.log.first_index_of_term(prev) - 1, self.commit_index)
            self._reply_append(m, success=False, index=m.prev_log_index,
                               hint=min(hint, prev - 1))
            return
        for i, e in enumerate(entries):
            t = self.log.term(e.index)
            if t is None:
                self._append(entries[i:])
                break
            if t != e.term:
                if e.index <= self.commit_index:
                    logger.error("%s refused to truncate committed entry %d (term %d) for "
                                 "%s's entry of term %d", self.id, e.index, t, m.src, e.term)
                    return
                # §5.3: delete the conflicting entry and all that follow it.
                self._truncate(e.index)
                self._append(entries[i:])
                break
        last_new = prev + len(entries)
        if m.leader_commit > self.commit_index:
            # §5.3: commit = min(leaderCommit, index of last new entry).
            self.commit_index = max(self.commit_index, min(m.leader_commit, last_new))
        self._reply_append(m, success=True, index=max(last_new, m.prev_log_index), hint=0)

    @staticmethod
    def _entries_well_formed(m: AppendEntries) -> bool:
        expect = m.prev_log_index + 1
        last_term = m.prev_log_term
        for e in m.entries:
            if e.index != expect or e.term < last_term or e.term > m.term:
                return False
            expect += 1
            last_term = e.term
        return m.prev_log_index >= 0 and m.leader_commit >= 0

    def _append(self, entries: list[Log]) -> None:
        self.log.append(entries)
        for e in entries:
            if e.type is LogType.CONFIGURATION:
                self._note_configuration_entry(e)

    def _truncate(self, index: int) -> None:
        logger.info("%s truncating log from %d (last %d)", self.id, index, self.log.last_index)
        if index <= self._stable_last:
            lo = index
            hi = self._stable_last
            if self._pending_delete is not None:
                lo = min(lo, self._pending_delete[0])
                hi = max(hi, self._pending_delete[1])
            self._pending_delete = (lo, hi)
            self._stable_last = index - 1
        self.log.truncate_from(index)
        self.membership.truncated(index)
        if self.role is not Role.LEADER:
            self._reset_election_timer()

    def _reply_append(self, m: AppendEntries, *, success: bool, index: int, hint: int) -> None:
        self._send(m.src, m.src_address, AppendEntriesResponse, term=self.term,
                   success=success, match_index=index, hint=hint)

    def _reject_stale_leader(self, m: Message) -> None:
        if isinstance(m, AppendEntries):
            self._reply_append(m, success=False, index=m.prev_log_index,
                               hint=self.log.last_index)
        elif isinstance(m, Heartbeat):
            self._send(m.src, m.src_address, HeartbeatResponse, term=self.term,
                       seq=m.seq, last_log_index=self.log.last_index)
        elif isinstance(m, InstallSnapshot):
            self._send(m.src, m.src_address, InstallSnapshotResponse, term=self.term,
                       snapshot_id=m.snapshot_id, success=False)

    # ------------------------------------------------------------------
    # Leader

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        if isinstance(m, (AppendEntriesResponse, HeartbeatResponse, InstallSnapshotResponse)):
            self._note_peer_contact(pr)
        if isinstance(m, AppendEntriesResponse):
            self._on_append_response(pr, m)
        elif isinstance(m, HeartbeatResponse):
            if m.seq > pr.acked_seq:
                pr.acked_seq = m.seq
                self._check_reads()
            if pr.state is ProgressState.PROBE:
                # The heartbeat answer is the probe's retransmission clock.
                pr.probe_sent = False
            if pr.match_index < self.log.last_index or pr.commit_sent < self.commit_index:
                self._send_appends(pr, allow_empty=pr.state is ProgressState.PROBE)

    def _note_peer_contact(self, pr: Progress) -> None:
        pr.last_contact = self._now
        if pr.heartbeat_failed:
            pr.heartbeat_failed = False
            self._observations.append(ResumedHeartbeatObservation(pr.id))

    def _on_append_response(self, pr: Progress, m: AppendEntriesResponse) -> None:
        if m.success:
            if m.match_index > self.log.last_index:
                logger.warning("%s ignored %s's claim to match %d beyond our last %d",
                               self.id, m.src, m.match_index, self.log.last_index)
                return
            pr.last_ack = self._now
            advanced = pr.acknowledge(m.match_index)
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            if advanced:
                self._maybe_commit()
                if self.role is not Role.LEADER:
                    return
                if pr.id in self._promotions:
                    self._check_promotions()
                if self._transfer is not None and self._transfer.target == pr.id:
                    self._advance_transfer()
            self._send_appends(pr)
            return
        if m.match_index <= pr.match_index:
            return  # stale rejection of something already acknowledged
        # §5.3: back off nextIndex, jumping straight to the follower's hint.
        pr.become_probe()
        pr.next_index = max(pr.match_index + 1, min(m.match_index, m.hint + 1))
        logger.debug("%s: %s rejected append at %d, retrying from %d",
                     self.id, m.src, m.match_index, pr.next_index)
        self._send_appends(pr, allow_empty=True)

    def _send_appends(self, pr: Progress, *, allow_empty: bool = False) -> None:
        """Send as much as the follower's pacing allows (etcd maybeSendAppend)."""
        while not pr.paused:
            prev = pr.next_index - 1
            prev_term = self.log.term(prev)
            if prev_term is None:
                # §7: what it needs is compacted away; send the snapshot.
                logger.info("%s: %s needs entry %d, compacted; sending snapshot %d",
                            self.id, pr.id, prev, self.snapshot_index)
                pr.become_snapshot()
                self._snapshot_requests.append((pr.id, pr.address))
                return
            entries = self.log.slice(pr.next_index, self.log.last_index,
                                     self.opts.max_append_entries)
            if not entries and not allow_empty and pr.state is ProgressState.REPLICATE:
                return
            self._send(pr.id, pr.address, AppendEntries, term=self.term,
                       prev_log_index=prev, prev_log_term=prev_term,
                       entries=tuple(entries), leader_commit=self.commit_index)
            pr.commit_sent = self.commit_index
            pr.commit_notify_at = None
            if pr.state is ProgressState.PROBE:
                pr.probe_sent = True
                return
            if entries:
                if not pr.inflight:
                    pr.last_ack = self._now
                pr.next_index = entries[-1].index + 1
                pr.inflight.append(entries[-1].index)
            allow_empty = False
            if not entries:
                return

    def _maybe_commit(self) -> None:
        match = {pid: pr.match_index for pid, pr in self.progress.items()}
        match[self.id] = self._stable_last
        index = committed_index(self.voters, match)
        # §5.4.2 (Figure 8): only entries of the current term commit by counting.
        if index > self.commit_index and (self.log.term(index) == self.term
                                          or "commit_previous_term" in _PLANTED_BUGS):
            previous_commit = self.commit_index
            self.commit_index = index
            for pr in self.progress.values():
                if pr.commit_sent < index and pr.commit_notify_at is None:
                    pr.commit_notify_at = self._now + self.opts.commit_timeout
            if self._reads_waiting_commit:
                waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
                for read in waiting:
                    self._start_read(read)
            if self.membership.committed(index)[0] > self.membership.committed(
                    previous_commit)[0]:
                self._sync_progress()  # a configuration just committed
            for cidx in [i for i in self._config_waiters if i <= index]:
                self._complete(Completion(self._config_waiters.pop(cidx), index=cidx))
            self._check_promotions()
            _, committed_cfg = self.membership.committed(index)
            if committed_cfg.servers and committed_cfg.server(self.id) is None:
                self._step_down_removed()

    def _step_down_removed(self) -> None:
        """Our own removal committed: hand over quickly (TimeoutNow to the
        most up-to-date voter), then step down (hashicorp: leader removed)."""
        best = max((pr for pr in self.progress.values() if pr.id in self.voters),
                   key=lambda pr: pr.match_index, default=None)
        if best is not None and best.match_index >= self.commit_index:
            self._send(best.id, best.address, TimeoutNow)
        logger.info("%s removed from the configuration; stepping down", self.id)
        self.removed_self = True
        self._become_follower(self.term, None, None)

    def _tick_leader(self) -> None:
        now = self._now
        if self._transfer is not None and now >= self._transfer.deadline:
            t, self._transfer = self._transfer, None
            logger.warning("%s leadership transfer to %s timed out", self.id, t.target)
            self._complete(Completion(t.request_id, failure=Failure.TRANSFER_TIMED_OUT))
        if self._lease_deadline is not None and now >= self._lease_deadline:
            self._check_lease()
            if self.role is not Role.LEADER:
                return
        if self._heartbeat_due is not None and now >= self._heartbeat_due:
            self._broadcast_heartbeat()
        for pr in self.progress.values():
            if pr.commit_notify_at is not None and now >= pr.commit_notify_at:
                pr.commit_notify_at = None
                if pr.commit_sent < self.commit_index:
                    if pr.paused:
                        self._send_heartbeat(pr)
                    else:
                        self._send_appends(pr, allow_empty=True)

    def _check_lease(self) -> None:
        """hashicorp checkLeaderLease: step down if a quorum has not been
        heard from within the lease; otherwise check again when the oldest
        contact that the quorum relies on would expire."""
        contact: dict[ServerID, float | None] = {
            pid: pr.last_contact for pid, pr in self.progress.items()}
        contact[self.id] = self._now
        heard = quorum_contact(self.voters, contact)
        lease = self.opts.leader_lease_timeout
        if heard is None or self._now - heard > lease:
            logger.warning("%s stepping down at term %d: no quorum within the lease",
                           self.id, self.term)
            self._become_follower(self.term, None, None)
            return
        self._lease_deadline = max(heard + lease, self._now + lease / 10)

    def _broadcast_heartbeat(self) -> None:
        self._hb_seq += 1
        self._heartbeat_due = self._now + self.opts.heartbeat_interval
        for pr in self.progress.values():
            self._send_heartbeat(pr)
            if (pr.state is ProgressState.REPLICATE and pr.inflight
                    and self._now - pr.last_ack > self.opts.replicate_timeout):
                logger.debug("%s: appends to %s unanswered, probing", self.id, pr.id)
                pr.become_probe()
            failed_for = self._now - (pr.last_contact or 0.0)
            if not pr.heartbeat_failed and failed_for > self.opts.leader_lease_timeout:
                pr.heartbeat_failed = True
                self._observations.append(FailedHeartbeatObservation(pr.id, pr.last_contact))
        self._check_reads()

    def _send_heartbeat(self, pr: Progress) -> None:
        self._send(pr.id, pr.address, Heartbeat, term=self.term,
                   leader_commit=min(pr.match_index, self.commit_index), seq=self._hb_seq)

    def _sync_progress(self) -> None:
        """Track exactly the servers of the latest configuration (§4.1)."""
        cfg = self.membership.latest
        wanted = {s.id: s for s in cfg.servers if s.id != self.id}
        if self.membership.latest_index > self.commit_index:
            # Keep replicating to servers being removed until the removal
            # commits, so they learn of it and stop campaigning.
            _, committed = self.membership.committed(self.commit_index)
            for s in committed.servers:
                if s.id != self.id and s.id not in wanted:
                    wanted[s.id] = s
        for pid in list(self.progress):
            if pid not in wanted:
                pr = self.progress.pop(pid)
                self._observations.append(PeerObservation(Server(pid, pr.address), removed=True))
        for pid, server in wanted.items():
            known = self.progress.get(pid)
            if known is None:
                self.progress[pid] = Progress(pid, server.address,
                                              next_index=self.log.last_index + 1,
                                              last_contact=self._now)
                self._observations.append(PeerObservation(server, removed=False))
            elif known.address != server.address:
                known.address = server.address

    # ------------------------------------------------------------------
    # Linearizable reads and leadership checks

    def _start_read(self, read: _Read) -> None:
        if self.log.term(self.commit_index) != self.term:
            # Until our no-op commits we do not know the commit index (§6.4).
            self._reads_waiting_commit.append(read)
            return
        read.index = self.commit_index
        read.seq = self._hb_seq + 1
        self._reads_verifying.append(read)
        self._heartbeat_now = True

    def _check_reads(self) -> None:
        if not self._reads_verifying:
            return
        done: list[_Read] = []
        for read in self._reads_verifying:
            acks = {self.id: True}
            for pid, pr in self.progress.items():
                if pr.acked_seq >= read.seq:
                    acks[pid] = True
            if vote_result(self.voters, acks) is VoteResult.WON:
                done.append(read)
        if not done:
            return
        self._reads_verifying = [r for r in self._reads_verifying if r not in done]
        for read in done:
            if read.origin is None:
                self._complete(Completion(read.request_id, index=read.index))
            else:
                rid, addr = read.origin
                self._send(rid, addr, ReadIndexResponse, term=self.term,
                           request_id=read.request_id, success=True, index=read.index)

    def _fail_read(self, read: _Read, failure: Failure) -> None:
        if read.origin is None:
            self._complete(Completion(read.request_id, failure=failure))
        else:
            rid, addr = read.origin
            self._send(rid, addr, ReadIndexResponse, term=self.term,
                       request_id=read.request_id, success=False)

    def _on_read_index_request(self, m: ReadIndexRequest) -> None:
        if self.role is not Role.LEADER:
            self._send(m.src, m.src_address, ReadIndexResponse, term=self.term,
                       request_id=m.request_id, success=False,
                       leader_id=self.leader_id, leader_address=self.leader_address)
            return
        self._start_read(_Read(m.request_id, (m.src, m.src_address)))

    def _on_read_index_response(self, m: ReadIndexResponse) -> None:
        if self._remote_reads.pop(m.request_id, None) is None:
            return
        if m.success:
            self._complete(Completion(m.request_id, index=m.index))
        else:
            self._complete(Completion(m.request_id, failure=Failure.NOT_LEADER,
                                      leader_id=m.leader_id, leader_address=m.leader_address))

    # ------------------------------------------------------------------
    # Helpers

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
