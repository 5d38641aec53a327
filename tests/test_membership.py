"""Membership changes, leadership transfer and nonvoters on in-memory
clusters (mock clock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import traft
from traft import (
    ConfigurationChangeError,
    LeadershipTransferInProgressError,
    RaftError,
    RaftState,
    Suffrage,
)
from traft.testing import Cluster, open_cluster


def voters(raft: traft.Raft) -> set[str]:
    return {s.id for s in raft.get_configuration().servers if s.suffrage is Suffrage.VOTER}


async def _leader(c: Cluster) -> traft.Raft:
    with trio.fail_after(20):
        return await c.wait_leader()


async def test_grow_1_to_3_to_5_while_applying(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(1, seed=1) as c:
        leader = await _leader(c)
        applied = 0

        async def load() -> None:
            nonlocal applied
            while True:
                await leader.apply(b"%d" % applied)
                applied += 1
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            for new in ("n2", "n3", "n4", "n5"):
                await c.start(new)
                with trio.fail_after(30):
                    index = await leader.add_voter(new, new)
                assert index <= leader.commit_index
                assert new in voters(leader)
            nursery.cancel_scope.cancel()
        assert voters(leader) == {"n1", "n2", "n3", "n4", "n5"}
        await leader.barrier()
        with trio.fail_after(20):
            await c.wait_applied(leader.commit_index)
        orders = [fsm.commands for fsm in c.fsms.values()]
        assert all(o == orders[0] for o in orders)
        assert len(orders[0]) == applied


async def test_shrink_5_to_3_including_the_leader(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(5, seed=2) as c:
        leader = await _leader(c)
        lid = leader.config.local_id
        victim = next(i for i in c.ids if i != lid)
        await leader.remove_server(victim)
        assert victim not in voters(leader)
        await leader.apply(b"four")
        # now the leader removes itself: it steps down and shuts down
        await leader.remove_server(lid)
        with trio.fail_after(10):
            while leader.state is not RaftState.SHUTDOWN:
                await trio.sleep(0.05)
        rest = [i for i in c.ids if i not in (lid, victim)]
        start = trio.current_time()
        new = await c.wait_leader(rest)
        # TimeoutNow hand-over: no election timeout to wait out
        assert trio.current_time() - start < 1.0
        assert voters(new) == set(rest)
        await new.apply(b"three")
        with trio.fail_after(10):
            await c.wait_applied(new.last_index, rest)
        for i in rest:
            assert c.fsms[i].commands[-2:] == [b"four", b"three"]


async def test_replace_a_dead_server(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=3) as c:
        leader = await _leader(c)
        dead = next(i for i in c.ids if i != leader.config.local_id)
        await c.crash(dead)
        await leader.remove_server(dead)
        await c.start("n9")
        await leader.add_voter("n9", "n9")
        assert voters(leader) == {i for i in c.ids if i != dead}
        assert "n9" in voters(leader)
        await leader.apply(b"x")
        with trio.fail_after(10):
            await c.wait_applied(leader.last_index, [i for i in c.nodes])
        assert c.fsms["n9"].commands[-1] == b"x"


async def test_two_voters_and_a_nonvoter_cannot_commit_with_one_voter_down(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(2, seed=4) as c:
        leader = await _leader(c)
        await c.start("n3")
        await leader.add_nonvoter("n3", "n3")
        assert c.nodes["n3"] and "n3" not in voters(leader)
        await leader.apply(b"before")
        other = next(i for i in ("n1", "n2") if i != leader.config.local_id)
        await c.crash(other)
        with trio.move_on_after(5):
            with pytest.raises((traft.LeadershipLostError, traft.NotLeaderError)):
                await leader.apply(b"stuck")
        assert b"stuck" not in c.fsms["n3"].commands
        # the nonvoter's answers do not count towards the lease either
        assert leader.state is not RaftState.LEADER
        # and the nonvoter never campaigns
        assert c.nodes["n3"].state is RaftState.FOLLOWER


async def test_demote_a_voter(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=5) as c:
        leader = await _leader(c)
        other = next(i for i in c.ids if i != leader.config.local_id)
        await leader.demote_voter(other)
        cfg = leader.get_configuration()
        server = cfg.server(other)
        assert server is not None and server.suffrage is Suffrage.NONVOTER
        await leader.apply(b"x")
        with trio.fail_after(10):
            await c.wait_applied(leader.last_index)
        assert c.fsms[other].commands[-1] == b"x"  # still replicated to


async def test_a_second_concurrent_change_is_rejected(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=6) as c:
        leader = await _leader(c)
        lid = leader.config.local_id
        others = [i for i in c.ids if i != lid]
        c.network.isolate(others[0])
        c.network.isolate(others[1])  # nothing can commit now
        errors: list[BaseException] = []

        async def first() -> None:
            try:
                await leader.add_nonvoter("x1", "x1")
            except RaftError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.sleep(0.05)
            with pytest.raises(ConfigurationChangeError):
                await leader.add_nonvoter("x2", "x2")
            nursery.cancel_scope.cancel()


async def test_prev_index_mismatch_is_rejected(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=7) as c:
        leader = await _leader(c)
        with pytest.raises(ConfigurationChangeError):
            await leader.add_nonvoter("x", "x", prev_index=12345)
        index = await leader.add_nonvoter("x", "x", prev_index=1)
        assert await leader.remove_server("x", prev_index=index) > index


async def test_transfer_to_a_chosen_server(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=8) as c:
        leader = await _leader(c)
        target = next(i for i in c.ids if i != leader.config.local_id)
        term = leader.current_term
        with trio.fail_after(5):
            await leader.leadership_transfer(target)
        new = await c.wait_leader()
        assert new.config.local_id == target
        assert new.current_term == term + 1


async def test_transfer_with_automatic_pick(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=9) as c:
        leader = await _leader(c)
        lid = leader.config.local_id
        await leader.leadership_transfer()
        new = await c.wait_leader()
        assert new.config.local_id != lid


async def test_transfer_to_a_lagging_server_catches_it_up_first(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=10, max_append_entries=8) as c:
        leader = await _leader(c)
        lagger = next(i for i in c.ids if i != leader.config.local_id)
        await c.crash(lagger)
        for i in range(100):
            await leader.apply(b"%d" % i)
        await c.start(lagger)
        with trio.fail_after(5):
            await leader.leadership_transfer(lagger)
        new = await c.wait_leader()
        assert new.config.local_id == lagger
        assert new.last_index >= 101


async def test_applies_are_refused_during_a_transfer(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=11) as c:
        leader = await _leader(c)
        target = next(i for i in c.ids if i != leader.config.local_id)
        c.network.isolate(target)  # the transfer cannot finish
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def transfer() -> None:
                try:
                    await leader.leadership_transfer(target)
                except RaftError as exc:
                    outcome.append(exc)

            nursery.start_soon(transfer)
            await trio.sleep(0.01)
            with pytest.raises(LeadershipTransferInProgressError):
                await leader.apply(b"x")
        # it failed cleanly after election_timeout, and the leader still leads
        assert len(outcome) == 1 and "election_timeout" in str(outcome[0])
        c.network.heal()
        assert leader.state is RaftState.LEADER
        await leader.apply(b"after")


async def test_impossible_transfers_raise(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(1, seed=12) as c:
        leader = await _leader(c)
        with pytest.raises(RaftError):
            await leader.leadership_transfer()
    async with open_cluster(3, seed=12) as c:
        leader = await _leader(c)
        with pytest.raises(RaftError):
            await leader.leadership_transfer("nobody")
        other = next(i for i in c.ids if i != leader.config.local_id)
        with pytest.raises(RaftError):
            await leader.leadership_transfer(other, "wrong:1")
        await leader.add_nonvoter("nv", "nv")
        with pytest.raises(RaftError):
            await leader.leadership_transfer("nv")


async def test_adding_a_voter_under_load_does_not_stall_commits(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=13) as c:
        leader = await _leader(c)
        for i in range(500):
            await leader.apply(b"%d" % i)
        worst = 0.0

        async def load() -> None:
            nonlocal worst
            for i in range(200):
                t = trio.current_time()
                await leader.apply(b"load%d" % i)
                worst = max(worst, trio.current_time() - t)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            await c.start("n4")
            await leader.add_voter("n4", "n4")
        # the empty newcomer never held the quorum back
        assert worst < 0.5
        assert "n4" in voters(leader)


async def test_removed_server_does_not_disrupt_when_it_returns(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=14) as c:
        leader = await _leader(c)
        lid, term = leader.config.local_id, leader.current_term
        gone = next(i for i in c.ids if i != lid)
        c.network.isolate(gone)
        await leader.remove_server(gone)
        await trio.sleep(30)  # it times out, again and again
        c.network.heal()
        await trio.sleep(30)
        assert leader.state is RaftState.LEADER
        assert leader.current_term == term
        await leader.apply(b"fine")


async def test_peer_observations_on_membership_changes(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=15) as c:
        leader = await _leader(c)
        with leader.observe(lambda o: isinstance(o, traft.PeerObservation)) as obs:
            await leader.add_nonvoter("n7", "n7")
            added = obs.receive_nowait()
            other = next(i for i in c.ids if i != leader.config.local_id)
            await leader.remove_server(other)
            removed = obs.receive_nowait()
        assert added == traft.PeerObservation(traft.Server("n7", "n7", Suffrage.NONVOTER), False)
        assert isinstance(removed, traft.PeerObservation)
        assert removed.server.id == other and removed.removed


async def test_an_unreachable_new_voter_is_not_promoted(
        autojump_clock: trio.testing.MockClock) -> None:
    """§4.2.1: the newcomer stays a nonvoter until it has caught up, so an
    unreachable one never joins the quorum."""
    async with open_cluster(3, seed=16) as c:
        leader = await _leader(c)
        with trio.move_on_after(10):
            await leader.add_voter("ghost", "ghost")  # no such server runs
            pytest.fail("an unreachable server was promoted")
        server = leader.get_configuration().server("ghost")
        assert server is not None and server.suffrage is Suffrage.NONVOTER
        await leader.apply(b"still commits")


async def test_a_reachable_removed_follower_learns_it_and_stops_campaigning(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=17) as c:
        leader = await _leader(c)
        gone = next(i for i in c.ids if i != leader.config.local_id)
        await leader.remove_server(gone)
        await trio.sleep(1)
        removed = c.nodes[gone]
        assert removed.get_configuration().server(gone) is None
        with removed.observe(lambda o: isinstance(o, traft.StateObservation)) as states:
            await trio.sleep(60)
            with pytest.raises(trio.WouldBlock):
                states.receive_nowait()  # never became a (pre-)candidate
        assert removed.state is RaftState.FOLLOWER
        assert leader.state is RaftState.LEADER
