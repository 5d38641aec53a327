"""Fan-out of observations to registered observers (hashicorp ``observer.go``).

Each observer gets a bounded channel; a full one drops the observation and
counts it. The node never waits on an observer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import trio

from ._observations import Observation

logger = logging.getLogger("traft.observer")

OBSERVER_BUFFER = 64


class _Observer:
    __slots__ = ("send", "filter", "dropped")

    def __init__(self, send: trio.MemorySendChannel[Observation],
                 filter: Callable[[Observation], bool] | None) -> None:
        self.send = send
        self.filter = filter
        self.dropped = 0


class ObserverRegistry:
    def __init__(self) -> None:
        self._observers: list[_Observer] = []
        self.dropped = 0
        self.delivered = 0

    @contextlib.contextmanager
    def observe(self, filter: Callable[[Observation], bool] | None = None,
                ) -> Iterator[trio.MemoryReceiveChannel[Observation]]:
        send, receive = trio.open_memory_channel[Observation](OBSERVER_BUFFER)
        obs = _Observer(send, filter)
        self._observers.append(obs)
        try:
            with receive:
                yield receive
        finally:
            self._observers.remove(obs)
            send.close()

    def publish(self, observation: Observation) -> None:
        for obs in list(self._observers):
            if obs.filter is not None:
                try:
                    if not obs.filter(observation):
                        continue
                except Exception:
                    logger.exception("observer filter raised; observation skipped")
                    continue
            try:
                obs.send.send_nowait(observation)
                self.delivered += 1
            except trio.WouldBlock:
                obs.dropped += 1
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def close(self) -> None:
        for obs in self._observers:
            obs.send.close()
