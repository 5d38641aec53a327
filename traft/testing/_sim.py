"""Deterministic simulation of a whole cluster under faults.

One integer seed decides everything: election jitter (each node's
``Config.rng``), message loss/delay/duplication/reordering, partitions, crashes
and restarts, slow disks, the client workload, and Trio's own task
scheduling order (through the deterministic-scheduling hook Trio provides for
Hypothesis). Everything runs in one process on
``MockClock(autojump_threshold=0)``, so a run of a simulated minute takes a
fraction of a second, and running the same seed twice yields the same event
trace (compare ``SimulationResult.trace_hash``).

A run has a fault phase (workload + faults, safety checked after every Ready)
and a heal phase (faults off, crashed servers restarted; the cluster must
converge: one leader, every server applies the same entries, every FSM
equal). Then the client history is checked for linearizability.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from .._blocking import inline_blocking
from .._config import Config
from .._core import Ready
from .._core import _state as _core_raft
from .._errors import LeadershipLostError, NotLeaderError, RaftError, RaftShutdownError
from .._inmem_network import InmemNetwork
from .._inmem_store import InmemStore
from .._node import Raft, open_raft
from .._snapshot_stores import InmemSnapshotStore
from .._types import Configuration, Log, RaftState, Server, ServerID
from ..kv import KVCommand, KVStateMachine
from ._invariants import InvariantChecker
from ._linearizability import History, Op, Status, check_linearizable

logger = logging.getLogger("traft.sim")

ALL_FAULTS = frozenset({
    "loss", "delay", "duplicate", "partition", "oneway", "bridge", "crash", "slow_disk",
    "membership", "transfer",
})


@dataclass(frozen=True)
class SimulationOptions:
    servers: int = 5
    duration: float = 20.0  # simulated seconds of faults and workload
    faults: frozenset[str] = ALL_FAULTS
    clients: int = 3
    keys: int = 3
    heal_timeout: float = 60.0  # simulated seconds allowed to converge
    op_timeout: float = 5.0
    # Config overrides. Small snapshot settings so runs compact their logs and
    # lagging servers catch up by InstallSnapshot under the same faults.
    config: tuple[tuple[str, Any], ...] = (
        ("snapshot_threshold", 40), ("trailing_logs", 10), ("snapshot_interval", 2.0))


@dataclass
class SimulationResult:
    seed: int
    options: SimulationOptions
    violations: list[str] = field(default_factory=list)
    trace_hash: str = ""
    events: int = 0
    simulated_time: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    leaders: int = 0
    history_size: int = 0
    snapshots_installed: int = 0
    compactions: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def replay_command(self) -> str:
        faults = ("all" if self.options.faults == ALL_FAULTS
                  else ",".join(sorted(self.options.faults)) or "none")
        return (f"python tools/simulate.py --seed {self.seed} --servers {self.options.servers} "
                f"--duration {self.options.duration:g} --faults {faults} --verbose")

    def describe(self) -> str:
        head = f"seed {self.seed}: " + ("ok" if self.ok else f"{len(self.violations)} violation(s)")
        lines = [head, *("  " + v for v in self.violations)]
        if not self.ok:
            lines.append(f"  replay: {self.replay_command()}")
        return "\n".join(lines)


@contextlib.contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """Make Trio's scheduler order reproducible for ``seed``: Trio sorts
    each batch of runnable tasks and shuffles it with its private RNG when
    this flag is on (the hook it provides for Hypothesis)."""
    run = trio._core._run
    saved_flag = run._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = run._r.getstate()
    setattr(run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)
    run._r.seed(seed)
    try:
        yield
    finally:
        setattr(run, "_ALLOW_DETERMINISTIC_SCHEDULING", saved_flag)
        run._r.setstate(saved_state)


@contextlib.contextmanager
def planted_bugs(*names: str) -> Iterator[None]:
    """Test-only: switch on deliberate protocol bugs in the core to prove the
    simulator catches them (see ``traft._core._raft._PLANTED_BUGS``)."""
    unknown = set(names) - _core_raft.PLANTABLE_BUGS
    if unknown:
        raise ValueError(f"unknown planted bugs: {sorted(unknown)}")
    saved = set(_core_raft._PLANTED_BUGS)
    _core_raft._PLANTED_BUGS.update(names)
    try:
        yield
    finally:
        _core_raft._PLANTED_BUGS.clear()
        _core_raft._PLANTED_BUGS.update(saved)


class SlowStore(InmemStore):
    """An InmemStore whose writes take a random time while ``slow`` is on.
    A crash during the wait loses the write, as a crash before fsync would."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng
        self.slow = False

    async def _maybe_wait(self) -> None:
        if self.slow:
            await trio.sleep(self.rng.uniform(0.0, 0.2))

    async def store_logs(self, logs: Sequence[Log]) -> None:
        await self._maybe_wait()
        await super().store_logs(logs)

    async def set(self, key: bytes, value: bytes) -> None:
        await self._maybe_wait()
        await super().set(key, value)


