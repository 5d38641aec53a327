"""Helpers for testing code that uses traft (like ``trio.testing``):
an in-memory cluster on ``InmemNetwork`` that runs under
``trio.testing.MockClock(autojump_threshold=0)``."""

from ._cluster import Cluster as Cluster, RecordingFSM as RecordingFSM, open_cluster as open_cluster

__all__ = ["Cluster", "RecordingFSM", "open_cluster"]
