"""Elections (§5.2), pre-vote (thesis §9.6) and leader stickiness."""

from __future__ import annotations

from .._messages import (
    AppendEntries,
    Heartbeat,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from .._observations import RequestVoteObservation
from ._quorum import (
    VoteResult,
    vote_result,
)
from ._state import CoreState, Role, logger, _PLANTED_BUGS


class ElectionMixin(CoreState):
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

    def _on_election_timeout(self) -> None:
        if not self.membership.latest.is_voter(self.id):
            self._election_deadline = None
            return
        logger.info("%s election timeout at term %d", self.id, self.term)
        if self.opts.prevote:
            self._become_pre_candidate()
        else:
            self._become_candidate()

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
