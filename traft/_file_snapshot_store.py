"""Snapshots as files in a directory (hashicorp ``FileSnapshotStore``).

Layout::

    <directory>/snapshots/<id>/meta.json    index, term, configuration, size, sha256
    <directory>/snapshots/<id>/state.bin    the FSM's bytes, as persist() wrote them

A snapshot is written under ``<id>.tmp``; ``close()`` fsyncs the state and the
metadata, renames the directory to ``<id>`` and fsyncs the parent, so a
snapshot is either complete or absent. Anything named ``*.tmp`` that no sink
of this store is writing is a leftover of a crash and is removed. ``list()``
ignores (and logs) a directory whose metadata is unreadable or whose state
file does not have the recorded size; ``open()`` verifies the SHA-256 while
the snapshot is read and raises :class:`CorruptSnapshotError` at the end on a
mismatch. Only the newest ``retain`` snapshots are kept. Directories are
created 0700 and files 0600.

Nothing holds a whole snapshot in memory: the sink writes through a small
buffer, and ``open`` returns a reader that streams from the file.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
from typing import TYPE_CHECKING, BinaryIO, cast

import trio

from ._snapshot_stores import _SinkBase
from ._sqlite_store import CorruptStoreError, StoreError
from ._types import Configuration, Server, SnapshotMeta, Suffrage

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["CorruptSnapshotError", "FileSnapshotSink", "FileSnapshotStore"]

logger = logging.getLogger("traft.snapshots")

_META = "meta.json"
_STATE = "state.bin"
_TMP = ".tmp"
_FORMAT = 1  # of meta.json
_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_BUFFER = 1 << 16


class CorruptSnapshotError(CorruptStoreError):
    """The snapshot ``id`` in the directory ``path`` is truncated or failed
    its checksum."""

    def __init__(self, path: str, id: str, detail: str) -> None:
        super().__init__(f"{path}: snapshot {id} is corrupt ({detail})", path=path)
        self.id = id


# ----------------------------------------------------------------------
# Small file-system helpers (called in worker threads)


def _fsync_path(path: str, *, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(path: str) -> None:
    """Create ``path`` (and missing parents) 0700, and make it durable."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    _mkdir(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # whatever the umask
    _fsync_path(parent, directory=True)


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _meta_to_json(meta: SnapshotMeta, checksum: str) -> bytes:
    doc = {
        "format": _FORMAT,
        "id": meta.id,
        "index": meta.index,
        "term": meta.term,
        "configuration": {"servers": [
            {"id": s.id, "address": s.address, "suffrage": s.suffrage.value}
            for s in meta.configuration.servers]},
        "configuration_index": meta.configuration_index,
        "size": meta.size,
        "version": meta.version,
        "checksum": checksum,
    }
    return json.dumps(doc, indent=1).encode()


