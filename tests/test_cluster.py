"""In-memory clusters of real nodes on the mock clock (autojump): minutes of
simulated time take milliseconds. Each test ends by checking that no two
servers applied different entries at one index (State Machine Safety)."""

from __future__ import annotations

import trio
import trio.testing
import pytest

import traft
from traft import (
    Config,
    InmemNetwork,
    InmemSnapshotStore,
    InmemStore,
    LeaderObservation,
    LeadershipLostError,
    NotLeaderError,
    RaftShutdownError,
    RaftState,
    open_raft,
)
from traft.testing import Cluster, RecordingFSM, open_cluster


def assert_state_machine_safety(cluster: Cluster) -> None:
    """§5.4.3: no two servers apply different commands at the same index."""
    seqs = [[(e.index, e.term, e.data) for e in fsm.applied] for fsm in cluster.fsms.values()]
    for a in seqs:
        for b in seqs:
            n = min(len(a), len(b))
            assert a[:n] == b[:n]


async def test_single_node_elects_itself_and_applies(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(1) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        assert leader.leader_id == "n1"
        applied = await leader.apply_log(b"hello")
        assert applied.response == (applied.index, b"hello")
        assert c.fsms["n1"].commands == [b"hello"]
        assert leader.commit_index == leader.applied_index == applied.index


@pytest.mark.parametrize("n", [3, 5])
async def test_cluster_elects_exactly_one_leader_and_replicates(
        autojump_clock: trio.testing.MockClock, n: int) -> None:
    async with open_cluster(n, seed=n) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        assert len(c.leaders()) == 1
        result = await leader.apply(b"x")
        with trio.fail_after(5):
            await c.wait_applied(leader.last_index)
        assert all(fsm.commands == [b"x"] for fsm in c.fsms.values())
        assert result[1] == b"x"
        # every follower knows the leader
        for node in c.nodes.values():
            assert node.leader_id == leader.leader_id
        assert_state_machine_safety(c)


async def test_leader_crash_elects_a_new_leader_that_keeps_committed_data(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=7) as c:
        with trio.fail_after(10):
            old = await c.wait_leader()
        old_id, old_term = old.leader_id, old.current_term
        assert old_id is not None
        for i in range(5):
            await old.apply(b"before-%d" % i)
        await c.crash(old_id)
        with trio.fail_after(10):
            new = await c.wait_leader()
        assert new.leader_id != old_id
        assert new.current_term > old_term
        await new.apply(b"after")
        survivors = [i for i in c.ids if i != old_id]
        with trio.fail_after(5):
            await c.wait_applied(new.last_index, survivors)
        for i in survivors:
            assert c.fsms[i].commands == [b"before-%d" % k for k in range(5)] + [b"after"]
        # the crashed leader comes back as a follower and catches up
        await c.start(old_id)
        with trio.fail_after(10):
            await c.wait_applied(new.last_index)
        assert c.fsms[old_id].commands[-1] == b"after"
        assert_state_machine_safety(c)


async def test_old_leader_in_minority_cannot_commit_and_steps_down(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=3) as c:
        with trio.fail_after(10):
            old = await c.wait_leader()
        old_id = old.leader_id
        assert old_id is not None
        await old.apply(b"committed")
        others = [i for i in c.ids if i != old_id]
        c.network.partition({old_id}, set(others))
        outcome: list[BaseException] = []

        async def stranded_apply() -> None:
            try:
                await old.apply(b"stranded")
            except traft.RaftError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stranded_apply)
            with trio.fail_after(10):
                new = await c.wait_leader(others)
        # the lease ran out: the old leader stepped down and its apply failed
        assert old.state is not RaftState.LEADER
        assert len(outcome) == 1 and isinstance(outcome[0], (LeadershipLostError, NotLeaderError))
        assert b"stranded" not in c.fsms[old_id].commands
        await new.apply(b"majority")
        c.network.heal()
        with trio.fail_after(10):
            await c.wait_applied(new.last_index)
        # the stranded entry was replaced by the new leader's log (§5.3)
        for i in c.ids:
            assert c.fsms[i].commands == [b"committed", b"majority"]
        assert_state_machine_safety(c)


