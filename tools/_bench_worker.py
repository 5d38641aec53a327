"""One node of the throughput benchmark (``tools/bench.py``), in its own process.

    python tools/_bench_worker.py --id n1 --port 7001 \\
        --peers n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003 \\
        --store sqlite|memory --dir DIR

The node listens on ``127.0.0.1:PORT`` (WebSocket transport), keeps its log
in ``DIR/<id>.db`` (SQLiteStore, snapshots in ``DIR/<id>-snapshots``) or in
memory (InmemStore, InmemSnapshotStore), bootstraps the configuration given
by ``--peers`` (every node bootstraps the same one) and prints ``ready``.
Then it obeys one command per line on stdin, answering one line on stdout:

``status``
    ``{"id", "state", "leader_id", "term", "commit_index", "applied_index"}``
``run C WARMUP SECONDS [PROFILE]``
    on the leader: C concurrent client tasks each ``await raft.apply(...)`` a
    128-byte command and repeat; after WARMUP seconds the next SECONDS are
    measured; answers one JSON object (``ops_per_s``, ``p50_ms``,
    ``p99_ms``, ...); with PROFILE, the measured window is also profiled
    with cProfile (Trio thread only) into that file. On any other node:
    ``not-leader``.
``quit`` (or end of input)
    shut the node down and exit.

The FSM does nothing (``apply`` returns None): the benchmark measures
replication, not the state machine.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import traft  # noqa: E402

COMMAND_SIZE = 128


class NullFSM:
    """Applies nothing; its snapshots are empty."""

    def apply(self, log: traft.Log) -> None:
        return None

    def snapshot(self) -> _EmptySnapshot:
        return _EmptySnapshot()

    def restore(self, source: BinaryIO) -> None:
        while source.read(1 << 20):
            pass


class _EmptySnapshot:
    def persist(self, sink: traft.SnapshotSink) -> None:
        sink.close()

    def release(self) -> None:
        pass


class CountingLogStore:
    """Delegates to a LogStore and counts ``store_logs`` calls and entries,
    to show how well applies are batched (one extra await per call)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.entries = 0

    async def first_index(self) -> int:
        return int(await self.inner.first_index())

    async def last_index(self) -> int:
        return int(await self.inner.last_index())

    async def get_log(self, index: int) -> traft.Log:
        log: traft.Log = await self.inner.get_log(index)
        return log

    async def store_logs(self, logs: Sequence[traft.Log]) -> None:
        self.calls += 1
        self.entries += len(logs)
        await self.inner.store_logs(logs)

    async def delete_range(self, lo: int, hi: int) -> None:
        await self.inner.delete_range(lo, hi)


def percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run_load(raft: traft.Raft, transport: traft.WebSocketTransport,
                   log_store: CountingLogStore, changes: list[tuple[float, str]], clients: int, warmup: float, seconds: float,
                   profile: str | None) -> dict[str, Any]:
    """C client tasks apply 128-byte commands back to back; measure the
    window [start + warmup, start + warmup + seconds]."""
    start = trio.current_time()
    t0 = start + warmup
    t1 = t0 + seconds
    latencies: list[float] = []
    completed = 0
    errors: dict[str, int] = {}  # in the measured window
    warmup_errors: dict[str, int] = {}
    marks: dict[str, Any] = {}
    profiler = cProfile.Profile() if profile else None

    async def client(i: int) -> None:
        nonlocal completed
        n = 0
        while True:
            n += 1
            payload = f"c{i:04d}-{n:012d}-".encode().ljust(COMMAND_SIZE, b".")
            began = trio.current_time()
            try:
                await raft.apply(payload)
            except traft.RaftError as exc:
                name = type(exc).__name__
                counts = errors if trio.current_time() >= t0 else warmup_errors
                counts[name] = counts.get(name, 0) + 1
                await trio.sleep(0.01)
                continue
            ended = trio.current_time()
            if t0 <= ended <= t1:
                completed += 1
                if began >= t0:
                    latencies.append(ended - began)

    async def window(nursery: trio.Nursery) -> None:
        await trio.sleep_until(t0)
        marks["cpu0"] = os.times()
        marks["calls0"], marks["entries0"] = log_store.calls, log_store.entries
        marks["net0"] = transport.stats()
        if profiler is not None:
            profiler.enable()
        await trio.sleep_until(t1)
        if profiler is not None:
            profiler.disable()
        marks["cpu1"] = os.times()
        marks["calls1"], marks["entries1"] = log_store.calls, log_store.entries
        marks["net1"] = transport.stats()
        nursery.cancel_scope.cancel()  # the clients; their pending applies go on

    async with trio.open_nursery() as nursery:
        nursery.start_soon(window, nursery)
        for i in range(clients):
            nursery.start_soon(client, i)
    if profiler is not None and profile:
        profiler.dump_stats(profile)
    latencies.sort()
    calls = marks["calls1"] - marks["calls0"]
    entries = marks["entries1"] - marks["entries0"]
    cpu0, cpu1 = marks["cpu0"], marks["cpu1"]
    sent = marks["net1"]["sent"] - marks["net0"]["sent"]
    received = marks["net1"]["received"] - marks["net0"]["received"]
    return {
        "ops_per_s": round(completed / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "ops": completed,
        "errors": errors,
        "warmup_errors": warmup_errors,
        # this node's role changes during the run, seconds after the window began
        "role_changes": [[round(t - t0, 3), state] for t, state in changes if t >= start],
        "leader_cpu": round((cpu1.user - cpu0.user + cpu1.system - cpu0.system) / seconds, 3),
        "leader_cpu_sys": round((cpu1.system - cpu0.system) / seconds, 3),
        # leader's WebSocket messages out and in per completed apply
        "sent_per_op": round(sent / completed, 2) if completed else None,
        "received_per_op": round(received / completed, 2) if completed else None,
        "entries_per_store_logs": round(entries / calls, 1) if calls else None,
        "still_leader": raft.state is traft.RaftState.LEADER,
    }


async def watch_role(raft: traft.Raft, changes: list[tuple[float, str]]) -> None:
    """Record (time, new state) for every role change of this node."""
    with raft.observe(lambda o: isinstance(o, traft.StateObservation)) as observations:
        async for obs in observations:
            assert isinstance(obs, traft.StateObservation)
            changes.append((trio.current_time(), str(obs.state)))


async def read_lines(stream: trio.lowlevel.FdStream) -> AsyncIterator[str]:
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode().strip()
        data = await stream.receive_some(4096)
        if not data:
            if buffer.strip():
                yield buffer.decode().strip()
            return
        buffer += data


def reply(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@asynccontextmanager
async def open_stores(kind: str, directory: str, id: str,
                      ) -> AsyncIterator[tuple[Any, Any]]:
    if kind == "sqlite":
        async with traft.SQLiteStore(os.path.join(directory, f"{id}.db")) as store:
            yield store, traft.FileSnapshotStore(os.path.join(directory, f"{id}-snapshots"))
    elif kind == "memory":
        yield traft.InmemStore(), traft.InmemSnapshotStore()
    else:
        raise SystemExit(f"unknown store {kind!r}")


async def main(args: argparse.Namespace) -> None:
    peers = [p.split("=", 1) for p in args.peers.split(",")]
    configuration = traft.Configuration(tuple(traft.Server(i, a) for i, a in peers))
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with traft.open_websocket_transport("127.0.0.1", args.port) as transport, \
            open_stores(args.store, args.dir, args.id) as (store, snapshots):
        counting = CountingLogStore(store)
        async with traft.open_raft(traft.Config(local_id=args.id), NullFSM(), counting,
                                   store, snapshots, transport) as raft, \
                trio.open_nursery() as nursery:
            changes: list[tuple[float, str]] = []
            nursery.start_soon(watch_role, raft, changes)
            await raft.bootstrap_cluster(configuration)
            reply("ready")
            async for line in read_lines(stdin):
                words = line.split()
                if not words:
                    continue
                if words[0] == "quit":
                    break
                if words[0] == "status":
                    reply(json.dumps({
                        "id": args.id, "state": str(raft.state), "leader_id": raft.leader_id,
                        "term": raft.current_term, "commit_index": raft.commit_index,
                        "applied_index": raft.applied_index}))
                elif words[0] == "run" and len(words) in (4, 5):
                    if raft.state is not traft.RaftState.LEADER:
                        reply("not-leader")
                        continue
                    result = await run_load(raft, transport, counting, changes, int(words[1]),
                                            float(words[2]),
                                            float(words[3]),
                                            words[4] if len(words) == 5 else None)
                    reply(json.dumps(result))
                else:
                    reply(json.dumps({"error": f"unknown command {line!r}"}))
            nursery.cancel_scope.cancel()
    await stdin.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--id", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peers", required=True, help="id=host:port,... (all nodes)")
    parser.add_argument("--store", choices=("sqlite", "memory"), required=True)
    parser.add_argument("--dir", required=True)
    try:
        trio.run(main, parser.parse_args())
    except KeyboardInterrupt:
        pass
