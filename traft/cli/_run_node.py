"""``traft node``: one server of a key-value cluster.

::

    run_node
    ├── signal watcher       SIGINT/SIGTERM -> stop (a second one: stop now)
    └── the node
        ├── data dir lock, node-id check
        ├── SQLiteStore(DIR/raft.db), FileSnapshotStore(DIR/snapshots)
        └── open_websocket_transport(client_handler=KVService.handle)
            └── open_raft
                ├── bootstrap (first start only) / join (until added)
                ├── leader-change logger, parent watcher (traft local)
                └── wait for stop: refuse new client requests, answer those
                    in flight, then leave open_raft, the transport, the store
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .._config import Config
from .._errors import CantBootstrapError, TransportError
from .._file_snapshot_store import FileSnapshotStore
from .._groups import collapse
from .._node import Raft, open_raft
from .._observations import LeaderObservation, Observation
from .._sqlite_store import SQLiteStore
from .._types import Configuration, RaftState
from .._websocket_transport import open_websocket_transport, parse_address
from ..kv import Client, ClientError, KVService, KVStateMachine
from ..kv._client import BAD_REQUEST, FAILED, UNAUTHORIZED
from ._common import (
    CliError,
    client_ssl_context,
    lock_directory,
    make_directory,
    read_token,
    server_ssl_context,
    watch_parent,
)

logger = logging.getLogger("traft.cli.node")

DRAIN_TIMEOUT = 5.0  # most a stopping node waits for client requests in flight
NODE_ID_FILE = "node-id"
LOCK_FILE = "node.lock"


@dataclass
class NodeOptions:
    id: str
    listen: str
    data: Path
    bootstrap: Configuration | None = None
    join: str | None = None
    advertise: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    auth_token_file: str | None = None
    raft: dict[str, Any] = field(default_factory=dict)
    parent_pid: int | None = None


class _Stop:
    """Why and when the node should stop; set once."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reason = ""

    def __call__(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()


def run_node(options: NodeOptions) -> None:
    """Run the node until SIGINT/SIGTERM; raises CliError (or a library
    error) for the CLI's one-line message."""
    trio.run(_main, options)


async def _main(options: NodeOptions) -> None:
    stop = _Stop()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_signals, signals, stop, nursery.cancel_scope)
                await _serve(options, stop)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise collapse(group) from None


async def _watch_signals(signals: Any, stop: _Stop, scope: trio.CancelScope) -> None:
    """The first SIGINT/SIGTERM stops the node cleanly; the same signal
    again (a second Ctrl-C) stops it at once."""
    first: int | None = None
    async for signum in signals:
        name = signal.Signals(signum).name
        if first is None:
            first = signum
            logger.info("received %s; shutting down", name)
            stop(name)
        elif signum == first:
            logger.warning("received %s again; stopping at once", name)
            scope.cancel()


def _check_node_id(data: Path, id: str) -> bool:
    """Refuse a data directory that belongs to another node; whether the
    directory has its node id recorded yet."""
    path = data / NODE_ID_FILE
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if existing != id:
        raise CliError(f"data directory {data} belongs to node {existing!r}, not {id!r}")
    return True


def _record_node_id(data: Path, id: str) -> None:
    """Written once the node has started, so a failed first start (a port in
    use, a typo) does not claim the directory."""
    path = data / NODE_ID_FILE
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(id + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None


async def _serve(options: NodeOptions, stop: _Stop) -> None:
    data = options.data
    make_directory(data)
    lock_fd = lock_directory(data, LOCK_FILE, "traft node")
    try:
        recorded = _check_node_id(data, options.id)
        await _serve_locked(options, stop, recorded)
    finally:
        os.close(lock_fd)


async def _serve_locked(options: NodeOptions, stop: _Stop, recorded: bool) -> None:
    token = read_token(options.auth_token_file)
    server_ctx = server_ssl_context(options.tls_cert, options.tls_key, options.tls_ca)
    client_ctx = (client_ssl_context(options.tls_cert, options.tls_key, options.tls_ca)
                  if server_ctx is not None else None)
    host, port = parse_address(options.listen)
    assert port is not None
    if options.advertise is None and host in ("0.0.0.0", "::", ""):
        raise CliError(f"--listen {options.listen} is a wildcard address: also pass "
                       f"--advertise HOST[:PORT], the address other servers and clients "
                       f"use to reach this one")
    try:
        config = dataclasses.replace(Config(local_id=options.id), **options.raft)
        config.validate()
    except (TypeError, ValueError) as exc:
        raise CliError(f"bad raft setting: {exc}") from None
    fsm = KVStateMachine()
    service = KVService(fsm)
    data = options.data
    async with SQLiteStore(data / "raft.db") as store:
        snapshots = FileSnapshotStore(data)
        async with open_websocket_transport(
                host, port, advertise=options.advertise, ssl_context=server_ctx,
                client_ssl_context=client_ctx, auth_token=token,
                client_handler=service.handle) as transport:
            async with open_raft(config, fsm, store, store, snapshots, transport) as raft:
                service.attach(raft)
                if not recorded:
                    _record_node_id(data, options.id)
                address = transport.local_address
                logger.info("node %s serving on %s (data %s, term %d, last index %d)",
                            options.id, address, data, raft.current_term, raft.last_index)
                await _bootstrap(raft, options)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_log_leaders, raft)
                    if options.parent_pid is not None:
                        nursery.start_soon(watch_parent, options.parent_pid, stop)
                    if options.join is not None:
                        nursery.start_soon(_join, raft, options, address, token, client_ctx,
                                           stop)
                    await _wait(raft, stop)
                    nursery.cancel_scope.cancel()
                # Clean shutdown: refuse new client requests, answer those in
                # flight (bounded), then leave open_raft and close the store.
                service.close()
                with trio.move_on_after(DRAIN_TIMEOUT):
                    await service.drain()
                if service.in_flight:
                    logger.warning("%d client requests still in flight after %gs; "
                                   "stopping anyway", service.in_flight, DRAIN_TIMEOUT)
    logger.info("node %s stopped (%s)", options.id, stop.reason or "shut down")


