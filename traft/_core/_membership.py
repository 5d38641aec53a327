"""Configurations carried in the log (hashicorp ``configurations`` with
``latest``/``committed``): the latest configuration takes effect as soon as
its entry is appended (§4.1 of the Raft thesis), and truncating an
uncommitted configuration entry rolls it back."""

from __future__ import annotations

import enum

import cbor2

from .._types import Configuration, Server, Suffrage


def encode_configuration(configuration: Configuration) -> bytes:
    return cbor2.dumps([[s.id, s.address, s.suffrage.value] for s in configuration.servers])


def decode_configuration(data: bytes) -> Configuration:
    try:
        raw = cbor2.loads(data)
        servers = tuple(Server(str(i), str(a), Suffrage(s)) for i, a, s in raw)
    except Exception as exc:
        raise ValueError(f"malformed configuration entry: {exc}") from exc
    return Configuration(servers)


def check_configuration(configuration: Configuration) -> None:
    """hashicorp ``checkConfiguration``: unique ids and addresses, at least one voter."""
    ids: set[str] = set()
    addresses: set[str] = set()
    for s in configuration.servers:
        if not s.id:
            raise ValueError("empty server id in configuration")
        if not s.address:
            raise ValueError(f"empty address for server {s.id!r}")
        if s.id in ids:
            raise ValueError(f"duplicate server id {s.id!r}")
        if s.address in addresses:
            raise ValueError(f"duplicate server address {s.address!r}")
        ids.add(s.id)
        addresses.add(s.address)
    if not configuration.voters:
        raise ValueError("configuration needs at least one voter")


class Membership:
    """Configuration history within the in-memory log."""

    def __init__(self, base_index: int = 0, base: Configuration = Configuration()) -> None:
        # (index, configuration), ascending; the first is the snapshot's.
        self._history: list[tuple[int, Configuration]] = [(base_index, base)]

    @property
    def latest(self) -> Configuration:
        return self._history[-1][1]

    @property
    def latest_index(self) -> int:
        return self._history[-1][0]

    def committed(self, commit_index: int) -> tuple[int, Configuration]:
        for index, cfg in reversed(self._history):
            if index <= commit_index:
                return index, cfg
        return self._history[0]

    def appended(self, index: int, configuration: Configuration) -> None:
        self._history.append((index, configuration))

    def truncated(self, from_index: int) -> None:
        while len(self._history) > 1 and self._history[-1][0] >= from_index:
            self._history.pop()

    def compacted(self, base_index: int, base: Configuration) -> None:
        keep = [(i, c) for i, c in self._history if i > base_index]
        self._history = [(base_index, base), *keep]


class ChangeKind(enum.Enum):
    ADD_VOTER = "add_voter"
    ADD_NONVOTER = "add_nonvoter"
    DEMOTE_VOTER = "demote_voter"
    REMOVE_SERVER = "remove_server"
    PROMOTE = "promote"  # internal: a caught-up nonvoter becomes a voter


def next_configuration(current: Configuration, kind: ChangeKind, id: str,
                       address: str | None) -> Configuration:
    """hashicorp ``nextConfiguration``: the configuration after one change.
    Adding an existing voter, or removing an unknown server, yields the same
    servers (the change is still logged, as in hashicorp)."""
    servers = list(current.servers)
    at = next((i for i, s in enumerate(servers) if s.id == id), None)
    if kind in (ChangeKind.ADD_VOTER, ChangeKind.PROMOTE):
        if at is None:
            if address is None:
                raise ValueError(f"server {id!r} needs an address")
            servers.append(Server(id, address, Suffrage.VOTER))
        else:
            servers[at] = Server(id, address or servers[at].address, Suffrage.VOTER)
    elif kind is ChangeKind.ADD_NONVOTER:
        if at is None:
            if address is None:
                raise ValueError(f"server {id!r} needs an address")
            servers.append(Server(id, address, Suffrage.NONVOTER))
        else:
            # An existing voter stays a voter; only the address may change.
            servers[at] = Server(id, address or servers[at].address, servers[at].suffrage)
    elif kind is ChangeKind.DEMOTE_VOTER:
        if at is not None:
            servers[at] = Server(id, servers[at].address, Suffrage.NONVOTER)
    elif kind is ChangeKind.REMOVE_SERVER:
        if at is not None:
            del servers[at]
    return Configuration(tuple(servers))
