"""FileSnapshotStore: snapshots as files, atomic and checksummed (real clock)."""

from __future__ import annotations

import json
import os
import stat
import tracemalloc
from pathlib import Path

import pytest
import trio

from traft import (
    Configuration,
    CorruptSnapshotError,
    FileSnapshotStore,
    Server,
    SnapshotMeta,
    SnapshotStore,
    StoreError,
    Suffrage,
)
from traft._file_snapshot_store import FileSnapshotSink

CFG = Configuration((Server("a", "10.0.0.1:7000"),
                     Server("b", "10.0.0.2:7000", Suffrage.NONVOTER)))


async def write(store: FileSnapshotStore, index: int, term: int, data: bytes,
                *, configuration: Configuration = CFG, cfg_index: int = 1) -> SnapshotMeta:
    sink = await store.create(1, index, term, configuration, cfg_index)
    sink.write(data)
    sink.close()
    return sink.meta


async def read(store: FileSnapshotStore, id: str) -> bytes:
    _, source = await store.open(id)
    with source:
        return source.read()


def snap_dir(root: Path) -> Path:
    return root / "snapshots"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_satisfies_the_protocol_does_no_io_until_used_and_starts_empty(
        tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    store = FileSnapshotStore(root)
    assert isinstance(store, SnapshotStore)
    assert not root.exists()
    assert await store.list() == []
    assert snap_dir(root).is_dir()


async def test_a_snapshot_is_listed_and_readable_only_after_close(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)
    sink = await store.create(7, 10, 3, CFG, 4)
    assert sink.id == "3-10-1"
    sink.write(b"hello ")
    sink.write(memoryview(b"world"))
    assert await store.list() == []
    with pytest.raises(ValueError):
        await store.open(sink.id)
    sink.close()
    [meta] = await store.list()
    assert meta == SnapshotMeta(id="3-10-1", index=10, term=3, configuration=CFG,
                                configuration_index=4, size=11, version=7)
    opened, source = await store.open(meta.id)
    with source:
        assert opened == meta
        assert source.read() == b"hello world"


async def test_metadata_is_readable_json_with_the_state_checksum(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)
    meta = await write(store, 5, 2, b"state")
    doc = json.loads((snap_dir(tmp_path) / meta.id / "meta.json").read_text())
    assert doc["index"] == 5 and doc["term"] == 2 and doc["size"] == 5
    assert doc["configuration"]["servers"][1] == {
        "id": "b", "address": "10.0.0.2:7000", "suffrage": "nonvoter"}
    assert doc["checksum"].startswith("sha256:")
    assert (snap_dir(tmp_path) / meta.id / "state.bin").read_bytes() == b"state"


async def test_files_are_0600_and_directories_0700_whatever_the_umask(tmp_path: Path) -> None:
    root = tmp_path / "data"
    old = os.umask(0)
    try:
        store = FileSnapshotStore(root)
        meta = await write(store, 1, 1, b"x")
    finally:
        os.umask(old)
    assert mode(root) == 0o700
    assert mode(snap_dir(root)) == 0o700
    assert mode(snap_dir(root) / meta.id) == 0o700
    assert mode(snap_dir(root) / meta.id / "meta.json") == 0o600
    assert mode(snap_dir(root) / meta.id / "state.bin") == 0o600


async def test_list_is_newest_first_by_term_then_index_then_creation(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path, retain=10)
    await write(store, 20, 1, b"a")
    await write(store, 10, 2, b"b")
    await write(store, 15, 1, b"c")
    await write(store, 10, 2, b"d")  # same term and index: the later one is newer
    listed = await store.list()
    assert [(m.term, m.index) for m in listed] == [(2, 10), (2, 10), (1, 20), (1, 15)]
    assert len({m.id for m in listed}) == 4
    assert await read(store, listed[0].id) == b"d"
    # A new store on the same directory (a restart) sees the same order and
    # keeps numbering after the existing ids.
    again = FileSnapshotStore(tmp_path, retain=10)
    assert await again.list() == listed
    newer = await write(again, 10, 2, b"e")
    assert (await again.list())[0] == newer


async def test_only_the_newest_retain_snapshots_are_kept(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)  # retain=2
    metas = [await write(store, i, 1, f"s{i}".encode()) for i in range(1, 5)]
    assert await store.list() == [metas[3], metas[2]]
    assert sorted(p.name for p in snap_dir(tmp_path).iterdir()) == sorted(
        [metas[2].id, metas[3].id])
    one = FileSnapshotStore(tmp_path / "one", retain=1)
    await write(one, 1, 1, b"old")
    new = await write(one, 2, 1, b"new")
    assert await one.list() == [new]
    with pytest.raises(ValueError, match="retain"):
        FileSnapshotStore(tmp_path, retain=0)


async def test_a_cancelled_snapshot_leaves_nothing_and_keeps_the_previous(
        tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)
    first = await write(store, 1, 1, b"keep")
    sink = await store.create(1, 2, 1, CFG, 1)
    sink.write(b"partial")
    sink.cancel()
    sink.cancel()  # idempotent
    assert await store.list() == [first]
    assert [p.name for p in snap_dir(tmp_path).iterdir()] == [first.id]
    with pytest.raises(ValueError):
        sink.write(b"more")
    with pytest.raises(ValueError):
        sink.close()


async def test_a_partial_snapshot_left_by_a_crash_is_ignored_and_removed(
        tmp_path: Path) -> None:
    crashed = FileSnapshotStore(tmp_path)
    complete = await write(crashed, 1, 1, b"complete")
    sink = await crashed.create(1, 9, 2, CFG, 1)  # the process dies mid-persist
    sink.write(b"half of it")
    leftover = snap_dir(tmp_path) / f"{sink.id}.tmp"
    assert leftover.is_dir()

    restarted = FileSnapshotStore(tmp_path)
    assert await restarted.list() == [complete]
    assert not leftover.exists()
    assert [p.name for p in snap_dir(tmp_path).iterdir()] == [complete.id]


async def test_a_sink_being_written_is_not_mistaken_for_a_crash_leftover(
        tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)
    sink = await store.create(1, 1, 1, CFG, 1)
    sink.write(b"part one ")
    assert await store.list() == []  # list() cleans up, but not a live sink
    other = await store.create(1, 2, 1, CFG, 1)
    other.cancel()
    sink.write(b"part two")
    sink.close()
    assert await read(store, sink.id) == b"part one part two"


async def test_open_verifies_the_checksum_and_raises_at_the_end_on_a_mismatch(
        tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)
    data = bytes(range(256)) * 1000
    meta = await write(store, 3, 1, data)
    state = snap_dir(tmp_path) / meta.id / "state.bin"
    damaged = bytearray(state.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01  # one flipped bit, same size
    state.write_bytes(bytes(damaged))
    assert await store.list() == [meta]  # list checks sizes, not contents
    for how in ("all", "chunks", "exact"):
        _, source = await store.open(meta.id)
        with source, pytest.raises(CorruptSnapshotError, match="checksum") as info:
            if how == "all":
                source.read()
            elif how == "chunks":
                while source.read(4096):
                    pass
            else:
                # A reader that stops at exactly the recorded size still
                # learns of the damage.
                source.read(meta.size)
        assert info.value.id == meta.id
        assert str(snap_dir(tmp_path)) in str(info.value)


async def test_a_truncated_state_file_is_ignored_by_list_and_refused_by_open(
        tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)
    older = await write(store, 1, 1, b"older state")
    newer = await write(store, 2, 1, b"newer state")
    state = snap_dir(tmp_path) / newer.id / "state.bin"
    state.write_bytes(state.read_bytes()[:5])
    assert await FileSnapshotStore(tmp_path).list() == [older]
    with pytest.raises(CorruptSnapshotError, match="5 bytes"):
        await store.open(newer.id)
    assert state.exists()  # left for an operator to inspect


async def test_unreadable_metadata_is_ignored(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path, retain=5)
    good = await write(store, 1, 1, b"good")
    for i, junk in enumerate([b"{not json", b"[]", b'{"format": 99}']):
        bad = await write(store, 10 + i, 1, b"x")
        (snap_dir(tmp_path) / bad.id / "meta.json").write_bytes(junk)
    missing = await write(store, 20, 1, b"x")
    (snap_dir(tmp_path) / missing.id / "meta.json").unlink()
    assert await store.list() == [good]


async def test_open_of_an_unknown_or_malformed_id_raises_value_error(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)
    await write(store, 1, 1, b"x")
    for bad in ("9-9-9", "../1-1-1", "1-1-1/../../x", ""):
        with pytest.raises(ValueError):
            await store.open(bad)


async def test_sinks_can_be_written_from_a_worker_thread_and_used_as_context_managers(
        tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path, retain=5)
    sink = await store.create(1, 1, 1, CFG, 1)

    def persist(s: FileSnapshotSink) -> None:
        with s:
            for i in range(100):
                s.write(f"{i},".encode())

    await trio.to_thread.run_sync(persist, sink)
    assert (await read(store, sink.id)).startswith(b"0,1,2,")

    failing = await store.create(1, 2, 1, CFG, 1)
    with pytest.raises(RuntimeError), failing:
        failing.write(b"x")
        raise RuntimeError("persist failed")
    assert [m.id for m in await store.list()] == [sink.id]


async def test_empty_snapshot_round_trips(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)
    meta = await write(store, 1, 1, b"")
    assert meta.size == 0
    assert await read(store, meta.id) == b""


async def test_a_directory_that_cannot_be_created_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    store = FileSnapshotStore(blocker / "snaps")
    with pytest.raises(StoreError, match=str(blocker)):
        await store.list()


async def test_snapshots_are_streamed_never_held_whole_in_memory(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path)
    chunk = os.urandom(1 << 20)
    total = 64 << 20
    tracemalloc.start()
    try:
        sink = await store.create(1, 1, 1, CFG, 1)
        for _ in range(total // len(chunk)):
            sink.write(chunk)
        sink.close()
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        _, source = await store.open(sink.id)
        seen = 0
        with source:
            while block := source.read(1 << 20):
                seen += len(block)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == total
    # 64 MiB went through each way; a few 1 MiB chunks in flight at most.
    assert write_peak < 4 << 20, write_peak
    assert read_peak < 4 << 20, read_peak


async def test_a_crash_between_commit_and_cleanup_leaves_no_more_than_retain(
        tmp_path: Path) -> None:
    # A commit renames the new snapshot in and then removes the oldest; a
    # crash in between leaves retain + 1 on disk until the next call.
    wide = FileSnapshotStore(tmp_path, retain=3)
    metas = [await write(wide, i, 1, b"x") for i in range(1, 4)]
    store = FileSnapshotStore(tmp_path, retain=2)
    assert await store.list() == [metas[2], metas[1]]
    assert sorted(p.name for p in snap_dir(tmp_path).iterdir()) == sorted(
        [metas[1].id, metas[2].id])
