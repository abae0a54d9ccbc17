"""Tests of the CRC codec on its own: builders, MessageParser.parse_messages and StreamDecoder.

No sockets here. Every expected frame is laid out independently with `struct`, field by field, from
the wire format table in the contract, so that a slip in the codec's own struct formats cannot hide
behind the same slip in the test.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ChatMessageParser import (
    CLIENT_CHAT,
    CLIENT_QUIT,
    CLIENT_REGISTRATION,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZES,
    SERVER_QUIT,
    SERVER_REGISTRATION,
    STATUS_DUPLICATE_ID,
    STATUS_UNKNOWN_ID,
    STATUS_UPDATE,
    STATUS_WELCOME,
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    MessageParser,
    ProtocolError,
    ServerQuitMessage,
    ServerRegistrationMessage,
    StatusUpdateMessage,
    StreamDecoder,
    parse_frame,
)

MAX_ID = 2**32 - 1
MAX_NAME = 255
MAX_INFO = 65535

Text = Union[str, bytes]  # bytes let a test put raw, possibly invalid, UTF-8 into a frame


def raw(text: Text) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


# Independent layouts, straight from the contract's table: one struct call per field.

def registration_layout(type_byte: int, name_param: str, info_param: str) -> Callable[[dict], bytes]:
    def layout(fields: dict) -> bytes:
        name, info = raw(fields[name_param]), raw(fields[info_param])
        return (
            struct.pack("!B", type_byte)
            + struct.pack("!I", fields["source_id"])
            + struct.pack("!I", fields["last_hop_id"])
            + struct.pack("!B", len(name))
            + struct.pack("!H", len(info))
            + name
            + info
        )

    return layout


def status_layout(fields: dict) -> bytes:
    content = raw(fields["content"])
    return (
        struct.pack("!B", 0x01)
        + struct.pack("!I", fields["source_id"])
        + struct.pack("!I", fields["destination_id"])
        + struct.pack("!H", fields["message_code"])  # a half, not a byte: the contract settles this
        + struct.pack("!I", len(content))
        + content
    )


def server_quit_layout(fields: dict) -> bytes:
    content = raw(fields["content"])
    return (
        struct.pack("!B", 0x02)
        + struct.pack("!I", fields["source_id"])
        + struct.pack("!I", fields["replacement_server_id"])
        + struct.pack("!I", len(content))
        + content
    )


def chat_layout(fields: dict) -> bytes:
    content = raw(fields["content"])
    return (
        struct.pack("!B", 0x81)
        + struct.pack("!I", fields["source_id"])
        + struct.pack("!I", fields["destination_id"])
        + struct.pack("!I", len(content))
        + content
    )


def client_quit_layout(fields: dict) -> bytes:
    content = raw(fields["content"])
    return struct.pack("!B", 0x82) + struct.pack("!I", fields["source_id"]) + struct.pack("!I", len(content)) + content


@dataclass(frozen=True)
class Spec:
    """One message type: how to build it, how it must look on the wire, what parsing must give back."""

    label: str
    cls: type
    type_byte: int
    header_size: int
    sample: Dict[str, object]  # builder keyword arguments, with the contract's parameter names
    layout: Callable[[dict], bytes]
    numbers: Dict[str, Tuple[int, str, int, str]]  # param -> (offset, struct format, limit, name in errors)
    texts: Dict[str, Tuple[int, str]]  # param -> (length limit, name in errors)
    attributes: Dict[str, str]  # builder param -> attribute of the parsed message
    body_param: str  # the text that comes last in the frame

    def build(self, fields: dict) -> bytes:
        return self.cls.bytes(**fields)

    def frame(self) -> bytes:
        return self.build(self.sample)

    def with_fields(self, **changes: object) -> Dict[str, object]:
        return {**self.sample, **changes}


SOURCE = (1, "!I", MAX_ID, "source id")
SECOND_ID_OFFSET = 5

SPECS: List[Spec] = [
    Spec(
        label="server registration",
        cls=ServerRegistrationMessage,
        type_byte=0x00,
        header_size=12,
        sample=dict(source_id=17, last_hop_id=4, server_name="Zürich-1", server_info="gateway ☃ east"),
        layout=registration_layout(0x00, "server_name", "server_info"),
        numbers=dict(source_id=SOURCE, last_hop_id=(SECOND_ID_OFFSET, "!I", MAX_ID, "last hop id")),
        texts=dict(server_name=(MAX_NAME, "server name"), server_info=(MAX_INFO, "server info")),
        attributes=dict(
            source_id="source_id", last_hop_id="last_hop_id", server_name="server_name", server_info="server_info"
        ),
        body_param="server_info",
    ),
    Spec(
        label="status",
        cls=StatusUpdateMessage,
        type_byte=0x01,
        header_size=15,
        sample=dict(source_id=3, destination_id=99, message_code=0x0102, content="Unknown ID 7 — héllo"),
        layout=status_layout,
        numbers=dict(
            source_id=SOURCE,
            destination_id=(SECOND_ID_OFFSET, "!I", MAX_ID, "destination id"),
            message_code=(9, "!H", 0xFFFF, "status code"),
        ),
        texts=dict(content=(MAX_ID, "content")),
        attributes=dict(
            source_id="source_id", destination_id="destination_id", message_code="status_code", content="content"
        ),
        body_param="content",
    ),
    Spec(
        label="server quit",
        cls=ServerQuitMessage,
        type_byte=0x02,
        header_size=13,
        sample=dict(source_id=8, replacement_server_id=9, content="going down, ask 9 ✈"),
        layout=server_quit_layout,
        numbers=dict(source_id=SOURCE, replacement_server_id=(SECOND_ID_OFFSET, "!I", MAX_ID, "replacement")),
        texts=dict(content=(MAX_ID, "content")),
        attributes=dict(source_id="source_id", replacement_server_id="replacement_id", content="content"),
        body_param="content",
    ),
    Spec(
        label="client registration",
        cls=ClientRegistrationMessage,
        type_byte=0x80,
        header_size=12,
        sample=dict(source_id=1000, last_hop_id=0, client_name="Zoë", client_info="on a 📱 phone"),
        layout=registration_layout(0x80, "client_name", "client_info"),
        numbers=dict(source_id=SOURCE, last_hop_id=(SECOND_ID_OFFSET, "!I", MAX_ID, "last hop id")),
        texts=dict(client_name=(MAX_NAME, "client name"), client_info=(MAX_INFO, "client info")),
        attributes=dict(
            source_id="source_id", last_hop_id="last_hop_id", client_name="client_name", client_info="client_info"
        ),
        body_param="client_info",
    ),
    Spec(
        label="client chat",
        cls=ClientChatMessage,
        type_byte=0x81,
        header_size=13,
        sample=dict(source_id=1000, destination_id=2000, content='"Hi" héllo 👋 wörld'),
        layout=chat_layout,
        numbers=dict(source_id=SOURCE, destination_id=(SECOND_ID_OFFSET, "!I", MAX_ID, "destination id")),
        texts=dict(content=(MAX_ID, "content")),
        attributes=dict(source_id="source_id", destination_id="destination_id", content="content"),
        body_param="content",
    ),
    Spec(
        label="client quit",
        cls=ClientQuitMessage,
        type_byte=0x82,
        header_size=9,
        sample=dict(source_id=2000, content="bye ✋"),
        layout=client_quit_layout,
        numbers=dict(source_id=SOURCE),
        texts=dict(content=(MAX_ID, "content")),
        attributes=dict(source_id="source_id", content="content"),
        body_param="content",
    ),
]
SPEC_IDS = [spec.label for spec in SPECS]
KNOWN_TYPES = {spec.type_byte for spec in SPECS}
UNKNOWN_TYPES = [value for value in range(256) if value not in KNOWN_TYPES]

NUMBER_FIELDS = [(spec, param) for spec in SPECS for param in spec.numbers]
NUMBER_IDS = [f"{spec.label}-{param}" for spec, param in NUMBER_FIELDS]
TEXT_FIELDS = [(spec, param) for spec in SPECS for param in spec.texts]
TEXT_IDS = [f"{spec.label}-{param}" for spec, param in TEXT_FIELDS]
SHORT_TEXT_FIELDS = [(spec, param) for spec, param in TEXT_FIELDS if spec.texts[param][0] < MAX_ID]
SHORT_TEXT_IDS = [f"{spec.label}-{param}" for spec, param in SHORT_TEXT_FIELDS]


def expected_view(spec: Spec, fields: dict, frame: bytes) -> Tuple[str, dict, bytes]:
    """What parsing `frame` must give, in the same shape as `view`."""
    attributes = {"message_type": spec.type_byte}
    attributes.update({spec.attributes[param]: fields[param] for param in spec.attributes})
    return spec.cls.__name__, attributes, frame


def view(message: object) -> Tuple[str, dict, bytes]:
    """The contract's attributes of a parsed message, as plain data that compares and prints well."""
    spec = next(spec for spec in SPECS if type(message) is spec.cls)
    names = ["message_type", *spec.attributes.values()]
    return type(message).__name__, {name: getattr(message, name) for name in names}, message.bytes


