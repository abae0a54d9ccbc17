#!/usr/bin/env python3
"""CRC chat client: `CRCClient` for programs and tests, and a terminal chat program built on it.

    python3 ChatClient.py -S HOST -P PORT -U NAME [-I INFO] [--id N] [--log-file F] [-v]

`CRCClient.run()` connects, registers and returns; one daemon thread then listens for the server's
messages and keeps `connected_user_ids`, `status_updates_log` and `chat_messages_log` up to date.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import random
import select
import selectors
import socket
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from ChatMessageParser import MAX_INT as MAX_ID
from ChatMessageParser import (
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    Message,
    ProtocolError,
    StatusUpdateMessage,
    StreamDecoder,
)

POLL_SECONDS = 0.1  # how soon the listener notices request_terminate
RECV_SIZE = 4096
CONNECT_TIMEOUT_SECONDS = 10.0

# Called from the listener thread after the client's state has taken a message in. The second
# argument is the name the sender had before the message (so a quit still has a name), or None.
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
        self.request_terminate = False
        self.connected = False
        self.disconnect_reason: Optional[str] = None  # why the listener stopped
        self.on_event: Optional[EventHook] = None
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
        self.connected = True
        self.logger.info("connected to %s:%d", self.server_host, self.server_port)
        self._send(registration, "registration")
        self._listener = threading.Thread(target=self._listen, name=f"CRCClient-{self.client_name}", daemon=True)
        self._listener.start()

    def message_other_client(self, destination_id: int, text: str) -> bool:
        """Send a chat; False (and a log line) if the connection is gone."""
        frame = ClientChatMessage.bytes(self.id, destination_id, text)
        return self._send(frame, f"chat to {destination_id}")

    def quit(self, text: str = "") -> bool:
        """Tell the network we are leaving. The connection stays open until `stop()`."""
        return self._send(ClientQuitMessage.bytes(self.id, text), "quit")

    def is_quiet(self) -> bool:
        """True when nothing more is on its way to this client as far as it can tell: it has been
        answered (welcomed or refused) and has nothing unread, not even part of a message. Safe to
        call from another thread."""
        turn = self.busy_turns
        if not self.connected:
            return True
        if turn % 2 or not self.status_updates_log or self._decoder.pending or self._socket is None:
            return False
        try:
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
        known_name = self.connected_user_ids.get(message.source_id)
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
            self.logger.warning("ignoring a %s from %d: servers never send those to clients",
                                type(message).__name__, message.source_id)
            return
        if self.on_event is not None:
            self.on_event(message, known_name)


# ---------------------------------------------------------------------------------------------
# Terminal chat program

HELP = """Commands:
  /msg NAME-or-ID text   send a message (later plain lines go to the same person)
  /who                   list who is online
  /quit [text]           leave the chat
  /help                  show this help
  any other line         send it to the last person you messaged"""


def describe_event(message: Message, known_name: Optional[str]) -> Optional[str]:
    """One line for a person: what a client saw happen (None for what a person need not see)."""
    sender = known_name or f"id {message.source_id}"
    if isinstance(message, ClientRegistrationMessage):
        return f"* {message.client_name} is online (id {message.source_id})"
    if isinstance(message, ClientQuitMessage):
        return f"* {sender} left" + (f": {message.content}" if message.content else "")
    if isinstance(message, ClientChatMessage):
        return f"{sender}: {message.content}"
    if isinstance(message, StatusUpdateMessage):
        return f"[server] {message.content}"
    return None


class TerminalChat:
    """Reads lines from stdin and prints the network's events as they arrive.

    One queue feeds the main thread: lines from a stdin reader thread and events from the client's
    listener, so all printing happens in one thread and in arrival order.
    """

    def __init__(self, client: CRCClient, input_fd: int = 0) -> None:
        self.client = client
        self.input_fd = input_fd
        self.inbox: "queue.Queue[Tuple[Any, ...]]" = queue.Queue()
        self.last_peer: Optional[int] = None
        client.on_event = lambda message, name: self.inbox.put(("event", message, name))

    def run(self) -> int:
        """Returns the exit status: 0 after /quit or end of input, 1 if the server went away, 130 on Ctrl-C."""
        threading.Thread(target=self._read_input, name="stdin-reader", daemon=True).start()
        self.say(f"Connected to {self.client.server_host}:{self.client.server_port} as "
                 f"{self.client.client_name} (id {self.client.id}). Type /help for commands.")
        try:
            while True:
                try:
                    item = self.inbox.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    # The listener queues every event before it marks the client disconnected, so an
                    # empty inbox here means every event has been shown.
                    if not self.client.connected:
                        self.say(f"Disconnected: {self.client.disconnect_reason}.")
                        return 1
                    continue
                if item[0] == "event":
                    self.show_event(item[1], item[2])
                elif item[0] == "eof":
                    return self.leave("")
                else:
                    status = self.handle_line(item[1])
                    if status is not None:
                        return status
        except KeyboardInterrupt:
            self.leave("")
            return 130

    def _read_input(self) -> None:
        # os.read on the raw descriptor rather than sys.stdin: a daemon thread blocked inside the
        # buffered reader could hold its lock while the interpreter shuts down.
        pending = b""
        while True:
            data = os.read(self.input_fd, 4096)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.inbox.put(("line", line.decode("utf-8", "replace").rstrip("\r")))
        if pending:
            self.inbox.put(("line", pending.decode("utf-8", "replace").rstrip("\r")))
        self.inbox.put(("eof",))

    def say(self, text: str) -> None:
        print(text, flush=True)  # flush: through a pipe, output must not wait in a buffer

    def name_of(self, user_id: int) -> str:
        return self.client.connected_user_ids.get(user_id, f"id {user_id}")

    def show_event(self, message: Message, known_name: Optional[str]) -> None:
        text = describe_event(message, known_name)
        if text is not None:
            self.say(text)

    def handle_line(self, line: str) -> Optional[int]:
        """Carry out one input line; returns an exit status when the program should end."""
        if not line.strip():
            return None
        if not line.startswith("/"):
            if self.last_peer is None:
                self.say("No one to send to yet: start with /msg NAME text (see /who).")
            else:
                self.send(self.last_peer, line)
            return None
        command, _, rest = line.partition(" ")
        if command == "/msg":
            target, _, text = rest.strip().partition(" ")
            if not target or not text.strip():
                self.say("Usage: /msg NAME-or-ID text")
                return None
            destination = self.resolve(target)
            if destination is not None:
                self.last_peer = destination
                self.send(destination, text.strip())
        elif command == "/who":
            self.show_who()
        elif command == "/quit":
            return self.leave(rest.strip())
        elif command == "/help":
            self.say(HELP)
        else:
            self.say(f"Unknown command {command}; type /help for the list.")
        return None

    def resolve(self, target: str) -> Optional[int]:
        """A name or id to an id, or None after saying why not."""
        online = dict(self.client.connected_user_ids)  # a copy: the listener may change it meanwhile
        is_number = target.isascii() and target.isdigit()
        if is_number and int(target) in online:
            return int(target)
        matches = sorted(user_id for user_id, name in online.items() if name == target)
        if len(matches) == 1:
            return matches[0]
        if matches:
            ids = ", ".join(str(user_id) for user_id in matches)
            self.say(f"More than one {target} is online (ids {ids}); use /msg ID text.")
            return None
        if is_number:
            return int(target)  # not known here (yet); the server answers if it knows no such id
        self.say(f"No one called {target} is online; /who lists who is.")
        return None

    def send(self, destination: int, text: str) -> None:
        try:
            sent = self.client.message_other_client(destination, text)
        except ValueError as error:  # an id out of range or a text too long for its field
            self.say(f"Not sent: {error}")
            return
        self.say(f"-> {self.name_of(destination)}: {text}" if sent else "Not sent: not connected.")

    def show_who(self) -> None:
        online = sorted(self.client.connected_user_ids.items(), key=lambda item: (item[1], item[0]))
        if not online:
            self.say("No one else is online.")
            return
        self.say(f"Online ({len(online)}):")
        for user_id, name in online:
            self.say(f"  {name} (id {user_id})")

    def leave(self, text: str) -> int:
        self.client.quit(text)
        self.client.stop()
        self.say("Bye.")
        return 0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    def client_id(text: str) -> int:
        value = int(text)
        if not 1 <= value <= MAX_ID:
            raise argparse.ArgumentTypeError(f"an id is from 1 to {MAX_ID}, not {value}")
        return value

    parser = argparse.ArgumentParser(description="Chat on a Clemson Relay Chat network.")
    parser.add_argument("-S", "--serverhost", required=True, help="host name or address of a CRC server")
    parser.add_argument("-P", "--serverport", required=True, type=int, help="port of that server")
    parser.add_argument("-U", "--username", required=True, help="your name on the network")
    parser.add_argument("-I", "--info", default="", help="a line about you")
    parser.add_argument("--id", type=client_id, default=None, help="your id (default: random)")
    parser.add_argument("--log-file", dest="log_file", default=None, help="write this client's log here")
    parser.add_argument("-v", "--verbose", action="store_true", help="copy the log to stderr")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    options = parse_args(argv)
    client = CRCClient(options)
    chat = TerminalChat(client)  # before run(): the welcome can arrive as soon as we have registered
    try:
        client.run()
    except OSError as error:
        print(f"Cannot connect to {options.serverhost}:{options.serverport}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return chat.run()


if __name__ == "__main__":
    sys.exit(main())
