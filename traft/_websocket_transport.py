"""A Transport over WebSocket (trio-websocket) carrying CBOR messages.

The Trio counterpart of hashicorp's ``NetworkTransport``; the wire format is
``docs/protocol.md``. Everything runs in one nursery owned by
:func:`open_websocket_transport`::

    open_websocket_transport
    └── transport nursery (cancelled on exit)
        ├── listener            serve_listeners -> one handler per inbound connection
        │   └── inbound conn    TLS + HTTP upgrade (handshake_timeout), auth token,
        │                       then decode -> inbox, closing on the first bad message
        │                       (or, on the client path /client, the client_handler)
        └── link per (peer, lane), started lazily by send()
            └── outbound conn   queue -> socket; reconnect with back-off + jitter;
                                closed when idle

Messages are one-way (etcd style): responses travel on the responder's own
outbound connection, so a connection carries messages one way only and
pipelining comes for free. Each peer has a pool of two outbound connections,
one per *lane*: the bulk lane carries AppendEntries and InstallSnapshot, the
control lane everything else, so a heartbeat never queues behind a large
batch or a snapshot chunk, on the wire or in the receiver's inbox (which
hands out control messages first).

Back-pressure is bounded everywhere: each link queues at most
``send_window`` messages / ``send_window_bytes`` bytes (``send`` waits at
most ``send_timeout`` for room, then raises :class:`TransportError`); each
inbound connection buffers at most one message beyond the one being read,
never more than ``max_message_size`` bytes of it; the inbox holds at most
``receive_queue_size`` messages / ``receive_queue_bytes`` bytes per lane.

Third-party exceptions (trio-websocket, wsproto, ``OSError``, cbor2) are
translated at this boundary (httpcore style): ``send`` raises only
:class:`TransportError`, and a misbehaving peer only ever costs its own
connection, which is logged once with the peer's address.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    wrap_client_stream,
    wrap_server_stream,
)

from ._codec import PROTOCOL_VERSION, CloseCode, RemoteProtocolError, decode_message, encode_message
from ._errors import TransportError
from ._groups import collapse
from ._messages import AppendEntries, InstallSnapshot, Message
from ._types import ServerAddress

__all__ = ["CLIENT_RESOURCE", "CLIENT_SUBPROTOCOL", "ClientHandler", "WebSocketTransport",
           "open_websocket_transport"]

logger = logging.getLogger("traft.transport")

RESOURCE: Final = "/traft"
"""The HTTP path of the WebSocket endpoint."""

SUBPROTOCOL: Final = f"traft.v{PROTOCOL_VERSION}"
"""The ``Sec-WebSocket-Protocol`` both sides must agree on."""

CLIENT_RESOURCE: Final = "/client"
"""The HTTP path of the client protocol (``docs/protocol.md``, "Client
protocol"); served only when a ``client_handler`` is given."""

CLIENT_SUBPROTOCOL: Final = "traft.client.v1"
"""The ``Sec-WebSocket-Protocol`` of a client connection."""

ClientHandler = Callable[[WebSocketConnection, str], Awaitable[None]]
"""Serves one admitted client connection: ``(connection, peer_name)``. It
runs in the transport's nursery, is cancelled when the transport closes, and
the connection is closed when it returns."""

DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 2**20

_CONTROL: Final = 0
_BULK: Final = 1
_LANE_NAMES: Final = ("control", "bulk")
_BULK_TYPES: Final = (AppendEntries, InstallSnapshot)

# Servers never send messages on an inbound connection, so a client accepts
# only small ones (anything else is a broken peer).
_CLIENT_MAX_MESSAGE_SIZE: Final = 64 * 2**10
_RECEIVE_BUFFER: Final = 64 * 2**10
_CLOSE_GRACE: Final = 0.5  # seconds for a polite WebSocket close before aborting
_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})

_TRAFT_CLOSE_CODES: Final = frozenset({
    CloseCode.UNSUPPORTED_DATA, CloseCode.MESSAGE_TOO_BIG, CloseCode.MALFORMED,
    CloseCode.INVALID, CloseCode.UNSUPPORTED_VERSION, CloseCode.UNKNOWN_TYPE})


# ---------------------------------------------------------------------------
# Addresses


