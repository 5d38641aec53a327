"""Outbound message pumps.

``PeerSender`` owns one bounded queue to one address and the task that
drains it into the transport. The state loop only ever ``send_nowait``s into
it: when the queue is full the message is dropped, as a network would (the
core retransmits), so the state loop never waits on a slow peer.

``Replicator`` is the leader's pair of pumps for one follower: one for
AppendEntries, one for heartbeats, so a heartbeat never queues behind a large
batch. Its cancel scope is that peer's ``stopCh``; the leadership scope
around all replicators is the leader's.
"""

from __future__ import annotations

import logging

import trio

from ._errors import TransportError
from ._messages import Heartbeat, InstallSnapshotResponse, Message
from ._transport import Transport
from ._types import ServerAddress
from ._core._progress import MAX_INFLIGHT

logger = logging.getLogger("traft.replicator")


class PeerSender:
    def __init__(self, transport: Transport, address: ServerAddress, *,
                 capacity: int, send_timeout: float) -> None:
        self.transport = transport
        self.address = address
        self.send_timeout = send_timeout
        self.dropped = 0
        self.failures = 0
        self._send, self._receive = trio.open_memory_channel[Message](capacity)

    def send_nowait(self, message: Message) -> bool:
        try:
            self._send.send_nowait(message)
            return True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            return False

    async def run(self) -> None:
        async with self._receive:
            async for message in self._receive:
                with trio.move_on_after(self.send_timeout) as scope:
                    try:
                        await self.transport.send(self.address, message)
                    except TransportError as exc:
                        self.failures += 1
                        logger.debug("send to %s failed: %s", self.address, exc)
                if scope.cancelled_caught:
                    self.failures += 1
                    logger.debug("send to %s timed out", self.address)


class Replicator:
    def __init__(self, transport: Transport, peer_id: str, address: ServerAddress, *,
                 send_timeout: float) -> None:
        self.peer_id = peer_id
        self.address = address
        self.data = PeerSender(transport, address, capacity=MAX_INFLIGHT * 2,
                               send_timeout=send_timeout)
        self.heartbeats = PeerSender(transport, address, capacity=4,
                                     send_timeout=send_timeout)
        self.cancel_scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None
        self.snapshot_acks: trio.MemorySendChannel[InstallSnapshotResponse] | None = None
        self.streaming = False

    def send_nowait(self, message: Message) -> bool:
        if isinstance(message, Heartbeat):
            return self.heartbeats.send_nowait(message)
        return self.data.send_nowait(message)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        with self.cancel_scope:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self.data.run)
                nursery.start_soon(self.heartbeats.run)
                task_status.started()

    def stop(self) -> None:
        self.cancel_scope.cancel()
