"""Reference server for Clemson Relay Chat (CRC): the course's ChatServer.py template, completed.

Servers join into a spanning tree; clients attach to any server. Every server keeps the whole network
in `hosts_db` (each other machine, with the adjacent machine that leads to it), floods changes along
the tree and routes chats hop by hop. One `selectors` loop over non-blocking sockets, no threads.

This file imports only the standard library and the contract's names from ChatMessageParser, so it
can be dropped alone into the course's kit.

How to read it. `CRCServer` has the template's methods in the template's order, then our extras
(server quits, departures, backpressure, quiet waits). Under it, in this one file: `FrameCutter`
(bytes in, whole frames out as messages, no sockets), `Link` (one socket's buffers, interest, pausing
and closing for the socket's whole life), `RoutingTable` (hosts, first links, what lies behind a link)
and `Timers` (every deadline, in one map). Then the command line.

Words. A *link* is a socket to an adjacent machine and its state; a *host* is an entry in `hosts_db`
(a `ServerConnectionData` or `ClientConnectionData`); a host's *first link* is the adjacent host its
messages go through (for an adjacent host, itself).

Lifecycle, the same for every link:

    opened      accepted, or connected to join a network. Its peer is a `BaseConnectionData` until
                it registers, which it must do within --register-timeout. A client that quits and
                stays connected is back here.
    registered  its peer registered: the peer is an adjacent host in hosts_db, and the link is the
                first link of the peer and of every host the peer announces.
    closing     it was refused, broke the protocol or said goodbye (a server quit): it is read no more,
                and it is closed once its output is sent (after a refusal or a protocol error, the
                status saying why), or after CLOSE_GRACE.
    held        a registered peer's link closed without a goodbye: the peer vanished (a crash, a cut
                cable noticed by keepalive probes, a stop by the test manager), or it was closed after
                a protocol error, at the output cap or after a stall. Its hosts stay in hosts_db for
                --split-hold: the course's tests read each server's state only after stopping them one
                by one, so nothing may change at once.
    departed    the hold-down ended, or the peer said goodbye (a server quit): every host behind the
                link is forgotten, and a quit is sent on for each.

`disconnect` is the one way a link closes while the server runs; `cleanup` closes what is left.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import random
import select
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Set, Tuple, Union

from ChatMessageParser import (
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    MessageParser,
    ServerQuitMessage,
    ServerRegistrationMessage,
    StatusUpdateMessage,
)

try:  # for unsent_bytes, on a system that can count them
    import fcntl
    UNSENT_REQUEST: Optional[int] = 0x894B if sys.platform == "linux" else None  # Linux's SIOCOUTQNSD
except ImportError:
    UNSENT_REQUEST = None

# The server must stand alone in the course's kit, whose parser offers only the contract's names, so it
# repeats the protocol's constants and layouts; tests/test_server_framing.py keeps them equal to the codec's.
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

# Per type: the header's size, and the offset of its 4-byte content length (None: a registration,
# whose name and info lengths follow the two ids).
FRAME_LAYOUTS: Dict[int, Tuple[int, Optional[int]]] = {
    SERVER_REGISTRATION: (12, None),
    STATUS_UPDATE: (15, 11),
    SERVER_QUIT: (13, 9),
    CLIENT_REGISTRATION: (12, None),
    CLIENT_CHAT: (13, 9),
    CLIENT_QUIT: (9, 5),
}
LAST_HOP = slice(5, 9)  # where a registration keeps its last hop id
CHAT_HEADER_SIZE = FRAME_LAYOUTS[CLIENT_CHAT][0]
_CHAT_HEADER = struct.Struct("!BIII")  # type, source id, destination id, content length
_CONTENT_LENGTH = struct.Struct("!I")
_NAME_AND_INFO_LENGTHS = struct.Struct("!BH")

DEFAULT_MAX_FRAME_SIZE = 64 * 1024  # for frames with a 4-byte length; a registration's fields bound its size
DEFAULT_SPLIT_HOLD = 5.0  # seconds a lost link's hosts stay known before their departure is announced
DEFAULT_REGISTER_TIMEOUT = 10.0  # seconds a new connection has to register
DEFAULT_MAX_OUTPUT = 8 * 1024 * 1024  # unsent bytes one link may pile up before it is dropped
DEFAULT_STALL_TIMEOUT = 30.0  # seconds a server link holding others back may go without taking any bytes
CLOSE_GRACE = 2.0  # seconds a closing link has to take its last message (a status saying why)
DEFAULT_RECONNECT_FIRST = 1.0  # seconds before the first try to open a lost uplink again (at most) ...
DEFAULT_RECONNECT_MAX = 30.0  # ... doubling with each failed try, up to this
ACCEPT_PAUSE = 0.5  # seconds the listening socket rests when this process is out of file descriptors
HIGH_WATER = 1024 * 1024  # a server link with more unsent output pauses the links that feed it ...
LOW_WATER = 256 * 1024  # ... until it is down to this
RECEIVE_SIZE = 256 * 1024  # one read per ready link per loop turn, so that no peer can starve the others
SELECT_TIMEOUT = 0.1  # request_terminate must be noticed within about 0.1 s (setting it also wakes the loop)
KEEPALIVE_IDLE = 10  # seconds a link may be silent before the kernel starts probing whether its peer is there
KEEPALIVE_INTERVAL = 5  # seconds between probes; three unanswered probes and the link fails

WAKE_UP = "wake up"  # the selector's data for the socket that wakes the loop (see CRCServer.request_terminate)

# How a registration fits what a server knows (see CRCServer.place).
NEW, AGAIN, BACK, TAKEN = "new", "again", "back", "taken"

# A link's states. OPEN: read and written. PAUSED: written, but not read while a server link it feeds
# catches up (backpressure), then OPEN again. CLOSING: written until its last message is out, not read.
# CLOSED: gone. CONNECTING: our uplink, opened again without waiting, until the connection completes.
# Numbered so that `state <= PAUSED` means "takes output".
OPEN, PAUSED, CLOSING, CLOSED, CONNECTING = range(5)


class ProtocolViolation(Exception):
    """A peer sent bytes or a message that breaks the protocol; its link cannot be trusted."""


# ------------------------------------------------------------------------------ the template's records

class BaseConnectionData:
    """A machine's record: as it is, what the selector keeps for a socket whose peer has not registered
    yet; as the base of the host records, what every host in hosts_db has."""

    def __init__(self) -> None:
        self.write_buffer = bytearray()  # unsent bytes; for an adjacent host, its link's output
        self.link: Optional[Link] = None  # the link this machine is reached through: its own, if adjacent


class ServerConnectionData(BaseConnectionData):
    def __init__(self, id: int, server_name: str, server_info: str) -> None:
        super().__init__()
        self.id = id
        self.server_name = server_name
        self.server_info = server_info
        self.first_link_id: Optional[int] = None  # the adjacent host this one is reached through
        self.registration = b""  # its registration as this server passes it on (our id as last hop)


class ClientConnectionData(BaseConnectionData):
    def __init__(self, id: int, client_name: str, client_info: str) -> None:
        super().__init__()
        self.id = id
        self.client_name = client_name
        self.client_info = client_info
        self.first_link_id: Optional[int] = None
        self.registration = b""


HostData = Union[ServerConnectionData, ClientConnectionData]
HANDLER_NAMES = {  # message_handlers' entries, by the name of the method each is bound to
    SERVER_REGISTRATION: "handle_server_registration_message",
    STATUS_UPDATE: "handle_status_message",
    CLIENT_REGISTRATION: "handle_client_registration_message",
    CLIENT_CHAT: "handle_client_chat_message",
    CLIENT_QUIT: "handle_client_quit_message",
    SERVER_QUIT: "handle_server_quit_message",
}
ConnectionData = Union[BaseConnectionData, ServerConnectionData, ClientConnectionData]


class FramedChatMessage:
    """A client chat with the attributes of the parser's ClientChatMessage, built from the header that
    FrameCutter read to cut its frame: chats are most of the traffic, and this way a chat costs one
    header unpack and one check that its content is UTF-8 (decoded only when a handler reads it)."""

    __slots__ = ("source_id", "destination_id", "bytes")
    message_type = CLIENT_CHAT

    def __init__(self, source_id: int, destination_id: int, frame: bytes) -> None:
        self.source_id = source_id
        self.destination_id = destination_id
        self.bytes = frame
        content = frame[CHAT_HEADER_SIZE:]
        if not content.isascii():  # ASCII is UTF-8; anything else must decode
            try:
                content.decode()
            except UnicodeDecodeError as error:
                raise ProtocolViolation(f"chat content is not valid UTF-8 ({error.reason} at byte"
                                        f" {error.start})") from None

    @property
    def content(self) -> str:
        return self.bytes[CHAT_HEADER_SIZE:].decode()


Message = Union[ServerRegistrationMessage, StatusUpdateMessage, ServerQuitMessage, ClientRegistrationMessage,
                ClientChatMessage, ClientQuitMessage, FramedChatMessage]
Handler = Callable[[selectors.SelectorKey, Any], None]  # each takes the message of its own type


def parse_message(frame: bytes) -> Message:
    """One whole frame as the contract's parser reads it (FrameCutter builds chats itself)."""
    try:
        (message,) = MessageParser.parse_messages(frame)
    except Exception as error:  # the course's parser may raise anything on bad bytes
        raise ProtocolViolation(f"malformed message of type 0x{frame[0]:02x}: {error}") from None
    return message


