"""The sans-IO Raft core: pure and synchronous. Imports no Trio, no
transport and no store implementation (a test enforces this)."""

from ._raft import CoreOptions, RaftCore, Role
from ._ready import Completion, Envelope, Failure, HardState, Ready

__all__ = ["Completion", "CoreOptions", "Envelope", "Failure", "HardState", "RaftCore",
           "Ready", "Role"]
