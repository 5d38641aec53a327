"""``traft local``: a cluster of ``traft node`` child processes on loopback,
with a live status view.

::

    run_local
    ├── signal watcher         SIGINT/SIGTERM -> stop
    ├── one task per child     trio.run_process(python -m traft node ...);
    │                          cancelled -> SIGTERM, wait, SIGKILL after 10 s
    └── status loop            Client.cluster_status() every second ->
                               a Rich Live table (TTY) or plain lines

Every child is started by this process's nursery, so leaving it (Ctrl-C, an
error, anything) stops and reaps them all; each child also watches its
parent and stops if it disappears (``--exit-with-parent``).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .._errors import TransportError
from .._websocket_transport import format_address
from ..kv import Client, ClientError
from ._common import CliError, lock_directory, make_directory, read_token
from ._render import status_line, status_table

logger = logging.getLogger("traft.cli.local")

STOP_GRACE = 10.0  # seconds a child has to stop cleanly before SIGKILL
POLL_INTERVAL = 1.0
QUIET_REPEAT = 10.0  # non-TTY: repeat an unchanged status line this often


@dataclass
class LocalOptions:
    nodes: int
    data: Path
    base_port: int
    host: str = "127.0.0.1"
    config: str | None = None
    auth_token_file: str | None = None
    log_level: str = "info"
    interactive: bool = False


@dataclass
class _Child:
    id: str
    address: str
    data: Path
    log: Path
    process: trio.Process | None = None
    returncode: int | None = None


def run_local(options: LocalOptions) -> None:
    trio.run(_main, options)


def _check_ports(host: str, ports: list[int]) -> None:
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            # as trio's listeners do: connections in TIME_WAIT do not block
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise CliError(f"cannot listen on {format_address(host, port)}: "
                               f"{exc.strerror or exc} (another cluster running? "
                               f"choose another --base-port)") from None


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1]


async def _terminate(process: trio.Process) -> None:
    """run_process's deliver_cancel: ask politely, then insist."""
    try:
        process.send_signal(signal.SIGTERM)
    except ProcessLookupError:  # pragma: no cover - already gone
        return
    with trio.move_on_after(STOP_GRACE):
        await process.wait()
        return
    logger.warning("pid %d did not stop within %gs; killing it", process.pid, STOP_GRACE)
    process.kill()


async def _main(options: LocalOptions) -> None:
    data = options.data.resolve()
    make_directory(data)
    lock_fd = lock_directory(data, "local.lock", "traft local")
    try:
        await _run(options, data)
    finally:
        os.close(lock_fd)


async def _run(options: LocalOptions, data: Path) -> None:
    token = read_token(options.auth_token_file)
    ports = list(range(options.base_port, options.base_port + options.nodes))
    if ports[-1] > 65535:
        raise CliError(f"--base-port {options.base_port} leaves no room for "
                       f"{options.nodes} ports")
    _check_ports(options.host, ports)
    children = [_Child(f"n{i + 1}", format_address(options.host, port), data / f"n{i + 1}",
                       data / f"n{i + 1}.log") for i, port in enumerate(ports)]
    bootstrap = ",".join(f"{c.id}={c.address}" for c in children)
    out = Console(highlight=False, soft_wrap=True) if options.interactive else None

    def say(text: str) -> None:
        if out is not None:
            out.print(text)
        else:
            print(text, flush=True)

    say(f"traft local: {len(children)} nodes, data in {data}, logs in "
        f"{data}/n*.log")
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def watch_signals() -> None:
                async for _ in signals:
                    stop.set()

            async def run_child(child: _Child, *,
                                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                                ) -> None:
                command = [sys.executable, "-m", "traft", "node", "--id", child.id,
                           "--listen", child.address, "--data", str(child.data),
                           "--bootstrap", bootstrap, "--log-level", options.log_level,
                           "--exit-with-parent", str(os.getpid())]
                if options.config is not None:
                    command += ["--config", options.config]
                if options.auth_token_file is not None:
                    command += ["--auth-token-file", options.auth_token_file]
                with open(child.log, "ab") as log:
                    async with trio.open_nursery() as inner:
                        child.process = await inner.start(functools.partial(
                            trio.run_process, command, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log, check=False, deliver_cancel=_terminate,
                            # its own session: a terminal's Ctrl-C reaches only
                            # us, and we stop the nodes (each exactly once)
                            start_new_session=True))
                        task_status.started()
                assert child.process is not None
                child.returncode = child.process.returncode

            nursery.start_soon(watch_signals)
            for child in children:
                await nursery.start(run_child, child)
                assert child.process is not None
                say(f"started {child.id} pid={child.process.pid} on {child.address}")
            try:
                await _watch(options, children, token, stop, say, out)
            finally:
                if any(c.returncode is None for c in children):
                    say(f"stopping {sum(c.returncode is None for c in children)} nodes...")
                nursery.cancel_scope.cancel()
    say("all nodes stopped")


async def _watch(options: LocalOptions, children: list[_Child], token: str | None,
                 stop: trio.Event, say: Any, out: Console | None) -> None:
    """Show the status until ``stop``; a node failing before the cluster is
    up is an error."""
    ready = False
    last_line = ""
    last_said = -1e9
    async with Client([c.address for c in children], auth_token=token, timeout=1.0,
                      connect_timeout=0.5) as client:
        live: Live | None = None
        if out is not None:
            live = Live(console=out, refresh_per_second=4, transient=False)
            live.start()
        try:
            while not stop.is_set():
                rows = await _poll(client, children)
                failed = [c for c in children
                          if c.returncode not in (None, 0, -signal.SIGINT, -signal.SIGTERM)]
                if failed and not ready:
                    c = failed[0]
                    detail = _last_line(c.log)
                    raise CliError(f"node {c.id} exited with code {c.returncode} before "
                                   f"the cluster was up" + (f": {detail}" if detail else "")
                                   + f" (log: {c.log})")
                leader = next((r for r in rows if r.get("state") == "leader"), None)
                if leader is not None and not ready:
                    ready = True
                    say(f"ready: leader {leader.get('id')} at {leader.get('address')}; try "
                        f"'traft put hello world' and 'traft get hello'; Ctrl-C stops")
                if live is not None:
                    live.update(Group(
                        status_table(rows, title="traft local cluster"),
                        Text("Ctrl-C stops the cluster; logs in "
                             f"{children[0].log.parent}/n*.log", style="dim")))
                else:
                    line = "status: " + status_line(rows)
                    now = trio.current_time()
                    if line != last_line or now - last_said >= QUIET_REPEAT:
                        say(line)
                        last_line, last_said = line, now
                with trio.move_on_after(POLL_INTERVAL):
                    await stop.wait()
        finally:
            if live is not None:
                live.stop()


async def _poll(client: Client, children: list[_Child]) -> list[dict[str, Any]]:
    by_id = {c.id: c for c in children}
    try:
        with trio.fail_after(2 * POLL_INTERVAL):
            rows = await client.cluster_status()
    except (ClientError, TransportError, trio.TooSlowError):
        rows = [{"id": c.id, "address": c.address, "state": "starting"} for c in children]
    for row in rows:
        child = by_id.get(str(row.get("id")))
        if child is not None and child.returncode is not None:
            row["state"] = f"exited ({child.returncode})"
    return rows
