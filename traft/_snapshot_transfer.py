"""InstallSnapshot streaming (§7; hashicorp sendLatestSnapshot /
installSnapshot): the leader sends its newest snapshot in bounded chunks,
one at a time, each acknowledged before the next, so memory stays bounded
whatever the snapshot's size. Heartbeats keep flowing on their own pump.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ._blocking import run_blocking

from ._messages import InstallSnapshot, InstallSnapshotResponse
from ._storage import SnapshotSink, SnapshotStore
from ._transport import Transport
from ._types import ServerAddress, ServerID, SnapshotMeta

logger = logging.getLogger("traft.snapshot")

CHUNK_SIZE = 256 * 1024


async def stream_snapshot(*, store: SnapshotStore, transport: Transport,
                          address: ServerAddress,
                          acks: trio.MemoryReceiveChannel[InstallSnapshotResponse],
                          header: dict[str, Any], timeout: float,
                          chunk_size: int = CHUNK_SIZE) -> int | None:
    """Send the newest snapshot; the index it covers on success, else None.
    Every wait on the peer is bounded by ``timeout``."""
    snapshots = await store.list()
    if not snapshots:
        logger.error("%s has no snapshot to send to %s", header["src"], header["dst"])
        return None
    meta = snapshots[0]
    _, source = await store.open(meta.id)
    try:
        offset = 0
        while True:
            data = await run_blocking(source.read, chunk_size)
            done = len(data) < chunk_size or offset + len(data) >= meta.size
            msg = InstallSnapshot(
                **header, snapshot_id=meta.id, last_log_index=meta.index,
                last_log_term=meta.term, configuration=meta.configuration,
                configuration_index=meta.configuration_index, size=meta.size,
                offset=offset, data=bytes(data), done=done)
            expected = offset + len(data)
            with trio.fail_after(timeout):
                await transport.send(address, msg)
                while True:
                    ack = await acks.receive()
                    if ack.snapshot_id != meta.id or (ack.success and ack.next_offset < expected):
                        continue  # a stale or duplicated answer
                    break
            if not ack.success or ack.next_offset != expected:
                logger.info("%s: %s refused snapshot chunk at %d", header["src"],
                            header["dst"], offset)
                return None
            offset = expected
            if done:
                return meta.index
    except trio.TooSlowError:
        logger.info("%s: sending snapshot to %s timed out", header["src"], header["dst"])
        return None
    finally:
        source.close()


class SnapshotReceiver:
    """The follower's side: writes chunks into its own SnapshotStore."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self._sink: SnapshotSink | None = None
        self._id: str | None = None
        self._offset = 0

    async def abandon(self) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None
            await run_blocking(sink.cancel)

    async def chunk(self, m: InstallSnapshot) -> tuple[bool, int, SnapshotMeta | None]:
        """Write one chunk: (accepted, next offset, meta once complete)."""
        if m.offset == 0:
            # A (re)started transfer: any partial one is abandoned cleanly.
            await self.abandon()
            self._sink = await self.store.create(1, m.last_log_index, m.last_log_term,
                                                 m.configuration, m.configuration_index)
            self._id, self._offset = m.snapshot_id, 0
        elif self._sink is None or m.snapshot_id != self._id:
            return False, 0, None
        elif m.offset != self._offset:
            # A duplicate of a chunk already written: say where we are.
            return m.offset < self._offset, self._offset, None
        sink = self._sink
        assert sink is not None
        if m.data:
            await run_blocking(sink.write, m.data)
        self._offset += len(m.data)
        if not m.done:
            return True, self._offset, None
        self._sink = None
        await run_blocking(sink.close)
        meta = SnapshotMeta(id=sink.id, index=m.last_log_index, term=m.last_log_term,
                            configuration=m.configuration,
                            configuration_index=m.configuration_index, size=self._offset)
        return True, self._offset, meta


def response_header(m: InstallSnapshot, local_id: ServerID,
                    local_address: ServerAddress) -> dict[str, Any]:
    return {"term": m.term, "src": local_id, "src_address": local_address, "dst": m.src}
