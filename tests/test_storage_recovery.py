"""Nodes on SQLiteStore + FileSnapshotStore survive restarts and crashes.

In-process tests stop a node cleanly (or by cancelling it) and reopen it on
the same files; the process tests SIGKILL a node process, or a whole 3-node
cluster living in one process (``_storage_child.py``), in the middle of a
stream of applies. All use the real clock (stores run in worker threads),
with fast timers and ``trio.fail_after`` bounds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trio

from traft import (
    Config,
    Configuration,
    FileSnapshotStore,
    InmemNetwork,
    Log,
    LogType,
    Raft,
    RaftState,
    Server,
    SnapshotSink,
    SQLiteStore,
    open_raft,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHILD = HERE / "_storage_child.py"


class IndexFSM:
    """Records (index, command); snapshots are JSON of that list."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, str]] = []
        self.restored: list[tuple[int, str]] | None = None

    @property
    def commands(self) -> list[str]:
        return [c for _, c in self.applied]

    def apply(self, log: Log) -> int:
        self.applied.append((log.index, log.data.decode()))
        return log.index

    def snapshot(self) -> _Snapshot:
        return _Snapshot(list(self.applied))

    def restore(self, source: BinaryIO) -> None:
        self.applied = [(i, c) for i, c in json.loads(source.read())]
        self.restored = list(self.applied)


class _Snapshot:
    def __init__(self, applied: list[tuple[int, str]]) -> None:
        self.applied = applied

    def persist(self, sink: SnapshotSink) -> None:
        try:
            sink.write(json.dumps(self.applied).encode())
        except BaseException:
            sink.cancel()
            raise
        sink.close()

    def release(self) -> None:
        pass


def config(id: str, **overrides: Any) -> Config:
    fields: dict[str, Any] = dict(heartbeat_timeout=0.2, election_timeout=0.2,
                                  leader_lease_timeout=0.1, commit_timeout=0.01,
                                  rng=random.Random(f"recovery-{id}"))
    return Config(local_id=id, **(fields | overrides))


def membership(*ids: str) -> Configuration:
    return Configuration(tuple(Server(i, i) for i in ids))


@asynccontextmanager
async def open_node(directory: Path, id: str, network: InmemNetwork, fsm: IndexFSM,
                    **overrides: Any) -> AsyncIterator[Raft]:
    async with SQLiteStore(directory / f"{id}.db") as store:
        snapshots = FileSnapshotStore(directory / f"{id}-snapshots")
        async with open_raft(config(id, **overrides), fsm, store, store, snapshots,
                             network.transport(id)) as raft:
            yield raft


async def wait_leader(nodes: list[Raft]) -> Raft:
    while True:
        leaders = [n for n in nodes if n.state is RaftState.LEADER]
        if len(leaders) == 1:
            return leaders[0]
        await trio.sleep(0.01)


async def first_run(directory: Path, count: int) -> IndexFSM:
    """Bootstrap a single node n1, apply ``c0``..``c<count-1>``, stop it."""
    fsm = IndexFSM()
    async with open_node(directory, "n1", InmemNetwork(), fsm) as raft:
        await raft.bootstrap_cluster(membership("n1"))
        await wait_leader([raft])
        for i in range(count):
            await raft.apply(f"c{i}".encode())
    return fsm


async def write_snapshot(directory: Path, fsm: IndexFSM, upto: int) -> None:
    """Snapshot n1's FSM state as of its ``upto``-th command, as raft.snapshot
    would: at that entry's index and term, with the configuration entry."""
    index = fsm.applied[upto - 1][0]
    async with SQLiteStore(directory / "n1.db") as store:
        term = (await store.get_log(index)).term
        cfg_entry = await store.get_log(await store.first_index())
        assert cfg_entry.type is LogType.CONFIGURATION
    sink = await FileSnapshotStore(directory / "n1-snapshots").create(
        1, index, term, membership("n1"), cfg_entry.index)
    await trio.to_thread.run_sync(_Snapshot(fsm.applied[:upto]).persist, sink)


# -- in-process restarts ------------------------------------------------------