def _meta_from_json(raw: bytes) -> tuple[SnapshotMeta, str]:
    """Parse meta.json strictly; ``ValueError`` on anything unexpected."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"unknown metadata format {doc.get('format')!r}"
                         if isinstance(doc, dict) else "not an object")

    def integer(name: str) -> int:
        v = doc[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} is not a non-negative integer")
        return v

    servers = []
    for s in doc["configuration"]["servers"]:
        if not (isinstance(s["id"], str) and isinstance(s["address"], str)):
            raise ValueError("bad server entry")
        servers.append(Server(s["id"], s["address"], Suffrage(s["suffrage"])))
    checksum = doc["checksum"]
    if not isinstance(checksum, str) or not checksum.startswith("sha256:"):
        raise ValueError("bad checksum field")
    if not isinstance(doc["id"], str):
        raise ValueError("bad id")
    meta = SnapshotMeta(id=doc["id"], index=integer("index"), term=integer("term"),
                        configuration=Configuration(tuple(servers)),
                        configuration_index=integer("configuration_index"),
                        size=integer("size"), version=integer("version"))
    return meta, checksum


# ----------------------------------------------------------------------
# Reading


class _VerifyingReader(io.RawIOBase):
    """Streams ``state.bin``, hashing as it goes; the read that reaches the
    recorded size (or finds the file shorter or longer) raises
    :class:`CorruptSnapshotError` if the bytes are not the ones written."""

    def __init__(self, file: io.FileIO, meta: SnapshotMeta, checksum: str, where: str) -> None:
        super().__init__()
        self._file = file
        self._meta = meta
        self._checksum = checksum
        self._where = where
        self._hash = hashlib.sha256()
        self._count = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        n = self._file.readinto(view)
        if n is None:  # pragma: no cover - only for non-blocking files
            return 0
        self._hash.update(view[:n])
        self._count += n
        if self._count > self._meta.size:
            self._fail(f"state is longer than the recorded {self._meta.size} bytes")
        if not self._verified and (self._count == self._meta.size or n == 0):
            self._verify()
        return n

    def _verify(self) -> None:
        if self._count != self._meta.size:
            self._fail(f"state has {self._count} bytes, expected {self._meta.size}")
        if "sha256:" + self._hash.hexdigest() != self._checksum:
            self._fail("sha256 checksum mismatch")
        self._verified = True

    def _fail(self, detail: str) -> None:
        raise CorruptSnapshotError(self._where, self._meta.id, detail)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            super().close()


# ----------------------------------------------------------------------
# Writing


class FileSnapshotSink(_SinkBase):
    """Writes one snapshot under ``<id>.tmp``; ``close()`` makes it durable and
    visible, ``cancel()`` removes it. Synchronous (``FSMSnapshot.persist``
    writes it from a worker thread)."""

    def __init__(self, store: FileSnapshotStore, meta: SnapshotMeta, tmp_dir: str) -> None:
        super().__init__(meta.id)
        self._store = store
        self._meta = meta
        self._tmp_dir = tmp_dir
        fd = os.open(os.path.join(tmp_dir, _STATE),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        self._file = io.BufferedWriter(io.FileIO(fd, "wb"), buffer_size=_BUFFER)
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def meta(self) -> SnapshotMeta:
        """The metadata as it stands (``size`` grows with each write)."""
        return _with_size(self._meta, self._size)

    def write(self, b: ReadableBuffer) -> int:
        self._check_open()
        n = memoryview(b).nbytes
        self._file.write(b)
        self._hash.update(b)
        self._size += n
        return n

    def _commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            meta = _with_size(self._meta, self._size)
            _write_file(os.path.join(self._tmp_dir, _META),
                        _meta_to_json(meta, "sha256:" + self._hash.hexdigest()))
            _fsync_path(self._tmp_dir, directory=True)
            self._store._publish(self._id, self._tmp_dir)
        except BaseException as exc:
            self._abandon()
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write snapshot {self._id} in "
                                 f"{self._store.directory}: {exc}") from exc
            raise

    def _abandon(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        self._store._discard(self._id, self._tmp_dir)


def _with_size(meta: SnapshotMeta, size: int) -> SnapshotMeta:
    return SnapshotMeta(id=meta.id, index=meta.index, term=meta.term,
                        configuration=meta.configuration,
                        configuration_index=meta.configuration_index,
                        size=size, version=meta.version)


# ----------------------------------------------------------------------
# The store


class FileSnapshotStore:
    """Durable :class:`~traft.SnapshotStore` in ``directory`` (created 0700 if
    missing, on first use), keeping the newest ``retain`` snapshots.

    Order ("newest") is by ``(term, index)`` and then creation: ids are
    ``<term>-<index>-<n>`` with ``n`` one more than any id in the directory,
    so the order survives restarts without reading any clock.
    """

    def __init__(self, directory: str | os.PathLike[str], retain: int = 2) -> None:
        if not isinstance(retain, int) or isinstance(retain, bool) or retain < 1:
            raise ValueError(f"retain must be a positive int: {retain!r}")
        self._directory = os.fspath(directory)
        self._snapshots = os.path.join(self._directory, "snapshots")
        self._retain = retain
        # Sinks commit from worker threads while list()/open()/create() run
        # in others: the lock keeps directory scans and renames apart.
        self._lock = threading.Lock()
        self._writing: set[str] = set()  # ids of open sinks: their .tmp is live

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def retain(self) -> int:
        return self._retain

    def __repr__(self) -> str:
        return f"<FileSnapshotStore {self._directory!r} retain={self._retain}>"

    # -- async API ---------------------------------------------------------

    async def create(self, version: int, index: int, term: int,
                     configuration: Configuration,
                     configuration_index: int) -> FileSnapshotSink:
        """Start a snapshot; write it through the returned sink and ``close()``
        it to commit."""
        for name, v in (("version", version), ("index", index), ("term", term),
                        ("configuration_index", configuration_index)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int: {v!r}")
        if not isinstance(configuration, Configuration):
            raise TypeError(f"configuration must be a Configuration, not "
                            f"{type(configuration).__name__}")
        return await trio.to_thread.run_sync(
            self._create_sync, version, index, term, configuration, configuration_index)

    async def list(self) -> builtins.list[SnapshotMeta]:
        """Complete snapshots, newest first (at most ``retain``)."""
        return await trio.to_thread.run_sync(self._list_sync)

    async def open(self, id: str) -> tuple[SnapshotMeta, BinaryIO]:
        """Metadata and a streaming reader of snapshot ``id``. The reader
        raises :class:`CorruptSnapshotError` when it reaches the end (or finds
        the file shorter) and the bytes do not match the recorded checksum.
        ``ValueError`` if there is no such snapshot."""
        if not isinstance(id, str) or not _ID.match(id):
            await trio.lowlevel.checkpoint()
            raise ValueError(f"no snapshot with id {id!r} in {self._directory}")
        return await trio.to_thread.run_sync(self._open_sync, id)

    # -- worker-thread side ------------------------------------------------

    def _create_sync(self, version: int, index: int, term: int,
                     configuration: Configuration, configuration_index: int,
                     ) -> FileSnapshotSink:
        with self._lock:
            try:
                names = self._prepare()
                n = 1 + max((self._seq(name) for name in names), default=0)
                id = f"{term}-{index}-{n}"
                tmp_dir = os.path.join(self._snapshots, id + _TMP)
                _mkdir(tmp_dir)
                meta = SnapshotMeta(id=id, index=index, term=term,
                                    configuration=configuration,
                                    configuration_index=configuration_index,
                                    size=0, version=version)
                sink = FileSnapshotSink(self, meta, tmp_dir)
            except OSError as exc:
                raise StoreError(f"cannot create a snapshot in {self._directory}: {exc}") from exc
            self._writing.add(id)
            return sink

    def _list_sync(self) -> builtins.list[SnapshotMeta]:
        with self._lock:
            try:
                return self._tidy()
            except OSError as exc:
                raise StoreError(f"cannot list snapshots in {self._directory}: {exc}") from exc

    def _open_sync(self, id: str) -> tuple[SnapshotMeta, BinaryIO]:
        path = os.path.join(self._snapshots, id)
        with self._lock:
            try:
                meta, checksum = self._read_meta(path, id)
            except FileNotFoundError:
                raise ValueError(f"no snapshot with id {id!r} in {self._directory}") from None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CorruptSnapshotError(self._snapshots, id,
                                           f"unreadable metadata: {exc!r}") from exc
            try:
                file = io.FileIO(os.path.join(path, _STATE), "rb")
            except OSError as exc:
                raise CorruptSnapshotError(self._snapshots, id, f"no state file: {exc}") from exc
            size = os.fstat(file.fileno()).st_size
            if size != meta.size:
                file.close()
                raise CorruptSnapshotError(
                    self._snapshots, id, f"state file has {size} bytes, expected {meta.size}")
        raw = _VerifyingReader(file, meta, checksum, self._snapshots)
        return meta, cast(BinaryIO, io.BufferedReader(raw, buffer_size=_BUFFER))

    def _prepare(self) -> builtins.list[str]:
        """Make the directories, remove crash leftovers; the remaining names.
        Called with the lock held."""
        _mkdir(self._snapshots)
        names = []
        for name in os.listdir(self._snapshots):
            if name.endswith(_TMP) and name[: -len(_TMP)] not in self._writing:
                logger.info("removing partial snapshot %s", os.path.join(self._snapshots, name))
                shutil.rmtree(os.path.join(self._snapshots, name), ignore_errors=True)
            else:
                names.append(name)
        return names

    @staticmethod
    def _seq(name: str) -> int:
        m = _ID.match(name.split(".", 1)[0])
        return int(m.group(3)) if m else 0

    def _scan(self, names: builtins.list[str]) -> builtins.list[tuple[SnapshotMeta, str]]:
        """Complete snapshots, newest first, each with its directory. A
        directory with unreadable metadata or a state file of the wrong size
        is logged and skipped (left alone for an operator to inspect)."""
        found: builtins.list[tuple[tuple[int, int, int], SnapshotMeta, str]] = []
        for name in names:
            m = _ID.match(name)
            if not m:
                continue
            path = os.path.join(self._snapshots, name)
            try:
                meta, _ = self._read_meta(path, name)
                size = os.stat(os.path.join(path, _STATE)).st_size
                if size != meta.size:
                    raise ValueError(f"state file has {size} bytes, metadata says {meta.size}")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("ignoring damaged snapshot %s: %s", path, exc)
                continue
            found.append(((meta.term, meta.index, int(m.group(3))), meta, path))
        found.sort(key=lambda f: f[0], reverse=True)
        return [(meta, path) for _, meta, path in found]

    @staticmethod
    def _read_meta(path: str, id: str) -> tuple[SnapshotMeta, str]:
        with open(os.path.join(path, _META), "rb") as f:
            meta, checksum = _meta_from_json(f.read(1 << 20))
        if meta.id != id:
            raise ValueError(f"metadata names snapshot {meta.id!r}")
        return meta, checksum

    def _publish(self, id: str, tmp_dir: str) -> None:
        """Rename a finished snapshot into place, then drop the oldest beyond
        ``retain`` (called from the sink's close, in its thread)."""
        with self._lock:
            self._writing.discard(id)
            os.rename(tmp_dir, os.path.join(self._snapshots, id))
            _fsync_path(self._snapshots, directory=True)
            try:
                self._tidy()
            except OSError as exc:
                # The new snapshot is committed; failing to drop old ones
                # only costs disk space, and the next call retries.
                logger.warning("cannot remove old snapshots in %s: %s", self._snapshots, exc)

    def _tidy(self) -> builtins.list[SnapshotMeta]:
        """Remove crash leftovers and the snapshots beyond ``retain`` (a crash
        between a commit and this can leave one too many); the rest, newest
        first. Called with the lock held."""
        found = self._scan(self._prepare())
        if len(found) > self._retain:
            for meta, path in found[self._retain:]:
                # Rename first so a crash mid-removal leaves a .tmp (removed
                # later), never a half-deleted snapshot under its real name.
                doomed = os.path.join(self._snapshots, meta.id + ".reap" + _TMP)
                os.rename(path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            _fsync_path(self._snapshots, directory=True)
        return [meta for meta, _ in found[: self._retain]]

    def _discard(self, id: str, tmp_dir: str) -> None:
        with self._lock:
            self._writing.discard(id)
            shutil.rmtree(tmp_dir, ignore_errors=True)

