"""Value types shared by the core, the driver and the stores (API.md "Identities",
"Log entries", "Node state")."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

ServerID = str
ServerAddress = str


class Suffrage(enum.Enum):
    """Whether a server's vote counts (hashicorp ``ServerSuffrage``)."""

    VOTER = "voter"
    NONVOTER = "nonvoter"


@dataclass(frozen=True)
class Server:
    id: ServerID
    address: ServerAddress
    suffrage: Suffrage = Suffrage.VOTER


@dataclass(frozen=True)
class Configuration:
    """The cluster membership: an ordered tuple of servers."""

    servers: tuple[Server, ...] = ()

    def server(self, id: ServerID) -> Server | None:
        for s in self.servers:
            if s.id == id:
                return s
        return None

    @property
    def voters(self) -> frozenset[ServerID]:
        return frozenset(s.id for s in self.servers if s.suffrage is Suffrage.VOTER)

    def is_voter(self, id: ServerID) -> bool:
        s = self.server(id)
        return s is not None and s.suffrage is Suffrage.VOTER


class LogType(enum.IntEnum):
    COMMAND = 0
    NOOP = 1
    BARRIER = 2
    CONFIGURATION = 3


@dataclass
class Log:
    """One replicated log entry. Never mutated once created: the in-memory
    network and stores share these objects between nodes."""

    index: int
    term: int
    type: LogType = LogType.COMMAND
    data: bytes = b""
    extensions: bytes = b""
    appended_at: float = 0.0  # wall clock, informational only


class RaftState(enum.Enum):
    FOLLOWER = "Follower"
    CANDIDATE = "Candidate"
    LEADER = "Leader"
    SHUTDOWN = "Shutdown"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Applied:
    """What ``apply_log`` returns (hashicorp ``ApplyFuture``)."""

    index: int
    term: int
    response: Any


@dataclass(frozen=True)
class SnapshotMeta:
    id: str
    index: int
    term: int
    configuration: Configuration
    configuration_index: int
    size: int
    version: int = 1
