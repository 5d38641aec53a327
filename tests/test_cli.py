"""The ``traft`` command line, driven as a new user would: real ``traft``
subprocesses (``traft node``, ``traft local`` and the client commands) on
loopback, the real clock, a deadline on everything.

Raft timeouts are shortened through ``--config`` (a ``[raft]`` table), so
elections take a fraction of a second.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from traft.kv import Client, ClientError
from traft import TransportError

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).parent / "traft"
# The console script when installed next to this Python, else the module.
TRAFT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "traft"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
for _name in ("TRAFT_CLUSTER", "TRAFT_AUTH_TOKEN_FILE", "TRAFT_VERBOSE"):
    ENV.pop(_name, None)

# Short enough for quick elections, long enough that a loaded test machine
# does not make leaders step down (a lease of 0.1 s did).
FAST = """\
[raft]
heartbeat_timeout = 0.5
election_timeout = 0.5
leader_lease_timeout = 0.5
commit_timeout = 0.02
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_range(n: int) -> int:
    """A base port with ``n`` consecutive free ports."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 60000)
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")  # pragma: no cover


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no procfs
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The one line a failing command prints (asserting it is one)."""
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert "Traceback" not in self.err
        assert lines[0].startswith("error: "), self.err
        return lines[0]


async def traft(*args: str, timeout: float = 20) -> Result:
    with trio.fail_after(timeout):
        done = await trio.run_process([*TRAFT, *args], capture_stdout=True,
                                      capture_stderr=True, check=False, env=ENV, stdin=b"")
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15,
                     what: str = "condition") -> None:
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Node:
    id: str
    port: int
    data: Path
    log: Path
    process: trio.Process

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        self.process.send_signal(sig)
        with trio.fail_after(timeout):
            return await self.process.wait()


