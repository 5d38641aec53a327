"""The WebSocket transport over real loopback sockets.

trio-websocket's test rules: loopback only, servers on port 0, the real
clock, and an absolute ``fail_after`` on every test. Timeouts are shrunk so
failures are detected in fractions of a second.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cbor2
import pytest
import trio
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected, open_websocket

from traft import (
    Config,
    Configuration,
    InmemSnapshotStore,
    InmemStore,
    RaftState,
    Server,
    TransportError,
    open_raft,
)
from traft._codec import CloseCode, RemoteProtocolError, decode_message, encode_message
from traft._messages import AppendEntries, Heartbeat, InstallSnapshot, Message, TimeoutNow
from traft._node import Raft
from traft._transport import Transport
from traft._types import Log
from traft._websocket_transport import (
    WebSocketTransport,
    format_address,
    open_websocket_transport,
    parse_address,
)
from traft.testing import RecordingFSM

from .test_codec import SAMPLES, cbor_values, messages

TOKEN = "cluster-secret"
LOGGER = "traft.transport"

F = TypeVar("F", bound=Callable[..., Awaitable[None]])


def fail_after(seconds: float) -> Callable[[F], F]:
    """trio-websocket's rule: every I/O test gets an absolute deadline."""
    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(seconds):
                await fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorator


FAST: dict[str, Any] = dict(connect_timeout=1.0, handshake_timeout=1.0, send_timeout=1.0,
                            backoff_initial=0.01, backoff_max=0.1)


def transport(port: int = 0, **kwargs: Any) -> AbstractAsyncContextManager[WebSocketTransport]:
    options = dict(FAST, auth_token=TOKEN, rng=random.Random(7))
    options.update(kwargs)
    return open_websocket_transport("127.0.0.1", port, **options)


def hb(seq: int = 1, src_address: str = "127.0.0.1:1") -> Heartbeat:
    return Heartbeat(term=1, src="a", src_address=src_address, dst="b", leader_commit=0, seq=seq)


def ae(n: int, size: int = 16) -> AppendEntries:
    return AppendEntries(term=1, src="a", src_address="127.0.0.1:1", dst="b", prev_log_index=n,
                         prev_log_term=1, leader_commit=0,
                         entries=(Log(n + 1, 1, data=bytes(size)),))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def eventually(predicate: Callable[[], bool], poll: float = 0.01) -> None:
    while not predicate():
        await trio.sleep(poll)


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.WARNING and text in r.getMessage()]


@asynccontextmanager
async def raw_client(address: str, *, token: str | None = TOKEN, resource: str = "/traft",
                     subprotocols: tuple[str, ...] = ("traft.v1",)) -> AsyncIterator[Any]:
    """A bare trio-websocket client, to say things a traft peer never would."""
    host, port = parse_address(address)
    assert port is not None
    headers = [] if token is None else [(b"Authorization", f"Bearer {token}".encode())]
    async with open_websocket(host, port, resource, use_ssl=False,
                              subprotocols=list(subprotocols), extra_headers=headers,
                              connect_timeout=2, disconnect_timeout=2) as ws:
        yield ws


async def send_bad(address: str, payload: bytes | str) -> tuple[CloseReason, str]:
    """Send one message and return how the server closed the connection, and
    the client's own address as the server sees it."""
    async with raw_client(address) as ws:
        await ws.send_message(payload)
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        reason = info.value.reason
        assert reason is not None
        return reason, format_address(str(ws.local.address), ws.local.port)


# -- addresses and arguments -------------------------------------------------------


def test_parse_address() -> None:
    assert parse_address("10.0.0.1:7000") == ("10.0.0.1", 7000)
    assert parse_address("node-1.example:80") == ("node-1.example", 80)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert parse_address("[::1]", require_port=False) == ("::1", None)
    assert parse_address("example.org", require_port=False) == ("example.org", None)
    for bad in ["", "host", ":80", "::1:80", "h:0", "h:65536", "h:x", "[::1", "[::1]x", "h:-1"]:
        with pytest.raises(ValueError):
            parse_address(bad)
    assert format_address("::1", 5) == "[::1]:5"
    assert format_address("h", 5) == "h:5"


