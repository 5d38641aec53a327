"""InmemStore (LogStore + StableStore) and the in-memory snapshot stores."""

from __future__ import annotations

import pytest
import trio

from traft._errors import LogNotFoundError
from traft._inmem_store import InmemStore
from traft._snapshot_stores import DiscardSnapshotStore, InmemSnapshotStore
from traft._storage import LogStore, SnapshotStore, StableStore
from traft._types import Configuration, Log, LogType, Server

CFG = Configuration((Server("a", "a"), Server("b", "b")))


def entries(lo: int, hi: int, term: int = 1) -> list[Log]:
    return [Log(index=i, term=term, data=f"e{i}".encode()) for i in range(lo, hi + 1)]


async def indexes(store: InmemStore) -> tuple[int, int]:
    return await store.first_index(), await store.last_index()


# -- log store -------------------------------------------------------------


async def test_store_satisfies_log_and_stable_store_protocols() -> None:
    store = InmemStore()
    assert isinstance(store, LogStore)
    assert isinstance(store, StableStore)


async def test_empty_log_reports_zero_indexes_and_no_entries() -> None:
    store = InmemStore()
    assert await indexes(store) == (0, 0)
    assert store.logs() == []
    with pytest.raises(LogNotFoundError, match="1"):
        await store.get_log(1)


async def test_stored_entries_set_first_and_last_and_read_back_by_index() -> None:
    store = InmemStore()
    logs = entries(1, 5)
    await store.store_logs(logs)
    assert await indexes(store) == (1, 5)
    for log in logs:
        assert await store.get_log(log.index) is log  # by reference, no copy
    assert store.logs() == logs


async def test_missing_index_raises_log_not_found_naming_the_index() -> None:
    store = InmemStore()
    await store.store_logs(entries(1, 3))
    with pytest.raises(LogNotFoundError, match="42"):
        await store.get_log(42)
    with pytest.raises(LogNotFoundError):
        await store.get_log(0)


async def test_storing_the_same_indexes_overwrites_them() -> None:
    store = InmemStore()
    await store.store_logs(entries(1, 5, term=1))
    replacement = [Log(index=4, term=2, type=LogType.NOOP), Log(index=5, term=2, data=b"new")]
    await store.store_logs(replacement)
    assert await indexes(store) == (1, 5)
    assert (await store.get_log(4)).term == 2
    assert (await store.get_log(5)).data == b"new"
    assert [log.term for log in store.logs()] == [1, 1, 1, 2, 2]


async def test_appending_batches_extends_last_index() -> None:
    store = InmemStore()
    await store.store_logs(entries(1, 3))
    await store.store_logs(entries(4, 6))
    assert await indexes(store) == (1, 6)
    await store.store_logs([])
    assert await indexes(store) == (1, 6)


async def test_log_may_start_above_one_after_compaction_elsewhere() -> None:
    store = InmemStore()
    await store.store_logs(entries(100, 102))
    assert await indexes(store) == (100, 102)


async def test_deleting_a_prefix_moves_first_index() -> None:
    store = InmemStore()
    await store.store_logs(entries(1, 10))
    await store.delete_range(1, 4)
    assert await indexes(store) == (5, 10)
    with pytest.raises(LogNotFoundError):
        await store.get_log(4)
    assert (await store.get_log(5)).index == 5


async def test_deleting_a_suffix_moves_last_index() -> None:
    store = InmemStore()
    await store.store_logs(entries(1, 10))
    await store.delete_range(7, 10)
    assert await indexes(store) == (1, 6)
    with pytest.raises(LogNotFoundError):
        await store.get_log(7)
    # Raft truncates a conflicting suffix, then appends the leader's entries.
    await store.store_logs(entries(7, 8, term=3))
    assert await indexes(store) == (1, 8)
    assert (await store.get_log(8)).term == 3


async def test_delete_range_is_inclusive_and_tolerates_a_range_wider_than_the_log() -> None:
    store = InmemStore()
    await store.store_logs(entries(5, 10))
    await store.delete_range(0, 2**63)  # must not iterate 2**63 indexes
    assert await indexes(store) == (0, 0)
    assert store.logs() == []
    await store.store_logs(entries(3, 4))
    assert await indexes(store) == (3, 4)


