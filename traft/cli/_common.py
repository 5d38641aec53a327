"""What the CLI's commands share: the one-line error, auth tokens, TLS
contexts, structured logging, the TOML config file, process helpers."""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import logging
import os
import ssl
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import trio

from .._config import Config
from .._types import Configuration, Server
from .._websocket_transport import format_address, parse_address

ENV_CLUSTER: Final = "TRAFT_CLUSTER"
ENV_TOKEN_FILE: Final = "TRAFT_AUTH_TOKEN_FILE"
DEFAULT_CLUSTER: Final = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"


class CliError(Exception):
    """An expected failure: printed as one ``error: ...`` line, exit code 1
    (or ``exit_code``)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(text: str) -> str:
    """Messages are printed on one line, whatever they hold."""
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------
# Addresses and bootstrap lists


def check_address(address: str) -> str:
    """``host:port`` normalized; ValueError otherwise."""
    host, port = parse_address(address.strip())
    assert port is not None
    return format_address(host, port)


def parse_bootstrap(text: str) -> Configuration:
    """``"n1=h1:p1,n2=h2:p2"`` -> a Configuration of voters."""
    servers: list[Server] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        id, sep, address = item.partition("=")
        if not sep or not id.strip():
            raise ValueError(f"expected ID=HOST:PORT, got {item!r}")
        servers.append(Server(id.strip(), check_address(address)))
    if not servers:
        raise ValueError("empty server list (expected ID=HOST:PORT,...)")
    ids = [s.id for s in servers]
    if len(set(ids)) != len(ids):
        raise ValueError("a server ID appears twice")
    addresses = [s.address for s in servers]
    if len(set(addresses)) != len(addresses):
        raise ValueError("an address appears twice")
    return Configuration(tuple(servers))


# ---------------------------------------------------------------------------
# Secrets and TLS


def read_token(path: str | None) -> str | None:
    """The auth token in ``path`` (surrounding whitespace stripped)."""
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise CliError(f"auth token file {path} does not exist") from None
    except UnicodeDecodeError:
        raise CliError(f"auth token file {path} is not printable ASCII") from None
    except OSError as exc:
        raise CliError(f"cannot read auth token file {path}: {exc.strerror}") from None
    if not token:
        raise CliError(f"auth token file {path} is empty")
    if not 0 < len(token) <= 1024 or any(not 0x21 <= ord(c) <= 0x7E for c in token):
        raise CliError(f"auth token in {path} must be 1 to 1024 printable ASCII characters "
                       f"without spaces")
    return token


def _load(what: str, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except FileNotFoundError as exc:
        raise CliError(f"{what}: file not found: {exc.filename or args[0]}") from None
    except (ssl.SSLError, OSError) as exc:
        raise CliError(f"{what}: {getattr(exc, 'reason', None) or exc}") from None


def server_ssl_context(cert: str | None, key: str | None, ca: str | None,
                       ) -> ssl.SSLContext | None:
    """The node's server side: its certificate; with ``ca``, mutual TLS (every
    peer and client must present a certificate signed by it)."""
    if cert is None and key is None:
        if ca is not None:
            raise CliError("--tls-ca needs --tls-cert and --tls-key on a node")
        return None
    if cert is None or key is None:
        raise CliError("--tls-cert and --tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load("--tls-cert/--tls-key", ctx.load_cert_chain, cert, key)
    if ca is not None:
        _load("--tls-ca", ctx.load_verify_locations, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(cert: str | None, key: str | None, ca: str | None,
                       ) -> ssl.SSLContext | None:
    """The connecting side: verify servers against ``ca`` (or the system's
    roots); present ``cert``/``key`` for mutual TLS. None: plain TCP."""
    if cert is None and key is None and ca is None:
        return None
    if (cert is None) != (key is None):
        raise CliError("--tls-cert and --tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        _load("--tls-ca", ctx.load_verify_locations, ca)
    if cert is not None:
        _load("--tls-cert/--tls-key", ctx.load_cert_chain, cert, key)
    return ctx


# ---------------------------------------------------------------------------
# Structured logging to stderr

_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class _Formatter(logging.Formatter):
    """One line per record: ``key=value`` pairs (logfmt) or a JSON object."""

    def __init__(self, style: str, node: str | None) -> None:
        super().__init__()
        self._json = style == "json"
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self._node is not None:
            fields["node"] = self._node
        fields["msg"] = record.getMessage()
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                fields[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = repr(record.exc_info[1])
            if record.levelno <= logging.DEBUG or logging.getLogger().level <= logging.DEBUG:
                fields["traceback"] = self.formatException(record.exc_info)
        if self._json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())


def _logfmt(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\n\\') :
        return text
    return json.dumps(text)


LOG_LEVELS: Final = ("debug", "info", "warning", "error")


def setup_logging(level: str, style: str = "logfmt", node: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(style, node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # trio-websocket is chatty at debug level
    logging.getLogger("trio-websocket").setLevel(max(root.level, logging.INFO))


# ---------------------------------------------------------------------------
# The TOML config file of ``traft node``

NODE_KEYS: Final = frozenset({
    "id", "listen", "data", "bootstrap", "join", "advertise", "tls_cert", "tls_key",
    "tls_ca", "auth_token_file", "log_level", "log_format"})
RAFT_KEYS: Final = {f.name: f.type for f in dataclasses.fields(Config)
                    if f.name not in ("local_id", "rng")}


def load_config_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(node options, Config overrides)`` from a TOML file: top-level keys
    are ``traft node`` options (``tls_cert`` or ``tls-cert``), the ``[raft]``
    table holds ``traft.Config`` fields."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise CliError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise CliError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"config file {path} is not valid TOML: {exc}") from None
    options: dict[str, Any] = {}
    raft: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "raft":
            if not isinstance(value, Mapping):
                raise CliError(f"{path}: [raft] must be a table")
            for rkey, rvalue in value.items():
                rname = rkey.replace("-", "_")
                if rname not in RAFT_KEYS:
                    raise CliError(f"{path}: unknown [raft] setting {rkey!r} (known: "
                                   f"{', '.join(sorted(RAFT_KEYS))})")
                raft[rname] = _raft_value(path, rname, rvalue)
        elif name in NODE_KEYS:
            if name == "bootstrap" and isinstance(value, Mapping):
                value = ",".join(f"{k}={v}" for k, v in value.items())
            if not isinstance(value, str):
                raise CliError(f"{path}: {key} must be a string")
            options[name] = value
        else:
            raise CliError(f"{path}: unknown setting {key!r} (known: "
                           f"{', '.join(sorted(NODE_KEYS))}, and a [raft] table)")
    return options, raft


def _raft_value(path: str, name: str, value: Any) -> Any:
    kind = str(RAFT_KEYS[name])
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise CliError(f"{path}: [raft] {name} must be a {kind}, got {value!r}")
    return value


# ---------------------------------------------------------------------------
# Process helpers


def lock_directory(directory: Path, name: str, what: str) -> int:
    """An exclusive ``flock`` on ``directory/name``: one process per data
    directory. The returned fd holds it until closed (or the process ends)."""
    path = directory / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise CliError(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CliError(f"data directory {directory} is in use by another {what} "
                           f"(lock {path} is held)") from None
        raise CliError(f"cannot lock {path}: {exc.strerror}") from None
    return fd


def make_directory(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CliError(f"cannot create data directory {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise CliError(f"{path} is not a directory")


async def watch_parent(parent: int, stop: Callable[[str], object]) -> None:
    """Call ``stop`` once the parent process is gone: children of ``traft
    local`` never outlive it, even if it is SIGKILLed."""
    while os.getppid() == parent:
        await trio.sleep(0.5)
    stop(f"parent process {parent} is gone")