def assert_parsed(message: object, spec: Spec, fields: dict, frame: bytes) -> None:
    expected = expected_view(spec, fields, frame)
    seen = view(message)
    assert seen == expected, f"expected {expected!r}, parsed {seen!r}"
    assert type(message.bytes) is bytes, f"expected .bytes to be bytes, saw {type(message.bytes).__name__}"


def cut(data: bytes, points: List[int]) -> List[bytes]:
    """Split data at the given offsets (any order, duplicates allowed) into consecutive chunks."""
    edges = [0, *sorted(min(max(point, 0), len(data)) for point in points), len(data)]
    return [data[start:end] for start, end in zip(edges, edges[1:])]


def feed_all(decoder: StreamDecoder, chunks: List[bytes]) -> list:
    messages: list = []
    for chunk in chunks:
        messages.extend(decoder.feed(chunk))
    return messages


def glued_samples() -> Tuple[bytes, list]:
    frames = [spec.frame() for spec in SPECS]
    expected = [expected_view(spec, spec.sample, frame) for spec, frame in zip(SPECS, frames)]
    return b"".join(frames), expected


# --- constants ------------------------------------------------------------------------------------

def test_type_and_status_constants_match_the_contract() -> None:
    seen = (SERVER_REGISTRATION, STATUS_UPDATE, SERVER_QUIT, CLIENT_REGISTRATION, CLIENT_CHAT, CLIENT_QUIT)
    assert seen == (0x00, 0x01, 0x02, 0x80, 0x81, 0x82), f"expected the contract's type codes, saw {seen}"
    codes = (STATUS_WELCOME, STATUS_UNKNOWN_ID, STATUS_DUPLICATE_ID)
    assert codes == (0, 1, 2), f"expected status codes (0, 1, 2), saw {codes}"