@fail_after(5)
async def test_local_address_is_the_bound_port_or_the_advertised_one() -> None:
    async with open_websocket_transport("127.0.0.1", 0) as t:
        host, port = parse_address(t.local_address)
        assert host == "127.0.0.1" and port is not None and port > 0
        assert isinstance(t, Transport)
    async with open_websocket_transport("0.0.0.0", 0, advertise="node1.example:7000") as t:
        assert t.local_address == "node1.example:7000"
    async with open_websocket_transport("0.0.0.0", 0, advertise="node1.example") as t:
        host, port = parse_address(t.local_address)
        assert host == "node1.example" and port is not None and port > 0
    async with open_websocket_transport("::1", 0) as t:
        assert t.local_address.startswith("[::1]:")


@pytest.mark.parametrize("host, kwargs, match", [
    ("0.0.0.0", {}, "advertise"),
    ("::", {}, "advertise"),
    ("127.0.0.1", {"advertise": "a:b:c"}, "brackets"),
    ("127.0.0.1", {"auth_token": "has space"}, "auth_token"),
    ("127.0.0.1", {"auth_token": ""}, "auth_token"),
    ("127.0.0.1", {"auth_token": "x" * 1025}, "auth_token"),
    ("127.0.0.1", {"max_message_size": 0}, "max_message_size"),
    ("127.0.0.1", {"send_timeout": -1}, "send_timeout"),
    ("127.0.0.1", {"send_window": True}, "send_window"),
])
async def test_bad_arguments_are_value_errors(host: str, kwargs: dict[str, Any],
                                              match: str) -> None:
    with pytest.raises(ValueError, match=match):
        async with open_websocket_transport(host, 0, **kwargs):
            pass  # pragma: no cover


@fail_after(5)
async def test_a_port_in_use_is_a_transport_error() -> None:
    async with open_websocket_transport("127.0.0.1", 0) as t:
        _, port = parse_address(t.local_address)
        assert port is not None
        with pytest.raises(TransportError, match="cannot listen"):
            async with open_websocket_transport("127.0.0.1", port):
                pass  # pragma: no cover


# -- delivery ---------------------------------------------------------------------------


@fail_after(10)
async def test_every_message_type_crosses_the_wire() -> None:
    async with transport() as a, transport() as b:
        for m in SAMPLES:
            await a.send(b.local_address, m)
        got = [await b.receive() for _ in SAMPLES]
        assert sorted(got, key=repr) == sorted(SAMPLES, key=repr)
        assert a.stats()["sent"] == len(SAMPLES)
        assert b.stats()["received"] == len(SAMPLES)


@fail_after(10)
async def test_many_messages_are_pipelined_in_order_on_one_connection() -> None:
    async with transport() as a, transport() as b:
        async with trio.open_nursery() as nursery:
            async def produce() -> None:
                for i in range(2000):
                    await a.send(b.local_address, ae(i))
            nursery.start_soon(produce)
            got = [await b.receive() for _ in range(2000)]
        assert [m.prev_log_index for m in got] == list(range(2000))  # type: ignore[attr-defined]
        stats = a.stats()
        assert stats["connects"] == 1 and stats["sent"] == 2000
        assert b.stats()["connections_accepted"] == 1


@fail_after(10)
async def test_heartbeats_never_queue_behind_bulk_messages() -> None:
    async with transport() as a, transport() as b:
        for i in range(20):
            await a.send(b.local_address, ae(i, size=64 * 1024))
        await a.send(b.local_address, hb())
        await eventually(lambda: b.stats()["received"] == 21)
        # Own connection on the wire, and first out of the receiver's inbox.
        assert a.stats()["connects"] == 2
        assert isinstance(await b.receive(), Heartbeat)
        assert [type(await b.receive()) for _ in range(20)] == [AppendEntries] * 20


