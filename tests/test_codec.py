"""The wire codec (traft._codec): round trips of every message type, the
exact bytes of the documented examples, and strict rejection of bad input
with RemoteProtocolError (and nothing else)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traft import TransportError
from traft._codec import (
    MESSAGE_TYPE_CODES,
    PROTOCOL_VERSION,
    CloseCode,
    RemoteProtocolError,
    decode_message,
    encode_message,
    schema,
)
from traft._messages import (
    MESSAGE_TYPES,
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
from traft._types import Configuration, Log, LogType, Server, Suffrage

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# -- strategies --------------------------------------------------------------

u64 = st.integers(min_value=0, max_value=2**64 - 1)
text = st.text(max_size=12)
logs = st.builds(Log, index=u64, term=u64, type=st.sampled_from(LogType),
                 data=st.binary(max_size=40), extensions=st.binary(max_size=8),
                 appended_at=st.floats(allow_nan=False, allow_infinity=False))
configurations = st.builds(
    Configuration,
    servers=st.lists(st.builds(Server, id=text, address=text,
                               suffrage=st.sampled_from(Suffrage)), max_size=4).map(tuple))
header: dict[str, Any] = dict(term=u64, src=text, src_address=text, dst=text)

MESSAGE_STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    RequestVote: st.builds(RequestVote, **header, last_log_index=u64, last_log_term=u64,
                           prevote=st.booleans(), leadership_transfer=st.booleans()),
    RequestVoteResponse: st.builds(RequestVoteResponse, **header, granted=st.booleans(),
                                   prevote=st.booleans()),
    AppendEntries: st.builds(AppendEntries, **header, prev_log_index=u64, prev_log_term=u64,
                             entries=st.lists(logs, max_size=5).map(tuple), leader_commit=u64),
    AppendEntriesResponse: st.builds(AppendEntriesResponse, **header, success=st.booleans(),
                                     match_index=u64, hint=u64),
    Heartbeat: st.builds(Heartbeat, **header, leader_commit=u64, seq=u64),
    HeartbeatResponse: st.builds(HeartbeatResponse, **header, seq=u64, last_log_index=u64),
    TimeoutNow: st.builds(TimeoutNow, **header),
    InstallSnapshot: st.builds(InstallSnapshot, **header, snapshot_id=text, last_log_index=u64,
                               last_log_term=u64, configuration=configurations,
                               configuration_index=u64, size=u64, offset=u64,
                               data=st.binary(max_size=64), done=st.booleans()),
    InstallSnapshotResponse: st.builds(InstallSnapshotResponse, **header, snapshot_id=text,
                                       success=st.booleans(), next_offset=u64),
    ReadIndexRequest: st.builds(ReadIndexRequest, **header, request_id=u64),
    ReadIndexResponse: st.builds(ReadIndexResponse, **header, request_id=u64,
                                 success=st.booleans(), index=u64,
                                 leader_id=st.none() | text, leader_address=st.none() | text),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())

# Arbitrary CBOR data items (what a confused or hostile peer might send).
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**64, max_value=2**64 - 1)
    | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=3) | st.integers(-3, 3), children, max_size=5),
    max_leaves=20)


def hb(**overrides: Any) -> Heartbeat:
    fields: dict[str, Any] = dict(term=2, src="n1", src_address="10.0.0.1:7000", dst="n2",
                                  leader_commit=5, seq=9)
    fields.update(overrides)
    return Heartbeat(**fields)


def raw(message: Message) -> dict[Any, Any]:
    """The decoded CBOR map of a valid message, for building bad variants."""
    out = cbor2.loads(encode_message(message))
    assert isinstance(out, dict)
    return out


def rejects(data: bytes, code: CloseCode, match: str = "") -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(data)
    assert info.value.code == code, info.value
    assert re.search(match, str(info.value)), str(info.value)
    return info.value


# -- round trips -------------------------------------------------------------


def test_every_message_type_has_a_stable_code() -> None:
    assert set(MESSAGE_TYPE_CODES) == set(MESSAGE_TYPES)
    assert {cls.__name__: code for cls, code in MESSAGE_TYPE_CODES.items()} == {
        "RequestVote": 1, "RequestVoteResponse": 2, "AppendEntries": 3,
        "AppendEntriesResponse": 4, "Heartbeat": 5, "HeartbeatResponse": 6, "TimeoutNow": 7,
        "InstallSnapshot": 8, "InstallSnapshotResponse": 9, "ReadIndexRequest": 10,
        "ReadIndexResponse": 11}
    assert set(MESSAGE_STRATEGIES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(MESSAGE_STRATEGIES[cls])
    decoded = decode_message(encode_message(message))
    assert type(decoded) is cls
    assert decoded == message


@settings(max_examples=200, deadline=None)
@given(messages)
def test_round_trip_any_message(message: Message) -> None:
    encoded = encode_message(message)
    assert decode_message(encoded) == message
    assert decode_message(bytearray(encoded)) == message
    assert decode_message(memoryview(encoded)) == message


def test_decoded_entries_have_log_types_and_float_times() -> None:
    ae = AppendEntries(term=1, src="a", src_address="a:1", dst="b", prev_log_index=0,
                       prev_log_term=0, leader_commit=0,
                       entries=(Log(1, 1, LogType.CONFIGURATION, b"c", b"", 0.0),))
    (entry,) = decode_message(encode_message(ae)).entries  # type: ignore[attr-defined]
    assert entry.type is LogType.CONFIGURATION
    assert type(entry.appended_at) is float


def test_appended_at_may_be_an_integer_on_the_wire() -> None:
    m = raw(AppendEntries(term=1, src="a", src_address="a:1", dst="b", prev_log_index=0,
                          prev_log_term=0, leader_commit=0, entries=(Log(1, 1),)))
    m["b"]["entries"][0][5] = 1700000000
    decoded = decode_message(cbor2.dumps(m))
    assert isinstance(decoded, AppendEntries)
    assert decoded.entries[0].appended_at == 1700000000.0


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_message("hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_message(Message(term=1, src="a", src_address="a", dst="b"))


# -- the documented bytes ----------------------------------------------------

HEARTBEAT_HEX = (
    "a4"                                  # map(4)
    "6176" "01"                           # "v": 1
    "6174" "05"                           # "t": 5 (Heartbeat)
    "6168" "84" "02" "626e31"             # "h": [2, "n1",
    "6d31302e302e302e313a37303030"        #       "10.0.0.1:7000",
    "626e32"                              #       "n2"]
    "6162" "a2"                           # "b": {
    "6d6c65616465725f636f6d6d6974" "05"   #   "leader_commit": 5,
    "63736571" "09"                       #   "seq": 9}
)


def test_heartbeat_bytes_are_exactly_as_documented() -> None:
    assert encode_message(hb()).hex() == HEARTBEAT_HEX
    assert decode_message(bytes.fromhex(HEARTBEAT_HEX)) == hb()
    assert HEARTBEAT_HEX in re.sub(r"\s+", "", DOC.read_text())


def test_append_entries_layout() -> None:
    ae = AppendEntries(term=3, src="n1", src_address="h:1", dst="n2", prev_log_index=7,
                       prev_log_term=2, leader_commit=6,
                       entries=(Log(8, 3, LogType.COMMAND, b"set x=1", b"", 1.5),))
    assert cbor2.loads(encode_message(ae)) == {
        "v": 1, "t": 3, "h": [3, "n1", "h:1", "n2"],
        "b": {"prev_log_index": 7, "prev_log_term": 2, "leader_commit": 6,
              "entries": [[8, 3, 0, b"set x=1", b"", 1.5]]}}


def test_protocol_document_lists_every_type_and_field() -> None:
    doc = DOC.read_text()
    for code, cls, fields in schema():
        heading = f"### {code} {cls.__name__}"
        assert heading in doc, heading
        section = re.split(r"\n##+ ", doc.split(heading, 1)[1], maxsplit=1)[0]
        rows = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
        assert rows == list(fields), (cls.__name__, rows)


# -- bad input -----------------------------------------------------------------


def test_error_is_a_transport_error_with_a_code() -> None:
    err = rejects(b"", CloseCode.MALFORMED)
    assert isinstance(err, TransportError)
    assert err.reason == str(err)


@pytest.mark.parametrize("data, code, match", [
    (b"", CloseCode.MALFORMED, "malformed CBOR"),
    (b"\xff", CloseCode.MALFORMED, "malformed CBOR"),
    (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", CloseCode.MALFORMED, "malformed CBOR"),
    (b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00", CloseCode.MALFORMED, "malformed CBOR"),
    (bytes.fromhex(HEARTBEAT_HEX) + b"\x00", CloseCode.MALFORMED, "1 trailing bytes"),
    (b"\xc1\x00", CloseCode.MALFORMED, "tag"),                      # epoch datetime
    (b"\xc2\x41\x01", CloseCode.MALFORMED, "tag"),                  # bignum
    (b"\xd8\x1c\x81\xd8\x1d\x00", CloseCode.MALFORMED, "tag"),      # shared reference cycle
    (b"\xd8\x64\x00", CloseCode.MALFORMED, "tag"),                  # date (tag 100)
    (b"\xd9\xd9\xf7" + bytes.fromhex(HEARTBEAT_HEX), CloseCode.MALFORMED, "tag"),  # self-describe
    (b"\xd8\x23\x62.*", CloseCode.MALFORMED, "tag"),                # regular expression
    (b"\xda\x00\x01\x00\x00\x00", CloseCode.MALFORMED, "tag"),      # unknown tag
    (b"\xbf\x61v\x01\xff", CloseCode.MALFORMED, "indefinite"),
    (b"\x5f\x41a\xff", CloseCode.MALFORMED, "indefinite"),
    (b"\xa2\x61v\x01\x61v\x01", CloseCode.MALFORMED, "uplicate"),
    (b"\x81" * 50 + b"\x00", CloseCode.MALFORMED, "depth"),
    (b"\x62\xff\xfe", CloseCode.MALFORMED, "malformed CBOR"),       # invalid UTF-8
    (b"\x00", CloseCode.INVALID, "must be a map"),
    (b"\x80", CloseCode.INVALID, "must be a map"),
    (cbor2.dumps({}), CloseCode.UNSUPPORTED_VERSION, "unsupported protocol version None"),
    (cbor2.dumps({"v": 2, "t": 5}), CloseCode.UNSUPPORTED_VERSION, "version 2"),
    (cbor2.dumps({"v": True, "t": 5}), CloseCode.UNSUPPORTED_VERSION, "True"),
    (cbor2.dumps({"v": 1.0, "t": 5}), CloseCode.UNSUPPORTED_VERSION, "1.0"),
    (cbor2.dumps({"v": 1}), CloseCode.UNKNOWN_TYPE, "unknown message type None"),
    (cbor2.dumps({"v": 1, "t": 0}), CloseCode.UNKNOWN_TYPE, "type 0"),
    (cbor2.dumps({"v": 1, "t": 99}), CloseCode.UNKNOWN_TYPE, "type 99"),
    (cbor2.dumps({"v": 1, "t": "Heartbeat"}), CloseCode.UNKNOWN_TYPE, "text"),
    (cbor2.dumps({"v": 1, "t": True}), CloseCode.UNKNOWN_TYPE, "True"),
    (cbor2.dumps({"v": 1, "t": 5}), CloseCode.INVALID, "h must be an array of 4"),
    (cbor2.dumps({"v": 1, "t": 5, "h": [1, "a", "b"]}), CloseCode.INVALID, "h must be"),
    (cbor2.dumps({"v": 1, "t": 5, "h": [-1, "a", "b", "c"], "b": {}}), CloseCode.INVALID,
     r"h\.term must be an unsigned integer"),
    (cbor2.dumps({"v": 1, "t": 5, "h": [2**64 - 1, "a", "b", "c"]}), CloseCode.INVALID,
     "b must be a map"),
    (cbor2.dumps({"v": 1, "t": 5, "h": [1, b"a", "b", "c"], "b": {}}), CloseCode.INVALID,
     r"h\.src must be a text string, got bytes"),
    (cbor2.dumps({"v": 1, "t": 5, "h": [1, "a", "b", "c"], "b": []}), CloseCode.INVALID,
     "b must be a map"),
    (cbor2.dumps({"v": 1, "t": 5, "h": [1, "a", "b", "c"], "b": {"seq": 1}}),
     CloseCode.INVALID, r"Heartbeat is missing b\.leader_commit"),
])
def test_bad_input_is_refused_with_a_reason(data: bytes, code: CloseCode, match: str) -> None:
    rejects(data, code, match)


def test_integers_beyond_64_bits_are_refused() -> None:
    m = raw(hb())
    m["h"][0] = 2**64  # only encodable as a bignum tag
    rejects(cbor2.dumps(m), CloseCode.MALFORMED, "tag")
    m["h"][0] = -(2**64)  # the most negative plain CBOR integer
    err = rejects(cbor2.dumps(m), CloseCode.INVALID, r"h\.term must be an unsigned integer")
    assert str(-(2**64)) in str(err)


def test_error_messages_never_echo_large_payloads() -> None:
    m = raw(hb())
    m["h"][1] = b"x" * 100_000
    err = rejects(cbor2.dumps(m), CloseCode.INVALID, "bytes of length 100000")
    assert len(str(err)) < 200


# One valid sample per type, and for each of its fields values of the wrong
# CBOR type: each must be refused as INVALID naming the field.
SAMPLES: list[Message] = [
    RequestVote(term=1, src="a", src_address="a:1", dst="b", last_log_index=3, last_log_term=1),
    RequestVoteResponse(term=1, src="a", src_address="a:1", dst="b", granted=True),
    AppendEntries(term=1, src="a", src_address="a:1", dst="b", prev_log_index=0,
                  prev_log_term=0, entries=(Log(1, 1, data=b"x"),), leader_commit=0),
    AppendEntriesResponse(term=1, src="a", src_address="a:1", dst="b", success=False, hint=4),
    hb(),
    HeartbeatResponse(term=1, src="a", src_address="a:1", dst="b", seq=1, last_log_index=2),
    TimeoutNow(term=1, src="a", src_address="a:1", dst="b"),
    InstallSnapshot(term=1, src="a", src_address="a:1", dst="b", snapshot_id="1-2-3",
                    last_log_index=9, last_log_term=1,
                    configuration=Configuration((Server("a", "a:1"),
                                                 Server("c", "c:1", Suffrage.NONVOTER))),
                    configuration_index=2, size=10, offset=0, data=b"0123456789", done=True),
    InstallSnapshotResponse(term=1, src="a", src_address="a:1", dst="b", snapshot_id="x",
                            success=True, next_offset=10),
    ReadIndexRequest(term=1, src="a", src_address="a:1", dst="b", request_id=7),
    ReadIndexResponse(term=1, src="a", src_address="a:1", dst="b", request_id=7, success=False,
                      leader_id="c", leader_address=None),
]
WRONG: list[object] = [None, True, -1, -(2**64), 1.5, "1", b"1", [1], {"a": 1}]


def _acceptable(kind_sample: object, value: object) -> bool:
    """Whether ``value`` has the CBOR type of the field whose sample is ``kind_sample``."""
    if type(kind_sample) is bool:
        return type(value) is bool
    if type(kind_sample) is int:
        return type(value) is int and 0 <= value < 2**64
    if type(kind_sample) is str:
        return type(value) is str
    if type(kind_sample) is bytes:
        return type(value) is bytes
    if kind_sample is None:  # ReadIndexResponse's optional text fields
        return value is None or type(value) is str
    return False


def test_samples_cover_every_type() -> None:
    assert {type(s) for s in SAMPLES} == set(MESSAGE_TYPES)
    for s in SAMPLES:
        assert decode_message(encode_message(s)) == s


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_every_field_is_type_checked(sample: Message) -> None:
    base = raw(sample)
    for name, value in list(base["b"].items()):
        for wrong in WRONG:
            if _acceptable(value, wrong) or (name.startswith("leader_") and wrong is None):
                continue
            m = raw(sample)
            m["b"][name] = wrong
            rejects(cbor2.dumps(m), CloseCode.INVALID, rf"b\.{name}")
        m = raw(sample)
        del m["b"][name]
        rejects(cbor2.dumps(m), CloseCode.INVALID, rf"missing b\.{name}")


@pytest.mark.parametrize("position, wrong, match", [
    (None, "x", r"entries must be an array"),
    (0, [1, 1, 0, b""], r"entries\[0\] must be an array of 6"),
    (0, [1, 1, 0, b"", b"", 0.0, 0], r"entries\[0\] must be an array of 6"),
    (0, [-1, 1, 0, b"", b"", 0.0], r"entries\[0\]\.index"),
    (0, [1, -(2**64), 0, b"", b"", 0.0], r"entries\[0\]\.term"),
    (0, [1, 1, 4, b"", b"", 0.0], r"entries\[0\]\.type must be a log type code"),
    (0, [1, 1, True, b"", b"", 0.0], r"entries\[0\]\.type"),
    (0, [1, 1, 0, "data", b"", 0.0], r"entries\[0\]\.data must be a byte string"),
    (0, [1, 1, 0, b"", None, 0.0], r"entries\[0\]\.extensions"),
    (0, [1, 1, 0, b"", b"", "now"], r"entries\[0\]\.appended_at must be a number"),
    (0, [1, 1, 0, b"", b"", math.inf], r"entries\[0\]\.appended_at must be finite"),
    (0, [1, 1, 0, b"", b"", math.nan], r"entries\[0\]\.appended_at must be finite"),
    (1, [2, 1, 0, b"", b"", True], r"entries\[1\]\.appended_at"),
])
def test_log_entries_are_checked(position: int | None, wrong: object, match: str) -> None:
    m = raw(SAMPLES[2])
    if position is None:
        m["b"]["entries"] = wrong
    else:
        m["b"]["entries"] = [[1, 1, 0, b"", b"", 0.0]] * position + [wrong]
    rejects(cbor2.dumps(m), CloseCode.INVALID, match)


@pytest.mark.parametrize("wrong, match", [
    ({"a": 1}, r"configuration must be an array"),
    ([["a", "a:1"]], r"configuration\[0\] must be an array of 3"),
    ([[1, "a:1", 0]], r"configuration\[0\]\.id must be a text"),
    ([["a", b"a:1", 0]], r"configuration\[0\]\.address must be a text"),
    ([["a", "a:1", 2]], r"configuration\[0\]\.suffrage must be 0 \(voter\) or 1"),
    ([["a", "a:1", "voter"]], r"configuration\[0\]\.suffrage"),
])
def test_configuration_is_checked(wrong: object, match: str) -> None:
    m = raw(SAMPLES[7])
    m["b"]["configuration"] = wrong
    rejects(cbor2.dumps(m), CloseCode.INVALID, match)


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    m = raw(hb())
    m["x"] = [1, 2, 3]
    m["b"]["future_field"] = {"nested": True}
    assert decode_message(cbor2.dumps(m)) == hb()


def test_version_constant() -> None:
    assert PROTOCOL_VERSION == 1
    assert raw(hb())["v"] == PROTOCOL_VERSION


# -- property: nothing but RemoteProtocolError, whatever the input ----------------


def _decode_or_refuse(data: bytes) -> None:
    try:
        decoded = decode_message(data)
    except RemoteProtocolError as exc:
        assert exc.code in (CloseCode.MALFORMED, CloseCode.INVALID,
                            CloseCode.UNSUPPORTED_VERSION, CloseCode.UNKNOWN_TYPE)
        assert 0 < len(str(exc)) < 300
    else:
        assert isinstance(decoded, MESSAGE_TYPES)
        # Whatever decodes is a faithful message: it re-encodes and decodes equal.
        assert decode_message(encode_message(decoded)) == decoded


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_are_refused(data: bytes) -> None:
    _decode_or_refuse(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cbor_values)
def test_arbitrary_cbor_values_are_refused(value: object) -> None:
    _decode_or_refuse(cbor2.dumps(value))


@settings(max_examples=500, deadline=None)
@given(messages, st.data())
def test_mutated_messages_decode_or_are_refused(message: Message, data: st.DataObject) -> None:
    encoded = bytearray(encode_message(message))
    how = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    at = data.draw(st.integers(0, len(encoded) - 1))
    if how == "flip":
        encoded[at] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        del encoded[at:]
    else:
        encoded[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    _decode_or_refuse(bytes(encoded))


@settings(max_examples=300, deadline=None)
@given(messages, cbor_values, st.data())
def test_fields_replaced_by_random_values_decode_or_are_refused(
        message: Message, value: object, data: st.DataObject) -> None:
    m = raw(message)
    where = data.draw(st.sampled_from(["h", "b"] + (["v", "t"])))
    if where in ("v", "t"):
        m[where] = value
    elif where == "h":
        m["h"][data.draw(st.integers(0, 3))] = value
    elif m["b"]:
        m["b"][data.draw(st.sampled_from(sorted(m["b"])))] = value
    _decode_or_refuse(cbor2.dumps(m))
