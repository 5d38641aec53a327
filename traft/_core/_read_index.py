"""Linearizable reads and leadership checks (etcd ReadIndex, thesis §6.4):
a read fence is the commit index once a quorum confirms we still lead."""

from __future__ import annotations

from .._messages import (
    ReadIndexRequest,
    ReadIndexResponse,
)
from ._quorum import (
    VoteResult,
    vote_result,
)
from ._ready import (
    Completion,
    Failure,
)
from ._state import CoreState, Role, _Read


class ReadIndexMixin(CoreState):
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
