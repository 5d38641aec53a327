"""What the leader knows of each follower's log (§5.3 nextIndex/matchIndex),
and how it paces replication to it (etcd ``tracker/progress.go``).

PROBE: the match is unknown; one AppendEntries at a time, retried on the
next heartbeat answer. REPLICATE: the follower is in sync; appends are
pipelined optimistically, at most ``MAX_INFLIGHT`` unacknowledged.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from .._types import ServerAddress, ServerID

MAX_INFLIGHT = 32


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"  # the entries it needs are compacted: a snapshot is streaming


@dataclass
class Progress:
    id: ServerID
    address: ServerAddress
    next_index: int
    match_index: int = 0
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    # last index of each unacknowledged pipelined append, oldest first
    inflight: deque[int] = field(default_factory=deque)
    last_contact: float | None = None
    last_ack: float = 0.0
    acked_seq: int = 0
    commit_sent: int = 0
    commit_notify_at: float | None = None
    heartbeat_failed: bool = False

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.next_index = self.match_index + 1

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.probe_sent = False
        self.next_index = max(self.next_index, self.match_index + 1)

    def acknowledge(self, index: int) -> bool:
        """Record that the follower matches through ``index``; True if new."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index > self.match_index:
            self.match_index = index
            self.next_index = max(self.next_index, index + 1)
            return True
        return False

    def become_snapshot(self) -> None:
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflight.clear()

    @property
    def paused(self) -> bool:
        if self.state is ProgressState.SNAPSHOT:
            return True
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        return len(self.inflight) >= MAX_INFLIGHT