async def test_minority_cannot_elect_a_leader(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(5, seed=11) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        lid = leader.leader_id
        assert lid is not None
        followers = [i for i in c.ids if i != lid]
        minority = set(followers[:2])
        c.network.partition(minority, set(c.ids) - minority)
        await trio.sleep(30)
        assert all(c.nodes[i].state is not RaftState.LEADER for i in minority)
        assert leader.state is RaftState.LEADER


async def test_rejoin_after_partition_with_prevote_keeps_the_leaders_term(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=5) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        lid, term = leader.leader_id, leader.current_term
        assert lid is not None
        loner = next(i for i in c.ids if i != lid)
        c.network.isolate(loner)
        await trio.sleep(20)  # many election timeouts: pre-votes only
        assert c.nodes[loner].current_term == term
        c.network.heal()
        await trio.sleep(5)
        assert leader.state is RaftState.LEADER
        assert leader.current_term == term
        assert c.nodes[loner].leader_id == lid


async def test_without_prevote_a_rejoining_server_disrupts_the_term(
        autojump_clock: trio.testing.MockClock) -> None:
    """The contrast that shows pre-vote matters: with it off the isolated
    server inflates its term and forces a new election on rejoin."""
    async with open_cluster(3, seed=5, prevote=False) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        lid, term = leader.leader_id, leader.current_term
        loner = next(i for i in c.ids if i != lid)
        c.network.isolate(loner)
        await trio.sleep(20)
        assert c.nodes[loner].current_term > term
        c.network.heal()
        with trio.fail_after(30):
            while max(n.current_term for n in c.nodes.values()) == term or not c.leaders():
                await trio.sleep(0.5)
            new = await c.wait_leader()
        assert new.current_term > term


async def test_follower_far_behind_catches_up(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=2, max_append_entries=16) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        lagger = next(i for i in c.ids if i != leader.leader_id)
        await c.crash(lagger)
        for i in range(300):
            await leader.apply(b"%d" % i)
        await c.start(lagger)
        with trio.fail_after(30):
            await c.wait_applied(leader.last_index)
        assert c.fsms[lagger].commands == [b"%d" % i for i in range(300)]
        assert_state_machine_safety(c)


async def test_fifty_concurrent_appliers_apply_exactly_once_in_one_order(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=9) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        results: dict[int, traft.Applied] = {}

        async def client(k: int) -> None:
            results[k] = await leader.apply_log(b"c%d" % k)

        async with trio.open_nursery() as nursery:
            for k in range(50):
                nursery.start_soon(client, k)
        with trio.fail_after(10):
            await c.wait_applied(leader.last_index)
        orders = [fsm.commands for fsm in c.fsms.values()]
        assert sorted(orders[0]) == sorted(b"c%d" % k for k in range(50))
        assert len(set(orders[0])) == 50
        assert all(o == orders[0] for o in orders)
        indexes = [r.index for r in results.values()]
        assert len(set(indexes)) == 50
        for k, r in results.items():
            assert r.response == (r.index, b"c%d" % k)
        assert_state_machine_safety(c)


class _CountingStore(InmemStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def store_logs(self, logs):  # type: ignore[no-untyped-def]
        self.batches.append(len(logs))
        await super().store_logs(logs)


async def test_applies_that_arrive_together_are_written_as_one_batch(
        autojump_clock: trio.testing.MockClock) -> None:
    network = InmemNetwork()
    store = _CountingStore()
    cfg = traft.Configuration((traft.Server("a", "a"),))
    async with open_raft(Config(local_id="a"), RecordingFSM(), store, store,
                         InmemSnapshotStore(), network.transport("a")) as raft:
        await raft.bootstrap_cluster(cfg)
        with trio.fail_after(10):
            while raft.state is not RaftState.LEADER:
                await trio.sleep(0.1)
        await raft.barrier()
        store.batches.clear()
        async with trio.open_nursery() as nursery:
            for k in range(40):
                nursery.start_soon(raft.apply, b"%d" % k)
        assert sum(store.batches) == 40
        assert len(store.batches) <= 3, store.batches


async def test_apply_on_a_follower_names_the_leader(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=4) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        await leader.barrier()
        await trio.sleep(1)
        follower = next(n for n in c.nodes.values() if n is not leader)
        with pytest.raises(NotLeaderError) as info:
            await follower.apply(b"x")
        assert info.value.leader_id == leader.leader_id
        assert info.value.leader_address == leader.leader_address
        with pytest.raises(NotLeaderError):
            await follower.barrier()
        with pytest.raises(NotLeaderError):
            await follower.verify_leader()


async def test_barrier_verify_leader_and_read_index_on_leader_and_follower(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=6) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        for i in range(10):
            await leader.apply(b"%d" % i)
        await leader.barrier()
        assert leader.applied_index == leader.last_index
        await leader.verify_leader()
        idx = await leader.read_index()
        assert idx >= leader.commit_index - 1
        assert leader.applied_index >= idx
        follower = next(n for n in c.nodes.values() if n is not leader)
        commit_when_called = leader.commit_index
        with trio.fail_after(5):
            fidx = await follower.read_index()
        assert fidx >= commit_when_called
        assert follower.applied_index >= fidx
        fid = next(i for i, n in c.nodes.items() if n is follower)
        assert c.fsms[fid].commands == [b"%d" % i for i in range(10)]


async def test_verify_leader_fails_on_a_leader_cut_off_from_its_quorum(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=8) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        assert leader.leader_id is not None
        c.network.isolate(leader.leader_id)
        with trio.fail_after(5):
            with pytest.raises((NotLeaderError, LeadershipLostError)):
                await leader.verify_leader()


async def test_read_index_with_no_leader_raises_not_leader(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=1, bootstrap=False) as c:
        with pytest.raises(NotLeaderError):
            await c.nodes["n1"].read_index()


async def test_unbootstrapped_servers_never_start_elections(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, bootstrap=False) as c:
        await trio.sleep(60)
        for node in c.nodes.values():
            assert node.state is RaftState.FOLLOWER
            assert node.current_term == 0
            assert node.last_index == node.commit_index == node.applied_index == 0
            assert node.leader_id is None and node.last_contact is None
            assert node.get_configuration() == traft.Configuration()


async def test_bootstrap_twice_raises_cant_bootstrap(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(1) as c:
        with pytest.raises(traft.CantBootstrapError):
            await c.nodes["n1"].bootstrap_cluster(c.configuration)


async def test_shutdown_fails_pending_applies(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=12) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        lid = leader.leader_id
        assert lid is not None
        # cut the leader off so its applies stay pending
        c.network.isolate(lid)
        errors: list[BaseException] = []

        async def pending(k: int) -> None:
            try:
                await leader.apply(b"%d" % k)
            except traft.RaftError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for k in range(5):
                nursery.start_soon(pending, k)
            await trio.sleep(0.01)
            await leader.shutdown()
        assert len(errors) == 5
        assert all(isinstance(e, RaftShutdownError) for e in errors)
        assert leader.state is RaftState.SHUTDOWN
        with pytest.raises(RaftShutdownError):
            await leader.apply(b"late")
        await leader.shutdown()  # idempotent


async def test_leaving_the_block_shuts_down_and_user_errors_pass_through_unwrapped(
        autojump_clock: trio.testing.MockClock) -> None:
    network = InmemNetwork()
    store = InmemStore()
    with pytest.raises(KeyError):
        async with open_raft(Config(local_id="a"), RecordingFSM(), store, store,
                             InmemSnapshotStore(), network.transport("a")) as raft:
            raise KeyError("mine")
    assert raft.state is RaftState.SHUTDOWN
    with pytest.raises(RaftShutdownError):
        await raft.barrier()


async def test_cancelling_a_scope_around_open_raft_stops_the_node(
        autojump_clock: trio.testing.MockClock) -> None:
    network = InmemNetwork()
    store = InmemStore()
    with trio.move_on_after(5):
        async with open_raft(Config(local_id="a"), RecordingFSM(), store, store,
                             InmemSnapshotStore(), network.transport("a")) as raft:
            await raft.bootstrap_cluster(traft.Configuration((traft.Server("a", "a"),)))
            await trio.sleep_forever()
    assert raft.state is RaftState.SHUTDOWN


async def test_invalid_config_is_a_value_error_naming_the_field() -> None:
    network = InmemNetwork()
    store = InmemStore()
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        async with open_raft(Config(local_id="a", heartbeat_timeout=0.0), RecordingFSM(),
                             store, store, InmemSnapshotStore(), network.transport("a")):
            pass
    with pytest.raises(ValueError, match="election_timeout"):
        async with open_raft(Config(local_id="a", election_timeout=0.5, heartbeat_timeout=1.0),
                             RecordingFSM(), store, store, InmemSnapshotStore(),
                             network.transport("a")):
            pass


async def test_cancelled_apply_leaves_the_node_consistent(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=13) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        with trio.move_on_after(0):
            await leader.apply(b"maybe")
        await leader.apply(b"surely")
        with trio.fail_after(5):
            await c.wait_applied(leader.last_index)
        cmds = c.fsms[leader.leader_id or ""].commands
        assert cmds[-1] == b"surely"
        assert cmds.count(b"maybe") <= 1
        assert_state_machine_safety(c)


async def test_fsm_exception_is_raised_to_the_apply_caller(
        autojump_clock: trio.testing.MockClock) -> None:
    class Picky(RecordingFSM):
        def apply(self, log: traft.Log) -> object:
            super().apply(log)
            if log.data == b"bad":
                raise ValueError("no thanks")
            return "ok"

    network = InmemNetwork()
    store = InmemStore()
    async with open_raft(Config(local_id="a"), Picky(), store, store, InmemSnapshotStore(),
                         network.transport("a")) as raft:
        await raft.bootstrap_cluster(traft.Configuration((traft.Server("a", "a"),)))
        with trio.fail_after(10):
            while raft.state is not RaftState.LEADER:
                await trio.sleep(0.1)
        with pytest.raises(ValueError, match="no thanks"):
            await raft.apply(b"bad")
        assert await raft.apply(b"good") == "ok"


async def test_batching_fsm_gets_batches_of_commands(autojump_clock: trio.testing.MockClock) -> None:
    class Batcher:
        def __init__(self) -> None:
            self.batches: list[list[bytes]] = []

        def apply(self, log: traft.Log) -> object:
            raise AssertionError("apply_batch should be used")

        def apply_batch(self, logs: list[traft.Log]) -> list[object]:
            self.batches.append([e.data for e in logs])
            return [e.data.upper() for e in logs]

        def snapshot(self) -> object:
            raise NotImplementedError

        def restore(self, source: object) -> None:
            raise NotImplementedError

    network = InmemNetwork()
    store = InmemStore()
    fsm = Batcher()
    async with open_raft(Config(local_id="a"), fsm, store, store, InmemSnapshotStore(),
                         network.transport("a")) as raft:
        await raft.bootstrap_cluster(traft.Configuration((traft.Server("a", "a"),)))
        with trio.fail_after(10):
            while raft.state is not RaftState.LEADER:
                await trio.sleep(0.1)
        results: list[object] = []

        async def one(k: int) -> None:
            results.append(await raft.apply(b"x%d" % k))

        async with trio.open_nursery() as nursery:
            for k in range(10):
                nursery.start_soon(one, k)
        assert sorted(results) == sorted(b"X%d" % k for k in range(10))  # type: ignore[type-var]
        assert sum(len(b) for b in fsm.batches) == 10
        assert any(len(b) > 1 for b in fsm.batches)


async def test_observers_see_leader_changes_and_an_idle_cluster_is_quiet(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=14) as c:
        node = c.nodes["n1"]
        with node.observe(lambda o: isinstance(o, LeaderObservation)) as leaders:
            with trio.fail_after(10):
                leader = await c.wait_leader()
            seen = leaders.receive_nowait()
            assert isinstance(seen, LeaderObservation)
            assert seen.leader_id == leader.leader_id
        await trio.sleep(2)
        with node.observe() as everything:
            await trio.sleep(30)
            with pytest.raises(trio.WouldBlock):
                everything.receive_nowait()


async def test_stats_report_hashicorp_keys(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=15) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        await leader.apply(b"x")
        s = leader.stats()
        for key in ("state", "term", "last_log_index", "last_log_term", "commit_index",
                    "applied_index", "fsm_pending", "last_snapshot_index",
                    "last_snapshot_term", "latest_configuration",
                    "latest_configuration_index", "num_peers", "last_contact",
                    "protocol_version"):
            assert key in s
        assert s["state"] == "Leader"
        assert s["num_peers"] == 2
        assert s["commit_index"] == leader.commit_index


async def test_restart_recovers_term_vote_log_and_reapplies(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=16) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        for i in range(20):
            await leader.apply(b"%d" % i)
        follower_id = next(i for i in c.ids if i != leader.leader_id)
        with trio.fail_after(5):
            await c.wait_applied(leader.last_index)
        term = c.nodes[follower_id].current_term
        await c.crash(follower_id)
        restarted = await c.start(follower_id)
        assert restarted.current_term == term
        assert restarted.last_index == leader.last_index
        assert restarted.get_configuration() == c.configuration
        with trio.fail_after(10):
            await c.wait_applied(leader.last_index)
        assert c.fsms[follower_id].commands == [b"%d" % i for i in range(20)]


async def test_follower_read_index_fails_when_the_leader_does_not_answer(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=17) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        await leader.barrier()
        await trio.sleep(1)
        fid = next(i for i in c.ids if i != leader.leader_id)
        assert leader.leader_id is not None
        c.network.disconnect_one_way(leader.leader_id, fid)  # answers never arrive
        start = trio.current_time()
        with trio.fail_after(10):
            with pytest.raises(NotLeaderError):
                await c.nodes[fid].read_index()
        assert trio.current_time() - start <= 2 * c.nodes[fid].config.election_timeout


async def test_heartbeat_failure_and_recovery_are_observed_on_the_leader(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=18) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        await leader.barrier()
        fid = next(i for i in c.ids if i != leader.leader_id)
        with leader.observe(lambda o: isinstance(o, (traft.FailedHeartbeatObservation,
                                                     traft.ResumedHeartbeatObservation))) as obs:
            c.network.isolate(fid)
            with trio.fail_after(5):
                failed = await obs.receive()
            assert failed == traft.FailedHeartbeatObservation(fid, failed.last_contact)
            assert failed.last_contact is not None
            c.network.heal()
            with trio.fail_after(5):
                resumed = await obs.receive()
            assert resumed == traft.ResumedHeartbeatObservation(fid)
        assert leader.state is RaftState.LEADER


async def test_new_leader_reports_peers_and_voters_report_vote_requests(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=19) as c:
        with trio.fail_after(10):
            first = await c.wait_leader()
        await first.barrier()
        observed: dict[str, list[object]] = {}
        with (c.nodes["n1"].observe() as o1, c.nodes["n2"].observe() as o2,
              c.nodes["n3"].observe() as o3):
            chans = {"n1": o1, "n2": o2, "n3": o3}
            assert first.leader_id is not None
            await c.crash(first.leader_id)
            with trio.fail_after(10):
                new = await c.wait_leader()
            for i, ch in chans.items():
                observed[i] = []
                while True:
                    try:
                        observed[i].append(ch.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
        new_id = new.leader_id
        assert new_id is not None
        peers = [o for o in observed[new_id] if isinstance(o, traft.PeerObservation)]
        assert {p.server.id for p in peers} == set(c.ids) - {new_id}
        assert all(not p.removed for p in peers)
        voter = next(i for i in c.ids if i not in (new_id, first.leader_id))
        votes = [o for o in observed[voter] if isinstance(o, traft.RequestVoteObservation)]
        assert any(v.candidate_id == new_id for v in votes)
        assert any(v.prevote for v in votes)
        assert traft.StateObservation(RaftState.LEADER) in observed[new_id]
