"""InstallSnapshot streaming (§7; hashicorp sendLatestSnapshot /
installSnapshot): the leader sends its newest snapshot in bounded chunks,
a few in flight at a time (each acknowledged, cumulatively), so memory
stays bounded whatever the snapshot's size. Heartbeats keep flowing on their own pump.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio

from ._blocking import run_blocking

from ._messages import InstallSnapshot, InstallSnapshotResponse
from ._storage import SnapshotSink, SnapshotStore
from ._transport import Transport
from ._types import ServerAddress, ServerID, SnapshotMeta

logger = logging.getLogger("traft.snapshot")

CHUNK_SIZE = 256 * 1024
WINDOW = 4  # chunks in flight


async def stream_snapshot(*, store: SnapshotStore, transport: Transport,
                          address: ServerAddress,
                          acks: trio.MemoryReceiveChannel[InstallSnapshotResponse],
                          header: dict[str, Any], timeout: float,
                          chunk_size: int = CHUNK_SIZE, window: int = WINDOW) -> int | None:
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
        done = False
        # next_offset each unacknowledged chunk will be acknowledged with
        in_flight: deque[int] = deque()
        while True:
            # Keep a few chunks in flight so reading, framing, sending and the
            # follower's writing overlap; memory stays window * chunk_size.
            while not done and len(in_flight) < window:
                data = await run_blocking(source.read, chunk_size)
                done = len(data) < chunk_size or offset + len(data) >= meta.size
                msg = InstallSnapshot(
                    **header, snapshot_id=meta.id, last_log_index=meta.index,
                    last_log_term=meta.term, configuration=meta.configuration,
                    configuration_index=meta.configuration_index, size=meta.size,
                    offset=offset, data=bytes(data), done=done)
                with trio.fail_after(timeout):
                    await transport.send(address, msg)
                offset += len(data)
                in_flight.append(offset)
            if not in_flight:
                return meta.index
            with trio.fail_after(timeout):
                while True:
                    ack = await acks.receive()
                    if ack.snapshot_id != meta.id or (ack.success
                                                      and ack.next_offset < in_flight[0]):
                        continue  # a stale or duplicated answer
                    break
            if not ack.success or ack.next_offset not in in_flight:
                logger.info("%s: %s refused snapshot chunk at %d", header["src"],
                            header["dst"], in_flight[0])
                return None
            # Acknowledgements are cumulative: the follower writes in order.
            while in_flight and in_flight[0] <= ack.next_offset:
                in_flight.popleft()
            if done and not in_flight:
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
