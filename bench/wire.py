"""Raw-socket CRC clients for the benchmark harness.

Setup (registering, waiting until clients know each other) goes through the kit's codec. The timed
parts never decode: they count bytes, because every frame they expect has a length known in advance.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Set

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the kit's codec, at the project root
from ChatMessageParser import (
    CLIENT_CHAT,
    CLIENT_REGISTRATION,
    HEADER_SIZES,
    ClientChatMessage,
    ClientRegistrationMessage,
    StatusUpdateMessage,
    StreamDecoder,
)

HOST = "127.0.0.1"
CHAT_HEADER = HEADER_SIZES[CLIENT_CHAT]
FRAME_SIZE = 64  # every benchmark chat frame is 64 bytes in all: its header and 51 bytes of content
CONTENT = "x" * (FRAME_SIZE - CHAT_HEADER)


def chat_frame(source_id: int, destination_id: int) -> bytes:
    frame = ClientChatMessage.bytes(source_id, destination_id, CONTENT)
    assert len(frame) == FRAME_SIZE
    return frame


def registration_frame(client_id: int, name: str) -> bytes:
    return ClientRegistrationMessage.bytes(client_id, 0, name, "")


def welcome_size(name: str) -> int:
    """Bytes of the welcome a server sends a client called `name` (the text is fixed by the contract)."""
    return len(StatusUpdateMessage.bytes(1, 1, 0, f"Welcome to the Clemson Relay Chat network {name}"))


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SetupClient:
    """A client on a blocking socket that registers and can wait until it knows given client ids."""

    def __init__(self, port: int, client_id: int, name: str) -> None:
        self.id = client_id
        self.sock = connect(port)
        self.decoder = StreamDecoder()
        self.known: Set[int] = set()
        self.sock.sendall(registration_frame(client_id, name))

    def wait_to_know(self, ids: Iterable[int], timeout: float = 20.0) -> None:
        wanted = set(ids) - {self.id}
        deadline = time.monotonic() + timeout
        while not wanted <= self.known:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"client {self.id} expected registrations of {sorted(wanted)} within"
                                   f" {timeout:g} s but knows only {sorted(self.known)}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"client {self.id}: the server closed the link during setup")
            for message in self.decoder.feed(chunk):
                if message.message_type == CLIENT_REGISTRATION:
                    self.known.add(message.source_id)
        if self.decoder.pending:
            raise RuntimeError(f"client {self.id}: {self.decoder.pending} stray bytes after setup")

    def close(self) -> None:
        self.sock.close()


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Blocking read of exactly `size` bytes."""
    view = memoryview(bytearray(size))
    got = 0
    while got < size:
        count = sock.recv_into(view[got:])
        if not count:
            raise RuntimeError(f"the link closed after {got} of {size} expected bytes")
        got += count
    return bytes(view)
