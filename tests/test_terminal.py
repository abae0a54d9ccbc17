"""The terminal chat program as a user drives it: `python3 ChatClient.py` in a pseudo-terminal and
through plain pipes, against our ChatServer running in a thread of the test process."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Callable, Iterator, List, Sequence

import pexpect
import pexpect.popen_spawn
import pytest
from netkit import ROOT, RawPeer, wait_until

from ChatClient import MAX_CHAT_CONTENT
from ChatMessageParser import ClientChatMessage, ClientQuitMessage, ClientRegistrationMessage, StatusUpdateMessage
from ChatServer import CRCServer

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning"),  # inside pexpect 4.8's pipe reader
]

DEADLINE_SECONDS = 5.0
CLIENT = str(ROOT / "ChatClient.py")


class Display:
    """What a terminal shows: just enough of an xterm for the output of the client and of readline
    (printing with wrap at the right margin, carriage return, line feed, backspace, and the CSI
    sequences that move the cursor, erase and insert). Rows scrolled off the top are dropped."""

    def __init__(self, rows: int, columns: int) -> None:
        self.columns = columns
        self.rows = [[" "] * columns for _ in range(rows)]
        self.row = 0
        self.column = 0  # == columns: at the right margin, the next character wraps first
        self.unfinished = ""  # the start of an escape sequence that the next output finishes

    def feed(self, output: str) -> None:
        output = self.unfinished + output
        cut = re.search(r"\x1b(\[[?\d;]*)?$", output)  # output can end in the middle of a sequence
        self.unfinished = cut.group() if cut else ""
        output = output[:len(output) - len(self.unfinished)]
        for match in re.finditer(r"\x1b\[([?\d;]*)([@A-Za-z])|\x1b[=>]|[\s\S]", output):
            if match.group(2):
                self._csi(match.group(1), match.group(2))
            elif match.group() == "\r":
                self.column = 0
            elif match.group() == "\n":
                self._line_feed()
            elif match.group() == "\b":
                self.column = max(0, min(self.column, self.columns - 1) - 1)
            elif match.group().isprintable():
                if self.column == self.columns:
                    self.column = 0
                    self._line_feed()
                self.rows[self.row][self.column] = match.group()
                self.column += 1

    def _line_feed(self) -> None:
        if self.row == len(self.rows) - 1:
            self.rows = self.rows[1:] + [[" "] * self.columns]
        else:
            self.row += 1

    def _csi(self, parameter: str, final: str) -> None:
        if parameter.startswith("?"):
            return  # modes such as bracketed paste: nothing shown
        count = int(parameter or 1)
        row, column = self.rows[self.row], min(self.column, self.columns - 1)
        if final == "A":
            self.row, self.column = max(0, self.row - count), column
        elif final == "B":
            self.row, self.column = min(len(self.rows) - 1, self.row + count), column
        elif final == "C":
            self.column = min(self.columns - 1, column + count)
        elif final == "D":
            self.column = max(0, column - count)
        elif final == "G":
            self.column = min(self.columns, count) - 1
        elif final in "KJ" and parameter in ("", "0"):
            row[column:] = [" "] * (self.columns - column)
            if final == "J":
                for below in self.rows[self.row + 1:]:
                    below[:] = [" "] * self.columns
        elif final == "@":
            row[column:] = ([" "] * count + row[column:])[:self.columns - column]
        elif final == "P":
            row[column:] = (row[column + count:] + [" "] * count)[:self.columns - column]
        else:
            raise AssertionError(f"the test's terminal does not know the sequence ESC [{parameter}{final}")

    def lines(self) -> List[str]:
        """The rows down to the cursor's, without trailing blanks."""
        return ["".join(row).rstrip() for row in self.rows[:self.row + 1]]


