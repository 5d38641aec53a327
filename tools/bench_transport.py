"""Benchmark the WebSocket transport and its codec on loopback.

Prints one JSON object per line:

* ``machine``: where it ran (CPU, Python, library versions);
* ``codec``: encode/decode rates of the CBOR codec alone;
* ``throughput``: messages/s and MB/s from one transport to another, for a
  small AppendEntries (one 64-byte entry) and a 64 KiB one (one 64 KiB entry);
* ``heartbeat_latency``: p50/p99 of heartbeat delivery latency, idle and
  under a concurrent bulk stream of 64 KiB AppendEntries; with
  ``--single-lane`` also with heartbeats forced onto the bulk connection,
  to show what the separate control connection buys.

Both transports run in this one process and one Trio thread (so sender,
receiver and both WebSocket stacks share a core): the figures are the cost
of the whole path, a lower bound for two machines. Times come from Trio's
clock.

    python tools/bench_transport.py [--quick] [--single-lane] [--tls]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import ssl
import statistics
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from traft import open_websocket_transport  # noqa: E402
from traft import _websocket_transport as wst  # noqa: E402
from traft._codec import decode_message, encode_message  # noqa: E402
from traft._messages import AppendEntries, Heartbeat, Message  # noqa: E402
from traft._types import Log  # noqa: E402

TOKEN = "bench-token"


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def append_entries(i: int, size: int, address: str) -> AppendEntries:
    return AppendEntries(term=7, src="n1", src_address=address, dst="n2", prev_log_index=i,
                         prev_log_term=7, leader_commit=i,
                         entries=(Log(i + 1, 7, data=bytes(size), appended_at=1.7e9),))


def heartbeat(seq: int, address: str) -> Heartbeat:
    return Heartbeat(term=7, src="n1", src_address=address, dst="n2", leader_commit=seq, seq=seq)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def bench_codec(quick: bool) -> None:
    cases: list[tuple[str, Message]] = [
        ("heartbeat", heartbeat(1, "10.0.0.1:7000")),
        ("append_entries_small", append_entries(1, 64, "10.0.0.1:7000")),
        ("append_entries_64KiB", append_entries(1, 64 * 1024, "10.0.0.1:7000")),
        ("append_entries_64x64B", AppendEntries(
            term=7, src="n1", src_address="10.0.0.1:7000", dst="n2", prev_log_index=0,
            prev_log_term=7, leader_commit=0,
            entries=tuple(Log(i, 7, data=bytes(64), appended_at=1.7e9)
                          for i in range(1, 65)))),
    ]
    n = 2_000 if quick else 20_000
    for name, message in cases:
        data = encode_message(message)
        start = trio.current_time()
        for _ in range(n):
            encode_message(message)
        encode_s = trio.current_time() - start
        start = trio.current_time()
        for _ in range(n):
            decode_message(data)
        decode_s = trio.current_time() - start
        emit(bench="codec", message=name, bytes=len(data),
             encode_per_s=round(n / encode_s), decode_per_s=round(n / decode_s),
             encode_us=round(encode_s / n * 1e6, 2), decode_us=round(decode_s / n * 1e6, 2))


def contexts(tls: bool) -> dict[str, Any]:
    if not tls:
        return {}
    import trustme  # test dependency: only for --tls

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return {"ssl_context": server, "client_ssl_context": client}


async def bench_throughput(name: str, size: int, count: int, tls: bool) -> None:
    options = dict(auth_token=TOKEN, rng=random.Random(1), **contexts(tls))
    async with open_websocket_transport("127.0.0.1", 0, **options) as a, \
            open_websocket_transport("127.0.0.1", 0, **options) as b:
        messages = [append_entries(i, size, a.local_address) for i in range(count)]
        # Warm up: connect and prime the path.
        for m in messages[:10]:
            await a.send(b.local_address, m)
        for _ in range(10):
            await b.receive()
        sent_bytes = a.stats()["sent_bytes"]
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            async def produce() -> None:
                for m in messages:
                    await a.send(b.local_address, m)
            nursery.start_soon(produce)
            for _ in range(count):
                await b.receive()
        elapsed = trio.current_time() - start
        wire = a.stats()["sent_bytes"] - sent_bytes
        emit(bench="throughput", message=name, tls=tls, messages=count,
             bytes_per_message=wire // count, seconds=round(elapsed, 3),
             messages_per_s=round(count / elapsed), mb_per_s=round(wire / elapsed / 1e6, 1))


async def bench_latency(label: str, bulk: bool, beats: int, tls: bool) -> None:
    options = dict(auth_token=TOKEN, rng=random.Random(1), **contexts(tls))
    async with open_websocket_transport("127.0.0.1", 0, **options) as a, \
            open_websocket_transport("127.0.0.1", 0, **options) as b:
        sent_at: dict[int, float] = {}
        latencies: list[float] = []
        bulk_received = 0
        done = trio.Event()

        async def bulk_stream() -> None:
            i = 0
            while not done.is_set():
                try:
                    await a.send(b.local_address, append_entries(i, 64 * 1024, a.local_address))
                except Exception:  # window full for long: keep trying
                    await trio.sleep(0)
                i += 1

        async def beat() -> None:
            await a.send(b.local_address, heartbeat(0, a.local_address))  # connect
            await trio.sleep(0.05)
            for seq in range(1, beats + 1):
                sent_at[seq] = trio.current_time()
                await a.send(b.local_address, heartbeat(seq, a.local_address))
                await trio.sleep(0.005)

        async def receive() -> None:
            nonlocal bulk_received
            while len(latencies) < beats:
                m = await b.receive()
                if isinstance(m, Heartbeat):
                    if m.seq:
                        latencies.append(trio.current_time() - sent_at[m.seq])
                else:
                    bulk_received += 1
            done.set()

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            if bulk:
                nursery.start_soon(bulk_stream)
            nursery.start_soon(beat)
            nursery.start_soon(receive)
            await done.wait()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
        emit(bench="heartbeat_latency", mode=label, tls=tls, heartbeats=len(latencies),
             p50_ms=round(statistics.median(latencies) * 1e3, 3),
             p99_ms=round(percentile(latencies, 99) * 1e3, 3),
             max_ms=round(max(latencies) * 1e3, 3),
             concurrent_bulk_mb_per_s=round(bulk_received * 64 * 1024 / elapsed / 1e6, 1))


async def main(args: argparse.Namespace) -> None:
    emit(bench="machine", cpu=cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
         platform=platform.platform(), trio=version("trio"),
         trio_websocket=version("trio-websocket"), wsproto=version("wsproto"),
         cbor2=version("cbor2"), note="sender and receiver in one process and one thread")
    await bench_codec(args.quick)
    small, large = (2_000, 300) if args.quick else (20_000, 3_000)
    await bench_throughput("append_entries_small", 64, small, args.tls)
    await bench_throughput("append_entries_64KiB", 64 * 1024, large, args.tls)
    beats = 100 if args.quick else 400
    await bench_latency("idle", False, beats, args.tls)
    await bench_latency("under_bulk_stream", True, beats, args.tls)
    if args.single_lane:
        # For comparison only: route heartbeats over the bulk connection, as
        # a transport with a single connection per peer would.
        wst._BULK_TYPES = (*wst._BULK_TYPES, Heartbeat)  # type: ignore[misc,assignment]
        await bench_latency("under_bulk_stream_single_connection", True, beats, args.tls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    parser.add_argument("--single-lane", action="store_true",
                        help="also measure heartbeats sharing the bulk connection")
    parser.add_argument("--tls", action="store_true", help="run over TLS (needs trustme)")
    trio.run(main, parser.parse_args())
