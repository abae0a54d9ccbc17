#!/usr/bin/env python3
"""CRC chat client: `CRCClient` for programs and tests; `python3 ChatClient.py` runs the terminal chat
program built on it (ChatTerminal.py).

    python3 ChatClient.py -S HOST -P PORT -U NAME [-I INFO] [--id N] [--log-file F] [-v]

`CRCClient.run()` connects, registers and returns; one daemon thread then listens for the server's
messages and keeps `connected_user_ids`, `status_updates_log` and `chat_messages_log` up to date.
"""

from __future__ import annotations

import logging
import random
import select
import selectors
import socket
import sys
import threading
from typing import Any, Callable, Dict, List, Optional

from ChatMessageParser import (
    CLIENT_CHAT,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZES,
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    Message,
    ProtocolError,
    StatusUpdateMessage,
    StreamDecoder,
)
from ChatMessageParser import MAX_INT as MAX_ID

try:  # for unsent_bytes, on a system that can count them
    import fcntl
    UNSENT_REQUEST: Optional[int] = 0x894B if sys.platform == "linux" else None  # Linux's SIOCOUTQNSD
except ImportError:
    UNSENT_REQUEST = None

POLL_SECONDS = 0.1  # how soon the listener notices request_terminate
RECV_SIZE = 64 * 1024
CONNECT_TIMEOUT_SECONDS = 10.0
# The most chat content one frame carries within a server's default frame limit. A longer text goes as
# several chats, each as full as UTF-8 allows; a chat within 3 bytes of this (less than one character
# short) says that the next chat from its sender continues it.
MAX_CHAT_CONTENT = DEFAULT_MAX_FRAME_SIZE - HEADER_SIZES[CLIENT_CHAT]


def split_for_frames(text: str) -> List[str]:
    """The text in parts of at most MAX_CHAT_CONTENT bytes of UTF-8 each, cut only between characters,
    and an empty part after a last one that would look continued (see continues())."""
    encoded = text.encode("utf-8")
    parts: List[str] = []
    start = 0
    while len(encoded) - start > MAX_CHAT_CONTENT:
        end = start + MAX_CHAT_CONTENT
        while encoded[end] & 0xC0 == 0x80:  # a continuation byte: the character started before it
            end -= 1
        parts.append(encoded[start:end].decode("utf-8"))
        start = end
    parts.append(encoded[start:].decode("utf-8"))
    if continues(parts[-1]):
        parts.append("")  # says that the text ends here
    return parts


def continues(part: str) -> bool:
    """Whether a chat is a part that the sender's next chat continues (see MAX_CHAT_CONTENT)."""
    return len(part.encode("utf-8")) > MAX_CHAT_CONTENT - 4


def part_count(parts: List[str]) -> int:
    """How many parts a text went in, as a person counts them: not the empty part that may close it."""
    return max(1, sum(1 for part in parts if part))

# Called from the listener thread after the client's state has taken a message in. The second
# argument is the name the sender had before the message (so a quit still has a name; our own name for
# a chat to ourselves), or None.
EventHook = Callable[[Message, Optional[str]], None]

