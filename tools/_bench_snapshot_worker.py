"""One node of the snapshot benchmark (``tools/bench_snapshot.py``), in its own process.

    python tools/_bench_snapshot_worker.py --id L --port 7001 \\
        --peers L=127.0.0.1:7001:voter,F=127.0.0.1:7002:nonvoter \\
        --dir DIR --size BYTES [--trailing-logs 64]

The node listens on ``127.0.0.1:PORT`` (WebSocket transport), keeps its log
in ``DIR/raft.db`` (SQLiteStore) and its snapshots in ``DIR/snapshots``
(FileSnapshotStore), and bootstraps the configuration given by ``--peers``
if it is new. Its FSM's state is ``BYTES`` of deterministic pseudo-random
data in the file ``DIR/state.bin`` (generated on first start) plus a
counter of applied commands: ``snapshot()`` captures a reference, the
snapshot is persisted by streaming the file in 1 MiB chunks, and
``restore()`` streams the snapshot into a new file while hashing it, then
checks the SHA-256 trailer. So the FSM never holds the state in memory, and
the process's RSS growth is traft's own.

It prints ``ready`` and then obeys one command per line on stdin, answering
one JSON line on stdout:

``status``          role, indexes, the log's first index
``apply N``         (leader) apply N small commands, 16 at a time
``snapshot``        (leader) take a snapshot now; its time and RSS growth
``mark``            reset the peak-RSS mark (/proc/self/clear_refs) and the
                    event log; the next ``report`` measures from here
``wait-applied I``  wait until the FSM has applied index I
``report``          peak RSS growth since the last mark, and the timed events
                    (snapshot store, FSM, and every InstallSnapshot chunk and
                    answer through the transport, ``time.monotonic()``
                    seconds, comparable across processes on one machine)
``quit``            shut down and exit (also on end of input)

A follower started with ``--mark-at-start`` takes its peak-RSS mark right
before the node opens, so everything it does from then on is counted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import traft  # noqa: E402

CHUNK = 1 << 20
_HEADER = struct.Struct(">8sQQ")  # magic, counter, blob size
_MAGIC = b"TRAFTBSN"

EVENTS: list[tuple[str, float]] = []


def event(name: str) -> None:
    EVENTS.append((name, time.monotonic()))


# ----------------------------------------------------------------------
# Memory


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakRSS:
    """Peak resident set growth since ``mark()``: Linux's VmHWM, reset by
    writing 5 to /proc/self/clear_refs (ru_maxrss cannot be reset)."""

    def __init__(self) -> None:
        self.baseline_kb = 0
        self.mark()

    def mark(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.baseline_kb = status_kb("VmRSS")

    def growth_mb(self) -> float:
        return round((status_kb("VmHWM") - self.baseline_kb) / 1024, 1)

    def report(self) -> dict[str, float]:
        return {"rss_baseline_mb": round(self.baseline_kb / 1024, 1),
                "rss_peak_mb": round(status_kb("VmHWM") / 1024, 1),
                "rss_growth_mb": self.growth_mb()}


# ----------------------------------------------------------------------
# The FSM: a large immutable blob in a file, plus a counter


def generate(path: str, size: int, seed: str) -> None:
    """Write ``size`` deterministic pseudo-random bytes to ``path``."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    rng = random.Random(seed)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(rng.randbytes(n))
            left -= n
    os.replace(tmp, path)


class BlobFSM:
    def __init__(self, directory: str, blob: str) -> None:
        self.directory = directory
        self.blob = blob
        self.counter = 0
        self.restores = 0
        self.restored_bytes = 0

    def apply(self, log: traft.Log) -> int:
        self.counter += 1
        return self.counter

    def snapshot(self) -> BlobSnapshot:
        # The blob file is never modified in place (restore writes a new
        # one), so a reference is a consistent capture.
        return BlobSnapshot(self.blob, self.counter)

    def restore(self, source: BinaryIO) -> None:
        event("fsm_restore_start")
        header = source.read(_HEADER.size)
        magic, counter, size = _HEADER.unpack(header)
        if magic != _MAGIC:
            raise ValueError("not a BlobFSM snapshot")
        self.restores += 1
        path = os.path.join(self.directory, f"state-{self.restores}.bin")
        digest = hashlib.sha256()
        left = size
        with open(path, "wb") as out:
            while left:
                data = source.read(min(CHUNK, left))
                if not data:
                    raise ValueError("snapshot ends early")
                digest.update(data)
                out.write(data)
                left -= len(data)
        trailer = source.read(32)
        if trailer != digest.digest():
            raise ValueError("snapshot blob checksum mismatch")
        if source.read(1):
            raise ValueError("trailing bytes after the snapshot")
        self.blob, self.counter, self.restored_bytes = path, counter, size
        event("fsm_restore_end")


