"""CRCClient over real loopback sockets: against a scripted peer that speaks raw protocol frames
(to control exactly how bytes arrive), and against our ChatServer running in a thread."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from netkit import wait_until

from ChatClient import MAX_ID, CRCClient
from ChatMessageParser import (
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    ServerQuitMessage,
    ServerRegistrationMessage,
    StatusUpdateMessage,
    StreamDecoder,
)
from ChatServer import CRCServer

pytestmark = pytest.mark.timeout(30)

DEADLINE_SECONDS = 5.0
SERVER_ID = 900


class ScriptedPeer:
    """A stand-in server on a real loopback socket: the test decides every byte it sends."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(DEADLINE_SECONDS)
        self.port: int = self.listener.getsockname()[1]
        self.connection: socket.socket | None = None
        self.decoder = StreamDecoder()
        self.received: list = []

    def accept(self) -> None:
        self.connection, _ = self.listener.accept()
        self.connection.settimeout(0.05)

    def send(self, data: bytes) -> None:
        assert self.connection is not None
        self.connection.sendall(data)

    def read_available(self) -> bool:
        """Read what has arrived; False once the client has closed its end."""
        assert self.connection is not None
        try:
            chunk = self.connection.recv(4096)
        except socket.timeout:
            return True
        except ConnectionResetError:
            return False
        self.received += self.decoder.feed(chunk)
        return bool(chunk)

    def wait_for_messages(self, count: int) -> list:
        wait_until(lambda: self.read_available() and len(self.received) >= count,
                   lambda: f"expected {count} messages from the client, received {self.received}")
        return self.received

    def wait_for_close(self) -> None:
        wait_until(lambda: not self.read_available(), lambda: "expected the client to close its socket; it is open")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.listener.close()


