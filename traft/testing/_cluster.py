"""An in-memory cluster of real ``Raft`` nodes for tests and examples.

Every node runs the full driver (state loop, applier, replicators) over an
``InmemNetwork`` with ``InmemStore``s that outlive the node, so ``crash`` and
``restart`` keep exactly what the node had stored.
"""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, BinaryIO

import trio

from .._blocking import inline_blocking
from .._config import Config
from .._inmem_network import InmemNetwork
from .._inmem_store import InmemStore
from .._groups import collapse
from .._node import Raft, open_raft
from .._snapshot_stores import InmemSnapshotStore
from .._storage import SnapshotSink
from .._types import Configuration, Log, RaftState, Server, ServerID


class RecordingFSM:
    """Records every applied command; ``apply`` returns (index, data)."""

    def __init__(self) -> None:
        self.applied: list[Log] = []

    @property
    def commands(self) -> list[bytes]:
        return [e.data for e in self.applied]

    def apply(self, log: Log) -> Any:
        self.applied.append(log)
        return (log.index, log.data)

    def snapshot(self) -> _ListSnapshot:
        return _ListSnapshot(list(self.applied))

    def restore(self, source: BinaryIO) -> None:
        import cbor2
        raw = cbor2.load(source)
        self.applied = [Log(index=i, term=t, data=d) for i, t, d in raw]


class _ListSnapshot:
    def __init__(self, logs: list[Log]) -> None:
        self._logs = logs

    def persist(self, sink: SnapshotSink) -> None:
        import cbor2
        try:
            buf = io.BytesIO()
            cbor2.dump([[e.index, e.term, e.data] for e in self._logs], buf)
            sink.write(buf.getvalue())
        except BaseException:
            sink.cancel()
            raise
        sink.close()

    def release(self) -> None:
        pass


class Cluster:
    def __init__(self, nursery: trio.Nursery, ids: Iterable[ServerID], *, seed: int,
                 config: dict[str, Any]) -> None:
        self._nursery = nursery
        self.ids = list(ids)
        self.seed = seed
        self._rng = random.Random(seed)
        self.config_overrides = config
        self.network = InmemNetwork(rng=random.Random(self._rng.random()))
        self.stores: dict[ServerID, InmemStore] = {i: InmemStore() for i in self.ids}
        self.snapshots: dict[ServerID, InmemSnapshotStore] = {
            i: InmemSnapshotStore() for i in self.ids}
        self.fsms: dict[ServerID, RecordingFSM] = {}
        self.nodes: dict[ServerID, Raft] = {}
        self._scopes: dict[ServerID, trio.CancelScope] = {}
        self._stopped: dict[ServerID, trio.Event] = {}

    @property
    def configuration(self) -> Configuration:
        return Configuration(tuple(Server(i, i) for i in self.ids))

    def make_config(self, id: ServerID) -> Config:
        cfg = Config(local_id=id, rng=random.Random(f"{self.seed}-{id}-{self._rng.random()}"))
        return dataclasses.replace(cfg, **self.config_overrides)

    async def start(self, id: ServerID, *, fsm: RecordingFSM | None = None) -> Raft:
        """Start (or restart) node ``id`` on its surviving stores."""
        if id in self.nodes:
            raise RuntimeError(f"node {id} is already running")
        if id not in self.stores:
            self.ids.append(id)
            self.stores[id] = InmemStore()
            self.snapshots[id] = InmemSnapshotStore()
        self.fsms[id] = fsm if fsm is not None else RecordingFSM()
        raft: Raft = await self._nursery.start(self._run_node, id)
        return raft

    async def _run_node(self, id: ServerID, *,
                        task_status: trio.TaskStatus[Raft] = trio.TASK_STATUS_IGNORED) -> None:
        done = trio.Event()
        self._stopped[id] = done
        try:
            with trio.CancelScope() as scope:
                self._scopes[id] = scope
                async with open_raft(self.make_config(id), self.fsms[id], self.stores[id],
                                     self.stores[id], self.snapshots[id],
                                     self.network.transport(id)) as raft:
                    self.nodes[id] = raft
                    task_status.started(raft)
                    await trio.sleep_forever()
        finally:
            self.nodes.pop(id, None)
            done.set()

    async def crash(self, id: ServerID) -> None:
        """Stop node ``id`` at once; its stores keep what it had written."""
        scope = self._scopes.pop(id, None)
        if scope is None:
            return
        scope.cancel()
        await self._stopped[id].wait()

    async def bootstrap(self) -> None:
        for id in self.ids:
            await self.nodes[id].bootstrap_cluster(self.configuration)

    def leaders(self) -> list[Raft]:
        return [n for n in self.nodes.values() if n.state is RaftState.LEADER]

    async def wait_leader(self, among: Iterable[ServerID] | None = None,
                          poll: float = 0.05) -> Raft:
        """Wait until exactly one running node (of ``among``) leads, in the
        highest term any of them knows, and return it. Bound with a scope."""
        ids = set(among) if among is not None else None
        while True:
            nodes = [n for i, n in self.nodes.items() if ids is None or i in ids]
            leaders = [n for n in nodes if n.state is RaftState.LEADER]
            if len(leaders) == 1 and nodes:
                top = max(n.current_term for n in nodes)
                if leaders[0].current_term == top:
                    return leaders[0]
            await trio.sleep(poll)

    async def wait_applied(self, index: int, ids: Iterable[ServerID] | None = None,
                           poll: float = 0.05) -> None:
        """Wait until every running node (of ``ids``) applied through ``index``."""
        want = list(ids) if ids is not None else None
        while True:
            nodes = [n for i, n in self.nodes.items() if want is None or i in want]
            if all(n.applied_index >= index for n in nodes):
                return
            await trio.sleep(poll)


@asynccontextmanager
async def open_cluster(n: int = 3, *, seed: int = 0, bootstrap: bool = True,
                       ids: Iterable[ServerID] | None = None,
                       **config: Any) -> AsyncIterator[Cluster]:
    """Start ``n`` nodes named ``n1..nN`` (or ``ids``) on one InmemNetwork.

    ``config`` overrides Config fields for every node (e.g. ``prevote=False``).
    """
    names = list(ids) if ids is not None else [f"n{i}" for i in range(1, n + 1)]
    with inline_blocking():
        try:
            async with _cluster_nursery(names, seed, bootstrap, config) as cluster:
                yield cluster
        except BaseExceptionGroup as group:
            raise collapse(group) from None


@asynccontextmanager
async def _cluster_nursery(names: list[ServerID], seed: int, bootstrap: bool,
                           config: dict[str, Any]) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, names, seed=seed, config=config)
        for id in names:
            await cluster.start(id)
        if bootstrap:
            await cluster.bootstrap()
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()
