#!/usr/bin/env python3
"""CRC chat client: `CRCClient` for programs and tests, and a terminal chat program built on it.

    python3 ChatClient.py -S HOST -P PORT -U NAME [-I INFO] [--id N] [--log-file F] [-v]

`CRCClient.run()` connects, registers and returns; one daemon thread then listens for the server's
messages and keeps `connected_user_ids`, `status_updates_log` and `chat_messages_log` up to date.
"""

from __future__ import annotations

import _thread
import argparse
import ctypes
import logging
import random
import select
import selectors
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional

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
from ChatMessageParser import MAX_BYTE as MAX_NAME_BYTES  # a registration's length fields
from ChatMessageParser import MAX_HALF as MAX_INFO_BYTES
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
readline: Optional[ModuleType] = None  # imported by main() for a terminal: line editing and history

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


# ---------------------------------------------------------------------------------------------
# Terminal chat program

HELP = """Commands:
  /msg NAME-or-ID text   send a message (later plain lines go to the same person)
  /reply text, /r text   answer whoever last wrote to you
  /who                   list who is online, you too
  /quit [text]           leave the chat
  /help                  show this help
  any other line         send it to the last person you messaged (before that: whoever last wrote to you)
Keys: arrows and the usual editing keys edit the line; up and down recall earlier lines."""
NO_WELCOME_SECONDS = 5.0  # after connecting, say so if the server has not welcomed us by then
WAKE_SECONDS = 0.1  # how often the listener wakes a main thread that has not noticed the connection ended
SETTLE_SECONDS = 0.5  # at the end of piped input: leave once nothing has arrived for this long ...
SETTLE_LIMIT_SECONDS = 5.0  # ... or after this long at most
REDRAW_WAKE_SECONDS = 0.02  # how often the listener asks the main thread again to show a line
# C0 and C1 control characters and DEL: from another user, never for the terminal to interpret.
_CONTROLS = {code: f"\\x{code:02x}" for code in list(range(0x20)) + list(range(0x7F, 0xA0))}
_CONTROLS.update({ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"})
# Bidirectional controls: an override (U+202E) turns the rest of the row around, so that a text can show
# another than it holds; the marks and isolates are as invisible. Shown escaped too.
_CONTROLS.update({code: f"\\u{code:04x}" for code in [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
                                                        *range(0x2066, 0x206A)]})
ECHO_LIMIT = 200  # in a terminal, the echo of a longer text of ours shows this many characters of it


def unsent_bytes(sock: socket.socket) -> int:  # Testers/quiet.py reads a server's sockets with it too
    """Bytes given to this socket that its kernel has not sent yet (Nagle's algorithm, or a full
    window, holds them back); Linux can say, elsewhere 0. Sent bytes are at once readable at a peer
    on the same machine, so only these are on their way unseen."""
    if UNSENT_REQUEST is None:
        return 0
    reply = fcntl.ioctl(sock.fileno(), UNSENT_REQUEST, b"\0\0\0\0")
    return int.from_bytes(reply, sys.byteorder, signed=True)


def printable(text: str) -> str:
    """Text from the network with every control character shown escaped (\\x1b, \\n, \\u202e), never
    interpreted: another user's escape sequence must not clear your screen or move your cursor, nor a
    bidirectional control turn the rest of the row around."""
    return text.translate(_CONTROLS)


def describe_event(message: Message, known_name: Optional[str], content: Optional[str] = None) -> Optional[str]:
    """One line for a person: what a client saw happen (None for what a person need not see). `content`
    stands for a chat's own: the whole of a text that came in several parts."""
    sender = printable(known_name) if known_name else f"id {message.source_id}"
    if isinstance(message, ClientRegistrationMessage):
        # Known already: it came back before its server gave it up (a restart within the hold-down).
        if known_name is None:
            return f"* {printable(message.client_name)} is online (id {message.source_id})"
        renamed = f", was {printable(known_name)}" if known_name != message.client_name else ""
        return f"* {printable(message.client_name)} is back (id {message.source_id}{renamed})"
    if isinstance(message, ClientQuitMessage):
        return f"* {sender} left" + (f": {printable(message.content)}" if message.content else "")
    if isinstance(message, ClientChatMessage):
        return f"{sender}: {printable(message.content if content is None else content)}"
    if isinstance(message, StatusUpdateMessage):
        return f"[server] {printable(message.content)}"
    return None


def gnu_readline() -> Optional[ctypes.CDLL]:
    """The GNU readline library behind the readline module, to redraw the line being edited; None where
    there is none (libedit on macOS, no readline on Windows)."""
    if readline is None or "libedit" in (readline.__doc__ or ""):
        return None
    try:
        library = ctypes.CDLL(getattr(readline, "__file__", None))  # its symbols and those of what it links
    except OSError:
        return None
    wanted = ("rl_clear_visible_line", "rl_forced_update_display", "rl_done", "fflush")  # readline 7 on
    return library if all(hasattr(library, name) for name in wanted) else None


# The signals with which the listener wakes the main thread (see Screen and TerminalChat.on_disconnect).
WAKE_SIGNALS = {getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name)}


@contextmanager
def wake_signals_held() -> Iterator[None]:
    """While the main thread writes to the terminal, the wake-up signals wait: one that interrupts a
    large write loses the rest of it (CPython drops it without a word)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class Screen:
    """The terminal's output. In a terminal, the line being typed stays at the bottom: a line printed
    while the user types goes above it, and the prompt with what was typed so far is drawn again
    under it. Lines come from two threads (the user's and the client's listener), one at a time."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self.prompt = "> " if interactive else ""
        self.typing = False  # the main thread is in input(), where a line is being typed
        self.drawn = False  # ... and readline has drawn the prompt (prompt_drawn)
        self.in_input = False  # the main thread waits in input(), outside our code (see TerminalChat.run)
        self.lock = threading.Lock()
        # GNU readline can clear and redraw the line being edited, but its state is the main thread's
        # alone (it edits without Python's lock held): lines for it to print wait here, and a signal
        # has the main thread print them between two keys (show_waiting), once the prompt is drawn.
        self.gnu = None
        if interactive and readline is not None and hasattr(readline, "set_pre_input_hook") \
                and hasattr(signal, "SIGUSR2"):
            self.gnu = gnu_readline()
        self.waiting: List[str] = []
        if self.gnu is not None:
            readline.set_pre_input_hook(self.prompt_drawn)  # type: ignore[union-attr]
            signal.signal(signal.SIGUSR2, lambda signal_number, frame: self.show_waiting())

    def say(self, text: str) -> None:
        wake_main_thread = False
        with self.lock:
            if not self.typing:
                self.waiting.append(text)
                self.print_waiting()
            elif self.gnu is not None:  # the listener's line, while the main thread waits in input()
                self.waiting.append(text)
                wake_main_thread = True
            else:
                typed = readline.get_line_buffer() if readline else ""
                # To the start of the line, clear it, the text, then the prompt and what was typed again
                # (a typed line wider than the terminal, or a cursor moved back, is not redrawn right).
                sys.stdout.write(f"\r\x1b[K{text}\n{self.prompt}{typed}")
                sys.stdout.flush()
        # Once the lock is free for show_waiting to take; and again until the lines are shown, since a
        # signal that comes just before readline starts to wait is seen only at the next key.
        while wake_main_thread and self.waiting and self.typing:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR2)
            time.sleep(REDRAW_WAKE_SECONDS)

    def print_waiting(self) -> None:
        with wake_signals_held():
            sys.stdout.write("".join(line + "\n" for line in self.waiting))
            sys.stdout.flush()  # through a pipe, output must not wait in a buffer
        self.waiting.clear()

    def show_waiting(self) -> None:
        """In the main thread, on the listener's signal, while readline edits the line: Python runs a
        signal's handler only between two keys there (or in prompt_drawn), never inside readline's
        own work. If our code holds the lock, the lines wait for read_line."""
        in_input, self.in_input = self.in_input, False  # no ServerGone while this holds the lock
        try:
            if self.typing and self.drawn and self.lock.acquire(blocking=False):
                try:
                    self.redraw_with_waiting()
                finally:
                    self.lock.release()
        finally:
            self.in_input = in_input

    def redraw_with_waiting(self) -> None:
        """In the main thread, lock held, while the user types: the waiting lines above the typed line."""
        assert self.gnu is not None
        if not self.waiting:
            return
        if ctypes.c_int.in_dll(self.gnu, "rl_done").value:  # the line was just entered: a fresh row is below
            self.print_waiting()
            return
        # Readline knows how many rows the line takes and where its cursor is: it clears them all, and
        # draws them again under the lines with the cursor where it was.
        with wake_signals_held():
            self.gnu.rl_clear_visible_line()
            self.gnu.fflush(None)  # readline writes through C's buffered stdout, before the lines
            self.print_waiting()
            self.gnu.rl_forced_update_display()
            self.gnu.fflush(None)

    def prompt_drawn(self) -> None:
        """Run by readline inside input() once the prompt is on the screen (an exception here is lost)."""
        self.drawn = True
        self.show_waiting()  # lines that came while the prompt was being drawn

    def read_line(self) -> str:
        """The user's next line; EOFError at the end of input."""
        with self.lock:
            self.typing, self.drawn = self.interactive, False
        ended_mid_line = False
        try:
            self.in_input = True
            return input(self.prompt)
        except BaseException:  # ServerGone, Ctrl-C or Ctrl-D: what follows goes under the prompt's row
            ended_mid_line = self.interactive
            raise
        finally:
            self.in_input = False
            self.typing = False  # readline is done with the line: no more redraws
            with self.lock:
                if ended_mid_line:
                    self.waiting.insert(0, "")
                self.print_waiting()  # lines that came as the line ended


