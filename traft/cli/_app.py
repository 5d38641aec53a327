"""The ``traft`` command line (Click): the commands and their options."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from .._types import Configuration
from ..kv import Client
from ..kv._client import CONSISTENCY_LEVELS
from ._common import (
    DEFAULT_CLUSTER,
    ENV_CLUSTER,
    ENV_TOKEN_FILE,
    LOG_LEVELS,
    CliError,
    check_address,
    client_ssl_context,
    load_config_file,
    parse_bootstrap,
    read_token,
    setup_logging,
)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ---------------------------------------------------------------------------
# Option helpers


def _address(ctx: click.Context | None, param: click.Parameter | str | None,
             value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param if not isinstance(param, str) else None,
                                 param if isinstance(param, str) else None) from None


def _bootstrap(ctx: click.Context | None, param: click.Parameter | str | None,
               value: str | None) -> Configuration | None:
    if value is None:
        return None
    try:
        return parse_bootstrap(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param if not isinstance(param, str) else None,
                                 param if isinstance(param, str) else None) from None


def _cluster(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from ..kv._client import parse_servers
    try:
        return parse_servers(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


verbose_option = click.option(
    "-v", "--verbose", is_flag=True, help="On error, show the details (traceback) too.")


def client_options(fn: F) -> F:
    """The options every command that talks to a cluster takes."""
    options = [
        click.option("--cluster", "-c", envvar=ENV_CLUSTER, default=DEFAULT_CLUSTER,
                     show_default=True, callback=_cluster, metavar="HOST:PORT,...",
                     help=f"Some of the cluster's servers (or ${ENV_CLUSTER})."),
        click.option("--auth-token-file", envvar=ENV_TOKEN_FILE, metavar="FILE",
                     help=f"The cluster's shared auth token (or ${ENV_TOKEN_FILE})."),
        click.option("--tls-ca", envvar="TRAFT_TLS_CA", metavar="FILE",
                     help="Connect with TLS, trusting this CA."),
        click.option("--tls-cert", envvar="TRAFT_TLS_CERT", metavar="FILE",
                     help="Client certificate (mutual TLS)."),
        click.option("--tls-key", envvar="TRAFT_TLS_KEY", metavar="FILE",
                     help="Client certificate's key (mutual TLS)."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
                     show_default=True, help="Give up after this many seconds."),
        verbose_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_with_client(fn: Callable[[Client], Awaitable[T]], *, cluster: list[str],
                    auth_token_file: str | None, tls_ca: str | None, tls_cert: str | None,
                    tls_key: str | None, timeout: float, **_: Any) -> T:
    token = read_token(auth_token_file)
    ctx = client_ssl_context(tls_cert, tls_key, tls_ca)

    async def main() -> T:
        async with Client(cluster, auth_token=token, ssl_context=ctx, timeout=timeout) as client:
            return await fn(client)

    return trio.run(main)


def echo_value(value: bytes) -> None:
    sys.stdout.buffer.write(value + b"\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# The group


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="traft", prog_name="traft", message="%(prog)s %(version)s")
@verbose_option
def cli(verbose: bool) -> None:
    """traft: a replicated key-value store on Raft, for Trio.

    \b
    Try it on one machine:
      traft local --nodes 3          # a 3-node cluster with a live view
      traft put hello world          # (in another terminal)
      traft get hello
      traft status
    """


# ---------------------------------------------------------------------------
# Servers


@cli.command(context_settings=CONTEXT)
@click.option("--id", "id_", metavar="ID", help="This server's ID (unique in the cluster).")
@click.option("--listen", callback=_address, metavar="HOST:PORT",
              help="Where to serve Raft and clients (one WebSocket port).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Data directory (raft.db, snapshots/).")
@click.option("--bootstrap", callback=_bootstrap, metavar="ID=HOST:PORT,...",
              help="First start only: create a cluster of these servers (this one included).")
@click.option("--join", callback=_address, metavar="HOST:PORT",
              help="Ask this member of a cluster to add this server as a voter.")
@click.option("--advertise", metavar="HOST[:PORT]",
              help="The address others use to reach this server (default: --listen).")
@click.option("--tls-cert", metavar="FILE", help="Serve TLS with this certificate (PEM).")
@click.option("--tls-key", metavar="FILE", help="The certificate's private key (PEM).")
@click.option("--tls-ca", metavar="FILE",
              help="Require and verify client certificates from this CA (mutual TLS).")
@click.option("--auth-token-file", metavar="FILE",
              help="A shared secret every peer and client must present.")
@click.option("--config", "config_file", metavar="FILE.toml",
              help="Options as TOML (keys as above; a [raft] table for traft.Config).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None,
              help="Least severe level logged to stderr (default: info).")
@click.option("--log-format", type=click.Choice(["logfmt", "json"]), default=None,
              help="key=value lines (default) or JSON lines.")
@click.option("--exit-with-parent", type=int, hidden=True, default=None)
@verbose_option
def node(id_: str | None, listen: str | None, data: Path | None,
         bootstrap: Configuration | None, join: str | None, advertise: str | None,
         tls_cert: str | None, tls_key: str | None, tls_ca: str | None,
         auth_token_file: str | None, config_file: str | None, log_level: str | None,
         log_format: str | None, exit_with_parent: int | None, verbose: bool) -> None:
    """Run one server of a cluster, hosting the key-value store.

    \b
    First start of a 3-server cluster (one per machine):
      traft node --id n1 --listen 10.0.0.1:7000 --data /var/lib/traft \\
                 --bootstrap n1=10.0.0.1:7000,n2=10.0.0.2:7000,n3=10.0.0.3:7000
    Adding a server later:
      traft node --id n4 --listen 10.0.0.4:7000 --data /var/lib/traft --join 10.0.0.1:7000

    SIGINT/SIGTERM stop it cleanly.
    """
    from ._run_node import NodeOptions, run_node

    file_options: dict[str, Any] = {}
    raft: dict[str, Any] = {}
    if config_file is not None:
        file_options, raft = load_config_file(config_file)

    def pick(name: str, value: Any) -> Any:
        return value if value is not None else file_options.get(name)

    id_ = pick("id", id_)
    listen = pick("listen", listen)
    data_dir = data if data is not None else file_options.get("data")
    level = pick("log_level", log_level) or "info"
    style = pick("log_format", log_format) or "logfmt"
    if level not in LOG_LEVELS:
        raise click.BadParameter(f"log_level must be one of {', '.join(LOG_LEVELS)}",
                                 param_hint="'log_level'")
    missing = [flag for flag, value in (("--id", id_), ("--listen", listen),
                                        ("--data", data_dir)) if not value]
    if missing:
        raise click.UsageError(f"Missing option {', '.join(repr(m) for m in missing)} "
                               f"(or set it in --config).")
    assert id_ is not None and listen is not None and data_dir is not None
    if bootstrap is None and file_options.get("bootstrap"):
        bootstrap = _bootstrap(None, "'bootstrap' in --config", file_options["bootstrap"])
    if join is None and file_options.get("join"):
        join = _address(None, "'join' in --config", file_options["join"])
    if bootstrap is not None and join is not None:
        raise click.UsageError("--bootstrap and --join exclude each other")
    setup_logging(level, style, node=id_)
    run_node(NodeOptions(
        id=id_, listen=_address(None, "'listen' in --config", listen) or listen,
        data=Path(data_dir), bootstrap=bootstrap, join=join,
        advertise=pick("advertise", advertise), tls_cert=pick("tls_cert", tls_cert),
        tls_key=pick("tls_key", tls_key), tls_ca=pick("tls_ca", tls_ca),
        auth_token_file=pick("auth_token_file", auth_token_file), raft=raft,
        parent_pid=exit_with_parent))


@cli.command(context_settings=CONTEXT)
@click.option("--nodes", "-n", type=click.IntRange(1, 9), default=3, show_default=True,
              help="How many servers.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              default=Path("traft-local"), show_default=True, metavar="DIR",
              help="Data directory (one subdirectory and log per node); reused on restart.")
@click.option("--base-port", type=click.IntRange(1, 65535), default=7001, show_default=True,
              help="Ports base-port .. base-port+N-1 on 127.0.0.1.")
@click.option("--config", "config_file", metavar="FILE.toml",
              help="A node config file passed to every node (e.g. a [raft] table).")
@click.option("--auth-token-file", metavar="FILE", help="Protect the cluster with this token.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info",
              show_default=True, help="The nodes' log level (their logs go to DIR/nK.log).")
@verbose_option
def local(nodes: int, data: Path, base_port: int, config_file: str | None,
          auth_token_file: str | None, log_level: str, verbose: bool) -> None:
    """Run a local N-node cluster with a live status view; Ctrl-C stops it.

    Restarting it on the same DIR brings the data back.
    """
    from ._local import LocalOptions, run_local

    if config_file is not None:
        load_config_file(config_file)  # fail here, not in every child
        config_file = os.path.abspath(config_file)
    if auth_token_file is not None:
        read_token(auth_token_file)
        auth_token_file = os.path.abspath(auth_token_file)
    run_local(LocalOptions(nodes=nodes, data=data, base_port=base_port, config=config_file,
                           auth_token_file=auth_token_file, log_level=log_level,
                           interactive=sys.stdout.isatty()))


# ---------------------------------------------------------------------------
# Key-value commands


@cli.command(context_settings=CONTEXT)
@click.argument("key")
@click.argument("value")
@client_options
def put(key: str, value: str, **options: Any) -> None:
    """Set KEY to VALUE."""
    run_with_client(lambda c: c.put(key, value), **options)
    click.echo("ok")


@cli.command(context_settings=CONTEXT)
@click.argument("key")
@click.option("--consistency", type=click.Choice(CONSISTENCY_LEVELS), default="linearizable",
              show_default=True,
              help="stale: any server's copy; leader: confirmed by the leader; "
                   "linearizable: up to date, may be served by a follower.")
@client_options
def get(key: str, consistency: str, **options: Any) -> None:
    """Print the value of KEY (exit code 1 if it has none)."""
    value = run_with_client(lambda c: c.get(key, consistency=consistency),  # type: ignore[arg-type]
                            **options)
    if value is None:
        raise CliError(f"no such key: {key!r}")
    echo_value(value)


@cli.command(context_settings=CONTEXT)
@click.argument("key")
@client_options
def delete(key: str, **options: Any) -> None:
    """Delete KEY."""
    existed = run_with_client(lambda c: c.delete(key), **options)
    click.echo("deleted" if existed else "no such key (nothing to delete)")


@cli.command(context_settings=CONTEXT)
@click.argument("key")
@click.argument("values", nargs=-1, metavar="EXPECTED NEW")
@click.option("--absent", is_flag=True,
              help="Expect KEY to be absent (then give only NEW).")
@client_options
def cas(key: str, values: tuple[str, ...], absent: bool, **options: Any) -> None:
    """Compare-and-set: set KEY to NEW if it holds EXPECTED.

    Exit code 1 if it did not.
    """
    want = 1 if absent else 2
    if len(values) != want:
        raise click.UsageError(
            "expected KEY NEW with --absent" if absent else "expected KEY EXPECTED NEW")
    expected = None if absent else values[0]
    new = values[-1]
    swapped = run_with_client(lambda c: c.cas(key, expected, new), **options)
    if not swapped:
        raise CliError(f"cas failed: {key!r} does not hold the expected value")
    click.echo("ok")


@cli.command(context_settings=CONTEXT)
@click.argument("prefix", default="")
@click.option("--consistency", type=click.Choice(CONSISTENCY_LEVELS), default="linearizable",
              show_default=True)
@client_options
def keys(prefix: str, consistency: str, **options: Any) -> None:
    """List the keys (starting with PREFIX), one per line."""
    found = run_with_client(lambda c: c.keys(prefix, consistency=consistency),  # type: ignore[arg-type]
                            **options)
    for key in found:
        click.echo(key)


# ---------------------------------------------------------------------------
# Status and administration


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@client_options
def status(as_json: bool, **options: Any) -> None:
    """One row per server: state, term, indexes, last contact, snapshot."""
    from ._render import status_json, status_table

    rows = run_with_client(lambda c: c.cluster_status(), **options)
    if as_json:
        click.echo(status_json(rows))
        return
    from rich.console import Console

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    console.print(status_table(rows))


@cli.command("add-voter", context_settings=CONTEXT)
@click.argument("id_", metavar="ID")
@click.argument("address", metavar="HOST:PORT", callback=_address)
@client_options
def add_voter(id_: str, address: str, **options: Any) -> None:
    """Add (or promote) server ID at HOST:PORT as a voter."""
    index = run_with_client(lambda c: c.add_voter(id_, address), **options)
    click.echo(f"ok: {id_} is a voter (configuration index {index})")


@cli.command("add-nonvoter", context_settings=CONTEXT)
@click.argument("id_", metavar="ID")
@click.argument("address", metavar="HOST:PORT", callback=_address)
@client_options
def add_nonvoter(id_: str, address: str, **options: Any) -> None:
    """Add server ID at HOST:PORT as a nonvoter (gets the log, no vote)."""
    index = run_with_client(lambda c: c.add_nonvoter(id_, address), **options)
    click.echo(f"ok: {id_} is a nonvoter (configuration index {index})")


@cli.command(context_settings=CONTEXT)
@click.argument("id_", metavar="ID")
@client_options
def remove(id_: str, **options: Any) -> None:
    """Remove server ID from the cluster."""
    index = run_with_client(lambda c: c.remove_server(id_), **options)
    click.echo(f"ok: {id_} removed (configuration index {index})")


@cli.command("transfer-leader", context_settings=CONTEXT)
@click.option("--to", "to", metavar="ID", help="The new leader (default: the most "
                                                "up-to-date voter).")
@client_options
def transfer_leader(to: str | None, **options: Any) -> None:
    """Hand leadership to another voter."""
    new = run_with_client(lambda c: c.transfer_leadership(to), **options)
    click.echo(f"ok: leadership transferred{f' to {new}' if new else ''}")


@cli.command(context_settings=CONTEXT)
@click.option("--server", callback=_address, metavar="HOST:PORT",
              help="Snapshot this server (default: the leader).")
@client_options
def snapshot(server: str | None, **options: Any) -> None:
    """Take a snapshot now (and compact the log)."""
    meta = run_with_client(lambda c: c.snapshot(server), **options)
    click.echo(f"ok: snapshot {meta.get('id')} of {meta.get('server')} at index "
               f"{meta.get('index')} ({meta.get('size')} bytes)")

