"""Long simulation campaigns: many seeds of a cluster under random faults.

    python tools/simulate.py --seeds 1000 --servers 5 --faults all
    python tools/simulate.py --seed 1234 --verbose        # replay one seed

Prints a progress bar and a summary table; exits 1 if any seed failed,
listing the seeds and the command that replays each.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from traft.testing import ALL_FAULTS, SimulationOptions, planted_bugs, run_simulation  # noqa: E402


def parse_faults(text: str) -> frozenset[str]:
    if text == "all":
        return ALL_FAULTS
    if text == "none":
        return frozenset()
    faults = frozenset(f.strip() for f in text.split(",") if f.strip())
    unknown = faults - ALL_FAULTS
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown faults {sorted(unknown)}; choose from {sorted(ALL_FAULTS)}")
    return faults


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--seed", type=int, help="run just this seed (replay)")
    p.add_argument("--servers", type=int, default=5)
    p.add_argument("--duration", type=float, default=20.0, help="simulated seconds of faults")
    p.add_argument("--faults", type=parse_faults, default=ALL_FAULTS,
                   help=f"'all', 'none' or a comma list of {','.join(sorted(ALL_FAULTS))}")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--plant", action="append", default=[],
                   help="plant a known bug (to see the harness catch it)")
    p.add_argument("--verbose", "-v", action="store_true", help="full protocol logs")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
    options = SimulationOptions(servers=args.servers, duration=args.duration,
                                faults=args.faults, clients=args.clients)
    seeds = [args.seed] if args.seed is not None else list(range(args.start,
                                                                 args.start + args.seeds))
    failures = []
    sim_time = 0.0
    ops = {"ok": 0, "failed": 0, "unknown": 0}
    events = 0
    started = time.perf_counter()
    with planted_bugs(*args.plant), Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, disable=len(seeds) == 1) as progress:
        task = progress.add_task("simulating", total=len(seeds))
        for seed in seeds:
            result = run_simulation(seed, options)
            sim_time += result.simulated_time
            events += result.events
            for k, v in result.ops.items():
                ops[k] = ops.get(k, 0) + v
            if not result.ok:
                failures.append(result)
                progress.console.print(f"[red]{result.describe()}")
            progress.advance(task)
    wall = time.perf_counter() - started
    table = Table(title="traft simulation")
    for col in ("runs", "failures", "simulated time", "wall time", "ready events",
                "client ops ok/failed/unknown"):
        table.add_column(col)
    table.add_row(str(len(seeds)), str(len(failures)), f"{sim_time:,.0f} s", f"{wall:,.1f} s",
                  f"{events:,}", f"{ops['ok']}/{ops['failed']}/{ops['unknown']}")
    Console().print(table)
    if failures:
        Console().print("seeds to replay: " + " ".join(str(f.seed) for f in failures))
        for f in failures:
            Console().print("  " + f.replay_command())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
