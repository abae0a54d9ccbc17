"""Helpers for tests that start real servers and speak the real protocol over loopback sockets."""

from __future__ import annotations

import argparse
import json
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ChatMessageParser import ClientRegistrationMessage, ServerRegistrationMessage, StreamDecoder
from ChatServer import PAUSED, BaseConnectionData, CRCServer, Link
from Testers.quiet import ServerProbe

ROOT = Path(__file__).resolve().parent.parent  # the kit
DEADLINE = 10.0  # seconds a test waits for something that should happen at once on loopback


def wait_until(predicate: Callable[[], Any], describe: Callable[[], str], timeout: float = DEADLINE) -> None:
    """Poll until predicate() holds; fail with describe(), which says what was expected and seen."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:g} s: {describe()}")
        time.sleep(0.01)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll until condition() is truthy and return it; fail saying what was awaited and last seen."""
    last: List[Any] = [None]

    def check() -> Any:
        last[0] = condition()
        return last[0]

    wait_until(check, lambda: f"waited for {what}; last saw {last[0]!r}", timeout)
    return last[0]


def server_options(**overrides: Any) -> argparse.Namespace:
    # No trace by default: the load tests would print hundreds of thousands of lines. The tests of the
    # trace turn it on, and the scenario suite runs with it as the course's harness does.
    options = dict(id=None, servername=None, info="", port=0, connect_to_host=None,
                   connect_to_port=None, log_file=None, trace=False)
    options.update(overrides)
    return argparse.Namespace(**options)


def listening(server: Any) -> bool:
    """Whether a server has its listening socket (from setup_server_socket() until cleanup())."""
    return server.server_socket is not None


def paused_links(server: Any) -> List[Link]:
    """The links a server does not read while a server link they feed catches up (backpressure)."""
    return [link for link in list(server.links) if link.state == PAUSED]


def unregistered_links(server: Any) -> List[Link]:
    """The links whose peer has not registered yet."""
    return [link for link in list(server.links) if type(link.record) is BaseConnectionData]


class RunningServer:
    """A CRCServer on a free loopback port, running in a thread as the course's test manager runs it."""

    def __init__(self, server_class: type = CRCServer, as_command: bool = False, **options: Any) -> None:
        """With `as_command`, the server behaves as when started from a terminal (not in a test harness)."""
        if "parent" in options:
            options["connect_to_host"] = "localhost"
            options["connect_to_port"] = options.pop("parent").port
        self.server = server_class(server_options(**options), run_on_localhost=not as_command)
        self.probe = ServerProbe(self.server)  # what our test manager's quiet waits read (Testers/quiet.py)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.listening, f"server {self.server.server_name} to listen")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    @property
    def listening(self) -> bool:
        return listening(self.server)

    def is_quiet(self) -> bool:
        return self.probe.is_quiet()

    def held_links(self) -> List[int]:
        """The ids of the adjacent hosts whose links were lost and whose hosts are held (the hold-down)."""
        return [key[1].record.id for key in list(self.server.timers.due) if key[0] == "hold"]

    def stop(self) -> None:
        self.server.request_terminate = True
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"server {self.server.server_name} did not stop"


class RawPeer:
    """A socket that speaks CRC frames directly: a client or a server written by hand in a test."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.decoder = StreamDecoder()
        self.messages: List[Any] = []
        self.closed = False

    @classmethod
    def client(cls, port: int, client_id: int, name: str, info: str = "") -> "RawPeer":
        peer = cls(port)
        peer.send(ClientRegistrationMessage.bytes(client_id, 0, name, info))
        return peer

    @classmethod
    def server(cls, port: int, server_id: int, name: str, info: str = "") -> "RawPeer":
        peer = cls(port)
        peer.send(ServerRegistrationMessage.bytes(server_id, 0, name, info))
        return peer

    def send(self, data: bytes, timeout: float = DEADLINE) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def pump(self, wait: float = 0.05) -> None:
        """Read whatever arrives until `wait` seconds pass without a byte. The socket's timeout is left
        alone, so that another thread may be sending on it meanwhile."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        try:
            while poller.poll(wait * 1000):
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    self.closed = True
                    return
                self.messages += self.decoder.feed(chunk)
        except ConnectionResetError:
            self.closed = True

    def wait_for(self, condition: Callable[[List[Any]], Any], what: str, timeout: float = DEADLINE) -> Any:
        def check() -> Any:
            self.pump(0.005)  # wait_for polls again: no need to linger once something came
            return condition(self.messages)
        try:
            return wait_for(check, what, timeout)
        except AssertionError as error:
            last = ", ".join(repr(message)[:120] for message in self.messages[-3:])
            raise AssertionError(f"{error}; {len(self.messages)} messages received, the last: {last}") from None

    def wait_closed(self) -> None:
        def check() -> bool:
            self.pump()
            return self.closed
        wait_for(check, "the server to close the connection")

    def of_type(self, message_class: type) -> List[Any]:
        return [message for message in self.messages if isinstance(message, message_class)]

    def close(self) -> None:
        self.sock.close()


def first_or_none(items: List[Any], predicate: Callable[[Any], bool]) -> Optional[Any]:
    return next((item for item in items if predicate(item)), None)


class ServerProcess:
    """`python3 ChatServer.py` in a process of its own, for tests where a crash or a signal is the point."""

    def __init__(self, *arguments: str, preexec_fn: Optional[Callable[[], None]] = None) -> None:
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            [sys.executable, str(root / "ChatServer.py"), "--bind", "127.0.0.1", "--port", "0", *arguments],
            cwd=root, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
        self.log: List[str] = []
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.log.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                # Keep reading its log: a full pipe would block the server in the middle of a test.
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.process.kill()
        raise AssertionError(f"the server process never said it was listening; it printed {self.log!r}")

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
        self.process.stderr.close()  # at its end: a test that restarts servers must not pile up pipes

    def stop(self, how: int = signal.SIGKILL) -> None:
        self.process.send_signal(how)
        self.process.wait(DEADLINE)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(DEADLINE)


def write_case(folder: Path, name: str, commands: List[str], final_state: Dict[str, Any], **extra: Any) -> Path:
    """A case file in the course's format, NAME.cfg in folder; extra keys (a type, a weight) go in as they are."""
    path = folder / f"{name}.cfg"
    path.write_text(json.dumps({"type": "CRC_functionality", "commands": commands, "final_state": final_state,
                                **extra}))
    return path


def submission(folder: Path, name: str, source: str) -> Path:
    """A student's ChatServer.py in folder/name, built on a copy of ours beside it (ChatServerBase.py)."""
    server = folder / name / "ChatServer.py"
    server.parent.mkdir()
    server.write_text(source)
    (server.parent / "ChatServerBase.py").write_text((Path(__file__).resolve().parent.parent / "ChatServer.py").read_text())
    return server
