"""Config and its validation (hashicorp ``Config``/``ValidateConfig``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._types import ServerID

# hashicorp's floors: below these the timers fire faster than any network.
_MIN_TIMEOUT = 0.005
_MIN_COMMIT_TIMEOUT = 0.001
_MAX_APPEND_ENTRIES = 1024


@dataclass
class Config:
    """Tuning for one node. Times are seconds on Trio's clock.

    ``heartbeat_timeout``: a follower with no word from a leader for this long
    (randomized up to twice it) starts an election. ``election_timeout``: how
    long a candidate waits before retrying (randomized likewise).
    ``leader_lease_timeout``: a leader that has not heard from a quorum for
    this long steps down. ``commit_timeout``: longest a follower waits to
    learn of a commit when the leader has nothing else to send it.
    ``rng``: the only source of randomness (election jitter); pass a seeded
    ``random.Random`` for reproducible runs.
    """

    local_id: ServerID
    heartbeat_timeout: float = 1.0
    election_timeout: float = 1.0
    commit_timeout: float = 0.05
    leader_lease_timeout: float = 0.5
    max_append_entries: int = 64
    prevote: bool = True
    shutdown_on_remove: bool = True
    trailing_logs: int = 10240
    snapshot_interval: float = 120.0
    snapshot_threshold: int = 8192
    no_snapshot_restore_on_start: bool = False
    rng: random.Random | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not isinstance(self.local_id, str) or not self.local_id:
            raise ValueError("local_id must be a non-empty string")
        for name in ("heartbeat_timeout", "election_timeout", "leader_lease_timeout",
                     "snapshot_interval"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < _MIN_TIMEOUT:
                raise ValueError(f"{name} is too low: {value!r} (minimum {_MIN_TIMEOUT}s)")
        if (not isinstance(self.commit_timeout, (int, float))
                or self.commit_timeout < _MIN_COMMIT_TIMEOUT):
            raise ValueError(
                f"commit_timeout is too low: {self.commit_timeout!r} "
                f"(minimum {_MIN_COMMIT_TIMEOUT}s)")
        if not isinstance(self.max_append_entries, int) or self.max_append_entries <= 0:
            raise ValueError(
                f"max_append_entries must be positive: {self.max_append_entries!r}")
        if self.max_append_entries > _MAX_APPEND_ENTRIES:
            raise ValueError(
                f"max_append_entries is too large: {self.max_append_entries} "
                f"(maximum {_MAX_APPEND_ENTRIES})")
        if self.leader_lease_timeout > self.heartbeat_timeout:
            raise ValueError(
                "leader_lease_timeout cannot be larger than heartbeat_timeout")
        if self.election_timeout < self.heartbeat_timeout:
            raise ValueError(
                "election_timeout must be equal or greater than heartbeat_timeout")
        if not isinstance(self.trailing_logs, int) or self.trailing_logs < 0:
            raise ValueError(f"trailing_logs must be >= 0: {self.trailing_logs!r}")
        if not isinstance(self.snapshot_threshold, int) or self.snapshot_threshold < 1:
            raise ValueError(f"snapshot_threshold must be >= 1: {self.snapshot_threshold!r}")
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise ValueError("rng must be a random.Random or None")