class CRCClient:
    def __init__(self, options: Any, run_on_localhost: bool = False) -> None:
        self.id: int = options.id or random.randint(1, MAX_ID)
        self.client_name: str = options.username
        self.client_info: str = options.info or ""
        # In a test harness the course's client connects to 127.0.0.1 whatever host a case names (the
        # course's files name hosts such as `theshire` that resolve nowhere); so does this one.
        self.server_host: Optional[str] = "127.0.0.1" if run_on_localhost else options.serverhost
        self.server_port: int = int(options.serverport)
        self.log_file: Optional[str] = options.log_file
        # The course's launcher passes these too. CRCClient never reads stdin, so `simulate` changes
        # nothing; `verbose` copies the log to stderr, `debug` adds every received chunk in hex.
        self.simulate: bool = getattr(options, "simulate", False)
        self.verbose: bool = getattr(options, "verbose", False)
        self.debug: bool = getattr(options, "debug", False)

        self.connected_user_ids: Dict[int, str] = {}
        self.status_updates_log: List[str] = []
        self.chat_messages_log: List[str] = []
        self.unexpected_messages_log: List[str] = []  # what servers must never send a client (ours, not the course's)
        self.request_terminate = False
        self.connected = False
        self.disconnect_reason: Optional[str] = None  # why the listener stopped
        self.on_event: Optional[EventHook] = None
        self.on_disconnect: Optional[Callable[[], None]] = None  # called when the server ends the connection
        self.busy_turns = 0  # counts chunks handled; odd while the listener is handling one (see is_quiet)
        self._decoder = StreamDecoder()

        self._socket: Optional[socket.socket] = None
        self._send_lock = threading.Lock()  # sends come from callers' threads, close from the listener's
        self._listener: Optional[threading.Thread] = None
        self.logger = self._make_logger()

    def _make_logger(self) -> logging.Logger:
        # A logger outside logging's global tree: one per client, gone with the client, so two
        # clients with the same name and id still log apart and nothing piles up in a long run.
        level = logging.DEBUG if self.debug else logging.INFO
        logger = logging.Logger(f"CRCClient {self.client_name} ({self.id})", level)
        formatter = logging.Formatter(f"%(asctime)s {self.client_name}[{self.id}] %(levelname)s %(message)s")
        handlers: List[logging.Handler] = []
        if self.log_file:
            handlers.append(logging.FileHandler(self.log_file, encoding="utf-8", delay=True))
        if self.verbose:
            handlers.append(logging.StreamHandler(sys.stderr))
        # Without a handler of our own, logging's last resort would print warnings over a terminal UI.
        for handler in handlers or [logging.NullHandler()]:
            handler.setFormatter(formatter)
            logger.addHandler(handler)
        return logger

    def run(self) -> None:
        """Connect, register and start the listener thread, then return. Raises OSError if the
        server cannot be reached."""
        if not self.server_host:
            raise ValueError("no server host given")
        # Built first: a name or info that does not fit is refused before anything is opened.
        registration = ClientRegistrationMessage.bytes(self.id, 0, self.client_name, self.client_info)
        self._socket = socket.create_connection((self.server_host, self.server_port), CONNECT_TIMEOUT_SECONDS)
        self._socket.settimeout(None)
        # Each chat leaves as it is sent: Nagle's algorithm would hold a second one back until the first is
        # acknowledged, up to 40 ms, where no quiet check (see is_quiet) can see it.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected = True
        self.logger.info("connected to %s:%d", self.server_host, self.server_port)
        self._send(registration, "registration")
        self._listener = threading.Thread(target=self._listen, name=f"CRCClient-{self.client_name}", daemon=True)
        self._listener.start()

    def message_other_client(self, destination_id: int, text: str) -> bool:
        """Send a chat; False (and a log line) if the connection is gone. A text longer than one frame
        holds goes as several chats in a row (see split_for_frames)."""
        return self.send_chat(destination_id, text) > 0

    def send_chat(self, destination_id: int, text: str) -> int:
        """Send a chat in as many parts as it takes; how many parts were sent (0: not connected)."""
        parts = split_for_frames(text)
        frames = [ClientChatMessage.bytes(self.id, destination_id, part) for part in parts]
        count = part_count(parts)
        what = f"chat to {destination_id}" + (f" in {count} parts" if count > 1 else "")
        return count if self._send(b"".join(frames), what) else 0

    def quit(self, text: str = "") -> bool:
        """Tell the network we are leaving. The connection stays open until `stop()`."""
        return self._send(ClientQuitMessage.bytes(self.id, text), "quit")

    def is_quiet(self) -> bool:
        """True when nothing is on its way to or from this client as far as it can tell: nothing unread,
        not even part of a message, and nothing it sent still held in its kernel. (What it sent is unread
        at the server until handled, so the server is not quiet meanwhile.) Safe to call from another
        thread."""
        turn = self.busy_turns
        if not self.connected:
            return True
        if turn % 2 or self._decoder.pending or self._socket is None:
            return False
        try:
            if unsent_bytes(self._socket):  # given to the kernel, and not sent yet
                return False
            poller = select.poll()  # unlike select.select, not limited to descriptors below 1024
            poller.register(self._socket, select.POLLIN)
            ready = poller.poll(0)
        except (OSError, ValueError, AttributeError):  # closed meanwhile, or no poll() on this system
            return not self.connected
        return not ready and self.busy_turns == turn

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the listener to close the connection and wait for it."""
        self.request_terminate = True
        if self._listener is not None:
            self._listener.join(timeout)

    def _send(self, frame: bytes, what: str) -> bool:
        with self._send_lock:
            if not self.connected or self._socket is None:
                self.logger.error("cannot send %s: not connected", what)
                return False
            try:
                self._socket.sendall(frame)
            except OSError as error:
                self.logger.error("cannot send %s: %s", what, error)
                return False
        self.logger.info("sent %s", what)
        return True

    def _listen(self) -> None:
        assert self._socket is not None
        selector = selectors.DefaultSelector()
        selector.register(self._socket, selectors.EVENT_READ)
        reason = "stopped on request"
        try:
            while not self.request_terminate:
                if not selector.select(POLL_SECONDS):
                    continue
                self.busy_turns += 1
                try:
                    problem = self._receive()
                finally:
                    self.busy_turns += 1
                if problem:
                    reason = problem
                    break
        except OSError as error:
            reason = f"connection error: {error}"
            self.logger.error(reason)
        finally:
            self.disconnect_reason = reason
            with self._send_lock:
                self.connected = False
                self._socket.close()
            selector.close()
            self.logger.info("listener stopped: %s", reason)
            for handler in self.logger.handlers:
                handler.close()  # frees the log file; logging reopens it should anything log later
            if not self.request_terminate and self.on_disconnect is not None:
                self.on_disconnect()

    def _receive(self) -> Optional[str]:
        """Read and handle one chunk; returns why the connection is over, or None while it goes on."""
        assert self._socket is not None
        chunk = self._socket.recv(RECV_SIZE)
        if not chunk:
            self.logger.warning("the server closed the connection")
            return "the server closed the connection"
        self.logger.debug("received %d bytes: %s", len(chunk), chunk.hex())
        try:
            messages = self._decoder.feed(chunk)
        except ProtocolError as error:
            for message in error.messages:  # whole messages that came before the bad bytes
                self._handle(message)
            self.logger.error("protocol error from the server: %s; closing the connection", error)
            return f"protocol error from the server: {error}"
        for message in messages:
            self._handle(message)
        return None

    def _handle(self, message: Message) -> None:
        # A chat to ourselves comes from ourselves: not in connected_user_ids, which holds the others.
        known_name = self.connected_user_ids.get(message.source_id)
        if message.source_id == self.id:
            known_name = self.client_name
        if isinstance(message, ClientRegistrationMessage):
            self.connected_user_ids[message.source_id] = message.client_name
            self.logger.info("client %s (id %d) is online", message.client_name, message.source_id)
        elif isinstance(message, ClientQuitMessage):
            self.connected_user_ids.pop(message.source_id, None)
            self.logger.info("client %s (id %d) quit: %r", known_name, message.source_id, message.content)
        elif isinstance(message, ClientChatMessage):
            self.chat_messages_log.append(message.content)
            self.logger.info("chat from %s (id %d): %r", known_name, message.source_id, message.content)
        elif isinstance(message, StatusUpdateMessage):
            self.status_updates_log.append(message.content)
            self.logger.info("status %d from %d: %r", message.status_code, message.source_id, message.content)
        else:  # server registrations and quits are for servers only
            self.unexpected_messages_log.append(f"{type(message).__name__} from {message.source_id}")
            self.logger.warning("ignoring a %s from %d: servers never send those to clients",
                                type(message).__name__, message.source_id)
            return
        if self.on_event is not None:
            self.on_event(message, known_name)


def unsent_bytes(sock: socket.socket) -> int:  # Testers/quiet.py reads a server's sockets with it too
    """Bytes given to this socket that its kernel has not sent yet (Nagle's algorithm, or a full
    window, holds them back); Linux can say, elsewhere 0. Sent bytes are at once readable at a peer
    on the same machine, so only these are on their way unseen."""
    if UNSENT_REQUEST is None:
        return 0
    reply = fcntl.ioctl(sock.fileno(), UNSENT_REQUEST, b"\0\0\0\0")
    return int.from_bytes(reply, sys.byteorder, signed=True)


def main(argv: Optional[List[str]] = None) -> int:
    """The terminal chat program (ChatTerminal.py), imported only when run: a harness needs none of it."""
    from ChatTerminal import main as terminal_main
    return terminal_main(argv)


if __name__ == "__main__":
    sys.exit(main())
