"""InmemNetwork: delivery, cuts judged at delivery, loss and delay from a
seeded rng, all on Trio's mock clock (the ``autojump_clock`` fixture)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from traft._inmem_network import InmemNetwork, InmemTransport
from traft._messages import Message, TimeoutNow
from traft._transport import Transport


def msg(n: int, src: str = "a", dst: str = "b") -> TimeoutNow:
    """A small message; ``term`` carries a sequence number for ordering checks."""
    return TimeoutNow(term=n, src=src, src_address=src, dst=dst)


async def nothing_arrives(t: InmemTransport, within: float = 10.0) -> bool:
    with trio.move_on_after(within) as scope:
        await t.receive()
    return scope.cancelled_caught


async def drain(t: InmemTransport, within: float = 100.0) -> list[Message]:
    """Everything delivered to ``t`` until it has been quiet for ``within``."""
    got: list[Message] = []
    while True:
        with trio.move_on_after(within):
            got.append(await t.receive())
            continue
        return got


# -- delivery --------------------------------------------------------------


async def test_transport_has_its_address_and_satisfies_the_protocol(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a = net.transport("a")
    assert a.local_address == "a"
    assert isinstance(a, Transport)


async def test_message_is_delivered_by_reference_without_delay(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b = net.transport("a"), net.transport("b")
    m = msg(1)
    start = trio.current_time()
    await a.send("b", m)
    assert await b.receive() is m
    assert trio.current_time() == start
    stats = net.stats()
    assert (stats["sent"], stats["delivered"], stats["dropped"]) == (1, 1, 0)


async def test_receive_waits_for_a_later_send(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b = net.transport("a"), net.transport("b")
    got: list[Message] = []
    async with trio.open_nursery() as nursery:
        async def receiver() -> None:
            got.append(await b.receive())
        nursery.start_soon(receiver)
        await trio.sleep(5)
        assert got == []
        await a.send("b", msg(1))
    assert [m.term for m in got] == [1]


async def test_zero_delay_messages_arrive_fifo(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b = net.transport("a"), net.transport("b")
    for i in range(100):
        await a.send("b", msg(i))
    assert [m.term for m in await drain(b)] == list(range(100))


async def test_equal_delays_keep_send_order(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    net.set_unreliable(delay=(0.5, 0.5))
    a, b = net.transport("a"), net.transport("b")
    for i in range(20):
        await a.send("b", msg(i))
    assert [m.term for m in await drain(b)] == list(range(20))


async def test_sending_to_yourself_works(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a = net.transport("a")
    await a.send("a", msg(1, dst="a"))
    assert (await a.receive()).term == 1


async def test_send_to_unknown_address_is_dropped_without_error(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a = net.transport("a")
    await a.send("nobody", msg(1))
    stats = net.stats()
    assert (stats["sent"], stats["dropped"], stats["dropped_no_transport"]) == (1, 1, 1)


async def test_cancelled_send_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b = net.transport("a"), net.transport("b")
    with trio.CancelScope() as scope:
        scope.cancel()
        await a.send("b", msg(1))
    assert net.stats()["sent"] == 0
    assert await nothing_arrives(b)


# -- cuts ------------------------------------------------------------------


async def test_partition_blocks_both_directions_and_heal_restores(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b, c = net.transport("a"), net.transport("b"), net.transport("c")
    net.partition({"a"}, {"b", "c"})
    await a.send("b", msg(1))
    await b.send("a", msg(2, "b", "a"))
    await b.send("c", msg(3, "b", "c"))  # same side: unaffected
    assert await nothing_arrives(b)
    assert await nothing_arrives(a)
    assert (await c.receive()).term == 3
    assert net.stats()["dropped_cut"] == 2
    net.heal()
    await a.send("b", msg(4))
    await b.send("a", msg(5, "b", "a"))
    assert (await b.receive()).term == 4
    assert (await a.receive()).term == 5


async def test_message_in_flight_when_partition_is_made_is_dropped_at_delivery(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    net.set_unreliable(delay=(1.0, 1.0))
    a, b = net.transport("a"), net.transport("b")
    await a.send("b", msg(1))
    await trio.sleep(0.5)
    net.partition({"a"}, {"b"})
    assert await nothing_arrives(b)
    net.heal()  # healing later does not bring it back
    assert await nothing_arrives(b)
    assert net.stats()["dropped_cut"] == 1


async def test_message_sent_while_cut_arrives_if_healed_before_it_is_due(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    net.set_unreliable(delay=(1.0, 1.0))
    a, b = net.transport("a"), net.transport("b")
    net.partition({"a"}, {"b"})
    start = trio.current_time()
    await a.send("b", msg(1))
    await trio.sleep(0.5)
    net.heal()
    assert (await b.receive()).term == 1
    assert trio.current_time() == pytest.approx(start + 1.0)


async def test_message_is_judged_when_due_not_when_read(autojump_clock: trio.testing.MockClock) -> None:
    # It arrived (link up) at t+1; a cut made later while it sits unread in
    # the receiver's buffer does not take it back.
    net = InmemNetwork()
    net.set_unreliable(delay=(1.0, 1.0))
    a, b = net.transport("a"), net.transport("b")
    await a.send("b", msg(1))
    await trio.sleep(2)
    net.partition({"a"}, {"b"})
    await trio.sleep(1)
    assert (await b.receive()).term == 1


async def test_disconnect_adds_to_partition_and_heal_clears_both(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b, c = net.transport("a"), net.transport("b"), net.transport("c")
    net.partition({"a", "b"}, {"c"})
    net.disconnect("a", "b")
    assert not net.link_up("a", "b") and not net.link_up("b", "a")
    assert not net.link_up("a", "c") and not net.link_up("c", "b")
    await a.send("b", msg(1))
    await b.send("a", msg(2, "b", "a"))
    await c.send("a", msg(3, "c", "a"))
    assert await nothing_arrives(a)
    assert await nothing_arrives(b)
    net.heal()
    await a.send("b", msg(4))
    await c.send("a", msg(5, "c", "a"))
    assert (await b.receive()).term == 4
    assert (await a.receive()).term == 5


async def test_partitions_accumulate(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    net.partition({"a"}, {"b"})
    net.partition({"b"}, {"c"})
    assert not net.link_up("a", "b")
    assert not net.link_up("c", "b")
    assert net.link_up("a", "c")


async def test_one_way_cut_blocks_only_that_direction(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b = net.transport("a"), net.transport("b")
    net.disconnect_one_way("a", "b")
    await a.send("b", msg(1))
    await b.send("a", msg(2, "b", "a"))
    assert await nothing_arrives(b)
    assert (await a.receive()).term == 2
    net.heal()
    await a.send("b", msg(3))
    assert (await b.receive()).term == 3


async def test_isolate_also_cuts_addresses_that_join_later(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b = net.transport("a"), net.transport("b")
    net.isolate("a")
    d = net.transport("d")  # created after the cut
    await d.send("a", msg(1, "d", "a"))
    await a.send("b", msg(2))
    await a.send("a", msg(3, "a", "a"))  # its link to itself stays up
    await b.send("d", msg(4, "b", "d"))
    assert (await a.receive()).term == 3
    assert await nothing_arrives(a)
    assert await nothing_arrives(b)
    assert (await d.receive()).term == 4
    net.heal()
    await d.send("a", msg(5, "d", "a"))
    assert (await a.receive()).term == 5


async def test_cuts_may_name_addresses_without_transports_and_survive_recreation(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    net.partition({"a"}, {"b"})  # neither exists yet
    a, b = net.transport("a"), net.transport("b")
    await a.send("b", msg(1))
    assert await nothing_arrives(b)
    b2 = net.transport("b")  # a restarted node at the same address
    await a.send("b", msg(2))
    assert await nothing_arrives(b2)
    net.heal()
    await a.send("b", msg(3))
    assert (await b2.receive()).term == 3


async def test_partition_rejects_bare_strings_and_overlapping_groups() -> None:
    net = InmemNetwork()
    with pytest.raises(TypeError):
        net.partition("ab", "c")
    with pytest.raises(ValueError):
        net.partition({"a", "b"}, {"b", "c"})


# -- transport re-creation and close ---------------------------------------


async def test_recreated_transport_takes_over_and_old_one_gets_nothing(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b_old = net.transport("a"), net.transport("b")
    old_got: list[Message] = []
    async with trio.open_nursery() as nursery:
        async def old_receiver() -> None:
            old_got.append(await b_old.receive())
        nursery.start_soon(old_receiver)
        await trio.sleep(1)
        b_new = net.transport("b")
        assert b_new.local_address == "b"
        await a.send("b", msg(1))
        assert (await b_new.receive()).term == 1
        await trio.sleep(10)
        assert old_got == []  # still blocked
        nursery.cancel_scope.cancel()
    assert old_got == []


async def test_messages_in_flight_reach_the_recreated_transport(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    net.set_unreliable(delay=(1.0, 1.0))
    a, _ = net.transport("a"), net.transport("b")
    await a.send("b", msg(1))
    await trio.sleep(0.5)
    b2 = net.transport("b")
    assert (await b2.receive()).term == 1


async def test_closed_transport_leaves_the_network(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b = net.transport("a"), net.transport("b")
    await a.send("b", msg(1))  # arrived, never read: lost with the transport
    b.close()
    b.close()
    await a.send("b", msg(2))
    with pytest.raises(trio.ClosedResourceError):
        await b.receive()
    with pytest.raises(trio.ClosedResourceError):
        await b.send("a", msg(3, "b", "a"))
    stats = net.stats()
    assert stats["dropped_no_transport"] == 2
    b2 = net.transport("b")
    await a.send("b", msg(4))
    assert (await b2.receive()).term == 4


# -- loss and delay --------------------------------------------------------


async def test_drop_rate_one_drops_everything_silently(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork(random.Random(1))
    net.set_unreliable(drop_rate=1.0)
    a, b = net.transport("a"), net.transport("b")
    for i in range(50):
        await a.send("b", msg(i))
    assert await nothing_arrives(b)
    stats = net.stats()
    assert (stats["dropped_loss"], stats["dropped"], stats["delivered"]) == (50, 50, 0)


async def test_drop_rate_half_drops_roughly_half(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork(random.Random(42))
    net.set_unreliable(drop_rate=0.5)
    a, b = net.transport("a"), net.transport("b")
    for i in range(1000):
        await a.send("b", msg(i))
    got = await drain(b)
    assert 400 <= len(got) <= 600
    assert [m.term for m in got] == sorted(m.term for m in got)  # survivors keep order
    stats = net.stats()
    assert stats["delivered"] + stats["dropped_loss"] == 1000


async def test_random_delay_reorders_messages(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork(random.Random(7))
    net.set_unreliable(delay=(0.0, 1.0))
    a, b = net.transport("a"), net.transport("b")
    for i in range(50):
        await a.send("b", msg(i))
    order = [m.term for m in await drain(b)]
    assert sorted(order) == list(range(50))  # nothing lost
    assert order != list(range(50))  # but reordered


async def test_receiver_wakes_for_a_message_due_sooner_than_the_one_it_waits_for(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    a, b = net.transport("a"), net.transport("b")
    net.set_link("a", "b", delay=(10.0, 10.0))
    got: list[tuple[int, float]] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        async def receiver() -> None:
            for _ in range(2):
                m = await b.receive()
                got.append((m.term, trio.current_time() - start))
        nursery.start_soon(receiver)
        await a.send("b", msg(1))  # due at +10
        await trio.sleep(1)
        net.set_link("a", "b", delay=(1.0, 1.0))
        await a.send("b", msg(2))  # due at +2
    assert [term for term, _ in got] == [2, 1]
    assert [at for _, at in got] == pytest.approx([2.0, 10.0])


async def test_set_link_overrides_the_global_setting_for_one_direction(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork()
    net.set_unreliable(drop_rate=1.0)
    a, b = net.transport("a"), net.transport("b")
    net.set_link("a", "b", drop_rate=0.0)
    await a.send("b", msg(1))
    await b.send("a", msg(2, "b", "a"))
    assert (await b.receive()).term == 1
    assert await nothing_arrives(a)
    net.set_link("a", "b")  # no fields: back to the global setting
    await a.send("b", msg(3))
    assert await nothing_arrives(b)


async def test_invalid_fault_settings_are_rejected() -> None:
    net = InmemNetwork()
    with pytest.raises(ValueError):
        net.set_unreliable(drop_rate=1.5)
    with pytest.raises(ValueError):
        net.set_unreliable(delay=(2.0, 1.0))
    with pytest.raises(ValueError):
        net.set_link("a", "b", delay=(-1.0, 0.0))


async def run_scenario(seed: int) -> list[tuple[str, int, float]]:
    """Three senders, lossy and delayed links: what arrives where, and when."""
    net = InmemNetwork(random.Random(seed))
    net.set_unreliable(drop_rate=0.2, delay=(0.0, 0.5))
    ts = {addr: net.transport(addr) for addr in "abc"}
    log: list[tuple[str, int, float]] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        async def receiver(t: InmemTransport) -> None:
            while True:
                m = await t.receive()
                # Rounded: each run starts at a different clock reading.
                log.append((t.local_address, m.term, round(trio.current_time() - start, 9)))
        for t in ts.values():
            nursery.start_soon(receiver, t)
        for i in range(60):
            src, dst = "abc"[i % 3], "abc"[(i + 1) % 3]
            await ts[src].send(dst, msg(i, src, dst))
            await trio.sleep(0.01)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return log


async def test_same_seed_gives_the_same_deliveries(autojump_clock: trio.testing.MockClock) -> None:
    first = await run_scenario(3)
    second = await run_scenario(3)
    assert first == second
    assert 30 <= len(first) < 60  # some loss, most delivered
    assert first != await run_scenario(4)


async def test_faults_draw_only_from_the_network_rng(autojump_clock: trio.testing.MockClock,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object) -> float:
        raise AssertionError("module-level random used")
    for name in ("random", "uniform", "randint", "choice", "shuffle"):
        monkeypatch.setattr(random, name, forbidden)
    net = InmemNetwork()  # default rng
    net.set_unreliable(drop_rate=0.3, delay=(0.0, 1.0))
    a, b = net.transport("a"), net.transport("b")
    for i in range(20):
        await a.send("b", msg(i))
    await drain(b)


async def test_stats_account_for_every_message(autojump_clock: trio.testing.MockClock) -> None:
    net = InmemNetwork(random.Random(5))
    net.set_unreliable(drop_rate=0.3, delay=(0.0, 2.0))
    a, b = net.transport("a"), net.transport("b")
    for i in range(100):
        await a.send("b", msg(i))
    await trio.sleep(1)
    net.partition({"a"}, {"b"})
    for _ in range(5):
        await b.receive()
    await a.send("nobody", msg(999))
    stats = net.stats()
    assert stats["sent"] == 101
    assert stats["dropped"] == (stats["dropped_loss"] + stats["dropped_cut"]
                                + stats["dropped_no_transport"])
    assert stats["sent"] == (stats["delivered"] + stats["dropped"]
                             + stats["in_flight"] + stats["queued"])
    assert stats["delivered"] == 5
    assert stats["dropped_cut"] == 0  # nothing due yet has met the cut
    await trio.sleep(2)
    stats = net.stats()
    assert stats["in_flight"] == 0
    assert stats["dropped_cut"] > 0
    assert stats["sent"] == stats["delivered"] + stats["dropped"] + stats["queued"]
