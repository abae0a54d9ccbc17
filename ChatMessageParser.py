"""Codec for the Clemson Relay Chat (CRC) binary protocol.

The codec knows nothing about sockets: bytes go in, message objects come out, and the builders turn
fields back into bytes. All integers are in network byte order; text is UTF-8 and every length field
counts encoded bytes.

    type 0x00 server registration  source int, last hop int, name len byte, info len half, name, info
    type 0x01 status               source int, destination int, code half, content len int, content
    type 0x02 server quit          source int, replacement id int, content len int, content
    type 0x80 client registration  source int, last hop int, name len byte, info len half, name, info
    type 0x81 client chat          source int, destination int, content len int, content
    type 0x82 client quit          source int, content len int, content

`MessageParser.parse_messages` takes a buffer of whole messages; `StreamDecoder` takes the chunks of
one connection as they arrive, in any size, and returns the messages that are complete.
"""

from __future__ import annotations

import builtins
import struct
from typing import Any, Callable, Dict, Generic, List, Optional, TypeVar, Union, overload

SERVER_REGISTRATION = 0x00
STATUS_UPDATE = 0x01
SERVER_QUIT = 0x02
CLIENT_REGISTRATION = 0x80
CLIENT_CHAT = 0x81
CLIENT_QUIT = 0x82

STATUS_WELCOME = 0x00
STATUS_UNKNOWN_ID = 0x01
STATUS_DUPLICATE_ID = 0x02
STATUS_PROTOCOL_ERROR = 0x03

DEFAULT_MAX_FRAME_SIZE = 64 * 1024

MAX_BYTE = 0xFF
MAX_HALF = 0xFFFF
MAX_INT = 0xFFFFFFFF

_REGISTRATION_HEADER = struct.Struct("!BIIBH")
_STATUS_HEADER = struct.Struct("!BIIHI")
_ID_ID_LENGTH_HEADER = struct.Struct("!BIII")  # client chat and server quit share this layout
_CLIENT_QUIT_HEADER = struct.Struct("!BII")

REGISTRATIONS = (SERVER_REGISTRATION, CLIENT_REGISTRATION)

HEADER_SIZES = {
    SERVER_REGISTRATION: _REGISTRATION_HEADER.size,
    STATUS_UPDATE: _STATUS_HEADER.size,
    SERVER_QUIT: _ID_ID_LENGTH_HEADER.size,
    CLIENT_REGISTRATION: _REGISTRATION_HEADER.size,
    CLIENT_CHAT: _ID_ID_LENGTH_HEADER.size,
    CLIENT_QUIT: _CLIENT_QUIT_HEADER.size,
}


class ProtocolError(ValueError):
    """Bytes that break the CRC protocol: an unknown type, invalid UTF-8, a bad or oversized length.

    `messages` holds the whole messages that came before the bad bytes in the same chunk, so that a
    caller can still act on them.
    """

    def __init__(self, problem: str, messages: Optional[List[Message]] = None) -> None:
        super().__init__(problem)
        self.messages: List[Message] = messages or []


