"""The server side of the client protocol: serves ``traft.kv`` requests for
one node over the WebSocket transport's ``client_handler`` hook.

::

    service = KVService(fsm)
    async with open_websocket_transport(host, port,
                                        client_handler=service.handle) as transport:
        async with open_raft(config, fsm, ..., transport) as raft:
            service.attach(raft)
            ...
            service.close()          # new requests: "unavailable"
            await service.drain()    # in-flight requests answered

Writes go through ``raft.apply(KVCommand(...).encode())`` on the leader (a
follower answers ``not_leader`` with the leader's address and does nothing);
reads are served from the local state machine after the fence the requested
consistency needs: none (``stale``), ``verify_leader`` (``leader``) or
``read_index`` (``linearizable``, on any server). Admin operations call the
corresponding Raft methods. Every wait is bounded by the request's
``timeout`` (capped by ``max_timeout``). A malformed request is answered
with ``bad_request``; nothing a client sends can crash the node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .._codec import _cbor_load
from .._errors import (
    ConfigurationChangeError,
    LeadershipLostError,
    LeadershipTransferInProgressError,
    NothingNewToSnapshotError,
    NotLeaderError,
    RaftError,
    RaftShutdownError,
    TransportError,
)
from .._node import Raft
from .._types import RaftState, Suffrage
from .._websocket_transport import parse_address
from ._client import (
    BAD_REQUEST,
    CONFLICT,
    CONSISTENCY_LEVELS,
    FAILED,
    INTERNAL,
    NO_LEADER,
    NOT_LEADER,
    NOTHING_TO_SNAPSHOT,
    OUTCOME_UNKNOWN,
    TIMEOUT,
    TRANSFER_IN_PROGRESS,
    UNAVAILABLE,
    encode_error,
    encode_result,
)
from ._fsm import KVCommand, KVStateMachine

__all__ = ["KVService"]

logger = logging.getLogger("traft.kv.service")

_MAX_IN_FLIGHT: Final = 64  # per connection; the reader waits beyond it


class _Fail(Exception):
    """An error answer."""

    def __init__(self, code: str, message: str, *, leader_id: str | None = None,
                 leader_address: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.leader_id = leader_id
        self.leader_address = leader_address


def _bad(message: str) -> _Fail:
    return _Fail(BAD_REQUEST, message)


def _text(args: dict[str, Any], name: str, *, empty: bool = False,
          optional: bool = False) -> Any:
    value = args.get(name)
    if value is None and optional:
        return None
    if type(value) is not str or (not value and not empty):
        raise _bad(f"args.{name} must be a {'' if empty else 'non-empty '}text string")
    return value


def _blob(args: dict[str, Any], name: str, *, optional: bool = False) -> bytes | None:
    value = args.get(name)
    if value is None and optional:
        return None
    if type(value) is not bytes:
        raise _bad(f"args.{name} must be a byte string{' or null' if optional else ''}")
    return value


def _uint(args: dict[str, Any], name: str, default: int = 0) -> int:
    value = args.get(name, default)
    if type(value) is not int or value < 0:
        raise _bad(f"args.{name} must be an unsigned integer")
    return value


def _address(args: dict[str, Any], name: str) -> str:
    value = _text(args, name)
    try:
        parse_address(value)
    except ValueError as exc:
        raise _bad(f"args.{name}: {exc}") from None
    return str(value)


def _not_leader(raft: Raft) -> _Fail:
    if raft.leader_address is None:
        return _Fail(NO_LEADER, f"{raft.config.local_id} knows of no leader",
                     leader_id=None, leader_address=None)
    return _Fail(NOT_LEADER, f"{raft.config.local_id} is not the leader; the leader is "
                             f"{raft.leader_id} at {raft.leader_address}",
                 leader_id=raft.leader_id, leader_address=raft.leader_address)


class KVService:
    """Serves the client protocol (``docs/protocol.md``) for one node.

    Args:
      fsm: the node's :class:`KVStateMachine` (reads are served from it).
      default_timeout: how long a request without a ``timeout`` may wait.
      max_timeout: cap on any request's ``timeout``.
      idle_timeout: a connection with no request for this long is closed.
    """

    def __init__(self, fsm: KVStateMachine, *, default_timeout: float = 5.0,
                 max_timeout: float = 60.0, idle_timeout: float = 300.0) -> None:
        self.fsm = fsm
        self.raft: Raft | None = None
        self._default_timeout = default_timeout
        self._max_timeout = max_timeout
        self._idle_timeout = idle_timeout
        self._closing = False
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._ops: dict[str, Callable[[Raft, dict[str, Any], float], Awaitable[Any]]] = {
            "put": self._put, "delete": self._delete, "cas": self._cas,
            "get": self._get, "keys": self._keys, "status": self._status,
            "add_voter": self._add_voter, "add_nonvoter": self._add_nonvoter,
            "remove": self._remove, "join": self._join,
            "transfer_leader": self._transfer_leader, "snapshot": self._snapshot,
        }

    # -- life cycle ---------------------------------------------------------

    def attach(self, raft: Raft) -> None:
        """Start serving ``raft`` (until then requests get ``unavailable``)."""
        self.raft = raft

    def close(self) -> None:
        """Refuse new requests (``unavailable``: nothing done, retry
        elsewhere); those in flight go on."""
        self._closing = True

    async def drain(self) -> None:
        """Wait until no request is in flight (bound it with a cancel scope)."""
        await self._idle.wait()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- connections --------------------------------------------------------------

    async def handle(self, conn: WebSocketConnection, peer: str) -> None:
        """The transport's ``client_handler``: serve one connection until the
        client closes it (requests run concurrently, answers in any order)."""
        logger.debug("client %s connected", peer)
        limit = trio.Semaphore(_MAX_IN_FLIGHT)
        async with trio.open_nursery() as nursery:
            while True:
                with trio.move_on_after(self._idle_timeout) as idle:
                    try:
                        data = await conn.get_message()
                    except ConnectionClosed:
                        break
                if idle.cancelled_caught:
                    if limit.value == _MAX_IN_FLIGHT:
                        logger.debug("client %s idle; closing", peer)
                        await self._close(conn, 1000, "idle timeout")
                        break
                    continue
                if isinstance(data, str):
                    logger.warning("client %s sent a text message; closing", peer)
                    await self._close(conn, 1003, "binary (CBOR) messages only")
                    break
                await limit.acquire()
                nursery.start_soon(self._serve, conn, peer, data, limit)
            # The client is gone: its answers can no longer be delivered.
            nursery.cancel_scope.cancel()

    async def _close(self, conn: WebSocketConnection, code: int, reason: str) -> None:
        with trio.move_on_after(0.5):
            try:
                await conn.aclose(code, reason)
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _serve(self, conn: WebSocketConnection, peer: str, data: bytes,
                     limit: trio.Semaphore) -> None:
        self._in_flight += 1
        self._idle = trio.Event() if self._in_flight == 1 else self._idle
        try:
            answer = await self._answer(peer, data)
            try:
                await conn.send_message(answer)
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                logger.debug("client %s left before its answer", peer)
        finally:
            limit.release()
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _answer(self, peer: str, data: bytes) -> bytes:
        request_id: int | None = None
        op = "?"
        try:
            try:
                obj = _cbor_load(data)
            except TransportError as exc:
                raise _bad(str(exc)) from None
            if type(obj) is not dict:
                raise _bad("a request must be a CBOR map")
            raw_id = obj.get("id")
            if type(raw_id) is not int or raw_id < 0:
                raise _bad("id must be an unsigned integer")
            request_id = raw_id
            raw_op = obj.get("op")
            handler = self._ops.get(raw_op) if type(raw_op) is str else None
            if handler is None:
                raise _bad(f"unknown op {raw_op!r}"[:200])
            op = str(raw_op)
            args = obj.get("args", {})
            if type(args) is not dict:
                raise _bad("args must be a map")
            timeout = obj.get("timeout", self._default_timeout)
            if (type(timeout) not in (int, float) or not math.isfinite(timeout)
                    or timeout <= 0):
                raise _bad("timeout must be a positive number of seconds")
            timeout = min(float(timeout), self._max_timeout)
            raft = self.raft
            if raft is None or self._closing or raft.state is RaftState.SHUTDOWN:
                raise _Fail(UNAVAILABLE, "the server is "
                            + ("starting" if raft is None else "shutting down"))
            result = await handler(raft, args, timeout)
            return encode_result(request_id, result)
        except _Fail as fail:
            if fail.code == BAD_REQUEST:
                logger.info("client %s: bad request: %s", peer, fail.message)
            return encode_error(request_id, fail.code, fail.message,
                                leader_id=fail.leader_id, leader_address=fail.leader_address)
        except Exception as exc:
            logger.exception("client %s: %s failed", peer, op)
            return encode_error(request_id, INTERNAL, f"{op} failed on the server: {exc!r}"[:300])

    # -- helpers ------------------------------------------------------------------

    async def _bounded(self, raft: Raft, what: str, timeout: float,
                       call: Callable[[], Awaitable[Any]], *, write: bool) -> Any:
        """Run ``call`` within ``timeout``, turning Raft errors into answers."""
        dispatched = False
        try:
            with trio.move_on_after(timeout):
                dispatched = True
                return await call()
        except NotLeaderError:
            raise _not_leader(raft) from None
        except LeadershipTransferInProgressError:
            raise _Fail(TRANSFER_IN_PROGRESS,
                        "the leader is transferring leadership; retry shortly") from None
        except LeadershipLostError as exc:
            raise _Fail(OUTCOME_UNKNOWN if write else NO_LEADER,
                        f"leadership was lost during the {what}"
                        + ("; it may or may not have happened" if write else "")
                        + f" ({exc})") from None
        except RaftShutdownError:
            raise _Fail(OUTCOME_UNKNOWN if write and dispatched else UNAVAILABLE,
                        f"the server shut down during the {what}") from None
        except ConfigurationChangeError as exc:
            raise _Fail(CONFLICT, str(exc)) from None
        except NothingNewToSnapshotError as exc:
            raise _Fail(NOTHING_TO_SNAPSHOT, str(exc) or "nothing new to snapshot") from None
        except (TypeError, ValueError) as exc:
            raise _bad(str(exc)) from None
        except RaftError as exc:
            raise _Fail(FAILED, str(exc) or type(exc).__name__) from None
        raise _Fail(TIMEOUT, f"the {what} did not complete within {timeout:g}s"
                    + ("; it may or may not have happened" if write else ""))

    async def _apply(self, raft: Raft, command: KVCommand, timeout: float) -> tuple[int, Any]:
        if raft.state is not RaftState.LEADER:
            raise _not_leader(raft)
        applied = await self._bounded(raft, command.op, timeout,
                                      lambda: raft.apply_log(command.encode()), write=True)
        return applied.index, applied.response

    async def _fence(self, raft: Raft, args: dict[str, Any], timeout: float) -> None:
        level = args.get("consistency", "linearizable")
        if level not in CONSISTENCY_LEVELS:
            raise _bad(f"args.consistency must be one of {', '.join(CONSISTENCY_LEVELS)}")
        if level == "leader":
            if raft.state is not RaftState.LEADER:
                raise _not_leader(raft)
            await self._bounded(raft, "read", timeout, raft.verify_leader, write=False)
        elif level == "linearizable":
            if raft.leader_id is None and raft.state is not RaftState.LEADER:
                raise _not_leader(raft)
            await self._bounded(raft, "read", timeout, raft.read_index, write=False)

    # -- operations ---------------------------------------------------------------

    async def _put(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        command = KVCommand("put", _text(args, "key"), _blob(args, "value"))
        index, _ = await self._apply(raft, command, timeout)
        return {"index": index}

    async def _delete(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        index, existed = await self._apply(raft, KVCommand("delete", _text(args, "key")),
                                           timeout)
        return {"index": index, "existed": bool(existed)}

    async def _cas(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        command = KVCommand("cas", _text(args, "key"), _blob(args, "value", optional=True),
                            _blob(args, "expected", optional=True))
        index, swapped = await self._apply(raft, command, timeout)
        return {"index": index, "swapped": bool(swapped)}

    async def _get(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        key = _text(args, "key")
        await self._fence(raft, args, timeout)
        return {"value": self.fsm.get(key), "index": raft.applied_index}

    async def _keys(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        prefix = _text(args, "prefix", empty=True, optional=True) or ""
        await self._fence(raft, args, timeout)
        return {"keys": self.fsm.keys(prefix), "index": raft.applied_index}

    async def _status(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        stats = raft.stats()
        configuration = raft.get_configuration()
        return {
            "id": raft.config.local_id,
            "address": raft.transport.local_address,
            "state": raft.state.name.lower(),
            "term": raft.current_term,
            "last_index": raft.last_index,
            "commit_index": raft.commit_index,
            "applied_index": raft.applied_index,
            "last_contact": stats.get("last_contact"),
            "snapshot_index": stats.get("last_snapshot_index", 0),
            "leader_id": raft.leader_id,
            "leader_address": raft.leader_address,
            "configuration": [
                {"id": s.id, "address": s.address, "suffrage": s.suffrage.name.lower()}
                for s in configuration.servers],
            "configuration_index": stats.get("latest_configuration_index", 0),
            "stats": {k: v for k, v in stats.items() if k != "latest_configuration"},
        }

    async def _change(self, raft: Raft, what: str, timeout: float,
                      call: Callable[[], Awaitable[int]]) -> Any:
        if raft.state is not RaftState.LEADER:
            raise _not_leader(raft)
        index = await self._bounded(raft, what, timeout, call, write=True)
        return {"index": index}

    async def _add_voter(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        id, address, prev = _text(args, "id"), _address(args, "address"), _uint(args, "prev_index")
        return await self._change(raft, "add_voter", timeout,
                                  lambda: raft.add_voter(id, address, prev_index=prev))

    async def _add_nonvoter(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        id, address, prev = _text(args, "id"), _address(args, "address"), _uint(args, "prev_index")
        return await self._change(raft, "add_nonvoter", timeout,
                                  lambda: raft.add_nonvoter(id, address, prev_index=prev))

    async def _remove(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        id, prev = _text(args, "id"), _uint(args, "prev_index")
        if raft.state is RaftState.LEADER and not any(
                s.id == id for s in raft.get_configuration().servers):
            raise _Fail(FAILED, f"{id} is not a member of the cluster")
        return await self._change(raft, "remove", timeout,
                                  lambda: raft.remove_server(id, prev_index=prev))

    async def _join(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        id, address = _text(args, "id"), _address(args, "address")
        voter = args.get("voter", True)
        if type(voter) is not bool:
            raise _bad("args.voter must be a boolean")
        if raft.state is not RaftState.LEADER:
            raise _not_leader(raft)
        suffrage = Suffrage.VOTER if voter else Suffrage.NONVOTER
        for server in raft.get_configuration().servers:
            if server.id == id and server.address == address and server.suffrage is suffrage:
                return {"index": raft.stats().get("latest_configuration_index", 0),
                        "already": True}
            if server.id != id and server.address == address:
                raise _Fail(CONFLICT, f"{address} already belongs to {server.id}")
        if voter:
            result = await self._change(raft, "join", timeout,
                                        lambda: raft.add_voter(id, address))
        else:
            result = await self._change(raft, "join", timeout,
                                        lambda: raft.add_nonvoter(id, address))
        logger.info("%s joined the cluster at %s as a %s", id, address, suffrage.name.lower())
        return result

    async def _transfer_leader(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        target = _text(args, "id", optional=True)
        if raft.state is not RaftState.LEADER:
            raise _not_leader(raft)
        await self._bounded(raft, "leadership transfer", timeout,
                            lambda: raft.leadership_transfer(target), write=True)
        return {"leader_id": raft.leader_id if raft.leader_id != raft.config.local_id
                else None}

    async def _snapshot(self, raft: Raft, args: dict[str, Any], timeout: float) -> Any:
        leader_only = args.get("leader", False)
        if type(leader_only) is not bool:
            raise _bad("args.leader must be a boolean")
        if leader_only and raft.state is not RaftState.LEADER:
            raise _not_leader(raft)
        meta = await self._bounded(raft, "snapshot", timeout, raft.snapshot, write=True)
        return {"id": meta.id, "index": meta.index, "term": meta.term, "size": meta.size,
                "server": raft.config.local_id}
