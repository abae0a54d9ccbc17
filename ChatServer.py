"""Reference server for Clemson Relay Chat (CRC).

Servers join into a spanning tree; clients attach to any server. Every server keeps the whole
network in `hosts_db` (each other machine, with the adjacent link that leads to it), floods changes
along the tree and routes chats hop by hop. One `selectors` loop over non-blocking sockets, no threads.

This file imports only the standard library and the contract's names from ChatMessageParser, so it
can be dropped alone into the course's kit.
"""

from __future__ import annotations

import argparse
import logging
import random
import select
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Dict, List, Optional, Tuple, Union

from ChatMessageParser import (
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    MessageParser,
    ServerQuitMessage,
    ServerRegistrationMessage,
    StatusUpdateMessage,
)

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
DEFAULT_SPLIT_HOLD = 5.0  # seconds a lost link's hosts stay known before their departure is announced
DEFAULT_REGISTER_TIMEOUT = 10.0  # seconds a new connection has to register
DEFAULT_MAX_OUTPUT = 8 * 1024 * 1024  # unsent bytes one connection may pile up before it is dropped
DEFAULT_STALL_TIMEOUT = 30.0  # seconds a server link holding others back may go without taking any bytes
CLOSE_GRACE = 2.0  # seconds a closing link has to take its last message (a status saying why)
HIGH_WATER = 1024 * 1024  # a server link with more unsent output pauses the links that feed it ...
LOW_WATER = 256 * 1024  # ... until it is down to this
RECEIVE_SIZE = 256 * 1024
SELECT_TIMEOUT = 0.1  # request_terminate must be noticed within about 0.1 s

# Where each frame type keeps its lengths. The course's parser has no stream decoder, so the server
# cuts frames itself: header size, and the offset of the one content length (None: registration).
_FRAME_LAYOUTS: Dict[int, Tuple[int, Optional[int]]] = {
    SERVER_REGISTRATION: (12, None),
    STATUS_UPDATE: (15, 11),
    SERVER_QUIT: (13, 9),
    CLIENT_REGISTRATION: (12, None),
    CLIENT_CHAT: (13, 9),
    CLIENT_QUIT: (9, 5),
}
_LAST_HOP = slice(5, 9)  # byte range of the last hop id in a registration frame
_CHAT_FIELDS = struct.Struct("!III")  # a chat after its type byte: source, destination, content length
_CHAT_HEADER_SIZE = _FRAME_LAYOUTS[CLIENT_CHAT][0]
_HANDLER_NAMES = {
    SERVER_REGISTRATION: "handle_server_registration_message",
    STATUS_UPDATE: "handle_status_message",
    SERVER_QUIT: "handle_server_quit_message",
    CLIENT_REGISTRATION: "handle_client_registration_message",
    CLIENT_CHAT: "handle_client_chat_message",
    CLIENT_QUIT: "handle_client_quit_message",
}


def _is_utf8(text: bytes) -> bool:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class ProtocolViolation(Exception):
    """A peer sent bytes or a message that breaks the protocol; the link cannot be trusted."""


def frame_length(buffer: bytearray, start: int) -> Optional[int]:
    """Total size of the frame at `start`, or None while its header is incomplete."""
    message_type = buffer[start]
    layout = _FRAME_LAYOUTS.get(message_type)
    if layout is None:
        raise ProtocolViolation(f"unknown message type 0x{message_type:02x}")
    header_size, length_offset = layout
    if len(buffer) - start < header_size:
        return None
    if length_offset is None:
        name_length = buffer[start + 9]
        info_length = int.from_bytes(buffer[start + 10:start + 12], "big")
        return header_size + name_length + info_length
    return header_size + int.from_bytes(buffer[start + length_offset:start + length_offset + 4], "big")


class BaseConnectionData:
    """One connection's buffers. A link stays of this class until its peer has registered."""

    def __init__(self) -> None:
        self.write_buffer = bytearray()  # unsent bytes; appended to, and cut from the front as sent
        self.read_buffer = bytearray()  # received bytes that do not make a whole frame yet
        self.sock: Optional[socket.socket] = None  # None: not adjacent, closed, or handed to a host's record
        self.outbound = False  # True for the link this server opened to join a network
        self.closing = False  # set once the link is to close as soon as its output is flushed
        self.want_write = False  # whether this socket should be watched for writability (interest: whether it is)
        self.paused = False  # reading held back: a server link it feeds has too much unsent output
        self.interest = 0  # the selector events registered for this socket now (0: not registered)
        self.held_back: List[BaseConnectionData] = []  # links paused until this one's output drains


class ServerConnectionData(BaseConnectionData):
    def __init__(self, id: int, server_name: str, server_info: str) -> None:
        super().__init__()
        self.id = id
        self.server_name = server_name
        self.server_info = server_info
        self.first_link_id: Optional[int] = None  # the adjacent server this machine is reached through
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


