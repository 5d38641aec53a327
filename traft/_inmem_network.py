"""An in-process network of transports with injectable faults, for tests
(the Trio counterpart of hashicorp's ``InmemTransport`` plus the partition
helpers its tests build around it).

Model: a switch. ``send`` stamps a message with a due time (now plus the
link's random delay) and puts it in flight towards the destination address.
When it becomes due it is *judged*: delivered into the receiving transport's
buffer if the link is up at that moment, silently dropped otherwise. So a
message sent across a cut may still arrive if the cut heals before it is due,
and one in flight when a cut is made is lost, whatever its sender has done
since.

No task runs per message. Judging happens lazily but always *as of* the due
time: every operation that changes what judging depends on (cuts, which
transport is live at an address) first judges all messages already due, and
a receiver judges its own due messages when it wakes. Because the link state
is constant between those operations, the outcome is the one a judge
standing at the due instant would give. A message due at the very instant of
a change is judged with the state before the change.

Time comes only from Trio's clock and randomness only from the network's
``rng``, so runs under ``trio.testing.MockClock`` are reproducible.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Iterable

import trio

from ._messages import Message
from ._types import ServerAddress

__all__ = ["InmemNetwork", "InmemTransport"]

# (due time, send sequence number, source address, message): the sequence
# number keeps equal due times FIFO and stops the heap comparing messages.
_InFlight = tuple[float, int, ServerAddress, Message]

_STAT_KEYS = ("sent", "delivered", "dropped", "dropped_loss", "dropped_cut",
              "dropped_no_transport", "duplicated")


def _check_address(address: object) -> ServerAddress:
    if not isinstance(address, str):
        raise TypeError(f"addresses are str, not {type(address).__name__}")
    return address


def _check_drop_rate(drop_rate: float) -> float:
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)):
        raise TypeError(f"drop_rate must be a number, not {type(drop_rate).__name__}")
    if not 0.0 <= drop_rate <= 1.0:
        raise ValueError(f"drop_rate must be within [0, 1], got {drop_rate}")
    return float(drop_rate)


def _check_delay(delay: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = delay
    except (TypeError, ValueError):
        raise TypeError(f"delay must be a (lo, hi) pair, got {delay!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
        raise ValueError(f"delay must satisfy 0 <= lo <= hi (finite), got {delay!r}")
    return float(lo), float(hi)


def _now() -> float | None:
    """Trio's clock, or None outside a Trio run (cuts may be configured
    before any node starts; then nothing can be in flight either)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return None


