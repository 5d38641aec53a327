"""The wire codec: traft messages <-> CBOR bytes (``docs/protocol.md``).

Pure functions, no I/O. ``encode_message`` turns one message dataclass into
one CBOR data item; ``decode_message`` turns bytes from an untrusted peer
back into a message or raises :class:`RemoteProtocolError` saying exactly
what was wrong (h11's rule: the peer's mistakes are *Remote* errors, raised
at the single input boundary).

Layout of every message (a CBOR map with text keys)::

    {"v": 1,                                  # protocol version
     "t": <type code>,                        # MESSAGE_TYPE_CODES
     "h": [term, src, src_address, dst],      # the header every message has
     "b": {<field name>: <value>, ...}}       # the type's own fields

Decoding is strict so that nothing a peer sends can surprise the node:
well-formed CBOR only (no trailing bytes, no tags, no indefinite lengths,
no duplicate keys, bounded nesting), then every field of the schema checked
for its CBOR type and range. Unknown keys in the maps are ignored, which is
how version 1 grows (see "Versioning" in the protocol document).
"""

from __future__ import annotations

import enum
import io
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, Iterator, NoReturn

import cbor2

from ._errors import TransportError
from ._messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from ._types import Configuration, Log, LogType, Server, Suffrage

__all__ = [
    "MESSAGE_TYPE_CODES",
    "PROTOCOL_VERSION",
    "CloseCode",
    "RemoteProtocolError",
    "decode_message",
    "encode_message",
]

PROTOCOL_VERSION: Final = 1
"""The value of ``"v"`` in every message this codec writes and accepts."""

MAX_DEPTH: Final = 8
"""Most arrays/maps nested in one another. A valid message nests at most 4
(envelope, body, configuration, server); anything deeper than this bound is
refused while decoding, before it is built."""

_U64: Final = 1 << 64


class CloseCode(enum.IntEnum):
    """WebSocket close codes traft uses (``docs/protocol.md`` "Errors").

    The 1xxx codes are RFC 6455's; the 4xxx ones are traft's private codes,
    also carried by :attr:`RemoteProtocolError.code`.
    """

    NORMAL = 1000  # idle connection closed, or an orderly close
    GOING_AWAY = 1001  # the transport is shutting down
    UNSUPPORTED_DATA = 1003  # a text (not binary) WebSocket message
    MESSAGE_TOO_BIG = 1009  # larger than the receiver's max_message_size
    MALFORMED = 4000  # not one well-formed CBOR data item of the allowed subset
    INVALID = 4001  # well-formed CBOR that does not match the message schema
    UNSUPPORTED_VERSION = 4002  # "v" is not a protocol version the receiver speaks
    UNKNOWN_TYPE = 4003  # "t" is not a known message type code


class RemoteProtocolError(TransportError):
    """A peer sent bytes that are not a valid traft message.

    ``code`` is the :class:`CloseCode` the receiver closes the connection
    with; ``str(exc)`` says what was wrong, for the log and the close reason.
    """

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _invalid(reason: str) -> NoReturn:
    raise RemoteProtocolError(CloseCode.INVALID, reason)


def _describe(v: object) -> str:
    """A short, bounded description of a bad value for error messages:
    never echo a peer's megabytes into a log line."""
    if v is None or isinstance(v, (bool, float)):
        return repr(v)
    if isinstance(v, int):
        return repr(v) if -_U64 <= v <= _U64 else "a huge integer"
    if isinstance(v, (str, bytes, list, dict)):
        kind = {str: "text", bytes: "bytes", list: "array", dict: "map"}[type(v)]
        return f"{kind} of length {len(v)}"
    return type(v).__name__


# ---------------------------------------------------------------------------
# Field checkers: (value, field name) -> the Python value, or RemoteProtocolError


