"""The FSM applier task (hashicorp ``runFSM``): applies committed entries in
log order, exactly once, and hands each result to the ``apply()`` caller.

It is fed over a bounded, lossless channel: when the FSM falls behind, the
state loop waits here, which is the node's back-pressure point. Snapshot
capture and restore travel on the same channel, so each happens at an exact
point between entries.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import trio

from ._blocking import run_blocking

from ._errors import LeadershipLostError
from ._storage import SnapshotStore
from ._types import Applied, Log, LogType
from ._waiters import Future, IndexWaiters

logger = logging.getLogger("traft.applier")

APPLY_QUEUE = 64  # items


@dataclass(frozen=True)
class Capture:
    """Take an FSMSnapshot now; answers (snapshot, index, term)."""

    future: Future[tuple[Any, int, int]]


@dataclass(frozen=True)
class Restore:
    """Replace the FSM's state with snapshot ``snapshot_id`` at ``index``."""

    store: SnapshotStore
    snapshot_id: str
    index: int
    term: int
    future: Future[None] | None = None


Item = list[Log] | Capture | Restore


class Applier:
    def __init__(self, fsm: Any, node_id: str, applied_index: int = 0,
                 applied_term: int = 0) -> None:
        self.fsm = fsm
        self.node_id = node_id
        self.applied_index = applied_index
        self.applied_term = applied_term
        # index -> (term, future) of entries this node proposed as leader
        self.waiters: dict[int, tuple[int, Future[Applied]]] = {}
        self.index_waiters = IndexWaiters()
        self._batching = callable(getattr(fsm, "apply_batch", None))
        self.send, self._receive = trio.open_memory_channel[Item](APPLY_QUEUE)

    @property
    def pending(self) -> int:
        """Items handed over but not yet applied (hashicorp fsm_pending)."""
        return int(self._receive.statistics().current_buffer_used)

    async def run(self) -> None:
        async with self._receive:
            async for item in self._receive:
                if isinstance(item, Capture):
                    await self._capture(item)
                elif isinstance(item, Restore):
                    await self._restore(item)
                else:
                    await self._apply(item)
                self.index_waiters.release_through(self.applied_index)

    async def wait_applied(self, index: int) -> None:
        if self.applied_index >= index:
            return
        await self.index_waiters.add(index).wait()

    def fail_waiters_above(self, index: int, error: Exception) -> None:
        """The leader stepped down: entries above ``index`` may never commit."""
        for i in [i for i in self.waiters if i > index]:
            _, fut = self.waiters.pop(i)
            fut.set_exception(type(error)(*error.args))

    async def _capture(self, item: Capture) -> None:
        try:
            snap = self.fsm.snapshot()
            if inspect.isawaitable(snap):
                snap = await snap
        except Exception as exc:
            item.future.set_exception(exc)
            return
        item.future.set_result((snap, self.applied_index, self.applied_term))

    async def _restore(self, item: Restore) -> None:
        try:
            _, source = await item.store.open(item.snapshot_id)
            try:
                await run_blocking(self.fsm.restore, source)
            finally:
                source.close()
        except Exception as exc:
            # The FSM may be half restored: nothing safe is left to do.
            logger.error("%s FSM.restore of snapshot %s failed: %r", self.node_id,
                         item.snapshot_id, exc)
            if item.future is not None:
                item.future.set_exception(exc)
            raise
        self.applied_index, self.applied_term = item.index, item.term
        logger.info("%s restored FSM from snapshot %s (index %d)", self.node_id,
                    item.snapshot_id, item.index)
        if item.future is not None:
            item.future.set_result(None)

    async def _apply(self, batch: list[Log]) -> None:
        i = 0
        while i < len(batch):
            entry = batch[i]
            if entry.index <= self.applied_index:
                i += 1  # already covered (e.g. by a restored snapshot)
                continue
            if entry.type is not LogType.COMMAND:
                self._finish(entry, None, None)
                i += 1
                continue
            if self._batching:
                j = i
                while j < len(batch) and batch[j].type is LogType.COMMAND:
                    j += 1
                commands = batch[i:j]
                await self._apply_batch(commands)
                i = j
            else:
                await self._apply_one(entry)
                i += 1
        await trio.lowlevel.checkpoint()

    async def _apply_one(self, entry: Log) -> None:
        try:
            result = self.fsm.apply(entry)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # the caller gets what the FSM raised
            logger.warning("%s FSM.apply raised at index %d: %r", self.node_id, entry.index, exc)
            self._finish(entry, None, exc)
            return
        self._finish(entry, result, None)

    async def _apply_batch(self, entries: list[Log]) -> None:
        try:
            results = self.fsm.apply_batch(entries)
            if inspect.isawaitable(results):
                results = await results
            results = list(results)
            if len(results) != len(entries):
                raise RuntimeError(f"apply_batch returned {len(results)} results "
                                   f"for {len(entries)} entries")
        except Exception as exc:
            logger.error("%s FSM.apply_batch raised at %d..%d: %r", self.node_id,
                         entries[0].index, entries[-1].index, exc)
            for e in entries:
                self._finish(e, None, exc)
            return
        for e, r in zip(entries, results):
            self._finish(e, r, None)

    def _finish(self, entry: Log, result: Any, error: BaseException | None) -> None:
        self.applied_index = entry.index
        self.applied_term = entry.term
        waiter = self.waiters.pop(entry.index, None)
        if waiter is None:
            return
        term, fut = waiter
        if term != entry.term:
            # Our entry was overwritten by another leader's.
            fut.set_exception(LeadershipLostError(
                f"entry {entry.index} was replaced by a newer leader's"))
        elif error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(Applied(entry.index, entry.term, result))
