"""A replicated key-value map: the state machine behind ``traft node`` and
the simulation workload. Commands are CBOR maps; results are plain values.

Reads are not commands: read locally after ``raft.read_index()`` (or
``barrier()``) for linearizable reads, or locally alone for stale ones.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, BinaryIO

import cbor2

from .._storage import SnapshotSink
from .._types import Log


@dataclass(frozen=True)
class KVCommand:
    op: str  # "put" | "delete" | "cas"
    key: str
    value: bytes | None = None
    expected: bytes | None = None

    def encode(self) -> bytes:
        return cbor2.dumps({"op": self.op, "k": self.key, "v": self.value, "e": self.expected})

    @staticmethod
    def decode(data: bytes) -> KVCommand:
        try:
            raw = cbor2.loads(data)
            op, key = raw["op"], raw["k"]
            value, expected = raw.get("v"), raw.get("e")
        except Exception as exc:
            raise ValueError(f"not a kv command: {exc}") from exc
        if op not in ("put", "delete", "cas") or not isinstance(key, str):
            raise ValueError(f"not a kv command: op={op!r}")
        if not (value is None or isinstance(value, bytes)) or not (
                expected is None or isinstance(expected, bytes)):
            raise ValueError("kv values must be bytes")
        return KVCommand(op, key, value, expected)


class KVStateMachine:
    """``apply`` returns: put -> None; delete -> whether the key existed;
    cas -> whether it swapped (expected None means "absent")."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()  # restore runs in a worker thread
        self.applied_index = 0

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._data if k.startswith(prefix))

    def items(self) -> dict[str, bytes]:
        return dict(self._data)

    def apply(self, log: Log) -> Any:
        self.applied_index = log.index
        cmd = KVCommand.decode(log.data)
        with self._lock:
            if cmd.op == "put":
                if cmd.value is None:
                    raise ValueError("put needs a value")
                self._data[cmd.key] = cmd.value
                return None
            if cmd.op == "delete":
                return self._data.pop(cmd.key, None) is not None
            current = self._data.get(cmd.key)
            if current == cmd.expected:
                if cmd.value is None:
                    self._data.pop(cmd.key, None)
                else:
                    self._data[cmd.key] = cmd.value
                return True
            return False

    def snapshot(self) -> _KVSnapshot:
        # The dict is copied (cheap next to persisting it) so applies go on.
        return _KVSnapshot(dict(self._data))

    def restore(self, source: BinaryIO) -> None:
        raw = cbor2.load(source)
        if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, bytes) for k, v in raw.items()):
            raise ValueError("snapshot is not a kv map")
        with self._lock:
            self._data = raw


class _KVSnapshot:
    def __init__(self, data: dict[str, bytes]) -> None:
        self._data = data

    def persist(self, sink: SnapshotSink) -> None:
        try:
            sink.write(cbor2.dumps(self._data))
        except BaseException:
            sink.cancel()
            raise
        sink.close()

    def release(self) -> None:
        self._data = {}