def _encode(text: Optional[str], field: str, limit: int) -> bytes:
    """Encode text as UTF-8, refusing (never truncating) text whose length does not fit its field."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError(f"{field} must be text (str), not {type(text).__name__}")
    encoded = text.encode("utf-8")
    if len(encoded) > limit:
        raise ValueError(f"{field} is {len(encoded)} bytes of UTF-8; its length field holds at most {limit}")
    return encoded


def _check_unsigned(value: int, field: str, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ValueError(f"{field} must be an integer from 0 to {limit}, not {value!r}")
    return value


def _decode(data: bytes, field: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProtocolError(f"{field} is not valid UTF-8 ({error.reason} at byte {error.start})") from None


def frame_length(buffer: Union[bytes, bytearray, memoryview], start: int = 0) -> Optional[int]:
    """Total size of the frame that begins at `start`, or None while its header is still incomplete.

    Raises ProtocolError for an unknown type byte, which is known from the very first byte.
    """
    available = len(buffer) - start
    if available < 1:
        return None
    message_type = buffer[start]
    header_size = HEADER_SIZES.get(message_type)
    if header_size is None:
        raise ProtocolError(f"unknown message type 0x{message_type:02x}")
    if available < header_size:
        return None
    if message_type in REGISTRATIONS:
        name_length = buffer[start + 9]
        info_length = (buffer[start + 10] << 8) | buffer[start + 11]
        return header_size + name_length + info_length
    content_length = int.from_bytes(buffer[start + header_size - 4:start + header_size], "big")
    return header_size + content_length


Build = TypeVar("Build", bound=Callable[..., bytes])


class _Builder(Generic[Build]):
    """The contract calls two things `bytes`: each class's static builder, `StatusUpdateMessage.bytes(...)`,
    and a parsed message's exact frame, `message.bytes`. On the class this gives the builder; a parsed
    message keeps its frame in an instance attribute of the same name, which takes precedence."""

    def __init__(self, build: Build) -> None:
        self.build = build

    @overload
    def __get__(self, instance: None, owner: Any) -> Build: ...

    @overload
    def __get__(self, instance: object, owner: Any) -> builtins.bytes: ...

    def __get__(self, instance: Optional[object], owner: Any) -> Union[Build, builtins.bytes]:
        if instance is None:
            return self.build
        raise AttributeError("this message was not parsed from a frame, so it has no bytes")


class _Message:
    message_type: int
    source_id: int

    def _keep_frame(self, frame: builtins.bytes) -> None:
        vars(self)["bytes"] = frame  # the exact frame this object was parsed from (see _Builder)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in vars(self).items() if name != "bytes")
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)


class _RegistrationMessage(_Message):
    """Shared layout of server and client registrations."""

    TYPE: int
    KIND: str  # "server" or "client": the prefix of the name and info attributes
    last_hop_id: int

    @classmethod
    def _build(cls, source_id: int, last_hop_id: int, name: str, info: str) -> bytes:
        name_bytes = _encode(name, f"{cls.KIND} name", MAX_BYTE)
        info_bytes = _encode(info, f"{cls.KIND} info", MAX_HALF)
        header = _REGISTRATION_HEADER.pack(
            cls.TYPE,
            _check_unsigned(source_id, "source id", MAX_INT),
            _check_unsigned(last_hop_id, "last hop id", MAX_INT),
            len(name_bytes),
            len(info_bytes),
        )
        return header + name_bytes + info_bytes

    @classmethod
    def _parse(cls, frame: bytes) -> "_RegistrationMessage":
        message_type, source_id, last_hop_id, name_length, _ = _REGISTRATION_HEADER.unpack_from(frame)
        header_size = _REGISTRATION_HEADER.size
        message = cls.__new__(cls)
        message.message_type = message_type
        message.source_id = source_id
        message.last_hop_id = last_hop_id
        name = _decode(frame[header_size:header_size + name_length], f"{cls.KIND} name")
        info = _decode(frame[header_size + name_length:], f"{cls.KIND} info")
        setattr(message, f"{cls.KIND}_name", name)
        setattr(message, f"{cls.KIND}_info", info)
        message._keep_frame(frame)
        return message


def _server_registration(source_id: int, last_hop_id: int, server_name: str, server_info: str) -> bytes:
    return ServerRegistrationMessage._build(source_id, last_hop_id, server_name, server_info)


def _client_registration(source_id: int, last_hop_id: int, client_name: str, client_info: str) -> bytes:
    return ClientRegistrationMessage._build(source_id, last_hop_id, client_name, client_info)


def _status(source_id: int, destination_id: int, message_code: int, content: str) -> bytes:
    content_bytes = _encode(content, "status content", MAX_INT)
    header = _STATUS_HEADER.pack(
        STATUS_UPDATE,
        _check_unsigned(source_id, "source id", MAX_INT),
        _check_unsigned(destination_id, "destination id", MAX_INT),
        _check_unsigned(message_code, "status code", MAX_HALF),
        len(content_bytes),
    )
    return header + content_bytes


class ServerRegistrationMessage(_RegistrationMessage):
    TYPE = SERVER_REGISTRATION
    KIND = "server"
    server_name: str
    server_info: str
    bytes = _Builder(_server_registration)


class ClientRegistrationMessage(_RegistrationMessage):
    TYPE = CLIENT_REGISTRATION
    KIND = "client"
    client_name: str
    client_info: str
    bytes = _Builder(_client_registration)


class StatusUpdateMessage(_Message):
    TYPE = STATUS_UPDATE
    destination_id: int
    status_code: int
    content: str
    bytes = _Builder(_status)

    @classmethod
    def _parse(cls, frame: builtins.bytes) -> "StatusUpdateMessage":
        message = cls.__new__(cls)
        message.message_type, message.source_id, message.destination_id, message.status_code, _ = (
            _STATUS_HEADER.unpack_from(frame)
        )
        message.content = _decode(frame[_STATUS_HEADER.size:], "status content")
        message._keep_frame(frame)
        return message


class _TwoIdMessage(_Message):
    """Shared layout of client chats and server quits: source id, a second id, content."""

    TYPE: int
    SECOND_ID: str  # the attribute that holds the second id
    SECOND_ID_FIELD: str  # and its name in error messages
    CONTENT_FIELD: str
    content: str

    @classmethod
    def _build(cls, source_id: int, second_id: int, content: str) -> bytes:
        content_bytes = _encode(content, cls.CONTENT_FIELD, MAX_INT)
        header = _ID_ID_LENGTH_HEADER.pack(
            cls.TYPE,
            _check_unsigned(source_id, "source id", MAX_INT),
            _check_unsigned(second_id, cls.SECOND_ID_FIELD, MAX_INT),
            len(content_bytes),
        )
        return header + content_bytes

    @classmethod
    def _parse(cls, frame: bytes) -> "_TwoIdMessage":
        message = cls.__new__(cls)
        message.message_type, message.source_id, second_id, _ = _ID_ID_LENGTH_HEADER.unpack_from(frame)
        setattr(message, cls.SECOND_ID, second_id)
        message.content = _decode(frame[_ID_ID_LENGTH_HEADER.size:], cls.CONTENT_FIELD)
        message._keep_frame(frame)
        return message


def _client_chat(source_id: int, destination_id: int, content: str) -> bytes:
    return ClientChatMessage._build(source_id, destination_id, content)


def _server_quit(source_id: int, replacement_server_id: int, content: str) -> bytes:
    return ServerQuitMessage._build(source_id, replacement_server_id, content)


def _client_quit(source_id: int, content: str) -> bytes:
    content_bytes = _encode(content, "client quit content", MAX_INT)
    header = _CLIENT_QUIT_HEADER.pack(CLIENT_QUIT, _check_unsigned(source_id, "source id", MAX_INT), len(content_bytes))
    return header + content_bytes


class ClientChatMessage(_TwoIdMessage):
    TYPE = CLIENT_CHAT
    SECOND_ID, SECOND_ID_FIELD, CONTENT_FIELD = "destination_id", "destination id", "chat content"
    destination_id: int
    bytes = _Builder(_client_chat)


class ServerQuitMessage(_TwoIdMessage):
    TYPE = SERVER_QUIT
    SECOND_ID, SECOND_ID_FIELD, CONTENT_FIELD = "replacement_id", "replacement server id", "server quit content"
    replacement_id: int
    bytes = _Builder(_server_quit)


class ClientQuitMessage(_Message):
    TYPE = CLIENT_QUIT
    content: str
    bytes = _Builder(_client_quit)

    @classmethod
    def _parse(cls, frame: builtins.bytes) -> "ClientQuitMessage":
        message = cls.__new__(cls)
        message.message_type, message.source_id, _ = _CLIENT_QUIT_HEADER.unpack_from(frame)
        message.content = _decode(frame[_CLIENT_QUIT_HEADER.size:], "client quit content")
        message._keep_frame(frame)
        return message


Message = Union[
    ServerRegistrationMessage,
    StatusUpdateMessage,
    ServerQuitMessage,
    ClientRegistrationMessage,
    ClientChatMessage,
    ClientQuitMessage,
]

_PARSERS: Dict[int, Callable[[bytes], Any]] = {  # each returns its own class
    SERVER_REGISTRATION: ServerRegistrationMessage._parse,
    STATUS_UPDATE: StatusUpdateMessage._parse,
    SERVER_QUIT: ServerQuitMessage._parse,
    CLIENT_REGISTRATION: ClientRegistrationMessage._parse,
    CLIENT_CHAT: ClientChatMessage._parse,
    CLIENT_QUIT: ClientQuitMessage._parse,
}


def parse_frame(frame: bytes) -> Message:
    """Parse exactly one whole frame; its header must declare exactly its length."""
    length = frame_length(frame)
    if length != len(frame):
        declared = "an incomplete header" if length is None else f"a header that declares {length}"
        raise ProtocolError(f"a frame of {len(frame)} bytes has {declared}")
    message: Message = _PARSERS[frame[0]](bytes(frame))
    return message


class MessageParser:
    @staticmethod
    def parse_messages(data: bytes) -> List[Message]:
        """Parse a buffer that holds one or more whole messages and nothing else."""
        messages: List[Message] = []
        offset = 0
        while offset < len(data):
            length = frame_length(data, offset)
            if length is None or offset + length > len(data):
                raise ProtocolError(
                    f"incomplete message at byte {offset}: the buffer ends at byte {len(data)}"
                    + ("" if length is None else f" but the message needs {length} bytes")
                )
            messages.append(parse_frame(bytes(data[offset:offset + length])))
            offset += length
        return messages


class StreamDecoder:
    """Cuts the byte stream of one connection into messages.

    Feed it chunks of any size, one byte at a time included; it returns every message that is now
    complete and keeps the rest. A chat, status or quit that declares more than `max_frame_size` bytes is
    refused as soon as its header is in, without waiting for the body (its 4-byte length could make a
    peer hold gigabytes). A registration is never refused for its size: its one-byte and two-byte length
    fields bound it (at 65,802 bytes), and every legal one must pass. After a ProtocolError the stream
    has lost its framing: the decoder refuses any further input, and the caller should drop the connection.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._error: Optional[ProtocolError] = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole message."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> List[Message]:
        if self._error is not None:
            raise self._error
        self._buffer += chunk
        messages: List[Message] = []
        offset = 0
        try:
            while True:
                length = frame_length(self._buffer, offset)
                if length is None:
                    break
                if length > self.max_frame_size and self._buffer[offset] not in REGISTRATIONS:
                    raise ProtocolError(
                        f"message of type 0x{self._buffer[offset]:02x} declares {length} bytes;"
                        f" the limit is {self.max_frame_size}"
                    )
                if offset + length > len(self._buffer):
                    break
                messages.append(parse_frame(bytes(self._buffer[offset:offset + length])))
                offset += length
        except ProtocolError as error:
            error.messages = messages
            self._error = ProtocolError(f"the stream broke earlier: {error}")
            raise
        finally:
            del self._buffer[:offset]
        return messages