async def test_a_reopened_node_recovers_term_log_and_configuration_and_replays(
        tmp_path: Path) -> None:
    with trio.fail_after(15):
        fsm = IndexFSM()
        async with open_node(tmp_path, "n1", InmemNetwork(), fsm) as raft:
            await raft.bootstrap_cluster(membership("n1"))
            await wait_leader([raft])
            for i in range(20):
                await raft.apply(f"c{i}".encode())
            term, last = raft.current_term, raft.last_index
        assert term >= 1 and last >= 21

        again = IndexFSM()
        async with open_node(tmp_path, "n1", InmemNetwork(), again) as raft:
            # Loaded before the block is entered.
            assert raft.current_term == term
            assert raft.last_index == last
            assert raft.get_configuration() == membership("n1")
            await wait_leader([raft])
            assert raft.current_term > term
            await raft.barrier()
            assert again.commands == [f"c{i}" for i in range(20)]
            await raft.apply(b"after restart")
        assert again.commands[-1] == "after restart"


async def test_restart_restores_the_newest_snapshot_then_replays_the_log_after_it(
        tmp_path: Path) -> None:
    with trio.fail_after(15):
        fsm = await first_run(tmp_path, 20)
        await write_snapshot(tmp_path, fsm, upto=5)
        await write_snapshot(tmp_path, fsm, upto=12)

        again = IndexFSM()
        async with open_node(tmp_path, "n1", InmemNetwork(), again) as raft:
            assert again.restored == fsm.applied[:12]  # restored before entry
            assert raft.get_configuration() == membership("n1")
            await wait_leader([raft])
            await raft.barrier()
        assert again.commands == [f"c{i}" for i in range(20)]  # nothing twice


async def test_no_snapshot_restore_on_start_leaves_the_fsm_alone(tmp_path: Path) -> None:
    with trio.fail_after(15):
        fsm = await first_run(tmp_path, 10)
        await write_snapshot(tmp_path, fsm, upto=6)
        again = IndexFSM()
        async with open_node(tmp_path, "n1", InmemNetwork(), again,
                             no_snapshot_restore_on_start=True) as raft:
            assert again.restored is None
            assert again.applied == []
            assert raft.last_index >= fsm.applied[-1][0]