class ServerGone(Exception):
    """Raised in the main thread, waiting for the user's line, when the connection has ended."""


class TerminalChat:
    """Reads the user's lines in the main thread (with line editing and history where the standard
    library has readline) and prints the network's events from the client's listener thread as they
    arrive, above the line being typed."""

    def __init__(self, client: CRCClient, interactive: bool) -> None:
        self.client = client
        self.screen = Screen(interactive)
        self.last_peer: Optional[int] = None  # whom a plain line goes to
        self.last_writer: Optional[int] = None  # whom /reply answers
        self.unfinished: Dict[int, List[ClientChatMessage]] = {}  # sender -> the parts of a long chat so far
        self.last_event = time.monotonic()
        self.main_thread = threading.main_thread()
        self.wakeable = False  # the main thread is in run()'s loop, and is woken if the server goes
        # Held while a chat is sent and echoed, and while an event is shown: an answer to the chat (an
        # Unknown ID, say), which can come before the echo is printed, waits and comes after it.
        self.order = threading.Lock()
        client.on_event = self.on_event

    # --------------------------------------------------------------------- the network's side

    def on_event(self, message: Message, known_name: Optional[str]) -> None:
        """In the listener thread: show what happened, a long chat once all its parts are in."""
        with self.order:
            self.show_event(message, known_name)

    def show_event(self, message: Message, known_name: Optional[str]) -> None:
        self.last_event = time.monotonic()
        if isinstance(message, ClientChatMessage):
            self.last_writer = message.source_id
            self.unfinished.setdefault(message.source_id, []).append(message)
            if not continues(message.content):  # else the rest is on its way
                self.show_chat(self.unfinished.pop(message.source_id), known_name)
            return
        if isinstance(message, ClientQuitMessage) and message.source_id in self.unfinished:
            # The sender left before the last part of a long text (a netsplit too): what came is
            # better shown, marked, than held back forever.
            self.show_chat(self.unfinished.pop(message.source_id), known_name, cut_short=True)
        text = describe_event(message, known_name)
        if text is not None:
            self.screen.say(text)

    def show_chat(self, parts: List[ClientChatMessage], known_name: Optional[str], cut_short: bool = False) -> None:
        contents = [part.content for part in parts]
        count = part_count(contents)
        notes = ([f"{count} parts"] if count > 1 else []) + (["cut short"] if cut_short else [])
        note = f"   ({', '.join(notes)})" if notes else ""
        self.screen.say(f"{describe_event(parts[0], known_name, ''.join(contents))}{note}")

    def on_disconnect(self) -> None:
        """In the listener thread, once the server has ended the connection: wake the main thread, which
        may be waiting for the user's line, to say so and end. Again every WAKE_SECONDS until it has:
        a signal that comes just before the main thread starts to wait does not interrupt the wait."""
        while self.wakeable:
            if hasattr(signal, "pthread_kill") and hasattr(signal, "SIGUSR1"):
                signal.pthread_kill(self.main_thread.ident or 0, signal.SIGUSR1)
            else:  # no POSIX signals here: a KeyboardInterrupt is how the main thread can be woken
                _thread.interrupt_main()
            time.sleep(WAKE_SECONDS)

    def warn_if_not_welcomed(self) -> None:
        if self.client.connected and not self.client.status_updates_log:
            self.screen.say(f"No welcome from {self.client.server_host}:{self.client.server_port} after"
                            f" {NO_WELCOME_SECONDS:g} s: is it a CRC server? Still waiting.")

    # ------------------------------------------------------------------------ the user's side

    def run(self) -> int:
        """Returns the exit status: 0 after /quit or end of input, 1 if the server went away, 130 on Ctrl-C."""
        def server_gone(signal_number: int, frame: object) -> None:
            # Only while the main thread waits in input(): there the exception ends the wait, and
            # read_line()'s finally sets the screen right. Raised anywhere else, it could land while
            # the screen's lock is held, and the last line, "Disconnected", would wait for it forever.
            # Out of input(), the loop's own test of client.connected notices; on_disconnect wakes
            # again until then.
            if self.screen.in_input:
                raise ServerGone()

        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, server_gone)
        self.client.on_disconnect = self.on_disconnect
        welcome_check = threading.Timer(NO_WELCOME_SECONDS, self.warn_if_not_welcomed)
        welcome_check.daemon = True
        welcome_check.start()
        try:
            self.wakeable = True
            try:
                while self.client.connected:
                    status = self.handle_line(self.screen.read_line())
                    if status is not None:
                        return status
            except EOFError:
                self.settle()
                if self.client.connected:  # else the server went away meanwhile: say so below
                    return self.leave("")
        except ServerGone:
            pass
        except KeyboardInterrupt:
            if self.client.connected:  # not woken because the server went away (no POSIX signals) but Ctrl-C
                self.leave("")
                return 130
        finally:
            self.wakeable = False
            welcome_check.cancel()
        self.client.stop()  # the listener has ended, or ends now: its reason is final
        self.screen.say(f"Disconnected: {self.client.disconnect_reason}.")
        return 1

    def settle(self) -> None:
        """At the end of piped input: let the answers to what was sent arrive and be shown first."""
        deadline = time.monotonic() + SETTLE_LIMIT_SECONDS
        while self.client.connected and time.monotonic() < deadline:
            if time.monotonic() - self.last_event >= SETTLE_SECONDS and self.client.is_quiet():
                return
            time.sleep(0.05)

    def handle_line(self, line: str) -> Optional[int]:
        """Carry out one input line; returns an exit status when the program should end."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return None
        if not line.startswith("/"):
            if self.last_peer is None:  # no one messaged yet: whoever wrote last is the one to answer
                self.last_peer = self.last_writer
            if self.last_peer is None:
                self.screen.say("No one to send to yet: start with /msg NAME text (see /who).")
            else:
                self.send(self.last_peer, line)
            return None
        command, _, rest = line.partition(" ")
        if command == "/msg":
            target, _, text = rest.strip().partition(" ")
            if not target or not text.strip():
                self.screen.say("Usage: /msg NAME-or-ID text")
                return None
            destination = self.resolve(target)
            if destination is not None:
                self.last_peer = destination
                self.send(destination, text.strip())
        elif command in ("/reply", "/r"):
            if self.last_writer is None:
                self.screen.say("No one has written to you yet.")
            elif not rest.strip():
                self.screen.say(f"Usage: {command} text")
            else:
                self.last_peer = self.last_writer
                self.send(self.last_writer, rest.strip())
        elif command == "/who":
            self.show_who()
        elif command == "/quit":
            return self.leave(rest.strip())
        elif command == "/help":
            self.screen.say(HELP)
        else:
            self.screen.say(f"Unknown command {command}; type /help for the list.")
        return None

    def online(self) -> Dict[int, str]:
        """Everyone online as this client knows it, itself included."""
        return {**self.client.connected_user_ids, self.client.id: self.client.client_name}

    def name_of(self, user_id: int) -> str:
        return printable(self.online().get(user_id, f"id {user_id}"))

    def resolve(self, target: str) -> Optional[int]:
        """A name or id to an id, or None after saying why not."""
        online = self.online()
        is_number = target.isascii() and target.isdigit()
        if is_number and int(target) in online:
            return int(target)
        matches = sorted(user_id for user_id, name in online.items() if name == target)
        if len(matches) == 1:
            return matches[0]
        if matches:
            ids = ", ".join(str(user_id) for user_id in matches)
            self.screen.say(f"More than one {printable(target)} is online (ids {ids}); use /msg ID text.")
            return None
        if is_number:
            return int(target)  # not known here (yet); the server answers if it knows no such id
        self.screen.say(f"No one called {printable(target)} is online; /who lists who is.")
        return None

    def send(self, destination: int, text: str) -> None:
        with self.order:
            try:
                parts = self.client.send_chat(destination, text)
            except ValueError as error:  # an id out of range
                self.screen.say(f"Not sent: {error}")
                return
            if not parts:
                self.screen.say("Not sent: not connected.")
                return
            notes = [f"sent in {parts} parts"] if parts > 1 else []
            if self.screen.interactive and len(text) > ECHO_LIMIT:  # the typed line shows it all already
                notes.insert(0, f"{len(text):,} characters")
                text = text[:ECHO_LIMIT] + "..."
            note = f"   ({', '.join(notes)})" if notes else ""
            self.screen.say(f"-> {self.name_of(destination)}: {printable(text)}{note}")

    def show_who(self) -> None:
        online = sorted(self.online().items(), key=lambda item: (item[1], item[0]))
        self.screen.say(f"Online ({len(online)}, you included):")
        for user_id, name in online:
            self.screen.say(f"  {printable(name)} (id {user_id})" + ("   <- you" if user_id == self.client.id else ""))

    def leave(self, text: str) -> int:
        self.wakeable = False  # leaving anyway: if the server goes now, the listener need not wake us
        self.client.quit(text)
        self.client.stop()
        self.screen.say("Bye.")
        return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line: what is wrong with which option, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def writable_file(path: str) -> str:
    """An option's type: a file this program can write (tried now, so that a log it cannot write is an
    error here, not a traceback from logging later)."""
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write {path!r}: {error.strerror or error}") from None
    return path


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    def within(low: int, high: int) -> Callable[[str], int]:
        def number(text: str) -> int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be a whole number from {low:,} to {high:,}, not {text!r}") \
                    from None
            if not low <= value <= high:
                raise argparse.ArgumentTypeError(f"must be a whole number from {low:,} to {high:,}, not {text!r}")
            return value
        return number

    def text_of_at_most(limit: int, what: str, may_be_empty: bool = True,
                         may_hold_spaces: bool = True) -> Callable[[str], str]:
        def check(text: str) -> str:
            if not text and not may_be_empty:
                raise argparse.ArgumentTypeError(f"{what} may not be empty")
            if any(char.isspace() for char in text) and not may_hold_spaces:
                raise argparse.ArgumentTypeError(f"{what} may not hold white space (others could not /msg it),"
                                                 f" not {text!r}")
            if len(text.encode("utf-8")) > limit:
                raise argparse.ArgumentTypeError(f"{what} is at most {limit:,} bytes of UTF-8, not"
                                                 f" {len(text.encode('utf-8')):,}")
            return text
        return check

    parser = ArgumentParser(prog="ChatClient.py", description="Chat on a Clemson Relay Chat network.", epilog=HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--serverhost", required=True, type=text_of_at_most(255, "the host", may_be_empty=False),
                        help="host name or address of a CRC server")
    parser.add_argument("-P", "--serverport", required=True, type=within(1, 65535), help="port of that server")
    a_name = text_of_at_most(MAX_NAME_BYTES, "a name", may_be_empty=False, may_hold_spaces=False)
    parser.add_argument("-U", "--username", required=True, type=a_name,
                        help="your name on the network: no spaces, at most 255 bytes")
    parser.add_argument("-I", "--info", default="", type=text_of_at_most(MAX_INFO_BYTES, "the info"),
                        help="a line about you")
    parser.add_argument("--id", type=within(1, MAX_ID), default=None, help="your id (default: random)")
    parser.add_argument("--log-file", dest="log_file", default=None, type=writable_file,
                        help="write this client's log here")
    parser.add_argument("-v", "--verbose", action="store_true", help="copy the log to stderr")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    options = parse_args(argv)
    client = CRCClient(options)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        global readline
        try:
            import readline  # input() then edits lines and keeps a history, where the standard library has it
        except ImportError:  # Windows, say: plain input
            pass
    chat = TerminalChat(client, interactive)  # before run(): the welcome can arrive as soon as we have registered
    # Before run() too: its listener shows the welcome and who is online at once.
    chat.screen.say(f"Connecting to {client.server_host}:{client.server_port} as {printable(client.client_name)}"
                    f" (id {client.id}). Type /help for commands.")
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
