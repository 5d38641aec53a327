"""SQLiteStore: the durable LogStore + StableStore (real files, real clock)."""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
import threading
from pathlib import Path

import pytest
import trio

from traft import _sqlite_store
from traft import (
    CorruptLogError,
    CorruptStoreError,
    Log,
    LogNotFoundError,
    LogStore,
    LogType,
    SQLiteStore,
    StableStore,
    StoreError,
)

ROOT = Path(__file__).resolve().parent.parent


def entries(lo: int, hi: int, term: int = 1) -> list[Log]:
    return [Log(index=i, term=term, data=f"e{i}".encode()) for i in range(lo, hi + 1)]


async def bounds(store: SQLiteStore) -> tuple[int, int]:
    return await store.first_index(), await store.last_index()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


# -- log store -------------------------------------------------------------


async def test_store_satisfies_log_and_stable_store_protocols(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    assert isinstance(store, LogStore)
    assert isinstance(store, StableStore)


async def test_constructor_does_no_io_and_the_first_call_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "s.db"
    store = SQLiteStore(path)
    assert not path.parent.exists()
    try:
        assert await bounds(store) == (0, 0)
        assert path.exists()
    finally:
        await store.aclose()


async def test_empty_log_reports_zero_and_missing_index_raises_log_not_found(
        tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        assert await bounds(store) == (0, 0)
        with pytest.raises(LogNotFoundError, match="1"):
            await store.get_log(1)
        await store.store_logs(entries(1, 3))
        with pytest.raises(LogNotFoundError, match="42"):
            await store.get_log(42)
        for bad in (0, -1, 2**64):
            with pytest.raises(LogNotFoundError):
                await store.get_log(bad)


async def test_every_field_round_trips_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    logs = [
        Log(index=1, term=1, type=LogType.CONFIGURATION, data=b"\x00\xff" * 10),
        Log(index=2, term=1, type=LogType.NOOP),
        Log(index=3, term=2, data=b"payload", extensions=b"ext", appended_at=1712345678.25),
        Log(index=4, term=2**63 - 1, type=LogType.BARRIER, data=bytes(range(256)) * 100),
    ]
    async with SQLiteStore(path) as store:
        await store.store_logs(logs)
        assert [await store.get_log(i) for i in range(1, 5)] == logs
    async with SQLiteStore(path) as store:
        assert await bounds(store) == (1, 4)
        got = [await store.get_log(i) for i in range(1, 5)]
        assert got == logs
        assert all(type(g.type) is LogType for g in got)


async def test_storing_the_same_indexes_overwrites_them(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.store_logs(entries(1, 5, term=1))
        await store.get_log(1)  # leaves entries 2..5 in the read-ahead buffer
        await store.store_logs([Log(index=4, term=2, type=LogType.NOOP),
                                Log(index=5, term=2, data=b"new")])
        assert await bounds(store) == (1, 5)
        assert (await store.get_log(4)).term == 2
        assert (await store.get_log(5)).data == b"new"
        assert [(await store.get_log(i)).term for i in range(1, 6)] == [1, 1, 1, 2, 2]


async def test_a_log_may_start_above_one_and_batches_extend_it(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.store_logs(entries(100, 102))
        await store.store_logs(entries(103, 105))
        await store.store_logs([])
        assert await bounds(store) == (100, 105)


async def test_deleting_a_prefix_and_a_suffix_moves_first_and_last(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.store_logs(entries(1, 10))
        await store.get_log(1)  # read-ahead must not resurrect deleted rows
        await store.delete_range(1, 4)  # compaction
        assert await bounds(store) == (5, 10)
        with pytest.raises(LogNotFoundError):
            await store.get_log(4)
        await store.delete_range(8, 10)  # conflict truncation
        assert await bounds(store) == (5, 7)
        with pytest.raises(LogNotFoundError):
            await store.get_log(8)
        await store.store_logs(entries(8, 9, term=3))  # a new suffix after truncation
        assert (await store.get_log(9)).term == 3
    async with SQLiteStore(path) as store:
        assert await bounds(store) == (5, 9)


async def test_delete_range_is_inclusive_and_tolerates_wide_empty_and_outside_ranges(
        tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.store_logs(entries(5, 10))
        await store.delete_range(20, 30)
        await store.delete_range(1, 4)
        await store.delete_range(9, 6)  # empty
        assert await bounds(store) == (5, 10)
        await store.delete_range(5, 5)
        await store.delete_range(10, 10)
        assert await bounds(store) == (6, 9)
        await store.delete_range(0, 2**64 - 1)
        assert await bounds(store) == (0, 0)
        await store.delete_range(1, 5)  # on an empty log
        await store.store_logs(entries(42, 43))
        assert await bounds(store) == (42, 43)


async def test_invalid_entries_are_rejected_without_a_partial_write(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        bad_batches: list[list[object]] = [
            [*entries(1, 2), Log(index=0, term=1)],
            [*entries(1, 2), Log(index=2**63, term=1)],
            [*entries(1, 2), Log(index=3, term=-1)],
            [*entries(1, 2), Log(index=3, term=1, data="text")],  # type: ignore[arg-type]
            [*entries(1, 2), "not a log"],
        ]
        for batch in bad_batches:
            with pytest.raises((TypeError, ValueError)):
                await store.store_logs(batch)  # type: ignore[arg-type]
        assert await bounds(store) == (0, 0)


async def test_a_cancelled_call_changes_nothing(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.store_logs(entries(1, 3))
        assert scope.cancelled_caught
        assert await bounds(store) == (0, 0)


# -- stable store ----------------------------------------------------------


async def test_stable_values_round_trip_unset_is_none_or_zero_and_survive_reopening(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        assert await store.get(b"missing") is None
        assert await store.get_uint64(b"missing") == 0
        await store.set(b"HardState", b"\x82\x01\x61a")
        await store.set(b"empty", b"")
        await store.set(b"k", bytearray(b"first"))
        await store.set(b"k", b"second")
        await store.set_uint64(b"max", 2**64 - 1)
        await store.set_uint64(b"zero", 0)
    async with SQLiteStore(path) as store:
        assert await store.get(b"HardState") == b"\x82\x01\x61a"
        assert await store.get(b"empty") == b""
        assert await store.get(b"k") == b"second"
        assert await store.get_uint64(b"max") == 2**64 - 1
        assert await store.get_uint64(b"zero") == 0
        # uint64 is eight bytes big-endian, as in InmemStore: both views agree
        assert await store.get(b"max") == b"\xff" * 8
        with pytest.raises(ValueError, match="uint64"):
            await store.get_uint64(b"k")


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, True, "1"])
async def test_set_uint64_rejects_out_of_range_and_non_int_values(
        tmp_path: Path, bad: object) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        with pytest.raises(ValueError):
            await store.set_uint64(b"k", bad)  # type: ignore[arg-type]
        assert await store.get(b"k") is None


async def test_stable_keys_and_values_must_be_bytes(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        with pytest.raises(TypeError):
            await store.set("key", b"v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await store.get("key")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await store.set(b"key", "v")  # type: ignore[arg-type]


# -- corruption --------------------------------------------------------------


async def test_a_corrupt_row_raises_naming_the_path_and_index_never_wrong_data(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.store_logs(entries(1, 5))
    raw = sqlite3.connect(path)
    raw.execute("UPDATE log SET data = ? WHERE idx = 3", (b"e9",))  # a flipped byte
    raw.execute("UPDATE log SET term = 7 WHERE idx = 5")
    raw.commit()
    raw.close()
    async with SQLiteStore(path) as store:
        assert (await store.get_log(2)).data == b"e2"  # neighbours still read
        assert (await store.get_log(4)).data == b"e4"
        for index in (3, 5):
            with pytest.raises(CorruptLogError) as info:
                await store.get_log(index)
            assert str(path) in str(info.value)
            assert f"index {index}" in str(info.value)
            assert info.value.index == index
            assert info.value.path == str(path)
            assert isinstance(info.value, StoreError)


async def test_a_corrupt_stable_value_raises(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.set(b"HardState", b"term 1")
    raw = sqlite3.connect(path)
    raw.execute("UPDATE stable SET value = ? WHERE key = ?", (b"term 9", b"HardState"))
    raw.commit()
    raw.close()
    async with SQLiteStore(path) as store:
        with pytest.raises(CorruptStoreError, match="HardState"):
            await store.get(b"HardState")


# -- refusing files that are not ours, and second openers ---------------------


def make_foreign_sqlite(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    raw.execute("INSERT INTO customers VALUES (1, 'ada')")
    raw.commit()
    raw.close()


@pytest.mark.parametrize("kind, message", [
    ("garbage", "not an SQLite database"),
    ("empty", "empty file"),
    ("foreign", "application_id"),
])
async def test_a_file_that_is_not_a_traft_store_is_refused_and_left_untouched(
        tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "data.db"
    if kind == "garbage":
        path.write_bytes(b"this is not a database\n" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        make_foreign_sqlite(path)
    before = snapshot_files(tmp_path)
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match=message) as info:
        await store.first_index()
    assert "not a traft store" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(StoreError):
        async with SQLiteStore(path):
            pass
    assert snapshot_files(tmp_path) == before  # byte-identical, no lock file beside it


async def test_a_store_with_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.store_logs(entries(1, 3))
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()
    before = snapshot_files(tmp_path)
    with pytest.raises(StoreError, match="schema version 2, newer") as info:
        async with SQLiteStore(path):
            pass
    assert str(path) in str(info.value)
    assert snapshot_files(tmp_path) == before


async def test_a_newer_schema_still_in_the_wal_is_refused_without_checkpointing(
        tmp_path: Path) -> None:
    # A newer traft crashed right after migrating: the new version is in the
    # WAL only, not yet in the file header. Reading it must not fold the WAL in.
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    async with SQLiteStore(src / "s.db") as store:
        await store.store_logs(entries(1, 3))
    raw = sqlite3.connect(src / "s.db", isolation_level=None)
    raw.execute("PRAGMA wal_autocheckpoint = 0")
    raw.execute("PRAGMA user_version = 3")
    for name in ("s.db", "s.db-wal"):  # the files as a crash would leave them
        (dst / name).write_bytes((src / name).read_bytes())
    raw.close()
    before = snapshot_files(dst)
    assert (dst / "s.db-wal").stat().st_size > 0
    with pytest.raises(StoreError, match="schema version 3, newer"):
        async with SQLiteStore(dst / "s.db"):
            pass
    after = snapshot_files(dst)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) <= {"s.db.lock"}


async def test_a_second_opener_in_this_process_is_refused_until_the_first_closes(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.store_logs(entries(1, 1))
        other = SQLiteStore(path)
        with pytest.raises(StoreError, match="already open"):
            await other.last_index()
        with pytest.raises(StoreError, match="already open"):
            async with SQLiteStore(path):
                pass
        assert await store.last_index() == 1  # the first opener is unaffected
    async with SQLiteStore(path) as store:
        assert await store.last_index() == 1


async def test_a_second_opener_in_another_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    code = (
        "import sys, trio, traft\n"
        "async def main():\n"
        "    async with traft.SQLiteStore(sys.argv[1]) as s:\n"
        "        print('opened', await s.last_index())\n"
        "try:\n"
        "    trio.run(main)\n"
        "except traft.StoreError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with SQLiteStore(path) as store:
        await store.store_logs(entries(1, 2))
        with trio.fail_after(20):
            proc = await trio.run_process([sys.executable, "-c", code, str(path)],
                                          capture_stdout=True, env=env)
        out = proc.stdout.decode()
        assert out.startswith("refused:") and "already open" in out and str(path) in out
    with trio.fail_after(20):
        proc = await trio.run_process([sys.executable, "-c", code, str(path)],
                                      capture_stdout=True, env=env)
    assert proc.stdout.decode().strip() == "opened 2"


async def test_a_closed_store_refuses_calls_and_aclose_is_idempotent(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.store_logs(entries(1, 1))
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.get_log(1)
    with pytest.raises(StoreError, match="closed"):
        await store.set(b"k", b"v")
    # Closing released the lock.
    async with SQLiteStore(tmp_path / "s.db") as again:
        assert await again.last_index() == 1


async def test_aclose_completes_and_releases_the_lock_even_when_cancelled(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with trio.CancelScope() as scope:
        async with SQLiteStore(path) as store:
            await store.store_logs(entries(1, 1))
            scope.cancel()
            await trio.sleep_forever()
    async with SQLiteStore(path) as store:
        assert await store.last_index() == 1


async def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "s.db"
    old = os.umask(0)
    try:
        async with SQLiteStore(path) as store:
            await store.store_logs(entries(1, 3))
            assert mode(path) == 0o600
            assert mode(Path(f"{path}-wal")) == 0o600
            assert mode(Path(f"{path}.lock")) == 0o600
            assert mode(path.parent) == 0o700
    finally:
        os.umask(old)


async def test_the_file_is_marked_as_a_traft_store_with_its_schema_version(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.set(b"k", b"v")
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA application_id").fetchone()[0] == 0x74726674
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def store_threads(path: Path) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == f"traft-sqlite {path}"]


async def test_the_worker_thread_ends_with_aclose_and_with_a_failed_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.store_logs(entries(1, 1))
        assert len(store_threads(path)) == 1  # one dedicated thread per store
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError):
        async with SQLiteStore(bad):
            pass
    with trio.fail_after(5):
        while store_threads(path) or store_threads(bad):
            await trio.sleep(0.01)


async def test_the_log_queries_use_the_primary_key_not_a_scan(tmp_path: Path) -> None:
    # What makes first/last, reads and deletes (prefix or suffix) cost only
    # the rows they touch: SQLite's plan must SEARCH the rowid tree.
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.store_logs(entries(1, 10))
    raw = sqlite3.connect(path)
    try:
        for sql in (_sqlite_store._SQL_BOUNDS, _sqlite_store._SQL_READ,
                    _sqlite_store._SQL_DELETE):
            args = () if "?" not in sql else (1, 5)
            plan = [row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, args)]
            steps = [p for p in plan if "log" in p]
            assert steps and all(p.startswith("SEARCH") for p in steps), (sql, plan)
    finally:
        raw.close()