class Terminal:
    """One running ChatClient.py, in a pseudo-terminal ("pty") or behind pipes ("pipe").

    Everything it prints is kept in `transcript`, so waits do not depend on the order of output; in a
    pseudo-terminal of `columns` columns, `display` shows what the user would see.
    """

    def __init__(self, mode: str, port: int, name: str, user_id: int, columns: int = 80,
                 program: Sequence[str] = (CLIENT,)) -> None:
        """`program`: what Python runs, ChatClient.py or `-c CODE` that runs its main()."""
        self.name = name
        self.mode = mode
        arguments = [*program, "-S", "127.0.0.1", "-P", str(port), "-U", name, "--id", str(user_id)]
        if mode == "pty":
            self.child = pexpect.spawn(sys.executable, arguments, cwd=str(ROOT), encoding="utf-8",
                                       dimensions=(24, columns))
        else:
            self.child = pexpect.popen_spawn.PopenSpawn([sys.executable] + arguments, cwd=str(ROOT), encoding="utf-8")
        self.transcript = ""
        self.display = Display(24, columns)
        self.ended = False

    def _read(self) -> None:
        if self.ended:
            return
        try:
            output = self.child.read_nonblocking(4096, timeout=0.05)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            self.ended = True
            return
        self.transcript += output.replace("\r\n", "\n")
        self.display.feed(output)

    def wait_for_display(self, lines: List[str]) -> None:
        """Wait until these are the last rows shown, the cursor on the last of them."""
        def shown() -> bool:
            self._read()
            return self.display.lines()[-len(lines):] == lines

        wait_until(shown, lambda: f"expected {self.name}'s terminal to end with the rows {lines};"
                                  f" it shows:\n" + "\n".join(self.display.lines()))

    def wait_for(self, text: str, count: int = 1) -> None:
        def seen() -> bool:
            self._read()
            return self.transcript.count(text) >= count

        wait_until(seen, lambda: f"expected {self.name}'s screen to show {text!r} {count} time(s); it shows:\n{self.transcript}")

    def type(self, line: str) -> None:
        # In pieces, reading the screen between them: the terminal echoes what is typed, and a long line's
        # echo, unread, would fill the pseudo-terminal and stop the program from reading what is typed.
        for start in range(0, len(line), 1000):
            self.child.send(line[start:start + 1000])
            self._read()
        self.child.sendline("")

    def wait_for_exit(self) -> int:
        def ended() -> bool:
            self._read()
            return self.ended

        wait_until(ended, lambda: f"expected {self.name}'s program to exit; it still runs, showing:\n{self.transcript}")
        self.child.wait()
        return self.child.exitstatus

    def end_input(self) -> None:
        self.child.sendeof()  # Ctrl-D in a terminal, closing stdin for a pipe

    def interrupt(self) -> None:
        if self.mode == "pty":
            self.child.sendintr()  # Ctrl-C, as the terminal delivers it
        else:
            self.child.kill(signal.SIGINT)

    def close(self) -> None:
        if self.mode == "pty":
            self.child.close(force=True)
        elif self.child.proc.poll() is None:
            self.child.kill(signal.SIGKILL)
            self.child.wait()


@pytest.fixture
def server(servers: Any) -> CRCServer:
    return servers(id=1, servername="hub", trace=None).server  # the trace as in a test harness


@pytest.fixture(params=["pty", "pipe"])
def open_terminal(request: pytest.FixtureRequest, server: CRCServer) -> Iterator[Callable[..., Terminal]]:
    """Starts users' programs on the server, all in this test's mode, and waits for each welcome."""
    terminals: List[Terminal] = []

    def start(name: str, user_id: int) -> Terminal:
        terminal = Terminal(request.param, server.port, name, user_id)
        terminals.append(terminal)
        terminal.wait_for(f"[server] Welcome to the Clemson Relay Chat network {name}")
        return terminal

    yield start
    for terminal in terminals:
        terminal.close()


def test_two_users_chat_by_name_id_and_plain_lines(open_terminal: Callable[..., Terminal]) -> None:
    alice = open_terminal("alice", 11)
    bob = open_terminal("bob", 12)
    alice.wait_for("* bob is online (id 12)")
    bob.wait_for("* alice is online (id 11)")

    alice.type("/who")
    alice.wait_for("Online (2, you included):\n  alice (id 11)   <- you\n  bob (id 12)\n")
    alice.type("anyone there?")
    alice.wait_for("No one to send to yet: start with /msg NAME text")

    alice.type("/msg bob hello")
    bob.wait_for("alice: hello")
    alice.wait_for("-> bob: hello")
    bob.type("/msg 11 hi alice")
    alice.wait_for("bob: hi alice")
    alice.type("how are you")  # a plain line goes to the last person alice messaged
    bob.wait_for("alice: how are you")

    alice.type("/quit see you")
    alice.wait_for("Bye.")
    assert alice.wait_for_exit() == 0, f"expected exit status 0 after /quit; screen:\n{alice.transcript}"
    bob.wait_for("* alice left: see you")
    bob.type("/who")
    bob.wait_for("Online (1, you included):\n  bob (id 12)   <- you\n")


