"""The built-in replicated key-value state machine (``traft.kv``), the server
side of the client protocol (``KVService``) and its async Trio client
(``Client``)."""

from ._client import Client as Client, ClientError as ClientError
from ._fsm import KVCommand as KVCommand, KVStateMachine as KVStateMachine
from ._service import KVService as KVService

__all__ = ["Client", "ClientError", "KVCommand", "KVService", "KVStateMachine"]
