"""The snapshotter task (hashicorp ``runSnapshots``/``takeSnapshot``).

Every ``snapshot_interval`` (jittered from ``Config.rng``) it checks whether
``snapshot_threshold`` entries were applied since the last snapshot; if so,
or when the user asks, it has the applier capture an FSMSnapshot between two
entries, persists it in a worker thread (applies go on meanwhile), and then
tells the state loop, which compacts the log keeping ``trailing_logs``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from ._blocking import run_blocking

from ._applier import Capture
from ._errors import NothingNewToSnapshotError, RaftError
from ._types import SnapshotMeta
from ._waiters import Future

if TYPE_CHECKING:
    from ._node import Raft

logger = logging.getLogger("traft.snapshotter")


class Snapshotter:
    def __init__(self, raft: Raft) -> None:
        self.raft = raft
        self._lock = trio.Lock()
        self.taken = 0

    async def run(self) -> None:
        cfg = self.raft.config
        while True:
            await trio.sleep(cfg.snapshot_interval * (1.0 + self.raft._rng.random()))
            behind = self.raft._applier.applied_index - self.raft._last_snapshot_index
            if behind < cfg.snapshot_threshold:
                continue
            try:
                await self.take()
            except NothingNewToSnapshotError:
                pass
            except Exception as exc:
                # A failed snapshot is retried next interval; the log just
                # stays longer meanwhile.
                logger.error("%s snapshot failed: %r", cfg.local_id, exc)

    async def take(self) -> SnapshotMeta:
        raft = self.raft
        async with self._lock:
            applier = raft._applier
            if applier.applied_index == 0 or applier.applied_index <= raft._last_snapshot_index:
                raise NothingNewToSnapshotError("nothing new to snapshot")
            started = trio.current_time()
            fut: Future[tuple[Any, int, int]] = Future()
            await applier.send.send(Capture(fut))
            fsm_snapshot, index, term = await fut.wait()
            captured = trio.current_time()
            try:
                if index <= raft._last_snapshot_index:
                    raise NothingNewToSnapshotError("nothing new to snapshot")
                cfg_index, configuration = raft._core.configuration_at(index)
                sink = await raft.snapshot_store.create(1, index, term, configuration, cfg_index)
                await run_blocking(fsm_snapshot.persist, sink)
            finally:
                await run_blocking(fsm_snapshot.release)
            meta = next((m for m in await raft.snapshot_store.list() if m.id == sink.id), None)
            if meta is None:
                raise RaftError(f"snapshot {sink.id} was not committed by FSMSnapshot.persist")
            raft._last_snapshot_index, raft._last_snapshot_term = index, term
            self.taken += 1
            await raft._snapshot_taken(index, term)
            logger.info("%s snapshot %s at index %d: capture %.3fs, persist %.3fs, %d bytes",
                        raft.config.local_id, meta.id, index, captured - started,
                        trio.current_time() - captured, meta.size)
            return meta