async def _wait(raft: Raft, stop: _Stop) -> None:
    """Until asked to stop, or the node shut itself down (removed leader)."""
    was_member = any(s.id == raft.config.local_id for s in raft.get_configuration().servers)
    while not stop.event.is_set():
        with trio.move_on_after(0.25):
            await stop.event.wait()
        if raft.state is RaftState.SHUTDOWN and not stop.event.is_set():
            stop("the raft node shut down (removed from the cluster?)")
        member = any(s.id == raft.config.local_id for s in raft.get_configuration().servers)
        if was_member and not member and not stop.event.is_set():
            logger.info("%s is no longer in the cluster's configuration", raft.config.local_id)
        was_member = member


async def _bootstrap(raft: Raft, options: NodeOptions) -> None:
    configuration = options.bootstrap
    if configuration is None:
        return
    ids = [s.id for s in configuration.servers]
    if options.id not in ids:
        raise CliError(f"--bootstrap does not include this node's id {options.id!r} "
                       f"(it lists {', '.join(ids)})")
    if raft.last_index > 0 or raft.get_configuration().servers:
        logger.info("store already has state; --bootstrap ignored")
        return
    try:
        await raft.bootstrap_cluster(configuration)
    except CantBootstrapError:
        logger.info("store already has state; --bootstrap ignored")
        return
    logger.info("bootstrapped a cluster of %d: %s", len(ids),
                ",".join(f"{s.id}={s.address}" for s in configuration.servers))


async def _join(raft: Raft, options: NodeOptions, address: str, token: str | None,
                ssl_context: ssl.SSLContext | None, stop: _Stop) -> None:
    """Ask ``--join``'s server (following redirects to the leader) to add
    this node as a voter; retried with back-off until it is done."""
    if any(s.id == options.id for s in raft.get_configuration().servers):
        logger.info("already a member of the cluster; --join not needed")
        return
    assert options.join is not None
    rng = random.Random()
    delay = 0.2
    timeout = max(10.0, 10 * raft.config.election_timeout)
    while True:
        try:
            async with Client([options.join], auth_token=token, ssl_context=ssl_context,
                              timeout=timeout, rng=rng) as client:
                index = await client.join(options.id, address)
            logger.info("joined the cluster via %s (configuration index %d)", options.join,
                        index)
            return
        except ClientError as exc:
            if exc.code in (UNAUTHORIZED, BAD_REQUEST, FAILED):
                raise CliError(f"cannot join the cluster via {options.join}: {exc}") from None
            logger.warning("join via %s failed: %s; retrying", options.join, exc)
        except TransportError as exc:
            logger.warning("join via %s failed: %s; retrying", options.join, exc)
        await trio.sleep(delay * (0.5 + rng.random() / 2))
        delay = min(5.0, delay * 2)


async def _log_leaders(raft: Raft) -> None:
    def is_leader(o: Observation) -> bool:
        return isinstance(o, LeaderObservation)

    with raft.observe(is_leader) as observations:
        async for observation in observations:
            assert isinstance(observation, LeaderObservation)
            if observation.leader_id is None:
                logger.info("no leader (term %d)", raft.current_term)
            else:
                logger.info("leader is %s at %s (term %d)", observation.leader_id,
                            observation.leader_address, raft.current_term)