def test_header_sizes_match_the_contract() -> None:
    expected = {0x00: 12, 0x01: 15, 0x02: 13, 0x80: 12, 0x81: 13, 0x82: 9}
    assert HEADER_SIZES == expected, f"expected {expected}, saw {HEADER_SIZES}"


# --- builders against the independent layout, then parsed back ------------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_builder_gives_the_contract_layout(spec: Spec) -> None:
    built = spec.frame()
    expected = spec.layout(spec.sample)
    assert built == expected, f"{spec.label}: expected {expected.hex()}, built {built.hex()}"
    assert built[0] == spec.type_byte, f"expected type byte 0x{spec.type_byte:02x}, saw 0x{built[0]:02x}"
    text_size = sum(len(raw(spec.sample[param])) for param in spec.texts)
    assert len(built) - text_size == spec.header_size, (
        f"{spec.label}: expected a {spec.header_size}-byte header, saw {len(built) - text_size}"
    )


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_builder_takes_positional_arguments_in_contract_order(spec: Spec) -> None:
    positional = spec.cls.bytes(*spec.sample.values())
    assert positional == spec.frame(), f"expected {spec.frame().hex()}, built {positional.hex()}"


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_parse_messages_gives_back_every_contract_attribute(spec: Spec) -> None:
    frame = spec.layout(spec.sample)
    messages = MessageParser.parse_messages(frame)
    assert len(messages) == 1, f"expected one message from one frame, saw {messages!r}"
    assert_parsed(messages[0], spec, spec.sample, frame)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_parse_messages_accepts_a_bytearray(spec: Spec) -> None:
    frame = spec.frame()
    messages = MessageParser.parse_messages(bytearray(frame))
    assert len(messages) == 1, f"expected one message, saw {messages!r}"
    assert_parsed(messages[0], spec, spec.sample, frame)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_parse_frame_gives_the_same_message(spec: Spec) -> None:
    frame = spec.frame()
    assert_parsed(parse_frame(frame), spec, spec.sample, frame)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_parse_frame_refuses_extra_bytes_after_the_frame(spec: Spec) -> None:
    with pytest.raises(ProtocolError):
        parse_frame(spec.frame() + b"\x00")


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_all_texts_empty(spec: Spec) -> None:
    fields = spec.with_fields(**{param: "" for param in spec.texts})
    frame = spec.build(fields)
    assert frame == spec.layout(fields), f"expected {spec.layout(fields).hex()}, built {frame.hex()}"
    assert len(frame) == spec.header_size, f"expected a bare {spec.header_size}-byte header, saw {len(frame)} bytes"
    assert_parsed(MessageParser.parse_messages(frame)[0], spec, fields, frame)


def test_status_code_is_a_big_endian_half() -> None:
    frame = StatusUpdateMessage.bytes(1, 2, 0x0102, "")
    assert frame[9:11] == b"\x01\x02", f"expected the code as bytes 01 02 at offset 9, saw {frame[9:11].hex()}"
    assert frame[11:15] == b"\x00\x00\x00\x00", f"expected a zero content length at 11, saw {frame[11:15].hex()}"


