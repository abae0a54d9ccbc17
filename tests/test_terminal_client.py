"""The terminal chat program as a user drives it: `python3 ChatClient.py` in a pseudo-terminal and
through plain pipes, against our ChatServer running in a thread of the test process."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, List

import pexpect
import pexpect.popen_spawn
import pytest
from netkit import wait_until

from ChatServer import CRCServer

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning"),  # inside pexpect 4.8's pipe reader
]

DEADLINE_SECONDS = 5.0
CLIENT = str(ROOT / "ChatClient.py")


class Terminal:
    """One running ChatClient.py, in a pseudo-terminal ("pty") or behind pipes ("pipe").

    Everything it prints is kept in `transcript`, so waits do not depend on the order of output.
    """

    def __init__(self, mode: str, port: int, name: str, user_id: int) -> None:
        self.name = name
        self.mode = mode
        arguments = [CLIENT, "-S", "127.0.0.1", "-P", str(port), "-U", name, "--id", str(user_id)]
        if mode == "pty":
            self.child = pexpect.spawn(sys.executable, arguments, cwd=str(ROOT), encoding="utf-8")
        else:
            self.child = pexpect.popen_spawn.PopenSpawn([sys.executable] + arguments, cwd=str(ROOT), encoding="utf-8")
        self.transcript = ""
        self.ended = False

    def _read(self) -> None:
        if self.ended:
            return
        try:
            self.transcript += self.child.read_nonblocking(4096, timeout=0.05).replace("\r\n", "\n")
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            self.ended = True

    def wait_for(self, text: str, count: int = 1) -> None:
        def seen() -> bool:
            self._read()
            return self.transcript.count(text) >= count

        wait_until(seen, lambda: f"expected {self.name}'s screen to show {text!r} {count} time(s); it shows:\n{self.transcript}")

    def type(self, line: str) -> None:
        self.child.sendline(line)

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
def server() -> Iterator[CRCServer]:
    options = argparse.Namespace(id=1, servername="hub", info="", port=0, connect_to_host=None,
                                 connect_to_port=None, log_file=None)
    hub = CRCServer(options, run_on_localhost=True)
    thread = threading.Thread(target=hub.run, daemon=True)
    thread.start()
    wait_until(lambda: hub.listening, lambda: "expected the server to listen; it does not")
    yield hub
    hub.request_terminate = True
    thread.join(DEADLINE_SECONDS)


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
    alice.wait_for("Online (1):\n  bob (id 12)\n")
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
    bob.wait_for("No one else is online.")


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


def test_unreachable_server_is_reported() -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    result = subprocess.run([sys.executable, CLIENT, "-S", "127.0.0.1", "-P", str(port), "-U", "alice"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE_SECONDS)
    assert result.returncode == 1, f"expected exit status 1, seen {result.returncode}; stderr: {result.stderr}"
    assert f"Cannot connect to 127.0.0.1:{port}" in result.stderr, f"expected a clear error, seen: {result.stderr}"
