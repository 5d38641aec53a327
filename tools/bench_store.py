"""Benchmark SQLiteStore.store_logs against the disk's own fsync floor.

    python tools/bench_store.py [--dir DIR] [--rounds N] [--seconds S]

Prints one JSON line per measurement:

- ``raw_append_fdatasync``: append ``batch`` x 128 bytes to a plain file and
  ``os.fdatasync`` it, in a loop, in one thread: the most any durable log
  can do on this disk per batch (the floor the store is compared with).
- ``sqlite_store_logs``: ``await store.store_logs(batch)`` in a loop through
  the real async path (Trio task -> the store's worker thread -> one SQLite
  transaction, one fsync of the WAL), entries of 128 bytes. ``vs_raw`` is
  its fsync rate over the raw loop's, for the same batch size.
- ``sqlite_direct`` (batch 1 only): the store's own transaction called
  straight from the benchmark thread, without Trio or the worker: what the
  SQLite engine costs over the raw loop, before the thread hand-off.
- ``worker_round_trip``: a no-op job through the store's worker thread and
  back to Trio: the fixed cost every store call pays on top of its I/O.
- ``sqlite_get_log``: reading the log back entry by entry, as a node does
  at start.

Disks, and shared virtual machines most of all, drift from second to
second, so raw and store runs alternate in short rounds (``--rounds`` of
``--seconds`` each) and the medians are reported, with every round's ratio.
``fsyncs_per_s`` for the store is its commits per second: in WAL mode with
``synchronous=FULL`` each commit syncs the WAL once (a checkpoint adds one
more about every thousand pages). Files go in a fresh temporary directory
under ``--dir`` (default: the current directory, i.e. the disk the project
lives on), removed at the end. Not a test; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import traft  # noqa: E402
from traft._sqlite_store import SQLiteStore, _Conn, _open  # noqa: E402

ENTRY = 128
BATCHES = (1, 16, 256)


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def raw_round(fd: int, payload: bytes, seconds: float) -> float:
    """Append + fdatasync for ``seconds``; syncs per second."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        os.write(fd, payload)
        os.fdatasync(fd)
        n += 1
        if time.perf_counter() >= deadline:
            return n / (time.perf_counter() - start)


async def store_round(store: traft.SQLiteStore, batch: int, payload: bytes,
                      seconds: float) -> float:
    """store_logs of ``batch`` entries for ``seconds``; batches per second."""
    index = await store.last_index() + 1
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        await store.store_logs([traft.Log(index=i, term=1, data=payload)
                                for i in range(index, index + batch)])
        index += batch
        n += 1
        if time.perf_counter() >= deadline:
            return n / (time.perf_counter() - start)


def direct_round(conn: _Conn, payload: bytes, seconds: float) -> float:
    """The store's one-entry transaction, called synchronously; per second."""
    index = conn.last + 1
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        SQLiteStore._store_logs([traft.Log(index=index, term=1, data=payload)], conn)
        index += 1
        n += 1
        if time.perf_counter() >= deadline:
            return n / (time.perf_counter() - start)


async def bench_batch(directory: str, batch: int, rounds: int, seconds: float) -> None:
    raw_payload = os.urandom(ENTRY * batch)
    entry = os.urandom(ENTRY)
    raw_rates: list[float] = []
    store_rates: list[float] = []
    direct_rates: list[float] = []
    direct = _open(os.path.join(directory, "direct.db")) if batch == 1 else None
    fd = os.open(os.path.join(directory, f"raw-{batch}.bin"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        async with traft.SQLiteStore(os.path.join(directory, f"store-{batch}.db")) as store:
            await store.store_logs([traft.Log(index=1, term=1, data=entry)])  # warm up
            for _ in range(rounds):
                raw_rates.append(raw_round(fd, raw_payload, seconds))
                if direct is not None:
                    direct_rates.append(direct_round(direct, entry, seconds))
                store_rates.append(await store_round(store, batch, entry, seconds))
            if batch == BATCHES[-1]:
                await bench_reads(store)
    finally:
        os.close(fd)
        if direct is not None:
            direct.close()
    raw, sql = statistics.median(raw_rates), statistics.median(store_rates)
    emit(bench="raw_append_fdatasync", batch=batch, entry_bytes=ENTRY,
         fsyncs_per_s=round(raw), entries_per_s=round(raw * batch),
         rounds=[round(r) for r in raw_rates])
    if direct_rates:
        emit(bench="sqlite_direct", batch=batch, entry_bytes=ENTRY,
             fsyncs_per_s=round(statistics.median(direct_rates)),
             vs_raw=round(statistics.median(
                 d / r for d, r in zip(direct_rates, raw_rates)), 2),
             rounds=[round(d) for d in direct_rates])
    emit(bench="sqlite_store_logs", batch=batch, entry_bytes=ENTRY,
         fsyncs_per_s=round(sql), entries_per_s=round(sql * batch),
         vs_raw=round(statistics.median(s / r for s, r in zip(store_rates, raw_rates)), 2),
         rounds=[round(s) for s in store_rates],
         round_ratios=[round(s / r, 2) for s, r in zip(store_rates, raw_rates)])


async def bench_reads(store: traft.SQLiteStore) -> None:
    last = await store.last_index()
    count = min(last, 50_000)
    start = time.perf_counter()
    for i in range(last - count + 1, last + 1):
        await store.get_log(i)
    elapsed = time.perf_counter() - start
    emit(bench="sqlite_get_log", entries=count, entries_per_s=round(count / elapsed))


async def bench_round_trip(directory: str) -> None:
    async with traft.SQLiteStore(os.path.join(directory, "rt.db")) as store:
        n = 5000
        start = time.perf_counter()
        for _ in range(n):
            await store._run(lambda conn: None)  # the bare hop, no SQLite work
        elapsed = time.perf_counter() - start
    emit(bench="worker_round_trip", calls=n, us_per_call=round(elapsed / n * 1e6, 1))


async def main(directory: str, rounds: int, seconds: float) -> None:
    await bench_round_trip(directory)
    for batch in BATCHES:
        await bench_batch(directory, batch, rounds, seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=".", help="where to put the temporary files")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per batch")
    parser.add_argument("--seconds", type=float, default=0.6, help="per round and side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_store-", dir=args.dir) as tmp:
        trio.run(main, tmp, args.rounds, args.seconds)
