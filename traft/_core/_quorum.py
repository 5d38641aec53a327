"""Majority arithmetic: where votes are counted and commit indexes agreed
(etcd ``quorum/majority.go``). Pure functions over voter sets."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def quorum_size(voters: Collection[str]) -> int:
    """Smallest number of voters that is a majority."""
    return len(voters) // 2 + 1


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> VoteResult:
    """Tally ``votes`` (voter -> granted), counting only current voters (§5.2)."""
    if not voters:
        return VoteResult.LOST
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = quorum_size(voters)
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def committed_index(voters: Collection[str], match: Mapping[str, int]) -> int:
    """Highest index stored on a majority of ``voters`` (§5.3): the
    quorum-th largest match index. Voters missing from ``match`` count as 0."""
    if not voters:
        return 0
    indexes = sorted((match.get(v, 0) for v in voters), reverse=True)
    return indexes[quorum_size(voters) - 1]


def quorum_contact(voters: Collection[str], contact: Mapping[str, float | None]) -> float | None:
    """The time by which a majority of voters had been heard from: the
    quorum-th most recent contact, or None if no majority was ever heard."""
    if not voters:
        return None
    times = sorted((t for v in voters if (t := contact.get(v)) is not None), reverse=True)
    need = quorum_size(voters)
    if len(times) < need:
        return None
    return times[need - 1]