async def test_deleting_exactly_one_entry_at_each_end() -> None:
    store = InmemStore()
    await store.store_logs(entries(1, 3))
    await store.delete_range(1, 1)
    assert await indexes(store) == (2, 3)
    await store.delete_range(3, 3)
    assert await indexes(store) == (2, 2)
    await store.delete_range(2, 2)
    assert await indexes(store) == (0, 0)


async def test_deleting_outside_or_an_empty_range_changes_nothing() -> None:
    store = InmemStore()
    await store.store_logs(entries(5, 8))
    await store.delete_range(1, 4)
    await store.delete_range(9, 20)
    await store.delete_range(7, 6)
    await InmemStore().delete_range(1, 10)  # on an empty store
    assert await indexes(store) == (5, 8)
    assert len(store.logs()) == 4


async def test_invalid_entries_are_rejected_without_a_partial_write() -> None:
    store = InmemStore()
    with pytest.raises(ValueError):
        await store.store_logs([Log(index=1, term=1), Log(index=0, term=1)])
    assert await indexes(store) == (0, 0)
    with pytest.raises(TypeError):
        await store.store_logs(["not a log"])  # type: ignore[list-item]


async def test_cancelled_store_call_changes_nothing() -> None:
    store = InmemStore()
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.store_logs(entries(1, 3))
    assert await indexes(store) == (0, 0)


# -- stable store ----------------------------------------------------------


async def test_stable_bytes_round_trip_and_unset_key_is_none() -> None:
    store = InmemStore()
    assert await store.get(b"vote") is None
    await store.set(b"vote", b"server-a")
    assert await store.get(b"vote") == b"server-a"
    await store.set(b"vote", b"")
    assert await store.get(b"vote") == b""


async def test_stable_set_copies_a_mutable_value() -> None:
    store = InmemStore()
    value = bytearray(b"abc")
    await store.set(b"k", value)  # type: ignore[arg-type]
    value[0] = ord("z")
    assert await store.get(b"k") == b"abc"


async def test_stable_uint64_round_trip_and_unset_is_zero() -> None:
    store = InmemStore()
    assert await store.get_uint64(b"CurrentTerm") == 0
    await store.set_uint64(b"CurrentTerm", 7)
    assert await store.get_uint64(b"CurrentTerm") == 7
    await store.set_uint64(b"CurrentTerm", 2**64 - 1)
    assert await store.get_uint64(b"CurrentTerm") == 2**64 - 1
    await store.set_uint64(b"CurrentTerm", 0)
    assert await store.get_uint64(b"CurrentTerm") == 0


async def test_uint64_is_stored_as_eight_bytes_big_endian_so_both_views_agree() -> None:
    store = InmemStore()
    await store.set_uint64(b"t", 258)
    assert await store.get(b"t") == (258).to_bytes(8, "big")
    await store.set(b"u", (99).to_bytes(8, "big"))
    assert await store.get_uint64(b"u") == 99
    await store.set(b"v", b"abc")
    with pytest.raises(ValueError):
        await store.get_uint64(b"v")


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "3", True, None])
async def test_set_uint64_rejects_negative_oversized_and_non_int_values(bad: object) -> None:
    store = InmemStore()
    with pytest.raises(ValueError):
        await store.set_uint64(b"k", bad)  # type: ignore[arg-type]
    assert await store.get_uint64(b"k") == 0


