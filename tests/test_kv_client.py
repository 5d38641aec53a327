"""The client protocol end to end, in process: ``KVService`` on real
WebSocket transports (loopback, port 0, the real clock) and
``traft.kv.Client``. Redirects, consistency levels, admin operations, the
retry rule, and malformed requests (answered, never fatal)."""

from __future__ import annotations

import functools
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cbor2
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket

from traft import (
    Config,
    Configuration,
    InmemSnapshotStore,
    InmemStore,
    RaftState,
    Server,
    TransportError,
    open_raft,
    open_websocket_transport,
)
from traft._node import Raft
from traft._websocket_transport import CLIENT_RESOURCE, CLIENT_SUBPROTOCOL
from traft.kv import Client, ClientError, KVService, KVStateMachine
from traft.kv._client import encode_error

F = TypeVar("F", bound=Callable[..., Awaitable[None]])

# Short enough for quick elections, long enough that a loaded test machine
# does not make leaders step down mid-test.
FAST = dict(heartbeat_timeout=0.4, election_timeout=0.4, leader_lease_timeout=0.4,
            commit_timeout=0.02)
TRANSPORT = dict(connect_timeout=1.0, handshake_timeout=1.0, send_timeout=1.0,
                 backoff_initial=0.01, backoff_max=0.1)


def fail_after(seconds: float) -> Callable[[F], F]:
    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(seconds):
                await fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    id: str
    raft: Raft
    service: KVService
    fsm: KVStateMachine
    address: str
    scope: trio.CancelScope
    stopped: trio.Event

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


