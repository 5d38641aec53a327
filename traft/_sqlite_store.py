"""The durable embedded store: log and stable store in one SQLite file
(the role raft-boltdb plays for hashicorp/raft).

Layout and guarantees:

- One SQLite database per node, in WAL journal mode with
  ``synchronous=FULL`` and ``locking_mode=EXCLUSIVE``: when ``store_logs`` or
  ``set`` returns, the data is on disk. ``store_logs`` writes its whole batch
  in one transaction, so a batch costs one fsync (what makes group commit pay).
- A row per log entry, keyed by ``idx INTEGER PRIMARY KEY`` (SQLite's rowid
  B-tree): ``first_index``/``last_index`` come from ``min``/``max`` lookups at
  the ends of the tree, done on open and after a delete and kept in memory
  in between; ``delete_range`` touches only the rows it removes, for a prefix
  (compaction) as for a suffix (conflict truncation).
- Every row carries a CRC-32 over all of its fields (lengths included); a row
  that fails it raises :class:`CorruptLogError` naming the file and index.
- The file is marked with SQLite's ``application_id`` (``"trft"``) and its
  schema version in ``user_version``. Opening a file that lacks the mark, or
  has a newer schema, fails at once with :class:`StoreError`; such a file is
  only ever read, never written.
- An exclusive ``flock`` on a sibling ``<path>.lock`` refuses a second opener
  (another process, or another store object in this one): two nodes on one
  log lose data.

All SQLite work happens in one dedicated worker thread per store, one job at
a time (a ``CapacityLimiter(1)`` on the Trio side), so the one connection is
used serially and the event loop never blocks on disk. A call still waiting
for its turn is cancellable and changes nothing; a call that has reached the
thread runs to completion even if cancelled (the cancellation is delivered
afterwards), so a cancelled write has either fully happened or not at all.
Answers already in memory (the log's ends, entries read ahead) are served in
the Trio thread, and rows are checksummed there.

Opening is lazy: the constructor does no I/O; the file is opened (created if
missing, with its parent directories) on the first call, in the worker
thread. ``async with SQLiteStore(path) as store:`` opens eagerly, so a bad
or locked file fails on entry.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import queue
import sqlite3
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import trio

from ._errors import LogNotFoundError, RaftError
from ._types import Log, LogType

__all__ = ["CorruptLogError", "CorruptStoreError", "SQLiteStore", "StoreError"]

T = TypeVar("T")

SCHEMA_VERSION = 1
APPLICATION_ID = 0x74726674  # b"trft": SQLite's header field for file formats
_SQLITE_MAGIC = b"SQLite format 3\x00"
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1
# get_log reads this many following rows in the same worker-thread trip: a
# node loads its log entry by entry at start, and one trip per entry would
# cost far more than the reads themselves.
_READ_AHEAD = 256

_SCHEMA = """
CREATE TABLE log (
    idx INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    type INTEGER NOT NULL,
    data BLOB NOT NULL,
    extensions BLOB NOT NULL,
    appended_at REAL NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE stable (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    crc INTEGER NOT NULL
);
"""
_TABLES = frozenset({"log", "stable"})

# Each of these is a SEARCH of the rowid B-tree, never a SCAN (see
# test_the_log_queries_use_the_primary_key_not_a_scan). min() and max() must
# be separate subqueries: together in one SELECT they defeat SQLite's
# min/max optimization and scan the whole table.
_SQL_BOUNDS = "SELECT (SELECT min(idx) FROM log), (SELECT max(idx) FROM log)"
_SQL_READ = ("SELECT idx, term, type, data, extensions, appended_at, crc FROM log "
             "WHERE idx BETWEEN ? AND ? ORDER BY idx")
_SQL_DELETE = "DELETE FROM log WHERE idx BETWEEN ? AND ?"
_SQL_INSERT = "INSERT OR REPLACE INTO log VALUES (?, ?, ?, ?, ?, ?, ?)"


class StoreError(RaftError):
    """A durable store cannot be opened or used: the file is not a traft
    store, has a newer schema, is locked by another opener, is closed, or the
    disk failed. The message names the path."""


class CorruptStoreError(StoreError):
    """Stored data failed its checksum: the store returns an error, never
    wrong data. ``path`` is the file or directory holding it."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class CorruptLogError(CorruptStoreError):
    """The log entry at ``index`` in the store at ``path`` is corrupt."""

    def __init__(self, path: str, index: int, detail: str) -> None:
        super().__init__(f"{path}: log entry at index {index} is corrupt ({detail})", path=path)
        self.index = index


# ----------------------------------------------------------------------
# Row encoding

# index, term, type, appended_at, len(data), len(extensions): the lengths make
# the split between data and extensions part of what the CRC covers.
_LOG_HEAD = struct.Struct(">qqBdQQ")
_KV_HEAD = struct.Struct(">QQ")

_Row = tuple[int, int, int, bytes, bytes, float, int]


def _log_crc(index: int, term: int, type: int, appended_at: float,
             data: bytes, extensions: bytes) -> int:
    crc = zlib.crc32(_LOG_HEAD.pack(index, term, type, appended_at, len(data), len(extensions)))
    return zlib.crc32(extensions, zlib.crc32(data, crc))


def _kv_crc(key: bytes, value: bytes) -> int:
    return zlib.crc32(value, zlib.crc32(key, zlib.crc32(_KV_HEAD.pack(len(key), len(value)))))


def _encode_log(log: Log) -> _Row:
    data, ext = bytes(log.data), bytes(log.extensions)
    appended_at = float(log.appended_at)
    t = int(log.type)
    return (log.index, log.term, t, data, ext, appended_at,
            _log_crc(log.index, log.term, t, appended_at, data, ext))


def _decode_log(path: str, index: int, row: tuple[Any, ...]) -> Log:
    idx, term, t, data, ext, appended_at, crc = row
    if not (isinstance(term, int) and isinstance(t, int) and isinstance(data, bytes)
            and isinstance(ext, bytes) and isinstance(appended_at, (int, float))
            and isinstance(crc, int) and 0 <= t <= 255 and 0 <= term <= _INT64_MAX):
        raise CorruptLogError(path, index, "a column has the wrong type")
    if _log_crc(idx, term, t, appended_at, data, ext) != crc:
        raise CorruptLogError(path, index, "checksum mismatch")
    try:
        kind = LogType(t)
    except ValueError:
        raise CorruptLogError(path, index, f"unknown log type {t}") from None
    return Log(index=idx, term=term, type=kind, data=data, extensions=ext,
               appended_at=float(appended_at))


def _check_int(value: object, what: str, lo: int = 0, hi: int = _INT64_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} out of range [{lo}, {hi}]: {value}")
    return value


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes):
        raise TypeError(f"stable store keys must be bytes, not {type(key).__name__}")
    return key


