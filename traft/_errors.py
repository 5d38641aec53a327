"""The public exception hierarchy (API.md "Errors"); hashicorp's ``Err*`` values
in ``api.go``, one docstring each."""

from __future__ import annotations

from ._types import ServerAddress, ServerID


class RaftError(Exception):
    """Base class of every error traft raises on purpose."""


class NotLeaderError(RaftError):
    """The call needs the leader and this server is not it [ErrNotLeader].

    ``leader_id``/``leader_address`` name the leader this server knows of, or
    are ``None`` when it knows of none: retry there.
    """

    def __init__(
        self,
        leader_id: ServerID | None = None,
        leader_address: ServerAddress | None = None,
        message: str | None = None,
    ) -> None:
        self.leader_id = leader_id
        self.leader_address = leader_address
        if message is None:
            if leader_id is None:
                message = "not the leader, and no leader is known"
            else:
                message = f"not the leader; the leader is {leader_id} at {leader_address}"
        super().__init__(message)


class LeadershipLostError(RaftError):
    """The leader stepped down before the entry was applied [ErrLeadershipLost].

    The outcome is unknown: the entry may still commit under a new leader.
    """


class RaftShutdownError(RaftError):
    """The node has shut down, or is shutting down [ErrRaftShutdown]."""


class CantBootstrapError(RaftError):
    """Bootstrap was asked of a server that already has state [ErrCantBootstrap]."""


class LeadershipTransferInProgressError(RaftError):
    """The leader is handing over leadership and refuses new work
    [ErrLeadershipTransferInProgress]."""


class NothingNewToSnapshotError(RaftError):
    """Nothing was applied since the last snapshot [ErrNothingNewToSnapshot]."""


class ConfigurationChangeError(RaftError):
    """A membership change was refused: ``prev_index`` mismatch, or another
    change is still uncommitted."""


class LogNotFoundError(RaftError):
    """A log store has no entry at the requested index [ErrLogNotFound]."""


class TransportError(RaftError):
    """A message could not be sent, or a peer sent something unusable."""
