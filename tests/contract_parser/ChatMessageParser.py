"""A CRC parser cut down to exactly the contract's API, and nothing more.

tests/test_contract_guard.py puts this file beside a copy of ChatServer.py so that the scenario suite
runs with a server that can only reach what the course's own parser offers: MessageParser.parse_messages
and the six message classes with their fields and static builders. No constants, no stream decoder,
no helpers; a buffer that does not hold whole messages is refused.
"""

import struct as _struct  # private, so this module offers only the contract's names


def _text(data):
    return data.decode("utf-8")


class ServerRegistrationMessage:
    def __init__(self, frame):
        self.message_type, self.source_id, self.last_hop_id, name_length, _ = _struct.unpack_from("!BIIBH", frame)
        self.server_name = _text(frame[12:12 + name_length])
        self.server_info = _text(frame[12 + name_length:])
        self.bytes = frame

    @staticmethod
    def bytes(source_id, last_hop_id, server_name, server_info):
        name, info = server_name.encode("utf-8"), server_info.encode("utf-8")
        return _struct.pack("!BIIBH", 0x00, source_id, last_hop_id, len(name), len(info)) + name + info


class ClientRegistrationMessage:
    def __init__(self, frame):
        self.message_type, self.source_id, self.last_hop_id, name_length, _ = _struct.unpack_from("!BIIBH", frame)
        self.client_name = _text(frame[12:12 + name_length])
        self.client_info = _text(frame[12 + name_length:])
        self.bytes = frame

    @staticmethod
    def bytes(source_id, last_hop_id, client_name, client_info):
        name, info = client_name.encode("utf-8"), client_info.encode("utf-8")
        return _struct.pack("!BIIBH", 0x80, source_id, last_hop_id, len(name), len(info)) + name + info


class StatusUpdateMessage:
    def __init__(self, frame):
        self.message_type, self.source_id, self.destination_id, self.status_code, _ = _struct.unpack_from("!BIIHI", frame)
        self.content = _text(frame[15:])
        self.bytes = frame

    @staticmethod
    def bytes(source_id, destination_id, message_code, content):
        text = content.encode("utf-8")
        return _struct.pack("!BIIHI", 0x01, source_id, destination_id, message_code, len(text)) + text


class ServerQuitMessage:
    def __init__(self, frame):
        self.message_type, self.source_id, self.replacement_id, _ = _struct.unpack_from("!BIII", frame)
        self.content = _text(frame[13:])
        self.bytes = frame

    @staticmethod
    def bytes(source_id, replacement_server_id, content):
        text = content.encode("utf-8")
        return _struct.pack("!BIII", 0x02, source_id, replacement_server_id, len(text)) + text


class ClientChatMessage:
    def __init__(self, frame):
        self.message_type, self.source_id, self.destination_id, _ = _struct.unpack_from("!BIII", frame)
        self.content = _text(frame[13:])
        self.bytes = frame

    @staticmethod
    def bytes(source_id, destination_id, content):
        text = content.encode("utf-8")
        return _struct.pack("!BIII", 0x81, source_id, destination_id, len(text)) + text


class ClientQuitMessage:
    def __init__(self, frame):
        self.message_type, self.source_id, _ = _struct.unpack_from("!BII", frame)
        self.content = _text(frame[9:])
        self.bytes = frame

    @staticmethod
    def bytes(source_id, content):
        text = content.encode("utf-8")
        return _struct.pack("!BII", 0x82, source_id, len(text)) + text


# type byte -> (class, header size); registrations (12) end in name and info lengths, the rest in a content length
_LAYOUTS = {
    0x00: (ServerRegistrationMessage, 12),
    0x01: (StatusUpdateMessage, 15),
    0x02: (ServerQuitMessage, 13),
    0x80: (ClientRegistrationMessage, 12),
    0x81: (ClientChatMessage, 13),
    0x82: (ClientQuitMessage, 9),
}


class MessageParser:
    @staticmethod
    def parse_messages(data):
        data = bytes(data)
        messages = []
        offset = 0
        while offset < len(data):
            if data[offset] not in _LAYOUTS:
                raise ValueError(f"unknown message type {data[offset]:#04x} at byte {offset}")
            message_class, header_size = _LAYOUTS[data[offset]]
            if offset + header_size > len(data):
                raise ValueError(f"incomplete header at byte {offset}")
            if header_size == 12:
                name_length, info_length = _struct.unpack_from("!BH", data, offset + 9)
                size = header_size + name_length + info_length
            else:
                size = header_size + _struct.unpack_from("!I", data, offset + header_size - 4)[0]
            if offset + size > len(data):
                raise ValueError(f"incomplete message at byte {offset}: needs {size} bytes")
            messages.append(message_class(data[offset:offset + size]))
            offset += size
        return messages