class CRCServer:
    def __init__(self, options: object, run_on_localhost: bool = False) -> None:
        self.id: int = getattr(options, "id", None) or random.randint(1, 0xFFFFFFFF)
        self.server_name: str = getattr(options, "servername", None) or f"server-{self.id}"
        self.server_info: str = getattr(options, "info", None) or ""
        self.port: int = int(getattr(options, "port", 0) or 0)
        self.connect_to_host: Optional[str] = getattr(options, "connect_to_host", None)
        self.connect_to_port: Optional[int] = getattr(options, "connect_to_port", None)
        self.run_on_localhost = run_on_localhost
        self.bind_address: str = "127.0.0.1" if run_on_localhost else getattr(options, "bind", None) or ""
        self.max_frame_size: int = getattr(options, "max_frame_size", None) or DEFAULT_MAX_FRAME_SIZE
        split_hold = getattr(options, "split_hold", None)
        self.split_hold: float = DEFAULT_SPLIT_HOLD if split_hold is None else split_hold
        self.register_timeout: float = getattr(options, "register_timeout", None) or DEFAULT_REGISTER_TIMEOUT
        self.max_output: int = getattr(options, "max_output", None) or DEFAULT_MAX_OUTPUT
        self.stall_timeout: float = getattr(options, "stall_timeout", None) or DEFAULT_STALL_TIMEOUT
        self.high_water = min(HIGH_WATER, self.max_output // 4)
        self.low_water = min(LOW_WATER, self.high_water // 4)
        self.announce_departure = False  # set by Ctrl-C or SIGTERM: say goodbye before closing

        self.sel = selectors.DefaultSelector()
        self.server_socket: Optional[socket.socket] = None
        self.listening = False
        self.request_terminate = False
        self.hosts_db: Dict[int, HostData] = {}
        self.adjacent_server_ids: List[int] = []
        self.adjacent_user_ids: List[int] = []
        self.status_updates_log: List[str] = []
        # Lost links whose hosts are held until the hold-down ends: link id -> (deadline, link).
        self.held_departures: Dict[int, Tuple[float, HostData]] = {}
        self.unregistered: Dict[BaseConnectionData, float] = {}  # link -> when it opened
        self.serving = False  # True from the first loop turn (after joining a network) until cleanup
        self.busy_turns = 0  # counts the loop's busy turns; odd while it is handling events (see is_quiet)
        self.to_flush: List[BaseConnectionData] = []  # links given output this turn, sent at its end
        self.reading_link: Optional[BaseConnectionData] = None  # whose input the loop is handling
        self.paused_links: List[BaseConnectionData] = []
        self.congested: Dict[BaseConnectionData, float] = {}  # server link holding others back -> last progress
        self.closing_links: Dict[BaseConnectionData, float] = {}  # link -> when it is closed even if unsent
        self.receive_buffer = bytearray(RECEIVE_SIZE)
        self.receive_view = memoryview(self.receive_buffer)

        self.logger = self._make_logger(getattr(options, "log_file", None), getattr(options, "verbose", False))

    def _make_logger(self, log_file: Optional[str], verbose: bool) -> logging.Logger:
        # A logger outside logging's global tree: many servers share a process in tests, and each
        # log file must hold only its own server's lines.
        level = logging.DEBUG if verbose else logging.INFO
        logger = logging.Logger(f"CRCServer {self.server_name} ({self.id})", level)
        if log_file:
            handler = logging.FileHandler(log_file, mode="w", encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        else:
            logger.addHandler(logging.NullHandler())  # no log file asked for: stay quiet, not lastResort
        return logger

    # ----------------------------------------------------------------------------------- the loop

    def run(self) -> None:
        self.setup_server_socket()
        if self.connect_to_port:
            self.connect_to_server()
        self.serving = True
        try:
            while not self.request_terminate:
                self.check_IO_devices_for_messages()
        finally:
            self.serving = False
            self.cleanup()

    def setup_server_socket(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rerun on the same port at once
        sock.bind((self.bind_address, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, None)
        self.server_socket = sock
        self.port = sock.getsockname()[1]
        self.listening = True
        self.logger.info("%s (id %d) listening on %s:%d",
                         self.server_name, self.id, self.bind_address or "*", self.port)

    def connect_to_server(self) -> None:
        host = "127.0.0.1" if self.run_on_localhost else (self.connect_to_host or "localhost")
        try:
            sock = socket.create_connection((host, int(self.connect_to_port)), timeout=5)
        except OSError as error:
            self.logger.error("could not connect to %s:%s (%s); running as the root of a new network",
                              host, self.connect_to_port, error)
            return
        link = self.open_link(sock)
        link.outbound = True
        # Our registration leaves on the loop's first write event, through handle_io_device_events,
        # where a connectivity tester that wraps that method can see it go.
        link.write_buffer += ServerRegistrationMessage.bytes(self.id, 0, self.server_name, self.server_info)
        link.want_write = True
        self.update_interest(link)
        self.logger.info("connected to %s:%s and sent our registration", host, self.connect_to_port)

    def check_IO_devices_for_messages(self) -> None:
        events = self.sel.select(timeout=SELECT_TIMEOUT)
        if not events and not self.has_timers():
            return  # an idle turn: nothing to count
        self.busy_turns += 1
        try:
            for io_device, event_mask in events:
                try:
                    self.handle_io_device_events(io_device, event_mask)
                except Exception:  # a bug must cost one link, never the whole server
                    live = self._live_key(io_device.fileobj)
                    self.logger.exception("unexpected error while serving %s", self.describe(live and live.data))
                    if live is not None and live.data is not None:
                        self.disconnect(live.data, "unexpected server error")
            if self.has_timers():
                self.check_timers()
            self.flush_turn_output()
        finally:
            self.busy_turns += 1

    def is_quiet(self) -> bool:
        """True when this server has nothing left to do: no unsent output, no partial frame, nothing to
        read or accept. Safe to call from another thread (a test manager's), which is why it reads the
        loop's turn counter before and after looking, and answers False when in doubt. A caller that
        checks several machines one after another should check them all twice and compare each one's
        `busy_turns`, so that it does not miss a message passed between two of them meanwhile."""
        turn = self.busy_turns
        if turn % 2 or not self.serving or self.paused_links:
            return False
        try:
            keys = list(self.sel.get_map().values())
            links = [key.data for key in keys if key.data is not None]
            if any(link.write_buffer or link.read_buffer for link in links):
                return False
            poller = select.poll()
            for key in keys:
                poller.register(key.fd, select.POLLIN)
            ready = poller.poll(0)
        except (RuntimeError, ValueError, OSError, TypeError, AttributeError):
            # The loop changed its sockets meanwhile (or this system has no poll()): not provably quiet.
            return False
        return not ready and self.busy_turns == turn

    def has_timers(self) -> bool:
        return bool(self.held_departures or self.unregistered or self.closing_links or self.congested)

    def check_timers(self) -> None:
        now = time.monotonic()
        for deadline, link in list(self.held_departures.values()):
            if deadline <= now:
                self.depart(link)
        for link, opened in list(self.unregistered.items()):
            if now - opened > self.register_timeout:
                self.disconnect(link, f"did not register within {self.register_timeout:g} s")
        for link, deadline in list(self.closing_links.items()):
            if deadline <= now:
                self.disconnect(link, "closed without taking its last message")
        for link, progress in list(self.congested.items()):
            if now - progress > self.stall_timeout:
                self.disconnect(link, f"took no bytes for {self.stall_timeout:g} s while others waited for it")

    def next_deadline(self) -> Optional[float]:
        """When (on time.monotonic()) this server's next timer fires: a held departure or a registration
        timeout, a closing link's grace or a stalled link's limit; None without timers. With is_quiet(), it
        lets a test manager wait through a hold-down."""
        try:
            deadlines = [deadline for deadline, _ in list(self.held_departures.values())]
            deadlines += [opened + self.register_timeout for opened in list(self.unregistered.values())]
            deadlines += list(self.closing_links.values())
            deadlines += [progress + self.stall_timeout for progress in list(self.congested.values())]
        except RuntimeError:  # the loop changed them meanwhile: something is happening now
            return time.monotonic()
        return min(deadlines, default=None)

    def cleanup(self) -> None:
        """Close every socket and the selector. Only a server stopped by a signal says goodbye."""
        if self.announce_departure:
            self.say_goodbye()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        for link in self.paused_links:  # not in the selector while paused
            if link.sock is not None:
                link.sock.close()
        self.sel.close()
        self.listening = False
        self.logger.info("%s stopped", self.server_name)
        for handler in self.logger.handlers:
            handler.close()

    def accept_new_connection(self, io_device: selectors.SelectorKey) -> None:
        try:
            sock, address = io_device.fileobj.accept()
        except OSError:  # the peer gave up before we got to it
            return
        self.open_link(sock)
        self.logger.debug("accepted a connection from %s:%d", *address[:2])

    def open_link(self, sock: socket.socket) -> BaseConnectionData:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = BaseConnectionData()
        link.sock = sock
        self.update_interest(link)
        self.unregistered[link] = time.monotonic()
        return link

    def say_goodbye(self) -> None:
        """Announce this server's departure to its neighbour servers, waiting briefly for it to leave."""
        goodbye = ServerQuitMessage.bytes(self.id, 0, f"{self.server_name} is shutting down")
        for server_id in self.adjacent_server_ids:
            link = self.hosts_db.get(server_id)
            if link is None or link.sock is None:
                continue
            try:
                link.sock.settimeout(1.0)
                link.sock.sendall(bytes(link.write_buffer) + goodbye)
            except OSError as error:
                self.logger.warning("could not say goodbye to %s: %s", self.describe(link), error)
        self.logger.info("announced our departure to %d neighbour server(s)", len(self.adjacent_server_ids))

    def handle_io_device_events(self, io_device: selectors.SelectorKey, event_mask: int) -> None:
        if io_device.data is None:
            self.accept_new_connection(io_device)
            return
        link: BaseConnectionData = io_device.data
        if link.sock is None:
            return  # closed earlier in this same turn
        if event_mask & selectors.EVENT_WRITE:
            self.flush(link)
        if event_mask & selectors.EVENT_READ and link.sock is not None and not link.closing:
            try:
                # Into one reused buffer: a fresh 256 KiB bytes object per read costs an mmap each time.
                received = link.sock.recv_into(self.receive_buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.disconnect(link, f"receive failed: {error}")
                return
            if not received:
                self.disconnect(link, "connection closed by the peer")
                return
            self.reading_link = link
            try:
                self.handle_messages(io_device, bytes(self.receive_view[:received]))
            finally:
                self.reading_link = None
            live = self._live_key(io_device.fileobj)
            if live is not None and live.data.paused:
                self.update_interest(live.data)  # stop reading it only now, with its whole chunk handled

    def handle_messages(self, io_device: selectors.SelectorKey, recv_data: bytes) -> None:
        """Append a received chunk to the link's buffer and handle every whole frame in it.

        Ordinary chats take a fast path: checked from their header, then forwarded as the bytes that
        came, a run of consecutive chats bound for the same link in one piece. Every other frame, and
        any chat that is not ordinary, is parsed and goes to its handler.
        """
        sock = io_device.fileobj
        link: BaseConnectionData = io_device.data
        buffer = link.read_buffer
        buffer += recv_data
        data = bytes(buffer)  # one copy per chunk; frames are cut from it
        end = len(data)
        offset = 0
        run_link: Optional[BaseConnectionData] = None  # where the chats in data[run_start:offset] go
        run_start = 0
        # The last chat's (source, destination, next link): runs of chats mostly share one route.
        route: Tuple[int, int, Optional[BaseConnectionData]] = (0, 0, None)
        problem = None
        fast_chats = self.forwards_chats_fast()
        try:
            while offset < end and link.sock is not None and not link.closing:
                if fast_chats and data[offset] == CLIENT_CHAT and end - offset >= _CHAT_HEADER_SIZE:
                    source, destination, length = _CHAT_FIELDS.unpack_from(data, offset + 1)
                    frame_end = offset + _CHAT_HEADER_SIZE + length
                    if frame_end > end and _CHAT_HEADER_SIZE + length <= self.max_frame_size:
                        break  # wait for the rest of this chat
                    if route[:2] != (source, destination):
                        route = (source, destination, self.chat_route(link, source, destination))
                    next_link = route[2]
                    fits = _CHAT_HEADER_SIZE + length <= self.max_frame_size
                    if next_link is not None and fits and _is_utf8(data[offset + _CHAT_HEADER_SIZE:frame_end]):
                        if next_link is not run_link:
                            if run_link is not None:
                                self.send(run_link, data[run_start:offset])
                            run_link, run_start = next_link, offset
                        offset = frame_end
                        continue
                if run_link is not None:
                    self.send(run_link, data[run_start:offset])
                    run_link = None
                    if link.sock is None or link.closing:
                        break  # sending to itself (a client chatting to itself) went over its cap
                route = (0, 0, None)  # a handler may change the network: forget the cached route
                length = frame_length(data, offset)
                if length is not None and length > self.max_frame_size:
                    raise ProtocolViolation(f"a frame declares {length} bytes; the limit is {self.max_frame_size}")
                if length is None or offset + length > end:
                    break
                frame = data[offset:offset + length]
                offset += length
                try:
                    (message,) = MessageParser.parse_messages(frame)
                except Exception as error:  # the course's parser may raise anything on bad bytes
                    raise ProtocolViolation(f"malformed message of type 0x{frame[0]:02x}: {error}") from None
                getattr(self, _HANDLER_NAMES[message.message_type])(self.sel.get_key(sock), message)
                key = self._live_key(sock)  # a registration replaces the link's record
                if key is None:
                    break
                link = key.data
        except ProtocolViolation as error:
            problem = str(error)
        if run_link is not None:
            self.send(run_link, data[run_start:offset])
        del buffer[:offset]
        if problem is not None and link.sock is not None:
            self.protocol_error(link, problem)

    def forwards_chats_fast(self) -> bool:
        """Chats skip the parser unless someone (a course's tester, say) has put in a chat handler of
        their own, on the class or on this object, which must then see every chat."""
        return (type(self).handle_client_chat_message is CRCServer.handle_client_chat_message
                and "handle_client_chat_message" not in vars(self))

    def chat_route(self, link: BaseConnectionData, source: int, destination: int) -> Optional[BaseConnectionData]:
        """The link an ordinary chat goes on: the sender is reached through the link it came on (so a
        client speaks for itself), and the destination is a known client with an open link toward it.
        None for anything else, which handle_client_chat_message then deals with. Keep it in step with
        check_source() and send_to_host(), whose checks it repeats for speed."""
        sender = self.hosts_db.get(source)
        link_id = getattr(link, "id", None)
        if sender is None or sender.first_link_id != link_id or self.hosts_db.get(link_id) is not link:
            return None
        target = self.hosts_db.get(destination)
        if type(target) is not ClientConnectionData:
            return None
        next_link = self.hosts_db.get(target.first_link_id)
        return next_link if next_link is not None and next_link.sock is not None else None

    def _live_key(self, sock: socket.socket) -> Optional[selectors.SelectorKey]:
        try:
            return self.sel.get_key(sock)
        except (KeyError, ValueError):
            return None

    # ------------------------------------------------------------------------------ sending

    def send(self, link: BaseConnectionData, frame: bytes) -> None:
        """Queue a frame on an adjacent link. It leaves at the end of this loop turn, together with
        everything else the turn gives that link, in as few system calls as the socket allows."""
        if link.sock is None or link.closing:
            return
        if len(link.write_buffer) + len(frame) > self.max_output:
            self.disconnect(link, f"more than {self.max_output} bytes of output waiting: the peer stopped reading")
            return
        if not link.write_buffer:
            if self.busy_turns % 2:
                self.to_flush.append(link)
            else:  # called outside our loop's turn (by a course's own loop, say): a write event sends it
                link.want_write = True
                self.update_interest(link)
        link.write_buffer += frame
        source = self.reading_link
        if (len(link.write_buffer) > self.high_water and isinstance(link, ServerConnectionData)
                and source is not None and source is not link and not source.paused):
            # A slow but live server is not dropped: whoever feeds it waits until it catches up
            # (and a server that takes nothing at all for stall_timeout is dropped after all).
            source.paused = True
            link.held_back.append(source)
            self.paused_links.append(source)
            self.congested.setdefault(link, time.monotonic())

    def flush_turn_output(self) -> None:
        for link in self.to_flush:
            if link.sock is not None and link.write_buffer and not link.want_write:
                self.flush(link)
        self.to_flush.clear()

    def flush(self, link: BaseConnectionData) -> None:
        """Send what the socket takes now; watch for writability only while something is left."""
        try:
            sent = link.sock.send(link.write_buffer)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self.disconnect(link, f"send failed: {error}")
            return
        del link.write_buffer[:sent]
        if sent and link in self.congested:
            self.congested[link] = time.monotonic()
        if link.held_back and len(link.write_buffer) <= self.low_water:
            self.release_held_back(link)
        if not link.write_buffer and link.closing:
            self.disconnect(link, "closed after its last message was sent")
            return
        link.want_write = bool(link.write_buffer)
        self.update_interest(link)

    def release_held_back(self, link: BaseConnectionData) -> None:
        for source in link.held_back:
            source.paused = False
            if source in self.paused_links:
                self.paused_links.remove(source)
            if source.sock is not None:
                self.update_interest(source)
        link.held_back.clear()
        self.congested.pop(link, None)

    def update_interest(self, link: BaseConnectionData) -> None:
        """Register for exactly the events wanted now: reading unless paused or closing, writing while
        output waits."""
        reading = not (link.paused or link.closing)
        events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if link.want_write else 0)
        if events == link.interest:
            return
        if not link.interest:
            self.sel.register(link.sock, events, link)
        elif not events:
            self.sel.unregister(link.sock)
        else:
            self.sel.modify(link.sock, events, link)
        link.interest = events

    def send_to_host(self, host_id: int, frame: bytes) -> None:
        """Send toward any known machine, over the adjacent link that leads to it."""
        host = self.hosts_db.get(host_id)
        link = self.hosts_db.get(host.first_link_id) if host is not None else None
        if link is None or link.sock is None:
            self.logger.warning("no open link toward %d; dropped a message of type 0x%02x", host_id, frame[0])
            return
        self.send(link, frame)

    def flood(self, frame: bytes, came_from: BaseConnectionData, to_clients: bool) -> None:
        """Send to every adjacent server (and client) except the link the frame came from."""
        neighbours = self.adjacent_server_ids + self.adjacent_user_ids if to_clients else self.adjacent_server_ids
        for host_id in neighbours:
            link = self.hosts_db.get(host_id)
            if link is not None and link is not came_from:
                self.send(link, frame)

    def relayed(self, registration_frame: bytes) -> bytes:
        """A registration as this server forwards it: the same bytes with our id as the last hop."""
        return (registration_frame[:_LAST_HOP.start] + self.id.to_bytes(4, "big")
                + registration_frame[_LAST_HOP.stop:])

    def reject(self, link: BaseConnectionData, status_code: int, text: str) -> None:
        """Answer a refused peer over its own link with destination 0, then close that link."""
        self.logger.warning("refused a peer: %s", text)
        self.send(link, StatusUpdateMessage.bytes(self.id, 0, status_code, text))
        self.close_after_flush(link, f"refused: {text}")

    def protocol_error(self, link: BaseConnectionData, problem: str) -> None:
        """Tell the peer what it did wrong, then close its link once that is sent."""
        self.logger.warning("protocol error from %s: %s", self.describe(link), problem)
        destination = link.id if isinstance(link, (ServerConnectionData, ClientConnectionData)) else 0
        self.send(link, StatusUpdateMessage.bytes(self.id, destination, STATUS_PROTOCOL_ERROR,
                                                  f"Protocol error: {problem}"))
        self.close_after_flush(link, f"protocol error: {problem}")

    def close_after_flush(self, link: BaseConnectionData, reason: str) -> None:
        """Read no more from a link and close it once its output is sent (CLOSE_GRACE at most)."""
        if link.sock is None:
            return
        link.closing = True
        link.read_buffer.clear()
        if not link.write_buffer:
            self.disconnect(link, reason)
            return
        self.update_interest(link)
        self.closing_links[link] = time.monotonic() + CLOSE_GRACE

    def disconnect(self, link: BaseConnectionData, reason: str) -> None:
        """The one way a link closes. A registered peer's departure is announced after the hold-down."""
        if link.sock is None:
            return
        self.logger.info("closing the link to %s: %s", self.describe(link), reason)
        if link.interest:
            self.sel.unregister(link.sock)
            link.interest = 0
        link.sock.close()
        link.sock = None
        self.release_held_back(link)
        if link in self.paused_links:
            self.paused_links.remove(link)
        self.closing_links.pop(link, None)
        link.write_buffer.clear()
        link.read_buffer.clear()
        self.unregistered.pop(link, None)
        if isinstance(link, (ServerConnectionData, ClientConnectionData)) and self.hosts_db.get(link.id) is link:
            # The course's tests read state after stopping servers one by one: nothing may change yet.
            self.held_departures[link.id] = (time.monotonic() + self.split_hold, link)

    def depart(self, link: HostData, reason: Optional[str] = None) -> None:
        """Forget an adjacent machine and everything reached through it, and tell the rest of the network."""
        self.held_departures.pop(link.id, None)
        if self.hosts_db.get(link.id) is not link:
            return  # it quit or was replaced meanwhile
        if isinstance(link, ClientConnectionData):
            self.forget(link)
            self.logger.info("client %s (%d) is gone: %s", link.client_name, link.id, reason or "connection lost")
            self.flood(ClientQuitMessage.bytes(link.id, reason or "Connection lost"), link, to_clients=True)
            return
        reason = reason or f"{self.server_name} {link.server_name}"  # a netsplit names both ends, as IRC does
        lost = [host for host in self.hosts_db.values() if host.first_link_id == link.id]
        for host in lost:
            self.forget(host)
        self.logger.info("the link to %s is gone, and with it %d machine(s): %s",
                         self.describe(link), len(lost), reason)
        for host in lost:
            if isinstance(host, ClientConnectionData):
                self.flood(ClientQuitMessage.bytes(host.id, reason), link, to_clients=True)
        for host in lost:
            if isinstance(host, ServerConnectionData):
                self.flood(ServerQuitMessage.bytes(host.id, 0, reason), link, to_clients=False)

    def settle_held_departure(self, host_id: int) -> None:
        """A held host registers again: announce the old link's departure now, so the new one starts clean."""
        host = self.hosts_db.get(host_id)
        if host is not None and host.first_link_id in self.held_departures:
            self.depart(self.held_departures[host.first_link_id][1])

    def check_relayed_source(self, link: ServerConnectionData, source_id: int) -> bool:
        """A server link relays only for machines reached through it. False: drop (the source is gone)."""
        host = self.hosts_db.get(source_id)
        if host is None:
            self.logger.warning("%s relayed a message from unknown id %d; dropped", self.describe(link), source_id)
            return False
        if host.first_link_id != link.id:
            raise ProtocolViolation(f"id {source_id} is reached through another link")
        return True

    def check_own_source(self, link: ClientConnectionData, source_id: int) -> bool:
        """A client speaks only for itself. False: drop (it has quit and is no longer registered)."""
        if source_id != link.id:
            raise ProtocolViolation(f"a client may only speak for itself (id {link.id}), not for id {source_id}")
        return self.hosts_db.get(link.id) is link

    def check_source(self, link: BaseConnectionData, source_id: int) -> bool:
        if isinstance(link, ClientConnectionData):
            return self.check_own_source(link, source_id)
        if isinstance(link, ServerConnectionData):
            return self.check_relayed_source(link, source_id)
        raise ProtocolViolation("a peer must register before anything else")

    def describe(self, link: BaseConnectionData) -> str:
        if isinstance(link, ServerConnectionData):
            return f"server {link.server_name} ({link.id})"
        if isinstance(link, ClientConnectionData):
            return f"client {link.client_name} ({link.id})"
        return "an unregistered peer"

    def promote(self, io_device: selectors.SelectorKey, host: HostData) -> None:
        """A link's peer has registered: its connection data becomes the host's record."""
        link: BaseConnectionData = io_device.data
        host.sock = link.sock
        host.outbound = link.outbound
        host.write_buffer = link.write_buffer
        host.read_buffer = link.read_buffer
        host.want_write = link.want_write
        host.interest = link.interest
        if self.reading_link is link:
            self.reading_link = host  # backpressure must pause the record that is being read from
        link.sock = None  # the socket now belongs to the host's record alone
        host.first_link_id = host.id
        self.unregistered.pop(link, None)
        self.sel.modify(host.sock, host.interest, host)
        if host.write_buffer and not host.want_write:
            self.to_flush.append(host)  # the old record is in the list, but its socket is the host's now
        self.hosts_db[host.id] = host

    def known(self, host_id: int) -> bool:
        return host_id == self.id or host_id in self.hosts_db

    # ----------------------------------------------------------------------------- handlers

    def handle_server_registration_message(self, io_device: selectors.SelectorKey,
                                           message: ServerRegistrationMessage) -> None:
        link = io_device.data
        server_id = message.source_id
        if isinstance(link, ClientConnectionData):
            raise ProtocolViolation("a client may not register a server")
        if server_id == 0:
            raise ProtocolViolation("id 0 is not a valid machine id")
        self.settle_held_departure(server_id)
        server = ServerConnectionData(server_id, message.server_name, message.server_info)
        server.registration = self.relayed(message.bytes)
        if type(link) is BaseConnectionData:
            if self.known(server_id):
                self.reject(link, STATUS_DUPLICATE_ID, f"A machine has already registered with ID {server_id}")
                return
            self.promote(io_device, server)
            self.adjacent_server_ids.append(server_id)
            self.logger.info("server %s (%d) joined as a neighbour", server.server_name, server_id)
            self.send_network_state(server, include_self=not server.outbound)
            came_from: BaseConnectionData = server
        else:
            if not self.accept_relayed_registration(link, server_id):
                return
            server.first_link_id = link.id
            self.hosts_db[server_id] = server
            self.logger.info("server %s (%d) joined behind %d", server.server_name, server_id, link.id)
            came_from = link
        self.flood(server.registration, came_from, to_clients=False)

    def accept_relayed_registration(self, link: ServerConnectionData, host_id: int) -> bool:
        """A server link announces a machine behind it; an id known through another link is a lie."""
        if not self.known(host_id):
            return True
        if host_id == self.id or self.hosts_db[host_id].first_link_id != link.id:
            raise ProtocolViolation(f"announced id {host_id}, which is reached through another link")
        self.logger.warning("%s announced id %d again; ignored", self.describe(link), host_id)
        return False

    def send_network_state(self, neighbour: ServerConnectionData, include_self: bool) -> None:
        """Tell a new neighbour server about every machine this side of the tree knows."""
        if include_self:
            ourselves = ServerRegistrationMessage.bytes(self.id, self.id, self.server_name, self.server_info)
            self.send(neighbour, ourselves)
        state = b"".join(host.registration for host in self.hosts_db.values() if host is not neighbour)
        if state:
            self.send(neighbour, state)

    def handle_client_registration_message(self, io_device: selectors.SelectorKey,
                                           message: ClientRegistrationMessage) -> None:
        link = io_device.data
        client_id = message.source_id
        if isinstance(link, ClientConnectionData):
            raise ProtocolViolation("a client registers once, and only itself")
        if client_id == 0:
            raise ProtocolViolation("id 0 is not a valid machine id")
        self.settle_held_departure(client_id)
        client = ClientConnectionData(client_id, message.client_name, message.client_info)
        client.registration = self.relayed(message.bytes)
        if type(link) is BaseConnectionData:
            if self.known(client_id):
                self.reject(link, STATUS_DUPLICATE_ID, f"Someone has already registered with ID {client_id}")
                return
            known_clients = [host for host in self.hosts_db.values() if isinstance(host, ClientConnectionData)]
            self.promote(io_device, client)
            self.adjacent_user_ids.append(client_id)
            welcome = f"Welcome to the Clemson Relay Chat network {client.client_name}"
            self.send(client, StatusUpdateMessage.bytes(self.id, client_id, STATUS_WELCOME, welcome))
            if known_clients:
                self.send(client, b"".join(other.registration for other in known_clients))
            self.logger.info("client %s (%d) joined here", client.client_name, client_id)
            came_from: BaseConnectionData = client
        else:
            if not self.accept_relayed_registration(link, client_id):
                return
            client.first_link_id = link.id
            self.hosts_db[client_id] = client
            self.logger.info("client %s (%d) joined behind %d", client.client_name, client_id, link.id)
            came_from = link
        self.flood(client.registration, came_from, to_clients=True)

    def handle_client_chat_message(self, io_device: selectors.SelectorKey, message: ClientChatMessage) -> None:
        if not self.check_source(io_device.data, message.source_id):
            return
        destination = self.hosts_db.get(message.destination_id)
        if isinstance(destination, ClientConnectionData):
            self.logger.debug("chat %d -> %d", message.source_id, message.destination_id)
            self.send_to_host(destination.id, message.bytes)
            return
        self.logger.debug("chat from %d to unknown id %d", message.source_id, message.destination_id)
        self.send(io_device.data, StatusUpdateMessage.bytes(
            self.id, message.source_id, STATUS_UNKNOWN_ID, f"Unknown ID {message.destination_id}"))

    def handle_status_message(self, io_device: selectors.SelectorKey, message: StatusUpdateMessage) -> None:
        link = io_device.data
        for_us = message.destination_id in (self.id, 0)
        if type(link) is BaseConnectionData and link.outbound:
            # The one thing a server we joined may send before its registration: why it refused ours.
            if not for_us:
                self.logger.warning("status for %d on a link not yet registered; dropped", message.destination_id)
                return
        elif not self.check_source(link, message.source_id):
            return
        if for_us:
            self.logger.info("status %d from %d: %s", message.status_code, message.source_id, message.content)
            self.status_updates_log.append(message.content)
        elif message.destination_id in self.hosts_db:
            self.send_to_host(message.destination_id, message.bytes)
        else:
            self.logger.warning("status for unknown id %d dropped", message.destination_id)

    def handle_client_quit_message(self, io_device: selectors.SelectorKey, message: ClientQuitMessage) -> None:
        if not self.check_source(io_device.data, message.source_id):
            return
        client = self.hosts_db[message.source_id]
        if not isinstance(client, ClientConnectionData):
            raise ProtocolViolation(f"id {message.source_id} is a server, and servers do not send client quits")
        self.forget(client)
        self.logger.info("client %s (%d) quit: %s", client.client_name, client.id, message.content)
        self.flood(message.bytes, came_from=io_device.data, to_clients=True)

    def handle_server_quit_message(self, io_device: selectors.SelectorKey, message: ServerQuitMessage) -> None:
        link = io_device.data
        if not isinstance(link, ServerConnectionData):
            raise ProtocolViolation("only a registered server may announce a server quit")
        if not self.check_relayed_source(link, message.source_id):
            return
        server = self.hosts_db[message.source_id]
        if not isinstance(server, ServerConnectionData):
            raise ProtocolViolation(f"id {server.id} is a client, and clients do not send server quits")
        if server is link:
            # A neighbour says goodbye: everything reached through it is gone, announced host by host.
            self.depart(link, message.content)
            self.close_after_flush(link, "it announced its departure")
            return
        self.forget(server)
        self.logger.info("server %s (%d) quit: %s", server.server_name, server.id, message.content)
        self.flood(message.bytes, came_from=link, to_clients=False)

    def forget(self, host: HostData) -> None:
        """Drop a machine from the network state."""
        self.hosts_db.pop(host.id, None)
        for adjacent in (self.adjacent_server_ids, self.adjacent_user_ids):
            if host.id in adjacent:
                adjacent.remove(host.id)


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run a Clemson Relay Chat server.")
    parser.add_argument("--id", type=int, help="this server's id, 1 to 4294967295 (default: random)")
    parser.add_argument("--servername", required=True, help="this server's name")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    parser.add_argument("--info", default="", help="a line about this server")
    parser.add_argument("--connect_to_host", default="localhost", help="host of a server to join")
    parser.add_argument("--connect_to_port", type=int, help="port of a server to join")
    parser.add_argument("--bind", default="", help="address to listen on (default: all interfaces)")
    parser.add_argument("--log-file", dest="log_file", help="also write the log to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every message")
    parser.add_argument("--split-hold", dest="split_hold", type=float, default=DEFAULT_SPLIT_HOLD,
                        metavar="SECONDS", help="how long the hosts behind a lost link stay known before"
                        " their departure is announced (default %(default)g; 0: at once)")
    parser.add_argument("--register-timeout", dest="register_timeout", type=float,
                        default=DEFAULT_REGISTER_TIMEOUT, metavar="SECONDS",
                        help="drop a connection that has not registered by then (default %(default)g)")
    parser.add_argument("--max-output", dest="max_output", type=int, default=DEFAULT_MAX_OUTPUT, metavar="BYTES",
                        help="drop a peer whose unsent output grows past this (default %(default)d)")
    parser.add_argument("--stall-timeout", dest="stall_timeout", type=float, default=DEFAULT_STALL_TIMEOUT,
                        metavar="SECONDS", help="drop a server link that takes no bytes for this long while"
                        " others wait for it (default %(default)g)")
    parser.add_argument("--max-frame-size", dest="max_frame_size", type=int, default=DEFAULT_MAX_FRAME_SIZE,
                        metavar="BYTES", help="refuse a message that declares more bytes (default %(default)d)")
    options = parser.parse_args(argv)
    if options.split_hold < 0 or min(options.register_timeout, options.stall_timeout, options.max_output) <= 0 \
            or options.max_frame_size < 16:
        parser.error("--split-hold must be 0 or more; --register-timeout, --stall-timeout and --max-output"
                     " positive; --max-frame-size 16 or more")
    if options.id is not None and not 1 <= options.id <= 0xFFFFFFFF:
        parser.error("--id must be from 1 to 4294967295")
    return options


def main(argv: Optional[List[str]] = None) -> int:
    options = parse_arguments(argv)
    server = CRCServer(options)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    server.logger.addHandler(console)

    def stop(signal_number: int, _frame: object) -> None:
        server.announce_departure = True  # unlike request_terminate alone, a signal says goodbye
        server.request_terminate = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except OSError as error:
        print(f"ChatServer: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