@pytest.fixture(autouse=True)
def no_thread_crashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A listener thread that dies with an exception fails the test, instead of a mere warning."""
    crashes: List[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(f"{args.thread}: {args.exc_value!r}"))
    yield
    assert crashes == [], f"expected no thread to crash, saw {crashes}"


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    scripted = ScriptedPeer()
    yield scripted
    scripted.close()


@pytest.fixture
def clients() -> Iterator[list]:
    """Every client a test starts; stopped at teardown."""
    started: List[CRCClient] = []
    yield started
    for client in started:
        client.stop()


def client_options(port: int, username: str, client_id: int | None = None, log_file: str | None = None,
                   serverhost: str | None = "127.0.0.1") -> argparse.Namespace:
    return argparse.Namespace(id=client_id, serverhost=serverhost, serverport=port, username=username,
                              info=f"{username}'s info", log_file=log_file)


def start_client(clients: list, port: int, username: str, client_id: int | None = None, **options) -> CRCClient:
    client = CRCClient(client_options(port, username, client_id, **options), run_on_localhost=True)
    clients.append(client)
    client.run()
    return client


@pytest.fixture
def connected(peer: ScriptedPeer, clients: list) -> CRCClient:
    """Client 1 ("carol") connected to the scripted peer, whose registration has been read."""
    client = start_client(clients, peer.port, "carol", 1)
    peer.accept()
    peer.wait_for_messages(1)
    return client


# Frames a server could send to client 1: someone joins, chats, a status, and the person quits.
BOB_JOINS = ClientRegistrationMessage.bytes(2, SERVER_ID, "bob", "bob's info")
DAVE_JOINS = ClientRegistrationMessage.bytes(3, SERVER_ID, "dave", "")
BOB_SAYS_HI = ClientChatMessage.bytes(2, 1, "hi carol")
WELCOME = StatusUpdateMessage.bytes(SERVER_ID, 1, 0, "Welcome to the Clemson Relay Chat network carol")
BOB_QUITS = ClientQuitMessage.bytes(2, "bye")
SCRIPT = [WELCOME, BOB_JOINS, DAVE_JOINS, BOB_SAYS_HI, BOB_QUITS]


def state(client: CRCClient) -> dict:
    return {"connected_user_ids": dict(client.connected_user_ids), "status_updates_log": list(client.status_updates_log),
            "chat_messages_log": list(client.chat_messages_log)}


SCRIPT_STATE = {
    "connected_user_ids": {3: "dave"},
    "status_updates_log": ["Welcome to the Clemson Relay Chat network carol"],
    "chat_messages_log": ["hi carol"],
}


def wait_for_state(client: CRCClient, expected: dict) -> None:
    wait_until(lambda: state(client) == expected, lambda: f"expected {expected}, seen {state(client)}")


def test_run_registers_with_id_name_info_and_last_hop_zero(peer: ScriptedPeer, clients: list) -> None:
    start_client(clients, peer.port, "carol", 77)
    peer.accept()
    [registration] = peer.wait_for_messages(1)
    expected = ClientRegistrationMessage.bytes(77, 0, "carol", "carol's info")
    assert registration.bytes == expected, f"expected registration {expected.hex()}, seen {registration.bytes.hex()}"


def test_each_incoming_message_type_updates_the_state(peer: ScriptedPeer, connected: CRCClient) -> None:
    for frame in SCRIPT:
        peer.send(frame)
    wait_for_state(connected, SCRIPT_STATE)


def test_frames_sent_one_byte_at_a_time_are_reassembled(peer: ScriptedPeer, connected: CRCClient) -> None:
    assert peer.connection is not None
    peer.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # so the bytes travel apart
    for byte in b"".join(SCRIPT):
        peer.send(bytes([byte]))
    wait_for_state(connected, SCRIPT_STATE)


def test_many_frames_glued_into_one_send_are_all_handled(peer: ScriptedPeer, connected: CRCClient) -> None:
    joins = [ClientRegistrationMessage.bytes(user_id, SERVER_ID, f"user{user_id}", "x" * 300) for user_id in range(2, 202)]
    chats = [ClientChatMessage.bytes(2, 1, f"message {number}") for number in range(200)]
    peer.send(b"".join(joins + chats))
    expected_users = {user_id: f"user{user_id}" for user_id in range(2, 202)}
    expected_chats = [f"message {number}" for number in range(200)]
    wait_until(lambda: connected.connected_user_ids == expected_users and connected.chat_messages_log == expected_chats,
               lambda: f"expected 200 users and 200 chats in order, seen {len(connected.connected_user_ids)} users"
                       f" and chats {connected.chat_messages_log[:3]}... ({len(connected.chat_messages_log)})")


def test_server_registrations_and_server_quits_are_ignored(peer: ScriptedPeer, connected: CRCClient) -> None:
    peer.send(ServerRegistrationMessage.bytes(901, SERVER_ID, "other", "") + ServerQuitMessage.bytes(901, 0, "gone"))
    peer.send(BOB_JOINS)
    wait_for_state(connected, {"connected_user_ids": {2: "bob"}, "status_updates_log": [], "chat_messages_log": []})
    assert connected.connected, "expected the client to stay connected after frames meant for servers"


def test_garbage_frame_ends_the_listener_with_a_clear_log_line(peer: ScriptedPeer, clients: list, tmp_path: Path) -> None:
    log_file = tmp_path / "carol.log"
    client = start_client(clients, peer.port, "carol", 1, log_file=str(log_file))
    peer.accept()
    peer.wait_for_messages(1)
    peer.send(BOB_JOINS + b"\x7f" + b"\x00" * 20)  # a good frame, then an unknown type byte
    wait_until(lambda: not client.connected, lambda: "expected the client to drop the connection; it is still up")
    assert client.connected_user_ids == {2: "bob"}, f"expected the frame before the garbage handled, seen {client.connected_user_ids}"
    assert "unknown message type 0x7f" in (client.disconnect_reason or ""), f"seen reason {client.disconnect_reason!r}"
    log = log_file.read_text()
    assert "protocol error from the server: unknown message type 0x7f" in log, f"expected the error in the log, seen:\n{log}"
    peer.wait_for_close()


def test_server_closing_ends_the_listener_and_sends_then_fail_quietly(peer: ScriptedPeer, connected: CRCClient) -> None:
    assert peer.connection is not None
    peer.connection.close()
    peer.connection = None
    wait_until(lambda: not connected.connected, lambda: "expected the client to notice the closed connection")
    assert connected.disconnect_reason == "the server closed the connection", f"seen {connected.disconnect_reason!r}"
    assert connected.message_other_client(2, "anyone?") is False, "expected a send after the close to report failure"
    assert connected.quit("bye") is False, "expected a quit after the close to report failure"


def test_chat_and_quit_frames_and_listening_goes_on_after_quit(peer: ScriptedPeer, connected: CRCClient) -> None:
    assert connected.message_other_client(2, "hello bob") is True
    assert connected.quit("see you") is True
    messages = peer.wait_for_messages(3)
    sent = [message.bytes for message in messages[1:]]
    expected = [ClientChatMessage.bytes(1, 2, "hello bob"), ClientQuitMessage.bytes(1, "see you")]
    assert sent == expected, f"expected {[frame.hex() for frame in expected]}, seen {[frame.hex() for frame in sent]}"
    peer.send(BOB_SAYS_HI)
    wait_until(lambda: connected.chat_messages_log == ["hi carol"],
               lambda: f"expected the chat after quit to arrive, seen {connected.chat_messages_log}")


def test_request_terminate_closes_the_socket(peer: ScriptedPeer, connected: CRCClient) -> None:
    connected.request_terminate = True
    wait_until(lambda: not connected.connected, lambda: "expected the listener to stop after request_terminate")
    assert connected.disconnect_reason == "stopped on request", f"seen {connected.disconnect_reason!r}"
    peer.wait_for_close()


def test_sends_from_many_threads_arrive_as_whole_frames(peer: ScriptedPeer, connected: CRCClient) -> None:
    def chatter(thread_number: int) -> None:
        for number in range(50):
            connected.message_other_client(2, f"{thread_number}:{number}:" + "y" * 500)

    threads = [threading.Thread(target=chatter, args=(thread_number,)) for thread_number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages = peer.wait_for_messages(1 + 200)
    contents = sorted(message.content for message in messages[1:])
    expected = sorted(f"{t}:{n}:" + "y" * 500 for t in range(4) for n in range(50))
    assert contents == expected, f"expected 200 intact chats, seen {len(contents)} with a mismatch"


def test_without_an_id_a_random_nonzero_32_bit_id_is_chosen(peer: ScriptedPeer) -> None:
    ids = {CRCClient(client_options(peer.port, f"anon{n}"), run_on_localhost=True).id for n in range(20)}
    assert all(1 <= client_id <= MAX_ID for client_id in ids), f"expected ids in 1..{MAX_ID}, seen {ids}"
    assert len(ids) > 1, f"expected random ids, seen the same one 20 times: {ids}"


def test_run_on_localhost_without_a_host_connects_to_loopback(peer: ScriptedPeer, clients: list) -> None:
    start_client(clients, peer.port, "carol", 5, serverhost=None)
    peer.accept()
    [registration] = peer.wait_for_messages(1)
    assert registration.source_id == 5, f"expected a registration from 5, seen {registration}"


def test_each_log_file_holds_only_its_own_clients_lines(peer: ScriptedPeer, clients: list, tmp_path: Path) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    start_client(clients, peer.port, "same", 8, log_file=str(first))
    start_client(clients, peer.port, "same", 8, log_file=str(second))  # same name and id: loggers still apart
    wait_until(lambda: first.exists() and second.exists() and "connected" in first.read_text() + second.read_text(),
               lambda: "expected both log files written")
    for path in (first, second):
        lines = path.read_text().splitlines()
        connects = [line for line in lines if "connected to" in line]
        assert len(connects) == 1, f"expected one connect line in {path.name}, seen {lines}"


def test_connecting_to_a_closed_port_raises() -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    client = CRCClient(client_options(port, "nobody", 4), run_on_localhost=True)
    with pytest.raises(ConnectionRefusedError):
        client.run()
    assert not client.connected, "expected a client that never connected to say so"


# --------------------------------------------------------------------------- against ChatServer


def start_server(servers: Any, server_id: int, connect_to_port: int | None = None) -> CRCServer:
    return servers(id=server_id, servername=f"server{server_id}", connect_to_host="127.0.0.1" if connect_to_port
                   else None, connect_to_port=connect_to_port, trace=None).server  # the trace as in a test harness


def welcome(name: str) -> str:
    return f"Welcome to the Clemson Relay Chat network {name}"


@pytest.fixture
def alice_and_bob(servers: Any, clients: list) -> tuple:
    """alice (11) and bob (12) on one server, each knowing the other."""
    server = start_server(servers, 1)
    alice = start_client(clients, server.port, "alice", 11)
    bob = start_client(clients, server.port, "bob", 12)
    wait_until(lambda: alice.connected_user_ids == {12: "bob"} and bob.connected_user_ids == {11: "alice"},
               lambda: f"expected alice to know {{12: 'bob'}} and bob {{11: 'alice'}},"
                       f" seen {alice.connected_user_ids} and {bob.connected_user_ids}")
    return alice, bob


def test_two_clients_are_welcomed_and_see_each_other(alice_and_bob: tuple) -> None:
    alice, bob = alice_and_bob
    for client in (alice, bob):
        wait_until(lambda: client.status_updates_log == [welcome(client.client_name)],
                   lambda: f"expected {client.client_name}'s statuses {[welcome(client.client_name)]},"
                           f" seen {client.status_updates_log}")


def test_chat_goes_both_ways(alice_and_bob: tuple) -> None:
    alice, bob = alice_and_bob
    alice.message_other_client(bob.id, "hello bob")
    bob.message_other_client(alice.id, "hello alice")
    wait_until(lambda: bob.chat_messages_log == ["hello bob"] and alice.chat_messages_log == ["hello alice"],
               lambda: f"expected bob ['hello bob'] and alice ['hello alice'],"
                       f" seen {bob.chat_messages_log} and {alice.chat_messages_log}")


def test_quit_removes_the_client_from_the_others_list_only(alice_and_bob: tuple) -> None:
    alice, bob = alice_and_bob
    assert alice.quit("bye") is True
    wait_until(lambda: bob.connected_user_ids == {},
               lambda: f"expected bob to know no one after alice quit, seen {bob.connected_user_ids}")
    assert alice.connected_user_ids == {12: "bob"}, f"expected alice's own list unchanged, seen {alice.connected_user_ids}"
    assert alice.connected, "expected alice to stay connected after quitting"


def test_unknown_destination_gets_a_status_back(alice_and_bob: tuple) -> None:
    alice, _ = alice_and_bob
    alice.message_other_client(424242, "anyone?")
    expected = [welcome("alice"), "Unknown ID 424242"]
    wait_until(lambda: alice.status_updates_log == expected,
               lambda: f"expected statuses {expected}, seen {alice.status_updates_log}")


def test_duplicate_client_id_is_rejected_and_disconnected(alice_and_bob: tuple, servers: Any, clients: list) -> None:
    [server] = servers
    impostor = start_client(clients, server.port, "mallory", 11)
    expected = ["Someone has already registered with ID 11"]
    wait_until(lambda: impostor.status_updates_log == expected and not impostor.connected,
               lambda: f"expected statuses {expected} and a closed link, seen {impostor.status_updates_log}"
                       f" and connected={impostor.connected}")
    assert impostor.disconnect_reason == "the server closed the connection", f"seen {impostor.disconnect_reason!r}"


def test_clients_on_two_servers_chat_across_the_link(servers: Any, clients: list) -> None:
    first = start_server(servers, 1)
    second = start_server(servers, 2, connect_to_port=first.port)
    alice = start_client(clients, first.port, "alice", 11)
    bob = start_client(clients, second.port, "bob", 12)
    wait_until(lambda: alice.connected_user_ids == {12: "bob"} and bob.connected_user_ids == {11: "alice"},
               lambda: f"expected each to know the other, seen {alice.connected_user_ids} and {bob.connected_user_ids}")
    alice.message_other_client(12, "over the link")
    wait_until(lambda: bob.chat_messages_log == ["over the link"],
               lambda: f"expected bob's chats ['over the link'], seen {bob.chat_messages_log}")


def test_quiet_only_with_nothing_unread(peer: ScriptedPeer, connected: CRCClient) -> None:
    # Waiting for its welcome, a client is quiet: its registration, unread at the server, keeps that one busy.
    wait_until(connected.is_quiet, lambda: "expected a client with nothing to read to be quiet")
    peer.send(WELCOME[:7])
    time.sleep(0.2)  # give the listener time to take the half frame in; it must still not count as answered
    assert not connected.is_quiet(), "expected a client holding half a welcome not to be quiet"
    peer.send(WELCOME[7:] + BOB_JOINS)
    wait_until(connected.is_quiet, lambda: f"expected quiet after the welcome, state {state(connected)}")
    assert state(connected)["connected_user_ids"] == {2: "bob"}
    peer.close()
    wait_until(connected.is_quiet, lambda: "expected a client whose server has gone to be quiet")


def test_not_quiet_while_part_of_a_message_is_still_on_its_way(peer: ScriptedPeer, connected: CRCClient) -> None:
    peer.send(WELCOME + BOB_JOINS[:5])
    wait_until(lambda: connected.status_updates_log != [], lambda: "expected the welcome to arrive")
    time.sleep(0.2)  # the half registration has long been read by now
    assert not connected.is_quiet(), "expected a client holding half a registration not to be quiet"
    peer.send(BOB_JOINS[5:])
    wait_until(connected.is_quiet, lambda: f"expected quiet once the registration is whole, state {state(connected)}")