class SimulatedCluster:
    """The cluster under simulation; scenario scripts drive it directly."""

    def __init__(self, seed: int, options: SimulationOptions, nursery: trio.Nursery) -> None:
        self.seed = seed
        self.options = options
        self.nursery = nursery
        root = random.Random(seed)
        self.rng = random.Random(root.random())  # faults and workload
        self.ids = [f"s{i}" for i in range(1, options.servers + 1)]
        self.network = InmemNetwork(rng=random.Random(root.random()))
        self.node_rngs = {i: random.Random(root.random()) for i in self.ids}
        self.stores = {i: SlowStore(random.Random(root.random())) for i in self.ids}
        self.snapshots = {i: InmemSnapshotStore() for i in self.ids}
        self.fsms: dict[ServerID, KVStateMachine] = {}
        self.nodes: dict[ServerID, Raft] = {}
        self.scopes: dict[ServerID, trio.CancelScope] = {}
        self.stopped: dict[ServerID, trio.Event] = {}
        self.checker = InvariantChecker()
        self.history = History()
        self.trace = hashlib.sha256()
        self.events = 0
        self.fault_counts: dict[str, int] = {}
        self.acknowledged: list[tuple[int, int, bytes]] = []  # (index, term, data)
        self.leader_hint: ServerID | None = None
        self.snapshots_installed = 0
        self.removed: set[ServerID] = set()
        self.compactions = 0
        self.configuration = Configuration(tuple(Server(i, i) for i in self.ids))

    # -- nodes -------------------------------------------------------------

    def _hook(self, raft: Raft, rd: Ready) -> None:
        core = raft._core
        self.events += 1
        self.trace.update(repr((
            round(trio.current_time(), 9), core.id, core.role.value, core.term,
            core.commit_index, core.log.last_index, len(rd.messages), len(rd.entries),
            len(rd.committed))).encode())
        self.checker.on_ready(core.id, core, rd)
        self.snapshots_installed += sum(1 for m in rd.install if m.done)
        self.compactions += rd.compact_through is not None

    async def start(self, id: ServerID) -> None:
        self.fsms[id] = KVStateMachine()
        await self.nursery.start(self._run_node, id)

    async def _run_node(self, id: ServerID, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        done = trio.Event()
        self.stopped[id] = done
        cfg = dataclasses.replace(Config(local_id=id, rng=self.node_rngs[id]),
                                  **dict(self.options.config))
        try:
            with trio.CancelScope() as scope:
                self.scopes[id] = scope
                async with open_raft(cfg, self.fsms[id], self.stores[id], self.stores[id],
                                     self.snapshots[id], self.network.transport(id)) as raft:
                    raft._ready_hook = self._hook
                    self.nodes[id] = raft
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self.nodes.pop(id, None)
            done.set()

    async def crash(self, id: ServerID) -> None:
        scope = self.scopes.pop(id, None)
        if scope is not None:
            scope.cancel()
            await self.stopped[id].wait()

    def _count(self, fault: str) -> None:
        self.fault_counts[fault] = self.fault_counts.get(fault, 0) + 1

    def leader(self) -> Raft | None:
        leaders = [n for n in self.nodes.values() if n.state is RaftState.LEADER]
        if not leaders:
            return None
        return max(leaders, key=lambda n: n.current_term)

    async def wait_leader(self, among: Sequence[ServerID] | None = None) -> Raft:
        """Wait for a leader (among ``among``); bound it with a scope."""
        while True:
            leaders = [n for i, n in self.nodes.items()
                       if n.state is RaftState.LEADER and (among is None or i in among)]
            if leaders:
                return max(leaders, key=lambda n: n.current_term)
            await trio.sleep(0.05)

    def id_of(self, raft: Raft) -> ServerID:
        return raft.config.local_id

    # -- faults ------------------------------------------------------------

    async def faults(self) -> None:
        rng = self.rng
        enabled = sorted(self.options.faults)
        if not enabled:
            await trio.sleep_forever()
        async with trio.open_nursery() as restarts:
            while True:
                await trio.sleep(rng.uniform(0.2, 2.5))
                fault = rng.choice(enabled + ["heal"])
                self._count(fault)
                ids = list(self.ids)
                if fault == "heal":
                    self.network.heal()
                    self.network.set_unreliable()
                elif fault == "partition":
                    leaders = [i for i in ids if i in self.nodes
                               and self.nodes[i].state is RaftState.LEADER]
                    if leaders and rng.random() < 0.5:
                        # cut the leader (and maybe a friend) off from the rest
                        rng.shuffle(ids)
                        ids.remove(leaders[0])
                        ids.insert(0, leaders[0])
                        cut = rng.randint(1, max(1, len(ids) // 2))
                    else:
                        rng.shuffle(ids)
                        cut = rng.randint(1, len(ids) - 1)
                    self.network.partition(set(ids[:cut]), set(ids[cut:]))
                elif fault == "oneway":
                    a, b = rng.sample(ids, 2)
                    self.network.disconnect_one_way(a, b)
                elif fault == "bridge":
                    # two halves that only one server, ids[0], left linked to
                    # both, can talk across
                    rng.shuffle(ids)
                    rest = ids[1:]
                    half = len(rest) // 2
                    self.network.partition(set(rest[:half]), set(rest[half:]))
                elif fault in ("loss", "delay", "duplicate"):
                    self.network.set_unreliable(
                        drop_rate=rng.uniform(0.0, 0.3) if "loss" in self.options.faults else 0.0,
                        delay=((0.0, rng.uniform(0.0, 0.15))
                               if "delay" in self.options.faults else (0.0, 0.0)),
                        duplicate_rate=(rng.uniform(0.0, 0.2)
                                        if "duplicate" in self.options.faults else 0.0))
                elif fault == "crash":
                    running = [i for i in ids if i in self.nodes]
                    leaders = [i for i in running
                               if self.nodes[i].state is RaftState.LEADER]
                    if running:
                        # Leaders are where the interesting bugs hide (Figure 8
                        # needs a string of leader crashes): aim at them mostly.
                        victim = (rng.choice(leaders) if leaders and rng.random() < 0.7
                                  else rng.choice(running))
                        await self.crash(victim)
                        restarts.start_soon(self._restart_later, victim, rng.uniform(0.1, 4.0))
                elif fault == "membership":
                    restarts.start_soon(self._membership_change, rng.random())
                elif fault == "transfer":
                    restarts.start_soon(self._transfer)
                elif fault == "slow_disk":
                    store = self.stores[rng.choice(ids)]
                    store.slow = not store.slow

    async def _membership_change(self, draw: float) -> None:
        """Remove a follower, or add a removed one back (as a voter)."""
        leader = self.leader()
        if leader is None:
            return
        lid = self.id_of(leader)
        try:
            with trio.move_on_after(self.options.op_timeout):
                if self.removed:
                    back = sorted(self.removed)[int(draw * len(self.removed))]
                    await leader.add_voter(back, back)
                    self.removed.discard(back)
                else:
                    candidates = [i for i in self.ids if i != lid]
                    victim = candidates[int(draw * len(candidates))]
                    await leader.remove_server(victim)
                    self.removed.add(victim)
        except RaftError:
            pass  # refused or outcome unknown: the heal phase settles it

    async def _transfer(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        try:
            with trio.move_on_after(self.options.op_timeout):
                await leader.leadership_transfer()
        except RaftError:
            pass

    async def _restart_later(self, id: ServerID, delay: float) -> None:
        await trio.sleep(delay)
        if id not in self.nodes:
            await self.start(id)

    # -- workload ----------------------------------------------------------

    def _pick_node(self, rng: random.Random) -> tuple[ServerID, Raft] | None:
        running = sorted(self.nodes)
        if not running:
            return None
        if self.leader_hint in self.nodes and rng.random() < 0.8:
            hint = self.leader_hint
            assert hint is not None
            return hint, self.nodes[hint]
        id = rng.choice(running)
        return id, self.nodes[id]

    async def client(self, cid: int) -> None:
        rng = random.Random(self.rng.random())
        counter = 0
        while True:
            await trio.sleep(rng.uniform(0.0, 0.4))
            picked = self._pick_node(rng)
            if picked is None:
                continue
            node_id, raft = picked
            key = f"k{rng.randrange(self.options.keys)}"
            kind = rng.choice((Op.PUT, Op.PUT, Op.GET, Op.GET, Op.CAS))
            if kind is Op.GET:
                await self._get(cid, node_id, raft, key)
                continue
            counter += 1
            value = f"c{cid}-{counter}".encode()
            if kind is Op.PUT:
                cmd = KVCommand("put", key, value)
                op_id = self.history.invoke(cid, Op.PUT, key, value, at=trio.current_time())
            else:
                expected = None if rng.random() < 0.3 else self._guess(rng, key)
                cmd = KVCommand("cas", key, value, expected)
                op_id = self.history.invoke(cid, Op.CAS, key, value, expected,
                                            at=trio.current_time())
            await self._write(op_id, raft, cmd)

    def _guess(self, rng: random.Random, key: str) -> bytes | None:
        values = [fsm.get(key) for fsm in self.fsms.values()]
        return rng.choice(values)

    async def _write(self, op_id: int, raft: Raft, cmd: KVCommand) -> None:
        data = cmd.encode()
        try:
            with trio.fail_after(self.options.op_timeout):
                applied = await raft.apply_log(data)
        except NotLeaderError as exc:
            # Refused before it was appended: it never takes effect.
            self.leader_hint = exc.leader_id
            self.history.complete(op_id, Status.FAILED, at=trio.current_time())
            return
        except (LeadershipLostError, RaftShutdownError, trio.TooSlowError, RaftError):
            self.history.complete(op_id, Status.UNKNOWN, at=trio.current_time())
            return
        self.acknowledged.append((applied.index, applied.term, data))
        self.history.complete(op_id, Status.OK, at=trio.current_time(),
                              ok=bool(applied.response) if cmd.op == "cas" else None)

    async def _get(self, cid: int, node_id: ServerID, raft: Raft, key: str) -> None:
        op_id = self.history.invoke(cid, Op.GET, key, at=trio.current_time())
        try:
            with trio.fail_after(self.options.op_timeout):
                await raft.read_index()
        except NotLeaderError as exc:
            if exc.leader_id is not None:
                self.leader_hint = exc.leader_id
            self.history.complete(op_id, Status.FAILED, at=trio.current_time())
            return
        except (RaftError, trio.TooSlowError):
            # A read that did not finish had no effect.
            self.history.complete(op_id, Status.FAILED, at=trio.current_time())
            return
        # No checkpoint between read_index returning and this read.
        value = self.fsms[node_id].get(key)
        self.history.complete(op_id, Status.OK, value, at=trio.current_time())

    # -- healing and final checks -------------------------------------------

    async def heal_and_converge(self) -> None:
        self.network.heal()
        self.network.set_unreliable()
        for store in self.stores.values():
            store.slow = False
        for id in self.ids:
            if id not in self.nodes:
                await self.start(id)
        with trio.move_on_after(self.options.heal_timeout) as scope:
            while True:
                leaders = [n for n in self.nodes.values() if n.state is RaftState.LEADER]
                if len(leaders) == 1:
                    try:
                        with trio.fail_after(self.options.op_timeout):
                            # everyone back in the configuration as a voter
                            cfg = leaders[0].get_configuration()
                            for id in self.ids:
                                if not cfg.is_voter(id):
                                    await leaders[0].add_voter(id, id)
                            await leaders[0].barrier()
                    except (RaftError, trio.TooSlowError):
                        pass
                    else:
                        target = leaders[0].commit_index
                        while not all(n.applied_index >= target for n in self.nodes.values()):
                            await trio.sleep(0.05)
                        break
                await trio.sleep(0.1)
        if scope.cancelled_caught:
            states = {i: (n.state.value, n.current_term, n.commit_index, n.applied_index)
                      for i, n in sorted(self.nodes.items())}
            self.checker.violations.append(
                f"Liveness: no convergence within {self.options.heal_timeout}s after healing: "
                f"{states}")
            return
        self.final_checks()

    def final_checks(self) -> None:
        checker = self.checker
        checker.check_log_matching((i, n._core) for i, n in sorted(self.nodes.items()))
        maps = {i: fsm.items() for i, fsm in sorted(self.fsms.items())}
        first = next(iter(maps.values()))
        for i, m in maps.items():
            if m != first:
                checker.violations.append(f"Convergence: FSM of {i} differs: {m} vs {first}")
                break
        some = next(iter(self.nodes.values()))._core
        for index, term, data in self.acknowledged:
            if index <= some.log.base_index:
                continue
            e = some.log.entry(index) if index <= some.log.last_index else None
            if e is None or e.term != term or e.data != data:
                checker.violations.append(
                    f"Durability: acknowledged apply at index {index} (term {term}) is lost")
        result = check_linearizable(self.history.operations())
        if result.ok is False:
            checker.violations.append(f"Linearizability: {result.explanation}")


Script = Callable[[SimulatedCluster], Awaitable[None]]


async def _simulate(seed: int, options: SimulationOptions, result: SimulationResult,
                    script: Script | None) -> None:
    with inline_blocking():
        await _simulate_inline(seed, options, result, script)


async def _simulate_inline(seed: int, options: SimulationOptions, result: SimulationResult,
                           script: Script | None) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimulatedCluster(seed, options, nursery)
        for id in sim.ids:
            await sim.start(id)
        for id in sim.ids:
            await sim.nodes[id].bootstrap_cluster(sim.configuration)
        with trio.move_on_after(options.duration):
            async with trio.open_nursery() as chaos:
                chaos.start_soon(sim.faults)
                if script is not None:
                    chaos.start_soon(_run_script, script, sim)
                for cid in range(options.clients):
                    chaos.start_soon(sim.client, cid)
        await sim.heal_and_converge()
        result.violations = list(sim.checker.violations)
        result.events = sim.events
        result.simulated_time = trio.current_time()
        result.trace_hash = sim.trace.hexdigest()
        result.faults = dict(sim.fault_counts)
        result.leaders = len(sim.checker.leaders)
        result.snapshots_installed = sim.snapshots_installed
        result.compactions = sim.compactions
        ops = sim.history.operations()
        result.history_size = len(ops)
        result.ops = {s.name.lower(): sum(1 for o in ops if o.status is s) for s in Status}
        nursery.cancel_scope.cancel()


async def _run_script(script: Script, sim: SimulatedCluster) -> None:
    await script(sim)
    await trio.sleep_forever()  # the fault phase lasts options.duration


def run_simulation(seed: int, options: SimulationOptions = SimulationOptions(), *,
                   script: Script | None = None) -> SimulationResult:
    """Run one seeded simulation to completion and return what it found.

    ``script`` (optional) is an async function given the SimulatedCluster,
    run beside the random faults and the workload during the fault phase:
    scenario tests use it to stage exact situations (with ``faults``
    emptied to turn the random ones off).
    """
    result = SimulationResult(seed, options)
    with deterministic_scheduling(seed):
        trio.run(_simulate, seed, options, result, script,
                 clock=trio.testing.MockClock(autojump_threshold=0))
    return result