@fail_after(10)
async def test_inbox_is_bounded_and_pushes_back_on_the_sender() -> None:
    async with transport(send_timeout=0.2, send_window=2) as a, \
            transport(receive_queue_size=3) as b:
        sent = 0
        with pytest.raises(TransportError, match="stayed full"):
            for i in range(10_000):
                await a.send(b.local_address, ae(i, size=32 * 1024))
                sent += 1
        assert sent < 5000  # nobody receives: the sender was held back
        assert b.stats()["queued"] <= 3
        got = [await b.receive() for _ in range(3)]
        assert [m.prev_log_index for m in got] == [0, 1, 2]  # type: ignore[attr-defined]


@fail_after(10)
async def test_a_large_message_fits_even_beyond_the_byte_windows() -> None:
    async with transport(send_window_bytes=1024) as a, transport(receive_queue_bytes=1024) as b:
        big = InstallSnapshot(
            term=1, src="a", src_address="127.0.0.1:1", dst="b", snapshot_id="s",
            last_log_index=1, last_log_term=1, configuration=Configuration(),
            configuration_index=0, size=3 * 2**20, offset=0, data=bytes(3 * 2**20), done=False)
        await a.send(b.local_address, big)
        await a.send(b.local_address, big)
        assert await b.receive() == big
        assert await b.receive() == big


@fail_after(10)
async def test_message_larger_than_max_message_size_closes_only_that_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    async with transport(max_message_size=64 * 1024) as b, transport() as a:
        reason, peer = await send_bad(b.local_address, encode_message(ae(0, size=100_000)))
        assert reason.code == CloseCode.MESSAGE_TOO_BIG
        assert len(warnings_about(caplog, peer)) == 1
        await a.send(b.local_address, ae(1, size=1000))
        assert (await b.receive()).prev_log_index == 1  # type: ignore[attr-defined]


# -- failures of peers ----------------------------------------------------------------


@fail_after(10)
async def test_unreachable_peer_fails_fast_and_does_not_hold_up_others(
        caplog: pytest.LogCaptureFixture) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with transport(backoff_initial=1.0) as a, transport() as b:
        await a.send(dead, hb())  # queued; the connection attempt fails
        await eventually(lambda: a.stats()["connect_failures"] >= 1)
        start = trio.current_time()
        with pytest.raises(TransportError, match="unreachable"):
            await a.send(dead, hb())
        assert trio.current_time() - start < 0.05
        await a.send(b.local_address, hb(seq=5))
        assert (await b.receive()).seq == 5  # type: ignore[attr-defined]
        assert len(warnings_about(caplog, f"cannot connect to {dead}")) == 1