async def test_a_snapshot_with_a_truncated_state_file_is_ignored_on_restart(
        tmp_path: Path) -> None:
    with trio.fail_after(15):
        fsm = await first_run(tmp_path, 20)
        await write_snapshot(tmp_path, fsm, upto=8)
        await write_snapshot(tmp_path, fsm, upto=16)
        snapshots = FileSnapshotStore(tmp_path / "n1-snapshots")
        newest, older = await snapshots.list()
        state = tmp_path / "n1-snapshots" / "snapshots" / newest.id / "state.bin"
        state.write_bytes(state.read_bytes()[: newest.size // 2])

        again = IndexFSM()
        async with open_node(tmp_path, "n1", InmemNetwork(), again) as raft:
            assert again.restored == fsm.applied[:8]  # the older, intact one
            await wait_leader([raft])
            await raft.barrier()
        assert again.commands == [f"c{i}" for i in range(20)]


async def test_a_restarted_follower_rejoins_its_cluster_and_catches_up(
        tmp_path: Path) -> None:
    ids = ["n1", "n2", "n3"]
    network = InmemNetwork()
    fsms = {id: IndexFSM() for id in ids}
    nodes: dict[str, Raft] = {}
    scopes: dict[str, trio.CancelScope] = {}

    async def node(id: str, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            scopes[id] = scope
            # Roomy timers: a leader deposed on a loaded machine would make
            # the outcome of an apply unknown, and this test exact.
            async with open_node(tmp_path, id, network, fsms[id], heartbeat_timeout=0.5,
                                 election_timeout=0.5, leader_lease_timeout=0.25) as raft:
                nodes[id] = raft
                task_status.started()
                await trio.sleep_forever()
        nodes.pop(id, None)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for id in ids:
                await nursery.start(node, id)
            for id in ids:
                await nodes[id].bootstrap_cluster(membership(*ids))
            leader = await wait_leader(list(nodes.values()))
            for i in range(10):
                await leader.apply(f"a{i}".encode())
            follower = next(id for id in ids if nodes[id] is not leader)
            scopes[follower].cancel()  # crash it: its stores close, files stay
            while follower in nodes:
                await trio.sleep(0.01)
            for i in range(10):
                await leader.apply(f"b{i}".encode())

            fsms[follower] = IndexFSM()
            await nursery.start(node, follower)
            want = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
            while fsms[follower].commands != want:
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()


async def test_raft_snapshot_compacts_the_sqlite_log_and_a_restart_restores_it(
        tmp_path: Path) -> None:
    with trio.fail_after(15):
        fsm = IndexFSM()
        network = InmemNetwork()
        async with SQLiteStore(tmp_path / "n1.db") as store:
            snapshots = FileSnapshotStore(tmp_path / "n1-snapshots")
            async with open_raft(config("n1", trailing_logs=5), fsm, store, store, snapshots,
                                 network.transport("n1")) as raft:
                await raft.bootstrap_cluster(membership("n1"))
                await wait_leader([raft])
                for i in range(30):
                    await raft.apply(f"c{i}".encode())
                meta = await raft.snapshot()
                for i in range(30, 40):
                    await raft.apply(f"c{i}".encode())
                assert 1 < await store.first_index() <= meta.index - 5 + 1  # compacted
            assert [m.id for m in await snapshots.list()] == [meta.id]
            assert meta.configuration == membership("n1")

        again = IndexFSM()
        async with open_node(tmp_path, "n1", InmemNetwork(), again) as raft:
            assert again.restored is not None and again.restored[-1][0] <= meta.index
            assert [c for _, c in again.restored] == [f"c{i}" for i in range(30)]
            await wait_leader([raft])
            await raft.barrier()
        assert again.commands == [f"c{i}" for i in range(40)]


# -- real processes, SIGKILL ---------------------------------------------------


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def child_args(directory: Path, nodes: int, mode: str, snapshots: bool) -> list[str]:
    return [sys.executable, str(CHILD), str(directory), str(nodes), mode,
            *(["snapshots"] if snapshots else [])]


def committed_snapshots(directory: Path, id: str) -> list[str]:
    path = directory / f"{id}-snapshots" / "snapshots"
    return [p.name for p in path.iterdir() if not p.name.endswith(".tmp")] if path.exists() else []


def child_stderr(directory: Path) -> str:
    path = directory / "child-stderr.txt"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


async def run_and_kill(directory: Path, nodes: int, acks: int,
                       snapshots: bool = False) -> set[int]:
    """Start the child in ``run`` mode, SIGKILL it once it has acknowledged
    ``acks`` applies (and, with ``snapshots``, every node has committed a
    snapshot), and return every number it acknowledged. The child's stderr
    goes to ``child-stderr.txt`` in ``directory``."""
    ids = [f"n{i}" for i in range(1, nodes + 1)]

    def ready(out: bytes) -> bool:
        return out.count(b"\n") >= acks and (
            not snapshots or all(committed_snapshots(directory, id) for id in ids))

    with open(directory / "child-stderr.txt", "ab") as stderr:
        proc = await trio.lowlevel.open_process(
            child_args(directory, nodes, "run", snapshots),
            stdout=subprocess.PIPE, stderr=stderr, env=child_env())
    assert proc.stdout is not None
    out = b""
    try:
        with trio.fail_after(20):
            while not ready(out):
                chunk = await proc.stdout.receive_some()
                if not chunk:
                    await proc.wait()
                    pytest.fail(f"child exited early: {child_stderr(directory)}")
                out += chunk
    finally:
        proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await proc.wait()
    with trio.fail_after(5):
        while chunk := await proc.stdout.receive_some():
            out += chunk
    await proc.stdout.aclose()
    assert proc.returncode == -signal.SIGKILL
    lines = out.split(b"\n")[:-1]  # a line cut by the kill has no newline
    acked = {int(line.split()[1]) for line in lines}
    assert len(acked) == len(lines) >= acks
    return acked


async def check_state(directory: Path, nodes: int) -> dict[str, list[str]]:
    with trio.fail_after(20):
        proc = await trio.run_process(
            child_args(directory, nodes, "check", snapshots=False),
            capture_stdout=True, capture_stderr=True, check=False, env=child_env())
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    state: dict[str, list[str]] = json.loads(proc.stdout)
    return state


@pytest.mark.parametrize("nodes, snapshots", [(1, False), (3, False), (1, True), (3, True)])
async def test_every_acknowledged_apply_survives_a_sigkill_mid_stream(
        tmp_path: Path, nodes: int, snapshots: bool) -> None:
    acked = await run_and_kill(tmp_path, nodes, acks=600 if snapshots else 300, snapshots=snapshots)
    # The check run loads the snapshots but takes none of its own, so any
    # partial snapshot found afterwards would be one the kill left behind.
    state = await check_state(tmp_path, nodes)  # also: the stores open cleanly
    assert set(state) == {f"n{i}" for i in range(1, nodes + 1)}
    for id, commands in state.items():
        assert len(commands) == len(set(commands)), f"{id} applied a command twice"
        missing = acked - {int(c) for c in commands}
        assert not missing, f"{id} lost acknowledged commands {sorted(missing)[:10]}"
    first = next(iter(state.values()))
    assert all(commands == first for commands in state.values())
    for id in state:
        names = [p.name for p in (tmp_path / f"{id}-snapshots" / "snapshots").iterdir()]
        assert not [n for n in names if n.endswith(".tmp")], names  # leftovers removed
        assert len(names) <= 2
        if snapshots:
            assert names, f"{id} has no snapshot after restart: {child_stderr(tmp_path)}"
            async with SQLiteStore(tmp_path / f"{id}.db") as store:
                assert await store.first_index() > 1  # the log was compacted


async def test_a_killed_cluster_restarts_again_and_keeps_everything(tmp_path: Path) -> None:
    # Two crash/restart rounds on the same files: recovery leaves the stores
    # in a state that itself recovers.
    acked = await run_and_kill(tmp_path, 3, acks=100)
    acked |= await run_and_kill(tmp_path, 3, acks=100)  # numbering restarts at 0
    state = await check_state(tmp_path, 3)
    for commands in state.values():
        assert acked <= {int(c) for c in commands}


async def test_store_logs_and_set_are_durable_when_they_return(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys, trio, traft\n"
        "async def main():\n"
        "    store = traft.SQLiteStore(sys.argv[1])\n"
        "    await store.set(b'HardState', b'term 5')\n"
        "    for lo in range(1, 1000, 100):\n"
        "        await store.store_logs([traft.Log(i, 5, data=b'x' * i)\n"
        "                                for i in range(lo, lo + 100)])\n"
        "    await store.delete_range(901, 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "trio.run(main)\n"
    )
    path = tmp_path / "s.db"
    with trio.fail_after(20):
        proc = await trio.run_process([sys.executable, "-c", code, str(path)],
                                      check=False, env=child_env())
    assert proc.returncode == -signal.SIGKILL
    async with SQLiteStore(path) as store:
        assert await store.get(b"HardState") == b"term 5"
        assert (await store.first_index(), await store.last_index()) == (1, 900)
        assert (await store.get_log(900)).data == b"x" * 900


# -- bad files stop a node with a clear error ---------------------------------


async def test_bad_store_files_stop_the_node_with_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "n1.db").write_bytes(os.urandom(4096))

    newer = tmp_path / "newer"
    newer.mkdir()
    async with SQLiteStore(newer / "n1.db") as store:
        await store.set(b"k", b"v")
    raw = sqlite3.connect(newer / "n1.db")
    raw.execute("PRAGMA user_version = 9")
    raw.commit()
    raw.close()

    locked = tmp_path / "locked"
    locked.mkdir()
    cases = [(garbage, "not a traft store"), (newer, "schema version 9, newer"),
             (locked, "already open")]
    async with SQLiteStore(locked / "n1.db") as holder:
        await holder.set(b"k", b"v")
        for directory, message in cases:
            before = (directory / "n1.db").read_bytes()
            with trio.fail_after(20):
                proc = await trio.run_process(
                    [sys.executable, str(CHILD), str(directory), "1", "check"],
                    capture_stdout=True, capture_stderr=True, check=False, env=child_env())
            err = proc.stderr.decode(errors="replace")
            assert proc.returncode == 1, err
            assert err.startswith("StoreError:") and message in err, err
            assert str(directory / "n1.db") in err
            assert (directory / "n1.db").read_bytes() == before