# ----------------------------------------------------------------------------------------- the server

class CRCServer:
    def __init__(self, options: object, run_on_localhost: bool = False) -> None:
        self.sel = selectors.DefaultSelector()
        # A byte on this pair wakes the loop from select() at once when request_terminate is set, so that
        # a test manager stopping eleven servers one after another does not wait a turn for each.
        self.wake_reader, self.waker = socket.socketpair()
        self.wake_reader.setblocking(False)
        self.waker.setblocking(False)  # a full buffer of wake-ups must never block whoever sets the flag
        self.sel.register(self.wake_reader, selectors.EVENT_READ, WAKE_UP)
        self.hosts_db: Dict[int, HostData] = {}
        self.adjacent_server_ids: List[int] = []
        self.adjacent_user_ids: List[int] = []
        self.status_updates_log: List[str] = []
        self.id: int = getattr(options, "id", None) or random.randint(1, 0xFFFFFFFF)
        self.server_name: str = getattr(options, "servername", None) or f"server-{self.id}"
        self.server_info: str = getattr(options, "info", None) or ""
        self.port: int = int(getattr(options, "port", 0) or 0)
        self.connect_to_host: Optional[str] = getattr(options, "connect_to_host", None)
        # The course's kit connects to 127.0.0.1 whatever host a case names; from the command line,
        # the name is resolved when connecting.
        self.connect_to_host_addr: Optional[str] = "127.0.0.1" if run_on_localhost else self.connect_to_host
        self.connect_to_port: Optional[int] = getattr(options, "connect_to_port", None)
        self.request_terminate = False  # a property: setting it wakes the loop (see request_terminate)
        self.message_handlers: Dict[int, Handler] = {
            SERVER_REGISTRATION: self.handle_server_registration_message,
            STATUS_UPDATE: self.handle_status_message,
            CLIENT_REGISTRATION: self.handle_client_registration_message,
            CLIENT_CHAT: self.handle_client_chat_message,
            CLIENT_QUIT: self.handle_client_quit_message,
            SERVER_QUIT: self.handle_server_quit_message,  # ours: a goodbye, or a server gone from afar
        }
        self.log_file: Optional[str] = getattr(options, "log_file", None)
        self.logger = logging.Logger(f"CRCServer {self.server_name} ({self.id})")
        self.verbose = bool(getattr(options, "verbose", False))
        trace = getattr(options, "trace", None)
        self.tracing: bool = (run_on_localhost or self.verbose) if trace is None else bool(trace)
        self.init_logging()

        # Ours, beyond the template: the command line's limits, and the state under the template's.
        self.bind_address: str = "127.0.0.1" if run_on_localhost else getattr(options, "bind", None) or ""
        self.max_frame_size: int = getattr(options, "max_frame_size", None) or DEFAULT_MAX_FRAME_SIZE
        split_hold = getattr(options, "split_hold", None)
        self.split_hold: float = DEFAULT_SPLIT_HOLD if split_hold is None else split_hold
        self.register_timeout: float = getattr(options, "register_timeout", None) or DEFAULT_REGISTER_TIMEOUT
        self.max_output: int = getattr(options, "max_output", None) or DEFAULT_MAX_OUTPUT
        self.stall_timeout: float = getattr(options, "stall_timeout", None) or DEFAULT_STALL_TIMEOUT
        self.high_water = min(HIGH_WATER, self.max_output // 4)
        self.low_water = min(LOW_WATER, self.high_water // 4)
        self.routes = RoutingTable(self.hosts_db, self.adjacent_server_ids, self.adjacent_user_ids)
        self.timers = Timers()
        self.links: Set[Link] = set()  # every link not yet closed
        self.server_socket: Optional[socket.socket] = None
        self.listening = False  # from setup_server_socket() (the port is known) until cleanup()
        self.serving = False  # from the loop's first turn (after joining a network) until cleanup()
        self.announce_departure = False  # set by Ctrl-C or SIGTERM: say goodbye before closing
        self.stop_if_join_fails = not run_on_localhost and not getattr(options, "alone_if_join_fails", False)
        self.join_failure: Optional[str] = None  # why we stopped, when joining failed
        self.joined_once = False  # the server we joined has registered with us: a refusal now is a reconnect's
        # The uplink: the link we opened to join a network, opened again when lost (not in a test
        # harness, unless asked: nothing the course grades may change because of it).
        self.uplink: Optional[Link] = None
        self.reconnect = bool(getattr(options, "reconnect", not run_on_localhost))
        self.reconnect_first: float = getattr(options, "reconnect_first", None) or DEFAULT_RECONNECT_FIRST
        self.reconnect_max: float = getattr(options, "reconnect_max", None) or DEFAULT_RECONNECT_MAX
        self.reconnect_tries = 0  # since the uplink was last up
        self.busy_turns = 0  # +1 as a busy turn starts and +1 as it ends: odd during a turn (see is_quiet)
        self.to_flush: List[Link] = []  # links given output in this turn, sent at its end
        self.overfed: Set[Link] = set()  # server links fed past their high-water mark by the chunk in hand
        self.receive_buffer = bytearray(RECEIVE_SIZE)  # one reused buffer: a fresh one per read costs an mmap
        self.receive_view = memoryview(self.receive_buffer)
        self.bound_handlers = dict(self.message_handlers)  # what follow_replaced_handlers() last put there

    @property
    def request_terminate(self) -> bool:
        return self.terminate_requested

    @request_terminate.setter
    def request_terminate(self, value: bool) -> None:
        self.terminate_requested = value
        if value:
            try:
                self.waker.send(b"!")
            except OSError:  # closed by cleanup(), or its buffer full of wake-ups already
                pass

    # ----------------------------------------------------------------------------- the template

    def run(self) -> None:
        self.print_info(f"Launching server {self.server_name}...")
        try:
            self.setup_server_socket()
            if self.connect_to_host and self.connect_to_port:
                self.connect_to_server()
        except BaseException:
            self.cleanup()  # frees what __init__ opened (the selector, the waking pair, the log file)
            raise
        self.check_IO_devices_for_messages()

    def setup_server_socket(self) -> None:
        self.print_info("Configuring the server socket...")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rerun on the same port at once
        try:
            sock.bind((self.bind_address, self.port))
        except OSError as error:
            sock.close()
            raise OSError(f"cannot listen on {self.bind_address or '*'}:{self.port}: {error.strerror or error}") \
                from None
        sock.listen(128)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, None)
        self.server_socket = sock
        self.port = sock.getsockname()[1]
        self.listening = True
        self.logger.info("%s (id %d) listening on %s:%d", self.server_name, self.id, self.bind_address or "*",
                         self.port)

    def connect_to_server(self) -> None:
        self.print_info(f"Connecting to remote server {self.connect_to_host}:{self.connect_to_port}...")
        address = (self.connect_to_host_addr or "localhost", int(self.connect_to_port or 0))
        try:
            sock = socket.create_connection(address, timeout=5)
        except OSError as error:
            self.join_failed(f"could not join {self.connect_to_host}:{self.connect_to_port}: {error}")
            return
        self.connect_to_host_addr = sock.getpeername()[0]  # reconnects go there, with no name to look up
        link = self.uplink = self.open_link(sock, outbound=True)
        # Queued straight on the socket, so it prints no trace line; it leaves on the loop's first write
        # event, through handle_io_device_events, where a connectivity tester that wraps it sees it go.
        link.write_buffer += ServerRegistrationMessage.bytes(self.id, 0, self.server_name, self.server_info)
        link.wait_for_writable()
        self.logger.info("connected to %s:%d and sent our registration", *address)

    def check_IO_devices_for_messages(self) -> None:
        self.serving = True  # first: the command line's console shows its start-up lines on this trace line
        self.print_info(f"Listening for new connections on port {self.port}")
        try:
            while not self.request_terminate:
                events = self.sel.select(timeout=SELECT_TIMEOUT)
                if events or self.timers.due_now():
                    self.serve_turn(events)
        finally:
            self.serving = False
            self.cleanup()

    def cleanup(self) -> None:
        """Close every socket and the selector. Only a server stopped by a signal says goodbye."""
        self.print_info("Cleaning up the server")
        if self.announce_departure:
            self.say_goodbye()
        for link in list(self.links):
            link.close()
        self.links.clear()
        if self.server_socket is not None:
            self.server_socket.close()
        self.sel.close()
        self.wake_reader.close()
        self.waker.close()
        if self.listening:  # a server that never started (its port in use, say) has nothing to report here
            self.logger.info("%s stopped", self.server_name)
        self.listening = False
        for handler in self.logger.handlers:
            handler.close()

    def accept_new_connection(self, io_device: selectors.SelectorKey) -> None:
        try:
            sock, address = io_device.fileobj.accept()  # type: ignore[union-attr]
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.rest_listening_socket(error)
            return  # otherwise the peer gave up before we got to it
        self.open_link(sock, outbound=False)
        self.logger.debug("accepted a connection from %s:%d", *address[:2])

    def handle_io_device_events(self, io_device: selectors.SelectorKey, event_mask: int) -> None:
        if io_device.data is None:
            self.accept_new_connection(io_device)
            return
        link = io_device.data.link
        if link.state == CONNECTING:
            self.finish_connecting(link)
            return
        if event_mask & selectors.EVENT_WRITE and link.state != CLOSED:
            self.flush(link)
        if event_mask & selectors.EVENT_READ and link.state == OPEN:
            try:
                received = link.sock.recv_into(self.receive_buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.disconnect(link, f"receive failed: {error}")
                return
            if not received:
                self.disconnect(link, "connection closed by the peer")
                return
            self.overfed.clear()
            self.handle_messages(io_device, bytes(self.receive_view[:received]))
            if self.overfed:
                self.hold_back(link)

    def handle_messages(self, io_device: selectors.SelectorKey, recv_data: bytes) -> None:
        """Cut the bytes received on a link into whole messages, and hand each to its handler through
        message_handlers. A message that breaks the protocol closes the link with a status saying why."""
        link: Link = io_device.data.link
        self.follow_replaced_handlers()
        handlers, tracing = self.message_handlers, self.tracing
        for message in link.cutter.feed(recv_data):
            if tracing:
                self.print_info(f'Received message from Host ID #{message.source_id} "{message.bytes!r}"')
            try:
                handlers[message.message_type](io_device, message)
            except ProtocolViolation as violation:
                self.protocol_error(link, str(violation))
                return
            if link.state != OPEN:
                return  # closed, or closing after a refusal: the rest is not read
            if io_device.data is not link.record:  # the peer registered: its record replaced the link's
                io_device = self.sel.get_key(link.sock)
        if link.cutter.problem is not None:
            self.protocol_error(link, link.cutter.problem)

    def send_message_to_host(self, destination_id: int, message: bytes) -> bool:
        """Queue a message on the link that leads to a known host. False when no open link leads there."""
        try:
            link = self.hosts_db[destination_id].link
        except KeyError:
            link = None
        if link is None or link.state > PAUSED:
            self.logger.debug("no open link toward %d; dropped a message of type 0x%02x", destination_id, message[0])
            return False
        if self.tracing:
            self.print_info(f'Sending message to Host ID #{link.record.id} "{message!r}"')  # type: ignore[union-attr]
        buffer = link.write_buffer  # queue(link, message), written out here (keep the two alike): every chat
        if not buffer:
            self.schedule_flush(link)
        buffer += message
        if len(buffer) > self.high_water:
            self.check_output_size(link)
        return True

    def broadcast_message_to_servers(self, message: bytes, ignore_host_id: Optional[int] = None) -> None:
        for server_id in self.adjacent_server_ids:
            if server_id != ignore_host_id:
                self.send_message_to_host(server_id, message)

    def broadcast_message_to_adjacent_clients(self, message: bytes, ignore_host_id: Optional[int] = None) -> None:
        for client_id in self.adjacent_user_ids:
            if client_id != ignore_host_id:
                self.send_message_to_host(client_id, message)

    def send_message_to_unknown_io_device(self, io_device: selectors.SelectorKey, message: bytes) -> None:
        """Queue a message on a link whose peer is not a registered host (a refusal, say)."""
        link: Link = io_device.data.link
        if link.state > PAUSED:
            return
        if self.tracing:
            self.print_info(f'Sending message to an unknown IO device "{message!r}"')
        self.queue(link, message)

    def handle_server_registration_message(self, io_device: selectors.SelectorKey,
                                           message: ServerRegistrationMessage) -> None:
        record = io_device.data
        server_id = message.source_id
        if isinstance(record, ClientConnectionData):
            raise ProtocolViolation("a client may not register a server")
        if server_id == 0:
            raise ProtocolViolation("id 0 is not a valid machine id")
        self.check_last_hop(record, message.last_hop_id)
        server = ServerConnectionData(server_id, message.server_name, message.server_info)
        server.registration = self.relayed(message.bytes)
        if self.place(server, record) == TAKEN:
            self.refuse_or_ignore(io_device, server_id, f"A machine has already registered with ID {server_id}")
            return
        if isinstance(record, ServerConnectionData):  # a neighbour announces a server behind it
            self.routes.add_behind(server, record.id)
            self.logger.info("server %s (%d) is known behind %d", server.server_name, server_id, record.id)
        else:  # a new neighbour introduces itself
            link = record.link
            self.register_link(io_device, server)
            self.logger.info("server %s (%d) joined as a neighbour", server.server_name, server_id)
            if link.outbound:
                self.joined_once = True
                if self.reconnect_tries:  # the backoff starts over only once we are taken in, not at connect
                    self.logger.info("joined %s:%s again after %d tr%s", self.connect_to_host, self.connect_to_port,
                                     self.reconnect_tries, "y" if self.reconnect_tries == 1 else "ies")
                    self.reconnect_tries = 0
            else:  # the server we joined knows us already
                self.send_message_to_host(server_id, ServerRegistrationMessage.bytes(
                    self.id, self.id, self.server_name, self.server_info))
            for host in list(self.hosts_db.values()):  # our whole view, for a merge of two networks
                if host.first_link_id != server_id:
                    self.send_message_to_host(server_id, host.registration)
        self.broadcast_message_to_servers(server.registration, ignore_host_id=server.first_link_id)

    def handle_status_message(self, io_device: selectors.SelectorKey, message: StatusUpdateMessage) -> None:
        record = io_device.data
        for_us = message.destination_id in (self.id, 0)
        if type(record) is BaseConnectionData and record.link is not None and record.link.outbound:
            # The one message a server we joined may send before its registration: why it refused ours.
            if not for_us:
                self.logger.warning("status for %d on a link not yet registered; dropped", message.destination_id)
                return
            self.status_updates_log.append(message.content)
            self.join_failed(f"{self.connect_to_host}:{self.connect_to_port} refused us: {message.content}",
                             refused=True)
            return
        elif not self.check_source(record, message.source_id):
            return
        if for_us:
            self.logger.info("status %d from %d: %s", message.status_code, message.source_id, message.content)
            self.status_updates_log.append(message.content)
        elif not self.send_message_to_host(message.destination_id, message.bytes):
            self.logger.warning("status for unknown id %d dropped", message.destination_id)

    def handle_client_registration_message(self, io_device: selectors.SelectorKey,
                                           message: ClientRegistrationMessage) -> None:
        record = io_device.data
        client_id = message.source_id
        if isinstance(record, ClientConnectionData):
            raise ProtocolViolation("a client registers once, and only itself")
        if client_id == 0:
            raise ProtocolViolation("id 0 is not a valid machine id")
        self.check_last_hop(record, message.last_hop_id)
        client = ClientConnectionData(client_id, message.client_name, message.client_info)
        client.registration = self.relayed(message.bytes)
        if self.place(client, record) == TAKEN:
            self.refuse_or_ignore(io_device, client_id, f"Someone has already registered with ID {client_id}")
            return
        if isinstance(record, ServerConnectionData):  # a neighbour announces a client behind it
            self.routes.add_behind(client, record.id)
            self.logger.info("client %s (%d) is known behind %d", client.client_name, client_id, record.id)
        else:  # a client of ours introduces itself
            others = [other for other in self.routes.clients() if other.id != client_id]
            self.register_link(io_device, client)
            self.logger.info("client %s (%d) joined here", client.client_name, client_id)
            welcome = f"Welcome to the Clemson Relay Chat network {client.client_name}"
            self.send_status(client_id, STATUS_WELCOME, welcome)
            for other in others:
                self.send_message_to_host(client_id, other.registration)
        self.broadcast_message_to_servers(client.registration, ignore_host_id=client.first_link_id)
        self.broadcast_message_to_adjacent_clients(client.registration, ignore_host_id=client_id)

    def handle_client_chat_message(self, io_device: selectors.SelectorKey,
                                   message: Union[ClientChatMessage, FramedChatMessage]) -> None:
        source = self.hosts_db.get(message.source_id)
        if source is None or source.link is not io_device.data.link:  # check_source's common case, inline
            if not self.check_source(io_device.data, message.source_id):
                return
        if type(self.hosts_db.get(message.destination_id)) is ClientConnectionData and \
                self.send_message_to_host(message.destination_id, message.bytes):
            return
        # Unknown, or known but out of reach (its link is lost, and the hold-down not over): said at once.
        self.logger.debug("chat from %d to unreachable id %d", message.source_id, message.destination_id)
        self.send_status(message.source_id, STATUS_UNKNOWN_ID, f"Unknown ID {message.destination_id}")

    def handle_client_quit_message(self, io_device: selectors.SelectorKey, message: ClientQuitMessage) -> None:
        record = io_device.data
        if not self.check_source(record, message.source_id):
            return
        client = self.hosts_db[message.source_id]
        if not isinstance(client, ClientConnectionData):
            raise ProtocolViolation(f"id {client.id} is a server, and servers do not send client quits")
        self.routes.forget(client.id)
        self.logger.info("client %s (%d) quit: %s", client.client_name, client.id, message.content)
        self.broadcast_message_to_servers(message.bytes, ignore_host_id=record.id)
        self.broadcast_message_to_adjacent_clients(message.bytes, ignore_host_id=record.id)
        if record is client:  # it may stay connected: a peer that must register again, or go
            self.unregister_link(client.link)

    def init_logging(self) -> None:
        """Log to `log_file` in a Logs/ folder beside this file (as the course's template does), or
        nowhere without one; an absolute path is kept as it is."""
        self.logger.setLevel(logging.DEBUG if self.verbose else logging.INFO)
        if not self.log_file:
            self.logger.addHandler(logging.NullHandler())  # not logging's last resort, which would print
            return
        path = Path(__file__).resolve().parent / "Logs" / self.log_file
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="w", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.addHandler(handler)

    def print_info(self, msg: str) -> None:
        """A line of the trace: printed as the course's reference prints it when tracing, always logged."""
        if self.tracing:
            print(f"[{self.server_name}] \t{msg}")
        self.logger.info(msg, extra={"trace": True})

    def union(self, lst1: List[int], lst2: List[int]) -> List[int]:
        return list(set(lst1) | set(lst2))

    def intersect(self, lst1: List[int], lst2: List[int]) -> List[int]:
        return list(set(lst1) & set(lst2))

    def diff(self, list1: List[int], list2: List[int]) -> List[int]:
        return list(set(list1) - set(list2))

    # --------------------------------------------------------------------------- ours: messages

    def follow_replaced_handlers(self) -> None:
        """A handler replaced on the object or on the class after construction (as a course's test may
        do, and undo) takes its place in message_handlers, so that every message of its type reaches it;
        an entry put into message_handlers itself stays. Called once per chunk received."""
        for message_type, name in HANDLER_NAMES.items():
            current = getattr(self, name)
            if self.message_handlers.get(message_type) == self.bound_handlers[message_type] != current:
                self.message_handlers[message_type] = self.bound_handlers[message_type] = current

    def handle_server_quit_message(self, io_device: selectors.SelectorKey, message: ServerQuitMessage) -> None:
        record = io_device.data
        if not isinstance(record, ServerConnectionData):
            raise ProtocolViolation("only a registered server may announce a server quit")
        if not self.check_source(record, message.source_id):
            return
        server = self.hosts_db[message.source_id]
        if not isinstance(server, ServerConnectionData):
            raise ProtocolViolation(f"id {server.id} is a client, and clients do not send server quits")
        if server is record:
            # A neighbour says goodbye: everything reached through it is gone, announced host by host.
            link: Link = record.link  # type: ignore[assignment]
            self.depart(link, message.content)
            self.close_after_flush(link, "it announced its departure")
            return
        self.routes.forget(server.id)
        self.logger.info("server %s (%d) quit: %s", server.server_name, server.id, message.content)
        self.broadcast_message_to_servers(message.bytes, ignore_host_id=record.id)

    def check_source(self, record: ConnectionData, source_id: int) -> bool:
        """Whether a message may be acted on: a client speaks only for itself, a server link relays only
        for hosts reached through it. False: drop it (its source is gone); a lie raises."""
        source = self.hosts_db.get(source_id)
        if source is not None and source.link is record.link:  # reached through this very link: all is well
            return True  # (handle_client_chat_message makes this test itself before calling here)
        if type(record) is ClientConnectionData:
            if source_id != record.id:
                raise ProtocolViolation(f"a client may only speak for itself (id {record.id}), not for id {source_id}")
            return False  # it has quit (and its id may be someone else's now)
        if type(record) is ServerConnectionData:
            # A host it announced that we left out (see refuse_or_ignore), or one that is gone: dropped.
            self.logger.warning("%s relayed a message from id %d, which we do not reach through it; dropped",
                                self.describe(record), source_id)
            return False
        raise ProtocolViolation("a peer must register before anything else")

    def check_last_hop(self, record: ConnectionData, last_hop_id: int) -> None:
        """Whoever passes a registration on puts its own id as its last hop: a neighbour's must be its."""
        if type(record) is ServerConnectionData and last_hop_id != record.id:
            raise ProtocolViolation(f"a registration passed on by {record.id} must carry {record.id} as its last"
                                    f" hop, not {last_hop_id}")

    def place(self, newcomer: HostData, record: ConnectionData) -> str:
        """How a registration for `newcomer`, arriving on `record`'s link, fits what we know: NEW, AGAIN
        (known through this same link: a merge or a rejoin announces it once more; the entry is
        refreshed), BACK (the same kind of machine, known through a link that is lost and held: it came
        back this way, and takes its place without a departure) or TAKEN (our own id, known through
        another open link, or held for a machine of the other kind). A neighbour registering itself
        again is a protocol error: its entry would become a host behind itself."""
        host = self.hosts_db.get(newcomer.id)
        if host is record:
            raise ProtocolViolation(f"{record.id} registered itself already")
        if newcomer.id == self.id:
            return TAKEN
        if host is None:
            return NEW
        if host.link is record.link:
            return AGAIN
        if (host.link is None or host.link.state == CLOSED) and type(host) is type(newcomer):
            return BACK
        return TAKEN

    def refuse_or_ignore(self, io_device: selectors.SelectorKey, host_id: int, text: str) -> None:
        """A registration for an id that is taken. From a peer introducing itself: refused, and its link
        closed. From a neighbour announcing a host behind it (two networks merging, and both have that
        id): that one host is not taken in or passed on; the link and every other host stay, and the
        neighbour, seeing ours, does the same, so that each side keeps the one it had first."""
        if type(io_device.data) is ServerConnectionData:
            self.logger.warning("%s announced id %d, which we reach through %s: that one host is left out (%s)",
                                self.describe(io_device.data), host_id, self.describe_route(host_id), text)
            return
        self.refuse(io_device, text)

    def describe_route(self, host_id: int) -> str:
        if host_id == self.id:
            return "ourselves"
        host = self.hosts_db[host_id]
        return self.describe(host.link.record if host.link is not None else None)

    def send_status(self, host_id: int, code: int, text: str) -> None:
        """A status for a host: with destination 0 to an adjacent one, as the course's reference sends
        every status, and with the host's id to one further away, which the servers between route."""
        destination = 0 if host_id in self.adjacent_user_ids or host_id in self.adjacent_server_ids else host_id
        self.send_message_to_host(host_id, StatusUpdateMessage.bytes(self.id, destination, code, text))

    def relayed(self, registration: bytes) -> bytes:
        """A registration as this server passes it on: the same bytes with our id as the last hop."""
        return registration[:LAST_HOP.start] + self.id.to_bytes(4, "big") + registration[LAST_HOP.stop:]

    def describe(self, record: Optional[ConnectionData]) -> str:
        if isinstance(record, ServerConnectionData):
            return f"server {record.server_name} ({record.id})"
        if isinstance(record, ClientConnectionData):
            return f"client {record.client_name} ({record.id})"
        return "an unregistered peer"

    # ------------------------------------------------------------------------------ ours: links

    def rest_listening_socket(self, error: OSError) -> None:
        """Out of file descriptors: the connection waits in the listening socket's backlog, which stays
        readable, so the loop would spin on it. It is not watched for ACCEPT_PAUSE seconds; the links we
        have are served meanwhile, and accepting starts again once descriptors are free."""
        if ("accept", None) in self.timers or self.server_socket is None:
            return
        self.logger.warning("cannot accept a connection (%s); trying again in %g s", error.strerror, ACCEPT_PAUSE)
        listening = self.server_socket
        self.sel.unregister(listening)

        def accept_again() -> None:
            self.sel.register(listening, selectors.EVENT_READ)

        self.timers.start(("accept", None), ACCEPT_PAUSE, accept_again)

    def open_link(self, sock: socket.socket, outbound: bool, connecting: bool = False) -> Link:
        link = Link(sock, self.sel, BaseConnectionData(), outbound, self.max_frame_size, connecting)
        self.links.add(link)
        self.start_register_timer(link)
        return link

    def start_register_timer(self, link: Link) -> None:
        self.timers.start(("register", link), self.register_timeout,
                          lambda: self.disconnect(link, f"did not register within {self.register_timeout:g} s"))

    def register_link(self, io_device: selectors.SelectorKey, host: HostData) -> None:
        """A link's peer has registered: it becomes an adjacent host, and the link's record."""
        link: Link = io_device.data.link
        link.attach(host)
        self.timers.cancel(("register", link))
        self.routes.add_adjacent(host)

    def unregister_link(self, link: Optional[Link]) -> None:
        """A client quit and stays connected: its link is opened again, as if just accepted."""
        if link is not None and link.state != CLOSED:
            link.attach(BaseConnectionData())
            self.start_register_timer(link)

    def refuse(self, io_device: selectors.SelectorKey, text: str) -> None:
        """Tell a peer that its id is taken, over its own link with destination 0, and close that link."""
        self.logger.warning("refused a peer: %s", text)
        self.send_message_to_unknown_io_device(io_device, StatusUpdateMessage.bytes(
            self.id, 0, STATUS_DUPLICATE_ID, text))
        self.close_after_flush(io_device.data.link, f"refused: {text}")

    def protocol_error(self, link: Link, problem: str) -> None:
        """Tell the peer what it did wrong, then close its link once that is sent."""
        record = link.record
        self.logger.warning("protocol error from %s: %s", self.describe(record), problem)
        status = StatusUpdateMessage.bytes(self.id, 0, STATUS_PROTOCOL_ERROR, f"Protocol error: {problem}")
        if isinstance(record, (ServerConnectionData, ClientConnectionData)) and self.hosts_db.get(record.id) is record:
            self.send_message_to_host(record.id, status)
        else:
            self.send_message_to_unknown_io_device(link.key(), status)
        self.close_after_flush(link, f"protocol error: {problem}")

    def queue(self, link: Link, data: bytes) -> None:
        """Add to a link's output. It leaves at the end of this loop turn, with everything else the turn
        gives that link, in as few system calls as the socket allows. send_message_to_host has a copy of
        this, written out for speed."""
        buffer = link.write_buffer
        if not buffer:
            self.schedule_flush(link)
        buffer += data
        if len(buffer) > self.high_water:
            self.check_output_size(link)

    def schedule_flush(self, link: Link) -> None:
        """A link's output was empty and is not: send it at the end of this loop turn, or, outside our
        loop's turn (from a course's own loop, say), on the next write event."""
        if self.busy_turns % 2:
            self.to_flush.append(link)
        else:
            link.wait_for_writable()

    def check_output_size(self, link: Link) -> None:
        """A link has much output waiting. A client, or a server that takes nothing, is dropped at the
        output cap; a server link above its high-water mark holds back whatever feeds it (hold_back)."""
        if len(link.write_buffer) > self.max_output:
            self.disconnect(link, f"more than {self.max_output} bytes of output waiting: the peer stopped reading")
        elif type(link.record) is ServerConnectionData:
            self.overfed.add(link)

    def flush(self, link: Link) -> None:
        """Send what the socket takes now; wait for writability only while something is left."""
        try:
            sent = link.send_some()
        except OSError as error:
            self.disconnect(link, f"send failed: {error}")
            return
        if link.held_back:
            if len(link.write_buffer) <= self.low_water:
                self.release_held_back(link)
            elif sent:
                self.start_stall_timer(link)  # it takes bytes: slow, but alive
        if not link.write_buffer and link.state == CLOSING:
            self.disconnect(link, "closed after its last message was sent")

    def close_after_flush(self, link: Link, reason: str) -> None:
        """Read no more from a link and close it once its output is sent (CLOSE_GRACE at most)."""
        if link.state == CLOSED:
            return
        if not link.write_buffer:
            self.disconnect(link, reason)
            return
        link.start_closing()
        self.timers.start(("closing", link), CLOSE_GRACE,
                          lambda: self.disconnect(link, "closed without taking its last message"))

    def disconnect(self, link: Link, reason: str, level: int = logging.INFO) -> None:
        """The one way a link closes. A registered peer's departure is announced after the hold-down."""
        if link.state == CLOSED:
            return
        self.logger.log(level, "closing the link to %s: %s", self.describe(link.record), reason)
        link.close()
        self.links.discard(link)
        self.overfed.discard(link)
        self.release_held_back(link)
        for kind in ("register", "closing"):
            self.timers.cancel((kind, link))
        if any(host.link is link for host in self.hosts_db.values()):
            # The course's tests read state after stopping servers one by one: nothing may change yet.
            self.timers.start(("hold", link), self.split_hold, lambda: self.depart(link))
        if link is self.uplink:
            self.uplink = None
            if self.reconnect and not self.request_terminate:
                self.schedule_reconnect()

    # -------------------------------------------------------------------------- ours: departures

    def depart(self, link: Link, reason: Optional[str] = None) -> None:
        """Forget every host still reached through a lost link (those that came back another way, or
        over a new link, have left it), and tell the rest of the network."""
        self.timers.cancel(("hold", link))
        lost = [host for host in self.hosts_db.values() if host.link is link]
        neighbour = link.record
        if not lost or not isinstance(neighbour, (ServerConnectionData, ClientConnectionData)):
            return
        if isinstance(neighbour, ServerConnectionData):
            # A netsplit names both ends, as IRC does, in words a chat user understands.
            reason = reason or (f"the connection between servers {self.server_name} and {neighbour.server_name}"
                                " was lost (netsplit)")
        reason = reason or "Connection lost"
        for gone in lost:
            self.routes.forget(gone.id)
        self.logger.info("the link to %s is gone, and with it %d host(s): %s", self.describe(neighbour), len(lost),
                         reason)
        for gone in lost:
            if isinstance(gone, ClientConnectionData):
                quit_message = ClientQuitMessage.bytes(gone.id, reason)
                self.broadcast_message_to_servers(quit_message)
                self.broadcast_message_to_adjacent_clients(quit_message)
        for gone in lost:
            if isinstance(gone, ServerConnectionData):
                self.broadcast_message_to_servers(ServerQuitMessage.bytes(gone.id, 0, reason))

    def join_failed(self, why: str, refused: bool = False) -> None:
        """The server to join cannot be reached or refused us. In a test harness, and with
        --alone-if-join-fails, we run on as a network of our own (the course's reference does), and try
        again later unless refused; from the command line that is an error, and we stop (main() says why).
        Once we have joined, a failure is a reconnect's: it is tried again, even when refused (the server
        may still hold our old link, its end not yet closed), and the uplink's close schedules the try."""
        if self.joined_once:
            self.logger.error("%s; trying again", why)
        elif self.stop_if_join_fails:
            self.logger.error("%s; stopping", why)
            self.join_failure = why
            self.request_terminate = True
        elif refused or not self.reconnect:
            self.reconnect = False  # a refusal stands: trying again would be refused again
            self.logger.error("%s; running as a network of our own%s", why, ", and giving up" if refused else "")
        else:
            self.logger.error("%s; running as a network of our own, and trying again", why)
            self.schedule_reconnect()

    # ---------------------------------------------------------------------------- ours: the uplink

    def schedule_reconnect(self) -> None:
        """Try the lost uplink again: the first time within reconnect_first seconds, then twice as long
        after each failure up to reconnect_max, each wait between half and all of that (jitter, so that
        servers cut off together do not all come back at once)."""
        delay = min(self.reconnect_max, self.reconnect_first * 2 ** self.reconnect_tries) * random.uniform(0.5, 1)
        self.reconnect_tries += 1
        self.logger.debug("trying %s:%s again in %.1f s (try %d)", self.connect_to_host, self.connect_to_port,
                          delay, self.reconnect_tries)
        self.timers.start(("reconnect", None), delay, self.reconnect_now)

    def reconnect_now(self) -> None:
        """Open the uplink again, without waiting: the connection completes on a write event."""
        sock: Optional[socket.socket] = None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            # A name is looked up here only if the first join failed (after it, the address is kept): that
            # blocks the loop while the resolver works, as seldom as the backoff lets it.
            code = sock.connect_ex((self.connect_to_host_addr or "localhost", int(self.connect_to_port or 0)))
            if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                raise OSError(code, os.strerror(code))
        except OSError as error:  # refused, no such name, no descriptor left: one more failed try
            if sock is not None:
                sock.close()
            self.logger.debug("could not reach %s:%s: %s", self.connect_to_host, self.connect_to_port, error)
            self.schedule_reconnect()
            return
        link = self.uplink = self.open_link(sock, outbound=True, connecting=True)
        link.write_buffer += ServerRegistrationMessage.bytes(self.id, 0, self.server_name, self.server_info)

    def finish_connecting(self, link: Link) -> None:
        error = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            # A failed try, logged at debug level as every try is; the next one is scheduled there.
            self.disconnect(link, f"could not reach {self.connect_to_host}:{self.connect_to_port}:"
                                  f" {os.strerror(error)}", logging.DEBUG)
            return
        self.logger.debug("reached %s:%s again; registering", self.connect_to_host, self.connect_to_port)
        link.connected()
        self.flush(link)  # our registration

    def say_goodbye(self) -> None:
        """Announce this server's departure to its neighbour servers, waiting briefly for it to leave."""
        goodbye = ServerQuitMessage.bytes(self.id, 0, f"{self.server_name} is shutting down")
        neighbours = [self.hosts_db[server_id].link for server_id in self.adjacent_server_ids]
        for link in neighbours:
            if link is not None and link.state != CLOSED:
                try:
                    link.sock.settimeout(1.0)
                    link.sock.sendall(bytes(link.write_buffer) + goodbye)
                except OSError as error:
                    self.logger.warning("could not say goodbye to %s: %s", self.describe(link.record), error)
        self.logger.info("announced our departure to %d neighbour server(s)", len(neighbours))

    # ------------------------------------------------------------------------ ours: backpressure

    def hold_back(self, reader: Link) -> None:
        """The chunk just handled fed server links past their high-water mark: a slow but live server is
        not dropped; the link that feeds it is not read until it catches up (see release_held_back)."""
        congested = [link for link in self.overfed if link is not reader and link.state != CLOSED]
        self.overfed.clear()
        if not congested or reader.state != OPEN:
            return
        reader.pause()
        for link in congested:  # each holds the reader until it has caught up
            link.held_back.append(reader)
            if ("stall", link) not in self.timers:
                self.start_stall_timer(link)

    def start_stall_timer(self, link: Link) -> None:
        self.timers.start(("stall", link), self.stall_timeout, lambda: self.disconnect(
            link, f"took no bytes for {self.stall_timeout:g} s while others waited for it"))

    def release_held_back(self, link: Link) -> None:
        for reader in link.held_back:
            still_held = any(reader in other.held_back for other in self.links if other is not link)
            if reader.state == PAUSED and not still_held:
                reader.resume()
        link.held_back.clear()
        self.timers.cancel(("stall", link))

    # ---------------------------------------------------------------------------- ours: the loop

    def serve_turn(self, events: List[Tuple[selectors.SelectorKey, int]]) -> None:
        """One loop turn: every ready socket, then the timers that are due, then the turn's output."""
        self.busy_turns += 1
        try:
            for io_device, event_mask in events:
                if io_device.data is WAKE_UP:
                    self.wake_reader.recv(4096)  # the loop's condition says why it was woken
                    continue
                link = io_device.data.link if io_device.data is not None else None
                self.guarded(link, self.handle_io_device_events, io_device, event_mask)
            for key in self.timers.due_now():
                self.guarded(key[1] if isinstance(key[1], Link) else None, self.timers.fire_now, key)
            for link in self.to_flush:
                if link.state != CLOSED and link.write_buffer and not link.waits_for_writable:
                    self.guarded(link, self.flush, link)
            self.to_flush.clear()
        finally:
            self.busy_turns += 1

    def guarded(self, link: Optional[Link], work: Callable[..., None], *arguments: Any) -> None:
        """Do some of a turn's work; a bug in it must cost one link (the one it was for), never the server."""
        try:
            work(*arguments)
        except Exception:
            self.logger.exception("unexpected error while serving %s", self.describe(link.record if link else None))
            if link is not None:
                self.disconnect(link, "unexpected server error")

    def is_quiet(self) -> bool:
        """True when this server has nothing left to do: no unsent output, no partial frame, nothing to
        read or accept. Safe to call from another thread (a test manager's), which is why it reads the
        loop's turn counter before and after looking, and answers False when in doubt. A caller that
        checks several machines one after another should check them all twice and compare each one's
        `busy_turns`, so that it does not miss a message passed between two of them meanwhile."""
        turn = self.busy_turns
        if turn % 2 or not self.serving:
            return False
        try:
            links = list(self.links)
            if any(link.write_buffer or link.cutter.pending or link.state in (PAUSED, CONNECTING)
                   or unsent_bytes(link.sock) for link in links):
                return False
            poller = select.poll()
            sockets = [link.sock for link in links] + ([self.server_socket] if self.server_socket else [])
            for sock in sockets:
                poller.register(sock, select.POLLIN)
            ready = poller.poll(0)
        except (RuntimeError, ValueError, OSError, TypeError, AttributeError):
            # The loop changed its sockets meanwhile (or this system has no poll()): not provably quiet.
            return False
        return not ready and self.busy_turns == turn

    def next_deadline(self) -> Optional[float]:
        """When (on time.monotonic()) this server's next timer fires: a held departure, a registration
        timeout, a closing link's grace, a stalled link's limit, the next try of a lost uplink or the end of
        a pause in accepting (out of descriptors); None without timers. With is_quiet(),
        it lets a test manager wait through a hold-down."""
        return self.timers.next_deadline()

    def held_links(self) -> List[int]:
        """The ids of the adjacent hosts whose links were lost and whose departure waits for the hold-down."""
        return [key[1].record.id for key in list(self.timers.due) if key[0] == "hold"]


# --------------------------------------------------------------------------- under the template

class FrameCutter:
    """Cuts one connection's byte stream into whole frames and reads each as a message: bytes in,
    messages out (each with its exact frame as `.bytes`), no sockets.

    Frames may arrive cut anywhere and glued together; `feed` returns a message for every frame that is
    now whole and keeps the rest. An unknown type or a 4-byte length above the limit is known as soon as
    the header is in, and a frame the parser refuses as soon as it is whole: the messages before it are
    still returned, `problem` says what is wrong, and the cutter takes nothing more (the stream has lost
    its framing).
    """

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self.rest = b""  # received bytes that do not make a whole frame yet
        self.problem: Optional[str] = None

    @property
    def pending(self) -> int:
        return len(self.rest)

    def feed(self, data: bytes) -> List[Message]:
        if self.problem is not None:
            return []
        if self.rest:
            data = self.rest + data
        messages: List[Message] = []
        # Locals, not globals and attributes: this loop runs once per frame of every chunk.
        append, chat_header, chat, chat_type = messages.append, _CHAT_HEADER.unpack_from, FramedChatMessage, CLIENT_CHAT
        header_size, longest_content = CHAT_HEADER_SIZE, self.max_frame_size - CHAT_HEADER_SIZE
        offset, end = 0, len(data)
        try:
            while offset < end:
                if data[offset] == chat_type and end - offset >= header_size:  # most of the traffic
                    _, source_id, destination_id, length = chat_header(data, offset)
                    if length > longest_content:
                        raise ProtocolViolation(f"a frame declares {header_size + length} bytes; the limit is"
                                                f" {self.max_frame_size}")
                    stop = offset + header_size + length
                    if stop > end:
                        break
                    append(chat(source_id, destination_id, data[offset:stop]))
                else:
                    size = self.frame_size(data, offset)
                    if size is None or offset + size > end:
                        break
                    stop = offset + size
                    append(parse_message(data[offset:stop]))
                offset = stop
        except ProtocolViolation as violation:
            self.problem = str(violation)
        self.rest = b"" if self.problem is not None else data[offset:]
        return messages

    def frame_size(self, data: bytes, offset: int) -> Optional[int]:
        """The size of the frame at `offset`, or None while its header is incomplete."""
        layout = FRAME_LAYOUTS.get(data[offset])
        if layout is None:
            raise ProtocolViolation(f"unknown message type 0x{data[offset]:02x}")
        header_size, length_at = layout
        if len(data) - offset < header_size:
            return None
        if length_at is None:
            name_length, info_length = _NAME_AND_INFO_LENGTHS.unpack_from(data, offset + 9)
            return header_size + int(name_length) + int(info_length)
        size = header_size + int(_CONTENT_LENGTH.unpack_from(data, offset + length_at)[0])
        if size > self.max_frame_size:
            raise ProtocolViolation(f"a frame declares {size} bytes; the limit is {self.max_frame_size}")
        return size


def keep_alive(sock: socket.socket) -> None:
    """Have the kernel probe an idle connection, so that a peer gone without a word (a cut cable, a
    machine switched off) makes the socket fail within about KEEPALIVE_IDLE + 3 * KEEPALIVE_INTERVAL."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                          ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):  # Linux has all three; elsewhere the system's defaults stay
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes given to this socket that its kernel has not sent yet (Nagle's algorithm, or a full
    window, holds them back); Linux can say, elsewhere 0. Sent bytes are at once readable at a peer
    on the same machine, so only these are on their way unseen."""
    if UNSENT_REQUEST is None:
        return 0
    reply = fcntl.ioctl(sock.fileno(), UNSENT_REQUEST, b"\0\0\0\0")
    return int.from_bytes(reply, sys.byteorder, signed=True)


class Link:
    """One socket to an adjacent machine, from accept or connect until it closes: its frame cutter,
    its output, the events the selector watches for, and whether it is paused or closing.

    The selector's data for the socket is the link's record: a BaseConnectionData until the peer
    registers, then the peer's host record (see attach). The output is the record's write_buffer.
    """

    def __init__(self, sock: socket.socket, sel: selectors.BaseSelector, record: BaseConnectionData,
                 outbound: bool, max_frame_size: int, connecting: bool = False) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        keep_alive(sock)
        self.sock = sock
        self.sel = sel
        self.record: ConnectionData = record
        self.outbound = outbound  # the link this server opened to join a network
        self.cutter = FrameCutter(max_frame_size)
        self.write_buffer = record.write_buffer
        record.link = self
        self.state = CONNECTING if connecting else OPEN
        self.waits_for_writable = connecting  # the socket took less than we had, or is not connected yet
        self.interest = 0  # the selector events registered for the socket now (0: not registered)
        self.held_back: List[Link] = []  # links paused until this one's output drains
        self.update_interest()

    def attach(self, record: BaseConnectionData) -> None:
        """The peer has registered (or, a client that quit, must again): its record takes the place of
        the link's, output included."""
        record.write_buffer = self.write_buffer
        record.link = self
        self.record = record
        if self.interest:
            self.sel.modify(self.sock, self.interest, record)

    def key(self) -> selectors.SelectorKey:
        """The selector's key for this socket, as the template's methods take it (an open link is
        always registered for reading)."""
        return self.sel.get_key(self.sock)

    def send_some(self) -> int:
        """Send as much of the output as the socket takes now; returns how much that was."""
        try:
            sent = self.sock.send(self.write_buffer)
        except (BlockingIOError, InterruptedError):
            sent = 0
        del self.write_buffer[:sent]
        self.waits_for_writable = bool(self.write_buffer)
        self.update_interest()
        return sent

    def connected(self) -> None:
        self.state = OPEN
        self.update_interest()

    def wait_for_writable(self) -> None:
        self.waits_for_writable = True
        self.update_interest()

    def pause(self) -> None:
        self.state = PAUSED
        self.update_interest()

    def resume(self) -> None:
        self.state = OPEN
        self.update_interest()

    def start_closing(self) -> None:
        self.state = CLOSING
        self.cutter.rest = b""
        self.update_interest()

    def close(self) -> None:
        if self.interest:
            self.sel.unregister(self.sock)
            self.interest = 0
        self.sock.close()
        self.state = CLOSED
        self.write_buffer.clear()
        self.cutter.rest = b""

    def update_interest(self) -> None:
        """Register for exactly the events wanted now: reading while readable, writing while output waits
        for the socket."""
        events = (selectors.EVENT_READ if self.state == OPEN else 0) | \
                 (selectors.EVENT_WRITE if self.waits_for_writable else 0)
        if events == self.interest or self.state == CLOSED:
            return
        if not self.interest:
            self.sel.register(self.sock, events, self.record)
        elif not events:
            self.sel.unregister(self.sock)
        else:
            self.sel.modify(self.sock, events, self.record)
        self.interest = events


class RoutingTable:
    """Every other host of the network and its first link, kept in the template's own containers:
    hosts_db, adjacent_server_ids and adjacent_user_ids."""

    def __init__(self, hosts_db: Dict[int, HostData], adjacent_server_ids: List[int],
                 adjacent_user_ids: List[int]) -> None:
        self.hosts_db = hosts_db
        self.adjacent_server_ids = adjacent_server_ids
        self.adjacent_user_ids = adjacent_user_ids

    def add_adjacent(self, host: HostData) -> None:
        host.first_link_id = host.id
        self.hosts_db[host.id] = host
        adjacent = self.adjacent_server_ids if isinstance(host, ServerConnectionData) else self.adjacent_user_ids
        if host.id not in adjacent:  # a neighbour back within the hold-down is in the list already
            adjacent.append(host.id)

    def add_behind(self, host: HostData, first_link_id: int) -> None:
        host.first_link_id = first_link_id
        host.link = self.hosts_db[first_link_id].link
        self.hosts_db[host.id] = host
        self.unlist(host.id)  # it may have been adjacent, and come back behind another neighbour

    def unlist(self, host_id: int) -> None:
        for adjacent in (self.adjacent_server_ids, self.adjacent_user_ids):
            if host_id in adjacent:
                adjacent.remove(host_id)

    def clients(self) -> List[ClientConnectionData]:
        return [host for host in self.hosts_db.values() if isinstance(host, ClientConnectionData)]

    def forget(self, host_id: int) -> None:
        self.hosts_db.pop(host_id, None)
        self.unlist(host_id)


TimerKey = Tuple[str, Any]  # what it is for ("hold", "register", "closing", "stall", "reconnect", "accept") and whom


class Timers:
    """Every deadline the server keeps, in one map from a key such as ("hold", host id) to when it is
    due and what to do then. The loop fires the due ones; next_deadline() tells a test manager when
    the next one is (it may be read from another thread)."""

    def __init__(self) -> None:
        self.due: Dict[TimerKey, Tuple[float, Callable[[], None]]] = {}

    def __contains__(self, key: TimerKey) -> bool:
        return key in self.due

    def start(self, key: TimerKey, seconds: float, action: Callable[[], None]) -> None:
        """Start, or restart, the timer called `key`."""
        self.due[key] = (time.monotonic() + seconds, action)

    def cancel(self, key: TimerKey) -> None:
        self.due.pop(key, None)

    def fire_now(self, key: TimerKey) -> None:
        entry = self.due.pop(key, None)
        if entry is not None:
            entry[1]()

    def due_now(self) -> List[TimerKey]:
        """The timers due by now (fire each with fire_now: an earlier one's action may cancel a later)."""
        if not self.due:
            return []
        now = time.monotonic()
        return [key for key, (when, _) in self.due.items() if when <= now]

    def next_deadline(self) -> Optional[float]:
        try:
            return min((when for when, _ in list(self.due.values())), default=None)
        except RuntimeError:  # the loop changed them meanwhile: something is happening now
            return time.monotonic()


# ------------------------------------------------------------------------------------ command line

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line: what is wrong with which option, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def number(kind: Callable[[str], Any], low: float, high: float, unit: str = "") -> Callable[[str], Any]:
    """An option's type: a number of this kind from low to high, or an error that says so."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # also refuses nan
            shown = "{:,}" if kind is int else "{:g}"
            limits = f"{shown.format(low)}{unit} or more" if high == float("inf") else \
                f"from {shown.format(low)} to {shown.format(high)}{unit}"
            raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'}"
                                             f" {limits}, not {text!r}")
        return value
    return convert


def text(limit: int, may_be_empty: bool = True) -> Callable[[str], str]:
    """An option's type: text of at most `limit` bytes of UTF-8 (its length field's limit)."""
    def convert(value: str) -> str:
        size = len(value.encode("utf-8"))
        if size > limit or (not value and not may_be_empty):
            allowed = f"at most {limit:,}" if may_be_empty else f"1 to {limit:,}"
            raise argparse.ArgumentTypeError(f"must be {allowed} bytes of UTF-8, not {size:,}")
        return value
    return convert


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="ChatServer.py", description="Run a Clemson Relay Chat server.")
    parser.add_argument("--id", type=number(int, 1, 0xFFFFFFFF), help="this server's id (default: random)")
    parser.add_argument("--servername", required=True, type=text(0xFF, may_be_empty=False),
                        help="this server's name, at most 255 bytes")
    parser.add_argument("--port", type=number(int, 0, 65535), required=True,
                        help="port to listen on (0: any free port)")
    parser.add_argument("--info", default="", type=text(0xFFFF), help="a line about this server")
    parser.add_argument("--connect_to_host", help="host of a server to join (default localhost)")
    parser.add_argument("--connect_to_port", type=number(int, 1, 65535), help="port of a server to join")
    parser.add_argument("--alone-if-join-fails", dest="alone_if_join_fails", action="store_true",
                        help="if the server to join cannot be reached or refuses us, start a network of our own"
                             " instead of stopping with an error")
    parser.add_argument("--no-reconnect", dest="reconnect", action="store_false",
                        help="do not open the link to the server we joined again when it is lost")
    parser.add_argument("--reconnect-first", dest="reconnect_first", type=number(float, 0.01, 3600, " s"),
                        default=DEFAULT_RECONNECT_FIRST, metavar="SECONDS",
                        help="try a lost link again within this long (default %(default)g) ...")
    parser.add_argument("--reconnect-max", dest="reconnect_max", type=number(float, 0.01, 3600, " s"),
                        default=DEFAULT_RECONNECT_MAX, metavar="SECONDS",
                        help="... then twice as long after each failed try, up to this (default %(default)g)")
    parser.add_argument("--bind", default="", help="address to listen on (default: all interfaces)")
    parser.add_argument("--log-file", dest="log_file",
                        help="also write the log to this file (a relative path is in Logs/ beside this server)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the trace of every message on stdout, as the course's reference does")
    parser.add_argument("--split-hold", dest="split_hold", type=number(float, 0, float("inf"), " s"),
                        default=DEFAULT_SPLIT_HOLD, metavar="SECONDS", help="how long the hosts behind a lost link"
                        " stay known before their departure is announced (default %(default)g; 0: at once)")
    parser.add_argument("--register-timeout", dest="register_timeout", type=number(float, 0.001, float("inf"), " s"),
                        default=DEFAULT_REGISTER_TIMEOUT, metavar="SECONDS",
                        help="drop a connection that has not registered by then (default %(default)g)")
    parser.add_argument("--max-output", dest="max_output", type=number(int, 1, float("inf"), " bytes"),
                        default=DEFAULT_MAX_OUTPUT, metavar="BYTES",
                        help="drop a peer whose unsent output grows past this (default %(default)d)")
    parser.add_argument("--stall-timeout", dest="stall_timeout", type=number(float, 0.001, float("inf"), " s"),
                        default=DEFAULT_STALL_TIMEOUT, metavar="SECONDS", help="drop a server link that takes no"
                        " bytes for this long while others wait for it (default %(default)g)")
    parser.add_argument("--max-frame-size", dest="max_frame_size", type=number(int, 16, float("inf"), " bytes"),
                        default=DEFAULT_MAX_FRAME_SIZE, metavar="BYTES",
                        help="refuse a chat, status or quit that declares more bytes (default %(default)d)")
    options = parser.parse_args(argv)
    if options.connect_to_host is not None and options.connect_to_port is None:
        parser.error("--connect_to_host: needs --connect_to_port, the port of the server to join")
    if options.connect_to_port is not None and options.connect_to_host is None:
        options.connect_to_host = "localhost"
    return options


class StartUpHeld(logging.Filter):
    """The console log of a server started from the command line. Its start-up lines wait until it
    serves, so that a server that cannot start (its port in use, its join failed) says why in one line,
    main()'s, and nothing else; the log file has them all. Trace lines never show here: -v prints the
    trace on stdout, and without -v there is none."""

    def __init__(self, server: CRCServer, console: logging.Handler) -> None:
        super().__init__()
        self.server = server
        self.console = console
        self.held: Optional[List[logging.LogRecord]] = []  # None once the server serves

    def filter(self, record: logging.LogRecord) -> bool:
        if self.held is not None and self.server.serving and not self.server.request_terminate:
            held, self.held = self.held, None
            for earlier in held:
                self.console.emit(earlier)
        if getattr(record, "trace", False):
            return False
        if self.held is not None:
            self.held.append(record)
            return False
        return True


def main(argv: Optional[List[str]] = None) -> int:
    options = parse_arguments(argv)
    try:
        server = CRCServer(options)
    except OSError as error:  # the log file cannot be written
        print(f"ChatServer.py: --log-file {options.log_file}: cannot write it: {error.strerror or error}"
              f"{f': {error.filename}' if error.filename else ''} (see --help)", file=sys.stderr)
        return 2
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    console.addFilter(StartUpHeld(server, console))
    server.logger.addHandler(console)

    def stop(signal_number: int, _frame: object) -> None:
        server.announce_departure = True  # unlike request_terminate alone, a signal says goodbye
        server.request_terminate = True

    def show_state(signal_number: int, _frame: object) -> None:
        server.logger.info("hosts %s; neighbour servers %s; clients here %s", sorted(server.hosts_db),
                           server.adjacent_server_ids, server.adjacent_user_ids)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, show_state)  # kill -USR1 PID: what this server knows, in its log
    try:
        server.run()
    except OSError as error:
        print(f"ChatServer.py: {error}", file=sys.stderr)
        return 1
    if server.join_failure:
        print(f"ChatServer.py: {server.join_failure} (--alone-if-join-fails starts a network of our own instead)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
