"""The leader (§5.3, §5.4.2, hashicorp runLeader/replicate/commitment):
per-follower replication, heartbeats, commitment and the leader lease."""

from __future__ import annotations

from .._messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshotResponse,
    Message,
    TimeoutNow,
)
from .._observations import (
    FailedHeartbeatObservation,
    PeerObservation,
    ResumedHeartbeatObservation,
)
from .._types import (
    LogType,
    Server,
    ServerID,
)
from ._progress import (
    Progress,
    ProgressState,
)
from ._quorum import (
    committed_index,
    quorum_contact,
)
from ._ready import (
    Completion,
    Failure,
)
from ._state import CoreState, Role, logger, _PLANTED_BUGS


class LeaderMixin(CoreState):
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