@dataclass
class KVCluster:
    nursery: trio.Nursery
    token: str | None
    nodes: dict[str, Node] = field(default_factory=dict)

    async def start(self, id: str, *, attach: bool = True) -> Node:
        node: Node = await self.nursery.start(self._run, id, attach)
        self.nodes[id] = node
        return node

    async def _run(self, id: str, attach: bool, *,
                   task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        fsm = KVStateMachine()
        service = KVService(fsm)
        store = InmemStore()
        stopped = trio.Event()
        with trio.CancelScope() as scope:
            async with open_websocket_transport(
                    "127.0.0.1", 0, auth_token=self.token, client_handler=service.handle,
                    rng=random.Random(id), **TRANSPORT) as transport:  # type: ignore[arg-type]
                config = Config(local_id=id, rng=random.Random(f"raft-{id}"), **FAST)  # type: ignore[arg-type]
                async with open_raft(config, fsm, store, store, InmemSnapshotStore(),
                                     transport) as raft:
                    if attach:
                        service.attach(raft)
                    task_status.started(Node(id, raft, service, fsm, transport.local_address,
                                             scope, stopped))
                    try:
                        await trio.sleep_forever()
                    finally:
                        stopped.set()

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    async def bootstrap(self) -> None:
        configuration = Configuration(tuple(Server(n.id, n.address)
                                            for n in self.nodes.values()))
        for node in self.nodes.values():
            await node.raft.bootstrap_cluster(configuration)

    async def leader(self) -> Node:
        while True:
            leaders = [n for n in self.nodes.values() if n.raft.state is RaftState.LEADER]
            if len(leaders) == 1 and all(n.raft.leader_id == leaders[0].id
                                         for n in self.nodes.values()):
                return leaders[0]
            await trio.sleep(0.02)

    def client(self, addresses: list[str] | None = None, **kwargs: Any) -> Client:
        kwargs.setdefault("auth_token", self.token)
        kwargs.setdefault("timeout", 3.0)
        kwargs.setdefault("rng", random.Random(1))
        return Client(addresses or self.addresses, **kwargs)


@asynccontextmanager
async def kv_cluster(n: int = 3, *, token: str | None = "s3cret",
                     bootstrap: bool = True) -> AsyncIterator[KVCluster]:
    async with trio.open_nursery() as nursery:
        cluster = KVCluster(nursery, token)
        for i in range(1, n + 1):
            await cluster.start(f"n{i}")
        if bootstrap:
            await cluster.bootstrap()
        yield cluster
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw(address: str, token: str | None = "s3cret") -> AsyncIterator[WebSocketConnection]:
    host, port = address.rsplit(":", 1)
    headers = [] if token is None else [(b"Authorization", f"Bearer {token}".encode())]
    async with open_websocket(host, int(port), CLIENT_RESOURCE, use_ssl=False,
                              subprotocols=[CLIENT_SUBPROTOCOL], extra_headers=headers) as ws:
        yield ws


async def ask(ws: WebSocketConnection, message: Any) -> dict[str, Any]:
    await ws.send_message(message if isinstance(message, bytes) else cbor2.dumps(message))
    answer = cbor2.loads(await ws.get_message())
    assert isinstance(answer, dict)
    return answer


# ---------------------------------------------------------------------------


@fail_after(20)
async def test_operations_through_a_follower_follow_the_redirect() -> None:
    async with kv_cluster() as cluster:
        leader = await cluster.leader()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        async with cluster.client([follower.address]) as client:
            assert await client.put("a", b"1") > 0
            assert client.leader == leader.address
            assert await client.get("a") == b"1"
            assert await client.put("ab", "two") > 0  # str values are UTF-8
            assert await client.keys("a") == ["a", "ab"]
            assert await client.keys() == ["a", "ab"]
            assert await client.cas("a", b"1", b"3") is True
            assert await client.cas("a", b"1", b"4") is False
            assert await client.cas("new", None, b"x") is True  # expected absent
            assert await client.get("a") == b"3"
            assert await client.delete("ab") is True
            assert await client.delete("ab") is False
            assert await client.get("ab") is None
            assert await client.cas("new", b"x", None) is True  # swap to absent
            assert await client.get("new") is None
            # the leader's state machine holds exactly that
            assert leader.fsm.items() == {"a": b"3"}


@fail_after(20)
async def test_consistency_levels_on_a_follower() -> None:
    async with kv_cluster() as cluster:
        leader = await cluster.leader()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        async with cluster.client() as writer:
            await writer.put("k", b"v")
        async with cluster.client([follower.address]) as client:
            # linearizable: read_index on the follower itself, no redirect
            assert await client.get("k", consistency="linearizable") == b"v"
            assert client.leader is None
            # leader: redirected to the leader, which confirms with a quorum
            assert await client.get("k", consistency="leader") == b"v"
            assert client.leader == leader.address
            # stale: whatever the follower has applied (it has: linearizable above)
            async with cluster.client([follower.address]) as other:
                assert await other.get("k", consistency="stale") == b"v"
                assert await other.keys(consistency="stale") == ["k"]
            with pytest.raises(ValueError, match="consistency"):
                await client.get("k", consistency="bogus")  # type: ignore[arg-type]


@fail_after(20)
async def test_status_and_cluster_status() -> None:
    async with kv_cluster() as cluster:
        leader = await cluster.leader()
        async with cluster.client([cluster.addresses[0]]) as client:
            await client.put("x", b"y")
            status = await client.status(leader.address)
            assert status["id"] == leader.id and status["state"] == "leader"
            assert status["leader_address"] == leader.address
            assert {s["id"] for s in status["configuration"]} == {"n1", "n2", "n3"}
            assert status["commit_index"] >= 2 and status["term"] >= 1
            rows = await client.cluster_status()
            assert sorted(r["id"] for r in rows) == ["n1", "n2", "n3"]
            assert sorted(r["state"] for r in rows) == ["follower", "follower", "leader"]
            assert all(r["suffrage"] == "voter" for r in rows)
            for key in ("term", "last_index", "commit_index", "applied_index",
                        "last_contact", "snapshot_index", "address"):
                assert all(key in r for r in rows), key
            # a stopped server shows as unreachable
            victim = next(n for n in cluster.nodes.values() if n is not leader)
            await victim.stop()
            rows = await client.cluster_status()
            assert {r["id"]: r["state"] for r in rows}[victim.id] == "unreachable"


@fail_after(30)
async def test_admin_join_remove_transfer_snapshot() -> None:
    async with kv_cluster() as cluster:
        leader = await cluster.leader()
        n4 = await cluster.start("n4")  # not bootstrapped: waits to be added
        async with cluster.client() as client:
            await client.put("k", b"v")
            index = await client.join("n4", n4.address)
            assert index > 0
            # joining again is a no-op
            assert await client.join("n4", n4.address) == index
            with trio.fail_after(5):
                while n4.fsm.get("k") != b"v":
                    await trio.sleep(0.02)
            rows = await client.cluster_status()
            assert {r["id"]: r["suffrage"] for r in rows}["n4"] == "voter"
            with pytest.raises(ClientError) as info:
                await client.join("n5", n4.address)  # an address that is taken
            assert info.value.code == "conflict"
            assert await client.remove_server("n4") > index
            with pytest.raises(ClientError) as info:
                await client.remove_server("n4")
            assert info.value.code == "failed" and "not a member" in str(info.value)
            assert {s["id"] for s in (await client.status(leader.address))["configuration"]} \
                == {"n1", "n2", "n3"}
            assert await client.add_nonvoter("n4", n4.address) > 0
            rows = await client.cluster_status()
            assert {r["id"]: r["suffrage"] for r in rows}["n4"] == "nonvoter"
            await client.remove_server("n4")
            # snapshot on the leader, then nothing new
            meta = await client.snapshot()
            assert meta["server"] == leader.id and meta["index"] > 0
            with pytest.raises(ClientError) as info:
                await client.snapshot()
            assert info.value.code == "nothing_to_snapshot"
            # a named follower snapshots itself
            follower = next(n for n in cluster.nodes.values()
                            if n is not leader and n.id != "n4")
            assert (await client.snapshot(follower.address))["server"] == follower.id
            # leadership transfer to a named voter
            target = next(n for n in cluster.nodes.values()
                          if n is not leader and n.id != "n4")
            await client.transfer_leadership(target.id)
            with trio.fail_after(5):
                while target.raft.state is not RaftState.LEADER:
                    await trio.sleep(0.02)
            assert await client.put("after", b"transfer") > 0
            assert client.leader == target.address


@fail_after(20)
async def test_malformed_requests_get_bad_request_and_the_node_keeps_serving() -> None:
    async with kv_cluster() as cluster:
        leader = await cluster.leader()
        async with raw(leader.address) as ws:
            bad: list[tuple[Any, str]] = [
                (b"\xff\x00garbage", "CBOR"),
                ([1, 2, 3], "map"),
                ({"op": "get"}, "id"),
                ({"id": -1, "op": "get"}, "id"),
                ({"id": 1, "op": "explode"}, "unknown op"),
                ({"id": 2, "op": 7}, "unknown op"),
                ({"id": 3, "op": "get", "args": []}, "args"),
                ({"id": 4, "op": "get", "args": {"key": 5}}, "key"),
                ({"id": 5, "op": "get", "args": {"key": "k", "consistency": "x"}},
                 "consistency"),
                ({"id": 6, "op": "put", "args": {"key": "k", "value": "text"}}, "value"),
                ({"id": 7, "op": "put", "args": {"key": "", "value": b"v"}}, "key"),
                ({"id": 8, "op": "get", "args": {"key": "k"}, "timeout": -1}, "timeout"),
                ({"id": 9, "op": "add_voter", "args": {"id": "x", "address": "nohost"}},
                 "address"),
                ({"id": 10, "op": "remove", "args": {"id": "n9", "prev_index": "a"}},
                 "prev_index"),
                ({"id": 11, "op": "join", "args": {"id": "x", "address": "h:1", "voter": 1}},
                 "voter"),
                (cbor2.dumps({"id": 12, "op": "get"}) + b"\x00", "trailing"),
            ]
            for message, hint in bad:
                answer = await ask(ws, message)
                assert answer["error"]["code"] == "bad_request", (message, answer)
                assert hint in answer["error"]["message"], (hint, answer)
            # the same connection still works
            answer = await ask(ws, {"id": 99, "op": "put", "args": {"key": "k", "value": b"v"}})
            assert answer["id"] == 99 and answer["result"]["index"] > 0
            # unknown keys are ignored
            answer = await ask(ws, {"id": 100, "op": "get", "args": {"key": "k", "x": 1},
                                    "extra": True})
            assert answer["result"]["value"] == b"v"
        async with raw(leader.address) as ws:
            await ws.send_message("text is refused")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1003
        async with cluster.client() as client:
            assert await client.get("k") == b"v"


@fail_after(20)
async def test_wrong_or_missing_token_is_unauthorized() -> None:
    async with kv_cluster() as cluster:
        for token in ("wrong", None):
            async with cluster.client(auth_token=token) as client:
                with pytest.raises(ClientError) as info:
                    await client.get("k")
                assert info.value.code == "unauthorized"
                assert "refused the auth token (HTTP 403" in str(info.value)


@fail_after(10)
async def test_unreachable_cluster_is_a_transport_error() -> None:
    ports = [free_port(), free_port()]
    async with Client([f"127.0.0.1:{p}" for p in ports], timeout=3) as client:
        with trio.fail_after(2):  # fails fast: no point waiting for nobody
            with pytest.raises(TransportError, match="cannot reach any server of the "
                                                     "cluster.*connection refused"):
                await client.put("k", b"v")
            with pytest.raises(TransportError, match="cannot reach 127.0.0.1"):
                await client.status(f"127.0.0.1:{ports[0]}")


@fail_after(10)
async def test_no_leader_yet_times_out_with_no_leader() -> None:
    async with kv_cluster(2, bootstrap=False) as cluster:
        async with cluster.client(timeout=0.5) as client:
            for call in (client.put("k", b"v"), client.get("k"),
                         client.get("k", consistency="leader")):
                with pytest.raises(ClientError) as info:
                    await call
                assert info.value.code == "no_leader", info.value
                assert "knows of no leader" in str(info.value)
                assert "gave up after 0.5s" in str(info.value)
            # a stale read needs no leader
            assert await client.get("k", consistency="stale") is None
            status = await client.status()
            assert status["state"] == "follower" and status["configuration"] == []


@fail_after(10)
async def test_a_service_not_yet_attached_answers_unavailable() -> None:
    async with kv_cluster(1, bootstrap=False) as cluster:
        node = await cluster.start("late", attach=False)
        async with cluster.client([node.address], timeout=0.5) as client:
            with pytest.raises(ClientError) as info:
                await client.get("k", consistency="stale")
            assert info.value.code == "unavailable" and "starting" in str(info.value)
            node.service.attach(node.raft)
            assert await client.get("k", consistency="stale") is None
            node.service.close()
            with pytest.raises(ClientError) as info:
                await client.status(node.address)
            assert info.value.code == "unavailable" and "shutting down" in str(info.value)


@fail_after(10)
async def test_the_client_path_is_refused_without_a_handler() -> None:
    async with open_websocket_transport("127.0.0.1", 0, **TRANSPORT) as plain:  # type: ignore[arg-type]
        async with Client([plain.local_address], timeout=1) as client:
            with pytest.raises(ClientError) as info:
                await client.get("k")
            assert "does not serve the traft client protocol (HTTP 404" in str(info.value)


@asynccontextmanager
async def fake_server(handler: Callable[[WebSocketConnection, str], Awaitable[None]],
                      ) -> AsyncIterator[str]:
    async with open_websocket_transport("127.0.0.1", 0, client_handler=handler,
                                        **TRANSPORT) as t:  # type: ignore[arg-type]
        yield t.local_address


@fail_after(15)
async def test_writes_are_not_retried_once_sent_but_reads_are() -> None:
    seen: list[str] = []

    async def hang_up(conn: WebSocketConnection, peer: str) -> None:
        request = cbor2.loads(await conn.get_message())
        seen.append(request["op"])
        await conn.aclose()

    async with fake_server(hang_up) as address:
        async with Client([address], timeout=1, rng=random.Random(3)) as client:
            with pytest.raises(ClientError) as info:
                await client.put("k", b"v")
            assert info.value.code == "outcome_unknown"
            assert "may or may not have happened" in str(info.value)
            assert seen == ["put"]  # sent once, never again
            with pytest.raises(ClientError) as info:
                await client.get("k")
            assert info.value.code == "timeout"
            assert seen.count("get") > 1  # a read is retried until the deadline


@fail_after(15)
async def test_not_leader_before_dispatch_is_retried_at_the_leader() -> None:
    async with kv_cluster() as cluster:
        leader = await cluster.leader()
        asked: list[str] = []

        async def redirect(conn: WebSocketConnection, peer: str) -> None:
            while True:
                try:
                    request = cbor2.loads(await conn.get_message())
                except ConnectionClosed:
                    return
                asked.append(request["op"])
                await conn.send_message(encode_error(
                    request["id"], "not_leader", "not me", leader_id=leader.id,
                    leader_address=leader.address))

        async with fake_server(redirect) as address:
            async with cluster.client([address]) as client:
                assert await client.put("k", b"v") > 0
                assert asked == ["put"] and client.leader == leader.address
                assert leader.fsm.get("k") == b"v"


@fail_after(20)
async def test_writes_survive_a_leader_crash() -> None:
    async with kv_cluster() as cluster:
        leader = await cluster.leader()
        async with cluster.client() as client:
            await client.put("before", b"1")
            await leader.stop()
            await trio.sleep(0.1)  # the client notices its connection closed
            del cluster.nodes[leader.id]
            assert await client.put("after", b"2") > 0
            assert client.leader != leader.address
            assert await client.get("before") == b"1"
            assert await client.get("after") == b"2"


@fail_after(10)
async def test_client_argument_errors_and_no_exception_group() -> None:
    with pytest.raises(ValueError, match="no server addresses"):
        Client([])
    with pytest.raises(ValueError, match="port"):
        Client("127.0.0.1")
    with pytest.raises(ValueError, match="timeout"):
        Client("127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="auth_token"):
        Client("127.0.0.1:1", auth_token="has space")
    client = Client("127.0.0.1:1,127.0.0.1:1, 127.0.0.1:2")
    assert client.servers == ["127.0.0.1:1", "127.0.0.1:2"]
    with pytest.raises(RuntimeError, match="async with"):
        await client.get("k")
    # a user's exception leaves the block as itself, not in a group
    with pytest.raises(KeyError):
        async with Client([f"127.0.0.1:{free_port()}"], timeout=1) as c:
            with pytest.raises(TransportError):
                await c.get("k")
            raise KeyError("mine")
    async with Client("127.0.0.1:1") as c:
        with pytest.raises(ValueError, match="key"):
            await c.put("", b"v")


def test_protocol_document_lists_every_op_and_error_code() -> None:
    import re
    from pathlib import Path

    from traft.kv import _client

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    section = doc.split("## 11. Client protocol", 1)[1]
    ops = section.split("### 11.3 Operations", 1)[1].split("Read consistency", 1)[0]
    documented_ops = re.findall(r"^\| `(\w+)` \|", ops, flags=re.M)
    service = KVService(KVStateMachine())
    assert sorted(documented_ops) == sorted(service._ops)
    errors = section.split("### 11.4 Errors", 1)[1].split("### 11.5", 1)[0]
    codes = {getattr(_client, name) for name in _client.__all__
             if name.isupper() and isinstance(getattr(_client, name), str)}
    documented_codes = set(re.findall(r"^\| `(\w+)` \|", errors, flags=re.M)) | {"unauthorized"}
    assert documented_codes == codes
    # the example bytes are what the reference encoder writes
    from traft.kv._client import encode_request, encode_result
    assert encode_request(1, "put", {"key": "greeting", "value": b"hello"}).hex() in section
    assert encode_result(1, {"index": 7}).hex() in section
