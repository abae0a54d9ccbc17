"""The network-connectivity tester: a server that records the raw bytes it receives and sends.

It is built as a subclass of whichever CRCServer is under test, so it exercises that server's own
sockets, accept and connect code, and write buffers. It acts on nothing it receives, so each server
only ever sends its own first registration: what the case checks is that those bytes leave and
arrive intact, one registration per chunk.

As in the course's recorder, `recvd_messages_asdqw` holds each chunk received, in hex, and
`sent_messages_asdqw` is never filled (the course's files expect [] there). The chunks sent are kept in
a key of our own, `sent_chunks`.
"""

from __future__ import annotations

import selectors
from typing import Any, List


def make_connectivity_tester(server_class: type) -> type:
    class ConnectivityTester(server_class):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # Set before the server's own __init__, in case that already touches the network.
            self.recvd_messages_asdqw: List[str] = []
            self.sent_messages_asdqw: List[str] = []
            self.sent_chunks: List[str] = []
            super().__init__(*args, **kwargs)

        def handle_messages(self, io_device: Any, recv_data: bytes) -> None:
            self.recvd_messages_asdqw.append(recv_data.hex())

        def handle_io_device_events(self, io_device: Any, event_mask: int) -> None:
            data = io_device.data
            writing = bool(event_mask & selectors.EVENT_WRITE) and hasattr(data, "write_buffer")
            before = bytes(data.write_buffer) if writing else b""
            super().handle_io_device_events(io_device, event_mask)
            if before:
                # Nothing is appended meanwhile (handle_messages above acts on nothing), so what
                # is gone from the buffer is exactly what was sent.
                sent = len(before) - len(io_device.data.write_buffer)
                if sent > 0:
                    self.sent_chunks.append(before[:sent].hex())

    ConnectivityTester.__name__ = ConnectivityTester.__qualname__ = f"ConnectivityTester({server_class.__name__})"
    return ConnectivityTester
