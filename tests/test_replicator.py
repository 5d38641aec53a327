"""The leader's per-peer replicator: heartbeats never queue behind appends."""

from __future__ import annotations

import trio
import trio.testing

from traft._messages import AppendEntries, Heartbeat, Message
from traft._replicator import Replicator


class StuckAppends:
    """A transport on which AppendEntries never complete (a slow peer)."""

    local_address = "leader"

    def __init__(self) -> None:
        self.delivered: list[Message] = []

    async def send(self, target: str, message: Message) -> None:
        if isinstance(message, AppendEntries):
            await trio.sleep_forever()
        self.delivered.append(message)

    async def receive(self) -> Message:
        await trio.sleep_forever()
        raise AssertionError


def _append(i: int) -> AppendEntries:
    return AppendEntries(term=1, src="l", src_address="leader", dst="f", prev_log_index=i,
                         prev_log_term=1, entries=(), leader_commit=0)


async def test_heartbeats_flow_while_appends_to_the_peer_are_stuck(
        autojump_clock: trio.testing.MockClock) -> None:
    transport = StuckAppends()
    rep = Replicator(transport, "f", "follower", send_timeout=1000.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rep.run)
        for i in range(5):
            rep.send_nowait(_append(i))
        for seq in range(1, 4):
            assert rep.send_nowait(Heartbeat(term=1, src="l", src_address="leader", dst="f",
                                             leader_commit=0, seq=seq))
            await trio.sleep(0.1)
        assert [m.seq for m in transport.delivered if isinstance(m, Heartbeat)] == [1, 2, 3]
        rep.stop()


async def test_a_full_append_queue_drops_instead_of_blocking_the_caller(
        autojump_clock: trio.testing.MockClock) -> None:
    transport = StuckAppends()
    rep = Replicator(transport, "f", "follower", send_timeout=1000.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rep.run)
        await trio.sleep(0)
        accepted = [rep.send_nowait(_append(i)) for i in range(500)]
        assert not all(accepted)
        assert rep.data.dropped == accepted.count(False)
        rep.stop()


async def test_a_send_that_hangs_is_abandoned_after_the_send_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    transport = StuckAppends()
    rep = Replicator(transport, "f", "follower", send_timeout=2.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rep.run)
        rep.send_nowait(_append(1))
        await trio.sleep(2.5)
        assert rep.data.failures == 1
        rep.stop()
