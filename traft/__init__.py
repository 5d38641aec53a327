"""traft: Raft consensus for Trio applications.

A structured-concurrency redesign of hashicorp/raft: a sans-IO protocol core
(``traft._core``) driven by one state-loop task, with the FSM applier and
per-peer replicators as sibling tasks in the node's nursery.
"""

from ._config import Config as Config
from ._errors import (
    CantBootstrapError as CantBootstrapError,
    ConfigurationChangeError as ConfigurationChangeError,
    LeadershipLostError as LeadershipLostError,
    LeadershipTransferInProgressError as LeadershipTransferInProgressError,
    LogNotFoundError as LogNotFoundError,
    NothingNewToSnapshotError as NothingNewToSnapshotError,
    NotLeaderError as NotLeaderError,
    RaftError as RaftError,
    RaftShutdownError as RaftShutdownError,
    TransportError as TransportError,
)
from ._file_snapshot_store import (
    CorruptSnapshotError as CorruptSnapshotError,
    FileSnapshotStore as FileSnapshotStore,
)
from ._fsm import FSM as FSM, BatchingFSM as BatchingFSM, FSMSnapshot as FSMSnapshot
from ._inmem_network import InmemNetwork as InmemNetwork
from ._inmem_store import InmemStore as InmemStore
from ._messages import (
    AppendEntries as AppendEntries,
    AppendEntriesResponse as AppendEntriesResponse,
    Heartbeat as Heartbeat,
    HeartbeatResponse as HeartbeatResponse,
    InstallSnapshot as InstallSnapshot,
    InstallSnapshotResponse as InstallSnapshotResponse,
    Message as Message,
    ReadIndexRequest as ReadIndexRequest,
    ReadIndexResponse as ReadIndexResponse,
    RequestVote as RequestVote,
    RequestVoteResponse as RequestVoteResponse,
    TimeoutNow as TimeoutNow,
)
from ._node import Raft as Raft, open_raft as open_raft
from ._observations import (
    FailedHeartbeatObservation as FailedHeartbeatObservation,
    LeaderObservation as LeaderObservation,
    Observation as Observation,
    PeerObservation as PeerObservation,
    RequestVoteObservation as RequestVoteObservation,
    ResumedHeartbeatObservation as ResumedHeartbeatObservation,
    StateObservation as StateObservation,
)
from ._snapshot_stores import (
    DiscardSnapshotStore as DiscardSnapshotStore,
    InmemSnapshotStore as InmemSnapshotStore,
)
from ._sqlite_store import (
    CorruptLogError as CorruptLogError,
    CorruptStoreError as CorruptStoreError,
    SQLiteStore as SQLiteStore,
    StoreError as StoreError,
)
from ._storage import (
    LogStore as LogStore,
    SnapshotSink as SnapshotSink,
    SnapshotStore as SnapshotStore,
    StableStore as StableStore,
)
from ._transport import Transport as Transport
from ._codec import RemoteProtocolError as RemoteProtocolError
from ._websocket_transport import (
    WebSocketTransport as WebSocketTransport,
    open_websocket_transport as open_websocket_transport,
)
from ._types import (
    Applied as Applied,
    Configuration as Configuration,
    Log as Log,
    LogType as LogType,
    RaftState as RaftState,
    Server as Server,
    ServerAddress as ServerAddress,
    ServerID as ServerID,
    SnapshotMeta as SnapshotMeta,
    Suffrage as Suffrage,
)

__version__ = "0.1.0"

# A library logs; the application decides where (no "No handlers" output).
import logging as _logging

_logging.getLogger("traft").addHandler(_logging.NullHandler())

__all__ = [
    "AppendEntries", "AppendEntriesResponse", "Applied", "BatchingFSM", "CantBootstrapError",
    "Config", "Configuration", "ConfigurationChangeError", "DiscardSnapshotStore", "FSM",
    "FSMSnapshot", "FailedHeartbeatObservation", "Heartbeat", "HeartbeatResponse",
    "InmemNetwork", "InmemSnapshotStore", "InmemStore", "InstallSnapshot",
    "InstallSnapshotResponse", "LeaderObservation", "LeadershipLostError",
    "LeadershipTransferInProgressError", "Log", "LogNotFoundError", "LogStore", "LogType",
    "Message", "NotLeaderError", "NothingNewToSnapshotError", "Observation",
    "PeerObservation", "Raft", "RaftError", "RaftShutdownError", "RaftState",
    "ReadIndexRequest", "ReadIndexResponse", "RequestVote", "RequestVoteObservation",
    "RequestVoteResponse", "ResumedHeartbeatObservation", "Server", "ServerAddress",
    "ServerID", "SnapshotMeta", "SnapshotSink", "SnapshotStore", "StableStore",
    "StateObservation", "Suffrage", "TimeoutNow", "Transport", "TransportError",
    "open_raft",
    # durable storage
    "CorruptLogError", "CorruptSnapshotError", "CorruptStoreError", "FileSnapshotStore",
    "SQLiteStore", "StoreError",
    # WebSocket transport
    "RemoteProtocolError", "WebSocketTransport", "open_websocket_transport",
]