def test_unknown_and_ambiguous_names_and_ids(open_terminal: Callable[..., Terminal]) -> None:
    alice = open_terminal("alice", 11)
    open_terminal("sam", 21)
    second_sam = open_terminal("sam", 22)
    alice.wait_for("* sam is online (id 22)")

    alice.type("/msg nobody hi")
    alice.wait_for("No one called nobody is online")
    alice.type("/msg sam hi")
    alice.wait_for("More than one sam is online (ids 21, 22); use /msg ID text.")
    alice.type("/msg 22 hi sam")
    second_sam.wait_for("alice: hi sam")
    alice.type("/msg 424242 hello?")
    alice.wait_for("[server] Unknown ID 424242")
    alice.type("/msg bob")
    alice.wait_for("Usage: /msg NAME-or-ID text")
    alice.type("/dance")
    alice.wait_for("Unknown command /dance; type /help for the list.")
    alice.type("/help")
    alice.wait_for("/msg NAME-or-ID text")


def test_end_of_input_leaves_cleanly_and_others_see_it(open_terminal: Callable[..., Terminal]) -> None:
    alice = open_terminal("alice", 11)
    bob = open_terminal("bob", 12)
    bob.wait_for("* alice is online (id 11)")
    alice.end_input()
    assert alice.wait_for_exit() == 0, f"expected exit status 0 at end of input; screen:\n{alice.transcript}"
    bob.wait_for("* alice left")


def test_ctrl_c_leaves_cleanly_and_others_see_it(open_terminal: Callable[..., Terminal]) -> None:
    alice = open_terminal("alice", 11)
    bob = open_terminal("bob", 12)
    bob.wait_for("* alice is online (id 11)")
    alice.interrupt()
    status = alice.wait_for_exit()
    assert status == 130, f"expected exit status 130 after Ctrl-C, seen {status}; screen:\n{alice.transcript}"
    assert "Traceback" not in alice.transcript, f"expected no traceback; screen:\n{alice.transcript}"
    bob.wait_for("* alice left")


def test_server_going_away_is_reported_and_exits_non_zero(open_terminal: Callable[..., Terminal],
                                                          server: CRCServer) -> None:
    alice = open_terminal("alice", 11)
    server.request_terminate = True
    alice.wait_for("Disconnected: the server closed the connection.")
    status = alice.wait_for_exit()
    assert status == 1, f"expected exit status 1 when the server goes away, seen {status}; screen:\n{alice.transcript}"


def test_what_ends_a_half_typed_line_is_said_on_a_row_of_its_own(server: CRCServer) -> None:
    alice = Terminal("pty", server.port, "alice", 11)
    bob = Terminal("pty", server.port, "bob", 12)
    try:
        alice.wait_for("[server] Welcome")
        bob.wait_for("[server] Welcome")
        bob.child.send("half typed")
        bob.wait_for_display(["> half typed"])
        bob.end_input()  # Ctrl-D on a line with text does nothing; on an empty one it leaves
        bob.child.send("\x15")  # Ctrl-U empties the line
        bob.end_input()
        bob.wait_for_display([">", "Bye.", ""])
        alice.child.send("half typed")
        alice.wait_for_display(["> half typed"])
        server.request_terminate = True
        alice.wait_for_display(["> half typed", "Disconnected: the server closed the connection.", ""])
    finally:
        alice.close()
        bob.close()


def test_a_server_that_goes_away_while_piped_input_settles_is_reported(server: CRCServer) -> None:
    alice = Terminal("pipe", server.port, "alice", 11)
    chatter = RawPeer.client(server.port, 20, "chatter")
    alice.wait_for("* chatter is online (id 20)")
    chatting = threading.Event()

    def chat() -> None:  # keeps alice busy, so that at the end of her input she waits for the answers
        while not chatting.wait(0.05):
            try:
                chatter.send(ClientChatMessage.bytes(20, 11, "still here"))
            except OSError:
                return
    threading.Thread(target=chat, daemon=True).start()
    try:
        alice.wait_for("chatter: still here")
        alice.end_input()
        server.request_terminate = True
        status = alice.wait_for_exit()
        assert status == 1 and "Disconnected: the server closed the connection." in alice.transcript \
            and "Bye." not in alice.transcript, f"expected the disconnection said, exit status 1; saw {status}:\n" \
                                                f"{alice.transcript[-400:]}"
    finally:
        chatting.set()
        chatter.close()
        alice.close()