@fail_after(10)
async def test_black_hole_peer_does_not_block_sends_to_others() -> None:
    """A peer that accepts TCP but never answers the handshake."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    hole = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    async with trio.open_nursery() as nursery:
        async def swallow(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()
        nursery.start_soon(trio.serve_listeners, swallow, listeners)
        async with transport(connect_timeout=0.3, backoff_initial=1.0) as a, transport() as b:
            start = trio.current_time()
            await a.send(hole, hb())
            for i in range(50):
                await a.send(b.local_address, hb(seq=i))
            assert [(await b.receive()).seq for _ in range(50)] == list(range(50))  # type: ignore[attr-defined]
            assert trio.current_time() - start < 0.3
            await eventually(lambda: a.stats()["connect_failures"] >= 1)
            with pytest.raises(TransportError, match="timed out"):
                await a.send(hole, hb())
        nursery.cancel_scope.cancel()


@fail_after(10)
async def test_a_peer_that_stops_reading_costs_only_its_own_link() -> None:
    async with transport(send_timeout=0.3, send_window=4) as a, \
            transport(receive_queue_size=1) as stuck, transport() as b:
        failed_at = None
        for i in range(2000):
            try:
                await a.send(stuck.local_address, ae(i, size=64 * 1024))
            except TransportError:
                failed_at = i
                break
        assert failed_at is not None
        await a.send(b.local_address, hb(seq=3))
        assert (await b.receive()).seq == 3  # type: ignore[attr-defined]


@fail_after(10)
async def test_reconnects_when_the_peer_comes_back_on_the_same_port() -> None:
    async with transport() as a:
        async with transport() as b:
            address = b.local_address
            await a.send(address, hb(seq=1))
            assert (await b.receive()).seq == 1  # type: ignore[attr-defined]
        _, port = parse_address(address)
        assert port is not None
        async with open_websocket_transport("127.0.0.1", port, auth_token=TOKEN) as b2:
            async def keep_sending() -> None:
                seq = 2
                while True:
                    try:
                        await a.send(address, hb(seq=seq))
                    except TransportError:
                        pass
                    seq += 1
                    await trio.sleep(0.02)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_sending)
                assert (await b2.receive()).seq >= 2  # type: ignore[attr-defined]
                nursery.cancel_scope.cancel()


@fail_after(10)
async def test_idle_outbound_connections_are_closed_and_reopened() -> None:
    async with transport(idle_timeout=0.2) as a, transport() as b:
        await a.send(b.local_address, hb(seq=1))
        await b.receive()
        await eventually(lambda: a.stats()["links"] == 0 and b.stats()["inbound"] == 0)
        await a.send(b.local_address, hb(seq=2))
        assert (await b.receive()).seq == 2  # type: ignore[attr-defined]
        assert a.stats()["connects"] == 2


def test_backoff_grows_exponentially_with_jitter_from_the_injected_rng() -> None:
    def delays(seed: int) -> list[float]:
        t = WebSocketTransport(
            local_address="x:1", ssl_context=None, client_ssl_context=None, auth_token=None,
            max_message_size=1, send_timeout=1, connect_timeout=1, handshake_timeout=1,
            idle_timeout=1, max_connections=1, send_window=1, send_window_bytes=1,
            receive_queue_size=1, receive_queue_bytes=1, backoff_initial=0.1, backoff_max=1.0,
            rng=random.Random(seed))
        return [t._backoff(n) for n in range(1, 8)]
    d = delays(1)
    assert d == delays(1) and d != delays(2)
    for n, delay in enumerate(d, start=1):
        nominal = min(1.0, 0.1 * 2 ** (n - 1))
        assert nominal / 2 <= delay < nominal


# -- security ---------------------------------------------------------------------------


@fail_after(10)
async def test_auth_token_is_required_before_anything_is_read(
        caplog: pytest.LogCaptureFixture) -> None:
    async with transport() as server, \
            transport(auth_token=None, backoff_initial=1.0) as anonymous, \
            transport(auth_token="wrong-token", backoff_initial=1.0) as wrong, \
            transport() as friend:
        for client in (anonymous, wrong):
            await client.send(server.local_address, hb())
            await eventually(lambda c=client: c.stats()["connect_failures"] >= 1)  # type: ignore[misc]
            with pytest.raises(TransportError, match="HTTP 403"):
                await client.send(server.local_address, hb())
        assert server.stats()["connections_refused"] == 2
        assert server.stats()["received"] == 0
        assert len(warnings_about(caplog, "missing or wrong auth token")) == 2
        await friend.send(server.local_address, hb(seq=9))
        assert (await server.receive()).seq == 9  # type: ignore[attr-defined]


@fail_after(10)
async def test_handshake_refusals() -> None:
    async with transport(max_connections=1) as server:
        address = server.local_address
        with pytest.raises(ConnectionRejected) as info:
            async with raw_client(address, resource="/other"):
                pass  # pragma: no cover
        assert info.value.status_code == 404
        with pytest.raises(ConnectionRejected) as info:
            async with raw_client(address, subprotocols=("traft.v2",)):
                pass  # pragma: no cover
        assert info.value.status_code == 400
        assert info.value.body is not None and b"traft.v1" in info.value.body
        async with raw_client(address) as first:
            await first.send_message(encode_message(hb()))
            await server.receive()
            with pytest.raises(ConnectionRejected) as info:
                async with raw_client(address):
                    pass  # pragma: no cover
            assert info.value.status_code == 503
        assert server.stats()["connections_refused"] == 3


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *, mutual: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


def client_context(ca: trustme.CA | None, *, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(ctx)
        if cert:
            ca.issue_cert("client.traft").configure_cert(ctx)
    return ctx


@fail_after(10)
async def test_tls(ca: trustme.CA) -> None:
    async with transport(ssl_context=server_context(ca)) as server, \
            transport(client_ssl_context=client_context(ca)) as client, \
            transport(client_ssl_context=client_context(None), backoff_initial=1.0) as untrusting, \
            transport() as plain:
        await client.send(server.local_address, hb(seq=1))
        assert (await server.receive()).seq == 1  # type: ignore[attr-defined]
        for other in (untrusting, plain):
            await other.send(server.local_address, hb())
            await eventually(lambda o=other: o.stats()["connect_failures"] >= 1)  # type: ignore[misc]
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.send(server.local_address, hb())
        assert server.stats()["received"] == 1


@fail_after(10)
async def test_mutual_tls_and_token(ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    async with transport(ssl_context=server_context(ca, mutual=True)) as server, \
            transport(client_ssl_context=client_context(ca, cert=True)) as client, \
            transport(client_ssl_context=client_context(ca)) as certless:
        await client.send(server.local_address, hb(seq=1))
        assert (await server.receive()).seq == 1  # type: ignore[attr-defined]
        await certless.send(server.local_address, hb(seq=2))
        await eventually(lambda: certless.stats()["connect_failures"] >= 1)
        await eventually(lambda: bool(warnings_about(caplog, "TLS handshake failed")))
        assert server.stats()["received"] == 1
        # Both ends of a node: a mutual-TLS server whose client side has a certificate.
        async with transport(ssl_context=server_context(ca, mutual=True),
                             client_ssl_context=client_context(ca, cert=True)) as node:
            await node.send(server.local_address, hb(seq=3))
            await client.send(node.local_address, hb(seq=4))
            assert (await server.receive()).seq == 3  # type: ignore[attr-defined]
            assert (await node.receive()).seq == 4  # type: ignore[attr-defined]


# -- bad input ----------------------------------------------------------------------------


BAD_PAYLOADS: list[tuple[str, bytes | str, int]] = [
    ("garbage", b"\xff\x00garbage", CloseCode.MALFORMED),
    ("trailing", encode_message(hb()) + b"\x00", CloseCode.MALFORMED),
    ("tag", b"\xc1\x00", CloseCode.MALFORMED),
    ("not a map", cbor2.dumps([1, 2, 3]), CloseCode.INVALID),
    ("wrong field type", encode_message(hb()).replace(b"cseq\x01", b"cseqa1"), CloseCode.INVALID),
    ("version", cbor2.dumps({"v": 9, "t": 5}), CloseCode.UNSUPPORTED_VERSION),
    ("unknown type", cbor2.dumps({"v": 1, "t": 77}), CloseCode.UNKNOWN_TYPE),
    ("text", "hello", CloseCode.UNSUPPORTED_DATA),
]


@pytest.mark.parametrize("payload, code", [p[1:] for p in BAD_PAYLOADS],
                         ids=[p[0] for p in BAD_PAYLOADS])
@fail_after(10)
async def test_bad_message_closes_its_connection_with_a_code_and_one_log_line(
        payload: bytes | str, code: int, caplog: pytest.LogCaptureFixture) -> None:
    async with transport() as server, transport() as friend:
        await friend.send(server.local_address, hb(seq=1))
        assert (await server.receive()).seq == 1  # type: ignore[attr-defined]
        reason, peer = await send_bad(server.local_address, payload)
        assert reason.code == code
        logged = warnings_about(caplog, peer)
        assert len(logged) == 1 and server.local_address in logged[0]
        assert server.stats()["bad_messages"] == 1
        # The friend's connection was never disturbed.
        await friend.send(server.local_address, hb(seq=2))
        assert (await server.receive()).seq == 2  # type: ignore[attr-defined]
        assert friend.stats()["connects"] == 1


@fail_after(10)
async def test_garbage_half_open_and_idle_connections_are_closed_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    async with transport(handshake_timeout=0.2, idle_timeout=0.3) as server:
        host, port = parse_address(server.local_address)
        assert port is not None
        garbage = await trio.open_tcp_stream(host, port)
        await garbage.send_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        silent = await trio.open_tcp_stream(host, port)
        with trio.fail_after(2):
            assert await silent.receive_some() == b""  # closed by the server
            while await garbage.receive_some():
                pass
        await eventually(lambda: len(warnings_about(caplog, "no WebSocket handshake")) == 2)
        async with raw_client(server.local_address) as idle:
            with pytest.raises(ConnectionClosed) as info:
                await idle.get_message()
            reason = info.value.reason
            assert reason is not None
            assert (reason.code, reason.reason) == (CloseCode.NORMAL, "idle timeout")
        assert len(warnings_about(caplog, "idle for")) == 1
        await garbage.aclose()
        await silent.aclose()


# -- leaving the block -------------------------------------------------------------------


@fail_after(5)
async def test_leaving_the_block_closes_everything_and_leaks_no_exception_group() -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with transport() as a, transport() as b:
            await a.send(b.local_address, hb())
            await b.receive()
            raise Boom
    with pytest.raises(TransportError, match="closed"):
        await a.send(b.local_address, hb())
    with pytest.raises(trio.ClosedResourceError):
        await b.receive()
    with trio.move_on_after(0.1) as scope:
        async with transport():
            await trio.sleep_forever()
    assert scope.cancelled_caught


@fail_after(5)
async def test_cancelled_send_queues_nothing() -> None:
    async with transport() as a, transport() as b:
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.send(b.local_address, hb(seq=1))
        await a.send(b.local_address, hb(seq=2))
        assert (await b.receive()).seq == 2  # type: ignore[attr-defined]


# -- a real cluster ------------------------------------------------------------------------


@dataclass
class Node:
    id: str
    port: int = 0
    store: InmemStore = field(default_factory=InmemStore)
    snapshots: InmemSnapshotStore = field(default_factory=InmemSnapshotStore)
    fsm: RecordingFSM = field(default_factory=RecordingFSM)
    raft: Raft | None = None
    transport: WebSocketTransport | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)


class WsCluster:
    def __init__(self, nursery: trio.Nursery, n: int, seed: int, config: dict[str, Any]) -> None:
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.nodes = {f"n{i}": Node(f"n{i}") for i in range(1, n + 1)}
        self.overrides = config

    def config(self, node_id: str) -> Config:
        options: dict[str, Any] = dict(heartbeat_timeout=0.2, election_timeout=0.2,
                                       leader_lease_timeout=0.1, commit_timeout=0.01)
        options.update(self.overrides)
        return Config(local_id=node_id, rng=random.Random(self.rng.random()), **options)

    async def start(self, node_id: str) -> None:
        await self.nursery.start(self._run, self.nodes[node_id])

    async def _run(self, node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        node.stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                node.scope = scope
                # A restarted node comes back on its old port: its address
                # is in everyone's configuration.
                async with transport(node.port, idle_timeout=5.0,
                                     rng=random.Random(self.rng.random())) as t:
                    node.transport = t
                    _, port = parse_address(t.local_address)
                    assert port is not None
                    node.port = port
                    async with open_raft(self.config(node.id), node.fsm, node.store, node.store,
                                         node.snapshots, t) as raft:
                        node.raft = raft
                        task_status.started()
                        await trio.sleep_forever()
        finally:
            node.raft = node.transport = None
            node.stopped.set()

    async def stop(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert node.scope is not None
        node.scope.cancel()
        await node.stopped.wait()

    def running(self) -> list[Raft]:
        return [n.raft for n in self.nodes.values() if n.raft is not None]

    async def wait_leader(self) -> Raft:
        while True:
            rafts = self.running()
            leaders = [r for r in rafts if r.state is RaftState.LEADER]
            if len(leaders) == 1 and leaders[0].current_term == max(r.current_term for r in rafts):
                return leaders[0]
            await trio.sleep(0.01)

    async def apply(self, data: bytes) -> None:
        """Apply through whoever leads, retrying across leader changes."""
        while True:
            leader = await self.wait_leader()
            try:
                await leader.apply(data)
                return
            except Exception:  # NotLeader/LeadershipLost: outcome unknown, retry
                await trio.sleep(0.01)

    async def wait_applied(self, count: int) -> None:
        await eventually(lambda: all(len(n.fsm.commands) >= count for n in self.nodes.values()
                                     if n.raft is not None))

    def _agree(self, expected: list[bytes]) -> bool:
        sequences = [n.fsm.commands for n in self.nodes.values()]
        return all(c == sequences[0] and list(dict.fromkeys(c)) == expected for c in sequences)

    async def check_commands(self, expected: list[bytes]) -> None:
        """Every node applies the same sequence, which is ``expected`` in
        order; an apply retried after an unknown outcome (a leader change
        under load) may have committed twice, so repeats are allowed."""
        with trio.move_on_after(5):
            await eventually(lambda: self._agree(expected))
        sequences = [n.fsm.commands for n in self.nodes.values()]
        for node, commands in zip(self.nodes, sequences):
            assert list(dict.fromkeys(commands)) == expected, node
            assert commands == sequences[0], node


@asynccontextmanager
async def ws_cluster(n: int = 3, seed: int = 0, **config: Any) -> AsyncIterator[WsCluster]:
    async with trio.open_nursery() as nursery:
        cluster = WsCluster(nursery, n, seed, config)
        for node_id in cluster.nodes:
            await cluster.start(node_id)
        configuration = Configuration(tuple(
            Server(node.id, f"127.0.0.1:{node.port}") for node in cluster.nodes.values()))
        for raft in cluster.running():
            await raft.bootstrap_cluster(configuration)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


@fail_after(20)
async def test_three_node_cluster_elects_replicates_and_survives_broken_connections() -> None:
    async with ws_cluster() as cluster:
        for i in range(10):
            await cluster.apply(b"before-%d" % i)
        await cluster.wait_applied(10)
        # Kill every outbound connection of the leader abruptly (as a network
        # fault would), then keep committing.
        leader = await cluster.wait_leader()
        lt = next(n.transport for n in cluster.nodes.values() if n.raft is leader)
        assert lt is not None
        streams = [link.stream for link in lt._links.values() if link.stream is not None]
        assert streams
        for stream in streams:
            await trio.aclose_forcefully(stream)
        for i in range(10):
            await cluster.apply(b"after-kill-%d" % i)
        # Restart a follower on the same port: it catches up from its store.
        follower = next(n for n in cluster.nodes.values()
                        if n.raft is not None and n.raft is not leader)
        await cluster.stop(follower.id)
        for i in range(5):
            await cluster.apply(b"while-down-%d" % i)
        follower.fsm = RecordingFSM()
        await cluster.start(follower.id)
        for i in range(5):
            await cluster.apply(b"after-restart-%d" % i)
        expected = ([b"before-%d" % i for i in range(10)]
                    + [b"after-kill-%d" % i for i in range(10)]
                    + [b"while-down-%d" % i for i in range(5)]
                    + [b"after-restart-%d" % i for i in range(5)])
        await cluster.check_commands(expected)


@fail_after(20)
async def test_a_follower_far_behind_catches_up_by_a_chunked_snapshot() -> None:
    async with ws_cluster(trailing_logs=2, snapshot_threshold=10**6) as cluster:
        await cluster.apply(b"first")
        leader = await cluster.wait_leader()
        follower = next(n for n in cluster.nodes.values()
                        if n.raft is not None and n.raft is not leader)
        await cluster.stop(follower.id)
        # ~1.3 MB of state: several InstallSnapshot chunks.
        big = [b"%03d" % i + bytes(64 * 1024) for i in range(20)]
        for data in big:
            await cluster.apply(data)
        leader = await cluster.wait_leader()
        meta = await leader.snapshot()
        assert meta.size > 1_000_000
        follower.fsm = RecordingFSM()
        await cluster.start(follower.id)
        await cluster.apply(b"last")
        await cluster.check_commands([b"first", *big, b"last"])
        # It was installed from the leader's snapshot, not replayed from the log.
        installed = await follower.snapshots.list()
        assert [(m.index, m.size) for m in installed] == [(meta.index, meta.size)]


# -- fuzz: a running cluster under a stream of garbage -----------------------------------

# Payloads are drawn with Hypothesis up front (a corpus), because the
# cluster must keep running across all of them rather than restart per
# example. Only payloads that do not decode are kept: each is bad input that
# must cost its sender the connection and change nothing else.

envelopes = st.fixed_dictionaries({
    "v": st.just(1) | cbor_values, "t": st.integers(0, 12) | cbor_values,
    "h": st.lists(cbor_values, max_size=5), "b": cbor_values})


def _mutate(args: tuple[Message, int, int]) -> bytes:
    message, at, bit = args
    data = bytearray(encode_message(message))
    data[at % len(data)] ^= 1 << bit
    return bytes(data)


payload_strategy = st.one_of(
    st.binary(max_size=300),
    cbor_values.map(cbor2.dumps),
    envelopes.map(cbor2.dumps),
    st.tuples(messages, st.integers(0, 10_000), st.integers(0, 7)).map(_mutate),
    messages.map(lambda m: encode_message(m)[:-1]),
)


def _is_bad(data: bytes) -> bool:
    try:
        decode_message(data)
    except RemoteProtocolError:
        return True
    return False


def corpus(n_batches: int, batch: int) -> list[bytes]:
    out: list[bytes] = []

    @settings(max_examples=n_batches, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(payload_strategy, min_size=batch, max_size=batch)
           | st.lists(st.binary(max_size=200), min_size=batch, max_size=batch))
    def collect(payloads: list[bytes]) -> None:
        out.extend(p for p in payloads if _is_bad(p))

    collect()
    return out


@fail_after(30)
async def test_a_running_cluster_survives_thousands_of_bad_messages() -> None:
    payloads = corpus(n_batches=60, batch=40)
    assert len(payloads) >= 2000
    async with ws_cluster(seed=1) as cluster:
        for i in range(5):
            await cluster.apply(b"before-%d" % i)
        leader = await cluster.wait_leader()
        target = next(n for n in cluster.nodes.values() if n.raft is leader)
        assert target.transport is not None
        address = target.transport.local_address
        applied = 5
        codes: list[int] = []

        async def attacker(share: list[bytes]) -> None:
            for payload in share:
                reason, _ = await send_bad(address, payload)
                codes.append(reason.code)

        async with trio.open_nursery() as nursery:
            for k in range(8):
                nursery.start_soon(attacker, payloads[k::8])
            # The cluster keeps committing during the attack.
            while len(codes) < len(payloads):
                await cluster.apply(b"during-%d" % applied)
                applied += 1
        assert sorted(set(codes)) <= [CloseCode.MALFORMED, CloseCode.INVALID,
                                       CloseCode.UNSUPPORTED_VERSION, CloseCode.UNKNOWN_TYPE]
        assert len(codes) == len(payloads)
        stats = target.transport.stats()
        assert stats["bad_messages"] == len(payloads)
        for i in range(5):
            await cluster.apply(b"after-%d" % i)
        expected = ([b"before-%d" % i for i in range(5)]
                    + [b"during-%d" % i for i in range(5, applied)]
                    + [b"after-%d" % i for i in range(5)])
        await cluster.check_commands(expected)