class BlobSnapshot:
    def __init__(self, blob: str, counter: int) -> None:
        self.blob = blob
        self.counter = counter

    def persist(self, sink: traft.SnapshotSink) -> None:
        event("persist_start")
        try:
            digest = hashlib.sha256()
            with open(self.blob, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                sink.write(_HEADER.pack(_MAGIC, self.counter, size))
                while data := f.read(CHUNK):
                    digest.update(data)
                    sink.write(data)
            sink.write(digest.digest())
        except BaseException:
            sink.cancel()
            raise
        sink.close()
        event("persist_end")

    def release(self) -> None:
        pass


# ----------------------------------------------------------------------
# A snapshot store that notes when snapshots are written and read


class TimedSnapshotStore:
    """Delegates to a SnapshotStore, recording when a snapshot starts and
    finishes being written (the follower receiving one) and being read (the
    leader sending one, the applier restoring one)."""

    def __init__(self, inner: traft.FileSnapshotStore) -> None:
        self.inner = inner
        self.opened = 0

    async def create(self, version: int, index: int, term: int,
                     configuration: traft.Configuration,
                     configuration_index: int) -> _TimedSink:
        event("sink_create")
        sink = await self.inner.create(version, index, term, configuration,
                                       configuration_index)
        return _TimedSink(sink)

    async def list(self) -> list[traft.SnapshotMeta]:
        return await self.inner.list()

    async def open(self, id: str) -> tuple[traft.SnapshotMeta, BinaryIO]:
        self.opened += 1
        event(f"open{self.opened}")
        meta, reader = await self.inner.open(id)
        return meta, _TimedReader(reader, f"open{self.opened}")  # type: ignore[return-value]


class _TimedSink:
    def __init__(self, inner: traft.SnapshotSink) -> None:
        self.inner = inner
        self.written = 0

    @property
    def id(self) -> str:
        return self.inner.id

    def write(self, b: bytes) -> int:
        if not self.written:
            event("sink_first_write")
        self.written += len(b)
        return self.inner.write(b)

    def close(self) -> None:
        event("sink_close_start")
        self.inner.close()
        event("sink_closed")

    def cancel(self) -> None:
        event("sink_cancelled")
        self.inner.cancel()


class _TimedReader:
    def __init__(self, inner: BinaryIO, name: str) -> None:
        self.inner = inner
        self.name = name
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.count += len(data)
        return data

    def close(self) -> None:
        event(f"{self.name}_closed")
        self.inner.close()


class TracingTransport:
    """Delegates to a Transport, noting when each InstallSnapshot chunk and
    each answer is handed to ``send`` or returned by ``receive`` (keyed by
    byte offset), to split a chunk's round trip into its legs."""

    def __init__(self, inner: traft.WebSocketTransport) -> None:
        self.inner = inner
        self.trace: dict[str, dict[int, float]] = {
            "send_chunk": {}, "recv_chunk": {}, "send_ack": {}, "recv_ack": {}}

    @property
    def local_address(self) -> str:
        return self.inner.local_address

    async def send(self, target: str, message: traft.Message) -> None:
        if isinstance(message, traft.InstallSnapshot):
            self.trace["send_chunk"].setdefault(message.offset, time.monotonic())
        elif isinstance(message, traft.InstallSnapshotResponse):
            self.trace["send_ack"].setdefault(message.next_offset, time.monotonic())
        await self.inner.send(target, message)

    async def receive(self) -> traft.Message:
        message = await self.inner.receive()
        if isinstance(message, traft.InstallSnapshot):
            self.trace["recv_chunk"].setdefault(message.offset, time.monotonic())
        elif isinstance(message, traft.InstallSnapshotResponse):
            self.trace["recv_ack"].setdefault(message.next_offset, time.monotonic())
        return message


# ----------------------------------------------------------------------
# The node


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


def reply(value: Any) -> None:
    sys.stdout.write((value if isinstance(value, str) else json.dumps(value)) + "\n")
    sys.stdout.flush()


async def apply_many(raft: traft.Raft, n: int) -> None:
    left = [n]

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            await raft.apply(b"tick")

    async with trio.open_nursery() as nursery:
        for _ in range(min(16, n)):
            nursery.start_soon(client)


async def main(args: argparse.Namespace) -> None:
    servers = []
    for spec in args.peers.split(","):
        id, rest = spec.split("=", 1)
        host, port, suffrage = rest.split(":")
        servers.append(traft.Server(id, f"{host}:{port}", traft.Suffrage(suffrage)))
    configuration = traft.Configuration(tuple(servers))
    os.makedirs(args.dir, exist_ok=True)
    blob = os.path.join(args.dir, "state.bin")
    generate(blob, args.size, seed="traft-bench-snapshot")
    fsm = BlobFSM(args.dir, blob)
    memory = PeakRSS()
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    config = traft.Config(local_id=args.id, trailing_logs=args.trailing_logs)
    async with traft.open_websocket_transport("127.0.0.1", args.port) as websocket, \
            traft.SQLiteStore(os.path.join(args.dir, "raft.db")) as store:
        transport = TracingTransport(websocket)
        snapshots = TimedSnapshotStore(traft.FileSnapshotStore(os.path.join(args.dir,
                                                                            "snapshots")))
        if args.mark_at_start:
            memory.mark()
            event("start")
        async with traft.open_raft(config, fsm, store, store, snapshots, transport) as raft:
            if await store.last_index() == 0:
                await raft.bootstrap_cluster(configuration)
            reply("ready")
            async for line in read_lines(stdin):
                words = line.split()
                if not words:
                    continue
                command = words[0]
                if command == "quit":
                    break
                if command == "status":
                    stats = raft.stats()
                    reply({"id": args.id, "state": stats["state"], "leader_id": raft.leader_id,
                           "last_index": stats["last_log_index"],
                           "commit_index": stats["commit_index"],
                           "applied_index": stats["applied_index"],
                           "last_snapshot_index": stats["last_snapshot_index"],
                           "first_index": await store.first_index(),
                           "counter": fsm.counter})
                elif command == "apply":
                    started = trio.current_time()
                    await apply_many(raft, int(words[1]))
                    reply({"applied": int(words[1]), "last_index": raft.last_index,
                           "seconds": round(trio.current_time() - started, 3)})
                elif command == "snapshot":
                    memory.mark()
                    started = trio.current_time()
                    meta = await raft.snapshot()
                    reply({"index": meta.index, "size": meta.size,
                           "seconds": round(trio.current_time() - started, 3),
                           "first_index": await store.first_index(), **memory.report()})
                elif command == "mark":
                    memory.mark()
                    EVENTS.clear()
                    for times in transport.trace.values():
                        times.clear()
                    reply({"marked": True})
                elif command == "wait-applied":
                    target = int(words[1])
                    while raft.applied_index < target:
                        await trio.sleep(0.005)
                    event("applied")
                    reply({"applied_index": raft.applied_index})
                elif command == "report":
                    reply({"id": args.id, **memory.report(),
                           "events": [[name, round(t, 4)] for name, t in EVENTS],
                           "restored_bytes": fsm.restored_bytes, "counter": fsm.counter,
                           "transport": websocket.stats(),
                           "trace": {kind: sorted(times.items())
                                     for kind, times in transport.trace.items()}})
                else:
                    reply({"error": f"unknown command {line!r}"})
    await stdin.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--id", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peers", required=True,
                        help="id=host:port:voter|nonvoter,... (all nodes)")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--size", type=int, required=True, help="bytes of FSM state")
    parser.add_argument("--trailing-logs", type=int, default=64)
    parser.add_argument("--mark-at-start", action="store_true")
    try:
        trio.run(main, parser.parse_args())
    except KeyboardInterrupt:
        pass
