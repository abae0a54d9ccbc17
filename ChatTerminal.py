#!/usr/bin/env python3
"""The terminal chat program on CRCClient: what `python3 ChatClient.py -S HOST -P PORT -U NAME` runs.

A line typed is a command or a chat; what arrives is printed above the line being typed (through GNU
readline where there is one), every control character escaped.
"""

from __future__ import annotations

import _thread
import argparse
import ctypes
import signal
import sys
import threading
import time
from contextlib import contextmanager
from types import ModuleType
from typing import Callable, Dict, Iterator, List, NoReturn, Optional

from ChatClient import CRCClient, continues, part_count
from ChatMessageParser import MAX_BYTE as MAX_NAME_BYTES  # a registration's length fields
from ChatMessageParser import MAX_HALF as MAX_INFO_BYTES
from ChatMessageParser import MAX_INT as MAX_ID
from ChatMessageParser import (
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    Message,
    StatusUpdateMessage,
)

readline: Optional[ModuleType] = None  # imported by main() for a terminal: line editing and history
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


# The one signal with which the listener thread wakes the main thread (see Screen.wake); None where
# there are no POSIX signals.
WAKE_SIGNAL: Optional[int] = getattr(signal, "SIGUSR1", None) if hasattr(signal, "pthread_kill") else None

# What the main thread is doing with the terminal (Screen.state). OUTSIDE: not reading a line, so lines
# are printed as they come. READING: in input(), the prompt not drawn yet. EDITING: in input(), GNU
# readline has drawn the prompt, and the line being typed is on the bottom row.
OUTSIDE, READING, EDITING = "outside", "reading", "editing"


@contextmanager
def wake_signal_held() -> Iterator[None]:
    """While the main thread writes to the terminal, the wake-up signal waits: one that interrupts a
    large write loses the rest of it (CPython drops it without a word)."""
    if WAKE_SIGNAL is None or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {WAKE_SIGNAL})
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
        self.state = OUTSIDE
        self.gone = False  # the server ended the connection: a wake ends the wait for a line (ServerGone)
        self.lock = threading.Lock()
        # GNU readline can clear and redraw the line being edited, but its state is the main thread's
        # alone (it edits without Python's lock held): lines for it to print wait here, and the wake-up
        # signal has the main thread print them between two keys (on_wake), once the prompt is drawn.
        self.gnu = None
        if interactive and readline is not None and hasattr(readline, "set_pre_input_hook") \
                and WAKE_SIGNAL is not None:
            self.gnu = gnu_readline()
        self.waiting: List[str] = []
        if self.gnu is not None:
            readline.set_pre_input_hook(self.prompt_drawn)  # type: ignore[union-attr]
        if WAKE_SIGNAL is not None:
            signal.signal(WAKE_SIGNAL, self.on_wake)

    def say(self, text: str) -> None:
        wake_main_thread = False
        with self.lock:
            typing = self.interactive and self.state != OUTSIDE
            if not typing:
                self.waiting.append(text)
                self.print_waiting()
            elif self.gnu is not None and threading.current_thread() is not threading.main_thread():
                # the listener's line, while the main thread waits in input()
                self.waiting.append(text)
                wake_main_thread = True
            else:
                typed = readline.get_line_buffer() if readline else ""
                # To the start of the line, clear it, the text, then the prompt and what was typed again
                # (a typed line wider than the terminal, or a cursor moved back, is not redrawn right).
                sys.stdout.write(f"\r\x1b[K{text}\n{self.prompt}{typed}")
                sys.stdout.flush()
        # Once the lock is free for on_wake to take; and again until the lines are shown, since a
        # signal that comes just before readline starts to wait is seen only at the next key.
        while wake_main_thread and self.waiting and self.state != OUTSIDE:
            self.wake()
            time.sleep(REDRAW_WAKE_SECONDS)

    def wake(self) -> None:
        """From the listener thread: have the main thread look at the screen (on_wake)."""
        if WAKE_SIGNAL is not None:
            signal.pthread_kill(threading.main_thread().ident or 0, WAKE_SIGNAL)
        else:  # no POSIX signals here: a KeyboardInterrupt is how the main thread can be woken
            _thread.interrupt_main()

    def on_wake(self, signal_number: int, frame: object) -> None:
        """In the main thread, on the wake-up signal. While readline edits the line, Python runs this only
        between two keys (or in prompt_drawn), never inside readline's own work. Once the server has gone,
        it ends the wait for a line with ServerGone, and read_line's finally sets the screen right; else
        it shows the waiting lines above the typed one. Never while our code holds the lock: then the
        lines wait for read_line, and a departure is woken again."""
        if not self.lock.acquire(blocking=False):
            return
        try:
            if self.gone and self.state != OUTSIDE:
                raise ServerGone()
            if self.state == EDITING:
                self.redraw_with_waiting()
        finally:
            self.lock.release()

    def print_waiting(self) -> None:
        with wake_signal_held():
            sys.stdout.write("".join(line + "\n" for line in self.waiting))
            sys.stdout.flush()  # through a pipe, output must not wait in a buffer
        self.waiting.clear()

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
        with wake_signal_held():
            self.gnu.rl_clear_visible_line()
            self.gnu.fflush(None)  # readline writes through C's buffered stdout, before the lines
            self.print_waiting()
            self.gnu.rl_forced_update_display()
            self.gnu.fflush(None)

    def prompt_drawn(self) -> None:
        """Run by readline inside input() once the prompt is on the screen (an exception here is lost)."""
        if self.state == READING:
            self.state = EDITING
        if self.lock.acquire(blocking=False):  # lines that came while the prompt was being drawn
            try:
                self.redraw_with_waiting()
            finally:
                self.lock.release()

    def read_line(self) -> str:
        """The user's next line; EOFError at the end of input."""
        ended_mid_line = False
        try:  # from the moment the state says READING: a wake-up may raise ServerGone at once
            with self.lock:
                self.state = READING
            return input(self.prompt)
        except BaseException:  # ServerGone, Ctrl-C or Ctrl-D: what follows goes under the prompt's row
            ended_mid_line = self.interactive
            raise
        finally:
            self.state = OUTSIDE  # readline is done with the line: no more redraws, no ServerGone
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
            self.screen.gone = True
            self.screen.wake()
            time.sleep(WAKE_SECONDS)

    def warn_if_not_welcomed(self) -> None:
        if self.client.connected and not self.client.status_updates_log:
            self.screen.say(f"No welcome from {self.client.server_host}:{self.client.server_port} after"
                            f" {NO_WELCOME_SECONDS:g} s: is it a CRC server? Still waiting.")

    # ------------------------------------------------------------------------ the user's side

    def run(self) -> int:
        """Returns the exit status: 0 after /quit or end of input, 1 if the server went away, 130 on Ctrl-C."""
        # The server's departure ends a wait for the user's line (Screen.on_wake); out of input(), the
        # loop's own test of client.connected notices, and on_disconnect wakes again until then.
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