def _check_bytes(value: object, what: str) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


# ----------------------------------------------------------------------
# Opening: checks that never write to the file


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_header(path: str) -> bool:
    """Whether ``path`` exists; raises StoreError if it is not a traft store
    (by its 100-byte header alone: a foreign file is only read)."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        raise StoreError(f"{path} is a directory, not a traft store") from None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if len(header) < 100 or header[:16] != _SQLITE_MAGIC:
        what = "an empty file" if not header else "not an SQLite database"
        raise StoreError(f"{path} is not a traft store ({what})")
    app_id = int.from_bytes(header[68:72], "big")
    if app_id != APPLICATION_ID:
        raise StoreError(
            f"{path} is not a traft store (an SQLite database with application_id "
            f"{app_id:#010x}, not traft's {APPLICATION_ID:#010x})")
    _check_version(path, int.from_bytes(header[60:64], "big", signed=True))
    return True


def _check_version(path: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has traft store schema version {version}, newer than the "
            f"version {SCHEMA_VERSION} this traft supports; open it with a newer traft")
    if version < 1:
        raise StoreError(f"{path} is a damaged traft store (schema version {version})")


def _check_wal(path: str) -> None:
    """If a WAL is pending (the last opener crashed), the live
    application_id and user_version may sit in it rather than in the header:
    read them through a read-only connection, which cannot checkpoint."""
    wal, shm = path + "-wal", path + "-shm"
    try:
        if os.path.getsize(wal) == 0:
            return
    except FileNotFoundError:
        return
    had_shm = os.path.exists(shm)
    uri = "file:" + path.replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path} as a traft store: {exc}") from exc
    finally:
        if not had_shm:
            # Ours, and unused from here: the store's own connection keeps its
            # WAL index in memory (exclusive locking mode).
            try:
                os.remove(shm)
            except FileNotFoundError:
                pass
    if app_id != APPLICATION_ID:
        raise StoreError(f"{path} is not a traft store (application_id {app_id:#010x})")
    _check_version(path, version)


def _lock(path: str) -> int:
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(
                f"{path} is already open in another SQLiteStore (lock {lock_path} "
                f"is held, perhaps by another process): two nodes on one log "
                f"would lose data") from None
        raise StoreError(f"cannot lock {lock_path}: {exc}") from exc
    return fd


def _create(path: str) -> None:
    """Create an empty store atomically: build it under a temporary name,
    fsync it, rename it into place, fsync the directory."""
    tmp = path + ".creating"
    for stale in (tmp, tmp + "-journal", tmp + "-wal"):
        try:
            os.remove(stale)
        except FileNotFoundError:
            pass
    # Created 0600 before SQLite touches it: SQLite gives its -wal and
    # -journal files the database file's mode.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    os.chmod(tmp, 0o600)  # whatever the umask
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN")
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
        # Persistent, and written to the header now (not to a WAL), so the
        # header alone identifies the file from here on.
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


class _Conn:
    """The open state: the connection, the lock, the cached ends of the log
    and the read-ahead buffer. Only touched from the worker lane."""

    def __init__(self, path: str, conn: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self.db = conn
        self.lock_fd = lock_fd
        self.first = 0
        self.last = 0
        self.ahead: dict[int, tuple[Any, ...]] = {}
        self.refresh_bounds()

    def refresh_bounds(self) -> None:
        lo, hi = self.db.execute(_SQL_BOUNDS).fetchone()
        self.first, self.last = (lo or 0), (hi or 0)

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            os.close(self.lock_fd)  # releases the flock


def _open(path: str) -> _Conn:
    exists = _check_header(path)  # before the lock: reject foreign files untouched
    parent = os.path.dirname(os.path.abspath(path))
    if not exists and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    lock_fd = _lock(path)
    try:
        if _check_header(path):  # again, now that no one else can create it
            _check_wal(path)
        else:
            _create(path)
        conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            # Exclusive locking: no other SQLite connection may read or write
            # while we hold the file (and the WAL index lives in our memory).
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{path}: cannot use WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not _TABLES <= tables:
                raise StoreError(f"{path} is a damaged traft store: missing table(s) "
                                 f"{', '.join(sorted(_TABLES - tables))}")
            return _Conn(path, conn, lock_fd)
        except BaseException:
            conn.close()
            raise
    except BaseException:
        os.close(lock_fd)
        raise


# ----------------------------------------------------------------------
# The worker thread


class _Job:
    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.token = trio.lowlevel.current_trio_token()
        self.task = trio.lowlevel.current_task()
        self.result: object = None
        self.error: BaseException | None = None


def _work(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        try:
            job.result = job.fn()
        except BaseException as exc:
            job.error = exc
        try:
            job.token.run_sync_soon(trio.lowlevel.reschedule, job.task)
        except trio.RunFinishedError:  # pragma: no cover - the caller waits for us
            pass
        del job


class _Worker:
    """One dedicated thread that runs jobs in order (a store's connection is
    only ever used from it). Handing a job to a parked thread of our own
    costs less than ``trio.to_thread``'s thread-cache hand-off, which matters
    when each job is a single small fsync."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the thread. Once queued it runs to completion:
        cancellation is delivered at the caller's next checkpoint."""
        if self._thread is None:
            self._thread = threading.Thread(target=_work, args=(self._jobs,),
                                            name=self._name, daemon=True)
            self._thread.start()
        job = _Job(fn)
        self._jobs.put(job)
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        if job.error is not None:
            raise job.error
        return cast(T, job.result)

    def stop(self) -> None:
        """Let the thread exit once the jobs queued so far are done."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None


# ----------------------------------------------------------------------
# The store


class SQLiteStore:
    """Durable :class:`~traft.LogStore` and :class:`~traft.StableStore` in one
    SQLite file (see the module docstring for the layout and guarantees).

    ``SQLiteStore(path)`` does no I/O; the file is opened (or created) on the
    first call. Release it with ``await store.aclose()``, or use
    ``async with SQLiteStore(path) as store:``, which opens on entry.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        # Held across each job, so a call waiting its turn is cancellable and
        # changes nothing, and the Trio thread may read the cached state
        # (bounds, read-ahead) while no job runs.
        self._limiter = trio.CapacityLimiter(1)
        self._worker = _Worker(f"traft-sqlite {self._path}")
        weakref.finalize(self, self._worker.stop)  # a store dropped unclosed
        self._conn: _Conn | None = None
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._conn else "not yet opened"
        return f"<SQLiteStore {self._path!r} ({state})>"

    # -- the worker lane -----------------------------------------------

    async def _run(self, fn: Callable[[_Conn], T]) -> T:
        """Run ``fn(conn)`` in the worker thread, one call at a time, opening
        the store first if needed. SQLite errors become StoreError."""
        async with self._limiter:
            return await self._worker.call(functools.partial(self._in_thread, fn))

    async def _cached(self, fn: Callable[[_Conn], T | None], slow: Callable[[_Conn], T]) -> T:
        """``fn(conn)`` in the Trio thread if the store is open and it answers
        from memory (not None), else ``slow(conn)`` in the worker thread."""
        async with self._limiter:
            if self._conn is not None:
                value = fn(self._conn)
                if value is not None:
                    return value
            return await self._worker.call(functools.partial(self._in_thread, slow))

    def _in_thread(self, fn: Callable[[_Conn], T]) -> T:
        if self._closed:
            raise StoreError(f"{self._path}: the store is closed")
        if self._conn is None:
            try:
                self._conn = _open(self._path)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {self._path}: {exc}") from exc
            except OSError as exc:
                raise StoreError(f"cannot open {self._path}: {exc}") from exc
        try:
            return fn(self._conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: {exc}") from exc

    async def __aenter__(self) -> Self:
        try:
            await self._run(lambda conn: None)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the file and release the lock. Idempotent; completes even if
        the caller is being cancelled."""
        with trio.CancelScope(shield=True):
            async with self._limiter:
                self._closed = True
                if self._conn is not None:
                    await self._worker.call(self._close_sync)
                self._worker.stop()

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- LogStore --------------------------------------------------------

    # The ends of the log are kept in memory (we are the file's only writer),
    # so these are answered without a trip to the worker once it is open.

    async def first_index(self) -> int:
        """Index of the oldest stored entry, or 0 when the log is empty."""
        return await self._cached(lambda c: c.first, lambda c: c.first)

    async def last_index(self) -> int:
        """Index of the newest stored entry, or 0 when the log is empty."""
        return await self._cached(lambda c: c.last, lambda c: c.last)

    async def get_log(self, index: int) -> Log:
        """The entry at ``index``; :class:`~traft.LogNotFoundError` if absent,
        :class:`CorruptLogError` if it fails its checksum."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 < index <= _INT64_MAX:
            await trio.lowlevel.checkpoint()
            raise LogNotFoundError(f"log entry at index {index!r} not found")
        row = await self._cached(lambda c: c.ahead.pop(index, None),
                                 functools.partial(self._read_ahead, index))
        return _decode_log(self._path, index, row)

    @staticmethod
    def _read_ahead(index: int, c: _Conn) -> tuple[Any, ...]:
        rows = c.db.execute(
            _SQL_READ, (index, min(index + _READ_AHEAD - 1, _INT64_MAX))).fetchall()
        c.ahead = {r[0]: r for r in rows}
        row = c.ahead.pop(index, None)
        if row is None:
            raise LogNotFoundError(f"log entry at index {index} not found")
        return row

    async def store_logs(self, logs: Sequence[Log]) -> None:
        """Store ``logs`` in one transaction (one fsync), replacing any
        entries already at their indexes. Durable when it returns."""
        # Validate the whole batch first so a bad entry writes nothing.
        batch = list(logs)
        for log in batch:
            if not isinstance(log, Log):
                raise TypeError(f"expected Log, not {type(log).__name__}")
            _check_int(log.index, "Log.index", lo=1)
            _check_int(log.term, "Log.term")
            _check_int(int(log.type), "Log.type", hi=255)
            _check_bytes(log.data, "Log.data")
            _check_bytes(log.extensions, "Log.extensions")
            if not isinstance(log.appended_at, (int, float)) or isinstance(log.appended_at, bool):
                raise TypeError(f"Log.appended_at must be a float, not "
                                f"{type(log.appended_at).__name__}")
        if not batch:
            await trio.lowlevel.checkpoint()
            return
        await self._run(functools.partial(self._store_logs, batch))

    @staticmethod
    def _store_logs(batch: list[Log], c: _Conn) -> None:
        rows = [_encode_log(log) for log in batch]
        c.ahead.clear()
        db = c.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_SQL_INSERT, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT may have rolled back already
                db.execute("ROLLBACK")
            raise
        lo = min(r[0] for r in rows)
        hi = max(r[0] for r in rows)
        c.first = lo if c.first == 0 else min(c.first, lo)
        c.last = max(c.last, hi)

    async def delete_range(self, lo: int, hi: int) -> None:
        """Delete entries ``lo`` through ``hi`` inclusive (absent ones are
        ignored). Costs only the rows removed; durable when it returns."""
        _check_int(lo, "lo", lo=-_UINT64_MAX, hi=_UINT64_MAX)
        _check_int(hi, "hi", lo=-_UINT64_MAX, hi=_UINT64_MAX)
        await self._run(functools.partial(self._delete_range, lo, hi))

    @staticmethod
    def _delete_range(lo: int, hi: int, c: _Conn) -> None:
        start, stop = max(lo, c.first), min(hi, c.last)
        if c.last == 0 or start > stop:
            return
        c.ahead.clear()
        c.db.execute(_SQL_DELETE, (start, stop))
        if start <= c.first or stop >= c.last:
            c.refresh_bounds()

    # -- StableStore -----------------------------------------------------

    async def set(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``; durable when it returns."""
        _check_key(key)
        _check_bytes(value, "stable store values")
        item = (key, bytes(value))
        await self._run(functools.partial(self._set, *item))

    @staticmethod
    def _set(key: bytes, value: bytes, c: _Conn) -> None:
        c.db.execute("INSERT OR REPLACE INTO stable VALUES (?, ?, ?)",
                     (key, value, _kv_crc(key, value)))

    async def get(self, key: bytes) -> bytes | None:
        """The value under ``key``, or ``None`` when unset."""
        _check_key(key)
        return await self._run(functools.partial(self._get, key))

    @staticmethod
    def _get(key: bytes, c: _Conn) -> bytes | None:
        row = c.db.execute("SELECT value, crc FROM stable WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value, crc = row
        if not isinstance(value, bytes) or _kv_crc(key, value) != crc:
            raise CorruptStoreError(f"{c.path}: stable value under key {key!r} is corrupt "
                                    f"(checksum mismatch)", path=c.path)
        return value

    async def set_uint64(self, key: bytes, value: int) -> None:
        """Store an unsigned 64-bit integer under ``key`` (8 bytes, big-endian,
        so ``get`` and ``get_uint64`` agree)."""
        _check_key(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"uint64 value must be an int, not {type(value).__name__}")
        if not 0 <= value <= _UINT64_MAX:
            raise ValueError(f"uint64 value out of range: {value}")
        await self.set(key, value.to_bytes(8, "big"))

    async def get_uint64(self, key: bytes) -> int:
        """The integer under ``key``, or 0 when unset."""
        raw = await self.get(key)
        if raw is None:
            return 0
        if len(raw) != 8:
            raise ValueError(f"value under key {key!r} is not a uint64 ({len(raw)} bytes)")
        return int.from_bytes(raw, "big")