# --- every field at its limits --------------------------------------------------------------------

@pytest.mark.parametrize("spec,param", NUMBER_FIELDS, ids=NUMBER_IDS)
@pytest.mark.parametrize("edge", ["zero", "max"])
def test_number_at_its_limits(spec: Spec, param: str, edge: str) -> None:
    offset, fmt, limit, _ = spec.numbers[param]
    value = 0 if edge == "zero" else limit
    fields = spec.with_fields(**{param: value})
    frame = spec.build(fields)
    assert frame == spec.layout(fields), f"expected {spec.layout(fields).hex()}, built {frame.hex()}"
    (on_wire,) = struct.unpack_from(fmt, frame, offset)
    assert on_wire == value, f"expected {param}={value} at offset {offset}, saw {on_wire}"
    assert_parsed(MessageParser.parse_messages(frame)[0], spec, fields, frame)


@pytest.mark.parametrize("spec,param", NUMBER_FIELDS, ids=NUMBER_IDS)
@pytest.mark.parametrize("bad", [-1, "above"])
def test_number_out_of_range_is_refused(spec: Spec, param: str, bad: object) -> None:
    _, _, limit, error_name = spec.numbers[param]
    value = limit + 1 if bad == "above" else bad
    with pytest.raises(ValueError) as caught:
        spec.build(spec.with_fields(**{param: value}))
    text = str(caught.value)
    assert error_name in text and str(limit) in text, (
        f"expected the error to name {error_name!r} and the limit {limit}, saw {text!r}"
    )


@pytest.mark.parametrize("spec,param", NUMBER_FIELDS, ids=NUMBER_IDS)
@pytest.mark.parametrize("value", ["7", 7.0, None], ids=["str", "float", "None"])
def test_number_of_the_wrong_type_is_refused(spec: Spec, param: str, value: object) -> None:
    with pytest.raises(ValueError):
        spec.build(spec.with_fields(**{param: value}))


