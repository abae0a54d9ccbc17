"""The reference server's routing over real loopback sockets: real servers in threads, peers speaking raw
frames; joins, floods, chats hop by hop, refusals (a duplicate id two hops away too), and a chat between
two clients of one server that never leaves it."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import pytest
from netkit import DEADLINE, ROOT, RawPeer, RunningServer, server_options, wait_for

from ChatMessageParser import (
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    ServerRegistrationMessage,
    StatusUpdateMessage,
)
from ChatServer import OPEN, PAUSED, CRCServer, Link, ServerConnectionData

pytestmark = pytest.mark.timeout(60)


def welcome(name: str) -> str:
    return f"Welcome to the Clemson Relay Chat network {name}"


def statuses(peer: RawPeer) -> list[tuple[int, int, str]]:
    return [(m.destination_id, m.status_code, m.content) for m in peer.of_type(StatusUpdateMessage)]


def registered_ids(peer: RawPeer, message_class: type) -> set[int]:
    return {m.source_id for m in peer.of_type(message_class)}


def test_a_client_is_welcomed_and_learns_every_other_client(servers):
    a = servers(id=1, servername="A")
    b = servers(id=2, servername="B", parent=a)
    alice = RawPeer.client(a.port, 10, "alice", "first")
    alice.wait_for(lambda m: m, "alice's welcome")
    bob = RawPeer.client(b.port, 11, "bob")
    bob.wait_for(lambda m: len(m) >= 2, "bob's welcome and alice's registration")
    alice.wait_for(lambda m: len(m) >= 2, "bob's registration at alice")

    assert statuses(alice) == [(0, 0, welcome("alice"))]
    assert statuses(bob) == [(0, 0, welcome("bob"))]
    (alice_at_bob,) = bob.of_type(ClientRegistrationMessage)
    assert (alice_at_bob.source_id, alice_at_bob.last_hop_id, alice_at_bob.client_name,
            alice_at_bob.client_info) == (10, 2, "alice", "first")
    assert registered_ids(alice, ClientRegistrationMessage) == {11}
    assert not alice.of_type(ServerRegistrationMessage), "servers must never send server registrations to clients"
    wait_for(lambda: set(a.hosts_db) == {2, 10, 11} and set(b.hosts_db) == {1, 10, 11}, "both servers to know all")
    assert (a.adjacent_server_ids, a.adjacent_user_ids) == ([2], [10])
    assert (b.adjacent_server_ids, b.adjacent_user_ids) == ([1], [11])
    assert a.hosts_db[10].first_link_id == 10 and a.hosts_db[11].first_link_id == 2


def test_chat_crosses_three_servers_and_unknown_ids_are_reported(servers):
    a = servers(id=1, servername="A")
    b = servers(id=2, servername="B", parent=a)
    c = servers(id=3, servername="C", parent=b)
    alice = RawPeer.client(a.port, 10, "alice")
    carol = RawPeer.client(c.port, 30, "carol")
    alice.wait_for(lambda m: registered_ids(alice, ClientRegistrationMessage) == {30}, "carol to be announced")

    alice.send(ClientChatMessage.bytes(10, 30, '"Hi carol"') + ClientChatMessage.bytes(10, 99, "anyone?"))
    carol.wait_for(lambda m: carol.of_type(ClientChatMessage), "the chat at carol")
    alice.wait_for(lambda m: len(statuses(alice)) == 2, "the unknown id status")

    (chat,) = carol.of_type(ClientChatMessage)
    assert (chat.source_id, chat.destination_id, chat.content) == (10, 30, '"Hi carol"')
    assert statuses(alice)[1] == (0, 1, "Unknown ID 99")
    assert a.status_updates_log == b.status_updates_log == c.status_updates_log == []


def test_two_clients_on_the_same_remote_server_talk_through_it(servers):
    a = servers(id=1, servername="A")
    b = servers(id=2, servername="B", parent=a)
    left, right = RawPeer.client(b.port, 20, "left"), RawPeer.client(b.port, 21, "right")
    left.wait_for(lambda m: registered_ids(left, ClientRegistrationMessage) == {21}, "right to be announced")
    left.send(ClientChatMessage.bytes(20, 21, "next door"))
    right.wait_for(lambda m: right.of_type(ClientChatMessage), "the chat")
    assert [m.content for m in right.of_type(ClientChatMessage)] == ["next door"]


def test_frames_split_at_every_byte_and_glued_together_are_all_handled(servers):
    a = servers(id=1, servername="A")
    listener = RawPeer.client(a.port, 50, "listener")
    listener.wait_for(lambda m: m, "the listener's welcome")
    talker = RawPeer(a.port)
    stream = ClientRegistrationMessage.bytes(51, 0, "talker", "splits everything") + b"".join(
        ClientChatMessage.bytes(51, 50, f"message {n}") for n in range(20))
    for position in range(len(stream)):
        talker.send(stream[position:position + 1])
    listener.wait_for(lambda m: len(listener.of_type(ClientChatMessage)) == 20, "20 chats sent a byte at a time")
    glued = b"".join(ClientChatMessage.bytes(51, 50, f"glued {n}") for n in range(500))
    talker.send(glued)
    listener.wait_for(lambda m: len(listener.of_type(ClientChatMessage)) == 520, "500 chats sent as one chunk")
    contents = [m.content for m in listener.of_type(ClientChatMessage)]
    assert contents == [f"message {n}" for n in range(20)] + [f"glued {n}" for n in range(500)]


def test_output_to_a_slow_reader_is_kept_until_it_reads(servers):
    """A send may take only part of the buffer: the rest waits, in order, for the reader."""
    a = servers(id=1, servername="A", max_output=64 << 20)  # room for all of it: this test is not about the cap
    slow = RawPeer.client(a.port, 60, "slow")
    slow.wait_for(lambda m: m, "the welcome")
    fast = RawPeer.client(a.port, 61, "fast")
    fast.wait_for(lambda m: m, "the welcome")
    text = "x" * 1000
    for batch in range(20):  # 20 MB would not fit any socket buffer: most must wait in the server
        fast.send(b"".join(ClientChatMessage.bytes(61, 60, f"{batch}:{n}:{text}") for n in range(1000)))
    wait_for(lambda: len(a.hosts_db[60].write_buffer) > 1_000_000, "output to pile up at the server")
    slow.wait_for(lambda m: len(slow.of_type(ClientChatMessage)) == 20_000, "all 20,000 chats", timeout=60)
    expected = [f"{batch}:{n}:{text}" for batch in range(20) for n in range(1000)]
    assert [m.content for m in slow.of_type(ClientChatMessage)] == expected


def test_a_new_neighbour_is_sent_the_whole_network_with_our_id_as_last_hop(servers):
    a = servers(id=1, servername="A", info="root")
    b = servers(id=2, servername="B", parent=a)
    alice = RawPeer.client(a.port, 10, "alice")
    alice.wait_for(lambda m: m, "welcome")
    bob = RawPeer.client(b.port, 11, "bob")
    bob.wait_for(lambda m: m, "welcome")
    wait_for(lambda: len(a.hosts_db) == 3, "A to know B, alice and bob")

    newcomer = RawPeer.server(a.port, 7, "N", "hand-written")
    newcomer.wait_for(lambda m: len(m) == 4, "A, B, alice and bob announced to the newcomer")
    first = newcomer.messages[0]
    assert (type(first), first.source_id, first.server_name, first.server_info) == (
        ServerRegistrationMessage, 1, "A", "root"), "A must introduce itself first"
    assert registered_ids(newcomer, ServerRegistrationMessage) == {1, 2}
    assert registered_ids(newcomer, ClientRegistrationMessage) == {10, 11}
    assert {m.last_hop_id for m in newcomer.messages} == {1}
    wait_for(lambda: 7 in b.hosts_db, "B to hear of the newcomer")
    assert b.hosts_db[7].first_link_id == 1 and 7 in a.adjacent_server_ids


def test_a_server_with_a_taken_id_is_refused_and_logs_why(servers):
    a = servers(id=1, servername="A")
    b = servers(id=2, servername="B", parent=a)
    wait_for(lambda: 2 in a.hosts_db, "B to join")
    impostor = servers(id=2, servername="impostor", parent=a)
    wait_for(lambda: impostor.status_updates_log, "the impostor to hear why it was refused")
    assert impostor.status_updates_log == ["A machine has already registered with ID 2"]
    assert impostor.hosts_db == {} and impostor.adjacent_server_ids == []
    assert set(a.hosts_db) == {2} and a.adjacent_server_ids == [2]
    assert set(b.hosts_db) == {1}


def test_a_client_with_a_taken_id_is_refused_and_disconnected(servers):
    a = servers(id=1, servername="A")
    first = RawPeer.client(a.port, 10, "first")
    first.wait_for(lambda m: m, "welcome")
    second = RawPeer.client(a.port, 10, "second")
    second.wait_closed()
    assert statuses(second) == [(0, 2, "Someone has already registered with ID 10")]
    assert a.hosts_db[10].client_name == "first" and a.adjacent_user_ids == [10]
    server_id_taken = RawPeer.client(a.port, 1, "named like the server")
    server_id_taken.wait_closed()
    assert statuses(server_id_taken) == [(0, 2, "Someone has already registered with ID 1")]


def test_a_client_quit_reaches_everyone_and_the_client_may_stay(servers):
    a = servers(id=1, servername="A")
    b = servers(id=2, servername="B", parent=a)
    c = servers(id=3, servername="C", parent=b)
    stayer, leaver = RawPeer.client(a.port, 10, "stayer"), RawPeer.client(c.port, 30, "leaver")
    stayer.wait_for(lambda m: registered_ids(stayer, ClientRegistrationMessage) == {30}, "leaver announced")
    leaver.send(ClientQuitMessage.bytes(30, "good night"))
    stayer.wait_for(lambda m: stayer.of_type(ClientQuitMessage), "the quit at stayer")
    assert [(m.source_id, m.content) for m in stayer.of_type(ClientQuitMessage)] == [(30, "good night")]
    for server in (a, b, c):
        wait_for(lambda: 30 not in server.hosts_db, f"{server.server_name} to forget the leaver")
    assert c.adjacent_user_ids == [] and a.adjacent_user_ids == [10]
    leaver.pump()
    assert not leaver.closed, "a client that quits may stay connected"


def test_stopping_announces_nothing_and_leaves_neighbours_state_alone(servers):
    a = servers(id=1, servername="A")
    b = servers(id=2, servername="B", parent=a)
    watcher = RawPeer.client(a.port, 10, "watcher")
    on_b = RawPeer.client(b.port, 11, "on-b")
    on_b.wait_for(lambda m: m, "welcome")
    watcher.wait_for(lambda m: registered_ids(watcher, ClientRegistrationMessage) == {11}, "on-b announced")
    before = len(watcher.messages)
    b.stop()
    wait_for(lambda: not b.listening, "B to close")
    watcher.pump(0.5)
    assert watcher.messages[before:] == [], "a server stopped by request_terminate must announce nothing"
    assert set(a.hosts_db) == {2, 10, 11} and a.adjacent_server_ids == [2] and a.adjacent_user_ids == [10]


def test_the_port_can_be_reused_at_once_and_sockets_are_closed(servers):
    first = servers(id=1, servername="first")
    peer = RawPeer.client(first.port, 10, "peer")
    peer.wait_for(lambda m: m, "welcome")
    port = first.port
    first.stop()
    peer.wait_closed()
    again = servers(id=1, servername="again", port=port)
    assert again.port == port


def test_garbage_closes_only_the_link_that_sent_it(servers):
    a = servers(id=1, servername="A")
    good = RawPeer.client(a.port, 10, "good")
    good.wait_for(lambda m: m, "welcome")
    for garbage in (b"\x55" * 20, ClientRegistrationMessage.bytes(11, 0, "ok", "")[:12] + b"\xff\xfe",
                    b"\x81" + (12).to_bytes(4, "big") + (10).to_bytes(4, "big") + (1 << 30).to_bytes(4, "big")):
        bad = RawPeer(a.port)
        bad.send(garbage)
        bad.wait_closed()
    assert set(a.hosts_db) == {10}
    good.send(ClientChatMessage.bytes(10, 10, "still alive"))
    good.wait_for(lambda m: any(m_.content == "still alive" for m_ in good.of_type(ClientChatMessage)),
                  "the server to keep serving")


def test_each_server_logs_to_its_own_file(servers, tmp_path):
    a = servers(id=1, servername="alpha", log_file=str(tmp_path / "alpha.log"))
    servers(id=2, servername="beta", parent=a, log_file=str(tmp_path / "beta.log"))
    wait_for(lambda: 2 in a.hosts_db, "beta to join")
    alpha_log, beta_log = (tmp_path / "alpha.log").read_text(), (tmp_path / "beta.log").read_text()
    assert "alpha (id 1) listening" in alpha_log and "beta (id 2)" not in alpha_log
    assert "beta (id 2) listening" in beta_log and "alpha (id 1) listening" not in beta_log


def test_the_command_line_server_joins_a_network_and_stops_on_ctrl_c(servers):
    a = servers(id=1, servername="A")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "ChatServer.py"), "--servername", "cli", "--id", "5", "--port", "0",
         "--bind", "127.0.0.1", "--connect_to_host", "localhost", "--connect_to_port", str(a.port)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: 5 in a.hosts_db, "the command-line server to join")
        process.send_signal(signal.SIGINT)
        assert process.wait(DEADLINE) == 0
        log = process.stderr.read()
        assert re.search(r"cli \(id 5\) listening on 127\.0\.0\.1:\d+", log), log
    finally:
        process.kill()


def test_without_an_id_a_random_nonzero_one_is_picked():
    unstarted = [CRCServer(server_options(servername="x"), run_on_localhost=True) for _ in range(20)]
    ids = {server.id for server in unstarted}
    for server in unstarted:
        server.sel.close()
    assert len(ids) > 1 and all(0 < server_id < 2 ** 32 for server_id in ids)


def test_a_server_reports_quiet_only_when_it_has_nothing_left_to_do(servers):
    a = servers(id=1, servername="A")
    wait_for(a.is_quiet, "an idle server to report quiet")
    reader = RawPeer.client(a.port, 10, "reader")
    partial = ClientChatMessage.bytes(10, 10, "half")
    reader.wait_for(lambda m: m, "welcome")
    wait_for(a.is_quiet, "the server to be quiet again")
    reader.send(partial[:5])
    wait_for(lambda: a.hosts_db[10].link.cutter.pending == 5, "half a frame to arrive")
    assert not a.is_quiet(), "half a frame is waiting: more bytes are in flight"
    reader.send(partial[5:] + b"".join(ClientChatMessage.bytes(10, 10, "x" * 100) for _ in range(20000)))
    reader.wait_for(lambda m: len(m) == 20002, "every echo")
    wait_for(a.is_quiet, "the server to be quiet once everything it sent has been read")


class ServerWithABuggyChatHandler(CRCServer):
    def handle_client_chat_message(self, io_device, message):
        raise RuntimeError("a bug in a handler")


def test_a_bug_in_a_handler_costs_one_link_and_never_the_server():
    a = RunningServer(ServerWithABuggyChatHandler, id=1, servername="A", split_hold=0)
    try:
        victim = RawPeer.client(a.port, 10, "victim")
        victim.wait_for(lambda m: m, "welcome")
        victim.send(ClientChatMessage.bytes(10, 10, "boom"))
        victim.wait_closed()
        assert a.thread.is_alive(), "the server thread died"
        survivor = RawPeer.client(a.port, 11, "survivor")
        survivor.wait_for(lambda m: m, "a welcome from the server that is still running")
        wait_for(lambda: set(a.hosts_db) == {11}, "the victim's departure to be processed")
    finally:
        a.stop()


def test_a_client_that_quits_and_stays_connected_may_register_again(servers):
    a = servers(id=1, servername="A")
    watcher = RawPeer.client(a.port, 10, "watcher")
    watcher.wait_for(lambda m: m, "welcome")
    comeback = RawPeer.client(a.port, 20, "first name")
    watcher.wait_for(lambda m: 20 in registered_ids(watcher, ClientRegistrationMessage), "the first registration")
    comeback.send(ClientQuitMessage.bytes(20, "back soon"))
    watcher.wait_for(lambda m: watcher.of_type(ClientQuitMessage), "the quit")
    comeback.send(ClientRegistrationMessage.bytes(20, 0, "second name", ""))
    comeback.wait_for(lambda m: len(statuses(comeback)) == 2, "a second welcome")
    assert statuses(comeback)[1] == (0, 0, welcome("second name"))
    wait_for(lambda: a.hosts_db.get(20) and a.hosts_db[20].client_name == "second name", "A to know the new name")
    assert a.adjacent_user_ids == [10, 20]


def test_a_quit_client_that_never_registers_again_is_let_go(servers):
    a = servers(id=1, servername="A", register_timeout=0.3)
    leaver = RawPeer.client(a.port, 20, "leaver")
    leaver.wait_for(lambda m: m, "welcome")
    leaver.send(ClientQuitMessage.bytes(20, "bye"))
    leaver.wait_closed()
    assert 20 not in a.hosts_db


def test_every_link_asks_the_kernel_to_probe_a_silent_peer(servers):
    a = servers(id=1, servername="A")
    probed = RawPeer.client(a.port, 10, "probed")  # kept: a peer collected at once would close its socket
    probed.wait_for(lambda m: m, "welcome")
    sock = a.hosts_db[10].link.sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1, "keepalive probes must be on"
    if hasattr(socket, "TCP_KEEPIDLE"):
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        assert idle == 10, f"expected the first probe after 10 s of silence, not {idle} s"


class ServerWithABuggyDeparture(CRCServer):
    def depart(self, host, reason=None):
        raise RuntimeError("a bug in a timer's action")


def test_a_bug_in_a_timers_action_never_stops_the_server():
    a = RunningServer(ServerWithABuggyDeparture, id=1, servername="A", split_hold=0)
    try:
        first = RawPeer.client(a.port, 11, "first")
        first.wait_for(lambda m: m, "welcome")
        first.close()  # its departure, after a hold-down of 0, raises in the timer's action
        survivor = RawPeer.client(a.port, 12, "survivor")
        survivor.wait_for(lambda m: m, "a welcome from the server that is still running")
        assert a.thread.is_alive(), "the server thread died"
    finally:
        a.stop()


def test_a_server_that_cannot_listen_frees_what_it_opened_before_it_raises() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        server = CRCServer(server_options(id=1, servername="late", port=taken.getsockname()[1]), run_on_localhost=True)
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
            server.run()
    assert server.sel.get_map() is None, "the selector must be closed"
    assert server.waker.writer.fileno() == -1 and server.waker.reader.fileno() == -1, "the waking pair must be closed"


def test_a_link_that_fed_several_slow_servers_is_read_again_only_once_all_have_caught_up():
    server = CRCServer(server_options(id=1, servername="A"))
    pairs = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for _ in range(3):
            theirs = socket.create_connection(listener.getsockname())
            pairs.append((listener.accept()[0], theirs))
    try:
        reader, slow, slower = links = [Link(server, ours, False) for ours, _ in pairs]
        for number, link in enumerate(links, 2):
            link.attach(ServerConnectionData(number, f"s{number}", ""))
        server.links.update(links)
        server.reading = reader  # one chunk from the reader takes both past their high-water mark
        server.congested(slow)
        server.congested(slower)
        assert reader.state == PAUSED
        server.drained(slow)
        assert reader.state == PAUSED, "the slower server has not caught up yet"
        server.drained(slower)
        assert reader.state == OPEN
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
        server.sel.close()


# ----------------------------------------------- a duplicate id far away, a chat that stays at home

def test_a_server_whose_id_is_taken_two_hops_away_is_refused() -> None:
    a = RunningServer(id=1, servername="A")
    b = RunningServer(id=2, servername="B", parent=a)
    c = RunningServer(id=3, servername="C", parent=b)
    twin = None
    try:
        wait_for(lambda: 1 in c.hosts_db, "C to know A, two hops away")
        twin = RunningServer(id=1, servername="twin", parent=c)
        wait_for(lambda: twin.status_updates_log, "the twin to hear why it was refused")
        assert twin.status_updates_log == ["A machine has already registered with ID 1"]
        assert c.adjacent_server_ids == [2] and c.hosts_db[1].server_name == "A"
    finally:
        for server in (twin, c, b, a):
            if server is not None:
                server.stop()


def test_a_chat_between_two_clients_of_one_server_never_leaves_it() -> None:
    hub = RunningServer(id=1, servername="hub")
    try:
        upstream = RawPeer.server(hub.port, 9, "upstream")  # a neighbour that sees everything sent its way
        upstream.wait_for(lambda m: m, "the hub's registration")
        left, right = RawPeer.client(hub.port, 10, "left"), RawPeer.client(hub.port, 11, "right")
        right.wait_for(lambda m: m, "right's welcome")
        left.wait_for(lambda m: len(m) >= 2, "right to be announced")
        left.send(ClientChatMessage.bytes(10, 11, "next door"))
        right.wait_for(lambda m: right.of_type(ClientChatMessage), "the chat")
        wait_for(hub.is_quiet, "the hub to have sent everything")
        upstream.pump(0.2)
        assert upstream.of_type(ClientChatMessage) == [], "a chat for a client of the same server went upstream"
        assert upstream.of_type(ClientRegistrationMessage), "the neighbour did hear of the clients"
    finally:
        hub.stop()
