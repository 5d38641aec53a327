"""traft's throughput benchmark: three nodes, three OS processes, loopback.

    python tools/bench.py [--clients 1,16,128] [--store sqlite,memory]
                          [--warmup 3] [--seconds 10] [--repeat 1]
                          [--max-other-cpu CORES [--attempts 5] [--idle-timeout 120]]
                          [--profile DIR]

Each node runs in its own process (``tools/_bench_worker.py``) with the
WebSocket transport on 127.0.0.1 and either SQLiteStore (durable: every
batch is fsynced) or InmemStore. In the leader's process C concurrent client
tasks each apply a 128-byte command and wait for its result, over and over;
after ``--warmup`` seconds the next ``--seconds`` are measured. One JSON line
per configuration on stdout::

    {"system": "traft", "store": "sqlite", "clients": 16, "ops_per_s": ...,
     "p50_ms": ..., "p99_ms": ..., ...}

Extra fields, for reading the figures:

- ``ops``: applies completed in the window; ``errors`` / ``warmup_errors``:
  failed applies by exception name; ``role_changes``: the leader's state
  changes during the run (seconds from the window's start);
  ``still_leader``.
- ``leader_cpu`` (``leader_cpu_sys``): CPU seconds per second of the
  leader's process, all threads (of which in the kernel); ``cpu``: the same
  for every node, read from /proc by this process.
- ``sent_per_op`` / ``received_per_op``: the leader's WebSocket messages
  per completed apply; ``entries_per_store_logs``: the leader's group-commit
  batch size.
- ``other_cpu``: cores kept busy by anything but the three nodes during the
  window. Other jobs on a 2-core machine skew every figure: run on an idle
  machine and check that this is near 0, or pass ``--max-other-cpu 0.1``:
  each measurement then first waits (up to ``--idle-timeout`` s) for 2 s
  in which other jobs used at most that much, and a configuration whose
  window was disturbed anyway is measured again, up to ``--attempts`` times
  (the line says how many in ``attempts``).

Latency is per ``apply`` call, from Trio's clock.

One fresh cluster (fresh temporary directory) per store; the client counts
run one after another on it. Every process started is killed and waited for
on exit, Ctrl-C included. With ``--profile DIR`` the leader cProfiles each
measured window into ``DIR/<store>-c<C>.pstats`` (this slows it down: use the
numbers of a run without it). Not a test; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_procs import (  # noqa: E402
    Worker,
    cpu_seconds,
    emit,
    free_ports,
    machine,
    machine_busy,
    note,
)

WORKER = Path(__file__).resolve().parent / "_bench_worker.py"
IDS = ("n1", "n2", "n3")


class Cluster:
    def __init__(self, store: str) -> None:
        self.store = store
        self.directory = tempfile.mkdtemp(prefix=f"traft-bench-{store}-")
        self.workers: list[Worker] = []

    def start(self) -> None:
        ports = free_ports(len(IDS))
        peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in zip(IDS, ports))
        for id, port in zip(IDS, ports):
            self.workers.append(Worker(
                id, [str(WORKER), "--id", id, "--port", str(port), "--peers", peers,
                     "--store", self.store, "--dir", self.directory], self.directory))
        for w in self.workers:
            line = w.read(timeout=30)
            if line != "ready":
                raise RuntimeError(f"{w.id}: expected 'ready', got {line!r}{w.tail()}")

    def wait_leader(self, timeout: float = 30.0) -> Worker:
        """The leader, once every node names it in two polls 0.25 s apart
        (same term): a run never starts in the middle of an election."""
        deadline = time.monotonic() + timeout
        seen: tuple[str, int] | None = None
        while time.monotonic() < deadline:
            states = [json.loads(w.ask("status")) for w in self.workers]
            leaders = [s for s in states if s["state"] == "Leader"]
            if len(leaders) == 1 and all(s["leader_id"] == leaders[0]["id"] for s in states):
                now = (leaders[0]["id"], leaders[0]["term"])
                if now == seen:
                    return next(w for w in self.workers if w.id == now[0])
                seen = now
            else:
                seen = None
            time.sleep(0.25)
        raise RuntimeError(f"no stable leader within {timeout}s")

    def others_busy(self, seconds: float) -> float:
        """Cores kept busy by anything but the nodes over the next ``seconds``."""
        cpu0 = sum(cpu_seconds(w.proc.pid) for w in self.workers)
        busy0 = machine_busy()
        time.sleep(seconds)
        ours = sum(cpu_seconds(w.proc.pid) for w in self.workers) - cpu0
        return max(0.0, machine_busy() - busy0 - ours) / seconds

    def wait_idle(self, max_cores: float, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for 2 s in which other jobs used at
        most ``max_cores``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = self.others_busy(2.0)
            if busy <= max_cores:
                return
        note(f"other jobs still busy after {timeout:.0f}s of waiting; measuring anyway")

    def run(self, clients: int, warmup: float, seconds: float,
            profile: str | None) -> dict[str, Any]:
        leader = self.wait_leader()
        command = f"run {clients} {warmup} {seconds}" + (f" {profile}" if profile else "")
        for w in self.workers:
            w.send(command)
        # CPU of every node over (about) the measured window, from outside.
        time.sleep(warmup)
        cpu0 = {w.id: cpu_seconds(w.proc.pid) for w in self.workers}
        busy0 = machine_busy()
        t0 = time.monotonic()
        result: dict[str, Any] | None = None
        for w in self.workers:
            line = w.read(timeout=warmup + seconds + 60)
            if w is leader and line == "not-leader":
                raise RuntimeError(f"{w.id} lost leadership before the run started")
            if line != "not-leader":
                result = json.loads(line)
                if "error" in result:
                    raise RuntimeError(f"{w.id}: {result['error']}")
                elapsed = time.monotonic() - t0
        assert result is not None
        cpu1 = {w.id: cpu_seconds(w.proc.pid) for w in self.workers}
        busy = machine_busy() - busy0
        result["cpu"] = {id: round((cpu1[id] - cpu0[id]) / elapsed, 2) for id in cpu0}
        # cores kept busy by anything but the nodes (other jobs skew the figures)
        result["other_cpu"] = round(
            max(0.0, busy - sum(cpu1[id] - cpu0[id] for id in cpu0)) / elapsed, 2)
        result["leader"] = leader.id
        return result

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,16,128",
                        help="comma-separated client counts (default 1,16,128)")
    parser.add_argument("--store", default="sqlite,memory",
                        help="comma-separated: sqlite, memory (default both)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure every configuration this many times (default 1)")
    parser.add_argument("--max-other-cpu", type=float, default=None, metavar="CORES",
                        help="measure a configuration again (see --attempts) while other "
                             "jobs kept more than CORES cores busy during its window")
    parser.add_argument("--attempts", type=int, default=5,
                        help="most measurements per configuration with --max-other-cpu")
    parser.add_argument("--idle-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="with --max-other-cpu, longest wait for the machine to be idle "
                             "before each measurement (default 120)")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile the leader's measured windows into DIR")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    stores = args.store.split(",")
    for s in stores:
        if s not in ("sqlite", "memory"):
            parser.error(f"unknown store {s!r}")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    note(json.dumps(machine()))
    clusters: list[Cluster] = []
    try:
        for store in stores:
            cluster = Cluster(store)
            clusters.append(cluster)
            cluster.start()
            for _ in range(args.repeat):
                for c in clients:
                    profile = (os.path.abspath(os.path.join(args.profile,
                                                            f"{store}-c{c}.pstats"))
                               if args.profile else None)
                    for attempt in range(1, args.attempts + 1):
                        if args.max_other_cpu is not None:
                            cluster.wait_idle(args.max_other_cpu, args.idle_timeout)
                        result = cluster.run(c, args.warmup, args.seconds, profile)
                        if (args.max_other_cpu is None
                                or result["other_cpu"] <= args.max_other_cpu):
                            break
                        note(f"{store} C={c}: other jobs kept {result['other_cpu']} cores "
                             f"busy; measuring again")
                    emit(system="traft", store=store, clients=c, **result, attempts=attempt)
            cluster.stop()
    except KeyboardInterrupt:
        note("interrupted; stopping the nodes")
        sys.exit(130)
    finally:
        for cluster in clusters:
            cluster.stop()


if __name__ == "__main__":
    main()