@pytest.mark.parametrize("bad_key", ["term", 1, None])
async def test_stable_keys_must_be_bytes(bad_key: object) -> None:
    store = InmemStore()
    with pytest.raises(TypeError):
        await store.set(bad_key, b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.get(bad_key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.set_uint64(bad_key, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.get_uint64(bad_key)  # type: ignore[arg-type]


async def test_stable_values_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        await InmemStore().set(b"k", "text")  # type: ignore[arg-type]


# -- InmemSnapshotStore ----------------------------------------------------


async def test_snapshot_store_satisfies_protocol_and_starts_empty() -> None:
    store = InmemSnapshotStore()
    assert isinstance(store, SnapshotStore)
    assert await store.list() == []


async def test_snapshot_is_listed_and_readable_only_after_close() -> None:
    store = InmemSnapshotStore()
    sink = await store.create(1, index=10, term=2, configuration=CFG, configuration_index=3)
    assert sink.write(b"hello ") == 6
    assert sink.write(b"world") == 5
    assert await store.list() == []  # not committed yet
    sink.close()
    [meta] = await store.list()
    assert meta.id == sink.id
    assert (meta.index, meta.term, meta.configuration_index) == (10, 2, 3)
    assert meta.configuration == CFG
    assert meta.size == 11
    assert meta.version == 1
    opened, source = await store.open(sink.id)
    assert opened == meta
    assert source.read() == b"hello world"


async def test_each_open_gets_an_independent_reader() -> None:
    store = InmemSnapshotStore()
    sink = await store.create(1, 5, 1, CFG, 1)
    sink.write(b"data")
    sink.close()
    _, r1 = await store.open(sink.id)
    assert r1.read(2) == b"da"
    r1.close()
    _, r2 = await store.open(sink.id)
    assert r2.read() == b"data"


async def test_cancelled_snapshot_never_appears_and_keeps_the_previous() -> None:
    store = InmemSnapshotStore()
    first = await store.create(1, 5, 1, CFG, 1)
    first.write(b"one")
    first.close()
    second = await store.create(1, 9, 1, CFG, 1)
    second.write(b"two")
    second.cancel()
    assert [m.id for m in await store.list()] == [first.id]
    with pytest.raises(ValueError):
        await store.open(second.id)


async def test_store_keeps_only_the_newest_snapshot() -> None:
    store = InmemSnapshotStore()
    old = await store.create(1, 5, 1, CFG, 1)
    old.write(b"old")
    old.close()
    new = await store.create(1, 9, 2, CFG, 1)
    new.write(b"newer")
    new.close()
    [meta] = await store.list()
    assert (meta.id, meta.index, meta.size) == (new.id, 9, 5)
    with pytest.raises(ValueError, match="no snapshot"):
        await store.open(old.id)
    _, source = await store.open(new.id)
    assert source.read() == b"newer"


async def test_an_older_snapshot_committed_late_does_not_replace_a_newer_one() -> None:
    store = InmemSnapshotStore()
    slow = await store.create(1, 5, 1, CFG, 1)
    fast = await store.create(1, 9, 1, CFG, 1)
    fast.close()
    slow.close()
    assert [m.id for m in await store.list()] == [fast.id]


async def test_snapshot_ids_are_unique_even_for_the_same_term_and_index() -> None:
    store = InmemSnapshotStore()
    a = await store.create(1, 5, 1, CFG, 1)
    b = await store.create(1, 5, 1, CFG, 1)
    assert a.id != b.id
    assert a.id.startswith("1-5-")


async def test_sink_refuses_writes_after_close_or_cancel() -> None:
    store = InmemSnapshotStore()
    closed = await store.create(1, 1, 1, CFG, 1)
    closed.close()
    closed.close()  # idempotent
    closed.cancel()  # no-op once committed
    with pytest.raises(ValueError):
        closed.write(b"x")
    cancelled = await store.create(1, 2, 1, CFG, 1)
    cancelled.cancel()
    with pytest.raises(ValueError):
        cancelled.write(b"x")
    with pytest.raises(ValueError):
        cancelled.close()
    assert [m.id for m in await store.list()] == [closed.id]


async def test_sink_as_context_manager_commits_on_success_and_cancels_on_error() -> None:
    store = InmemSnapshotStore()
    with await store.create(1, 3, 1, CFG, 1) as ok:
        ok.write(b"ok")
    with pytest.raises(RuntimeError):
        with await store.create(1, 4, 1, CFG, 1) as bad:
            bad.write(b"partial")
            raise RuntimeError("persist failed")
    assert [m.id for m in await store.list()] == [ok.id]


async def test_sink_can_be_written_from_a_worker_thread() -> None:
    store = InmemSnapshotStore()
    sink = await store.create(1, 7, 1, CFG, 1)

    def persist() -> None:
        for i in range(100):
            sink.write(bytes([i]))
        sink.close()

    await trio.to_thread.run_sync(persist)
    [meta] = await store.list()
    _, source = await store.open(meta.id)
    assert source.read() == bytes(range(100))


# -- DiscardSnapshotStore --------------------------------------------------


async def test_discard_store_accepts_writes_and_keeps_nothing() -> None:
    store = DiscardSnapshotStore()
    assert isinstance(store, SnapshotStore)
    sink = await store.create(1, 10, 2, CFG, 3)
    assert sink.write(b"abc") == 3
    sink.close()
    assert await store.list() == []
    with pytest.raises(ValueError):
        await store.open(sink.id)
    with pytest.raises(ValueError):
        sink.write(b"after close")
