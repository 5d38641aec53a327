"""A synchronous, in-test network of RaftCores (etcd's ``network`` in
raft_test.go): no Trio, no clock but ``self.now``, every message visible."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from traft._core import Completion, CoreOptions, Envelope, RaftCore, Ready, Role
from traft._messages import Message
from traft._types import Configuration, Log, LogType, Server

OPTIONS = CoreOptions(heartbeat_timeout=1.0, election_timeout=1.0, commit_timeout=0.05,
                      leader_lease_timeout=0.5, max_append_entries=64, prevote=True)


def configuration(ids: Iterable[str]) -> Configuration:
    return Configuration(tuple(Server(i, i) for i in ids))


def new_core(id: str, *, options: CoreOptions = OPTIONS, seed: int = 0, now: float = 0.0,
             **kw: object) -> RaftCore:
    return RaftCore(id, id, options=options, rng=random.Random(f"{seed}-{id}"), now=now,
                    **kw)  # type: ignore[arg-type]


class CoreNetwork:
    def __init__(self, ids: Iterable[str], *, options: CoreOptions = OPTIONS, seed: int = 0,
                 bootstrap: bool = True) -> None:
        self.ids = list(ids)
        self.now = 0.0
        self.options = options
        self.cores = {i: new_core(i, options=options, seed=seed) for i in self.ids}
        self.in_flight: list[Envelope] = []
        self.applied: dict[str, list[Log]] = {i: [] for i in self.ids}
        self.completions: dict[str, list[Completion]] = {i: [] for i in self.ids}
        self.cut: set[tuple[str, str]] = set()
        self.drop: Callable[[Message], bool] | None = None
        self.sent: list[Message] = []
        if bootstrap:
            cfg = configuration(self.ids)
            for c in self.cores.values():
                c.bootstrap(cfg)
        self.process_all()

    # -- faults
    def isolate(self, id: str) -> None:
        for other in self.ids:
            if other != id:
                self.cut.add((id, other))
                self.cut.add((other, id))

    def partition(self, *groups: Iterable[str]) -> None:
        sets = [set(g) for g in groups]
        for a in sets:
            for b in sets:
                if a is not b:
                    for x in a:
                        for y in b:
                            self.cut.add((x, y))

    def heal(self) -> None:
        self.cut.clear()

    # -- driving
    def process(self, id: str) -> Ready | None:
        core = self.cores[id]
        if not core.has_ready():
            return None
        rd = core.ready()
        for env in rd.messages:
            self.in_flight.append(env)
            self.sent.append(env.message)
        self.applied[id].extend(rd.committed)
        self.completions[id].extend(rd.completions)
        core.advance(rd)
        return rd

    def process_all(self) -> None:
        progress = True
        while progress:
            progress = False
            for i in self.ids:
                if self.process(i) is not None:
                    progress = True

    def deliver_all(self) -> int:
        """Deliver everything in flight (and what it provokes) until quiet."""
        count = 0
        self.process_all()
        while self.in_flight:
            batch, self.in_flight = self.in_flight, []
            for env in batch:
                m = env.message
                if (m.src, m.dst) in self.cut or m.dst not in self.cores:
                    continue
                if self.drop is not None and self.drop(m):
                    continue
                self.cores[m.dst].step(m, self.now)
                count += 1
            self.process_all()
        return count

    def tick(self, dt: float) -> None:
        self.now += dt
        for c in self.cores.values():
            c.tick(self.now)
        self.process_all()

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Advance time in small steps, delivering everything each step."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.tick(step)
            self.deliver_all()

    def leaders(self) -> list[str]:
        return [i for i, c in self.cores.items() if c.role is Role.LEADER]

    def leader(self) -> RaftCore:
        ls = self.leaders()
        assert len(ls) == 1, f"expected one leader, got {ls}"
        return self.cores[ls[0]]

    def elect(self, id: str) -> None:
        self.cores[id].campaign(self.now)
        self.process_all()
        self.deliver_all()
        assert self.cores[id].role is Role.LEADER, self.cores[id].role

    def propose(self, id: str, *datas: bytes) -> list[Log]:
        entries = self.cores[id].propose([(LogType.COMMAND, d, b"") for d in datas])
        self.process_all()
        return entries

    def commands(self, id: str) -> list[bytes]:
        return [e.data for e in self.applied[id] if e.type is LogType.COMMAND]
