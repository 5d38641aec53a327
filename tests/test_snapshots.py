"""Snapshots, log compaction and InstallSnapshot on in-memory clusters
(mock clock), with small thresholds: threshold 50, trailing 10."""

from __future__ import annotations

import io
import threading
import time

import cbor2
import pytest
import trio
import trio.testing

import traft
from traft import NothingNewToSnapshotError, RaftState
from traft.testing import Cluster, RecordingFSM, open_cluster

SMALL = {"snapshot_threshold": 50, "trailing_logs": 10, "snapshot_interval": 1.0}


async def _apply_many(leader: traft.Raft, n: int, prefix: bytes = b"") -> None:
    for i in range(n):
        await leader.apply(prefix + b"%d" % i)


async def _converged(c: Cluster) -> None:
    leader = await c.wait_leader()
    await leader.barrier()
    await c.wait_applied(leader.commit_index)


async def test_snapshot_on_demand_compacts_the_log_keeping_trailing_entries(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(1, snapshot_threshold=10_000, trailing_logs=10) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        await _apply_many(leader, 100)
        meta = await leader.snapshot()
        assert meta.index == leader.applied_index
        assert meta.configuration == c.configuration
        assert leader.stats()["last_snapshot_index"] == meta.index
        store = c.stores["n1"]
        first = await store.first_index()
        # hashicorp compactLogs: up to min(S, last - trailing)
        assert first == min(meta.index, leader.last_index - 10) + 1
        assert leader.last_index == meta.index
        _, source = await c.snapshots["n1"].open(meta.id)
        assert [d for _, _, d in cbor2.load(source)] == [b"%d" % i for i in range(100)]
        with pytest.raises(NothingNewToSnapshotError):
            await leader.snapshot()


async def test_snapshot_before_anything_was_applied_has_nothing_new(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(1, bootstrap=False) as c:
        with pytest.raises(NothingNewToSnapshotError):
            await c.nodes["n1"].snapshot()


async def test_the_snapshotter_takes_snapshots_at_the_threshold(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=1, **SMALL) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        await _apply_many(leader, 120)
        await trio.sleep(5)
        for node in c.nodes.values():
            assert node.stats()["last_snapshot_index"] >= 50
        first = await c.stores[leader.config.local_id].first_index()
        assert first > 1


async def test_partitioned_follower_catches_up_by_snapshot_then_by_log(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=2, **SMALL) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        lid = leader.config.local_id
        lagger = next(i for i in c.ids if i != lid)
        c.network.isolate(lagger)
        await _apply_many(leader, 200, b"a")
        await trio.sleep(5)  # the snapshotter compacts past the lagger
        assert await c.stores[lid].first_index() > c.nodes[lagger].last_index + 1
        c.network.heal()
        with trio.fail_after(30):
            await _converged(c)
        assert c.nodes[lagger].stats()["last_snapshot_index"] > 0
        # then ordinary replication again
        await _apply_many(leader, 5, b"b")
        with trio.fail_after(10):
            await c.wait_applied(leader.last_index)
        expected = [b"a%d" % i for i in range(200)] + [b"b%d" % i for i in range(5)]
        assert c.fsms[lagger].commands == expected
        assert c.fsms[lid].commands == expected


async def test_a_restarted_server_recovers_from_snapshot_plus_trailing_log(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=3, **SMALL) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        await _apply_many(leader, 130)
        await trio.sleep(5)
        fid = next(i for i in c.ids if i != leader.config.local_id)
        with trio.fail_after(10):
            await c.wait_applied(leader.last_index)
        snap_index = c.nodes[fid].stats()["last_snapshot_index"]
        assert snap_index > 0
        await c.crash(fid)
        node = await c.start(fid)
        # restored from the snapshot before the block was entered
        assert node.applied_index >= snap_index
        assert len(c.fsms[fid].commands) >= snap_index - 3  # the snapshot's commands
        assert node.last_index >= snap_index
        assert node.get_configuration() == c.configuration
        with trio.fail_after(10):
            await c.wait_applied(leader.last_index)
        assert c.fsms[fid].commands == [b"%d" % i for i in range(130)]


async def test_user_snapshot_and_restore_round_trip_across_the_cluster(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=4, **SMALL) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        lid = leader.config.local_id
        await _apply_many(leader, 20, b"old")
        meta = await leader.snapshot()
        _, source = await c.snapshots[lid].open(meta.id)
        saved = source.read()
        await _apply_many(leader, 20, b"new")
        before = leader.last_index
        src = io.BytesIO(saved)
        await leader.restore(meta, src)
        assert not src.closed  # the caller owns it
        assert leader.last_index > max(before, meta.index)
        assert c.fsms[lid].commands == [b"old%d" % i for i in range(20)]
        await leader.apply(b"after")
        with trio.fail_after(30):
            await c.wait_applied(leader.last_index)
        for i in c.ids:
            assert c.fsms[i].commands == [b"old%d" % k for k in range(20)] + [b"after"], i


async def test_restore_on_a_follower_raises_not_leader(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=5) as c:
        with trio.fail_after(10):
            leader = await c.wait_leader()
        follower = next(n for n in c.nodes.values() if n is not leader)
        meta = traft.SnapshotMeta("x", 1, 1, c.configuration, 1, 0)
        with pytest.raises(traft.NotLeaderError):
            await follower.restore(meta, io.BytesIO(b""))


class SlowPersistFSM(RecordingFSM):
    """An FSM whose snapshots take a long (real) time to persist."""

    def __init__(self) -> None:
        super().__init__()
        self.persisting = threading.Event()

    def snapshot(self):  # type: ignore[no-untyped-def]
        inner = super().snapshot()
        fsm = self

        class Slow:
            def persist(self, sink: traft.SnapshotSink) -> None:
                fsm.persisting.set()
                time.sleep(0.5)
                inner.persist(sink)

            def release(self) -> None:
                inner.release()

        return Slow()


async def test_applies_keep_completing_while_a_slow_snapshot_persists() -> None:
    """Real clock: the snapshot's persist runs in a worker thread and sleeps
    there, while applies go on in the event loop."""
    network = traft.InmemNetwork()
    store = traft.InmemStore()
    fsm = SlowPersistFSM()
    cfg = traft.Config(local_id="a", heartbeat_timeout=0.05, election_timeout=0.05,
                       leader_lease_timeout=0.05, commit_timeout=0.005)
    with trio.fail_after(20):
        async with traft.open_raft(cfg, fsm, store, store, traft.InmemSnapshotStore(),
                                   network.transport("a")) as raft:
            await raft.bootstrap_cluster(traft.Configuration((traft.Server("a", "a"),)))
            while raft.state is not RaftState.LEADER:
                await trio.sleep(0.01)
            await _apply_many(raft, 10)
            done_during: list[int] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(raft.snapshot)
                while not fsm.persisting.is_set():
                    await trio.sleep(0.001)
                for i in range(20):
                    await raft.apply(b"during%d" % i)
                    done_during.append(i)
                    assert fsm.persisting.is_set()
            assert len(done_during) == 20
            assert raft.stats()["last_snapshot_index"] > 0
