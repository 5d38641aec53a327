"""A node process for the crash tests in ``test_storage_recovery.py``.

    python tests/_storage_child.py DIR NODES run [snapshots]  # bootstrap if new, apply forever
    python tests/_storage_child.py DIR NODES check [snapshots]  # wait for a leader, barrier,
                                                                # print state

``NODES`` servers (``n1``..) run in this one process on an ``InmemNetwork``,
each with its own ``DIR/<id>.db`` (SQLiteStore) and ``DIR/<id>-snapshots``
(FileSnapshotStore): killing the process kills the whole cluster.

``run`` applies ``0``, ``1``, ``2``, ... from a few concurrent tasks and
prints ``ACK <n>`` (flushed) as soon as each ``apply`` has returned, so every
printed number was acknowledged to a client. ``check`` prints one JSON line
``{"<id>": [commands applied by that node], ...}`` once every node has
applied everything the leader has. Errors go to stderr with exit status 1.
With ``snapshots``, nodes snapshot every ~100 applied entries and compact
their logs down to 50 trailing entries, so a kill may land mid-snapshot.
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Any, BinaryIO

import trio

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import traft  # noqa: E402

WORKERS = 4


class ListFSM:
    """Keeps every applied command in order."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def apply(self, log: traft.Log) -> int:
        self.commands.append(log.data.decode())
        return len(self.commands)

    def snapshot(self) -> _Snap:
        return _Snap(list(self.commands))

    def restore(self, source: BinaryIO) -> None:
        self.commands = json.loads(source.read())


class _Snap:
    def __init__(self, commands: list[str]) -> None:
        self.commands = commands

    def persist(self, sink: traft.SnapshotSink) -> None:
        try:
            sink.write(json.dumps(self.commands).encode())
        except BaseException:
            sink.cancel()
            raise
        sink.close()

    def release(self) -> None:
        pass


def config(id: str, snapshots: bool) -> traft.Config:
    cfg = traft.Config(local_id=id, heartbeat_timeout=0.2, election_timeout=0.2,
                       leader_lease_timeout=0.1, commit_timeout=0.01,
                       rng=random.Random(f"storage-child-{id}"))
    if snapshots:
        cfg.snapshot_interval = 0.05
        cfg.snapshot_threshold = 100
        cfg.trailing_logs = 50
    return cfg


async def run_node(id: str, directory: str, network: traft.InmemNetwork, fsm: ListFSM,
                   snapshots: bool, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with traft.SQLiteStore(os.path.join(directory, f"{id}.db")) as store:
        snapshot_store = traft.FileSnapshotStore(os.path.join(directory, f"{id}-snapshots"))
        async with traft.open_raft(config(id, snapshots), fsm, store, store, snapshot_store,
                                   network.transport(id)) as raft:
            task_status.started(raft)
            await trio.sleep_forever()


async def wait_leader(nodes: list[traft.Raft]) -> traft.Raft:
    while True:
        leaders = [n for n in nodes if n.state is traft.RaftState.LEADER]
        if len(leaders) == 1:
            return leaders[0]
        await trio.sleep(0.02)


async def apply_forever(nodes: list[traft.Raft], counter: list[int]) -> None:
    while True:
        leader = await wait_leader(nodes)
        n = counter[0]
        counter[0] += 1
        try:
            await leader.apply(str(n).encode())
        except (traft.NotLeaderError, traft.LeadershipLostError):
            continue  # outcome unknown: never acknowledged
        print(f"ACK {n}", flush=True)


async def main(directory: str, count: int, mode: str, snapshots: bool) -> None:
    ids = [f"n{i}" for i in range(1, count + 1)]
    network = traft.InmemNetwork()
    fsms = {id: ListFSM() for id in ids}
    async with trio.open_nursery() as nursery:
        nodes = [await nursery.start(run_node, id, directory, network, fsms[id], snapshots)
                 for id in ids]
        if mode == "run":
            cluster = traft.Configuration(tuple(traft.Server(id, id) for id in ids))
            for node in nodes:
                try:
                    await node.bootstrap_cluster(cluster)
                except traft.CantBootstrapError:
                    pass
            counter = [0]
            for _ in range(WORKERS):
                nursery.start_soon(apply_forever, nodes, counter)
        elif mode == "check":
            while True:  # a fresh leader may still be deposed: retry
                leader = await wait_leader(nodes)
                try:
                    await leader.barrier()
                    break
                except (traft.NotLeaderError, traft.LeadershipLostError):
                    await trio.sleep(0.02)
            while any(n.applied_index < leader.applied_index for n in nodes):
                await trio.sleep(0.02)
            print(json.dumps({id: fsms[id].commands for id in ids}), flush=True)
            nursery.cancel_scope.cancel()
        else:
            raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    try:
        trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:] == ["snapshots"])
    except* traft.RaftError as group:
        for exc in group.exceptions:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