class Nodes:
    """``traft node`` processes of one test; all killed at its end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = tmp / "fast.toml"
        self.config.write_text(FAST)
        self.processes: list[trio.Process] = []

    async def start(self, id: str, port: int, *extra: str, data: Path | None = None) -> Node:
        data = data or self.tmp / id
        log = self.tmp / f"{id}.log"
        with open(log, "ab") as f:
            process = await trio.lowlevel.open_process(
                [*TRAFT, "node", "--id", id, "--listen", f"127.0.0.1:{port}", "--data",
                 str(data), "--config", str(self.config), *extra],
                stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=ENV)
        self.processes.append(process)
        return Node(id, port, data, log, process)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    registry = Nodes(tmp_path)
    try:
        yield registry
    finally:
        for process in registry.processes:
            if process.returncode is None:
                process.kill()
        with trio.move_on_after(10):
            for process in registry.processes:
                await process.wait()


async def status(cluster: str, timeout: float = 1.0) -> list[dict[str, Any]]:
    """Cluster status through the library client (fast polling)."""
    try:
        async with Client(cluster, timeout=timeout, connect_timeout=0.5) as client:
            return await client.cluster_status()
    except (ClientError, TransportError):
        return []


async def wait_leader(cluster: str, members: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def check() -> bool:
        rows = await status(cluster)
        leaders = [r for r in rows if r.get("state") == "leader"]
        ok = (len(rows) == members and len(leaders) == 1
              and all(r.get("state") in ("leader", "follower") for r in rows)
              and len({r.get("commit_index") for r in rows}) == 1)
        if ok:
            found.update(leaders[0])
        return ok

    await eventually(check, what=f"a leader of {members} servers")
    return found


# ---------------------------------------------------------------------------


async def test_three_nodes_failover_restart_join_and_remove(nodes: Nodes) -> None:
    with trio.fail_after(75):
        ports = [free_port() for _ in range(4)]
        ids = ["n1", "n2", "n3"]
        boot = ",".join(f"{i}=127.0.0.1:{p}" for i, p in zip(ids, ports))
        cluster = ",".join(f"127.0.0.1:{p}" for p in ports[:3])
        running = {i: await nodes.start(i, p, "--bootstrap", boot) for i, p in zip(ids, ports)}
        leader = await wait_leader(cluster, 3)

        r = await traft("put", "greeting", "hello", "--cluster", cluster)
        assert (r.rc, r.out, r.err) == (0, "ok\n", ""), r
        r = await traft("get", "greeting", "--cluster", cluster)
        assert (r.rc, r.out) == (0, "hello\n"), r

        # status: one row per server, JSON for scripts
        r = await traft("status", "--json", "--cluster", cluster)
        assert r.rc == 0, r
        rows = json.loads(r.out)
        assert sorted(row["id"] for row in rows) == ids
        assert sorted(row["state"] for row in rows) == ["follower", "follower", "leader"]
        for key in ("address", "suffrage", "term", "last_index", "commit_index",
                    "applied_index", "last_contact", "snapshot_index"):
            assert all(key in row for row in rows), key
        r = await traft("status", "--cluster", cluster)
        assert r.rc == 0 and "CONTACT" in r.out and leader["id"] in r.out, r

        # kill the leader: the cluster still serves, through the same command
        victim = running[leader["id"]]
        victim.process.kill()
        with trio.fail_after(5):
            await victim.process.wait()
        r = await traft("put", "after", "failover", "--cluster", cluster)
        assert (r.rc, r.out) == (0, "ok\n"), r
        r = await traft("get", "greeting", "--cluster", cluster)
        assert (r.rc, r.out) == (0, "hello\n"), r
        r = await traft("get", "after", "--consistency", "leader", "--cluster", cluster)
        assert (r.rc, r.out) == (0, "failover\n"), r

        # restart it on its data (--bootstrap again is ignored): data present
        running[victim.id] = await nodes.start(victim.id, victim.port, "--bootstrap", boot)

        async def caught_up() -> bool:
            r = await traft("get", "after", "--consistency", "stale",
                            "--cluster", victim.address)
            return r.rc == 0 and r.out == "failover\n"

        await eventually(caught_up, what="the restarted node to catch up")
        r = await traft("keys", "--consistency", "stale", "--cluster", victim.address)
        assert (r.rc, r.out) == (0, "after\ngreeting\n"), r
        assert "--bootstrap ignored" in running[victim.id].log_text()

        # a fourth node joins through any member, then is removed
        n4 = await nodes.start("n4", ports[3], "--join", running["n1"].address)
        await wait_leader(cluster, 4)
        rows = await status(cluster)
        assert {r["id"]: r["suffrage"] for r in rows}["n4"] == "voter"
        r = await traft("get", "greeting", "--consistency", "linearizable",
                        "--cluster", n4.address)  # served by the new follower
        assert (r.rc, r.out) == (0, "hello\n"), r
        r = await traft("remove", "n4", "--cluster", cluster)
        assert r.rc == 0 and r.out.startswith("ok: n4 removed"), r
        r = await traft("status", "--json", "--cluster", cluster)
        assert sorted(row["id"] for row in json.loads(r.out)) == ids, r
        assert await n4.stop() == 0
        assert "joined the cluster via" in n4.log_text()

        # admin: snapshot, leadership transfer, cas, delete
        r = await traft("snapshot", "--cluster", cluster)
        assert r.rc == 0 and r.out.startswith("ok: snapshot "), r
        r = await traft("transfer-leader", "--cluster", cluster)
        assert r.rc == 0 and r.out.startswith("ok: leadership transferred"), r
        r = await traft("cas", "greeting", "hello", "bonjour", "--cluster", cluster)
        assert (r.rc, r.out) == (0, "ok\n"), r
        r = await traft("cas", "greeting", "hello", "hola", "--cluster", cluster)
        assert r.rc == 1 and r.error_line == (
            "error: cas failed: 'greeting' does not hold the expected value"), r
        r = await traft("cas", "--absent", "fresh", "1", "--cluster", cluster)
        assert (r.rc, r.out) == (0, "ok\n"), r
        r = await traft("delete", "fresh", "--cluster", cluster)
        assert (r.rc, r.out) == (0, "deleted\n"), r
        r = await traft("get", "fresh", "--cluster", cluster)
        assert r.rc == 1 and r.error_line == "error: no such key: 'fresh'", r

        # SIGTERM: every node stops cleanly
        for node in running.values():
            node.process.send_signal(signal.SIGTERM)
        for node in running.values():
            with trio.fail_after(10):
                assert await node.process.wait() == 0, node.log_text()[-2000:]
            assert f"node {node.id} stopped (SIGTERM)" in node.log_text()


async def test_usage_and_unreachable_errors_are_one_line() -> None:
    with trio.fail_after(30):
        port = free_port()
        r = await traft("get", "k", "--cluster", f"127.0.0.1:{port}")
        assert r.rc == 1
        assert r.error_line == (f"error: cannot reach any server of the cluster "
                                f"(127.0.0.1:{port}: connection refused)")
        # --verbose adds the details, still ending with the one line
        r = await traft("get", "k", "--cluster", f"127.0.0.1:{port}", "--verbose")
        assert r.rc == 1 and "Traceback" in r.err
        assert r.err.splitlines()[-1].startswith("error: cannot reach any server")

        usage = {
            ("get",): "error: Missing argument 'KEY'. (see 'traft get --help')",
            ("get", "k", "--consistency", "bogus"):
                "error: Invalid value for '--consistency': 'bogus' is not one of 'stale', "
                "'leader', 'linearizable'. (see 'traft get --help')",
            ("put", "k", "v", "--cluster", "nohost"):
                "error: Invalid value for '--cluster' / '-c': address 'nohost' has no port "
                "(expected 'host:port') (see 'traft put --help')",
            ("node", "--id", "n1", "--listen", "x:99999", "--data", "d"):
                "error: Invalid value for '--listen': address 'x:99999' has an invalid port "
                "'99999' (see 'traft node --help')",
            ("node", "--id", "n1"):
                "error: Missing option '--listen', '--data' (or set it in --config). "
                "(see 'traft node --help')",
            ("node", "--id", "n1", "--listen", "127.0.0.1:1", "--data", "d",
             "--bootstrap", "n1"):
                "error: Invalid value for '--bootstrap': expected ID=HOST:PORT, got 'n1' "
                "(see 'traft node --help')",
            ("frobnicate",): "error: No such command 'frobnicate'. (see 'traft --help')",
            ("local", "--nodes", "0"):
                "error: Invalid value for '--nodes' / '-n': 0 is not in the range 1<=x<=9. "
                "(see 'traft local --help')",
            ("cas", "k", "only-one"): "error: expected KEY EXPECTED NEW "
                                      "(see 'traft cas --help')",
        }
        async with trio.open_nursery() as nursery:
            results: dict[tuple[str, ...], Result] = {}

            async def run(args: tuple[str, ...]) -> None:
                results[args] = await traft(*args)

            for args in usage:
                nursery.start_soon(run, args)
        for args, line in usage.items():
            assert results[args].rc == 2, (args, results[args])
            assert results[args].error_line == line, args
        r = await traft("--help")
        assert r.rc == 0 and "traft local" in r.out


async def test_node_errors_no_leader_token_locked_dir(nodes: Nodes, tmp_path: Path) -> None:
    with trio.fail_after(45):
        token, wrong = tmp_path / "token", tmp_path / "wrong"
        token.write_text("s3cret\n")
        wrong.write_text("guess\n")
        port = free_port()
        address = f"127.0.0.1:{port}"
        node = await nodes.start("n1", port, "--auth-token-file", str(token))
        await eventually(lambda: _listening(port), what="the node to listen")

        # no leader: a node that was never bootstrapped
        r = await traft("put", "k", "v", "--cluster", address, "--auth-token-file", str(token),
                        "--timeout", "1")
        assert r.rc == 1
        assert r.error_line == "error: no leader: n1 knows of no leader (gave up after 1s)"
        # wrong token, no token
        for extra in (["--auth-token-file", str(wrong)], []):
            r = await traft("get", "k", "--cluster", address, *extra)
            assert r.rc == 1
            assert r.error_line == (f"error: {address} refused the auth token "
                                    f"(HTTP 403: missing or wrong auth token)")
        # a data directory held by a running node
        r = await traft("node", "--id", "n1", "--listen", f"127.0.0.1:{free_port()}",
                        "--data", str(node.data))
        assert r.rc == 1
        assert r.error_line == (f"error: data directory {node.data} is in use by another "
                                f"traft node (lock {node.data}/node.lock is held)")
        # a port in use
        r = await traft("node", "--id", "x", "--listen", address, "--data",
                        str(tmp_path / "x"))
        assert r.rc == 1 and r.error_line.startswith(f"error: cannot listen on {address}"), r
        # a missing token file, a bad config file
        r = await traft("get", "k", "--cluster", address, "--auth-token-file",
                        str(tmp_path / "nope"))
        assert r.error_line == f"error: auth token file {tmp_path / 'nope'} does not exist"
        bad = tmp_path / "bad.toml"
        bad.write_text("[raft]\nheartbeat_timeot = 1\n")
        r = await traft("node", "--config", str(bad), "--id", "y", "--listen",
                        f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "y"))
        assert r.rc == 1 and r.error_line.startswith(
            f"error: {bad}: unknown [raft] setting 'heartbeat_timeot'"), r
        bad.write_text("[raft]\nheartbeat_timeout = 0.0001\n")
        r = await traft("node", "--config", str(bad), "--id", "y", "--listen",
                        f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "y"))
        assert r.rc == 1 and r.error_line.startswith(
            "error: bad raft setting: heartbeat_timeout is too low"), r

        # a clean stop, then the directory belongs to n1
        assert await node.stop(signal.SIGINT) == 0
        r = await traft("node", "--id", "other", "--listen", f"127.0.0.1:{free_port()}",
                        "--data", str(node.data))
        assert r.rc == 1
        assert r.error_line == (f"error: data directory {node.data} belongs to node 'n1', "
                                f"not 'other'")


async def _listening(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def _read_until(process: trio.Process, text: str, seen: list[str],
                      timeout: float = 30) -> None:
    assert process.stdout is not None
    with trio.fail_after(timeout):
        while text not in "".join(seen):
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"output ended before {text!r}: {''.join(seen)}")
            seen.append(chunk.decode())


async def test_traft_local_serves_stops_on_ctrl_c_and_keeps_data(tmp_path: Path) -> None:
    with trio.fail_after(60):
        config = tmp_path / "fast.toml"
        config.write_text(FAST)
        data = tmp_path / "local"
        base = free_port_range(3)
        cluster = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
        command = [*TRAFT, "local", "--nodes", "3", "--data", str(data),
                   "--base-port", str(base), "--config", str(config)]

        async def start() -> tuple[trio.Process, list[str], list[int]]:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=ENV)
            seen: list[str] = []
            try:
                await _read_until(process, "ready: leader", seen)
            except BaseException:
                process.kill()
                raise
            pids = [int(line.split("pid=")[1].split()[0]) for line in "".join(seen).splitlines()
                    if line.startswith("started n")]
            assert len(pids) == 3
            return process, seen, pids

        process, seen, pids = await start()
        try:
            r = await traft("put", "color", "blue", "--cluster", cluster)
            assert (r.rc, r.out) == (0, "ok\n"), r
            r = await traft("get", "color", "--cluster", cluster)
            assert (r.rc, r.out) == (0, "blue\n"), r
            # a second `traft local` on the same directory is refused
            r = await traft("local", "--data", str(data), "--base-port", str(base))
            assert r.rc == 1 and r.error_line == (
                f"error: data directory {data} is in use by another traft local "
                f"(lock {data}/local.lock is held)"), r
            # Ctrl-C: every child stopped and reaped
            process.send_signal(signal.SIGINT)
            await _read_until(process, "all nodes stopped", seen, timeout=20)
            with trio.fail_after(10):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
        assert not [pid for pid in pids if alive(pid)]
        for i in (1, 2, 3):
            assert f"node n{i} stopped (SIGTERM)" in (data / f"n{i}.log").read_text()

        # restarted on the same directory: the data is back
        process, seen, pids = await start()
        try:
            r = await traft("get", "color", "--cluster", cluster)
            assert (r.rc, r.out) == (0, "blue\n"), r
            # even if `traft local` is killed outright, its nodes do not outlive it
            process.kill()
            await process.wait()
            await eventually(lambda: _all_gone(pids), timeout=10, what="orphaned nodes to stop")
        finally:
            if process.returncode is None:
                process.kill()
            for pid in pids:
                if alive(pid):  # pragma: no cover - only when the test failed
                    os.kill(pid, signal.SIGKILL)


async def _all_gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


async def test_tls_and_mutual_tls(nodes: Nodes, tmp_path: Path) -> None:
    import trustme

    with trio.fail_after(30):
        ca, other = trustme.CA(), trustme.CA()
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
        for name in ("n1", "client"):
            cert = ca.issue_cert("127.0.0.1")
            cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
            cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        port = free_port()
        address = f"127.0.0.1:{port}"
        tls = ["--tls-ca", str(tmp_path / "ca.pem"), "--tls-cert", str(tmp_path / "n1.pem"),
               "--tls-key", str(tmp_path / "n1.key")]
        node = await nodes.start("n1", port, "--bootstrap", f"n1={address}", *tls)
        await eventually(lambda: _listening(port), what="the node to listen")
        client = ["--cluster", address, "--tls-ca", str(tmp_path / "ca.pem"),
                  "--tls-cert", str(tmp_path / "client.pem"),
                  "--tls-key", str(tmp_path / "client.key")]

        async def served() -> bool:
            return (await traft("put", "k", "secret", *client)).rc == 0

        await eventually(served, what="a TLS put")
        r = await traft("get", "k", *client)
        assert (r.rc, r.out) == (0, "secret\n"), r
        # (how the server hangs up varies: EOF, reset, a TLS alert)
        fails = {
            "no client certificate": (
                ["--tls-ca", str(tmp_path / "ca.pem")],
                "the server closed the connection during the handshake",
                "(does it require a client certificate?))"),
            "untrusted server": (
                ["--tls-ca", str(tmp_path / "other.pem"), "--tls-cert",
                 str(tmp_path / "client.pem"), "--tls-key", str(tmp_path / "client.key")],
                "TLS: the server's certificate is not trusted", ")"),
            "plain TCP": ([], "the server closed the connection during the handshake",
                          "(does it use TLS?))"),
        }
        for what, (extra, reason, end) in fails.items():
            r = await traft("get", "k", "--cluster", address, *extra)
            assert r.rc == 1, (what, r)
            assert r.error_line.startswith(
                f"error: cannot reach any server of the cluster ({address}: {reason}"), (what, r)
            assert r.error_line.endswith(end), (what, r)
        assert await node.stop() == 0