def _uint(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v < _U64:
        _invalid(f"{what} must be an unsigned integer below 2**64, got {_describe(v)}")
    return v


def _text(v: object, what: str) -> str:
    if type(v) is not str:
        _invalid(f"{what} must be a text string, got {_describe(v)}")
    return v


def _opt_text(v: object, what: str) -> str | None:
    if v is None:
        return None
    if type(v) is not str:
        _invalid(f"{what} must be a text string or null, got {_describe(v)}")
    return v


def _bytes(v: object, what: str) -> bytes:
    if type(v) is not bytes:
        _invalid(f"{what} must be a byte string, got {_describe(v)}")
    return v


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        _invalid(f"{what} must be true or false, got {_describe(v)}")
    return v


_LOG_TYPES: Final = tuple(LogType)  # wire code == IntEnum value == position
_SUFFRAGE_CODES: Final = {Suffrage.VOTER: 0, Suffrage.NONVOTER: 1}
_SUFFRAGES: Final = (Suffrage.VOTER, Suffrage.NONVOTER)


def _entries(v: object, what: str) -> tuple[Log, ...]:
    # The hot path of the decoder: checks are inlined rather than calling the
    # helpers above for every field of every entry.
    if type(v) is not list:
        _invalid(f"{what} must be an array, got {_describe(v)}")
    out: list[Log] = []
    append = out.append
    for i, e in enumerate(v):
        if type(e) is not list or len(e) != 6:
            _invalid(f"{what}[{i}] must be an array of 6 items, got {_describe(e)}")
        index, term, typ, data, ext, at = e
        if type(index) is not int or not 0 <= index < _U64:
            _uint(index, f"{what}[{i}].index")
        if type(term) is not int or not 0 <= term < _U64:
            _uint(term, f"{what}[{i}].term")
        if type(typ) is not int or not 0 <= typ < len(_LOG_TYPES):
            _invalid(f"{what}[{i}].type must be a log type code 0..{len(_LOG_TYPES) - 1}, "
                     f"got {_describe(typ)}")
        if type(data) is not bytes:
            _bytes(data, f"{what}[{i}].data")
        if type(ext) is not bytes:
            _bytes(ext, f"{what}[{i}].extensions")
        if type(at) is not float:
            if type(at) is not int or not -_U64 < at < _U64:
                _invalid(f"{what}[{i}].appended_at must be a number, got {_describe(at)}")
            at = float(at)
        elif not math.isfinite(at):
            _invalid(f"{what}[{i}].appended_at must be finite, got {at!r}")
        append(Log(index, term, _LOG_TYPES[typ], data, ext, at))
    return tuple(out)


def _configuration(v: object, what: str) -> Configuration:
    if type(v) is not list:
        _invalid(f"{what} must be an array of servers, got {_describe(v)}")
    servers: list[Server] = []
    for i, s in enumerate(v):
        if type(s) is not list or len(s) != 3:
            _invalid(f"{what}[{i}] must be an array of 3 items, got {_describe(s)}")
        sid = _text(s[0], f"{what}[{i}].id")
        address = _text(s[1], f"{what}[{i}].address")
        code = s[2]
        if type(code) is not int or not 0 <= code < len(_SUFFRAGES):
            _invalid(f"{what}[{i}].suffrage must be 0 (voter) or 1 (nonvoter), "
                     f"got {_describe(code)}")
        servers.append(Server(sid, address, _SUFFRAGES[code]))
    return Configuration(tuple(servers))


# ---------------------------------------------------------------------------
# Field encoders for the two non-scalar kinds


def _encode_entries(entries: tuple[Log, ...]) -> list[list[Any]]:
    return [[e.index, e.term, int(e.type), e.data, e.extensions, float(e.appended_at)]
            for e in entries]


def _encode_configuration(c: Configuration) -> list[list[Any]]:
    return [[s.id, s.address, _SUFFRAGE_CODES[s.suffrage]] for s in c.servers]


# ---------------------------------------------------------------------------
# The schema: one row per message type. It is the single source of truth for
# both directions and mirrors the tables in docs/protocol.md.

_Check = Callable[[object, str], Any]
_Encode = Callable[[Any], Any] | None

_UINT: Final = (_uint, None)
_TEXT: Final = (_text, None)
_OPT_TEXT: Final = (_opt_text, None)
_BYTES: Final = (_bytes, None)
_BOOL: Final = (_bool, None)
_ENTRIES: Final = (_entries, _encode_entries)
_CONFIGURATION: Final = (_configuration, _encode_configuration)

_SCHEMA: Final[dict[int, tuple[type[Message], tuple[tuple[str, _Check, _Encode], ...]]]] = {}


def _row(code: int, cls: type[Message], *fields: tuple[str, tuple[_Check, _Encode]]) -> None:
    _SCHEMA[code] = (cls, tuple((name, check, enc) for name, (check, enc) in fields))


_row(1, RequestVote, ("last_log_index", _UINT), ("last_log_term", _UINT),
     ("prevote", _BOOL), ("leadership_transfer", _BOOL))
_row(2, RequestVoteResponse, ("granted", _BOOL), ("prevote", _BOOL))
_row(3, AppendEntries, ("prev_log_index", _UINT), ("prev_log_term", _UINT),
     ("entries", _ENTRIES), ("leader_commit", _UINT))
_row(4, AppendEntriesResponse, ("success", _BOOL), ("match_index", _UINT), ("hint", _UINT))
_row(5, Heartbeat, ("leader_commit", _UINT), ("seq", _UINT))
_row(6, HeartbeatResponse, ("seq", _UINT), ("last_log_index", _UINT))
_row(7, TimeoutNow)
_row(8, InstallSnapshot, ("snapshot_id", _TEXT), ("last_log_index", _UINT),
     ("last_log_term", _UINT), ("configuration", _CONFIGURATION),
     ("configuration_index", _UINT), ("size", _UINT), ("offset", _UINT),
     ("data", _BYTES), ("done", _BOOL))
_row(9, InstallSnapshotResponse, ("snapshot_id", _TEXT), ("success", _BOOL),
     ("next_offset", _UINT))
_row(10, ReadIndexRequest, ("request_id", _UINT))
_row(11, ReadIndexResponse, ("request_id", _UINT), ("success", _BOOL), ("index", _UINT),
     ("leader_id", _OPT_TEXT), ("leader_address", _OPT_TEXT))

MESSAGE_TYPE_CODES: Final[Mapping[type[Message], int]] = {
    cls: code for code, (cls, _) in _SCHEMA.items()}
"""The stable integer ``"t"`` of each message type."""

# Encoders per exact type: (code, ((name, encoder), ...)) resolved once.
_ENCODERS: Final = {cls: (code, tuple((name, enc) for name, _, enc in fields))
                    for code, (cls, fields) in _SCHEMA.items()}


def schema() -> Iterator[tuple[int, type[Message], tuple[str, ...]]]:
    """(type code, class, body field names) for every message type, in code
    order; for documentation and tests."""
    for code in sorted(_SCHEMA):
        cls, fields = _SCHEMA[code]
        yield code, cls, tuple(name for name, _, _ in fields)


# ---------------------------------------------------------------------------
# Encoding


def encode_message(message: Message) -> bytes:
    """The CBOR encoding of ``message`` (one binary WebSocket message).

    Raises ``TypeError`` for an object that is not one of the message types
    (subclasses included: the wire type is the exact class).
    """
    try:
        code, fields = _ENCODERS[type(message)]
    except KeyError:
        raise TypeError(f"not a traft message type: {type(message).__name__}") from None
    body: dict[str, Any] = {}
    for name, enc in fields:
        value = getattr(message, name)
        body[name] = value if enc is None else enc(value)
    return cbor2.dumps({
        "v": PROTOCOL_VERSION,
        "t": code,
        "h": [message.term, message.src, message.src_address, message.dst],
        "b": body,
    })


# ---------------------------------------------------------------------------
# Decoding


def _refuse_tag(tag: object, *args: object) -> NoReturn:
    raise ValueError("CBOR tags are not allowed")


class _NoSemanticTags(dict[int, Any]):
    """Makes cbor2 treat *every* tag number as one whose decoder refuses it,
    including those it would otherwise decode itself (datetimes, bignums,
    shared references, regular expressions, ...). Together with ``tag_hook``
    for the rest, no tag ever reaches cbor2's semantic decoders."""

    def __missing__(self, key: int) -> Callable[..., NoReturn]:
        return _refuse_tag

    def get(self, key: int, default: Any = None) -> Callable[..., NoReturn]:
        return _refuse_tag

    def __contains__(self, key: object) -> bool:
        return True


_NO_TAGS: Final = _NoSemanticTags()


def _cbor_load(data: bytes) -> object:
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp, tag_hook=_refuse_tag, semantic_decoders=_NO_TAGS, max_depth=MAX_DEPTH,
            allow_indefinite=False, allow_duplicate_keys=False, str_errors="strict")
        obj = decoder.decode()
    except RemoteProtocolError:
        raise
    except cbor2.CBORDecodeError as exc:
        reason = str(exc)
        if len(reason) > 120:
            reason = reason[:117] + "..."
        raise RemoteProtocolError(CloseCode.MALFORMED, f"malformed CBOR: {reason}") from exc
    except (ValueError, TypeError, OverflowError, RecursionError, UnicodeError) as exc:
        # Defence in depth: whatever else the C decoder lets escape for bad input.
        raise RemoteProtocolError(CloseCode.MALFORMED,
                                  f"malformed CBOR: {type(exc).__name__}") from exc
    if fp.tell() != len(data):
        raise RemoteProtocolError(
            CloseCode.MALFORMED,
            f"malformed CBOR: {len(data) - fp.tell()} trailing bytes after the message")
    return obj


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Decode one message from a peer; raise :class:`RemoteProtocolError`
    (never anything else) when ``data`` is not a valid message."""
    if not isinstance(data, bytes):
        data = bytes(data)
    obj = _cbor_load(data)
    if type(obj) is not dict:
        _invalid(f"a message must be a map, got {_describe(obj)}")
    version = obj.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise RemoteProtocolError(
            CloseCode.UNSUPPORTED_VERSION,
            f"unsupported protocol version {_describe(version)}; this peer speaks "
            f"{PROTOCOL_VERSION}")
    code = obj.get("t")
    row = _SCHEMA.get(code) if type(code) is int else None
    if row is None:
        raise RemoteProtocolError(CloseCode.UNKNOWN_TYPE,
                                  f"unknown message type {_describe(code)}")
    cls, fields = row
    header = obj.get("h")
    if type(header) is not list or len(header) != 4:
        _invalid(f"h must be an array of 4 items, got {_describe(header)}")
    term, src, src_address, dst = header
    kwargs: dict[str, Any] = {
        "term": _uint(term, "h.term"),
        "src": _text(src, "h.src"),
        "src_address": _text(src_address, "h.src_address"),
        "dst": _text(dst, "h.dst"),
    }
    body = obj.get("b")
    if type(body) is not dict:
        _invalid(f"b must be a map, got {_describe(body)}")
    for name, check, _ in fields:
        try:
            value = body[name]
        except KeyError:
            _invalid(f"{cls.__name__} is missing b.{name}")
        kwargs[name] = check(value, f"b.{name}")
    return cls(**kwargs)
