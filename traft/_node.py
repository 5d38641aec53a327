"""The Raft node: ``open_raft`` and the ``Raft`` facade, and the state loop
that drives the sans-IO core (etcd ``node.go`` over ``RawNode``).

Task tree, all inside one nursery owned by ``open_raft``::

    open_raft
    └── node nursery (cancelled by shutdown)
        ├── state loop      the only owner of RaftCore; reads the inbox
        ├── receiver        transport.receive() -> inbox
        ├── applier         committed entries -> FSM (lossless channel)
        ├── outbox senders  one PeerSender per address (votes, responses)
        └── leadership      only while leader; its cancel scope is stopCh
            └── replicator per peer (appends + heartbeats)

Trio has no ``select``, so hashicorp's dozen channels become one inbox of
tagged events, and the core's timers become the state loop's deadline.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import cbor2
import trio

from ._blocking import run_blocking

from ._applier import Applier, Restore
from ._config import Config
from ._core import CoreOptions, Failure, RaftCore, Ready, Role
from ._core._membership import ChangeKind
from ._errors import (
    ConfigurationChangeError,
    LeadershipLostError,
    NotLeaderError,
    RaftError,
    RaftShutdownError,
)
from ._groups import collapse
from ._messages import (
    AppendEntries,
    Heartbeat,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    TimeoutNow,
)
from ._observations import Observation
from ._observer import ObserverRegistry
from ._replicator import PeerSender, Replicator
from ._storage import LogStore, SnapshotStore, StableStore
from ._transport import Transport
from ._snapshot_transfer import WINDOW, SnapshotReceiver, response_header, stream_snapshot
from ._snapshotter import Snapshotter
from ._types import (
    Applied,
    Configuration,
    Log,
    LogType,
    RaftState,
    ServerAddress,
    ServerID,
    SnapshotMeta,
)
from ._waiters import Future

logger = logging.getLogger("traft.node")

INBOX_SIZE = 1024
OUTBOX_SIZE = 256
# Most events the state loop takes in before it persists and sends: keeps
# one cycle's latency bounded while still batching what arrived together.
MAX_EVENTS_PER_CYCLE = 512

HARD_STATE_KEY = b"HardState"

# ----------------------------------------------------------------------
# Inbox events


@dataclass(frozen=True, slots=True)
class _Received:
    message: Message


@dataclass(frozen=True, slots=True)
class _Propose:
    kind: LogType
    data: bytes
    extensions: bytes
    future: Future[Applied]


@dataclass(frozen=True, slots=True)
class _Request:
    """verify_leader / read_index: answered by a core Completion."""

    read: bool
    future: Future[int]


@dataclass(frozen=True, slots=True)
class _Bootstrap:
    configuration: Configuration
    future: Future[None]


@dataclass(frozen=True, slots=True)
class _SnapshotSent:
    peer: ServerID
    index: int | None  # None: the transfer failed


@dataclass(frozen=True, slots=True)
class _SnapshotTaken:
    index: int
    term: int
    future: Future[None]  # resolved once the log is compacted


@dataclass(frozen=True, slots=True)
class _UserRestore:
    meta: SnapshotMeta
    source: BinaryIO
    future: Future[None]


@dataclass(frozen=True, slots=True)
class _ConfigChange:
    kind: ChangeKind
    id: ServerID
    address: ServerAddress | None
    prev_index: int
    future: Future[int]


@dataclass(frozen=True, slots=True)
class _Transfer:
    id: ServerID | None
    address: ServerAddress | None
    future: Future[int]


_Event = (_Received | _Propose | _Request | _Bootstrap | _SnapshotSent | _SnapshotTaken
          | _UserRestore | _ConfigChange | _Transfer)


def _encode_hard_state(term: int, voted_for: ServerID | None) -> bytes:
    return cbor2.dumps([term, voted_for])


def _decode_hard_state(raw: bytes | None) -> tuple[int, ServerID | None]:
    if raw is None:
        return 0, None
    try:
        term, voted_for = cbor2.loads(raw)
        if not isinstance(term, int) or term < 0 or not (voted_for is None
                                                         or isinstance(voted_for, str)):
            raise ValueError("bad types")
    except Exception as exc:
        raise RaftError(f"stable store holds an unreadable hard state: {exc}") from exc
    return term, voted_for


def _failure_error(failure: Failure | None, leader_id: ServerID | None,
                   leader_address: ServerAddress | None) -> RaftError:
    if failure is Failure.LEADERSHIP_LOST:
        return LeadershipLostError("leadership lost before the request completed")
    if failure is Failure.TRANSFER_TIMED_OUT:
        return RaftError("leadership transfer did not complete within election_timeout")
    return NotLeaderError(leader_id, leader_address)


class Raft:
    """A Raft node. Create it with :func:`open_raft`."""

    def __init__(self, config: Config, fsm: Any, log_store: LogStore,
                 stable_store: StableStore, snapshot_store: SnapshotStore,
                 transport: Transport) -> None:
        self.config = config
        self.fsm = fsm
        self.log_store = log_store
        self.stable_store = stable_store
        self.snapshot_store = snapshot_store
        self.transport = transport
        self._rng = config.rng if config.rng is not None else random.Random()
        self._core: RaftCore  # set by _load
        self._applier: Applier
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[_Event](INBOX_SIZE)
        self._observers = ObserverRegistry()
        self._requests: dict[int, Future[int]] = {}
        self._request_ids = itertools.count(1)
        self._after_persist: list[Future[None]] = []
        self._after_compact: list[Future[None]] = []
        self._outbox: dict[ServerAddress, PeerSender] = {}
        self._replicators: dict[ServerID, Replicator] = {}
        self._leader_term: int | None = None
        self._leader_scope: trio.CancelScope | None = None
        self._leader_nursery: trio.Nursery | None = None
        self._nursery: trio.Nursery | None = None
        self._shutdown = False
        self._stopped = trio.Event()
        self._fatal: BaseException | None = None
        self._last_snapshot_index = 0
        self._last_snapshot_term = 0
        # Test-only: called with (raft, ready) once a Ready is durable, before
        # its messages go out. traft.testing uses it to check invariants.
        self._ready_hook: Callable[[Raft, Ready], None] | None = None
        self._receiver = SnapshotReceiver(snapshot_store)
        self._snapshotter: Snapshotter

    # ------------------------------------------------------------------
    # Start-up

    async def _load(self) -> None:
        """Recover term, vote, snapshot and log (hashicorp NewRaft)."""
        term, voted_for = _decode_hard_state(await self.stable_store.get(HARD_STATE_KEY))
        snap_index = snap_term = snap_cfg_index = 0
        snap_cfg = Configuration()
        snapshots = await self.snapshot_store.list()
        if snapshots:
            meta = snapshots[0]
            snap_index, snap_term = meta.index, meta.term
            snap_cfg, snap_cfg_index = meta.configuration, meta.configuration_index
            if not self.config.no_snapshot_restore_on_start:
                _, source = await self.snapshot_store.open(meta.id)
                try:
                    await run_blocking(self.fsm.restore, source)
                finally:
                    source.close()
                logger.info("%s restored snapshot %s at index %d", self.config.local_id,
                            meta.id, meta.index)
            self._last_snapshot_index, self._last_snapshot_term = snap_index, snap_term
        # hashicorp: the snapshot's index counts as applied even when the
        # FSM recovers by other means (no_snapshot_restore_on_start).
        applied = snap_index
        first = await self.log_store.first_index()
        last = await self.log_store.last_index()
        entries: list[Log] = []
        base_index, base_term = snap_index, snap_term
        if last > snap_index:
            if first > snap_index + 1:
                raise RaftError(f"log store starts at {first} but the newest snapshot "
                                f"ends at {snap_index}: entries are missing")
        if last > 0 and first > 0:
            if first <= snap_index:
                # Trailing entries before the snapshot stay in memory so
                # followers just behind need no snapshot; the first one is
                # the base (only its term is needed).
                base = await self.log_store.get_log(first)
                base_index, base_term = base.index, base.term
                start = first + 1
            else:
                start = first
            for index in range(start, last + 1):
                entries.append(await self.log_store.get_log(index))
        self._core = RaftCore(
            self.config.local_id, self.transport.local_address,
            options=CoreOptions(
                heartbeat_timeout=self.config.heartbeat_timeout,
                election_timeout=self.config.election_timeout,
                commit_timeout=self.config.commit_timeout,
                leader_lease_timeout=self.config.leader_lease_timeout,
                max_append_entries=self.config.max_append_entries,
                prevote=self.config.prevote,
            ),
            rng=self._rng, now=trio.current_time(), term=term, voted_for=voted_for,
            entries=entries, snapshot_index=snap_index, snapshot_term=snap_term,
            snapshot_configuration=snap_cfg, snapshot_configuration_index=snap_cfg_index,
            log_base_index=base_index, log_base_term=base_term,
        )
        self._applier = Applier(self.fsm, self.config.local_id, applied_index=applied,
                                applied_term=snap_term)
        self._core.report_applied(applied)
        self._snapshotter = Snapshotter(self)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                   ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._guard, self._state_loop)
                nursery.start_soon(self._guard, self._receive_loop)
                nursery.start_soon(self._guard, self._applier.run)
                nursery.start_soon(self._guard, self._snapshotter.run)
                task_status.started()
        finally:
            self._mark_shutdown()
            self._stopped.set()

    async def _guard(self, fn: Callable[[], Any]) -> None:
        """Run an internal task; a crash shuts the node down instead of
        escaping as an ExceptionGroup into the user's code."""
        try:
            await fn()
        except Exception as exc:
            if self._fatal is None:
                self._fatal = exc
            logger.exception("%s internal task %s failed; shutting down",
                             self.config.local_id, getattr(fn, "__name__", fn))
            self._mark_shutdown()
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------
    # The state loop

    async def _state_loop(self) -> None:
        core = self._core
        while True:
            deadline = core.next_deadline()
            events: list[_Event] = []
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                events.append(await self._inbox_recv.receive())
            # Group commit: take what else has already arrived, so applies
            # that came together share one store_logs and one replication round.
            proposals = sum(isinstance(e, _Propose) for e in events)
            while len(events) < MAX_EVENTS_PER_CYCLE and proposals < self.config.max_append_entries:
                try:
                    event = self._inbox_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                events.append(event)
                proposals += isinstance(event, _Propose)
            now = trio.current_time()
            core.report_applied(self._applier.applied_index)
            restores = [e for e in events if isinstance(e, _UserRestore)]
            self._handle_events([e for e in events if not isinstance(e, _UserRestore)], now)
            for restore in restores:
                while core.has_ready():
                    await self._handle_ready(core.ready())
                await self._user_restore(restore)
            core.tick(trio.current_time())
            while core.has_ready():
                await self._handle_ready(core.ready())
            for done in self._after_compact:
                done.set_result(None)
            self._after_compact.clear()
            if core.removed_self and self.config.shutdown_on_remove and not self._shutdown:
                assert self._nursery is not None
                self._nursery.start_soon(self._shutdown_after_removal)
                core.removed_self = False

    def _handle_events(self, events: list[_Event], now: float) -> None:
        core = self._core
        proposals: list[_Propose] = []
        for event in events:
            if isinstance(event, _Received):
                message = event.message
                if isinstance(message, InstallSnapshotResponse):
                    rep = self._replicators.get(message.src)
                    if rep is not None and rep.snapshot_acks is not None:
                        try:
                            rep.snapshot_acks.send_nowait(message)
                        except (trio.WouldBlock, trio.BrokenResourceError):
                            pass
                core.step(message, now)
            elif isinstance(event, _SnapshotSent):
                rep = self._replicators.get(event.peer)
                if rep is not None:
                    rep.streaming = False
                core.report_snapshot(event.peer, event.index is not None, event.index or 0)
            elif isinstance(event, (_ConfigChange, _Transfer)):
                rid = next(self._request_ids)
                try:
                    if isinstance(event, _ConfigChange):
                        core.change_configuration(rid, event.kind, event.id, event.address,
                                                  event.prev_index)
                    else:
                        core.transfer_leadership(rid, event.id, event.address, now)
                except RaftError as exc:
                    event.future.set_exception(exc)
                except ValueError as exc:
                    event.future.set_exception(ConfigurationChangeError(str(exc)))
                else:
                    self._requests[rid] = event.future
            elif isinstance(event, _SnapshotTaken):
                core.snapshot_taken(event.index, event.term, self.config.trailing_logs)
                self._after_compact.append(event.future)
            elif isinstance(event, _Propose):
                proposals.append(event)
            elif isinstance(event, _Request):
                rid = next(self._request_ids)
                self._requests[rid] = event.future
                if event.read:
                    core.read_index(rid, now)
                else:
                    core.verify_leader(rid, now)
            elif isinstance(event, _Bootstrap):
                try:
                    core.bootstrap(event.configuration)
                except (RaftError, ValueError) as exc:
                    event.future.set_exception(exc)
                else:
                    self._after_persist.append(event.future)
        if proposals:
            self._propose(proposals)

    def _propose(self, proposals: list[_Propose]) -> None:
        try:
            entries = self._core.propose(
                [(p.kind, p.data, p.extensions) for p in proposals],
                appended_at=time.time())  # appended_at is wall clock by contract
        except RaftError as exc:
            for p in proposals:
                p.future.set_exception(type(exc)(*exc.args) if not isinstance(
                    exc, NotLeaderError) else NotLeaderError(exc.leader_id, exc.leader_address))
            return
        for p, e in zip(proposals, entries):
            self._applier.waiters[e.index] = (e.term, p.future)

    async def _handle_ready(self, rd: Ready) -> None:
        core = self._core
        messages = rd.messages
        if rd.hard_state is None and core.role is Role.LEADER:
            # Raft thesis §10.2.1: a leader may send its entries while it
            # writes them itself; it counts its own copy only once durable
            # (RaftCore.advance). Votes and acknowledgements still wait below.
            await self._sync_leadership()
            later = []
            for env in messages:
                if isinstance(env.message, (AppendEntries, Heartbeat)):
                    self._route(env.address, env.message)
                else:
                    later.append(env)
            messages = later
        # 1. persist: term/vote and entries are durable before anything else is sent
        if rd.hard_state is not None:
            await self.stable_store.set(
                HARD_STATE_KEY, _encode_hard_state(rd.hard_state.term, rd.hard_state.voted_for))
        if rd.delete_range is not None:
            await self.log_store.delete_range(*rd.delete_range)
        if rd.entries:
            await self.log_store.store_logs(rd.entries)
        installed: list[SnapshotMeta] = []
        for chunk in rd.install:
            ok, next_offset, meta = await self._receiver.chunk(chunk)
            self._route(chunk.src_address, InstallSnapshotResponse(
                **response_header(chunk, self.config.local_id, self.transport.local_address),
                snapshot_id=chunk.snapshot_id, success=ok, next_offset=next_offset))
            if meta is not None:
                installed.append(meta)
        for done in self._after_persist:
            done.set_result(None)
        self._after_persist.clear()
        if self._ready_hook is not None:
            self._ready_hook(self, rd)
        # Leadership follows the core's role as of this Ready, before its
        # messages are routed (a new leader's first appends need replicators).
        await self._sync_leadership()
        # 2. send
        for env in messages:
            self._route(env.address, env.message)
        # 3. apply (lossless; the back-pressure point)
        if rd.committed:
            await self._applier.send.send(rd.committed)
        # 4. completions and observations
        for c in rd.completions:
            request = self._requests.pop(c.request_id, None)
            if request is None:
                continue
            if c.failure is None and c.index is not None:
                request.set_result(c.index)
            else:
                request.set_exception(_failure_error(c.failure, c.leader_id, c.leader_address))
        for obs in rd.observations:
            self._observers.publish(obs)
        for peer, _ in rd.send_snapshot:
            self._start_snapshot_stream(peer)
        core.advance(rd)
        if rd.compact_through is not None:
            first = await self.log_store.first_index()
            if 0 < first <= rd.compact_through:
                await self.log_store.delete_range(first, rd.compact_through)
        for meta in installed:
            if core.install_snapshot(meta.index, meta.term, meta.configuration,
                                     meta.configuration_index):
                await self._applier.send.send(Restore(self.snapshot_store, meta.id,
                                                      meta.index, meta.term))
                self._last_snapshot_index, self._last_snapshot_term = meta.index, meta.term

    def _route(self, address: ServerAddress, message: Message) -> None:
        if isinstance(message, (AppendEntries, Heartbeat, TimeoutNow, InstallSnapshot)):
            replicator = self._replicators.get(message.dst)
            if replicator is not None:
                replicator.send_nowait(message)
                return
        sender = self._outbox.get(address)
        if sender is None:
            assert self._nursery is not None
            sender = PeerSender(self.transport, address, capacity=OUTBOX_SIZE,
                                send_timeout=self.config.election_timeout)
            self._outbox[address] = sender
            self._nursery.start_soon(sender.run)
        sender.send_nowait(message)

    async def _sync_leadership(self) -> None:
        core = self._core
        leading = core.role is Role.LEADER
        if self._leader_term is not None and (not leading or core.term != self._leader_term):
            self._stop_leadership()
        if leading and self._leader_term is None:
            assert self._nursery is not None
            self._leader_term = core.term
            await self._nursery.start(self._leadership)
        if leading:
            assert self._leader_nursery is not None
            for pid in [p for p in self._replicators if p not in core.progress]:
                self._replicators.pop(pid).stop()
            for pid, pr in core.progress.items():
                rep = self._replicators.get(pid)
                if rep is not None and rep.address != pr.address:
                    self._replicators.pop(pid).stop()
                    rep = None
                if rep is None:
                    rep = Replicator(self.transport, pid, pr.address,
                                     send_timeout=self.config.election_timeout)
                    self._replicators[pid] = rep
                    await self._leader_nursery.start(rep.run)

    async def _leadership(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                          ) -> None:
        with trio.CancelScope() as scope:
            self._leader_scope = scope
            async with trio.open_nursery() as nursery:
                self._leader_nursery = nursery
                task_status.started()
                await trio.sleep_forever()

    def _stop_leadership(self) -> None:
        """Stepping down: cancel all replication at once (hashicorp stopCh),
        and fail applies that may now never commit."""
        if self._leader_scope is not None:
            self._leader_scope.cancel()
        self._leader_scope = None
        self._leader_nursery = None
        self._replicators.clear()
        self._leader_term = None
        self._applier.fail_waiters_above(
            self._core.commit_index, LeadershipLostError("leadership lost while committing"))

    def _start_snapshot_stream(self, peer: ServerID) -> None:
        rep = self._replicators.get(peer)
        if rep is None or rep.nursery is None or rep.streaming:
            return
        rep.streaming = True
        send, receive = trio.open_memory_channel[InstallSnapshotResponse](2 * WINDOW)
        rep.snapshot_acks = send
        header = {"term": self._core.term, "src": self.config.local_id,
                  "src_address": self.transport.local_address, "dst": peer}

        async def stream() -> None:
            index: int | None = None
            try:
                with receive:
                    index = await stream_snapshot(
                        store=self.snapshot_store, transport=self.transport,
                        address=rep.address, acks=receive, header=header,
                        timeout=2 * self.config.election_timeout)
            except Exception as exc:
                logger.warning("%s: snapshot to %s failed: %r", self.config.local_id, peer, exc)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.config.election_timeout):
                    await self._inbox_send.send(_SnapshotSent(peer, index))

        rep.nursery.start_soon(stream)

    async def _shutdown_after_removal(self) -> None:
        # Give the hand-over TimeoutNow a moment to leave, then stop.
        await trio.sleep(self.config.heartbeat_timeout / 10)
        logger.info("%s removed from the cluster; shutting down", self.config.local_id)
        self._mark_shutdown()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _snapshot_taken(self, index: int, term: int) -> None:
        done: Future[None] = Future()
        await self._enqueue(_SnapshotTaken(index, term, done))
        await done.wait()

    async def _user_restore(self, event: _UserRestore) -> None:
        """hashicorp restoreUserSnapshot, inside the state loop: nothing else
        happens meanwhile (like hashicorp's leader loop, heartbeats pause)."""
        core = self._core
        if core.role is not Role.LEADER:
            event.future.set_exception(NotLeaderError(core.leader_id, core.leader_address))
            return
        try:
            index = max(event.meta.index, core.log.last_index) + 1
            cfg_index, cfg = core.committed_configuration()
            sink = await self.snapshot_store.create(1, index, core.term, cfg, cfg_index)
            try:
                await run_blocking(_copy_stream, event.source, sink)
            except BaseException:
                await run_blocking(sink.cancel)
                raise
            await run_blocking(sink.close)
            done: Future[None] = Future()
            await self._applier.send.send(Restore(self.snapshot_store, sink.id, index,
                                                  core.term, done))
            await done.wait()
        except Exception as exc:
            event.future.set_exception(exc)
            return
        new_index = core.restore_user_snapshot(event.meta.index)
        assert new_index == index
        self._last_snapshot_index, self._last_snapshot_term = index, core.term
        self._applier.fail_waiters_above(
            0, RaftError("the cluster's state was replaced by restore()"))
        event.future.set_result(None)

    async def _receive_loop(self) -> None:
        while True:
            message = await self.transport.receive()
            if not isinstance(message, Message):
                logger.warning("%s transport delivered a non-message %r; ignored",
                               self.config.local_id, type(message).__name__)
                continue
            await self._inbox_send.send(_Received(message))

    # ------------------------------------------------------------------
    # Shutdown

    def _mark_shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        err = "raft is shut down"
        for fut in self._requests.values():
            fut.set_exception(RaftShutdownError(err))
        self._requests.clear()
        for done in self._after_persist + self._after_compact:
            done.set_exception(RaftShutdownError(err))
        self._after_persist.clear()
        self._after_compact.clear()
        applier = getattr(self, "_applier", None)
        if applier is not None:
            for _, fut in applier.waiters.values():
                fut.set_exception(RaftShutdownError(err))
            applier.waiters.clear()
            applier.index_waiters.fail_all(RaftShutdownError, err)
        # Proposals still queued in the inbox will never be seen.
        while True:
            try:
                event = self._inbox_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(event, (_Propose, _Request, _Bootstrap, _UserRestore, _SnapshotTaken,
                                  _ConfigChange, _Transfer)):
                event.future.set_exception(RaftShutdownError(err))
        self._observers.close()

    async def shutdown(self) -> None:
        """Stop the node (hashicorp Shutdown); idempotent. Pending and later
        calls raise RaftShutdownError."""
        self._mark_shutdown()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        await self._stopped.wait()

    # ------------------------------------------------------------------
    # Public calls

    def _check_open(self) -> None:
        if self._shutdown:
            raise RaftShutdownError("raft is shut down")

    def _check_leader(self) -> None:
        self._check_open()
        if self._core.role is not Role.LEADER:
            raise NotLeaderError(self._core.leader_id, self._core.leader_address)

    async def _enqueue(self, event: _Event) -> None:
        try:
            await self._inbox_send.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise RaftShutdownError("raft is shut down") from None

    async def bootstrap_cluster(self, configuration: Configuration) -> None:
        """[BootstrapCluster] Write the first configuration of a new cluster.
        Raises CantBootstrapError if this server has any state."""
        self._check_open()
        if not isinstance(configuration, Configuration):
            raise TypeError("configuration must be a traft.Configuration")
        fut: Future[None] = Future()
        await self._enqueue(_Bootstrap(configuration, fut))
        await fut.wait()

    async def apply(self, data: bytes) -> Any:
        """[Apply] Replicate a command; returns the leader FSM's result (or
        raises what the FSM raised)."""
        return (await self.apply_log(data)).response

    async def apply_log(self, data: bytes, *, extensions: bytes = b"") -> Applied:
        """[ApplyLog] Like :meth:`apply`, returning the entry's index and term too."""
        data = _as_bytes(data, "data")
        extensions = _as_bytes(extensions, "extensions")
        return await self._propose_and_wait(LogType.COMMAND, data, extensions)

    async def barrier(self) -> None:
        """[Barrier] Returns once everything before it is applied to the local FSM."""
        await self._propose_and_wait(LogType.BARRIER, b"", b"")

    async def _propose_and_wait(self, kind: LogType, data: bytes, extensions: bytes) -> Applied:
        self._check_leader()
        fut: Future[Applied] = Future()
        await self._enqueue(_Propose(kind, data, extensions, fut))
        return await fut.wait()

    async def verify_leader(self) -> None:
        """[VerifyLeader] Confirm with a quorum that we are still the leader."""
        self._check_leader()
        fut: Future[int] = Future()
        await self._enqueue(_Request(False, fut))
        await fut.wait()

    async def read_index(self) -> int:
        """Linearizable read fence (etcd ReadIndex), on the leader or a
        follower: returns an index at least the leader's commit index when the
        call began, once the local FSM has applied it."""
        self._check_open()
        fut: Future[int] = Future()
        await self._enqueue(_Request(True, fut))
        index = await fut.wait()
        await self._applier.wait_applied(index)
        return index

    async def snapshot(self) -> SnapshotMeta:
        """[Snapshot] Take a snapshot now; read it back with the snapshot
        store's ``open``. NothingNewToSnapshotError if nothing was applied
        since the last one."""
        self._check_open()
        return await self._snapshotter.take()

    async def restore(self, meta: SnapshotMeta, source: BinaryIO) -> None:
        """[Restore] Replace the whole cluster's state with a user snapshot
        (leader only). Pending applies fail; ``source`` stays open (yours)."""
        self._check_leader()
        fut: Future[None] = Future()
        await self._enqueue(_UserRestore(meta, source, fut))
        await fut.wait()

    async def _change(self, kind: ChangeKind, id: ServerID, address: ServerAddress | None,
                      prev_index: int) -> int:
        if not isinstance(id, str) or not id:
            raise TypeError("server id must be a non-empty str")
        if address is not None and (not isinstance(address, str) or not address):
            raise TypeError("server address must be a non-empty str")
        if not isinstance(prev_index, int) or prev_index < 0:
            raise ValueError("prev_index must be a non-negative int")
        self._check_leader()
        fut: Future[int] = Future()
        await self._enqueue(_ConfigChange(kind, id, address, prev_index, fut))
        return await fut.wait()

    async def add_voter(self, id: ServerID, address: ServerAddress, *,
                        prev_index: int = 0) -> int:
        """[AddVoter] Add (or promote) a voter; returns the configuration
        entry's index once committed. A new server first catches up as a
        nonvoter and is promoted when it is within one batch
        (``max_append_entries``) of the leader's log (thesis §4.2.1)."""
        return await self._change(ChangeKind.ADD_VOTER, id, address, prev_index)

    async def add_nonvoter(self, id: ServerID, address: ServerAddress, *,
                           prev_index: int = 0) -> int:
        """[AddNonvoter] Add a server that receives the log but never votes."""
        return await self._change(ChangeKind.ADD_NONVOTER, id, address, prev_index)

    async def demote_voter(self, id: ServerID, *, prev_index: int = 0) -> int:
        """[DemoteVoter] Make a voter a nonvoter."""
        return await self._change(ChangeKind.DEMOTE_VOTER, id, None, prev_index)

    async def remove_server(self, id: ServerID, *, prev_index: int = 0) -> int:
        """[RemoveServer] Remove a server; a leader removing itself steps
        down once the change commits (and shuts down if
        ``shutdown_on_remove``)."""
        return await self._change(ChangeKind.REMOVE_SERVER, id, None, prev_index)

    async def leadership_transfer(self, id: ServerID | None = None,
                                  address: ServerAddress | None = None) -> None:
        """[LeadershipTransfer] Hand leadership to ``id`` (or the most
        up-to-date voter). New applies fail with
        LeadershipTransferInProgressError meanwhile; raises RaftError if it
        did not happen within ``election_timeout``."""
        self._check_leader()
        fut: Future[int] = Future()
        await self._enqueue(_Transfer(id, address, fut))
        await fut.wait()

    def get_configuration(self) -> Configuration:
        """[GetConfiguration] The latest configuration (committed or not)."""
        return self._core.configuration

    @contextmanager
    def observe(self, filter: Callable[[Observation], bool] | None = None,
                ) -> Iterator[trio.MemoryReceiveChannel[Observation]]:
        """[RegisterObserver] A channel of observations; a slow reader misses
        some (counted in ``stats()``), never slows the node."""
        with self._observers.observe(filter) as channel:
            yield channel

    # ------------------------------------------------------------------
    # State

    @property
    def state(self) -> RaftState:
        if self._shutdown:
            return RaftState.SHUTDOWN
        return self._core.state

    @property
    def leader_id(self) -> ServerID | None:
        return None if self._shutdown else self._core.leader_id

    @property
    def leader_address(self) -> ServerAddress | None:
        return None if self._shutdown else self._core.leader_address

    @property
    def current_term(self) -> int:
        return self._core.term

    @property
    def last_index(self) -> int:
        return self._core.log.last_index

    @property
    def commit_index(self) -> int:
        return self._core.commit_index

    @property
    def applied_index(self) -> int:
        return self._applier.applied_index

    @property
    def last_contact(self) -> float | None:
        if self._core.role is Role.LEADER and not self._shutdown:
            return trio.current_time()
        return self._core.last_leader_contact

    def stats(self) -> dict[str, Any]:
        """[Stats] A snapshot of the node's state, with hashicorp's keys."""
        core = self._core
        last_contact = self.last_contact
        return {
            "state": str(self.state),
            "term": core.term,
            "last_log_index": core.log.last_index,
            "last_log_term": core.log.last_term,
            "commit_index": core.commit_index,
            "applied_index": self._applier.applied_index,
            "fsm_pending": self._applier.pending,
            "last_snapshot_index": self._last_snapshot_index,
            "last_snapshot_term": self._last_snapshot_term,
            "latest_configuration": [
                {"id": s.id, "address": s.address, "suffrage": s.suffrage.value}
                for s in core.configuration.servers],
            "latest_configuration_index": core.membership.latest_index,
            "num_peers": sum(1 for s in core.configuration.servers if s.id != core.id),
            "last_contact": (None if last_contact is None
                             else max(0.0, trio.current_time() - last_contact)),
            "leader_id": self.leader_id,
            "leader_address": self.leader_address,
            "protocol_version": 1,
            "observations_dropped": self._observers.dropped,
        }


def _copy_stream(source: BinaryIO, sink: Any, chunk: int = 1 << 20) -> None:
    while True:
        data = source.read(chunk)
        if not data:
            return
        sink.write(data)


def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


@asynccontextmanager
async def open_raft(config: Config, fsm: Any, log_store: LogStore, stable_store: StableStore,
                    snapshot_store: SnapshotStore, transport: Transport,
                    ) -> AsyncIterator[Raft]:
    """[NewRaft] Start a Raft node; leaving the block shuts it down.

    On entry the node has loaded its term, vote, log and configuration and
    restored its FSM from the newest snapshot. Every pending call fails with
    RaftShutdownError when the block is left.
    """
    config.validate()
    raft = Raft(config, fsm, log_store, stable_store, snapshot_store, transport)
    await raft._load()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(raft._run)
            try:
                yield raft
            finally:
                await raft.shutdown()
    except BaseExceptionGroup as group:
        raise collapse(group) from None
    if raft._fatal is not None:
        raise RaftError(f"raft node {config.local_id} failed: {raft._fatal!r}") from raft._fatal
