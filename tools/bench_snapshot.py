"""Snapshot benchmark: a 200 MB FSM is snapshotted and shipped to a follower that lags.

    python tools/bench_snapshot.py [--size-mb 200] [--entries 1000]
                                   [--trailing-logs 64] [--dir DIR]

Two nodes, each its own OS process (``tools/_bench_snapshot_worker.py``), so
each RSS figure is one node's: a leader ``L`` (the only voter) and a follower
``F`` (a nonvoter, so the leader commits while it is down). WebSocket
transport on loopback, SQLiteStore for the log, FileSnapshotStore for the
snapshots. The FSM's state is ``--size-mb`` MiB of deterministic data in a
file plus a counter; its snapshot streams the file, its restore streams into
a new file and checks a SHA-256, so the FSM itself buffers 1 MiB at most and
RSS growth is traft's.

Steps:

1. both nodes start and bootstrap; L applies 100 commands; F applies them;
2. F shuts down; L applies ``--entries`` more, takes a snapshot
   (``raft.snapshot()``), and compacts its log down to ``--trailing-logs``
   entries, past everything F has;
3. L's peak-RSS mark is reset; F restarts on its old files and must catch up
   by InstallSnapshot; the run ends when F's FSM has applied the snapshot's
   index.

Prints JSON lines: ``snapshot_take`` (the leader persisting the snapshot:
seconds, MB/s, leader RSS growth) and ``snapshot_install`` with
``transfer_s`` (follower side, first chunk to the snapshot durable in its
store), ``mb_per_s`` over it, ``leader_send_s`` (leader side, snapshot
opened to closed), ``restore_s`` (the follower's FSM.restore),
``catch_up_s`` (F's process start to F's FSM at the snapshot's index), and
the peak RSS growth of each process (``/proc/self/status`` VmHWM after
resetting it through ``/proc/self/clear_refs``), and ``per_chunk``: the
median time of each leg of one chunk's round trip (the leader sends one
chunk at a time and waits for its answer). MB are 10^6 bytes; the
size is ``--size-mb`` MiB. Every process started is stopped and waited for,
and the temporary directory is removed, on every exit (Ctrl-C too). Not a
test; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_procs import Worker, emit, free_ports, machine, note  # noqa: E402

WORKER = Path(__file__).resolve().parent / "_bench_snapshot_worker.py"

# Targets from the issue: streaming, not buffering; loopback throughput.
TARGET_RSS_GROWTH_MB = 64
TARGET_MB_PER_S = 100


def ask(worker: Worker, command: str, timeout: float = 30.0) -> dict[str, Any]:
    line = worker.ask(command, timeout)
    try:
        answer: dict[str, Any] = json.loads(line)
    except ValueError:
        raise RuntimeError(f"{worker.id}: unexpected answer {line!r}{worker.tail()}") from None
    if "error" in answer:
        raise RuntimeError(f"{worker.id}: {answer['error']}")
    return answer


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def events(report: dict[str, Any]) -> dict[str, float]:
    """The first time each event was noted."""
    out: dict[str, float] = {}
    for name, t in report["events"]:
        out.setdefault(name, t)
    return out


def legs(leader: dict[str, Any], follower: dict[str, Any]) -> dict[str, float]:
    """Median milliseconds of each leg of a chunk's round trip: leader hands
    it to the transport -> follower receives it -> follower hands its answer
    to the transport -> leader receives the answer -> leader hands over the
    next chunk."""
    lt = {k: dict(v) for k, v in leader["trace"].items()}
    ft = {k: dict(v) for k, v in follower["trace"].items()}
    wire_chunk, handle, wire_ack, next_chunk = [], [], [], []
    offsets = sorted(lt["send_chunk"])
    for offset, after in zip(offsets, offsets[1:]):
        try:
            wire_chunk.append(ft["recv_chunk"][offset] - lt["send_chunk"][offset])
            handle.append(ft["send_ack"][after] - ft["recv_chunk"][offset])
            wire_ack.append(lt["recv_ack"][after] - ft["send_ack"][after])
            next_chunk.append(lt["send_chunk"][after] - lt["recv_ack"][after])
        except KeyError:
            continue
    if not wire_chunk:
        return {}

    def ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 3)

    return {"chunks": len(offsets), "chunk_bytes": offsets[1] - offsets[0],
            "chunk_to_follower_ms": ms(wire_chunk), "follower_handles_ms": ms(handle),
            "ack_to_leader_ms": ms(wire_ack), "leader_next_chunk_ms": ms(next_chunk)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=200.0,
                        help="FSM state in MiB (default 200)")
    parser.add_argument("--entries", type=int, default=1000,
                        help="commands applied while the follower is down (default 1000)")
    parser.add_argument("--trailing-logs", type=int, default=64)
    parser.add_argument("--dir", default=None,
                        help="where to make the temporary directory (default: the system's)")
    args = parser.parse_args()
    size = int(args.size_mb * 2**20)
    if args.entries <= args.trailing_logs:
        parser.error("--entries must exceed --trailing-logs, or the follower needs no snapshot")
    note(json.dumps(machine()))
    root = tempfile.mkdtemp(prefix="traft-bench-snapshot-", dir=args.dir)
    workers: list[Worker] = []

    def start(id: str, port: int, peers: str, *extra: str) -> Worker:
        w = Worker(id, [str(WORKER), "--id", id, "--port", str(port), "--peers", peers,
                        "--dir", f"{root}/{id}", "--size", str(size),
                        "--trailing-logs", str(args.trailing_logs), *extra], root)
        workers.append(w)
        return w

    try:
        port_l, port_f = free_ports(2)
        peers = f"L=127.0.0.1:{port_l}:voter,F=127.0.0.1:{port_f}:nonvoter"
        leader = start("L", port_l, peers)
        follower = start("F", port_f, peers)
        for w in (leader, follower):  # each generates its state file first
            if (line := w.read(timeout=600)) != "ready":
                raise RuntimeError(f"{w.id}: expected 'ready', got {line!r}{w.tail()}")
        wait_for("a leader", lambda: ask(leader, "status")["state"] == "Leader", 30)

        # 1. the follower is in the cluster and has applied the first entries
        ask(leader, "apply 100")
        target = ask(leader, "status")["applied_index"]
        wait_for("the follower to catch up",
                 lambda: ask(follower, "status")["applied_index"] >= target, 30)
        follower_last = ask(follower, "status")["last_index"]
        follower.stop()

        # 2. it lags: more entries, a snapshot, the log compacted past it
        ask(leader, f"apply {args.entries}", timeout=120)
        taken = ask(leader, "snapshot", timeout=600)
        if taken["first_index"] <= follower_last + 1:
            raise RuntimeError(f"the leader's log still starts at {taken['first_index']}; "
                               f"the follower has up to {follower_last}: no snapshot needed")
        emit(bench="snapshot_take", size_bytes=taken["size"], index=taken["index"],
             seconds=taken["seconds"],
             mb_per_s=round(taken["size"] / 1e6 / taken["seconds"], 1),
             leader_rss_growth_mb=taken["rss_growth_mb"],
             leader_rss_baseline_mb=taken["rss_baseline_mb"])

        # 3. the follower comes back and catches up by InstallSnapshot
        ask(leader, "mark")
        restarted = time.monotonic()
        follower = start("F", port_f, peers, "--mark-at-start")
        if (line := follower.read(timeout=120)) != "ready":
            raise RuntimeError(f"F: expected 'ready', got {line!r}{follower.tail()}")
        ask(follower, f"wait-applied {taken['index']}", timeout=900)
        f_report = ask(follower, "report")
        l_report = ask(leader, "report")
        fe, le = events(f_report), events(l_report)
        if f_report["restored_bytes"] != size:
            raise RuntimeError(f"the follower restored {f_report['restored_bytes']} bytes, "
                               f"expected {size}")
        transfer = fe["sink_closed"] - fe["sink_create"]
        send = le.get("open1_closed", float("nan")) - le.get("open1", float("nan"))
        result = {
            "bench": "snapshot_install", "size_bytes": taken["size"], "index": taken["index"],
            "transfer_s": round(transfer, 3),
            "mb_per_s": round(taken["size"] / 1e6 / transfer, 1),
            "leader_send_s": round(send, 3),
            "follower_fsync_s": round(fe["sink_closed"] - fe["sink_close_start"], 3),
            "restore_s": round(fe["fsm_restore_end"] - fe["fsm_restore_start"], 3),
            "catch_up_s": round(fe["applied"] - restarted, 3),
            "first_chunk_after_s": round(fe["sink_create"] - restarted, 3),
            "leader_rss_growth_mb": l_report["rss_growth_mb"],
            "follower_rss_growth_mb": f_report["rss_growth_mb"],
            "leader_rss_baseline_mb": l_report["rss_baseline_mb"],
            "follower_rss_baseline_mb": f_report["rss_baseline_mb"],
            "leader_snapshot_opens": sum(1 for n, _ in l_report["events"]
                                         if n.startswith("open") and not n.endswith("closed")),
        }
        result["per_chunk"] = legs(l_report, f_report)
        result["targets_met"] = {
            "leader_rss": result["leader_rss_growth_mb"] < TARGET_RSS_GROWTH_MB,
            "follower_rss": result["follower_rss_growth_mb"] < TARGET_RSS_GROWTH_MB,
            "throughput": result["mb_per_s"] >= TARGET_MB_PER_S,
        }
        emit(**result)
    except KeyboardInterrupt:
        note("interrupted; stopping the nodes")
        sys.exit(130)
    finally:
        for w in workers:
            w.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
