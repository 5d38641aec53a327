"""Helpers for testing code that uses traft (like ``trio.testing``).

- ``open_cluster``: an in-memory cluster of real nodes on ``InmemNetwork``,
  for tests under ``trio.testing.MockClock(autojump_threshold=0)``.
- ``run_simulation``: deterministic simulation of a cluster under seeded
  faults with safety invariants and a linearizability check; any failure
  replays exactly from its seed.
- ``History``/``check_linearizable``: record client operations and check
  them against a key-value register model (Wing–Gong/Lowe search).
"""

from ._cluster import Cluster as Cluster, RecordingFSM as RecordingFSM, open_cluster as open_cluster
from ._invariants import InvariantChecker as InvariantChecker
from ._linearizability import (
    History as History,
    LinearizabilityResult as LinearizabilityResult,
    Op as Op,
    Operation as Operation,
    Status as Status,
    check_linearizable as check_linearizable,
)
from ._sim import (
    ALL_FAULTS as ALL_FAULTS,
    SimulatedCluster as SimulatedCluster,
    SimulationOptions as SimulationOptions,
    SimulationResult as SimulationResult,
    deterministic_scheduling as deterministic_scheduling,
    planted_bugs as planted_bugs,
    run_simulation as run_simulation,
)

__all__ = [
    "ALL_FAULTS", "Cluster", "History", "InvariantChecker", "LinearizabilityResult", "Op",
    "Operation", "RecordingFSM", "SimulatedCluster", "SimulationOptions", "SimulationResult",
    "Status", "check_linearizable", "deterministic_scheduling", "open_cluster",
    "planted_bugs", "run_simulation",
]
