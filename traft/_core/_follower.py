"""The follower's side of log replication (§5.3): the consistency check,
conflict truncation and commit-index advance."""

from __future__ import annotations

from .._messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    TimeoutNow,
)
from .._types import (
    Log,
    LogType,
)
from ._state import CoreState, Role, logger, _PLANTED_BUGS


class FollowerMixin(CoreState):
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