class InmemNetwork:
    """A set of in-process transports joined by a faulty switch.

    ``rng`` drives message loss and delay; it defaults to
    ``random.Random(0)`` so an unseeded network is still deterministic.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random(0)
        self._transports: dict[ServerAddress, InmemTransport] = {}
        # In flight per destination *address*, not per transport: a message
        # reaches whichever transport is live there when it becomes due.
        self._in_flight: dict[ServerAddress, list[_InFlight]] = {}
        self._seq = itertools.count()
        # Directed cuts (src, dst); partition/disconnect add both directions.
        self._cuts: set[tuple[ServerAddress, ServerAddress]] = set()
        # A set rather than expanded pairs so addresses that appear later are
        # cut from an isolated one too.
        self._isolated: set[ServerAddress] = set()
        self._drop_rate = 0.0
        self._delay = (0.0, 0.0)
        self._duplicate_rate = 0.0
        # Per directed link; a None field follows the global setting.
        self._links: dict[tuple[ServerAddress, ServerAddress],
                          tuple[float | None, tuple[float, float] | None]] = {}
        self._stats = dict.fromkeys(_STAT_KEYS, 0)

    @property
    def rng(self) -> random.Random:
        """The random source for loss and delay."""
        return self._rng

    # -- transports ------------------------------------------------------

    def transport(self, address: ServerAddress) -> InmemTransport:
        """A transport at ``address``. Calling it again for the same address
        replaces the previous transport: that one receives nothing more
        (messages it had received but not yet read are lost, as when a
        process dies); messages still in flight go to the new one."""
        _check_address(address)
        self._settle_all()
        old = self._transports.get(address)
        if old is not None:
            old._retire()
        t = InmemTransport(self, address)
        self._transports[address] = t
        return t

    def _detach(self, transport: InmemTransport) -> None:
        self._settle_all()
        if self._transports.get(transport.local_address) is transport:
            del self._transports[transport.local_address]

    # -- faults: cuts ----------------------------------------------------

    def partition(self, *groups: Iterable[ServerAddress]) -> None:
        """Cut every link between addresses of different groups, both ways.
        Adds to earlier cuts; addresses in no group are not affected."""
        sets: list[frozenset[ServerAddress]] = []
        for g in groups:
            if isinstance(g, str):  # partition("a", "b") would split letters
                raise TypeError("partition takes groups of addresses, e.g. partition({'a'}, {'b'})")
            sets.append(frozenset(_check_address(a) for a in g))
        seen: set[ServerAddress] = set()
        for s in sets:
            if seen & s:
                raise ValueError(f"address(es) {sorted(seen & s)} appear in more than one group")
            seen |= s
        self._settle_all()
        for i, a in enumerate(sets):
            for b in sets[i + 1:]:
                for x in a:
                    for y in b:
                        self._cuts.add((x, y))
                        self._cuts.add((y, x))

    def disconnect(self, a: ServerAddress, b: ServerAddress) -> None:
        """Cut the link between ``a`` and ``b`` in both directions."""
        _check_address(a)
        _check_address(b)
        self._settle_all()
        self._cuts.add((a, b))
        self._cuts.add((b, a))

    def disconnect_one_way(self, src: ServerAddress, dst: ServerAddress) -> None:
        """Cut only ``src`` -> ``dst``: ``dst`` can still reach ``src``."""
        _check_address(src)
        _check_address(dst)
        self._settle_all()
        self._cuts.add((src, dst))

    def isolate(self, address: ServerAddress) -> None:
        """Cut ``address`` from every other address, including ones that get
        a transport later. Its link to itself stays up."""
        _check_address(address)
        self._settle_all()
        self._isolated.add(address)

    def heal(self) -> None:
        """Remove every cut (loss and delay settings are kept)."""
        self._settle_all()
        self._cuts.clear()
        self._isolated.clear()

    def link_up(self, src: ServerAddress, dst: ServerAddress) -> bool:
        """Whether a message from ``src`` due now would reach ``dst``
        (cuts only; random loss is decided at send)."""
        if (src, dst) in self._cuts:
            return False
        return src == dst or (src not in self._isolated and dst not in self._isolated)

    # -- faults: loss and delay ------------------------------------------

    def set_unreliable(self, drop_rate: float = 0.0,
                       delay: tuple[float, float] = (0.0, 0.0), *,
                       duplicate_rate: float = 0.0) -> None:
        """Loss probability and uniform delay range for every link; each
        message draws both independently. ``duplicate_rate`` sends a second
        copy with its own delay (so duplicates may also arrive reordered).
        The defaults make it reliable."""
        self._drop_rate = _check_drop_rate(drop_rate)
        self._delay = _check_delay(delay)
        self._duplicate_rate = _check_drop_rate(duplicate_rate)

    def set_link(self, src: ServerAddress, dst: ServerAddress, *,
                 drop_rate: float | None = None,
                 delay: tuple[float, float] | None = None) -> None:
        """Override loss and/or delay on the directed link ``src`` -> ``dst``.
        A field left ``None`` follows :meth:`set_unreliable`; with both
        ``None`` the override is removed."""
        key = (_check_address(src), _check_address(dst))
        if drop_rate is None and delay is None:
            self._links.pop(key, None)
            return
        self._links[key] = (None if drop_rate is None else _check_drop_rate(drop_rate),
                            None if delay is None else _check_delay(delay))

    def _faults(self, src: ServerAddress, dst: ServerAddress) -> tuple[float, tuple[float, float]]:
        drop_rate, delay = self._links.get((src, dst), (None, None))
        return (self._drop_rate if drop_rate is None else drop_rate,
                self._delay if delay is None else delay)

    # -- stats -----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters since creation: ``sent``, ``delivered`` (returned by a
        ``receive``), ``dropped`` = ``dropped_loss`` + ``dropped_cut`` +
        ``dropped_no_transport``, and the current ``in_flight`` (not yet
        due) and ``queued`` (arrived, not yet received). ``sent`` always
        equals delivered + dropped + in_flight + queued."""
        self._settle_all()
        out = dict(self._stats)
        out["in_flight"] = sum(len(h) for h in self._in_flight.values())
        out["queued"] = sum(len(t._ready) for t in self._transports.values())
        return out

    def _drop(self, why: str, n: int = 1) -> None:
        self._stats["dropped_" + why] += n
        self._stats["dropped"] += n

    # -- the switch ------------------------------------------------------

    def _send(self, src: ServerAddress, dst: ServerAddress, message: Message) -> None:
        self._stats["sent"] += 1
        if dst not in self._transports:
            self._drop("no_transport")
            return
        drop_rate, (lo, hi) = self._faults(src, dst)
        # Draw only for faults that are on, so a reliable network leaves a
        # shared rng untouched.
        if drop_rate > 0.0 and self._rng.random() < drop_rate:
            self._drop("loss")
            return
        delay = lo if lo == hi else self._rng.uniform(lo, hi)
        now = trio.current_time()
        heapq.heappush(self._in_flight.setdefault(dst, []),
                       (now + delay, next(self._seq), src, message))
        if self._duplicate_rate > 0.0 and self._rng.random() < self._duplicate_rate:
            self._stats["sent"] += 1
            self._stats["duplicated"] += 1
            again = lo if lo == hi else self._rng.uniform(lo, hi)
            heapq.heappush(self._in_flight[dst], (now + again, next(self._seq), src, message))
        self._settle(dst, now)
        # Wake the receiver even if nothing is due yet: the new message may be
        # due sooner than what it is sleeping towards.
        self._transports[dst]._wake()

    def _settle(self, dst: ServerAddress, now: float) -> None:
        """Judge every message to ``dst`` due by ``now``, in (due, seq) order."""
        heap = self._in_flight.get(dst)
        if not heap:
            return
        receiver = self._transports.get(dst)
        arrived = False
        while heap and heap[0][0] <= now:
            _, _, src, message = heapq.heappop(heap)
            if receiver is None:
                self._drop("no_transport")
            elif not self.link_up(src, dst):
                self._drop("cut")
            else:
                receiver._ready.append(message)
                arrived = True
        if not heap:
            del self._in_flight[dst]
        if arrived and receiver is not None:
            receiver._wake()

    def _settle_all(self) -> None:
        now = _now()
        if now is None:
            return
        for dst in list(self._in_flight):
            self._settle(dst, now)

    def _next_due(self, dst: ServerAddress) -> float:
        heap = self._in_flight.get(dst)
        return heap[0][0] if heap else math.inf

    def __repr__(self) -> str:
        return f"<InmemNetwork {sorted(self._transports)}>"


