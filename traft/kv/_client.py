"""``traft.kv.Client``: an async Trio client for a traft key-value cluster,
and the client protocol's wire format (``docs/protocol.md``, "Client
protocol"), shared with the server side in ``_service.py``.

The client protocol shares the nodes' WebSocket port: a client connects to
``ws[s]://host:port/client`` offering the subprotocol ``traft.client.v1``
(with the cluster's ``Authorization: Bearer`` token if it has one) and sends
CBOR requests ``{"id", "op", "args", "timeout"}``; each is answered, in any
order, by ``{"id", "result"}`` or ``{"id", "error": {"code", "message",
"leader_id", "leader_address"}}``.

The client keeps one connection per server, opened lazily, with a reader
task per connection that matches answers to requests by id, so any number of
Trio tasks may share one client. Every operation is bounded by the client's
``timeout``. Retries follow one rule: a request is sent again (to the same or
another server) only when that cannot apply it twice: reads always; writes
only when the request certainly never reached the server, or the server said
it did not start it (``not_leader``, ``no_leader``, ``unavailable``,
``transfer_in_progress``).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import ssl
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final, Literal, Self

import cbor2
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .._codec import _cbor_load
from .._errors import RaftError, TransportError
from .._websocket_transport import (
    CLIENT_RESOURCE,
    CLIENT_SUBPROTOCOL,
    _token_bytes,
    _WatchedStream,
    format_address,
    parse_address,
)

__all__ = [
    "BAD_REQUEST", "CONFLICT", "Client", "ClientError", "Consistency", "FAILED", "INTERNAL",
    "NOTHING_TO_SNAPSHOT", "NOT_LEADER", "NO_LEADER", "OUTCOME_UNKNOWN", "TIMEOUT",
    "TRANSFER_IN_PROGRESS", "UNAUTHORIZED", "UNAVAILABLE", "parse_servers",
]

# ---------------------------------------------------------------------------
# Error codes (the "code" of an error answer)

NOT_LEADER: Final = "not_leader"
"""This server is not the leader; ``leader_id``/``leader_address`` name the
one it knows of. Nothing was done."""
NO_LEADER: Final = "no_leader"
"""No leader is known (election in progress, no quorum, not bootstrapped).
Nothing was done."""
UNAVAILABLE: Final = "unavailable"
"""The server is starting or shutting down. Nothing was done."""
TRANSFER_IN_PROGRESS: Final = "transfer_in_progress"
"""The leader is handing over leadership and refuses writes. Nothing was done."""
TIMEOUT: Final = "timeout"
"""The server gave up waiting (the request's ``timeout``); a write's outcome
is unknown."""
OUTCOME_UNKNOWN: Final = "outcome_unknown"
"""Leadership was lost (or the server stopped) while a write was pending: it
may still be applied."""
CONFLICT: Final = "conflict"
"""A membership change was refused (another one in flight, ``prev_index``
mismatch)."""
NOTHING_TO_SNAPSHOT: Final = "nothing_to_snapshot"
"""Nothing was applied since the last snapshot."""
FAILED: Final = "failed"
"""The operation failed (the message says why), e.g. a leadership transfer
that did not complete."""
BAD_REQUEST: Final = "bad_request"
"""The request is malformed; the connection stays usable."""
INTERNAL: Final = "internal"
"""An unexpected error on the server (logged there)."""
UNAUTHORIZED: Final = "unauthorized"
"""Client side only: the server refused the auth token (HTTP 403)."""

# Answers meaning the server did not start the request: always safe to retry.
_NOT_STARTED: Final = frozenset({NOT_LEADER, NO_LEADER, UNAVAILABLE, TRANSFER_IN_PROGRESS})
# Answers after which a read (or a write that was not started) is retried.
_READ_RETRY: Final = _NOT_STARTED | {TIMEOUT, OUTCOME_UNKNOWN}

Consistency = Literal["stale", "leader", "linearizable"]
CONSISTENCY_LEVELS: Final = ("stale", "leader", "linearizable")

_MAX_RESPONSE: Final = 64 * 2**20
_MAX_REDIRECTS: Final = 8


class ClientError(RaftError):
    """An error answer from a traft server, or a client-side failure with a
    protocol error code (``timeout``, ``no_leader``, ``unauthorized``, ...).

    ``code`` is one of the module's error codes; ``leader_id`` and
    ``leader_address`` carry the leader hint of a ``not_leader`` answer;
    ``server`` is the address that answered, when one did.
    """

    def __init__(self, code: str, message: str, *, leader_id: str | None = None,
                 leader_address: str | None = None, server: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.leader_id = leader_id
        self.leader_address = leader_address
        self.server = server

    def __repr__(self) -> str:
        return f"ClientError({self.code!r}, {self.message!r})"


class _NotSent(TransportError):
    """The request certainly did not reach the server (connect failed, or the
    connection was already closed): safe to send elsewhere."""


class _Lost(TransportError):
    """The request was sent but the connection ended before the answer."""


# ---------------------------------------------------------------------------
# Wire format


def encode_request(request_id: int, op: str, args: Mapping[str, Any],
                   timeout: float | None = None) -> bytes:
    message: dict[str, Any] = {"id": request_id, "op": op, "args": dict(args)}
    if timeout is not None:
        message["timeout"] = float(timeout)
    return cbor2.dumps(message)


def encode_result(request_id: int | None, result: Any) -> bytes:
    return cbor2.dumps({"id": request_id, "result": result})


def encode_error(request_id: int | None, code: str, message: str, *,
                 leader_id: str | None = None, leader_address: str | None = None) -> bytes:
    return cbor2.dumps({"id": request_id, "error": {
        "code": code, "message": message, "leader_id": leader_id,
        "leader_address": leader_address}})


def decode_response(data: bytes | bytearray, server: str) -> tuple[int, Any, ClientError | None]:
    """``(id, result, error)`` of one answer; TransportError if it is not one."""
    try:
        obj = _cbor_load(bytes(data))
    except TransportError as exc:
        raise TransportError(f"{server} sent an unreadable answer: {exc}") from None
    if type(obj) is not dict or type(obj.get("id")) is not int:
        raise TransportError(f"{server} sent an answer without an id")
    request_id: int = obj["id"]
    if "error" in obj:
        raw = obj["error"]
        if type(raw) is not dict or type(raw.get("code")) is not str:
            raise TransportError(f"{server} sent a malformed error answer")
        leader_id, leader_address = raw.get("leader_id"), raw.get("leader_address")
        return request_id, None, ClientError(
            raw["code"], str(raw.get("message") or raw["code"]),
            leader_id=leader_id if type(leader_id) is str else None,
            leader_address=leader_address if type(leader_address) is str else None,
            server=server)
    if "result" not in obj:
        raise TransportError(f"{server} sent an answer with neither result nor error")
    return request_id, obj["result"], None


def parse_servers(servers: str | Iterable[str]) -> list[str]:
    """``"h1:p1,h2:p2"`` or an iterable of addresses -> a checked, de-duplicated
    list; ValueError for an empty or malformed one."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"a server address must be a string, got {item!r}")
        item = item.strip()
        if not item:
            continue
        host, port = parse_address(item)
        assert port is not None
        address = format_address(host, port)
        if address not in out:
            out.append(address)
    if not out:
        raise ValueError("no server addresses given (expected 'host:port,...')")
    return out


def _as_bytes(value: bytes | bytearray | str, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def _reason(exc: BaseException) -> str:
    """A short, lower-case reason for a failed connection."""
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        if reason is None:
            return "connection closed"
        return f"connection closed ({reason.code}{': ' + reason.reason if reason.reason else ''})"
    if isinstance(exc, ConnectionTimeout):
        return "connection timed out"
    # follow wrapping (HandshakeError <- OSError <- ExceptionGroup) to the root
    root: BaseException = exc
    for _ in range(10):
        if isinstance(root, BaseExceptionGroup) and root.exceptions:
            root = root.exceptions[0]
        elif root.__cause__ is not None:
            root = root.__cause__
        else:
            break
    if isinstance(root, ssl.SSLCertVerificationError):
        return f"TLS: the server's certificate is not trusted ({root.verify_message})"
    if isinstance(root, ssl.SSLError):
        what = (root.reason or str(root)).lower().replace("_", " ")
        return f"TLS handshake failed ({what})"
    if isinstance(root, OSError) and (root.errno or root.strerror):
        text = os.strerror(root.errno) if root.errno else str(root.strerror)
        return text[0].lower() + text[1:]
    return str(root) or str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------
# Connections


class _Slot:
    """Where the reader task puts the answer to one request."""

    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def set(self, result: Any, error: BaseException | None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class _Connection:
    def __init__(self, address: str, ws: WebSocketConnection) -> None:
        self.address = address
        self.ws = ws
        self.pending: dict[int, _Slot] = {}
        self.closed = False

    def fail_all(self, why: str) -> None:
        self.closed = True
        for slot in self.pending.values():
            slot.set(None, _Lost(f"lost the connection to {self.address} before its "
                                 f"answer: {why}"))
        self.pending.clear()


# ---------------------------------------------------------------------------
# The client


class Client:
    """An async client of a traft key-value cluster (``traft node``)::

        async with traft.kv.Client(["10.0.0.1:7000", "10.0.0.2:7000"]) as client:
            await client.put("greeting", b"hello")
            value = await client.get("greeting")

    Args:
      servers: some of the cluster's addresses, ``"host:port"`` (a list or
        one comma-separated string); the rest are learned from the servers.
      auth_token: the cluster's shared token, if it has one.
      ssl_context: connect with TLS (``wss://``) using this client context.
      timeout: bound, in seconds, on each operation, retries included
        (Trio style, a caller may also wrap calls in its own cancel scope).
      connect_timeout: bound on opening one connection.
      rng: randomness for the retry back-off's jitter.

    Raises (from any operation):
      ClientError: an error answer (``code`` says which), ``timeout`` when
        ``timeout`` passed, ``no_leader`` when none appeared in that time,
        ``outcome_unknown`` when a write's connection was lost after sending,
        ``unauthorized`` when the token was refused.
      TransportError: when no server of the cluster can be reached at all.
    """

    def __init__(self, servers: str | Iterable[str], *,
                 auth_token: str | bytes | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 5.0,
                 connect_timeout: float = 2.0, rng: random.Random | None = None) -> None:
        self._servers = parse_servers(servers)
        token = _token_bytes(auth_token)
        self._headers = [] if token is None else [(b"Authorization", b"Bearer " + token)]
        self._ssl_context = ssl_context
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number, got {timeout!r}")
        if not (isinstance(connect_timeout, (int, float)) and connect_timeout > 0):
            raise ValueError(f"connect_timeout must be a positive number, got {connect_timeout!r}")
        self.timeout = float(timeout)
        self._connect_timeout = float(connect_timeout)
        self._rng = rng if rng is not None else random.Random()
        self._leader: str | None = None
        self._conns: dict[str, _Connection] = {}
        self._connecting: dict[str, trio.Lock] = {}
        self._ids = itertools.count(1)
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    # -- life cycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("a Client can be entered only once")
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection (also done when the ``async with`` ends)."""
        stack, nursery = self._stack, self._nursery
        self._nursery = None
        if stack is None or nursery is None:
            return
        for conn in list(self._conns.values()):
            conn.fail_all("the client is closed")
        self._conns.clear()
        nursery.cancel_scope.cancel()
        try:
            await stack.aclose()
        except BaseExceptionGroup as group:  # never leak a group: tasks only log
            cancelled, rest = group.split(trio.Cancelled)
            if cancelled is not None:
                raise cancelled from None

    @property
    def servers(self) -> list[str]:
        """The addresses known to this client (given, then learned)."""
        return list(self._servers)

    @property
    def leader(self) -> str | None:
        """The leader's address as last learned, or None."""
        return self._leader

    # -- key-value operations -------------------------------------------------

    async def put(self, key: str, value: bytes | str) -> int:
        """Set ``key`` (str values are UTF-8 encoded); returns the log index."""
        result = await self._request("put", {"key": _key(key),
                                             "value": _as_bytes(value, "value")},
                                     leader=True, safe=False)
        return int(_field(result, "index", int))

    async def get(self, key: str, *, consistency: Consistency = "linearizable") -> bytes | None:
        """The value of ``key``, or None. ``consistency``: ``stale`` (any
        server's local state), ``leader`` (confirmed by the leader with a
        quorum), ``linearizable`` (a read fence: any server, up to date)."""
        result = await self._request("get", {"key": _key(key),
                                             "consistency": _consistency(consistency)},
                                     leader=consistency == "leader", safe=True)
        value = _field(result, "value", (bytes, type(None)))
        return value if value is None else bytes(value)

    async def delete(self, key: str) -> bool:
        """Delete ``key``; whether it existed."""
        result = await self._request("delete", {"key": _key(key)}, leader=True, safe=False)
        return bool(_field(result, "existed", bool))

    async def cas(self, key: str, expected: bytes | str | None,
                  new: bytes | str | None) -> bool:
        """Compare-and-set: if ``key`` holds ``expected`` (None: is absent),
        set it to ``new`` (None: delete it). Whether it swapped."""
        args = {"key": _key(key),
                "expected": None if expected is None else _as_bytes(expected, "expected"),
                "value": None if new is None else _as_bytes(new, "new")}
        result = await self._request("cas", args, leader=True, safe=False)
        return bool(_field(result, "swapped", bool))

    async def keys(self, prefix: str = "", *,
                   consistency: Consistency = "linearizable") -> list[str]:
        """The keys starting with ``prefix``, sorted."""
        result = await self._request("keys", {"prefix": _key(prefix, empty=True),
                                              "consistency": _consistency(consistency)},
                                     leader=consistency == "leader", safe=True)
        keys = _field(result, "keys", list)
        return [str(k) for k in keys]

    # -- status ---------------------------------------------------------------

    async def status(self, server: str | None = None) -> dict[str, Any]:
        """One server's status (``server``, or the first that answers): its
        id, address, state, term, indexes, leader and configuration."""
        result = await self._request("status", {}, leader=False, safe=True, server=server)
        if not isinstance(result, dict):
            raise TransportError("a server sent a malformed status")
        self._learn(result)
        return result

    async def cluster_status(self) -> list[dict[str, Any]]:
        """One status per server of the cluster's latest configuration
        (asked concurrently); a server that does not answer gets a row with
        ``"state": "unreachable"`` and an ``"error"``."""
        first = await self.status()
        members = [s for s in first.get("configuration") or [] if isinstance(s, dict)]
        targets: list[tuple[str, dict[str, Any]]] = [
            (str(s.get("address")), s) for s in members]
        if not targets:
            targets = [(first["address"], {})] if "address" in first else []
            targets += [(a, {}) for a in self._servers if a != first.get("address")]
        rows: dict[str, dict[str, Any]] = {}

        async def ask(address: str, member: dict[str, Any]) -> None:
            if address == first.get("address"):
                row = dict(first)
            else:
                try:
                    with trio.fail_after(min(self.timeout, 2.0)):
                        row = await self._call_once(address, "status", {})
                except (ClientError, TransportError, trio.TooSlowError) as exc:
                    row = {"id": member.get("id"), "address": address, "state": "unreachable",
                           "error": str(exc) if not isinstance(exc, trio.TooSlowError)
                           else "no answer"}
                if not isinstance(row, dict):
                    row = {"address": address, "state": "unreachable",
                           "error": "malformed status"}
            if member:
                row.setdefault("id", member.get("id"))
                row["suffrage"] = member.get("suffrage")
            rows[address] = row

        async with trio.open_nursery() as nursery:
            for address, member in targets:
                nursery.start_soon(ask, address, member)
        return [rows[a] for a, _ in targets]

    # -- administration ---------------------------------------------------------

    async def add_voter(self, id: str, address: str, *, prev_index: int = 0) -> int:
        """Add (or promote) a voter; the configuration entry's index."""
        return await self._membership("add_voter", {"id": id, "address": _addr(address),
                                                    "prev_index": prev_index})

    async def add_nonvoter(self, id: str, address: str, *, prev_index: int = 0) -> int:
        """Add a server that receives the log but does not vote."""
        return await self._membership("add_nonvoter", {"id": id, "address": _addr(address),
                                                       "prev_index": prev_index})

    async def remove_server(self, id: str, *, prev_index: int = 0) -> int:
        """Remove a server from the cluster."""
        return await self._membership("remove", {"id": id, "prev_index": prev_index})

    async def join(self, id: str, address: str, *, voter: bool = True) -> int:
        """Ask the leader to add server ``id`` at ``address`` (nothing to do
        if it is already a member with that address and suffrage)."""
        return await self._membership("join", {"id": id, "address": _addr(address),
                                               "voter": voter})

    async def transfer_leadership(self, id: str | None = None) -> str | None:
        """Hand leadership to ``id`` (or the most up-to-date voter); returns
        the new leader's id when the old leader knows it."""
        result = await self._request("transfer_leader", {"id": id}, leader=True, safe=False)
        self._leader = None
        if isinstance(result, dict) and isinstance(result.get("leader_id"), str):
            return str(result["leader_id"])
        return None

    async def snapshot(self, server: str | None = None) -> dict[str, Any]:
        """Take a snapshot on ``server`` (default: the leader); its
        ``id``, ``index``, ``term`` and ``size``."""
        result = await self._request("snapshot", {"leader": server is None},
                                     leader=server is None, safe=False, server=server)
        if not isinstance(result, dict):
            raise TransportError("a server sent a malformed snapshot answer")
        return result

    async def _membership(self, op: str, args: dict[str, Any]) -> int:
        if not isinstance(args.get("id"), str) or not args["id"]:
            raise ValueError("server id must be a non-empty string")
        result = await self._request(op, args, leader=True, safe=False)
        return int(_field(result, "index", int))

    # -- routing and retries ----------------------------------------------------

    def _learn(self, status: Mapping[str, Any]) -> None:
        """Remember the cluster's addresses and leader from a status answer."""
        for server in status.get("configuration") or []:
            address = server.get("address") if isinstance(server, dict) else None
            if isinstance(address, str) and address not in self._servers:
                self._servers.append(address)
        leader = status.get("leader_address")
        if isinstance(leader, str) and leader:
            self._leader = leader

    def _candidates(self) -> list[str]:
        out = [self._leader] if self._leader else []
        return out + [a for a in self._servers if a != self._leader]

    async def _request(self, op: str, args: dict[str, Any], *, leader: bool, safe: bool,
                       server: str | None = None) -> Any:
        """Run one operation within ``self.timeout``, routing and retrying
        as the module docstring says."""
        if self._nursery is None:
            raise RuntimeError("use the Client inside 'async with'")
        progress = _Progress()
        with trio.move_on_after(self.timeout):
            try:
                if server is not None:  # that server only: no redirect, no retry
                    address = parse_servers(server)[0]
                    try:
                        return await self._call_once(address, op, args)
                    except _NotSent as exc:
                        raise TransportError(f"cannot reach {address} ({exc})") from None
                    except _Lost as exc:
                        if safe:
                            raise TransportError(str(exc)) from None
                        raise ClientError(OUTCOME_UNKNOWN, f"{exc}; the {op} may or may "
                                                           f"not have happened") from None
                return await self._route(op, args, leader=leader, safe=safe, progress=progress)
            except _Lost as exc:  # _route lets these through for writes only
                raise ClientError(OUTCOME_UNKNOWN, f"{exc}; the {op} may or may not have "
                                                   f"happened") from None
        raise _timeout_error(op, self.timeout, progress.last, safe)

    async def _route(self, op: str, args: dict[str, Any], *, leader: bool, safe: bool,
                     progress: _Progress) -> Any:
        attempt = 0
        while True:
            attempt += 1
            queue = self._candidates()
            tried: list[str] = []
            unreachable: dict[str, str] = {}  # this round's: address -> why
            answered = False
            redirects = 0
            while queue:
                address = queue.pop(0)
                if address in tried:
                    continue
                tried.append(address)
                try:
                    result = await self._call_once(address, op, args)
                except _NotSent as exc:
                    progress.last = exc
                    unreachable[address] = f"{address}: {exc}"
                    if self._leader == address:
                        self._leader = None
                    continue
                except _Lost as exc:
                    if not safe:
                        raise
                    progress.last = exc
                    answered = True  # it was reachable a moment ago
                    continue
                except ClientError as exc:
                    progress.last = exc
                    answered = True
                    if (exc.code == NOT_LEADER and exc.leader_address and leader
                            and exc.leader_address not in unreachable):
                        self._leader = exc.leader_address
                        if exc.leader_address not in self._servers:
                            self._servers.append(exc.leader_address)
                        if redirects < _MAX_REDIRECTS:
                            redirects += 1
                            if exc.leader_address in tried:
                                tried.remove(exc.leader_address)
                            queue.insert(0, exc.leader_address)
                        continue
                    if self._leader == address and exc.code in (NOT_LEADER, NO_LEADER):
                        self._leader = None
                    if exc.code in (_READ_RETRY if safe else _NOT_STARTED):
                        continue
                    raise
                if leader:
                    self._leader = address
                return result
            if not answered and unreachable:
                raise TransportError("cannot reach any server of the cluster ("
                                     + "; ".join(unreachable.values()) + ")")
            delay = min(0.5, 0.05 * 2 ** min(attempt - 1, 10))
            await trio.sleep(delay * (0.5 + 0.5 * self._rng.random()))

    async def _call_once(self, address: str, op: str, args: Mapping[str, Any]) -> Any:
        """Send one request to ``address`` and wait for its answer. Raises
        _NotSent, _Lost, or the ClientError the server answered."""
        conn = await self._connection(address)
        request_id = next(self._ids)
        slot = _Slot()
        conn.pending[request_id] = slot
        try:
            deadline = trio.current_effective_deadline()
            hint = None
            if deadline != math.inf:
                hint = max(0.01, (deadline - trio.current_time()) * 0.9)
            data = encode_request(request_id, op, args, hint)
            try:
                await conn.ws.send_message(data)
            except ConnectionClosed as exc:
                conn.fail_all(_reason(exc))
                raise _NotSent(f"connection lost: {_reason(exc)}") from None
            await slot.done.wait()
        finally:
            conn.pending.pop(request_id, None)
        if slot.error is not None:
            raise slot.error
        return slot.result

    async def _connection(self, address: str) -> _Connection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        lock = self._connecting.setdefault(address, trio.Lock())
        async with lock:
            conn = self._conns.get(address)
            if conn is not None and not conn.closed:
                return conn
            assert self._nursery is not None
            outcome: _Connection | BaseException = await self._nursery.start(
                self._run_connection, address)
            if isinstance(outcome, BaseException):
                raise outcome
            self._conns[address] = outcome
            return outcome

    async def _run_connection(
            self, address: str, *,
            task_status: trio.TaskStatus[_Connection | BaseException] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open a connection to ``address`` and read its answers until it
        ends. Reports the connection, or the reason it could not be opened,
        through ``task_status``; never raises (except Cancelled)."""
        started = False
        conn: _Connection | None = None
        why = "connection closed"
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await self._open_stream(address)
            watched = _WatchedStream(stream)
            async with trio.open_nursery() as nursery:
                # trio-websocket waits for the server's answer until the
                # deadline even when the server has already hung up (a refused
                # client certificate, a plain-TCP client on a TLS port): give
                # up as soon as the stream ends.
                with trio.fail_after(self._connect_timeout), trio.CancelScope() as handshake:
                    watched.on_end = handshake.cancel
                    ws = await wrap_client_stream(
                        nursery, watched,  # type: ignore[arg-type]  # any trio Stream works
                        address, CLIENT_RESOURCE, subprotocols=[CLIENT_SUBPROTOCOL],
                        extra_headers=list(self._headers), message_queue_size=16,
                        max_message_size=_MAX_RESPONSE)
                watched.on_end = None
                if handshake.cancelled_caught:
                    hint = (" (does it require a client certificate?)"
                            if self._ssl_context is not None else " (does it use TLS?)")
                    raise _NotSent("the server closed the connection during the handshake"
                                   + (f": {_reason(watched.error)}" if watched.error else "")
                                   + hint)
                if ws.subprotocol != CLIENT_SUBPROTOCOL:
                    raise _NotSent(f"{address} does not speak {CLIENT_SUBPROTOCOL}")
                conn = _Connection(address, ws)
                started = True
                task_status.started(conn)
                why = await self._read_answers(conn)
                nursery.cancel_scope.cancel()
        except ConnectionRejected as exc:
            why = f"refused (HTTP {exc.status_code})"
            if not started:
                started = True
                task_status.started(_rejected(address, exc))
        except _NotSent as exc:
            why = str(exc)
        except BaseExceptionGroup as group:
            cancelled, rest = group.split(trio.Cancelled)
            if cancelled is not None:
                raise cancelled from None
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            if isinstance(leaf, ConnectionRejected) and not started:
                started = True
                task_status.started(_rejected(address, leaf))
            why = leaf.args[0] if isinstance(leaf, _NotSent) else _reason(leaf)
        except (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError,
                trio.ClosedResourceError, trio.TooSlowError, TransportError) as exc:
            why = "connection timed out" if isinstance(exc, trio.TooSlowError) else _reason(exc)
        except Exception as exc:  # a bug in a dependency must not crash the client
            why = f"unexpected error: {exc!r}"
        finally:
            if conn is not None:
                conn.fail_all(why)
                if self._conns.get(address) is conn:
                    del self._conns[address]
            if not started:
                task_status.started(_NotSent(why))
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _open_stream(self, address: str,
                           ) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        host, port = parse_address(address)
        assert port is not None
        stream = await trio.open_tcp_stream(host, port)
        if self._ssl_context is None:
            return stream
        tls = trio.SSLStream(stream, self._ssl_context, server_hostname=host,
                             https_compatible=True)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    async def _read_answers(self, conn: _Connection) -> str:
        """Match answers to requests until the connection ends; why it ended."""
        while True:
            try:
                data = await conn.ws.get_message()
            except ConnectionClosed as exc:
                return _reason(exc)
            if isinstance(data, str):
                return "the server sent a text message"
            request_id, result, error = decode_response(data, conn.address)
            slot = conn.pending.pop(request_id, None)
            if slot is not None:
                slot.set(result, error)


class _Progress:
    """What an operation last ran into, for the message when it times out."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: BaseException | None = None


def _timeout_error(op: str, timeout: float, last: BaseException | None,
                   safe: bool) -> ClientError:
    after = f"gave up after {timeout:g}s"
    if isinstance(last, ClientError) and last.code in (NO_LEADER, NOT_LEADER):
        return ClientError(NO_LEADER, f"no leader: {last.message} ({after})",
                           server=last.server)
    if isinstance(last, ClientError) and last.code == UNAVAILABLE:
        return ClientError(UNAVAILABLE, f"{last.message} ({after})", server=last.server)
    text = f"{op} timed out ({after}"
    text += f"; last error: {last})" if last is not None else ")"
    if not safe:
        text += f"; the {op} may or may not have happened"
    return ClientError(TIMEOUT, text)


def _rejected(address: str, exc: ConnectionRejected) -> BaseException:
    body = (exc.body or b"").decode("utf-8", "replace").strip().splitlines()
    detail = f": {body[0][:120]}" if body else ""
    if exc.status_code == 403:
        return ClientError(UNAUTHORIZED,
                           f"{address} refused the auth token (HTTP 403{detail})",
                           server=address)
    if exc.status_code == 404:
        return ClientError(BAD_REQUEST,
                           f"{address} does not serve the traft client protocol "
                           f"(HTTP 404{detail})", server=address)
    return _NotSent(f"refused (HTTP {exc.status_code}{detail})")


def _key(key: object, *, empty: bool = False) -> str:
    if not isinstance(key, str) or (not key and not empty):
        raise ValueError(f"a key must be a non-empty string, got {key!r}")
    return key


def _addr(address: str) -> str:
    return parse_servers(address)[0]


def _consistency(level: object) -> str:
    if level not in CONSISTENCY_LEVELS:
        raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}, "
                         f"got {level!r}")
    return str(level)


def _field(result: Any, name: str, types: type | tuple[type, ...]) -> Any:
    if not isinstance(result, dict) or name not in result or not isinstance(result[name], types):
        raise TransportError(f"a server sent a malformed answer (no {name!r})")
    return result[name]
