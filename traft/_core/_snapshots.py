"""Snapshots in the core (§7): compaction after a local snapshot, installing
one from the leader, and the leader's side of sending one."""

from __future__ import annotations

from .._errors import NotLeaderError
from .._types import (
    Configuration,
    ServerID,
)
from ._log import RaftLog
from ._membership import Membership
from ._state import CoreState, Role, logger


class SnapshotMixin(CoreState):
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

    def _configuration_at(self, index: int) -> tuple[int, Configuration]:
        return self.membership.committed(index)
