"""The Raft paper, one scenario at a time (in the spirit of etcd's
``raft_paper_test.go``), against the pure synchronous core.

Each test names the situation; its docstring cites the section of the paper
("In Search of an Understandable Consensus Algorithm", extended version), of
Ongaro's thesis ("Consensus: Bridging Theory and Practice"), or the hashicorp
or etcd behaviour it checks. Assertions are on what a driver would observe:
the messages a Ready hands out, its hard state, entries and committed
entries, completions, and the role/term/commit/log of a core.

Two levels are used: single cores fed hand-made messages (``drain`` plays the
driver: take a Ready, "do" it, advance), and the in-test ``CoreNetwork`` of
``harness.py`` for scenarios that need several servers talking.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Sequence
from typing import TypeVar

import pytest

from traft._core import Completion, CoreOptions, Failure, HardState, RaftCore, Ready, Role
from traft._core._membership import encode_configuration
from traft._core._progress import MAX_INFLIGHT, ProgressState
from traft._errors import CantBootstrapError, NotLeaderError
from traft._messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from traft._types import Configuration, Log, LogType, Server, Suffrage

from .harness import OPTIONS, CoreNetwork, configuration, new_core

M = TypeVar("M", bound=Message)

T = OPTIONS.heartbeat_timeout  # a follower's election timeout base
E = OPTIONS.election_timeout  # a candidate's election timeout base
HB = OPTIONS.heartbeat_interval
NOPREVOTE = dataclasses.replace(OPTIONS, prevote=False)
ABC = ("a", "b", "c")


# ----------------------------------------------------------------------
# Helpers


def config_entry(ids: Iterable[str] | Configuration) -> Log:
    cfg = ids if isinstance(ids, Configuration) else configuration(ids)
    return Log(index=1, term=1, type=LogType.CONFIGURATION, data=encode_configuration(cfg))


def entry(index: int, term: int) -> Log:
    """A command whose content is determined by its index and term, so two
    servers holding "the same entry" (§5.3 Log Matching) hold equal values."""
    return Log(index=index, term=term, data=f"{index}@{term}".encode())


def log_with_terms(ids: Iterable[str] | Configuration, terms: Sequence[int]) -> list[Log]:
    """A log whose entry i has term ``terms[i-1]``; entry 1 is the
    configuration (term 1), the rest are commands."""
    assert terms and terms[0] == 1, "entry 1 is the configuration entry of term 1"
    return [config_entry(ids)] + [entry(i, t) for i, t in enumerate(terms[1:], start=2)]


def terms_of(core: RaftCore) -> list[int | None]:
    return [core.log.term(i) for i in range(1, core.log.last_index + 1)]


def log_of(core: RaftCore) -> list[tuple[int, int, LogType, bytes]]:
    return [(e.index, e.term, e.type, e.data) for e in core.log.slice(1, core.log.last_index)]


def drain(core: RaftCore) -> Ready:
    """Play the driver: take the Ready, (pretend to) persist/send/apply, advance."""
    rd = core.ready()
    core.advance(rd)
    return rd


def sent(rd: Ready, kind: type[M], dst: str | None = None) -> list[M]:
    return [env.message for env in rd.messages
            if isinstance(env.message, kind) and (dst is None or env.message.dst == dst)]


def only(items: Sequence[M]) -> M:
    assert len(items) == 1, items
    return items[0]


def core(id: str = "b", ids: Iterable[str] | Configuration = ABC, *, term: int = 1,
         terms: Sequence[int] = (1,), voted_for: str | None = None,
         options: CoreOptions = OPTIONS, now: float = 0.0, seed: int = 0) -> RaftCore:
    """A follower restarted from durable state: ``term``/``voted_for`` and a
    log with the given entry terms (entry 1 being the configuration)."""
    return new_core(id, options=options, now=now, seed=seed, term=term, voted_for=voted_for,
                    entries=log_with_terms(ids, terms))


def leader(id: str = "a", ids: Sequence[str] = ABC, *, term: int = 1,
           terms: Sequence[int] = (1,), options: CoreOptions = OPTIONS,
           now: float = 0.0) -> RaftCore:
    """A core that has just won an election at ``term + 1`` with the votes
    of the first peers in ``ids``. Its first leader Ready is not yet taken."""
    c = core(id, ids, term=term, terms=terms, options=options, now=now)
    c.campaign(now, transfer=True)
    drain(c)
    peers = [i for i in ids if i != id]
    for peer in peers[: len(ids) // 2]:
        c.step(vote_response(peer, id, c.term, granted=True), now)
    assert c.role is Role.LEADER
    return c


def append(src: str, dst: str, term: int, prev: int, prev_term: int,
           entries: Sequence[Log] = (), commit: int = 0) -> AppendEntries:
    return AppendEntries(term=term, src=src, src_address=src, dst=dst, prev_log_index=prev,
                         prev_log_term=prev_term, entries=tuple(entries), leader_commit=commit)


def append_ok(src: str, dst: str, term: int, match: int) -> AppendEntriesResponse:
    return AppendEntriesResponse(term=term, src=src, src_address=src, dst=dst, success=True,
                                 match_index=match)


def heartbeat(src: str, dst: str, term: int, commit: int = 0, seq: int = 1) -> Heartbeat:
    return Heartbeat(term=term, src=src, src_address=src, dst=dst, leader_commit=commit, seq=seq)


def heartbeat_ok(src: str, dst: str, term: int, seq: int) -> HeartbeatResponse:
    return HeartbeatResponse(term=term, src=src, src_address=src, dst=dst, seq=seq,
                             last_log_index=0)


def vote_request(src: str, dst: str, term: int, last_index: int = 1, last_term: int = 1, *,
                 prevote: bool = False, transfer: bool = False) -> RequestVote:
    return RequestVote(term=term, src=src, src_address=src, dst=dst, last_log_index=last_index,
                       last_log_term=last_term, prevote=prevote, leadership_transfer=transfer)


def vote_response(src: str, dst: str, term: int, *, granted: bool,
                  prevote: bool = False) -> RequestVoteResponse:
    return RequestVoteResponse(term=term, src=src, src_address=src, dst=dst, granted=granted,
                               prevote=prevote)


def custom_network(logs: dict[str, tuple[int, Sequence[int]]], *,
                   options: CoreOptions = OPTIONS, seed: int = 0) -> CoreNetwork:
    """A CoreNetwork whose servers restart from the given (term, log terms)."""
    ids = list(logs)
    net = CoreNetwork(ids, options=options, seed=seed, bootstrap=False)
    for id, (term, terms) in logs.items():
        net.cores[id] = new_core(id, options=options, seed=seed, term=term,
                                 entries=log_with_terms(ids, terms))
    return net


def messages_since(net: CoreNetwork, mark: int, kind: type[M], *, src: str | None = None,
                   dst: str | None = None) -> list[M]:
    return [m for m in net.sent[mark:] if isinstance(m, kind)
            and (src is None or m.src == src) and (dst is None or m.dst == dst)]


def settle(net: CoreNetwork) -> None:
    """Let commit indexes reach the followers (commit notices, heartbeats)."""
    net.run(3 * HB)


# ----------------------------------------------------------------------
# §5.1 Raft basics: terms


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER])
@pytest.mark.parametrize("kind", ["append", "heartbeat", "append-response", "heartbeat-response",
                                  "vote-response"])
def test_server_seeing_a_higher_term_adopts_it_and_becomes_follower(role: Role, kind: str) -> None:
    """§5.1: "If one server's current term is smaller than the other's, then
    it updates its current term to the larger value. If a candidate or leader
    discovers that its term is out of date, it immediately reverts to
    follower state." The new term (with no vote) is in the next Ready's hard
    state, to be persisted before anything is sent."""
    if role is Role.LEADER:
        c = leader("a")
    else:
        c = core("a")
        if role is Role.PRE_CANDIDATE:
            c.campaign(0.0)
        elif role is Role.CANDIDATE:
            c.campaign(0.0, transfer=True)
    assert c.role is role
    drain(c)
    term = 5
    m: Message = {
        "append": append("b", "a", term, prev=1, prev_term=1),
        "heartbeat": heartbeat("b", "a", term),
        "append-response": AppendEntriesResponse(term=term, src="b", src_address="b", dst="a",
                                                 success=False),
        "heartbeat-response": heartbeat_ok("b", "a", term, seq=1),
        "vote-response": vote_response("b", "a", term, granted=False),
    }[kind]
    c.step(m, 0.1)
    assert c.role is Role.FOLLOWER
    assert c.term == term
    assert c.voted_for is None
    assert c.leader_id == ("b" if kind in ("append", "heartbeat") else None)
    rd = drain(c)
    assert rd.hard_state == HardState(term, None)


def test_message_addressed_to_another_server_is_ignored() -> None:
    """Every message names its destination (hashicorp RPCHeader); one that
    reaches the wrong server (a reused address) changes nothing there."""
    c = core("b")
    c.step(append("a", "c", 5, prev=1, prev_term=1, entries=[entry(2, 5)], commit=2), 0.1)
    c.step(vote_request("a", "c", 5), 0.1)
    assert (c.term, c.voted_for, c.leader_id, c.log.last_index) == (1, None, None, 1)
    assert not c.has_ready()


def test_stale_term_requests_are_rejected_with_the_current_term() -> None:
    """§5.1: "If a server receives a request with a stale term number, it
    rejects the request" (Figure 2: reply false if term < currentTerm), and
    the reply carries its term so the sender learns it is stale. The stale
    "leader" is not recognised and does not reset the election timer."""
    c = core("b", term=3)
    deadline = c.next_deadline()
    c.step(append("a", "b", 2, prev=1, prev_term=1, entries=[entry(2, 2)], commit=2), 0.5)
    c.step(heartbeat("a", "b", 2, commit=1, seq=4), 0.5)
    c.step(vote_request("a", "b", 2, last_index=9, last_term=2), 0.5)
    rd = drain(c)
    resp = only(sent(rd, AppendEntriesResponse, dst="a"))
    assert (resp.term, resp.success) == (3, False)
    assert only(sent(rd, HeartbeatResponse, dst="a")).term == 3
    vote = only(sent(rd, RequestVoteResponse, dst="a"))
    assert (vote.term, vote.granted) == (3, False)
    assert rd.entries == [] and rd.hard_state is None
    assert (c.term, c.voted_for, c.leader_id, c.commit_index) == (3, None, None, 0)
    assert c.log.last_index == 1
    assert c.next_deadline() == deadline


def test_responses_from_an_older_term_are_ignored() -> None:
    """§5.1: a message with a stale term is rejected, and a stale *answer*
    means nothing in the current term: old vote grants are not counted
    (§5.2 "votes ... for the same term"), old append acknowledgements move
    no match index and commit nothing (§5.3)."""
    cand = core("a", "abcde", term=3, options=NOPREVOTE)
    cand.campaign(0.0)
    drain(cand)
    for peer in ("b", "c"):
        cand.step(vote_response(peer, "a", 3, granted=True), 0.1)
    assert (cand.role, cand.term) == (Role.CANDIDATE, 4)
    assert sent(drain(cand), AppendEntries) == []

    lead = leader("a", term=2)  # term 3, no-op at index 2
    drain(lead)
    lead.step(append_ok("b", "a", 2, match=2), 0.1)
    lead.step(heartbeat_ok("b", "a", 2, seq=1), 0.1)
    assert lead.progress["b"].match_index == 0
    assert lead.commit_index == 0
    assert drain(lead).committed == []


def test_leader_steps_down_when_a_response_carries_a_higher_term() -> None:
    """§5.1: a leader that discovers its term is out of date (here from a
    follower's rejection) immediately reverts to follower, and stops
    replicating and heartbeating."""
    c = leader("a")
    drain(c)
    c.step(AppendEntriesResponse(term=3, src="b", src_address="b", dst="a", success=False,
                                 match_index=1, hint=1), 0.1)
    assert (c.role, c.term, c.leader_id) == (Role.FOLLOWER, 3, None)
    rd = drain(c)
    assert rd.hard_state == HardState(3, None)
    c.tick(0.1 + 5 * HB)
    rd = drain(c)
    assert sent(rd, Heartbeat) == [] and sent(rd, AppendEntries) == []


def test_partitioned_stale_leader_steps_down_after_heal_and_its_entries_are_lost() -> None:
    """§5.1/§5.3: an old leader cut off from the majority keeps believing it
    leads (lease disabled here), but cannot commit; once the partition heals
    the first answer carrying the new term makes it step down, and its
    uncommitted entry is overwritten by the new leader's log."""
    opts = dataclasses.replace(OPTIONS, leader_lease_timeout=1000.0)
    net = CoreNetwork(ABC, options=opts)
    net.elect("a")
    settle(net)
    net.isolate("a")
    net.propose("a", b"lost")
    net.run(4.0)
    new = [i for i in net.leaders() if i != "a"]
    assert len(new) == 1
    assert net.cores["a"].role is Role.LEADER and net.cores["a"].term == 2
    assert net.cores[new[0]].term > 2
    net.heal()
    net.run(1.0)
    assert net.leaders() == new
    old = net.cores["a"]
    assert old.role is Role.FOLLOWER and old.term == net.cores[new[0]].term
    assert all(b"lost" not in net.commands(i) for i in ABC)
    assert log_of(old) == log_of(net.cores[new[0]])


# ----------------------------------------------------------------------
# §5.2 Leader election


def test_server_starts_as_a_follower_with_no_leader() -> None:
    """§5.2: "When servers start up, they begin as followers." A restarted
    server keeps its durable term and vote but knows no leader."""
    c = core("b", term=4, voted_for="c")
    assert (c.role, c.term, c.voted_for, c.leader_id) == (Role.FOLLOWER, 4, "c", None)
    assert c.commit_index == 0
    assert not c.has_ready()


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_follower_election_timeout_is_the_seeded_random_point_in_T_2T(seed: int) -> None:
    """§5.2: "election timeouts are chosen randomly from a fixed interval".
    A follower (hashicorp: one that heard nothing for HeartbeatTimeout T)
    starts an election at now + T + rng.random()*T, drawn from the rng it was
    given; not a moment before."""
    c = RaftCore("a", "a", options=OPTIONS, rng=random.Random(seed), now=0.0)
    c.bootstrap(configuration(ABC))
    drain(c)
    expected = 0.0 + T + random.Random(seed).random() * T
    assert c.next_deadline() == expected
    c.tick(math.nextafter(expected, 0.0))
    assert (c.role, c.has_ready()) == (Role.FOLLOWER, False)
    c.tick(expected)
    assert c.role is Role.PRE_CANDIDATE
    assert len(sent(drain(c), RequestVote)) == 2


def test_election_timeouts_are_spread_over_T_2T() -> None:
    """§5.2: randomized in [T, 2T) for followers and [E, 2E) for candidates,
    so that split votes are rare and resolve quickly."""
    opts = dataclasses.replace(NOPREVOTE, heartbeat_timeout=1.0, election_timeout=3.0)
    follower_timeouts: list[float] = []
    candidate_timeouts: list[float] = []
    for seed in range(200):
        c = RaftCore("a", "a", options=opts, rng=random.Random(seed), now=10.0)
        c.bootstrap(configuration(ABC))
        drain(c)
        deadline = c.next_deadline()
        assert deadline is not None
        follower_timeouts.append(deadline - 10.0)
        c.tick(deadline)
        assert c.role is Role.CANDIDATE
        again = c.next_deadline()
        assert again is not None
        candidate_timeouts.append(again - deadline)
    for timeouts, base in ((follower_timeouts, 1.0), (candidate_timeouts, 3.0)):
        assert all(base <= t < 2 * base for t in timeouts)
        assert max(timeouts) - min(timeouts) > 0.8 * base  # really spread out


def test_followers_rarely_time_out_together() -> None:
    """§5.2: randomization spreads the timeouts "so that in most cases only a
    single server will time out; it wins the election and sends heartbeats
    before any other servers time out". Each server draws from its own rng;
    across many 5-server clusters the first two deadlines are seldom close."""
    close = 0
    trials = 300
    for seed in range(trials):
        deadlines = []
        for id in "abcde":
            c = new_core(id, seed=seed)
            c.bootstrap(configuration("abcde"))
            d = c.next_deadline()
            assert d is not None
            deadlines.append(d)
        first, second = sorted(deadlines)[:2]
        if second - first < 0.02 * T:
            close += 1
    assert close / trials < 0.2  # independent uniforms: about 0.1


def test_candidate_that_hears_nothing_starts_a_new_election_when_it_times_out() -> None:
    """§5.2: "If no candidate receives a majority ... each candidate will
    time out and start a new election by incrementing its term and
    initiating another round of RequestVote RPCs." Not before its timer."""
    c = core("a", options=NOPREVOTE)
    c.campaign(0.0)
    drain(c)
    deadline = c.next_deadline()
    assert deadline is not None and E <= deadline < 2 * E
    c.tick(math.nextafter(deadline, 0.0))
    assert c.term == 2 and not c.has_ready()
    c.tick(deadline)
    rd = drain(c)
    assert (c.role, c.term) == (Role.CANDIDATE, 3)
    assert rd.hard_state == HardState(3, "a")
    assert {m.dst: m.term for m in sent(rd, RequestVote)} == {"b": 3, "c": 3}


def test_request_vote_carries_the_candidates_last_log_index_and_term() -> None:
    """§5.4.1: "The RequestVote RPC implements this restriction: the RPC
    includes information about the candidate's log" (lastLogIndex,
    lastLogTerm), for both the pre-vote and the real round."""
    c = core("a", term=3, terms=(1, 1, 2, 3, 3))
    c.campaign(0.0)
    pre = sent(drain(c), RequestVote)
    c.step(vote_response("b", "a", 4, granted=True, prevote=True), 0.1)
    real = sent(drain(c), RequestVote)
    for m in [*pre, *real]:
        assert (m.last_log_index, m.last_log_term, m.term) == (5, 3, 4)
    assert [m.prevote for m in pre] == [True, True]
    assert [m.prevote for m in real] == [False, False]


def test_candidate_persists_term_and_self_vote_in_the_ready_that_sends_request_votes() -> None:
    """§5.2: "a follower increments its current term ... votes for itself
    and issues RequestVote RPCs". Figure 2: currentTerm and votedFor are
    persisted before responding to RPCs. The Ready contract persists
    hard_state before sending messages, so the new term and self-vote must
    be in the very Ready that hands out the first RequestVote."""
    c = core("a", options=NOPREVOTE)
    deadline = c.next_deadline()
    assert deadline is not None
    assert not c.has_ready()
    c.tick(deadline)
    rd = drain(c)
    assert rd.hard_state == HardState(2, "a")
    votes = sent(rd, RequestVote)
    assert sorted(m.dst for m in votes) == ["b", "c"]
    assert all((m.term, m.last_log_index, m.last_log_term, m.prevote) == (2, 1, 1, False)
               for m in votes)


def test_candidate_after_prevote_persists_term_and_vote_with_its_request_votes() -> None:
    """§5.2 with thesis §9.6: the pre-vote round changes no durable state
    (no hard state in its Ready); winning it makes the server a candidate
    whose term+vote arrive in the same Ready as its real RequestVotes."""
    c = core("a")
    c.campaign(0.0)
    rd = drain(c)
    assert rd.hard_state is None and c.term == 1 and c.voted_for is None
    assert all(m.prevote and m.term == 2 for m in sent(rd, RequestVote))
    c.step(vote_response("b", "a", 2, granted=True, prevote=True), 0.1)
    rd = drain(c)
    assert c.role is Role.CANDIDATE
    assert rd.hard_state == HardState(2, "a")
    votes = sent(rd, RequestVote)
    assert sorted(m.dst for m in votes) == ["b", "c"]
    assert all(not m.prevote and m.term == 2 for m in votes)


def test_voter_persists_its_vote_in_the_ready_that_sends_the_grant() -> None:
    """§5.2/Figure 2: votedFor must be durable before the vote is sent, or a
    restarted server could vote twice in one term."""
    c = core("b")
    c.step(vote_request("a", "b", 2), 0.1)
    rd = drain(c)
    assert rd.hard_state == HardState(2, "a")
    grant = only(sent(rd, RequestVoteResponse, dst="a"))
    assert (grant.term, grant.granted, grant.prevote) == (2, True, False)


def test_vote_is_granted_to_at_most_one_candidate_per_term() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given
    term, on a first-come-first-served basis." A retransmitted request from
    the same candidate is granted again; a new term frees the vote."""
    c = core("b", ids="abcd")

    def ask(src: str, term: int) -> bool:
        c.step(vote_request(src, "b", term), 0.1)
        return only(sent(drain(c), RequestVoteResponse, dst=src)).granted

    assert ask("a", 2)
    assert not ask("c", 2)
    assert not ask("d", 2)
    assert ask("a", 2)  # the same candidate asking again
    assert (c.term, c.voted_for) == (2, "a")
    assert ask("c", 3)
    assert (c.term, c.voted_for) == (3, "c")
    assert not ask("a", 3)


@pytest.mark.parametrize(("ids", "grants", "rejections", "expected"), [
    ("a", 0, 0, Role.LEADER),
    ("abc", 1, 0, Role.LEADER),
    ("abc", 0, 1, Role.CANDIDATE),
    ("abc", 0, 2, Role.FOLLOWER),
    ("abcde", 1, 0, Role.CANDIDATE),
    ("abcde", 1, 2, Role.CANDIDATE),
    ("abcde", 2, 0, Role.LEADER),
    ("abcde", 2, 2, Role.LEADER),
    ("abcde", 0, 3, Role.FOLLOWER),
])
def test_candidate_wins_only_with_votes_from_a_majority(ids: str, grants: int, rejections: int,
                                                        expected: Role) -> None:
    """§5.2: "A candidate wins an election if it receives votes from a
    majority of the servers in the full cluster for the same term." When a
    majority refuses, the election is lost and it returns to follower."""
    c = core("a", ids, options=NOPREVOTE)
    c.campaign(0.0)
    drain(c)
    peers = [i for i in ids if i != "a"]
    for p in peers[:grants]:
        c.step(vote_response(p, "a", 2, granted=True), 0.1)
    for p in peers[grants:grants + rejections]:
        c.step(vote_response(p, "a", 2, granted=False), 0.1)
    assert c.role is expected
    assert c.term == 2


def test_duplicate_grants_from_one_voter_count_once() -> None:
    """§5.2: a majority of *servers*: the same voter's grant, redelivered,
    does not make a majority."""
    c = core("a", "abcde", options=NOPREVOTE)
    c.campaign(0.0)
    drain(c)
    for _ in range(3):
        c.step(vote_response("b", "a", 2, granted=True), 0.1)
    c.step(vote_response("x", "a", 2, granted=True), 0.1)  # not in the configuration
    assert c.role is Role.CANDIDATE


def test_new_leader_announces_itself_at_once() -> None:
    """§5.2: "Once a candidate wins an election, it becomes leader. It then
    sends heartbeat messages to all of the other servers to establish its
    authority and prevent new elections." Its first Ready reaches every peer."""
    c = leader("a", "abcde", options=NOPREVOTE)
    rd = drain(c)
    assert sorted(env.message.dst for env in rd.messages) == ["b", "c", "d", "e"]
    assert all(env.message.term == 2 for env in rd.messages)


@pytest.mark.parametrize("role", [Role.CANDIDATE, Role.PRE_CANDIDATE])
@pytest.mark.parametrize("kind", ["append", "heartbeat"])
def test_candidate_steps_down_on_append_from_a_leader_of_its_term(role: Role, kind: str) -> None:
    """§5.2: "If the leader's term ... is at least as large as the
    candidate's current term, then the candidate recognizes the leader as
    legitimate and returns to follower state." The message is then handled
    as a follower would (answered)."""
    c = core("a")
    c.campaign(0.0, transfer=role is Role.CANDIDATE)
    assert c.role is role
    drain(c)
    term = c.term
    m: Message = (append("b", "a", term, prev=1, prev_term=1, entries=[entry(2, term)])
                  if kind == "append" else heartbeat("b", "a", term))
    c.step(m, 0.1)
    assert (c.role, c.term, c.leader_id) == (Role.FOLLOWER, term, "b")
    rd = drain(c)
    if kind == "append":
        ack = only(sent(rd, AppendEntriesResponse, dst="b"))
        assert (ack.success, ack.match_index) == (True, 2)
    else:
        assert only(sent(rd, HeartbeatResponse, dst="b")).term == term


def test_candidate_rejects_append_from_a_lower_term_and_stays_candidate() -> None:
    """§5.2: "If the term in the RPC is smaller than the candidate's current
    term, then the candidate rejects the RPC and continues in candidate state." """
    c = core("a", term=3)
    c.campaign(0.0, transfer=True)
    drain(c)
    c.step(append("b", "a", 3, prev=1, prev_term=1), 0.1)
    assert (c.role, c.term) == (Role.CANDIDATE, 4)
    rd = drain(c)
    rej = only(sent(rd, AppendEntriesResponse, dst="b"))
    assert (rej.success, rej.term) == (False, 4)


def test_split_vote_is_retried_in_a_new_term() -> None:
    """§5.2: when "votes could be split so that no candidate obtains a
    majority ... each candidate will time out and start a new election by
    incrementing its term". Four servers, two simultaneous candidates, each
    reaching one voter: nobody wins term 2; a later term elects one leader."""
    net = CoreNetwork("abcd", options=NOPREVOTE)
    net.cut |= {("a", "d"), ("d", "a"), ("c", "b"), ("b", "c")}
    net.cores["a"].campaign(net.now)
    net.cores["c"].campaign(net.now)
    net.deliver_all()
    assert net.cores["a"].role is Role.CANDIDATE and net.cores["c"].role is Role.CANDIDATE
    assert net.cores["a"].term == net.cores["c"].term == 2
    assert (net.cores["b"].voted_for, net.cores["d"].voted_for) == ("a", "c")
    assert net.leaders() == []
    net.heal()
    mark = len(net.sent)
    net.run(6.0)
    winner = net.leader()
    assert winner.term >= 3
    first = messages_since(net, mark, RequestVote)[0]
    assert first.term == 3  # the retry increments the term
    assert all(c.term == winner.term for c in net.cores.values())


def test_granting_a_vote_resets_the_election_timer() -> None:
    """Figure 2 (Followers): convert to candidate only "if election timeout
    elapses without ... granting vote to candidate": a grant restarts the
    timer, so the voter gives the candidate time to win."""
    c = core("b", term=2)
    deadline = c.next_deadline()
    assert deadline is not None
    now = deadline - 0.1
    c.step(vote_request("a", "b", 2), now)
    assert only(sent(drain(c), RequestVoteResponse)).granted
    later = c.next_deadline()
    assert later is not None and later >= now + T
    c.tick(deadline)
    assert c.role is Role.FOLLOWER and not c.has_ready()


def test_refusing_a_vote_does_not_reset_the_election_timer() -> None:
    """Figure 2 (Followers): only AppendEntries from the current leader or a
    granted vote hold off an election; a refused vote (already voted this
    term) leaves the timer alone."""
    c = core("b", term=2, voted_for="c")
    deadline = c.next_deadline()
    assert deadline is not None
    c.step(vote_request("a", "b", 2), deadline - 0.1)
    assert not only(sent(drain(c), RequestVoteResponse)).granted
    assert c.next_deadline() == deadline
    c.tick(deadline)
    assert c.role is Role.PRE_CANDIDATE


def test_append_entries_from_the_leader_resets_the_election_timer() -> None:
    """§5.2: "A server remains in follower state as long as it receives
    valid RPCs from a leader or candidate." Each heartbeat pushes the
    election deadline at least T past its arrival."""
    c = core("b", term=2)
    deadline = c.next_deadline()
    assert deadline is not None
    now = 0.0
    while now < 3 * deadline:
        now += 0.5
        c.step(heartbeat("a", "b", 2), now)
        drain(c)
        nd = c.next_deadline()
        assert nd is not None and nd >= now + T
        c.tick(now + 0.4)
        assert c.role is Role.FOLLOWER
    assert c.leader_id == "a"


# ----------------------------------------------------------------------
# §5.3 Log replication


def test_new_leader_appends_a_noop_entry_of_its_term() -> None:
    """§8 (and §5.4.2): "each leader commit[s] a blank no-op entry into the
    log at the start of its term". It is in the leader's first Ready (to be
    persisted) and goes to every follower in that same Ready."""
    c = leader("a")
    rd = drain(c)
    assert [(e.index, e.term, e.type) for e in rd.entries] == [(2, 2, LogType.NOOP)]
    for dst in ("b", "c"):
        m = only(sent(rd, AppendEntries, dst=dst))
        assert (m.term, m.prev_log_index, m.prev_log_term) == (2, 1, 1)
        assert [(e.index, e.term, e.type) for e in m.entries] == [(2, 2, LogType.NOOP)]


def test_leader_commits_its_entry_once_a_majority_stores_it() -> None:
    """§5.3: "A log entry is committed once the leader that created the entry
    has replicated it on a majority of the servers"; then it is applied
    (handed out in Ready.committed) and followers learn it."""
    net = CoreNetwork("abcde")
    net.elect("a")
    net.isolate("d")
    net.isolate("e")
    net.propose("a", b"x")
    net.deliver_all()
    assert net.cores["a"].commit_index == 3
    assert net.commands("a") == [b"x"]
    settle(net)
    assert net.commands("b") == net.commands("c") == [b"x"]
    assert net.commands("d") == net.commands("e") == []
    # Now only a, d, e can talk: d and e first catch up, then y commits.
    net.heal()
    net.isolate("b")
    net.isolate("c")
    net.propose("a", b"y")
    net.deliver_all()
    assert net.cores["a"].commit_index == 4
    settle(net)
    assert net.commands("d") == net.commands("e") == [b"x", b"y"]


def test_follower_acknowledges_entries_in_the_ready_that_persists_them() -> None:
    """Figure 2 / §5.3: servers persist log entries "before responding to
    RPCs": the success reply is in the same Ready as the entries, and the
    Ready contract writes entries before sending messages."""
    c = core("b")
    c.step(append("a", "b", 2, prev=1, prev_term=1, entries=[entry(2, 2), entry(3, 2)]), 0.1)
    rd = drain(c)
    assert rd.hard_state == HardState(2, None)
    assert rd.entries == [entry(2, 2), entry(3, 2)]
    ack = only(sent(rd, AppendEntriesResponse, dst="a"))
    assert (ack.success, ack.match_index, ack.term) == (True, 3, 2)
    assert not c.has_ready()


def test_follower_rejects_append_missing_prev_with_its_last_index_as_hint() -> None:
    """§5.3 consistency check: "If the follower does not find an entry in its
    log with the same index and term, then it refuses the new entries." The
    rejection hints its last index, so the leader can skip straight there."""
    c = core("b", terms=(1, 1, 1))
    c.step(append("a", "b", 2, prev=7, prev_term=2, entries=[entry(8, 2)], commit=7), 0.1)
    rd = drain(c)
    rej = only(sent(rd, AppendEntriesResponse, dst="a"))
    assert (rej.success, rej.match_index, rej.hint, rej.term) == (False, 7, 3, 2)
    assert terms_of(c) == [1, 1, 1]
    assert rd.entries == [] and c.commit_index == 0


def test_follower_rejects_conflicting_prev_hinting_before_the_conflicting_term() -> None:
    """§5.3 (the optimisation at its end): "the follower can include the term
    of the conflicting entry and the first index it stores for that term" so
    the leader skips the whole term. The mismatched prefix itself is not
    touched by a rejected append."""
    c = core("b", term=2, terms=(1, 2, 2, 2))
    c.step(append("a", "b", 4, prev=4, prev_term=3, entries=[entry(5, 4)]), 0.1)
    rd = drain(c)
    rej = only(sent(rd, AppendEntriesResponse, dst="a"))
    assert (rej.success, rej.match_index, rej.hint) == (False, 4, 1)
    assert terms_of(c) == [1, 2, 2, 2]
    assert rd.delete_range is None


def test_follower_truncates_a_conflicting_suffix_and_keeps_the_matching_prefix() -> None:
    """§5.3: "If an existing entry conflicts with a new one (same index but
    different terms), delete the existing entry and all that follow it."
    The driver is told to delete the stale range and persist the new entry."""
    c = core("b", term=2, terms=(1, 2, 2, 2))
    kept = c.log.entry(2)
    c.step(append("a", "b", 3, prev=2, prev_term=2, entries=[entry(3, 3)]), 0.1)
    rd = drain(c)
    assert terms_of(c) == [1, 2, 3]
    assert c.log.entry(2) is kept
    assert rd.delete_range == (3, 4)
    assert rd.entries == [entry(3, 3)]
    ack = only(sent(rd, AppendEntriesResponse, dst="a"))
    assert (ack.success, ack.match_index) == (True, 3)


def test_follower_keeps_later_entries_when_an_old_append_is_redelivered() -> None:
    """§5.3/Figure 2: only a *conflicting* entry is deleted; a delayed
    AppendEntries whose entries are already present must not truncate what
    follows them (messages may be reordered)."""
    c = core("b", term=2, terms=(1, 2, 2, 2))
    c.step(append("a", "b", 2, prev=1, prev_term=1, entries=[entry(2, 2)]), 0.1)
    rd = drain(c)
    assert terms_of(c) == [1, 2, 2, 2]
    assert rd.delete_range is None and rd.entries == []
    ack = only(sent(rd, AppendEntriesResponse, dst="a"))
    assert (ack.success, ack.match_index) == (True, 2)


def test_follower_never_truncates_a_committed_entry() -> None:
    """§5.3/§5.4 (Leader Completeness): a committed entry is never removed.
    A message that would truncate one (impossible from a correct leader) is
    refused: the log, commit index and durable state stay as they were."""
    c = core("b", term=2, terms=(1, 2, 2))
    c.step(append("a", "b", 2, prev=3, prev_term=2, commit=3), 0.1)
    assert c.commit_index == 3
    drain(c)
    c.step(append("x", "b", 3, prev=1, prev_term=1, entries=[entry(2, 3)], commit=3), 0.2)
    rd = drain(c)
    assert terms_of(c) == [1, 2, 2]
    assert c.commit_index == 3
    assert rd.delete_range is None and rd.entries == [] and rd.committed == []
    assert not any(m.success for m in sent(rd, AppendEntriesResponse))


@pytest.mark.parametrize(("prev", "new", "leader_commit", "expected"), [
    (1, [entry(2, 1)], 3, 2),  # entry 3 is not vouched for by this message
    (3, [], 5, 3),
    (1, [entry(2, 1), entry(3, 1)], 2, 2),
    (3, [entry(4, 2)], 4, 4),
    (3, [entry(4, 2)], 10, 4),
    (2, [], 1, 1),
])
def test_follower_commit_is_min_of_leader_commit_and_last_new_entry(
        prev: int, new: list[Log], leader_commit: int, expected: int) -> None:
    """Figure 2 (AppendEntries receiver, 5): "If leaderCommit > commitIndex,
    set commitIndex = min(leaderCommit, index of last new entry)". The newly
    committed entries are handed to the applier in the Ready."""
    c = core("b", terms=(1, 1, 1))
    prev_term = c.log.term(prev)
    assert prev_term is not None
    c.step(append("a", "b", 2, prev=prev, prev_term=prev_term, entries=new,
                  commit=leader_commit), 0.1)
    rd = drain(c)
    assert c.commit_index == expected
    assert [e.index for e in rd.committed] == list(range(1, expected + 1))


def test_follower_commit_index_never_moves_backwards() -> None:
    """§5.3: commitIndex increases monotonically; a delayed message with an
    older leaderCommit does not lower it."""
    c = core("b", terms=(1, 1, 1))
    c.step(append("a", "b", 2, prev=3, prev_term=1, commit=3), 0.1)
    c.step(append("a", "b", 2, prev=1, prev_term=1, commit=1), 0.2)
    c.step(heartbeat("a", "b", 2, commit=0), 0.3)
    assert c.commit_index == 3


def test_leader_backs_off_next_index_straight_to_the_follower_hint() -> None:
    """§5.3: after a rejection "the leader decrements nextIndex and retries";
    with the follower's hint it jumps to the follower's last index in one
    round trip instead of one entry at a time."""
    long = (1,) * 8
    net = custom_network({"a": (1, long), "b": (1, long), "c": (1, (1,))})
    net.cores["a"].campaign(net.now)
    net.deliver_all()
    assert net.cores["a"].role is Role.LEADER
    to_c = messages_since(net, 0, AppendEntries, src="a", dst="c")
    assert [m.prev_log_index for m in to_c] == [8, 1]
    rejections = [m for m in messages_since(net, 0, AppendEntriesResponse, src="c")
                  if not m.success]
    assert len(rejections) == 1
    assert log_of(net.cores["c"]) == log_of(net.cores["a"])


# Figure 7: the leader of term 8 and followers (a)-(f). Index 1 is the
# configuration entry (term 1) in every log.
FIGURE7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)
FIGURE7 = {
    "a": (1, 1, 1, 4, 4, 5, 5, 6, 6),
    "b": (1, 1, 1, 4),
    "c": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
    "d": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
    "e": (1, 1, 1, 4, 4, 4, 4),
    "f": (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
}
# Rejections the leader should need, thanks to the hints: missing entries
# cost one round, each conflicting term at most one more.
FIGURE7_MAX_REJECTIONS = {"a": 1, "b": 1, "c": 0, "d": 0, "e": 2, "f": 2}


@pytest.mark.parametrize("situation", sorted(FIGURE7))
def test_figure7_follower_log_is_made_identical_to_the_leaders(situation: str) -> None:
    """§5.3, Figure 7: "When the leader at the top comes to power, it is
    possible that any of scenarios (a-f) could occur in follower logs ... a
    follower may be missing entries (a-b), may have extra uncommitted entries
    (c-d), or both (e-f)." The leader forces the follower's log to duplicate
    its own: missing entries are sent, extra and conflicting ones deleted.
    A second follower "p" holds the leader's log so the leader can win."""
    follower = FIGURE7[situation]
    net = custom_network({"L": (7, FIGURE7_LEADER), "p": (7, FIGURE7_LEADER),
                          "f": (max(follower), follower)})
    net.cores["L"].campaign(net.now)
    net.deliver_all()
    lead = net.cores["L"]
    assert (lead.role, lead.term) == (Role.LEADER, 8)
    assert terms_of(lead) == [*FIGURE7_LEADER, 8]
    assert log_of(net.cores["f"]) == log_of(lead)
    rejections = [m for m in messages_since(net, 0, AppendEntriesResponse, src="f")
                  if not m.success]
    assert len(rejections) <= FIGURE7_MAX_REJECTIONS[situation]
    settle(net)
    assert net.cores["f"].commit_index == lead.commit_index == 11
    assert [e.index for e in net.applied["f"]] == list(range(1, 12))
    assert net.applied["f"] == lead.log.slice(1, 11)


def test_figure7_all_six_followers_converge_on_the_leaders_log() -> None:
    """§5.3, Figure 7 as drawn: a seven-server cluster with followers
    (a)-(f). The leader is elected by (a), (b), (e), (f), whose logs are no
    more up-to-date than its own ((c) and (d) refuse, §5.4.1), then brings
    every log, including (c) and (d), to equal its own and commits."""
    logs: dict[str, tuple[int, Sequence[int]]] = {"L": (7, FIGURE7_LEADER)}
    logs.update({k: (max(v), v) for k, v in FIGURE7.items()})
    net = custom_network(logs)
    net.cores["L"].campaign(net.now)
    net.deliver_all()
    lead = net.cores["L"]
    assert (lead.role, lead.term) == (Role.LEADER, 8)
    votes = messages_since(net, 0, RequestVoteResponse, dst="L")
    granted = sorted({m.src for m in votes if m.granted and not m.prevote})
    assert granted == ["a", "b", "e", "f"]
    for id in FIGURE7:
        assert log_of(net.cores[id]) == log_of(lead), id
    settle(net)
    assert all(c.commit_index == 11 for c in net.cores.values())


# ----------------------------------------------------------------------
# §5.4.1 Election restriction


@pytest.mark.parametrize("prevote", [False, True])
@pytest.mark.parametrize(("last_term", "last_index", "granted"), [
    (1, 5, False),  # lower last term, though longer
    (1, 3, False),
    (2, 2, False),  # same last term, shorter
    (2, 3, True),  # identical
    (2, 4, True),  # same last term, longer
    (3, 1, True),  # higher last term, though shorter
])
def test_vote_refused_to_a_candidate_whose_log_is_less_up_to_date(
        prevote: bool, last_term: int, last_index: int, granted: bool) -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date
    than that of the candidate ... If the logs have last entries with
    different terms, then the log with the later term is more up-to-date. If
    the logs end with the same term, then whichever log is longer is more
    up-to-date." The same restriction applies to pre-votes (§9.6)."""
    c = core("b", term=2, terms=(1, 1, 2))
    c.step(vote_request("a", "b", 3, last_index, last_term, prevote=prevote), 0.1)
    rd = drain(c)
    answer = only(sent(rd, RequestVoteResponse, dst="a"))
    assert answer.granted is granted
    assert answer.prevote is prevote
    if not prevote:
        assert c.voted_for == ("a" if granted else None)


# ----------------------------------------------------------------------
# §5.4.2 Committing entries from previous terms (Figure 8)


def test_leader_does_not_commit_a_previous_term_entry_by_counting_replicas() -> None:
    """§5.4.2: "Raft never commits log entries from previous terms by
    counting replicas. Only log entries from the leader's current term are
    committed by counting replicas; once an entry from the current term has
    been committed in this way, then all prior entries are committed
    indirectly." Figure 8(c): S1, leader of term 4, has (2, term 2) on a
    majority; it stays uncommitted until S1's own entry 3 reaches a majority."""
    ids = ("s1", "s2", "s3", "s4", "s5")
    c = leader("s1", ids, term=3, terms=(1, 2))
    assert c.term == 4
    drain(c)  # persists the no-op (3, term 4)
    for peer in ("s2", "s3", "s4"):
        c.step(append_ok(peer, "s1", 4, match=2), 0.1)
    assert c.commit_index == 0
    assert drain(c).committed == []
    c.step(append_ok("s2", "s1", 4, match=3), 0.2)
    assert c.commit_index == 0  # s1 and s2 hold entry 3: not a majority
    c.step(append_ok("s3", "s1", 4, match=3), 0.3)
    assert c.commit_index == 3
    rd = drain(c)
    assert [(e.index, e.term) for e in rd.committed] == [(1, 1), (2, 2), (3, 4)]


def test_figure8_previous_term_entry_on_a_majority_can_still_be_overwritten() -> None:
    """§5.4.2, Figure 8 (c)-(d): why the rule above matters. S1 (term 4)
    gets (2, term 2) onto S1, S2, S3 — a majority — but its own entry 3 is
    lost. S1 fails; S5, whose last entry is (2, term 3), wins term 5 with
    votes from S2, S3, S4 and overwrites index 2 everywhere. Had S1 counted
    replicas, index 2 would have been "committed" and then lost."""
    ids = ("s1", "s2", "s3", "s4", "s5")
    opts = dataclasses.replace(OPTIONS, max_append_entries=1)
    net = custom_network({"s1": (3, (1, 2)), "s2": (3, (1,)), "s3": (3, (1,)),
                          "s4": (3, (1,)), "s5": (3, (1, 3))}, options=opts)
    # (c): S1 reaches only S2 and S3, and every copy of its term-4 entry to a
    # server that could store it is lost.
    for far in ("s4", "s5"):
        net.cut |= {("s1", far), (far, "s1")}
    net.drop = lambda m: (isinstance(m, AppendEntries) and any(e.term == 4 for e in m.entries)
                          and net.cores[m.dst].log.last_index >= 2)
    s1 = net.cores["s1"]
    s1.campaign(net.now)
    net.deliver_all()
    net.run(0.5)
    assert (s1.role, s1.term) == (Role.LEADER, 4)
    assert terms_of(s1) == [1, 2, 4]
    assert terms_of(net.cores["s2"]) == terms_of(net.cores["s3"]) == [1, 2]
    assert s1.progress["s2"].match_index == s1.progress["s3"].match_index == 2
    assert s1.commit_index == 0, "(2, term 2) is on a majority but must not commit"
    assert all(net.applied[i] == [] for i in ids)
    # (d): S1 crashes; S5 learns term 4, then wins term 5.
    net.drop = None
    net.heal()
    net.isolate("s1")
    net.now += 2 * E  # everyone's last word from S1 is old now
    net.cores["s5"].campaign(net.now)
    net.deliver_all()
    assert net.cores["s5"].term == 4 and net.cores["s5"].role is Role.FOLLOWER
    net.elect("s5")
    assert net.cores["s5"].term == 5
    settle(net)
    for id in ("s2", "s3", "s4", "s5"):
        assert terms_of(net.cores[id]) == [1, 3, 5], id
        assert [(e.index, e.term) for e in net.applied[id]] == [(1, 1), (2, 3), (3, 5)]
    net.heal()
    net.run(1.0)
    assert net.leader() is net.cores["s5"]
    assert terms_of(s1) == [1, 3, 5]
    for id in ids:
        assert (2, 2) not in [(e.index, e.term) for e in net.applied[id]]


# ----------------------------------------------------------------------
# §5.4 Safety: Leader Completeness


def test_only_a_server_holding_every_committed_entry_can_become_leader() -> None:
    """§5.4 Leader Completeness: "If a log entry is committed in a given term,
    then that entry will be present in the logs of the leaders for all higher-
    numbered terms." C missed a committed entry; with the leader gone, C
    cannot win (B refuses it, §5.4.1), B can, and B's log has the entry,
    which then reaches C."""
    net = CoreNetwork(ABC)
    net.elect("a")
    settle(net)
    net.isolate("c")
    committed = net.propose("a", b"x")[0]
    net.deliver_all()
    settle(net)
    assert net.cores["a"].commit_index == committed.index
    net.heal()
    net.isolate("a")
    net.now += 2 * E
    c = net.cores["c"]
    c.campaign(net.now)
    net.deliver_all()
    assert c.role is not Role.LEADER and net.leaders() == ["a"]  # a is cut off, not deposed
    net.elect("b")
    b = net.cores["b"]
    assert b.log.entry(committed.index) == committed
    settle(net)
    assert c.log.entry(committed.index) == committed
    assert net.commands("c") == [b"x"]


# ----------------------------------------------------------------------
# Thesis §9.6: pre-vote


def test_partitioned_server_prevotes_without_raising_its_term() -> None:
    """Thesis §9.6: "a candidate would first ask other servers whether its
    log was up-to-date enough to get their vote. Only if the candidate
    believed it could get votes from a majority of the cluster would it
    increment its term and start a normal election." Cut off, it asks again
    and again, but its term (and durable state) never change."""
    net = CoreNetwork(ABC)
    net.elect("a")
    settle(net)
    net.isolate("c")
    c = net.cores["c"]
    assert (c.term, c.voted_for) == (2, "a")
    mark = len(net.sent)
    net.run(8.0)
    asked = messages_since(net, mark, RequestVote, src="c")
    assert len(asked) >= 4  # it did keep trying
    assert all(m.prevote for m in asked)
    assert (c.term, c.voted_for) == (2, "a")
    assert net.leaders() == ["a"] and net.cores["a"].term == 2


def test_rejoining_server_does_not_disrupt_the_leader() -> None:
    """Thesis §9.6: pre-vote exists so that a server rejoining after a
    partition does not force the leader to step down. When the partition
    heals, the leader keeps its term and its leadership, and the rejoined
    server follows it and catches up."""
    net = CoreNetwork(ABC)
    net.elect("a")
    settle(net)
    net.isolate("c")
    net.run(5.0)
    net.propose("a", b"while-away")
    net.deliver_all()
    net.heal()
    net.run(3.0)
    assert net.leaders() == ["a"] and net.cores["a"].term == 2
    c = net.cores["c"]
    assert (c.role, c.term, c.leader_id) == (Role.FOLLOWER, 2, "a")
    assert net.commands("c") == [b"while-away"]


def test_without_prevote_a_rejoining_server_deposes_the_leader() -> None:
    """Thesis §9.6 (the problem pre-vote solves): without it, the isolated
    server's term races ahead; on rejoining, the leader sees that term and
    steps down although nothing was wrong."""
    net = CoreNetwork(ABC, options=NOPREVOTE)
    net.elect("a")
    settle(net)
    net.isolate("c")
    net.run(5.0)
    assert net.cores["c"].term > 3
    net.heal()
    net.run(3.0)
    assert net.leader().term > 2


def test_prevote_grant_changes_neither_the_voters_term_nor_its_vote() -> None:
    """Thesis §9.6: a pre-vote is a question, not an election: granting it
    does not increment the voter's term or record a vote (no hard state in
    the Ready). The answer carries the term the candidate would use."""
    c = core("b", term=2, voted_for="c")
    c.step(vote_request("a", "b", 3, prevote=True), 0.1)
    rd = drain(c)
    answer = only(sent(rd, RequestVoteResponse, dst="a"))
    assert (answer.granted, answer.prevote, answer.term) == (True, True, 3)
    assert rd.hard_state is None
    assert (c.term, c.voted_for) == (2, "c")
    # And a real vote in term 3 is still free to give:
    c.step(vote_request("a", "b", 3), 0.2)
    assert only(sent(drain(c), RequestVoteResponse)).granted


def test_prevote_for_the_current_term_is_refused() -> None:
    """Thesis §9.6: a pre-vote for term t asks "would you vote for me in
    t?"; a server already in term t is past that (t is the pre-candidate's
    term + 1, so the pre-candidate is behind)."""
    c = core("b", term=3)
    c.step(vote_request("a", "b", 3, prevote=True), 0.1)
    answer = only(sent(drain(c), RequestVoteResponse))
    assert not answer.granted and answer.term == 3


def test_prevote_refused_by_a_majority_leaves_the_precandidate_a_follower() -> None:
    """Thesis §9.6: a pre-candidate that cannot win does not start a real
    election: no term change, back to follower."""
    c = core("a")
    c.campaign(0.0)
    drain(c)
    c.step(vote_response("b", "a", 1, granted=False, prevote=True), 0.1)
    c.step(vote_response("c", "a", 1, granted=False, prevote=True), 0.1)
    assert (c.role, c.term, c.voted_for) == (Role.FOLLOWER, 1, None)
    rd = drain(c)
    assert rd.hard_state is None and sent(rd, RequestVote) == []


# ----------------------------------------------------------------------
# Leader stickiness (thesis §4.2.3) and leadership transfer (thesis §3.10)


def test_follower_hearing_from_its_leader_refuses_a_higher_term_vote_and_keeps_its_term() -> None:
    """Thesis §4.2.3: "if a server receives a RequestVote request within the
    minimum election timeout of hearing from a current leader, it does not
    update its term or grant its vote" (hashicorp: a server with a known
    leader rejects vote requests)."""
    c = core("b")
    c.step(heartbeat("a", "b", 2), 1.0)
    drain(c)
    c.step(vote_request("c", "b", 7, last_index=5, last_term=2), 1.0 + 0.5 * E)
    rd = drain(c)
    answer = only(sent(rd, RequestVoteResponse, dst="c"))
    assert not answer.granted and answer.term == 2
    assert rd.hard_state is None
    assert (c.term, c.voted_for, c.leader_id) == (2, None, "a")


def test_follower_votes_again_once_the_leader_is_silent_for_an_election_timeout() -> None:
    """Thesis §4.2.3: stickiness lasts only the election timeout; after that
    the follower believes the leader may be gone and votes normally."""
    c = core("b")
    c.step(heartbeat("a", "b", 2), 1.0)
    drain(c)
    c.step(vote_request("c", "b", 3, last_index=5, last_term=2), 1.0 + E + 0.01)
    rd = drain(c)
    assert only(sent(rd, RequestVoteResponse, dst="c")).granted
    assert rd.hard_state == HardState(3, "c")


def test_leader_refuses_vote_requests_while_it_leads() -> None:
    """Thesis §4.2.3 (hashicorp ``requestVote``): a live leader does not
    step down for a disruptive candidate."""
    c = leader("a")
    drain(c)
    c.step(vote_request("c", "a", 9, last_index=9, last_term=2), 0.1)
    rd = drain(c)
    assert not only(sent(rd, RequestVoteResponse)).granted
    assert (c.role, c.term) == (Role.LEADER, 2)


def test_timeout_now_election_bypasses_stickiness() -> None:
    """Thesis §3.10: for leadership transfer the leader sends TimeoutNow; the
    target starts an election at once (no pre-vote) and its RequestVotes are
    marked so that followers, and the old leader, grant them despite having
    just heard from the leader."""
    net = CoreNetwork(ABC)
    net.elect("a")
    settle(net)
    mark = len(net.sent)
    b = net.cores["b"]
    b.step(TimeoutNow(term=2, src="a", src_address="a", dst="b"), net.now)
    assert (b.role, b.term) == (Role.CANDIDATE, 3)
    net.deliver_all()
    asks = messages_since(net, mark, RequestVote, src="b")
    assert asks and all(m.leadership_transfer and not m.prevote for m in asks)
    assert net.leaders() == ["b"]
    assert all(c.term == 3 for c in net.cores.values())


def test_campaign_with_transfer_wins_where_an_ordinary_campaign_is_refused() -> None:
    """Thesis §4.2.3 vs §3.10: with a live leader an ordinary (pre-vote)
    campaign is refused and changes no term; ``campaign(transfer=True)``,
    what TimeoutNow does, wins."""
    net = CoreNetwork(ABC)
    net.elect("a")
    settle(net)
    c = net.cores["c"]
    c.campaign(net.now)
    net.deliver_all()
    assert net.leaders() == ["a"] and c.term == 2
    c.campaign(net.now, transfer=True)
    net.deliver_all()
    assert net.leaders() == ["c"] and c.term == 3


def test_campaign_on_a_leader_is_ignored() -> None:
    """etcd ``hup``: "ignoring MsgHup because already leader". A leader
    asked to campaign (even as a transfer) keeps its term and leadership:
    silently becoming a candidate would leave its leader timers and pending
    reads behind, never to fire or be answered."""
    c = leader("a")
    drain(c)
    c.step(append_ok("b", "a", 2, match=2), 0.1)
    drain(c)
    c.read_index(7, 0.1)
    rd = drain(c)
    seq = only(sent(rd, Heartbeat, dst="b")).seq
    c.campaign(0.2)
    c.campaign(0.2, transfer=True)
    assert (c.role, c.term, c.voted_for) == (Role.LEADER, 2, "a")
    rd = drain(c)
    assert rd.hard_state is None and sent(rd, RequestVote) == []
    c.step(heartbeat_ok("b", "a", 2, seq=seq), 0.3)
    assert drain(c).completions == [Completion(7, index=2)]
    c.tick(1.0)
    deadline = c.next_deadline()
    assert deadline is not None and deadline > 1.0


# ----------------------------------------------------------------------
# Leader lease (thesis §6.2, hashicorp checkLeaderLease)


def test_leader_cut_off_from_a_quorum_steps_down_after_the_lease() -> None:
    """Thesis §6.2: a leader steps down when an election timeout passes
    without a successful round of heartbeats to a majority of its cluster
    (hashicorp: LeaderLeaseTimeout). Not before the lease runs out."""
    net = CoreNetwork(ABC)
    net.elect("a")
    settle(net)
    a = net.cores["a"]
    net.isolate("a")
    lease = OPTIONS.leader_lease_timeout
    net.run(0.7 * lease)
    assert a.role is Role.LEADER
    net.run(0.6 * lease)
    assert (a.role, a.term, a.leader_id) == (Role.FOLLOWER, 2, None)


def test_leader_in_the_majority_partition_keeps_leadership() -> None:
    """Thesis §6.2: a leader that keeps hearing from a majority keeps its
    lease, however long a minority stays silent."""
    net = CoreNetwork("abcde")
    net.elect("a")
    net.partition({"a", "b", "c"}, {"d", "e"})
    net.run(4.0)
    assert net.leaders() == ["a"] and net.cores["a"].term == 2


def test_single_server_leader_keeps_its_lease() -> None:
    """hashicorp checkLeaderLease: a single voter is its own quorum; with no
    peers to hear from it never steps down."""
    net = CoreNetwork(["a"])
    net.elect("a")
    net.run(5 * OPTIONS.leader_lease_timeout)
    assert net.leaders() == ["a"] and net.cores["a"].term == 2


def test_leader_lease_needs_recent_contact_with_a_quorum() -> None:
    """hashicorp checkLeaderLease: the lease is held by contact with a
    quorum *within* the lease. A 5-server leader that hears only from b and
    c keeps it; once c falls silent too, c's last answer ages out and the
    leader steps down, although b is still answering."""
    net = CoreNetwork("abcde")
    net.elect("a")
    settle(net)
    net.partition({"a", "b", "c"}, {"d", "e"})
    net.run(1.0)
    a = net.cores["a"]
    assert a.role is Role.LEADER
    net.isolate("c")
    lease = OPTIONS.leader_lease_timeout
    net.run(0.7 * lease)
    assert a.role is Role.LEADER
    net.run(0.6 * lease)
    assert (a.role, a.term) == (Role.FOLLOWER, 2)


# ----------------------------------------------------------------------
# Replication pacing: pipelining and batching (thesis §10.2.2, etcd progress)


def _synced_leader(options: CoreOptions) -> RaftCore:
    """A 3-server leader whose follower b has acknowledged the no-op (so b is
    in sync, REPLICATE) while c has not answered its first probe."""
    c = leader("a", options=options)
    drain(c)
    c.step(append_ok("b", "a", 2, match=2), 0.1)
    drain(c)
    assert c.progress["b"].state is ProgressState.REPLICATE
    assert c.progress["c"].state is ProgressState.PROBE
    return c


def test_leader_pipelines_appends_to_a_follower_in_sync() -> None:
    """Thesis §10.2.2 (pipelining): the leader sends the next AppendEntries
    without waiting for the previous one to be acknowledged — to a follower
    known to be in sync. Each proposal goes out at once, several messages in
    flight, no ack awaited."""
    c = _synced_leader(dataclasses.replace(OPTIONS, max_append_entries=1))
    c.propose([(LogType.COMMAND, b"%d" % i, b"") for i in range(5)])
    rd = drain(c)
    to_b = sent(rd, AppendEntries, dst="b")
    assert [m.prev_log_index for m in to_b] == [2, 3, 4, 5, 6]
    assert all(len(m.entries) == 1 for m in to_b)
    for i in range(2):
        c.propose([(LogType.COMMAND, b"more%d" % i, b"")])
        assert [m.prev_log_index for m in sent(drain(c), AppendEntries, dst="b")] == [7 + i]
    assert list(c.progress["b"].inflight) == [3, 4, 5, 6, 7, 8, 9]


def test_pipeline_is_bounded_by_max_inflight() -> None:
    """etcd flow control (Progress inflights): at most MAX_INFLIGHT appends
    unacknowledged; each ack frees room for exactly as many more."""
    c = _synced_leader(dataclasses.replace(OPTIONS, max_append_entries=1))
    c.propose([(LogType.COMMAND, b"%d" % i, b"") for i in range(MAX_INFLIGHT + 10)])
    rd = drain(c)
    to_b = sent(rd, AppendEntries, dst="b")
    assert len(to_b) == MAX_INFLIGHT
    assert c.progress["b"].paused
    c.propose([(LogType.COMMAND, b"x", b"")])
    assert sent(drain(c), AppendEntries, dst="b") == []
    c.step(append_ok("b", "a", 2, match=2 + 3), 0.2)  # three acknowledged
    more = sent(drain(c), AppendEntries, dst="b")
    assert [m.prev_log_index for m in more] == [2 + MAX_INFLIGHT + k for k in range(3)]


def test_probing_follower_gets_one_append_at_a_time() -> None:
    """etcd Progress PROBE (§5.3's back-off): while the leader does not know
    where a follower's log matches, it sends one append and waits for the
    answer rather than flooding the follower with messages it may reject."""
    c = _synced_leader(OPTIONS)
    for i in range(3):
        c.propose([(LogType.COMMAND, b"%d" % i, b"")])
        assert sent(drain(c), AppendEntries, dst="c") == []
    c.step(append_ok("c", "a", 2, match=2), 0.2)
    catch_up = only(sent(drain(c), AppendEntries, dst="c"))
    assert catch_up.prev_log_index == 2
    assert [e.index for e in catch_up.entries] == [3, 4, 5]


def test_max_append_entries_limits_entries_per_message() -> None:
    """hashicorp MaxAppendEntries: no AppendEntries carries more than the
    configured number of entries; larger backlogs go in several messages."""
    opts = dataclasses.replace(OPTIONS, max_append_entries=3)
    net = CoreNetwork(ABC, options=opts)
    net.elect("a")
    mark = len(net.sent)
    net.propose("a", *[b"%d" % i for i in range(10)])
    net.deliver_all()
    settle(net)
    appends = messages_since(net, mark, AppendEntries, src="a")
    assert appends and all(len(m.entries) <= 3 for m in appends)
    assert any(len(m.entries) == 3 for m in appends)
    assert net.commands("b") == net.commands("c") == [b"%d" % i for i in range(10)]


# ----------------------------------------------------------------------
# Heartbeats


def test_heartbeat_carries_commit_capped_at_the_followers_match() -> None:
    """etcd ``sendHeartbeat``: a heartbeat carries min(match, commit), so a
    follower can adopt it without a log check (it may hold a different,
    uncommitted entry at a higher index)."""
    net = CoreNetwork(ABC)
    net.elect("a")
    settle(net)
    net.isolate("c")
    net.propose("a", b"x")
    net.deliver_all()
    a = net.cores["a"]
    assert a.commit_index == 3 and a.progress["c"].match_index == 2
    mark = len(net.sent)
    net.tick(HB + 0.001)
    beats = messages_since(net, mark, Heartbeat, src="a")
    assert {m.dst: m.leader_commit for m in beats} == {"b": 3, "c": 2}


def test_leader_heartbeats_every_interval() -> None:
    """§5.2: leaders "send periodic heartbeats ... to all followers in order
    to maintain their authority" (hashicorp: every HeartbeatTimeout/10)."""
    net = CoreNetwork(ABC)
    net.elect("a")
    mark = len(net.sent)
    net.run(10 * HB)
    beats = messages_since(net, mark, Heartbeat, src="a", dst="b")
    assert 9 <= len(beats) <= 11


# ----------------------------------------------------------------------
# Linearizable reads: read_index / verify_leader (thesis §6.4)


@pytest.mark.parametrize("call", ["read_index", "verify_leader"])
def test_single_server_read_completes_at_once(call: str) -> None:
    """Thesis §6.4: the leader must confirm it is still leader with a
    majority; alone, it is its own majority, so the answer is immediate."""
    net = CoreNetwork(["a"])
    net.elect("a")
    a = net.cores["a"]
    getattr(a, call)(1, net.now)
    net.process_all()
    assert net.completions["a"] == [Completion(1, index=a.commit_index)]
    assert a.commit_index == 2


@pytest.mark.parametrize("call", ["read_index", "verify_leader"])
def test_read_completes_after_a_quorum_of_heartbeat_acks(call: str) -> None:
    """Thesis §6.4 step 3: the leader confirms it has not been superseded
    by a new round of heartbeats acknowledged by a majority; only acks to a
    heartbeat sent after the request count."""
    c = leader("a")
    drain(c)
    c.step(append_ok("b", "a", 2, match=2), 0.1)
    drain(c)
    c.tick(0.1 + HB)
    old = only(sent(drain(c), Heartbeat, dst="b")).seq
    getattr(c, call)(7, 0.2)
    rd = drain(c)
    assert rd.completions == []
    seq = only(sent(rd, Heartbeat, dst="b")).seq
    assert seq > old
    c.step(heartbeat_ok("b", "a", 2, seq=old), 0.2)
    assert drain(c).completions == []
    c.step(heartbeat_ok("b", "a", 2, seq=seq), 0.3)
    assert drain(c).completions == [Completion(7, index=2)]


@pytest.mark.parametrize("call", ["read_index", "verify_leader"])
def test_pending_read_fails_with_leadership_lost_when_the_leader_steps_down(call: str) -> None:
    """Thesis §6.4: a read can only be answered by a confirmed leader; if it
    is deposed first the read fails (hashicorp ErrLeadershipLost)."""
    c = leader("a")
    drain(c)
    c.step(append_ok("b", "a", 2, match=2), 0.1)
    drain(c)
    getattr(c, call)(7, 0.2)
    assert drain(c).completions == []
    c.step(heartbeat("b", "a", 3), 0.3)
    rd = drain(c)
    assert rd.completions == [Completion(7, failure=Failure.LEADERSHIP_LOST)]


def test_read_on_a_new_leader_waits_for_its_noop_to_commit() -> None:
    """Thesis §6.4 step 1: a leader that has not yet committed an entry of
    its current term waits until it has — before that it does not know the
    commit index. Heartbeat acks alone do not answer."""
    c = leader("a")
    drain(c)
    c.read_index(7, 0.05)
    drain(c)
    c.tick(0.05 + HB)
    rd = drain(c)
    for peer in ("b", "c"):
        c.step(heartbeat_ok(peer, "a", 2, seq=only(sent(rd, Heartbeat, dst=peer)).seq), 0.2)
    assert drain(c).completions == []
    assert c.commit_index == 0
    c.step(append_ok("b", "a", 2, match=2), 0.3)  # the no-op commits
    assert c.commit_index == 2
    rd = drain(c)
    assert rd.completions == []
    seq = only(sent(rd, Heartbeat, dst="b")).seq
    c.step(heartbeat_ok("b", "a", 2, seq=seq), 0.4)
    assert drain(c).completions == [Completion(7, index=2)]


def test_follower_read_index_is_answered_with_the_leaders_commit_index() -> None:
    """Thesis §6.4 (followers can offload reads): the follower asks the
    leader for its read index; the leader confirms leadership and answers
    with its commit index, at least all the follower must apply first."""
    net = CoreNetwork(ABC)
    net.elect("a")
    net.propose("a", b"x")
    net.deliver_all()
    a, b = net.cores["a"], net.cores["b"]
    assert a.commit_index == 3
    mark = len(net.sent)
    b.read_index(5, net.now)
    net.deliver_all()
    assert only(messages_since(net, mark, ReadIndexRequest)).dst == "a"
    assert only(messages_since(net, mark, ReadIndexResponse)).success
    assert net.completions["b"] == [Completion(5, index=a.commit_index)]


def test_follower_read_index_fails_when_the_leader_never_answers() -> None:
    """Thesis §6.4: a forwarded read whose leader is unreachable fails (with
    NOT_LEADER, naming the leader it knew) rather than waiting forever."""
    net = CoreNetwork(ABC)
    net.elect("a")
    settle(net)
    net.cut |= {("b", "a")}
    net.cores["b"].read_index(5, net.now)
    net.run(0.5 * E)
    assert net.completions["b"] == []
    net.run(0.6 * E)
    assert net.completions["b"] == [Completion(5, failure=Failure.NOT_LEADER, leader_id="a",
                                               leader_address="a")]


@pytest.mark.parametrize("call", ["read_index", "verify_leader"])
def test_follower_with_no_leader_fails_reads_at_once(call: str) -> None:
    """Thesis §6.4 / hashicorp ErrNotLeader: with no leader known there is
    nobody to ask; the answer is NOT_LEADER in the very next Ready."""
    c = core("b")
    getattr(c, call)(3, 0.1)
    rd = drain(c)
    assert rd.completions == [Completion(3, failure=Failure.NOT_LEADER)]
    assert rd.messages == []


def test_propose_on_a_follower_names_the_leader() -> None:
    """§8: "If the client's first choice is not the leader, that server will
    reject the client's request and supply information about the most
    recent leader it has heard from." """
    c = core("b")
    c.step(heartbeat("a", "b", 2), 0.1)
    with pytest.raises(NotLeaderError) as info:
        c.propose([(LogType.COMMAND, b"x", b"")])
    assert (info.value.leader_id, info.value.leader_address) == ("a", "a")


# ----------------------------------------------------------------------
# Bootstrap (hashicorp BootstrapCluster) and non-voters


@pytest.mark.parametrize("state", ["term", "log", "snapshot", "bootstrapped"])
def test_bootstrap_refuses_a_server_with_existing_state(state: str) -> None:
    """hashicorp BootstrapCluster: ErrCantBootstrap unless the server has no
    term, no log and no snapshot; bootstrapping twice is refused too."""
    if state == "term":
        c = new_core("a", term=3)
    elif state == "log":
        c = core("a", term=0)
    elif state == "snapshot":
        c = new_core("a", snapshot_index=5, snapshot_term=2,
                     snapshot_configuration=configuration(ABC), snapshot_configuration_index=1)
    else:
        c = new_core("a")
        c.bootstrap(configuration(ABC))
        drain(c)
    before = (c.term, c.log.last_index, c.has_ready())
    with pytest.raises(CantBootstrapError):
        c.bootstrap(configuration(ABC))
    assert (c.term, c.log.last_index, c.has_ready()) == before


def test_bootstrap_persists_term_one_and_the_configuration_entry() -> None:
    """hashicorp BootstrapCluster: the first configuration is written as
    entry 1 of term 1 (with the term in the stable store)."""
    c = new_core("a")
    c.bootstrap(configuration(ABC))
    rd = drain(c)
    assert rd.hard_state == HardState(1, None)
    assert rd.entries == [config_entry(ABC)]
    assert rd.messages == []
    assert c.configuration == configuration(ABC)


def test_bootstrap_rejects_an_invalid_configuration() -> None:
    """hashicorp checkConfiguration: at least one voter, unique ids."""
    c = new_core("a")
    with pytest.raises(ValueError):
        c.bootstrap(Configuration((Server("a", "a", Suffrage.NONVOTER),)))
    with pytest.raises(ValueError):
        c.bootstrap(Configuration((Server("a", "x"), Server("a", "y"))))
    assert not c.has_ready() and c.term == 0


def test_unbootstrapped_server_never_starts_an_election() -> None:
    """hashicorp: a server with no configuration does not campaign, however
    long it waits (it waits to be bootstrapped or added). It has no timer."""
    c = new_core("a")
    assert c.next_deadline() is None
    for k in range(1, 200):
        c.tick(k * 50.0)
    c.campaign(10_000.0)
    assert (c.role, c.term) == (Role.FOLLOWER, 0)
    assert not c.has_ready()
    assert c.next_deadline() is None


def test_non_voter_never_campaigns() -> None:
    """Thesis §4.2.1 / hashicorp nonvoters: a non-voting member receives the
    log but never starts an election: no timer, and neither ``campaign``
    nor TimeoutNow makes it a candidate."""
    cfg = Configuration((Server("a", "a"), Server("b", "b"),
                         Server("c", "c", Suffrage.NONVOTER)))
    c = new_core("c", term=1, entries=[config_entry(cfg)])
    assert c.next_deadline() is None
    c.tick(1000.0)
    c.campaign(1000.0)
    c.campaign(1000.0, transfer=True)
    c.step(TimeoutNow(term=1, src="a", src_address="a", dst="c"), 1000.0)
    assert (c.role, c.term) == (Role.FOLLOWER, 1)
    assert not c.has_ready()


def test_non_voter_follows_and_is_not_counted() -> None:
    """Thesis §4.2.1: non-voters are not counted for elections or
    commitment; the two voters elect a leader and commit between them, the
    non-voter still gets the log and never asks for a vote. A vote request
    from a non-voter is refused."""
    cfg = Configuration((Server("a", "a"), Server("b", "b"),
                         Server("c", "c", Suffrage.NONVOTER)))
    net = CoreNetwork(ABC, bootstrap=False)
    for id in ABC:
        net.cores[id] = new_core(id, term=1, entries=[config_entry(cfg)])
    net.run(5.0)
    assert len(net.leaders()) == 1 and net.leaders()[0] in ("a", "b")
    assert messages_since(net, 0, RequestVote, src="c") == []
    lead = net.leader()
    net.isolate("c")
    net.propose(lead.id, b"x")
    net.deliver_all()
    assert lead.commit_index == lead.log.last_index  # without c
    net.heal()
    settle(net)
    assert net.commands("c") == [b"x"]
    follower = net.cores["b" if lead.id == "a" else "a"]
    follower.step(vote_request("c", follower.id, 99, last_index=99, last_term=99,
                               transfer=True), net.now)
    rd = drain(follower)
    assert not only(sent(rd, RequestVoteResponse)).granted
    assert follower.term < 99


# ----------------------------------------------------------------------
# Figure 3: the safety properties, under loss, duplication, reordering,
# delay and partitions


class FaultyNetwork(CoreNetwork):
    """A CoreNetwork whose delivery drops, duplicates, delays and reorders
    messages (all allowed by the Ready contract), checking Figure 3's
    properties after every delivery round."""

    def __init__(self, ids: Iterable[str], *, seed: int, options: CoreOptions) -> None:
        self.faults = random.Random(f"faults-{seed}")
        self.p_drop = 0.1
        self.p_delay = 0.15
        self.p_duplicate = 0.05
        self.leader_of_term: dict[int, str] = {}
        super().__init__(ids, options=options, seed=seed)
        self.highest_commit = {i: 0 for i in self.ids}

    def deliver_all(self) -> int:
        count = 0
        self.process_all()
        for _ in range(50):  # delayed messages may stay in flight past this call
            if not self.in_flight:
                break
            batch, self.in_flight = self.in_flight, []
            self.faults.shuffle(batch)
            for env in batch:
                m = env.message
                if (m.src, m.dst) in self.cut:
                    continue
                x = self.faults.random()
                if x < self.p_drop:
                    continue
                if x < self.p_drop + self.p_delay:
                    self.in_flight.append(env)
                    continue
                self.cores[m.dst].step(m, self.now)
                self.process_all()
                if self.faults.random() < self.p_duplicate:
                    self.cores[m.dst].step(m, self.now)
                    self.process_all()
                count += 1
                self.check_election_safety()
            self.check_logs()
        return count

    def check_election_safety(self) -> None:
        """Election Safety: at most one leader can be elected in a given term."""
        for id, c in self.cores.items():
            if c.role is Role.LEADER:
                first = self.leader_of_term.setdefault(c.term, id)
                assert first == id, f"two leaders in term {c.term}: {first} and {id}"

    def check_logs(self) -> None:
        cores = list(self.cores.values())
        # Log Matching: same index and term => identical up to there.
        for x, a in enumerate(cores):
            for b in cores[x + 1:]:
                for i in range(min(a.log.last_index, b.log.last_index), 0, -1):
                    if a.log.term(i) == b.log.term(i):
                        assert a.log.slice(1, i) == b.log.slice(1, i), (a.id, b.id, i)
                        break
        # State Machine Safety: no two servers apply different entries at an index;
        # commit indexes never go back.
        applied: dict[int, Log] = {}
        for id, c in self.cores.items():
            assert c.commit_index >= self.highest_commit[id]
            self.highest_commit[id] = c.commit_index
            for k, e in enumerate(self.applied[id], start=1):
                assert e.index == k, f"{id} applied out of order"
                assert applied.setdefault(e.index, e) == e, (id, e, applied[e.index])
        # Leader Completeness: the leader of the highest term holds every
        # applied (hence committed) entry.
        leaders = [c for c in cores if c.role is Role.LEADER]
        if leaders:
            top = max(leaders, key=lambda c: c.term)
            for e in applied.values():
                assert top.log.term(e.index) == e.term, (top.id, top.term, e)


@pytest.mark.parametrize("prevote", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_safety_properties_hold_under_faults_and_the_cluster_recovers(seed: int,
                                                                       prevote: bool) -> None:
    """Figure 3 (§5.2-§5.4): Election Safety, Log Matching, Leader
    Completeness and State Machine Safety hold whatever the network does —
    here random loss, duplication, delay, reordering and partitions while
    clients propose — and once the network heals and behaves, one leader
    brings every server to the same log and commit index (§5.3)."""
    opts = dataclasses.replace(OPTIONS, prevote=prevote, max_append_entries=3)
    net = FaultyNetwork("abcde", seed=seed, options=opts)
    script = random.Random(f"script-{seed}")
    proposed = 0
    for _ in range(250):
        net.tick(script.choice([0.01, 0.05, 0.1, 0.3]))
        event = script.random()
        if event < 0.03:
            ids = list(net.ids)
            script.shuffle(ids)
            cut = script.randint(1, len(ids) - 1)
            net.heal()
            net.partition(ids[:cut], ids[cut:])
        elif event < 0.06:
            net.heal()
        elif event < 0.08:
            net.isolate(script.choice(net.ids))
        leaders = net.leaders()
        if leaders and script.random() < 0.5:
            proposed += 1
            net.propose(script.choice(leaders), b"cmd%d" % proposed)
        net.deliver_all()
    net.heal()
    net.p_drop = net.p_delay = net.p_duplicate = 0.0
    net.run(10.0, step=0.05)
    lead = net.leader()
    for c in net.cores.values():
        assert log_of(c) == log_of(lead), c.id
        assert c.commit_index == lead.commit_index == lead.log.last_index
        assert net.applied[c.id] == lead.log.slice(1, lead.log.last_index)
    assert len(set(net.leader_of_term)) >= 2  # the faults really did cost leaders
