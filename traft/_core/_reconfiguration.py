"""Membership changes one at a time (thesis §4.1, hashicorp
requestConfigChange), staged catch-up of new voters (§4.2.1), and
leadership transfer (§3.10)."""

from __future__ import annotations

from .._errors import (
    ConfigurationChangeError,
    LeadershipTransferInProgressError,
    NotLeaderError,
    RaftError,
)
from .._messages import TimeoutNow
from .._types import (
    Configuration,
    Log,
    LogType,
    ServerAddress,
    ServerID,
)
from ._membership import (
    ChangeKind,
    check_configuration,
    encode_configuration,
    next_configuration,
)
from ._ready import (
    Completion,
    Failure,
)
from ._state import CoreState, Role, _Transfer, logger


class ReconfigurationMixin(CoreState):
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
