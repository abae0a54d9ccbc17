"""The server's own copy of the protocol, tested without sockets.

The server must stand alone in the course's kit, so it repeats the codec's type codes, status codes and
frame layouts: these tests keep the two equal. Its FrameCutter (bytes in, messages out) is tested here
on its own, as h11 tests its parser: every cut of a stream, glued frames, the size limit, and bad bytes.
"""

from __future__ import annotations

from typing import List

import pytest

import ChatMessageParser as codec
import ChatServer as server
from ChatServer import FrameCutter, FramedChatMessage

SAMPLES = [
    codec.ServerRegistrationMessage.bytes(70000, 0, "srv", "info é"),
    codec.StatusUpdateMessage.bytes(1, 0, 2, "A machine has already registered with ID 7"),
    codec.ServerQuitMessage.bytes(3, 0, "going"),
    codec.ClientRegistrationMessage.bytes(4000000000, 12, "kim", ""),
    codec.ClientChatMessage.bytes(5, 6, '"Hi" ☃'),
    codec.ClientQuitMessage.bytes(5, "bye"),
    codec.ClientChatMessage.bytes(5, 6, ""),
]
STREAM = b"".join(SAMPLES)


def test_the_servers_constants_are_the_codecs() -> None:
    for name in ("SERVER_REGISTRATION", "STATUS_UPDATE", "SERVER_QUIT", "CLIENT_REGISTRATION", "CLIENT_CHAT",
                 "CLIENT_QUIT", "STATUS_WELCOME", "STATUS_UNKNOWN_ID", "STATUS_DUPLICATE_ID", "STATUS_PROTOCOL_ERROR",
                 "DEFAULT_MAX_FRAME_SIZE"):
        assert getattr(server, name) == getattr(codec, name), f"{name}: server {getattr(server, name)}," \
                                                              f" codec {getattr(codec, name)}"
    assert {kind: header for kind, (header, _) in server.FRAME_LAYOUTS.items()} == codec.HEADER_SIZES
    assert server.CHAT_HEADER_SIZE == codec.HEADER_SIZES[codec.CLIENT_CHAT]


def test_the_servers_length_and_last_hop_offsets_match_frames_the_codec_builds() -> None:
    for frame in SAMPLES:
        header, length_at = server.FRAME_LAYOUTS[frame[0]]
        if length_at is not None:
            assert int.from_bytes(frame[length_at:length_at + 4], "big") == len(frame) - header, frame
    registration = codec.ClientRegistrationMessage.bytes(9, 123456, "x", "y")
    assert int.from_bytes(registration[server.LAST_HOP], "big") == 123456


def test_a_stream_cut_at_every_point_gives_every_message_exactly_once() -> None:
    expected = codec.MessageParser.parse_messages(STREAM)
    for cut in range(len(STREAM) + 1):
        cutter = FrameCutter(1 << 16)
        messages = cutter.feed(STREAM[:cut]) + cutter.feed(STREAM[cut:])
        assert [message.bytes for message in messages] == SAMPLES, f"cut at byte {cut}"
        assert cutter.pending == 0 and cutter.problem is None
    chat = [message for message in FrameCutter(1 << 16).feed(STREAM) if message.message_type == codec.CLIENT_CHAT][0]
    assert isinstance(chat, FramedChatMessage)
    assert (chat.source_id, chat.destination_id, chat.content) == (5, 6, '"Hi" ☃') == (
        expected[4].source_id, expected[4].destination_id, expected[4].content)


def test_a_stream_fed_one_byte_at_a_time_keeps_what_is_not_whole_yet() -> None:
    cutter = FrameCutter(1 << 16)
    messages: List[object] = []
    for position in range(len(STREAM)):
        messages += cutter.feed(STREAM[position:position + 1])
        assert cutter.pending <= max(len(frame) for frame in SAMPLES)
    assert len(messages) == len(SAMPLES)


def test_a_length_above_the_limit_is_refused_as_soon_as_the_header_is_in() -> None:
    cutter = FrameCutter(100)
    header = codec.ClientChatMessage.bytes(1, 2, "x" * 200)[:13]
    assert cutter.feed(SAMPLES[5] + header) and cutter.problem == "a frame declares 213 bytes; the limit is 100"
    assert cutter.feed(b"more") == [], "a cutter that has lost the framing takes nothing more"


def test_the_largest_registration_passes_whatever_the_limit() -> None:
    largest = codec.ClientRegistrationMessage.bytes(7, 0, "n" * 255, "i" * 65535)
    (message,) = FrameCutter(1024).feed(largest)
    assert (message.source_id, len(message.client_info)) == (7, 65535)


@pytest.mark.parametrize("bad, problem", [
    (b"\x07" + bytes(20), "unknown message type 0x07"),
    (codec.ClientChatMessage.bytes(1, 2, "ab")[:13] + b"\xff\xfe", "chat content is not valid UTF-8"),
    (codec.ClientQuitMessage.bytes(1, "ab")[:9] + b"\xc3\x28", "malformed message of type 0x82"),
])
def test_bad_bytes_stop_the_cutter_after_the_messages_before_them(bad: bytes, problem: str) -> None:
    cutter = FrameCutter(1 << 16)
    messages = cutter.feed(SAMPLES[4] + bad + SAMPLES[5])
    assert [message.bytes for message in messages] == [SAMPLES[4]], "only the whole message before the bad one"
    assert cutter.problem is not None and problem in cutter.problem
