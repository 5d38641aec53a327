"""Deterministic simulation: seeded fault schedules, safety invariants after
every Ready, convergence after healing, linearizable client histories.

A failure prints its seed and the one command that replays it. Set
TRAFT_SIM_SEEDS to run a different number of seeds (CI runs 200).
"""

from __future__ import annotations

import os

import pytest
import trio

from traft import RaftState
from traft.testing import (
    SimulatedCluster,
    SimulationOptions,
    planted_bugs,
    run_simulation,
)

SEEDS = int(os.environ.get("TRAFT_SIM_SEEDS", "200"))


def test_random_fault_schedules_never_break_safety() -> None:
    failures = []
    for seed in range(SEEDS):
        result = run_simulation(seed)
        assert result.history_size > 0
        if not result.ok:
            failures.append(result.describe())
    assert not failures, "\n".join(failures)


def test_the_same_seed_replays_the_identical_trace() -> None:
    first = run_simulation(42)
    again = run_simulation(42)
    assert first.events > 100
    assert first.trace_hash == again.trace_hash
    assert first.ops == again.ops
    other = run_simulation(43)
    assert other.trace_hash != first.trace_hash


def test_a_failing_run_names_its_seed_and_replay_command() -> None:
    with planted_bugs("vote_without_log_check"):
        result = next(r for r in map(run_simulation, range(200)) if not r.ok)
    text = result.describe()
    assert f"seed {result.seed}" in text
    assert f"python tools/simulate.py --seed {result.seed}" in text


@pytest.mark.parametrize("bug", ["vote_without_log_check", "skip_consistency_check"])
def test_the_harness_finds_a_planted_bug_within_200_seeds(bug: str) -> None:
    with planted_bugs(bug):
        for seed in range(200):
            result = run_simulation(seed)
            if not result.ok:
                break
        else:
            pytest.fail(f"planted bug {bug!r} went unnoticed for 200 seeds")
    # and the same seed is clean without the bug
    assert run_simulation(seed).ok


def test_unknown_planted_bug_is_refused() -> None:
    with pytest.raises(ValueError):
        with planted_bugs("no_such_bug"):
            pass


def _scenario(script, seed: int = 1, **kw: object) -> None:  # type: ignore[no-untyped-def]
    options = SimulationOptions(**{"faults": frozenset(), "duration": 30.0, **kw})  # type: ignore[arg-type]
    result = run_simulation(seed, options, script=script)
    assert result.ok, result.describe()
    assert result.ops.get("ok", 0) > 0


def test_figure_8_previous_term_entries_are_not_lost() -> None:
    """§5.4.2, Figure 8: a leader's uncommitted entries on a minority, a new
    leader elsewhere, crashes and returns; nothing acknowledged is lost and
    no server applies a different entry at an index."""

    async def script(sim: SimulatedCluster) -> None:
        with trio.fail_after(20):
            first = await sim.wait_leader()
        s1 = sim.id_of(first)
        others = [i for i in sim.ids if i != s1]
        # S1 and one follower are cut off: S1's new entries reach only them
        sim.network.partition({s1, others[0]}, set(others[1:]))
        await trio.sleep(1.0)
        await sim.crash(s1)
        with trio.fail_after(20):
            second = await sim.wait_leader(others[1:])
        s5 = sim.id_of(second)
        await trio.sleep(0.5)
        await sim.crash(s5)
        sim.network.heal()
        await sim.start(s1)
        await trio.sleep(3.0)
        await sim.crash(sim.id_of(await sim.wait_leader()))
        await sim.start(s5)

    _scenario(script, seed=8)


def test_leader_isolated_in_a_minority() -> None:
    async def script(sim: SimulatedCluster) -> None:
        with trio.fail_after(20):
            leader = await sim.wait_leader()
        lid = sim.id_of(leader)
        sim.network.isolate(lid)
        await trio.sleep(5.0)
        assert leader.state is not RaftState.LEADER  # the lease ran out
        with trio.fail_after(20):
            await sim.wait_leader([i for i in sim.ids if i != lid])
        sim.network.heal()

    _scenario(script, seed=2)


def test_a_flapping_link() -> None:
    async def script(sim: SimulatedCluster) -> None:
        with trio.fail_after(20):
            leader = await sim.wait_leader()
        lid = sim.id_of(leader)
        peer = next(i for i in sim.ids if i != lid)
        for _ in range(40):
            sim.network.disconnect(lid, peer)
            await trio.sleep(0.3)
            sim.network.heal()
            await trio.sleep(0.2)

    _scenario(script, seed=3)


def test_a_server_that_crashes_every_few_seconds() -> None:
    async def script(sim: SimulatedCluster) -> None:
        victim = sim.ids[0]
        for _ in range(8):
            await trio.sleep(2.0)
            await sim.crash(victim)
            await trio.sleep(1.0)
            await sim.start(victim)

    _scenario(script, seed=4)


def test_one_way_partition_of_the_leader() -> None:
    """The leader can send but not hear: its followers stay quiet (they hear
    heartbeats) while it loses its lease and steps down."""

    async def script(sim: SimulatedCluster) -> None:
        with trio.fail_after(20):
            leader = await sim.wait_leader()
        lid = sim.id_of(leader)
        for other in sim.ids:
            if other != lid:
                sim.network.disconnect_one_way(other, lid)
        await trio.sleep(5.0)
        assert leader.state is not RaftState.LEADER
        sim.network.heal()

    _scenario(script, seed=5)


def test_snapshot_install_during_partitions() -> None:
    """A server cut off while the others compact must catch up by
    InstallSnapshot; the transfer is itself interrupted by a new cut and
    retried from scratch."""

    async def script(sim: SimulatedCluster) -> None:
        with trio.fail_after(20):
            leader = await sim.wait_leader()
        lagger = next(i for i in sim.ids if i != sim.id_of(leader))
        sim.network.isolate(lagger)
        await trio.sleep(10.0)  # the workload runs; logs compact past the lagger
        sim.network.heal()
        await trio.sleep(0.02)
        sim.network.isolate(lagger)  # interrupt the transfer
        await trio.sleep(1.0)
        sim.network.heal()

    options = SimulationOptions(faults=frozenset(), duration=30.0, clients=5)
    result = run_simulation(6, options, script=script)
    assert result.ok, result.describe()
    assert result.compactions > 0
    assert result.snapshots_installed >= 1


def test_membership_change_under_partition() -> None:
    """Remove a server that is cut off, replace it while the leader is
    partitioned from one more follower, then bring everyone back."""

    async def script(sim: SimulatedCluster) -> None:
        with trio.fail_after(20):
            leader = await sim.wait_leader()
        lid = sim.id_of(leader)
        others = [i for i in sim.ids if i != lid]
        sim.network.isolate(others[0])
        with trio.fail_after(20):
            await leader.remove_server(others[0])
        sim.network.heal()
        sim.network.disconnect(lid, others[1])
        with trio.fail_after(20):
            await leader.add_voter(others[0], others[0])  # back, as a voter
        sim.network.heal()
        await trio.sleep(2.0)
        assert leader.get_configuration().is_voter(others[0])

    _scenario(script, seed=9)