class InmemTransport:
    """One address's endpoint on an :class:`InmemNetwork` (implements
    :class:`traft._transport.Transport`). Messages are passed by reference."""

    def __init__(self, network: InmemNetwork, address: ServerAddress) -> None:
        self._network = network
        self._address = address
        self._ready: deque[Message] = deque()  # arrived, not yet received
        self._lot = trio.lowlevel.ParkingLot()  # receivers waiting for news
        self._retired = False  # replaced by a newer transport at the address
        self._closed = False

    @property
    def local_address(self) -> ServerAddress:
        """The address others send to."""
        return self._address

    @property
    def network(self) -> InmemNetwork:
        return self._network

    async def send(self, target: ServerAddress, message: Message) -> None:
        """Put ``message`` in flight to ``target``; never blocks. Loss,
        cuts and unknown targets drop it silently."""
        # Cancellation is checked before anything happens and not after, so
        # a Cancelled from send always means "not sent".
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("transport is closed")
        _check_address(target)
        if not isinstance(message, Message):
            raise TypeError(f"expected a traft message, not {type(message).__name__}")
        self._network._send(self._address, target, message)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> Message:
        """The next message delivered to this address. On a replaced
        transport it waits until cancelled; on a closed one it raises
        ``trio.ClosedResourceError``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        net = self._network
        while True:
            if self._closed:
                raise trio.ClosedResourceError("transport is closed")
            if self._retired:
                await self._lot.park()  # only close() unparks us now
                continue
            net._settle(self._address, trio.current_time())
            if self._ready:
                message = self._ready.popleft()
                net._stats["delivered"] += 1
                # Shielded: once popped, the message must reach the caller.
                await trio.lowlevel.cancel_shielded_checkpoint()
                return message
            # Sleep until the earliest in-flight message is due or something
            # new is sent here (which may be due sooner), then look again.
            with trio.move_on_at(net._next_due(self._address)):
                await self._lot.park()

    def close(self) -> None:
        """Leave the network: the address has no live transport until
        ``network.transport(addr)`` is called again. Unread messages are
        lost; pending and later ``send``/``receive`` raise
        ``trio.ClosedResourceError``. Idempotent."""
        if self._closed:
            return
        if not self._retired:
            self._network._detach(self)
            self._discard_ready()
        self._closed = True
        self._lot.unpark_all()

    def _retire(self) -> None:
        self._retired = True
        self._discard_ready()
        self._lot.unpark_all()  # waiters re-check and park for good

    def _discard_ready(self) -> None:
        if self._ready:
            self._network._drop("no_transport", len(self._ready))
            self._ready.clear()

    def _wake(self) -> None:
        self._lot.unpark_all()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "replaced" if self._retired else "live"
        return f"<InmemTransport {self._address!r} {state}>"
