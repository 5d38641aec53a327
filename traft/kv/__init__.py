"""The built-in replicated key-value state machine (``traft.kv``)."""

from ._fsm import KVCommand as KVCommand, KVStateMachine as KVStateMachine

__all__ = ["KVCommand", "KVStateMachine"]
