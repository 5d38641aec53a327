"""The Transport interface: how a node's messages reach other servers.

A transport moves one-way :mod:`traft._messages` values. ``send`` may drop a
message silently (Raft tolerates loss) or raise :class:`TransportError` when
it knows the peer is unreachable; it must not block for long on one peer,
and never forever. ``receive`` returns the next message addressed to this
node. A transport is handed to exactly one Raft node.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._messages import Message
from ._types import ServerAddress


@runtime_checkable
class Transport(Protocol):
    @property
    def local_address(self) -> ServerAddress: ...

    async def send(self, target: ServerAddress, message: Message) -> None: ...

    async def receive(self) -> Message: ...