def parse_address(address: str, *, require_port: bool = True) -> tuple[str, int | None]:
    """Split ``"host:port"`` (``"[v6]:port"`` for IPv6) into host and port.

    With ``require_port=False`` a bare host is accepted and the port is None.
    Raises ``ValueError`` for anything else.
    """
    if not isinstance(address, str) or not address:
        raise ValueError(f"address must be a non-empty 'host:port' string, got {address!r}")
    port_text: str | None
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in address {address!r}")
        host, rest = address[1:end], address[end + 1:]
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"unexpected text after ']' in address {address!r}")
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    elif ":" in address:
        raise ValueError(f"write IPv6 addresses in brackets, e.g. '[::1]:7000', not {address!r}")
    else:
        host, port_text = address, None
    if not host:
        raise ValueError(f"address {address!r} has no host")
    if port_text is None:
        if require_port:
            raise ValueError(f"address {address!r} has no port (expected 'host:port')")
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address {address!r} has an invalid port {port_text!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_name(stream: trio.abc.Stream) -> str:
    sock_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(sock_stream, trio.SocketStream):
        try:
            host, port, *_ = sock_stream.socket.getpeername()
            return format_address(str(host), int(port))
        except (OSError, ValueError, TypeError):
            pass
    return "unknown peer"


def _short(exc: BaseException) -> str:
    """One line saying what went wrong, with the root cause if wrapped."""
    if isinstance(exc, ConnectionRejected):
        return f"handshake rejected with HTTP {exc.status_code}"
    if isinstance(exc, ConnectionClosed):
        return _close_text(exc.reason)
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    root: BaseException = exc
    for _ in range(10):  # follow wrapping (groups, __cause__) to the root cause
        if isinstance(root, BaseExceptionGroup) and root.exceptions:
            root = root.exceptions[0]
        elif root.__cause__ is not None:
            root = root.__cause__
        else:
            break
    if root is not exc and str(root) and str(root) not in text:
        text = f"{text}: {root}"
    return text if len(text) <= 200 else text[:197] + "..."


def _close_text(reason: CloseReason | None) -> str:
    if reason is None:
        return "connection closed"
    text = f"connection closed with code {reason.code}"
    return f"{text} ({reason.reason})" if reason.reason else text


def _close_reason_text(reason: str) -> str:
    """A WebSocket close reason is at most 123 bytes of UTF-8."""
    raw = reason.encode("utf-8")
    if len(raw) <= 123:
        return reason
    return raw[:120].decode("utf-8", "ignore") + "..."


def _errors_in(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first real error of a group from a connection's own nursery. If the
    group holds a Cancelled, that is re-raised: cancellation is never
    swallowed (what else failed while being cancelled is only logged)."""
    cancelled, rest = group.split(trio.Cancelled)
    if cancelled is not None:
        if rest is not None:
            logger.debug("errors while cancelled: %r", rest)
        raise cancelled
    assert rest is not None
    leaf: BaseException = rest
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


# ---------------------------------------------------------------------------
# The inbox: what receive() reads


class _Inbox:
    """Two bounded FIFO queues (control, bulk); ``get`` serves control first.

    Each queue is bounded by a message count and a byte count (measured on
    the wire); a message larger than the byte bound is still admitted into
    an empty queue, so any single message within ``max_message_size`` fits.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._queues: tuple[deque[tuple[Message, int]], deque[tuple[Message, int]]] = (
            deque(), deque())
        self._bytes = [0, 0]
        self._getters = trio.lowlevel.ParkingLot()
        self._putters = (trio.lowlevel.ParkingLot(), trio.lowlevel.ParkingLot())
        self._closed = False

    def _has_room(self, lane: int, size: int) -> bool:
        q = self._queues[lane]
        return not q or (len(q) < self._max_messages
                         and self._bytes[lane] + size <= self._max_bytes)

    async def put(self, lane: int, message: Message, size: int) -> bool:
        """Queue ``message``, waiting for room; False once closed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._closed and not self._has_room(lane, size):
            await self._putters[lane].park()
        if self._closed:
            return False
        self._queues[lane].append((message, size))
        self._bytes[lane] += size
        self._getters.unpark()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return True

    async def get(self) -> Message:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the transport is closed")
            for lane, q in enumerate(self._queues):
                if q:
                    message, size = q.popleft()
                    self._bytes[lane] -= size
                    self._putters[lane].unpark_all()
                    # Shielded: once popped, the message must reach the caller.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return message
            await self._getters.park()

    def close(self) -> None:
        self._closed = True
        for q in self._queues:
            q.clear()
        self._bytes = [0, 0]
        self._getters.unpark_all()
        for lot in self._putters:
            lot.unpark_all()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)


# ---------------------------------------------------------------------------
# Outbound links


class _WatchedStream(trio.abc.Stream):
    """A client stream that calls ``on_end`` when it ends (EOF or error) and
    remembers why; and the handle through which a link can abort its
    connection."""

    def __init__(self, inner: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
        self.inner = inner
        self.on_end: Callable[[], object] | None = None
        self.error: BaseException | None = None

    def why(self) -> str:
        return f": {_short(self.error)}" if self.error is not None else ""

    def _ended(self) -> None:
        if self.on_end is not None:
            self.on_end()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.error = exc
            self._ended()
            raise
        if not data:
            self._ended()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()



class _Link:
    """One outbound connection slot: (peer address, lane). Holds the send
    queue, the reconnect back-off state and, while connected, the stream."""

    def __init__(self, target: ServerAddress, lane: int, host: str, port: int) -> None:
        self.target = target
        self.lane = lane
        self.host = host
        self.port = port
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.work = trio.lowlevel.ParkingLot()  # the pump waits here for messages
        self.space = trio.lowlevel.ParkingLot()  # senders wait here for room
        self.alive = True  # False once retired: a new send makes a new link
        self.failures = 0  # consecutive failed connection attempts
        self.retry_at = -math.inf  # Trio time before which sends fail fast
        self.last_error = ""
        self.stream: _WatchedStream | None = None  # while connected
        self.closed_by_peer: CloseReason | None = None
        self.peer_closed = False

    @property
    def name(self) -> str:
        return f"{self.target} ({_LANE_NAMES[self.lane]})"

    def has_room(self, size: int, window: int, window_bytes: int) -> bool:
        return not self.queue or (len(self.queue) < window
                                  and self.queued_bytes + size <= window_bytes)

    def push(self, data: bytes) -> None:
        self.queue.append(data)
        self.queued_bytes += len(data)
        self.work.unpark_all()

    def pop(self) -> bytes:
        data = self.queue.popleft()
        self.queued_bytes -= len(data)
        self.space.unpark_all()
        return data

    def drop_queue(self) -> int:
        n = len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        self.space.unpark_all()
        return n


_IDLE: Final = "idle"


# ---------------------------------------------------------------------------
# The transport


class WebSocketTransport:
    """A :class:`traft.Transport` over WebSocket; made by
    :func:`open_websocket_transport`, which owns its tasks.

    ``send`` queues the encoded message on the target's link and returns;
    it raises :class:`TransportError` when the target is unreachable (in
    back-off after a failed connection attempt), when the link's window
    stays full for ``send_timeout``, or for an invalid address. ``receive``
    returns the next message from any peer, heartbeats and other control
    messages before queued AppendEntries/InstallSnapshot.
    """

    def __init__(
        self,
        *,
        local_address: ServerAddress,
        ssl_context: ssl.SSLContext | None,
        client_ssl_context: ssl.SSLContext | None,
        auth_token: bytes | None,
        max_message_size: int,
        send_timeout: float,
        connect_timeout: float,
        handshake_timeout: float,
        idle_timeout: float,
        max_connections: int,
        send_window: int,
        send_window_bytes: int,
        receive_queue_size: int,
        receive_queue_bytes: int,
        backoff_initial: float,
        backoff_max: float,
        rng: random.Random,
        client_handler: ClientHandler | None = None,
    ) -> None:
        self._local_address = local_address
        self._client_handler = client_handler
        self._ssl_context = ssl_context
        self._client_ssl_context = client_ssl_context
        self._max_message_size = max_message_size
        self._send_timeout = send_timeout
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._send_window = send_window
        self._send_window_bytes = send_window_bytes
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._rng = rng
        if auth_token is None:
            self._client_headers: list[tuple[bytes, bytes]] = []
            self._token_digest: bytes | None = None
        else:
            value = b"Bearer " + auth_token
            self._client_headers = [(b"Authorization", value)]
            self._token_digest = hashlib.sha256(value).digest()
        self._inbox = _Inbox(receive_queue_size, receive_queue_bytes)
        self._links: dict[tuple[ServerAddress, int], _Link] = {}
        self._inbound: set[WebSocketConnection] = set()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._stats: dict[str, int] = dict.fromkeys((
            "sent", "sent_bytes", "received", "received_bytes", "send_failures",
            "send_timeouts", "dropped", "connects", "connect_failures",
            "connections_accepted", "connections_refused", "bad_connections",
            "bad_messages"), 0)

    # -- the Transport protocol -------------------------------------------

    @property
    def local_address(self) -> ServerAddress:
        """The address peers use to reach this transport: ``advertise`` if
        given, else ``host:port`` with the port actually bound."""
        return self._local_address

    async def send(self, target: ServerAddress, message: Message) -> None:
        """Queue ``message`` for ``target``; see the class docstring.

        Cancellation is checked before anything happens and not after, so a
        Cancelled from ``send`` means the message was not queued.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise TransportError("the transport is closed")
        data = encode_message(message)
        lane = _BULK if isinstance(message, _BULK_TYPES) else _CONTROL
        link = self._link(target, lane)
        self._check_reachable(link)
        window, window_bytes = self._send_window, self._send_window_bytes
        if not link.has_room(len(data), window, window_bytes):
            with trio.move_on_after(self._send_timeout) as scope:
                while (link.alive and not self._closed
                       and not link.has_room(len(data), window, window_bytes)):
                    await link.space.park()
            if scope.cancelled_caught:
                self._stats["send_timeouts"] += 1
                raise TransportError(
                    f"send window to {link.name} stayed full for {self._send_timeout}s")
            if self._closed or not link.alive:
                raise TransportError(f"connection to {link.name} closed")
            self._check_reachable(link)
        link.push(data)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> Message:
        """The next message from any peer; raises ``trio.ClosedResourceError``
        once the transport is closed."""
        return await self._inbox.get()

    # -- introspection ---------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters since the transport opened (``sent``/``received`` count
        messages, ``*_bytes`` their encoded size), plus the current number of
        outbound ``links``, ``inbound`` connections and ``queued`` messages."""
        out = dict(self._stats)
        out["links"] = len(self._links)
        out["inbound"] = len(self._inbound)
        out["queued"] = len(self._inbox)
        return out

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<WebSocketTransport {self._local_address} {state}>"

    # -- outbound --------------------------------------------------------

    def _link(self, target: ServerAddress, lane: int) -> _Link:
        link = self._links.get((target, lane))
        if link is not None:
            return link
        try:
            host, port = parse_address(target)
        except ValueError as exc:
            raise TransportError(f"cannot send to {target!r}: {exc}") from None
        assert port is not None
        if len(self._links) >= 2 * self._max_connections:
            # Bounded like the inbound side: a peer that makes us answer
            # many made-up src_addresses cannot make us open unlimited links.
            raise TransportError(f"cannot send to {target}: already {len(self._links)} "
                                 f"outbound connections (2 * max_connections)")
        link = _Link(target, lane, host, port)
        assert self._nursery is not None
        self._links[(target, lane)] = link
        self._nursery.start_soon(self._run_link, link)
        return link

    def _check_reachable(self, link: _Link) -> None:
        now = trio.current_time()
        if now < link.retry_at:
            self._stats["send_failures"] += 1
            raise TransportError(
                f"{link.name} is unreachable ({link.last_error}); "
                f"next attempt in {link.retry_at - now:.3f}s")

    def _retire(self, link: _Link) -> None:
        link.alive = False
        if self._links.get((link.target, link.lane)) is link:
            del self._links[(link.target, link.lane)]
        self._stats["dropped"] += link.drop_queue()

    def _backoff(self, failures: int) -> float:
        """Exponential back-off with jitter: half the delay is fixed, half
        drawn from the injected rng (so peers restarting together spread)."""
        delay = min(self._backoff_max, self._backoff_initial * 2.0 ** min(failures - 1, 60))
        return delay * (0.5 + 0.5 * self._rng.random())

    async def _run_link(self, link: _Link) -> None:
        try:
            while True:
                if not link.queue:
                    with trio.move_on_after(self._idle_timeout / 2):
                        while not link.queue:
                            await link.work.park()
                    if not link.queue:
                        return  # idle: retired in finally
                established, result = await self._connect_and_pump(link)
                if result is _IDLE:
                    return
                assert isinstance(result, BaseException)
                self._link_failed(link, established, result)
                if link.retry_at > trio.current_time():
                    await trio.sleep_until(link.retry_at)
        finally:
            self._retire(link)

    def _link_failed(self, link: _Link, established: bool, exc: BaseException) -> None:
        dropped = link.drop_queue()
        self._stats["dropped"] += dropped
        text = _short(exc)
        link.last_error = text
        if established:
            # A working connection broke: reconnect at once on the next
            # send; only failing attempts back off.
            link.failures = 0
            link.retry_at = -math.inf
            reason = exc.reason if isinstance(exc, ConnectionClosed) else None
            if reason is not None and reason.code in _TRAFT_CLOSE_CODES:
                logger.warning("%s: %s closed our connection: %s",
                               self._local_address, link.name, text)
            else:
                logger.debug("%s: connection to %s lost: %s (%d queued messages dropped)",
                             self._local_address, link.name, text, dropped)
            return
        link.failures += 1
        self._stats["connect_failures"] += 1
        delay = self._backoff(link.failures)
        link.retry_at = trio.current_time() + delay
        if link.failures == 1:
            logger.warning("%s: cannot connect to %s: %s; retrying with back-off",
                           self._local_address, link.name, text)
        else:
            logger.debug("%s: attempt %d to connect to %s failed: %s; next in %.3fs",
                         self._local_address, link.failures, link.name, text, delay)

    async def _open_stream(self, link: _Link) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        stream = await trio.open_tcp_stream(link.host, link.port)
        if self._client_ssl_context is None:
            return stream
        tls = trio.SSLStream(stream, self._client_ssl_context, server_hostname=link.host,
                             https_compatible=True)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    async def _connect_and_pump(self, link: _Link) -> tuple[bool, object]:
        """Connect, then send from the link's queue until idle or broken.
        Returns (whether the connection was established, _IDLE or the error)."""
        established = False
        stream: _WatchedStream | None = None
        link.peer_closed = False
        link.closed_by_peer = None
        try:
            with trio.fail_after(self._connect_timeout):
                stream = _WatchedStream(await self._open_stream(link))
            async with trio.open_nursery() as nursery:
                # trio-websocket waits for the server's answer until the
                # deadline even when the server has already hung up (TLS
                # failure, overload): give up as soon as the stream ends.
                with trio.fail_after(self._connect_timeout), \
                        trio.CancelScope() as handshake:
                    stream.on_end = handshake.cancel
                    conn = await wrap_client_stream(
                        nursery, stream,  # type: ignore[arg-type]  # any trio Stream works
                        format_address(link.host, link.port), RESOURCE,
                        subprotocols=[SUBPROTOCOL], extra_headers=list(self._client_headers),
                        message_queue_size=1, max_message_size=_CLIENT_MAX_MESSAGE_SIZE,
                        receive_buffer_size=_RECEIVE_BUFFER)
                stream.on_end = None
                if handshake.cancelled_caught:
                    nursery.cancel_scope.cancel()
                    return False, TransportError("the server closed the connection during "
                                                 "the handshake" + stream.why())
                if conn.subprotocol != SUBPROTOCOL:
                    nursery.cancel_scope.cancel()
                    return False, TransportError(
                        f"server chose subprotocol {conn.subprotocol!r}, not {SUBPROTOCOL!r}")
                established = True
                link.stream = stream
                self._stats["connects"] += 1
                if link.failures:
                    logger.info("%s: connected to %s after %d failed attempts",
                                self._local_address, link.name, link.failures)
                link.failures = 0
                link.retry_at = -math.inf
                nursery.start_soon(self._watch, link, conn)
                result = await self._pump(link, conn)
                if result is _IDLE:
                    with trio.move_on_after(_CLOSE_GRACE):
                        await conn.aclose(CloseCode.NORMAL, "idle")
                nursery.cancel_scope.cancel()
            return established, result
        except BaseExceptionGroup as group:
            return established, _errors_in(group)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                HandshakeError, ConnectionClosed) as exc:
            return established, exc
        except Exception as exc:  # a bug in a dependency must not kill the transport
            logger.debug("unexpected error on %s", link.name, exc_info=True)
            return established, exc
        finally:
            link.stream = None
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _watch(self, link: _Link, conn: WebSocketConnection) -> None:
        """Notice promptly when the peer closes the connection, so the next
        message goes out on a fresh one instead of being lost."""
        try:
            while True:
                await conn.get_message()  # a traft server never sends any: ignore
        except ConnectionClosed as exc:
            link.closed_by_peer = exc.reason
        except Exception as exc:
            logger.debug("watcher of %s: %r", link.name, exc)
        link.peer_closed = True
        link.work.unpark_all()

    async def _pump(self, link: _Link, conn: WebSocketConnection) -> object:
        stats = self._stats
        while True:
            if link.peer_closed:
                return ConnectionClosed(link.closed_by_peer)
            if link.queue:
                # One cancel scope for a run of writes, its deadline moved
                # with each message: a write stalled for send_timeout means
                # the peer (or the path to it) is gone.
                with trio.CancelScope() as stall:
                    while link.queue and not link.peer_closed:
                        data = link.pop()
                        stall.deadline = trio.current_time() + self._send_timeout
                        try:
                            await conn.send_message(data)
                        except (ConnectionClosed, trio.BrokenResourceError,
                                trio.ClosedResourceError) as exc:
                            return exc
                        stats["sent"] += 1
                        stats["sent_bytes"] += len(data)
                if stall.cancelled_caught:
                    return TransportError(f"write stalled for {self._send_timeout}s")
                continue
            with trio.move_on_after(self._idle_timeout / 2) as idle:
                await link.work.park()
            if idle.cancelled_caught and not link.queue and not link.peer_closed:
                self._retire(link)  # new sends make a new link from now on
                return _IDLE

    # -- inbound ---------------------------------------------------------

    def _log_bad(self, peer: str, what: str) -> None:
        self._stats["bad_connections"] += 1
        logger.warning("%s: %s: %s", self._local_address, peer, what)

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        """serve_listeners' handler: whatever one connection does, it never
        escapes into the listener (which would stop the server)."""
        peer = _peer_name(stream)
        try:
            await self._serve_stream(stream, peer)
        except BaseExceptionGroup as group:
            exc = _errors_in(group)
            if exc is not None:
                self._log_bad(peer, f"connection failed: {_short(exc)}")
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("%s: connection from %s lost: %s", self._local_address, peer, _short(exc))
        except Exception as exc:
            self._log_bad(peer, f"connection failed: {_short(exc)}")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_stream(self, stream: trio.abc.Stream, peer: str) -> None:
        if isinstance(stream, trio.SSLStream):
            with trio.move_on_after(self._handshake_timeout) as scope:
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    self._log_bad(peer, f"TLS handshake failed: {_short(exc)}")
                    return
            if scope.cancelled_caught:
                self._log_bad(peer, f"no TLS handshake within {self._handshake_timeout}s")
                return
        async with trio.open_nursery() as nursery:
            try:
                with trio.move_on_after(self._handshake_timeout) as scope:
                    request = await wrap_server_stream(
                        nursery, stream, message_queue_size=1,
                        max_message_size=self._max_message_size,
                        receive_buffer_size=_RECEIVE_BUFFER)
                if scope.cancelled_caught:
                    self._log_bad(peer, f"no WebSocket handshake within "
                                        f"{self._handshake_timeout}s")
                    return
                conn = await self._admit(request, peer)
                if conn is None:
                    return
                self._stats["connections_accepted"] += 1
                self._inbound.add(conn)
                try:
                    if conn.subprotocol == CLIENT_SUBPROTOCOL and self._client_handler:
                        await self._client_handler(conn, peer)
                    else:
                        await self._read(conn, peer)
                finally:
                    self._inbound.discard(conn)
            finally:
                nursery.cancel_scope.cancel()

    async def _admit(self, request: WebSocketRequest, peer: str) -> WebSocketConnection | None:
        """Check the handshake before anything is decoded: path, auth token
        (constant-time), protocol version, connection limit. The client path
        exists only with a client handler, and passes the same checks."""
        client = request.path == CLIENT_RESOURCE and self._client_handler is not None
        if request.path != RESOURCE and not client:
            return await self._refuse(request, peer, 404, f"unknown resource {request.path[:64]!r}")
        if self._token_digest is not None:
            presented = next((v for k, v in request.headers if k.lower() == b"authorization"),
                             None)
            digest = hashlib.sha256(presented if presented is not None else b"").digest()
            if not hmac.compare_digest(digest, self._token_digest) or presented is None:
                return await self._refuse(request, peer, 403, "missing or wrong auth token")
        subprotocol = CLIENT_SUBPROTOCOL if client else SUBPROTOCOL
        if subprotocol not in request.proposed_subprotocols:
            offered = ",".join(request.proposed_subprotocols)[:64]
            return await self._refuse(
                request, peer, 400,
                f"no supported protocol version offered (got {offered!r}, speak {subprotocol})")
        if len(self._inbound) >= self._max_connections:
            return await self._refuse(request, peer, 503,
                                      f"too many connections ({self._max_connections})")
        with trio.move_on_after(self._handshake_timeout):
            return await request.accept(subprotocol=subprotocol)
        self._log_bad(peer, "handshake stalled")
        return None

    async def _refuse(self, request: WebSocketRequest, peer: str, status: int,
                      why: str) -> WebSocketConnection | None:
        """Reject the handshake (logged once); always None, for ``_admit``."""
        self._stats["connections_refused"] += 1
        self._log_bad(peer, f"refused connection (HTTP {status}): {why}")
        with trio.move_on_after(_CLOSE_GRACE):
            try:
                await request.reject(
                    status, body=why.encode("utf-8", "replace"),
                    extra_headers=[(b"Content-Type", b"text/plain; charset=utf-8")])
            except ConnectionClosed:
                pass
        return None

    async def _read(self, conn: WebSocketConnection, peer: str) -> None:
        stats = self._stats
        # One cancel scope for the connection's life; its deadline is
        # idle_timeout after the last message, and off while we wait for
        # room in the inbox (back-pressure is not idleness).
        with trio.CancelScope() as idle:
            while True:
                idle.deadline = trio.current_time() + self._idle_timeout
                try:
                    data = await conn.get_message()
                except ConnectionClosed as exc:
                    reason = exc.reason
                    if reason is not None and reason.code == CloseCode.MESSAGE_TOO_BIG:
                        stats["bad_messages"] += 1
                        self._log_bad(peer, f"message larger than {self._max_message_size} "
                                            f"bytes; connection closed")
                    else:
                        logger.debug("%s: %s: %s", self._local_address, peer,
                                     _close_text(reason))
                    return
                idle.deadline = math.inf
                if isinstance(data, str):
                    stats["bad_messages"] += 1
                    self._log_bad(peer, "text message (traft messages are binary); "
                                        "connection closed")
                    await self._close(conn, CloseCode.UNSUPPORTED_DATA, "binary messages only")
                    return
                try:
                    message = decode_message(data)
                except RemoteProtocolError as exc:
                    stats["bad_messages"] += 1
                    self._log_bad(peer, f"bad message ({exc}); connection closed with "
                                        f"{exc.code}")
                    await self._close(conn, exc.code, exc.reason)
                    return
                stats["received"] += 1
                stats["received_bytes"] += len(data)
                lane = _BULK if isinstance(message, _BULK_TYPES) else _CONTROL
                if not await self._inbox.put(lane, message, len(data)):
                    return
        self._log_bad(peer, f"idle for {self._idle_timeout}s; connection closed")
        await self._close(conn, CloseCode.NORMAL, "idle timeout")

    async def _close(self, conn: WebSocketConnection, code: int, reason: str) -> None:
        """Close with ``code`` (best effort: the connection is ending anyway,
        and it has been logged already)."""
        with trio.move_on_after(_CLOSE_GRACE):
            try:
                await conn.aclose(code, _close_reason_text(reason))
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _shut(self) -> None:
        self._closed = True
        self._inbox.close()
        for link in list(self._links.values()):
            self._retire(link)


# ---------------------------------------------------------------------------
# The public constructor


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _token_bytes(auth_token: str | bytes | None) -> bytes | None:
    if auth_token is None:
        return None
    raw = auth_token.encode("ascii", "replace") if isinstance(auth_token, str) else auth_token
    if (not isinstance(raw, bytes) or not 0 < len(raw) <= 1024
            or any(not 0x21 <= b <= 0x7E for b in raw)):
        raise ValueError("auth_token must be 1 to 1024 printable ASCII characters "
                         "without spaces")
    return raw


@asynccontextmanager
async def open_websocket_transport(
    host: str,
    port: int,
    *,
    advertise: ServerAddress | None = None,
    ssl_context: ssl.SSLContext | None = None,
    client_ssl_context: ssl.SSLContext | None = None,
    auth_token: str | bytes | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    send_timeout: float = 5.0,
    connect_timeout: float = 5.0,
    handshake_timeout: float = 10.0,
    idle_timeout: float = 60.0,
    max_connections: int = 64,
    send_window: int = 64,
    send_window_bytes: int = 16 * 2**20,
    receive_queue_size: int = 256,
    receive_queue_bytes: int = 32 * 2**20,
    backoff_initial: float = 0.05,
    backoff_max: float = 2.0,
    rng: random.Random | None = None,
    client_handler: ClientHandler | None = None,
) -> AsyncIterator[WebSocketTransport]:
    """Listen on ``host:port`` and yield a :class:`WebSocketTransport`.

    Args:
      host, port: where to listen. ``port=0`` picks a free port; the real one
        is in ``transport.local_address``.
      advertise: the address peers should use, ``"host:port"``, or just
        ``"host"`` to announce the bound port with another host name.
        Required when ``host`` is a wildcard (``0.0.0.0``, ``::``): a node
        must never announce an address nobody can reach.
      ssl_context: serve TLS with this server-side context (for mutual TLS,
        set ``verify_mode = ssl.CERT_REQUIRED`` and load the cluster CA).
      client_ssl_context: the client-side context for outbound connections
        (present the node's certificate here for mutual TLS). Defaults to
        ``ssl.create_default_context()`` when ``ssl_context`` is given, and
        to plain TCP otherwise.
      auth_token: a shared cluster secret. Outbound connections present it
        in the handshake; inbound ones that do not are refused with HTTP 403
        before any message is read (constant-time comparison). Send it only
        over TLS outside a trusted network.
      max_message_size: largest message accepted, in bytes; a peer sending
        more is disconnected (close code 1009) before the excess is buffered.
      send_timeout: longest ``send`` waits for room in a link's window, and
        longest a single write may stall before the connection is dropped.
      connect_timeout: bound on TCP connect + TLS + WebSocket handshake out.
      handshake_timeout: bound on TLS + WebSocket handshake of an inbound
        connection; a half-open one is closed after it.
      idle_timeout: an inbound connection silent this long is closed;
        outbound connections close themselves after half of it unused.
      max_connections: most inbound WebSocket connections at once (503
        after), and half the most outbound ones (two per peer).
      send_window, send_window_bytes: per link, most messages / encoded bytes
        queued and not yet written (a larger single message still goes
        through alone).
      receive_queue_size, receive_queue_bytes: per lane, most messages /
        bytes decoded but not yet taken by ``receive``; a full inbox stops
        reading from sockets (back-pressure on the senders).
      backoff_initial, backoff_max: reconnect back-off after failed
        attempts: ``initial * 2**(n-1)`` capped at ``max``, times a jitter
        in [0.5, 1).
      rng: the jitter's randomness (default: a fresh ``random.Random()``).
      client_handler: serves the client protocol on the same port: a
        connection to ``/client`` offering ``traft.client.v1`` that passes
        the same auth-token and connection-limit checks as a peer's is
        handed to ``client_handler(connection, peer_name)`` instead of the
        Raft decoder (``traft.kv`` serves its key-value API this way).
        Without it, ``/client`` is refused with 404 like any unknown path.

    Raises:
      ValueError: for a bad argument (e.g. a wildcard host without advertise).
      TransportError: when the address cannot be bound.

    Leaving the block closes every connection and stops every task;
    ``receive`` then raises ``trio.ClosedResourceError`` and ``send``
    :class:`TransportError`.
    """
    if not isinstance(host, str):
        raise ValueError(f"host must be a string, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    if advertise is not None:
        adv_host, adv_port = parse_address(advertise, require_port=False)
    elif host.strip() in _WILDCARDS:
        raise ValueError(
            f"host {host!r} is a wildcard address, which peers cannot connect to: "
            f"pass advertise='reachable-host:port' (or just 'reachable-host')")
    token = _token_bytes(auth_token)
    for name, value in (("send_timeout", send_timeout), ("connect_timeout", connect_timeout),
                        ("handshake_timeout", handshake_timeout),
                        ("idle_timeout", idle_timeout), ("backoff_initial", backoff_initial),
                        ("backoff_max", backoff_max)):
        _check_positive(name, value)
    for name, count in (("max_message_size", max_message_size),
                        ("max_connections", max_connections), ("send_window", send_window),
                        ("send_window_bytes", send_window_bytes),
                        ("receive_queue_size", receive_queue_size),
                        ("receive_queue_bytes", receive_queue_bytes)):
        _check_count(name, count)
    if ssl_context is not None and client_ssl_context is None:
        client_ssl_context = ssl.create_default_context()

    try:
        listeners: list[trio.SocketListener] = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise TransportError(f"cannot listen on {format_address(host, port)}: {exc}") from exc
    bound_port = listeners[0].socket.getsockname()[1]
    # A name like "localhost" may give one listener per address family; with
    # port 0 each gets its own port, and peers can only be told one.
    extra = [listener for listener in listeners[1:]
             if listener.socket.getsockname()[1] != bound_port]
    for listener in extra:
        await trio.aclose_forcefully(listener)
    kept = [listener for listener in listeners if listener not in extra]
    served: list[trio.abc.Listener[trio.abc.Stream]] = (
        list(kept) if ssl_context is None else
        [trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in kept])

    if advertise is None:
        local_address = format_address(host.strip("[]"), bound_port)
    else:
        local_address = advertise if adv_port is not None else format_address(adv_host, bound_port)

    transport = WebSocketTransport(
        local_address=local_address, ssl_context=ssl_context,
        client_ssl_context=client_ssl_context, auth_token=token,
        max_message_size=max_message_size, send_timeout=send_timeout,
        connect_timeout=connect_timeout, handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout, max_connections=max_connections,
        send_window=send_window, send_window_bytes=send_window_bytes,
        receive_queue_size=receive_queue_size, receive_queue_bytes=receive_queue_bytes,
        backoff_initial=backoff_initial, backoff_max=backoff_max,
        rng=rng if rng is not None else random.Random(), client_handler=client_handler)
    try:
        async with trio.open_nursery() as nursery:
            transport._nursery = nursery
            await nursery.start(trio.serve_listeners, transport._handle_stream, served)
            logger.debug("%s: listening", local_address)
            try:
                yield transport
            finally:
                transport._shut()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise collapse(group) from None
    finally:
        for served_listener in served:
            await trio.aclose_forcefully(served_listener)
