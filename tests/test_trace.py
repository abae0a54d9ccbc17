"""The trace: in a test harness the server prints, line for line, what the course's reference prints
(the contract's "The trace"). A small network goes through every kind of line, one step at a time, and
each server's lines are compared with the list the contract implies, in order.

It runs twice: with our server, and with a copy of ChatServer.py alone beside the contract's cut-down
parser, as it runs in the course's kit.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List

import pytest
from netkit import ROOT, RawPeer, RunningServer, wait_for

import ChatTestManager as manager
from ChatMessageParser import (
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    ServerRegistrationMessage,
    StatusUpdateMessage,
)
from ChatServer import CRCServer
from Testers.trace import TraceCapture, capture_stdout

CONTRACT_PARSER = Path(__file__).resolve().parent / "contract_parser" / "ChatMessageParser.py"


def alone_in_the_courses_kit(folder: Path) -> type:
    """CRCServer from a copy of ChatServer.py beside the contract's parser."""
    shutil.copy(ROOT / "ChatServer.py", folder / "ChatServer.py")
    shutil.copy(CONTRACT_PARSER, folder / "ChatMessageParser.py")
    return manager.load_server_module(folder / "ChatServer.py").CRCServer  # type: ignore[no-any-return]


@pytest.fixture(params=["ours", "alone in the course's kit"])
def server_class(request: Any, tmp_path: Path) -> type:
    return CRCServer if request.param == "ours" else alone_in_the_courses_kit(tmp_path)


def lines_of(trace: TraceCapture, name: str) -> List[str]:
    prefix = f"[{name}] \t"
    return [line[len(prefix):] for line in trace.ended() if line.startswith(prefix)]


def received(source: int, frame: bytes) -> str:
    return f'Received message from Host ID #{source} "{frame!r}"'


def sending(to: int, frame: bytes) -> str:
    return f'Sending message to Host ID #{to} "{frame!r}"'


def test_each_line_kind_as_the_reference_prints_it(server_class: type) -> None:
    with capture_stdout() as trace:
        a = RunningServer(server_class, id=1, servername="A", info="first", trace=True)
        b = RunningServer(server_class, id=2, servername="B", info="second", parent=a, trace=True)
        wait_for(lambda: 2 in a.hosts_db and 1 in b.hosts_db, "B to join A")
        ann = RawPeer.client(a.port, 10, "ann")
        wait_for(lambda: 10 in b.hosts_db, "ann to be known at B")
        bob = RawPeer.client(b.port, 20, "bob")
        ann.wait_for(lambda m: any(getattr(x, "source_id", 0) == 20 for x in m), "bob to be announced to ann")
        ann.send(ClientChatMessage.bytes(10, 20, "hi bob"))
        bob.wait_for(lambda m: bob.of_type(ClientChatMessage), "the chat at bob")
        ann.send(ClientChatMessage.bytes(10, 99, "anyone?"))
        ann.wait_for(lambda m: len(ann.of_type(StatusUpdateMessage)) == 2, "Unknown ID 99")
        copycat = RawPeer.client(b.port, 10, "copycat")
        copycat.wait_closed()
        bob.send(ClientQuitMessage.bytes(20, "bye"))
        ann.wait_for(lambda m: ann.of_type(ClientQuitMessage), "bob's quit at ann")
        wait_for(lambda: a.is_quiet() and b.is_quiet(), "both servers to be quiet")
        b.stop()
        a.stop()

    a_registration = ServerRegistrationMessage.bytes(1, 1, "A", "first")  # about itself, to a new neighbour
    b_registration = ServerRegistrationMessage.bytes(2, 0, "B", "second")  # B's own, as B sends it
    ann_joins = ClientRegistrationMessage.bytes(10, 0, "ann", "")
    bob_joins = ClientRegistrationMessage.bytes(20, 0, "bob", "")
    chat, lost_chat = ClientChatMessage.bytes(10, 20, "hi bob"), ClientChatMessage.bytes(10, 99, "anyone?")
    bye = ClientQuitMessage.bytes(20, "bye")
    expected: Dict[str, List[str]] = {
        "A": [
            "Launching server A...",
            "Configuring the server socket...",
            f"Listening for new connections on port {a.port}",
            received(2, b_registration),
            sending(2, a_registration),  # B joined A, so A tells B about itself; B tells A nothing more
            received(10, ann_joins),
            sending(10, StatusUpdateMessage.bytes(1, 0, 0, "Welcome to the Clemson Relay Chat network ann")),
            sending(2, ClientRegistrationMessage.bytes(10, 1, "ann", "")),  # passed on with our id as last hop
            received(20, ClientRegistrationMessage.bytes(20, 2, "bob", "")),
            sending(10, ClientRegistrationMessage.bytes(20, 1, "bob", "")),
            received(10, chat),
            sending(2, chat),  # the next hop, not the destination
            received(10, lost_chat),
            sending(10, StatusUpdateMessage.bytes(1, 0, 1, "Unknown ID 99")),
            received(20, bye),
            sending(10, bye),  # and not back to B, where it came from
            "Cleaning up the server",
        ],
        "B": [
            "Launching server B...",
            "Configuring the server socket...",
            f"Connecting to remote server localhost:{a.port}...",  # its own registration prints nothing
            f"Listening for new connections on port {b.port}",
            received(1, a_registration),
            received(10, ClientRegistrationMessage.bytes(10, 1, "ann", "")),
            received(20, bob_joins),
            sending(20, StatusUpdateMessage.bytes(2, 0, 0, "Welcome to the Clemson Relay Chat network bob")),
            sending(20, ClientRegistrationMessage.bytes(10, 2, "ann", "")),
            sending(1, ClientRegistrationMessage.bytes(20, 2, "bob", "")),
            received(10, chat),
            sending(20, chat),
            received(10, ClientRegistrationMessage.bytes(10, 0, "copycat", "")),
            'Sending message to an unknown IO device "'
            f'{StatusUpdateMessage.bytes(2, 0, 2, "Someone has already registered with ID 10")!r}"',
            received(20, bye),
            sending(1, bye),
            "Cleaning up the server",
        ],
    }
    for name, lines in expected.items():
        found = lines_of(trace, name)
        for number, (want, seen) in enumerate(zip(lines, found), 1):
            assert seen == want, f"server {name}, trace line {number}:\nexpected {want}\nfound    {seen}"
        assert len(found) == len(lines), (f"server {name}: expected {len(lines)} trace lines, found {len(found)}:\n"
                                          + "\n".join(found[len(lines):] or found))
    assert all(line.startswith(("[A] \t", "[B] \t")) for line in trace.ended()), "nothing else is printed"


def test_a_refused_server_hears_why_in_its_trace(server_class: type) -> None:
    with capture_stdout() as trace:
        a = RunningServer(server_class, id=1, servername="A", trace=True)
        twin = RunningServer(server_class, id=1, servername="twin", parent=a, trace=True)
        wait_for(lambda: twin.status_updates_log, "the twin to log why it was refused")
        twin.stop()
        a.stop()
    refusal = StatusUpdateMessage.bytes(1, 0, 2, "A machine has already registered with ID 1")
    assert lines_of(trace, "A")[3:5] == [
        received(1, ServerRegistrationMessage.bytes(1, 0, "twin", "")),
        f'Sending message to an unknown IO device "{refusal!r}"',
    ]
    assert received(1, refusal) in lines_of(trace, "twin")
