"""Majority arithmetic (etcd ``quorum/majority.go``): vote tallies (§5.2),
the commit index agreed by a majority (§5.3/§5.4.2's counting step) and the
leader-lease contact time (thesis §6.2, hashicorp ``checkLeaderLease``)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from traft._core._quorum import (
    VoteResult,
    committed_index,
    quorum_contact,
    quorum_size,
    vote_result,
)

ID = st.sampled_from("abcdefghi")
VOTERS = st.frozensets(ID, max_size=9)


@pytest.mark.parametrize(("n", "size"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_quorum_size_is_a_strict_majority(n: int, size: int) -> None:
    assert quorum_size([str(i) for i in range(n)]) == size


# -- vote_result


@pytest.mark.parametrize(("voters", "votes", "expected"), [
    ("", {}, VoteResult.LOST),
    ("a", {}, VoteResult.PENDING),
    ("a", {"a": True}, VoteResult.WON),
    ("a", {"a": False}, VoteResult.LOST),
    ("abc", {"a": True}, VoteResult.PENDING),
    ("abc", {"a": True, "b": True}, VoteResult.WON),
    ("abc", {"a": True, "b": False}, VoteResult.PENDING),
    ("abc", {"a": True, "b": False, "c": False}, VoteResult.LOST),
    ("abcd", {"a": True, "b": True}, VoteResult.PENDING),
    ("abcd", {"a": True, "b": True, "c": True}, VoteResult.WON),
    ("abcd", {"a": True, "b": False, "c": False}, VoteResult.LOST),
    ("abcde", {"a": True, "b": True, "c": False, "d": False}, VoteResult.PENDING),
    ("abcde", {"a": True, "b": True, "c": True, "d": False, "e": False}, VoteResult.WON),
])
def test_vote_result_table(voters: str, votes: dict[str, bool], expected: VoteResult) -> None:
    assert vote_result(set(voters), votes) is expected


def test_vote_result_ignores_votes_from_non_voters() -> None:
    """§5.2 counts votes of the configuration's servers only: grants from
    servers outside it (removed, non-voters) must not make a majority."""
    votes = {"a": True, "x": True, "y": True, "z": True}
    assert vote_result({"a", "b", "c"}, votes) is VoteResult.PENDING
    rejections = {"a": True, "x": False, "y": False}
    assert vote_result({"a", "b", "c"}, rejections) is VoteResult.PENDING


def naive_vote_result(voters: frozenset[str], votes: Mapping[str, bool]) -> VoteResult:
    if not voters:
        return VoteResult.LOST
    yes = sum(1 for v in voters if votes.get(v) is True)
    undecided = sum(1 for v in voters if v not in votes)
    if 2 * yes > len(voters):
        return VoteResult.WON
    if 2 * (yes + undecided) > len(voters):
        return VoteResult.PENDING
    return VoteResult.LOST


@given(voters=VOTERS, votes=st.dictionaries(ID, st.booleans()))
def test_vote_result_matches_naive_count(voters: frozenset[str], votes: dict[str, bool]) -> None:
    assert vote_result(voters, votes) is naive_vote_result(voters, votes)


# -- committed_index


@pytest.mark.parametrize(("voters", "match", "expected"), [
    ("", {}, 0),
    ("a", {"a": 7}, 7),
    ("a", {}, 0),
    ("abc", {"a": 5, "b": 3, "c": 1}, 3),
    ("abc", {"a": 5, "b": 5, "c": 1}, 5),
    ("abc", {"a": 5}, 0),  # missing voters count as 0
    ("abc", {"a": 5, "b": 4}, 4),
    ("abcd", {"a": 9, "b": 8, "c": 2, "d": 1}, 2),  # 4 voters need 3
    ("abcde", {"a": 9, "b": 8, "c": 7, "d": 1, "e": 1}, 7),
    ("abc", {"a": 2, "b": 2, "c": 2, "x": 100, "y": 100}, 2),  # non-voters ignored
])
def test_committed_index_table(voters: str, match: dict[str, int], expected: int) -> None:
    assert committed_index(set(voters), match) == expected


def naive_committed_index(voters: frozenset[str], match: Mapping[str, int]) -> int:
    """The largest index i such that a majority of voters have match >= i."""
    if not voters:
        return 0
    best = 0
    for i in range(0, max(match.values(), default=0) + 1):
        if 2 * sum(1 for v in voters if match.get(v, 0) >= i) > len(voters):
            best = i
    return best


MATCH = st.dictionaries(ID, st.integers(0, 40))


@given(voters=VOTERS, match=MATCH)
def test_committed_index_matches_naive_majority(voters: frozenset[str],
                                                match: dict[str, int]) -> None:
    assert committed_index(voters, match) == naive_committed_index(voters, match)


@given(voters=VOTERS.filter(bool), match=MATCH, who=ID, bump=st.integers(1, 10))
def test_committed_index_never_decreases_when_a_match_grows(
        voters: frozenset[str], match: dict[str, int], who: str, bump: int) -> None:
    before = committed_index(voters, match)
    grown = dict(match)
    grown[who] = grown.get(who, 0) + bump
    assert committed_index(voters, grown) >= before


@given(voters=VOTERS.filter(bool), match=MATCH)
def test_committed_index_is_held_by_a_majority(voters: frozenset[str],
                                               match: dict[str, int]) -> None:
    index = committed_index(voters, match)
    holders = [v for v in voters if match.get(v, 0) >= index]
    assert len(holders) >= quorum_size(voters)


# -- quorum_contact


@pytest.mark.parametrize(("voters", "contact", "expected"), [
    ("", {}, None),
    ("a", {"a": 3.0}, 3.0),
    ("a", {"a": None}, None),
    ("abc", {"a": 10.0}, None),
    ("abc", {"a": 10.0, "b": None, "c": None}, None),
    ("abc", {"a": 10.0, "b": 4.0}, 4.0),
    ("abc", {"a": 10.0, "b": 4.0, "c": 7.0}, 7.0),
    ("abcde", {"a": 10.0, "b": 1.0, "c": 2.0, "d": 3.0, "e": None}, 2.0),
    ("abc", {"a": 10.0, "x": 9.0, "y": 9.0}, None),  # non-voters ignored
])
def test_quorum_contact_table(voters: str, contact: dict[str, float | None],
                              expected: float | None) -> None:
    assert quorum_contact(set(voters), contact) == expected


def naive_quorum_contact(voters: frozenset[str],
                         contact: Mapping[str, float | None]) -> float | None:
    """The latest time t such that a majority of voters were heard at or after t."""
    times = {t for v in voters if (t := contact.get(v)) is not None}
    ok = [t for t in times
          if 2 * sum(1 for v in voters if (c := contact.get(v)) is not None and c >= t)
          > len(voters)]
    return max(ok) if ok else None


@given(voters=VOTERS, contact=st.dictionaries(ID, st.none() | st.integers(0, 50).map(float)))
def test_quorum_contact_matches_naive(voters: frozenset[str],
                                      contact: dict[str, float | None]) -> None:
    assert quorum_contact(voters, contact) == naive_quorum_contact(voters, contact)