def test_unreachable_server_is_reported() -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    result = subprocess.run([sys.executable, CLIENT, "-S", "127.0.0.1", "-P", str(port), "-U", "alice"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE_SECONDS)
    assert result.returncode == 1, f"expected exit status 1, seen {result.returncode}; stderr: {result.stderr}"
    assert f"Cannot connect to 127.0.0.1:{port}" in result.stderr, f"expected a clear error, seen: {result.stderr}"


# ------------------------------------------------------------------------------ issue 10: the terminal


@pytest.mark.timeout(60)
def test_a_message_longer_than_a_frame_arrives_whole_and_in_order(open_terminal: Callable[..., Terminal]) -> None:
    alice = open_terminal("alice", 11)
    bob = open_terminal("bob", 12)
    alice.wait_for("* bob is online (id 12)")
    text = "".join(f"{n:05d}é" for n in range(12_000))[:70_000]  # 70,000 characters, some of them 2 bytes
    alice.type(f"/msg bob {text}")
    alice.wait_for("sent in 2 parts)")
    bob.wait_for(f"alice: {text}   (2 parts)")
    # Issue 19: in a terminal the typed line shows the text already; the echo shows only its start.
    assert alice.transcript.count(text[:20_000]) == 1, "expected the long text shown once on alice's screen"


@pytest.mark.timeout(60)
def test_a_message_that_fills_a_frame_exactly_is_shown_at_once_and_alone(open_terminal: Callable[..., Terminal]) -> None:
    alice = open_terminal("alice", 11)
    bob = open_terminal("bob", 12)
    alice.wait_for("* bob is online (id 12)")
    full = "f" * MAX_CHAT_CONTENT  # as long as a part that another part continues
    alice.type(f"/msg bob {full}")
    alice.type("/msg bob after")
    alice.wait_for("-> bob: after")  # reads the long line's echo, which alice must write out before going on
    bob.wait_for("alice: after")  # not "alice: fff...fafter   (2 parts)", as if the two were one
    assert bob.transcript.count(f"alice: {full}") == 1 and "(2 parts)" not in bob.transcript


@pytest.mark.timeout(60)
def test_a_long_message_whose_sender_quits_before_its_end_is_shown_cut_short(open_terminal: Callable[..., Terminal],
                                                                             server: CRCServer) -> None:
    alice = open_terminal("alice", 11)
    mallory = RawPeer.client(server.port, 66, "mallory")
    alice.wait_for("* mallory is online (id 66)")
    first = "m" * MAX_CHAT_CONTENT  # a part that says the next one continues it
    mallory.send(ClientChatMessage.bytes(66, 11, first) + ClientQuitMessage.bytes(66, "gone"))
    alice.wait_for("* mallory left: gone")
    shown = alice.transcript.find(f"mallory: {first}   (cut short)")  # not lost, nor held back
    assert 0 <= shown < alice.transcript.find("* mallory left"), \
        f"expected the part that came, marked cut short, then the quit; the screen shows:\n{alice.transcript[-300:]}"


def test_control_characters_from_others_are_shown_escaped(open_terminal: Callable[..., Terminal],
                                                          server: CRCServer) -> None:
    alice = open_terminal("alice", 11)
    mallory = RawPeer.client(server.port, 66, "mal\x1b[31mlory")
    alice.wait_for("* mal\\x1b[31mlory is online (id 66)")
    mallory.send(ClientChatMessage.bytes(66, 11, "\x1b[2J\x07cleared?\r\nnew line\x00\x9b"))
    alice.wait_for("mal\\x1b[31mlory: \\x1b[2J\\x07cleared?\\r\\nnew line\\x00\\x9b")
    assert "\x1b[2J" not in alice.transcript and "\x07" not in alice.transcript
    # Issue 19: a right-to-left override shows "photo\u202egnp.exe" as "photoexe.png", and isolates hide too.
    mallory.send(ClientChatMessage.bytes(66, 11, "photo\u202egnp.exe \u2066x\u2069 \u200f"))
    alice.wait_for("lory: photo\\u202egnp.exe \\u2066x\\u2069 \\u200f")
    assert not set("\u202e\u2066\u2069\u200f") & set(alice.transcript), "a bidirectional control reached the terminal"


def test_typing_survives_an_incoming_message_and_history_recalls_a_line(server: CRCServer) -> None:
    alice = Terminal("pty", server.port, "alice", 11)
    bob = Terminal("pipe", server.port, "bob", 12)
    try:
        alice.wait_for("* bob is online (id 12)")
        alice.child.send("/msg bob hel")  # typed, not yet entered
        alice.wait_for("> /msg bob hel")
        bob.type("/msg alice interrupting")
        alice.wait_for_display(["bob: interrupting", "> /msg bob hel"])  # above the line being typed, drawn again
        alice.child.send("lo\r")
        bob.wait_for("alice: hello")
        alice.child.send("\x1b[A\r")  # up arrow: the last line again
        bob.wait_for("alice: hello", count=2)
    finally:
        alice.close()
        bob.close()


LEFT = "\x1b[D"  # the left arrow key


def test_a_message_arriving_mid_line_leaves_the_cursor_where_the_user_was_typing(server: CRCServer) -> None:
    alice = Terminal("pty", server.port, "alice", 11)
    bob = Terminal("pipe", server.port, "bob", 12)
    try:
        alice.wait_for("* bob is online (id 12)")
        alice.child.send("/msg bob hello wor" + LEFT * 3)
        alice.wait_for_display(["> /msg bob hello wor"])
        bob.type("/msg alice interrupting")
        alice.wait_for("bob: interrupting")
        alice.child.send("X")  # goes where the cursor was, before "wor"
        alice.wait_for_display(["bob: interrupting", "> /msg bob hello Xwor"])
        alice.child.send("\r")
        bob.wait_for("alice: hello Xwor")
    finally:
        alice.close()
        bob.close()


def test_a_message_arriving_while_a_typed_line_wraps_clears_all_its_rows(server: CRCServer) -> None:
    alice = Terminal("pty", server.port, "alice", 11, columns=30)
    bob = Terminal("pipe", server.port, "bob", 12)
    try:
        alice.wait_for("* bob is online (id 12)")
        alice.child.send("/msg bob " + "a" * 30 + "b" * 30)  # the prompt and this fill 2 rows and a bit
        typed = ["> /msg bob " + "a" * 19, "a" * 11 + "b" * 19, "b" * 11]
        alice.wait_for_display(typed)
        bob.type("/msg alice interrupting")
        alice.wait_for_display(["bob: interrupting"] + typed)
        above = alice.display.lines()[:-len(typed) - 1]
        assert not [row for row in above if "aaaa" in row or "bbbb" in row], \
            "expected no piece of the typed line left above the message; the terminal shows:\n" + "\n".join(above)
    finally:
        alice.close()
        bob.close()


def test_reply_answers_the_last_writer_and_who_lists_yourself(open_terminal: Callable[..., Terminal]) -> None:
    alice = open_terminal("alice", 11)
    bob = open_terminal("bob", 12)
    alice.wait_for("* bob is online (id 12)")
    alice.type("/reply hello?")
    alice.wait_for("No one has written to you yet.")
    bob.type("/msg alice ping")
    alice.wait_for("bob: ping")
    alice.type("/reply pong")
    bob.wait_for("alice: pong")
    alice.type("/r and again")
    bob.wait_for("alice: and again")
    alice.type("/msg alice a note to myself")
    alice.wait_for("alice: a note to myself", count=2)  # the echo, and the note as it arrives: under her name
    assert "id 11: a note" not in alice.transcript, alice.transcript
    bob.type("/who")
    bob.wait_for("Online (2, you included):\n  alice (id 11)\n  bob (id 12)   <- you\n")


def test_piped_input_is_carried_out_to_the_end_and_every_answer_shown(server: CRCServer) -> None:
    run = subprocess.run([sys.executable, CLIENT, "-S", "127.0.0.1", "-P", str(server.port), "-U", "piper"],
                         input="/msg 424242 anyone?\n/msg piper to myself\n", capture_output=True, text=True,
                         timeout=DEADLINE_SECONDS * 2)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[server] Unknown ID 424242" in run.stdout and "piper: to myself" in run.stdout, run.stdout
    assert run.stdout.rstrip().endswith("Bye."), run.stdout


@pytest.mark.parametrize("mode", ["pty", "pipe"])
def test_the_banner_comes_before_the_first_events(mode: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as eager:
        port = eager.getsockname()[1]
        terminal = Terminal(mode, port, "alice", 11)
        try:
            connection, _ = eager.accept()
            with connection:  # the welcome and a join, already waiting when the client starts to listen
                connection.sendall(StatusUpdateMessage.bytes(1, 11, 0, "Welcome to the Clemson Relay Chat network alice")
                                   + ClientRegistrationMessage.bytes(12, 1, "bob", ""))
                terminal.wait_for("* bob is online (id 12)")
            banner = terminal.transcript.find(f"Connecting to 127.0.0.1:{port} as alice (id 11).")
            assert 0 <= banner < terminal.transcript.find("[server] Welcome"), \
                f"expected the banner first; the screen shows:\n{terminal.transcript}"
        finally:
            terminal.close()


def test_a_server_that_never_welcomes_is_reported() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        terminal = Terminal("pipe", silent.getsockname()[1], "alice", 11)
        try:
            connection, _ = silent.accept()
            with connection:
                wait_until(lambda: "No welcome" in (terminal._read() or terminal.transcript),
                           lambda: f"expected a word about the missing welcome; the screen shows:\n{terminal.transcript}",
                           timeout=10)
            assert "is it a CRC server? Still waiting." in terminal.transcript
        finally:
            terminal.close()


# ---------------------------------------------------------------------------------- issue 19: the terminal


def test_a_plain_line_before_any_msg_answers_whoever_wrote_last(open_terminal: Callable[..., Terminal]) -> None:
    alice = open_terminal("alice", 11)
    bob = open_terminal("bob", 12)
    alice.wait_for("* bob is online (id 12)")
    bob.type("/msg alice are you there?")
    alice.wait_for("bob: are you there?")
    alice.type("yes, here")  # no /msg yet: the one who wrote is the one to answer
    alice.wait_for("-> bob: yes, here")
    bob.wait_for("alice: yes, here")
    assert "No one to send to yet" not in alice.transcript, alice.transcript


def test_a_client_back_within_the_hold_down_is_shown_back_not_online_twice(open_terminal: Callable[..., Terminal],
                                                                          server: CRCServer) -> None:
    alice = open_terminal("alice", 11)
    ghost = RawPeer.client(server.port, 30, "ghost")
    alice.wait_for("* ghost is online (id 30)")
    ghost.close()  # a crash: the server holds ghost for its hold-down, announcing nothing yet
    wait_until(lambda: not [link for link in list(server.links) if getattr(link.record, "id", None) == 30],
               lambda: "expected the server to see ghost's link close")
    again = RawPeer.client(server.port, 30, "ghost")
    try:
        alice.wait_for("* ghost is back (id 30)")
        assert alice.transcript.count("* ghost is online") == 1 and "ghost left" not in alice.transcript, \
            alice.transcript
    finally:
        again.close()


SLOW_ECHO = """
import sys, time
sys.path.insert(0, sys.argv.pop(1))
import ChatClient
send_chat = ChatClient.CRCClient.send_chat
def send_then_linger(self, destination, text):  # the server's answer arrives before the echo is printed
    parts = send_chat(self, destination, text)
    time.sleep(0.5)
    return parts
ChatClient.CRCClient.send_chat = send_then_linger
sys.exit(ChatClient.main())
"""


def test_the_servers_answer_to_a_chat_comes_after_its_echo(server: CRCServer) -> None:
    alice = Terminal("pty", server.port, "alice", 11, program=["-c", SLOW_ECHO, str(ROOT)])
    try:
        alice.wait_for("[server] Welcome")
        alice.type("/msg 424242 anyone?")
        alice.wait_for("[server] Unknown ID 424242")
        alice.wait_for("-> id 424242: anyone?")
        assert alice.transcript.index("-> id 424242: anyone?") < alice.transcript.index("[server] Unknown ID 424242"), \
            f"expected the echo before the answer to it; the screen shows:\n{alice.transcript}"
    finally:
        alice.close()