@pytest.mark.parametrize("spec,param", SHORT_TEXT_FIELDS, ids=SHORT_TEXT_IDS)
@pytest.mark.parametrize(
    "unit",
    ["a", "é", "€", "😀"],
    ids=["1-byte", "2-byte", "3-byte", "4-byte"],
)
def test_text_of_exactly_its_limit_in_bytes_is_accepted(spec: Spec, param: str, unit: str) -> None:
    limit, _ = spec.texts[param]
    width = len(unit.encode("utf-8"))
    text = unit * (limit // width) + "a" * (limit % width)  # exactly `limit` bytes, whole characters
    assert len(text.encode("utf-8")) == limit
    fields = spec.with_fields(**{param: text})
    frame = spec.build(fields)
    assert frame == spec.layout(fields), f"{param} of {limit} bytes: built bytes differ from the layout"
    assert_parsed(MessageParser.parse_messages(frame)[0], spec, fields, frame)


@pytest.mark.parametrize("spec,param", SHORT_TEXT_FIELDS, ids=SHORT_TEXT_IDS)
@pytest.mark.parametrize("unit", ["a", "é", "€", "😀"], ids=["1-byte", "2-byte", "3-byte", "4-byte"])
def test_text_one_byte_over_its_limit_is_refused(spec: Spec, param: str, unit: str) -> None:
    limit, error_name = spec.texts[param]
    width = len(unit.encode("utf-8"))
    text = unit * (limit // width) + "a" * (limit % width) + "a"  # limit + 1 bytes, fewer characters
    assert len(text.encode("utf-8")) == limit + 1
    with pytest.raises(ValueError) as caught:
        spec.build(spec.with_fields(**{param: text}))
    message = str(caught.value)
    assert error_name in message and str(limit) in message, (
        f"expected the error to name {error_name!r} and the limit {limit}, saw {message!r}"
    )


@pytest.mark.parametrize("kind", [ServerRegistrationMessage, ClientRegistrationMessage])
def test_name_of_128_two_byte_characters_is_256_bytes_and_refused(kind: type) -> None:
    name = "é" * 128  # 128 characters fit a byte, 256 encoded bytes do not
    with pytest.raises(ValueError, match="255"):
        kind.bytes(1, 0, name, "")


@pytest.mark.parametrize("kind", [ServerRegistrationMessage, ClientRegistrationMessage])
def test_info_of_32768_two_byte_characters_is_refused(kind: type) -> None:
    with pytest.raises(ValueError, match="65535"):
        kind.bytes(1, 0, "n", "é" * 32768)


CONTENT_SPECS = [spec for spec in SPECS if spec.texts[spec.body_param][0] == MAX_ID]


@pytest.mark.parametrize("spec", CONTENT_SPECS, ids=[spec.label for spec in CONTENT_SPECS])
def test_long_content_beyond_a_half_is_carried_whole(spec: Spec) -> None:
    """Content lengths are 4-byte ints, so 70 000 bytes of content must go through unchanged."""
    fields = spec.with_fields(**{spec.body_param: "ü" * 35_000})
    frame = spec.build(fields)
    assert frame == spec.layout(fields), "70 000-byte content: built bytes differ from the layout"
    assert_parsed(MessageParser.parse_messages(frame)[0], spec, fields, frame)


def test_lone_surrogate_is_refused_when_building() -> None:
    with pytest.raises(ValueError):
        ClientChatMessage.bytes(1, 2, "\ud800")


# --- parse_messages on whole buffers --------------------------------------------------------------

def test_parse_messages_splits_glued_frames_in_order() -> None:
    stream, expected = glued_samples()
    seen = [view(message) for message in MessageParser.parse_messages(stream + stream)]
    assert seen == expected + expected, f"expected {expected + expected!r}, saw {seen!r}"


def test_parse_messages_of_nothing_is_no_messages() -> None:
    assert MessageParser.parse_messages(b"") == []


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_parse_messages_refuses_a_trailing_partial_frame(spec: Spec) -> None:
    stream, _ = glued_samples()
    frame = spec.frame()
    for keep in sorted({1, spec.header_size - 1, spec.header_size, len(frame) - 1}):
        with pytest.raises(ProtocolError, match="incomplete") as caught:
            MessageParser.parse_messages(stream + frame[:keep])
        assert str(len(stream)) in str(caught.value), (
            f"expected the error to say where the partial frame starts (byte {len(stream)}), saw {caught.value}"
        )


@pytest.mark.parametrize("type_byte", UNKNOWN_TYPES, ids=[f"0x{value:02x}" for value in UNKNOWN_TYPES])
def test_parse_messages_refuses_an_unknown_type_byte(type_byte: int) -> None:
    good = ClientQuitMessage.bytes(1, "")
    for data in (bytes([type_byte]) + bytes(20), good + bytes([type_byte]) + bytes(20)):
        with pytest.raises(ProtocolError, match=f"0x{type_byte:02x}"):
            MessageParser.parse_messages(data)


INVALID_UTF8 = [b"\xff", b"ok\xc3", b"\xc0\x80", b"\xed\xa0\x80", b"\x80abc"]
INVALID_IDS = ["ff", "truncated", "overlong", "surrogate", "lone-continuation"]


@pytest.mark.parametrize("spec,param", TEXT_FIELDS, ids=TEXT_IDS)
@pytest.mark.parametrize("bad", INVALID_UTF8, ids=INVALID_IDS)
def test_invalid_utf8_in_each_text_field_is_a_protocol_error(spec: Spec, param: str, bad: bytes) -> None:
    frame = spec.layout(spec.with_fields(**{param: bad}))
    _, error_name = spec.texts[param]
    with pytest.raises(ProtocolError) as caught:
        MessageParser.parse_messages(frame)
    text = str(caught.value)
    assert "UTF-8" in text and error_name in text, f"expected the error to name {error_name!r} and UTF-8, saw {text!r}"


@pytest.mark.parametrize("kind", [SERVER_REGISTRATION, CLIENT_REGISTRATION])
def test_a_character_split_between_name_and_info_is_refused(kind: int) -> None:
    """'é' is c3 a9: each field must be valid on its own, even if name + info would decode together."""
    spec = next(spec for spec in SPECS if spec.type_byte == kind)
    name_param, info_param = spec.texts
    frame = spec.layout(spec.with_fields(**{name_param: b"x\xc3", info_param: b"\xa9y"}))
    with pytest.raises(ProtocolError, match="name"):
        MessageParser.parse_messages(frame)


# --- StreamDecoder --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_decoder_every_split_point_of_every_frame(spec: Spec) -> None:
    frame = spec.frame()
    expected = [expected_view(spec, spec.sample, frame)]
    for split in range(len(frame) + 1):
        decoder = StreamDecoder()
        first = [view(message) for message in decoder.feed(frame[:split])]
        whole_at_once = split == len(frame)
        assert first == (expected if whole_at_once else []), f"split at {split}: first chunk gave {first!r}"
        assert decoder.pending == (0 if whole_at_once else split), (
            f"split at {split}: expected {0 if whole_at_once else split} pending, saw {decoder.pending}"
        )
        second = [view(message) for message in decoder.feed(frame[split:])]
        assert first + second == expected, f"split at {split}: expected {expected!r}, saw {first + second!r}"
        assert decoder.pending == 0, f"split at {split}: expected nothing pending, saw {decoder.pending}"


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_decoder_one_byte_at_a_time(spec: Spec) -> None:
    frame = spec.frame()
    decoder = StreamDecoder()
    for index in range(len(frame) - 1):
        early = decoder.feed(frame[index:index + 1])
        assert early == [], f"byte {index} of {len(frame)}: expected no message yet, saw {early!r}"
        assert decoder.pending == index + 1, f"expected {index + 1} pending, saw {decoder.pending}"
    last = [view(message) for message in decoder.feed(frame[-1:])]
    expected = [expected_view(spec, spec.sample, frame)]
    assert last == expected, f"expected {expected!r} on the last byte, saw {last!r}"
    assert decoder.pending == 0


def test_decoder_many_frames_glued_in_one_chunk() -> None:
    stream, expected = glued_samples()
    seen = [view(message) for message in StreamDecoder().feed(stream * 5)]
    assert seen == expected * 5, f"expected {len(expected) * 5} messages in order, saw {seen!r}"


def test_decoder_glued_frames_cut_at_every_point() -> None:
    stream, expected = glued_samples()
    for split in range(len(stream) + 1):
        decoder = StreamDecoder()
        seen = [view(message) for message in feed_all(decoder, [stream[:split], stream[split:]])]
        assert seen == expected, f"cut at {split} of {len(stream)}: expected {expected!r}, saw {seen!r}"
        assert decoder.pending == 0, f"cut at {split}: expected nothing pending, saw {decoder.pending}"


def test_decoder_glued_frames_one_byte_at_a_time() -> None:
    stream, expected = glued_samples()
    decoder = StreamDecoder()
    seen = [view(message) for message in feed_all(decoder, [stream[i:i + 1] for i in range(len(stream))])]
    assert seen == expected, f"expected {expected!r}, saw {seen!r}"


def test_decoder_empty_chunk_changes_nothing() -> None:
    decoder = StreamDecoder()
    frame = SPECS[0].frame()
    assert decoder.feed(frame[:5]) == []
    assert decoder.feed(b"") == [] and decoder.pending == 5, f"expected 5 pending, saw {decoder.pending}"


def test_decoder_pending_counts_leftover_bytes() -> None:
    stream, _ = glued_samples()
    first, second = SPECS[0].frame(), SPECS[1].frame()
    decoder = StreamDecoder()
    assert decoder.pending == 0, f"expected a new decoder to hold nothing, saw {decoder.pending}"
    messages = decoder.feed(first + second[:7])
    assert len(messages) == 1 and decoder.pending == 7, (
        f"expected one message and 7 pending, saw {len(messages)} messages and {decoder.pending} pending"
    )
    messages = decoder.feed(second[7:] + first[:1])
    assert len(messages) == 1 and decoder.pending == 1, (
        f"expected one message and 1 pending, saw {len(messages)} messages and {decoder.pending} pending"
    )


BAD_TAILS = {
    "unknown type": bytes([0x7F]),
    "invalid UTF-8": chat_layout(dict(source_id=1, destination_id=2, content=b"\xff")),
    "oversized": struct.pack("!BIII", 0x81, 1, 2, DEFAULT_MAX_FRAME_SIZE),  # declares 13 + 64 KiB
}


@pytest.mark.parametrize("bad", list(BAD_TAILS.values()), ids=list(BAD_TAILS))
def test_decoder_keeps_the_messages_before_a_bad_frame(bad: bytes) -> None:
    stream, expected = glued_samples()
    decoder = StreamDecoder()
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(stream + bad)
    seen = [view(message) for message in caught.value.messages]
    assert seen == expected, f"expected the {len(expected)} messages before the bad frame, saw {seen!r}"


@pytest.mark.parametrize("bad", list(BAD_TAILS.values()), ids=list(BAD_TAILS))
def test_decoder_error_holds_only_this_chunks_messages(bad: bytes) -> None:
    """A message finished in the failing chunk is kept; one already returned is not given twice."""
    first, second = SPECS[0].frame(), SPECS[4].frame()
    decoder = StreamDecoder()
    assert len(decoder.feed(first + second[:6])) == 1
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(second[6:] + bad)
    seen = [view(message) for message in caught.value.messages]
    expected = [expected_view(SPECS[4], SPECS[4].sample, second)]
    assert seen == expected, f"expected only the chat finished in this chunk, saw {seen!r}"


@pytest.mark.parametrize("type_byte", UNKNOWN_TYPES, ids=[f"0x{value:02x}" for value in UNKNOWN_TYPES])
def test_decoder_unknown_type_byte_fails_at_once(type_byte: int) -> None:
    with pytest.raises(ProtocolError, match=f"0x{type_byte:02x}"):
        StreamDecoder().feed(bytes([type_byte]))


def test_decoder_unknown_type_right_after_a_frame_fails_at_once() -> None:
    frame = SPECS[5].frame()
    with pytest.raises(ProtocolError) as caught:
        StreamDecoder().feed(frame + b"\x03")
    assert [message.bytes for message in caught.value.messages] == [frame]


def oversized_header(spec: Spec, total: int) -> bytes:
    """The header alone of a `spec` frame that declares `total` bytes, all in its last text field."""
    texts = {param: b"" for param in spec.texts}
    texts[spec.body_param] = b"x" * (total - spec.header_size)
    return spec.layout(spec.with_fields(**texts))[:spec.header_size]


LENGTH_SPECS = [spec for spec in SPECS if spec.type_byte not in (SERVER_REGISTRATION, CLIENT_REGISTRATION)]


@pytest.mark.parametrize("spec", LENGTH_SPECS, ids=[spec_id for spec, spec_id in zip(SPECS, SPEC_IDS)
                                                    if spec in LENGTH_SPECS])
def test_decoder_refuses_an_oversized_frame_as_soon_as_its_header_is_in(spec: Spec) -> None:
    limit = 100
    header = oversized_header(spec, limit + 1)
    decoder = StreamDecoder(max_frame_size=limit)
    for index in range(len(header) - 1):
        early = decoder.feed(header[index:index + 1])
        assert early == [], f"header byte {index}: expected to wait for the header, saw {early!r}"
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(header[-1:])  # no body byte is ever sent
    text = str(caught.value)
    assert str(limit + 1) in text and str(limit) in text, (
        f"expected the error to give the declared size {limit + 1} and the limit {limit}, saw {text!r}"
    )


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_decoder_accepts_a_frame_of_exactly_the_limit(spec: Spec) -> None:
    limit = 100
    without_body = spec.build(spec.with_fields(**{spec.body_param: ""}))
    fields = spec.with_fields(**{spec.body_param: "y" * (limit - len(without_body))})
    frame = spec.build(fields)
    assert len(frame) == limit
    seen = [view(message) for message in StreamDecoder(max_frame_size=limit).feed(frame)]
    assert seen == [expected_view(spec, fields, frame)], f"expected the {limit}-byte frame to decode, saw {seen!r}"


@pytest.mark.parametrize("kind", [ServerRegistrationMessage, ClientRegistrationMessage])
@pytest.mark.parametrize("limit", [64, DEFAULT_MAX_FRAME_SIZE])
def test_the_largest_registration_decodes_whatever_the_limit(kind: type, limit: int) -> None:
    frame = kind.bytes(MAX_ID, MAX_ID, "n" * MAX_NAME, "i" * MAX_INFO)
    assert len(frame) == 12 + MAX_NAME + MAX_INFO > DEFAULT_MAX_FRAME_SIZE
    messages = StreamDecoder(max_frame_size=limit).feed(frame)
    assert [message.bytes for message in messages] == [frame], "a legal registration is never refused for its size"


def test_decoder_default_limit_is_64_kib() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 65536, f"expected 65536, saw {DEFAULT_MAX_FRAME_SIZE}"
    assert StreamDecoder().max_frame_size == 65536, f"expected 65536, saw {StreamDecoder().max_frame_size}"
    at_limit = struct.pack("!BIII", 0x81, 1, 2, 65536 - 13)
    decoder = StreamDecoder()
    assert decoder.feed(at_limit) == [] and decoder.pending == 13, "expected a 64 KiB frame to be awaited"
    messages = decoder.feed(b"z" * (65536 - 13))
    assert len(messages) == 1 and len(messages[0].bytes) == 65536, "expected the 64 KiB frame to decode"
    over = struct.pack("!BIII", 0x81, 1, 2, 65536 - 12)
    with pytest.raises(ProtocolError, match="65536"):
        StreamDecoder().feed(over)


@pytest.mark.parametrize("bad", list(BAD_TAILS.values()), ids=list(BAD_TAILS))
def test_decoder_keeps_refusing_after_an_error(bad: bytes) -> None:
    decoder = StreamDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(bad)
    for later in (SPECS[5].frame(), b""):
        with pytest.raises(ProtocolError) as caught:
            decoder.feed(later)
        again = caught.value.messages
        assert again == [], f"expected no messages once the stream broke, saw {again!r}"


# --- properties -----------------------------------------------------------------------------------

names = st.text(max_size=60)  # at most 240 bytes even if every character takes 4
texts = st.text(max_size=80)


def fields_for(spec: Spec) -> st.SearchStrategy:
    strategies = {}
    for param in spec.sample:
        if param in spec.numbers:
            strategies[param] = st.integers(0, spec.numbers[param][2])
        elif spec.texts[param][0] == MAX_NAME:
            strategies[param] = names
        else:
            strategies[param] = texts
    return st.fixed_dictionaries(strategies).map(lambda fields: (spec, fields))


messages_strategy = st.one_of([fields_for(spec) for spec in SPECS])
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(items=st.lists(messages_strategy, max_size=8), data=st.data())
def test_any_messages_in_any_chunks_decode_to_the_same_messages(items: list, data: st.DataObject) -> None:
    frames = [spec.build(fields) for spec, fields in items]
    for (spec, fields), frame in zip(items, frames):
        assert frame == spec.layout(fields), f"{spec.label} {fields!r}: built bytes differ from the layout"
    expected = [expected_view(spec, fields, frame) for (spec, fields), frame in zip(items, frames)]
    stream = b"".join(frames)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cut points")
    decoder = StreamDecoder()
    seen = [view(message) for message in feed_all(decoder, cut(stream, points))]
    assert seen == expected, f"expected {expected!r}, saw {seen!r}"
    assert decoder.pending == 0, f"expected nothing pending, saw {decoder.pending}"
    whole = [view(message) for message in MessageParser.parse_messages(stream)]
    assert whole == expected, f"parse_messages: expected {expected!r}, saw {whole!r}"


def mutated_streams() -> st.SearchStrategy:
    """Valid streams with some bytes overwritten: garbage that gets past the type byte."""

    @st.composite
    def build(draw: Callable) -> bytes:
        items = draw(st.lists(messages_strategy, min_size=1, max_size=4))
        stream = bytearray(b"".join(spec.build(fields) for spec, fields in items))
        for _ in range(draw(st.integers(0, 4))):
            stream[draw(st.integers(0, len(stream) - 1))] = draw(st.integers(0, 255))
        return bytes(stream)

    return build()


typed_garbage = st.lists(
    st.tuples(st.sampled_from(sorted(KNOWN_TYPES)), st.binary(max_size=40)), max_size=6
).map(lambda parts: b"".join(bytes([type_byte]) + rest for type_byte, rest in parts))
garbage = st.one_of(st.binary(max_size=300), typed_garbage, mutated_streams())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=garbage, data=st.data())
def test_arbitrary_bytes_in_arbitrary_chunks_decode_or_raise_protocol_error(blob: bytes, data: st.DataObject) -> None:
    points = data.draw(st.lists(st.integers(0, len(blob)), max_size=12), label="cut points")
    decoder = StreamDecoder(max_frame_size=data.draw(st.sampled_from([64, DEFAULT_MAX_FRAME_SIZE]), label="limit"))
    messages: list = []
    try:
        for chunk in cut(blob, points):
            messages.extend(decoder.feed(chunk))
    except ProtocolError as error:
        messages.extend(error.messages)
        consumed = b"".join(message.bytes for message in messages)
        assert blob.startswith(consumed), "expected the messages before the error to be a prefix of the input"
    else:
        consumed = b"".join(message.bytes for message in messages)
        assert decoder.pending == len(blob) - len(consumed), (
            f"expected decoded frames plus {decoder.pending} pending bytes to make up all {len(blob)} bytes,"
            f" saw {len(consumed)} decoded"
        )
        assert blob.startswith(consumed), "expected the decoded frames to be a prefix of the input"
    for message in messages:
        assert parse_frame(message.bytes) == message, f"expected {message!r} to parse again from its own bytes"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=garbage)
def test_parse_messages_on_arbitrary_bytes_returns_or_raises_protocol_error(blob: bytes) -> None:
    try:
        messages = MessageParser.parse_messages(blob)
    except ProtocolError:
        return
    joined = b"".join(message.bytes for message in messages)
    assert joined == blob, f"expected the parsed frames to cover all {len(blob)} bytes, they cover {len(joined)}"


@pytest.mark.parametrize("not_text", [b"bytes", 42, ["list"]])
def test_builders_refuse_text_that_is_not_a_string_with_a_clear_error(not_text):
    with pytest.raises(ValueError, match="chat content must be text"):
        ClientChatMessage.bytes(1, 2, not_text)
    with pytest.raises(ValueError, match="client name must be text"):
        ClientRegistrationMessage.bytes(1, 0, not_text, "")
