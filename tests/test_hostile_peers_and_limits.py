"""A server that survives hostile peers and overload, over real sockets: malformed frames, lies about
ids, peers that never register or stop reading, slow server links (backpressure), floods, and fuzzes of
any bytes and of valid frames that lie."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from typing import Any, List

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from netkit import ROOT, RawPeer, RunningServer, ServerProcess, paused_links, unregistered_links, wait_for

from ChatMessageParser import (
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    ServerQuitMessage,
    ServerRegistrationMessage,
    StatusUpdateMessage,
)
from ChatServer import WAKE_UP

pytestmark = pytest.mark.timeout(90)




def protocol_errors(peer: RawPeer) -> list[str]:
    return [m.content for m in peer.of_type(StatusUpdateMessage) if m.status_code == 3]


# ------------------------------------------------------------------------------ departures














# --------------------------------------------------------------------------- protocol breakers


@pytest.mark.parametrize("garbage, problem", [
    (b"\x07" + bytes(30), "unknown message type 0x07"),
    (ClientChatMessage.bytes(20, 10, "x")[:13] + b"\xff", "UTF-8"),
    (b"\x81" + (20).to_bytes(4, "big") + (10).to_bytes(4, "big") + (1 << 20).to_bytes(4, "big"), "limit"),
])
def test_a_malformed_frame_gets_a_protocol_error_and_only_that_link_is_dropped(network, garbage, problem):
    a = network.server(id=1, servername="A")
    b = network.server(id=2, servername="B", parent=a)
    watcher = network.client(a, 10, "watcher")
    breaker = RawPeer.client(b.port, 20, "breaker")
    wait_for(lambda: 20 in watcher.connected_user_ids, "the breaker to be known")
    breaker.send(garbage)
    breaker.wait_closed()
    (error,) = protocol_errors(breaker)
    assert problem in error
    wait_for(lambda: 20 not in watcher.connected_user_ids, "the breaker's departure to be announced")
    assert set(a.hosts_db) == {2, 10} and set(b.hosts_db) == {1, 10}
    assert a.adjacent_server_ids == [2] and b.adjacent_server_ids == [1]


@pytest.mark.parametrize("lie", [
    ClientChatMessage.bytes(10, 10, "I am the watcher"),
    ClientQuitMessage.bytes(10, "the watcher quits, says I"),
    StatusUpdateMessage.bytes(10, 1, 0, "a status in someone else's name"),
    ClientRegistrationMessage.bytes(21, 0, "second registration", ""),
    ClientRegistrationMessage.bytes(21, 2, "relayed by a client", ""),
    ServerRegistrationMessage.bytes(22, 0, "a client's server", ""),
    ServerQuitMessage.bytes(2, 0, "a client quitting a server"),
])
def test_a_client_may_only_speak_for_itself(network, lie):
    a = network.server(id=1, servername="A")
    b = network.server(id=2, servername="B", parent=a)
    watcher = network.client(a, 10, "watcher")
    liar = RawPeer.client(b.port, 20, "liar")
    wait_for(lambda: 20 in watcher.connected_user_ids, "the liar to be known")
    liar.send(lie)
    liar.wait_closed()
    assert len(protocol_errors(liar)) == 1, f"expected one protocol error, saw {liar.messages!r}"
    wait_for(lambda: set(a.hosts_db) == {2, 10} and set(b.hosts_db) == {1, 10}, "only the liar to be gone")
    assert watcher.chat_messages_log == [] and 10 in b.hosts_db


@pytest.mark.parametrize("again", [
    ClientRegistrationMessage.bytes(9, 9, "now a client", ""),
    ServerRegistrationMessage.bytes(9, 9, "born again", ""),
], ids=["as a client", "as a server again"])
def test_a_neighbour_server_registers_itself_only_once(network, again):
    a = network.server(id=1, servername="A")
    network.client(a, 10, "watcher")
    neighbour = RawPeer.server(a.port, 9, "neighbour")
    wait_for(lambda: a.adjacent_server_ids == [9], "the neighbour to be registered")
    neighbour.send(again)
    neighbour.wait_closed()
    assert len(protocol_errors(neighbour)) == 1, f"expected one protocol error, saw {neighbour.messages!r}"
    wait_for(lambda: set(a.hosts_db) == {10}, "the neighbour to be gone, and nothing else")
    assert a.adjacent_server_ids == [] and a.adjacent_user_ids == [10]


@pytest.mark.parametrize("first_frame", [
    ClientRegistrationMessage.bytes(0, 0, "zero", ""),
    ServerRegistrationMessage.bytes(0, 0, "zero", ""),
    ClientChatMessage.bytes(5, 10, "before registering"),
    ClientQuitMessage.bytes(10, "before registering"),
])
def test_id_zero_and_anything_before_a_registration_are_refused(network, first_frame):
    a = network.server(id=1, servername="A")
    network.client(a, 10, "watcher")
    peer = RawPeer(a.port)
    peer.send(first_frame)
    peer.wait_closed()
    assert len(protocol_errors(peer)) == 1 and set(a.hosts_db) == {10}


def test_a_host_announced_that_we_reach_another_way_is_left_out_and_the_link_stays(network):
    a = network.server(id=1, servername="A")
    watcher = network.client(a, 10, "watcher")
    merging = RawPeer.server(a.port, 9, "merging")
    merging.wait_for(lambda m: len(m) >= 2, "A's view of the network")
    merging.send(ClientRegistrationMessage.bytes(10, 9, "another watcher", "") +
                 ClientRegistrationMessage.bytes(11, 9, "newcomer", ""))
    wait_for(lambda: 11 in watcher.connected_user_ids, "the host that does not collide to be taken in")
    assert a.hosts_db[10].client_name == "watcher" and a.hosts_db[10].first_link_id == 10, \
        "the client with the id first keeps its place"
    assert 10 not in watcher.connected_user_ids and 9 in a.hosts_db, "the one that collides is left out, not passed on"
    merging.send(ClientChatMessage.bytes(10, 10, "in the watcher's name") + ClientChatMessage.bytes(11, 10, "hi"))
    wait_for(lambda: watcher.chat_messages_log == ["hi"], "only the chat from the host taken in")
    merging.pump(0.2)
    assert not merging.closed and not protocol_errors(merging), "a collision costs no link"


def test_a_connection_that_never_registers_is_dropped_and_a_brief_one_leaves_no_trace(network):
    a = network.server(id=1, servername="A", register_timeout=0.5)
    silent = RawPeer(a.port)
    silent.wait_closed()
    brief = socket.create_connection(("127.0.0.1", a.port))
    brief.close()
    network.client(a, 10, "watcher")
    wait_for(lambda: not unregistered_links(a), "A to forget the unregistered connections")
    assert set(a.hosts_db) == {10} and a.adjacent_user_ids == [10] and not a.held_links()


def test_a_refused_server_routes_nothing_from_the_link_it_opened(network):
    a = network.server(id=1, servername="A")
    network.server(id=2, servername="B", parent=a)
    wait_for(lambda: 2 in a.hosts_db, "B to join")
    impostor = network.server(id=2, servername="impostor", parent=a)
    wait_for(lambda: impostor.status_updates_log, "the impostor to log why it was refused")
    assert impostor.status_updates_log == ["A machine has already registered with ID 2"]
    assert impostor.hosts_db == {} and impostor.adjacent_server_ids == []


# ------------------------------------------------------------------------------------ overload


def test_a_peer_that_stops_reading_is_dropped_at_the_output_cap(network):
    cap = 256 * 1024
    a = network.server(id=1, servername="A", max_output=cap)
    sink = RawPeer.client(a.port, 10, "sink")  # never reads again
    sink.wait_for(lambda m: m, "welcome")
    sender = RawPeer.client(a.port, 11, "sender")
    sender.wait_for(lambda m: m, "welcome")
    high_water = 0
    chat = ClientChatMessage.bytes(11, 10, "x" * 1000)
    chats = chat * 100
    for _ in range(200):  # far more than the kernel's socket buffers and the cap together
        if 10 not in a.hosts_db:
            break
        high_water = max(high_water, len(a.hosts_db[10].write_buffer))
        sender.send(chats)
    wait_for(lambda: 10 not in a.hosts_db, "the sink to be dropped as a departure")
    # This thread samples the buffer while the server's thread works: it may catch the one chat that
    # crosses the cap in the instant before the server drops the link, never more.
    assert high_water <= cap + len(chat), f"unsent output reached {high_water} bytes; the cap is {cap}"
    sender.wait_for(lambda m: any(isinstance(x, ClientQuitMessage) and x.source_id == 10 for x in m),
                    "the sink's departure to be announced")
    assert 11 in a.hosts_db, "the sender reads what it is sent, so it stays"


def test_a_slow_server_link_holds_its_senders_back_instead_of_being_dropped(network):
    cap = 1024 * 1024
    a = network.server(id=1, servername="A", max_output=cap)
    slow = RawPeer.server(a.port, 9, "slow server")  # a neighbour that reads nothing for a while
    slow.send(ClientRegistrationMessage.bytes(90, 9, "behind the slow server", ""))
    flooder = RawPeer.client(a.port, 10, "flooder")
    flooder.wait_for(lambda m: any(getattr(x, "source_id", 0) == 90 for x in m), "the far client announced")
    frames = [ClientChatMessage.bytes(10, 90, f"{n}:" + "x" * 200) for n in range(40_000)]  # 9 MB, past the cap
    # It is held back until the slow server reads: that may take a while.
    sending = threading.Thread(target=flooder.send, args=(b"".join(frames), 60), daemon=True)
    sending.start()
    wait_for(lambda: paused_links(a), "the flooder to be held back")
    assert 9 in a.hosts_db and len(a.hosts_db[9].write_buffer) <= cap, "the slow server must stay, under the cap"
    slow.wait_for(lambda m: len(slow.of_type(ClientChatMessage)) == 40_000, "the whole flood once it reads",
                  timeout=60)
    sending.join(10)
    assert [chat.content for chat in slow.of_type(ClientChatMessage)] == [f"{n}:" + "x" * 200 for n in range(40_000)]
    assert {9, 10, 90} <= set(a.hosts_db) and not paused_links(a)
    wait_for(a.is_quiet, "A to be quiet once the flood is through")


def test_a_server_link_that_takes_nothing_at_all_is_dropped_after_the_stall_timeout(network):
    a = network.server(id=1, servername="A", max_output=1 << 20, stall_timeout=0.5)
    stuck = RawPeer.server(a.port, 9, "stuck server")  # never reads again
    stuck.send(ClientRegistrationMessage.bytes(90, 9, "behind the stuck server", ""))
    flooder = RawPeer.client(a.port, 10, "flooder")
    flooder.wait_for(lambda m: any(getattr(x, "source_id", 0) == 90 for x in m), "the far client announced")
    flood = b"".join(ClientChatMessage.bytes(10, 90, "x" * 200) for _ in range(40_000))
    threading.Thread(target=flooder.send, args=(flood, 60), daemon=True).start()
    wait_for(lambda: paused_links(a), "the flooder to be held back")
    wait_for(lambda: 9 not in a.hosts_db and 90 not in a.hosts_db, "the stuck server to be dropped as a departure")
    assert not paused_links(a), "the flooder must be let go"

    def serving_again() -> bool:
        flooder.pump(0.005)  # the rest of the flood earns an Unknown ID each: A is quiet once they are read
        return bool(a.is_quiet()) and 10 in a.hosts_db
    wait_for(serving_again, "A to serve the flooder again")


def test_a_neighbour_that_says_goodbye_is_closed_and_leaves_the_loop_quiet(network):
    a = network.server(id=1, servername="A", split_hold=60)
    neighbour = RawPeer.server(a.port, 9, "leaving")
    neighbour.wait_for(lambda m: m, "A's registration")
    neighbour.send(ServerQuitMessage.bytes(9, 0, "good night"))
    neighbour.close()
    wait_for(lambda: a.is_quiet() and 9 not in a.hosts_db, "A to forget the neighbour and go quiet")
    watched = {key.data for key in a.sel.get_map().values()}
    assert watched == {None, WAKE_UP} and not a.links, f"only the listening and waking sockets should be left: {watched}"


def test_a_peer_refused_while_not_reading_is_closed_after_a_grace(network):
    a = network.server(id=1, servername="A", max_output=64 << 20)
    deaf = RawPeer.client(a.port, 10, "deaf")  # stops reading
    deaf.wait_for(lambda m: m, "welcome")
    talker = RawPeer.client(a.port, 11, "talker")
    talker.wait_for(lambda m: m, "welcome")
    talker.send(b"".join(ClientChatMessage.bytes(11, 10, "x" * 1000) for _ in range(20_000)))  # 20 MB for deaf
    wait_for(lambda: len(a.hosts_db[10].write_buffer) > 1_000_000, "output to pile up for the deaf client")
    deaf.send(b"\x07")  # a protocol error: its status cannot get past 20 MB that it does not read
    wait_for(lambda: 10 not in a.hosts_db, "the deaf client to be closed after the grace and announced")

    def quiet() -> bool:
        talker.pump(0.005)  # chats A read after the close earn an Unknown ID each: A is quiet once they are read
        return bool(a.is_quiet())
    wait_for(quiet, "A to be quiet, not spinning on a link it no longer reads")


def test_a_chat_handler_put_on_the_object_and_in_message_handlers_sees_every_chat(network):
    a = network.server(id=1, servername="A")
    seen = []

    def recording_handler(io_device, message):
        seen.append(message.content)

    a.server.handle_client_chat_message = recording_handler  # as a course's test might, after construction,
    a.server.message_handlers[0x81] = recording_handler  # with the entry the template's dispatch reads
    left, right = RawPeer.client(a.port, 10, "left"), RawPeer.client(a.port, 11, "right")
    right.wait_for(lambda m: m, "right's welcome")
    left.wait_for(lambda m: len(m) >= 2, "right to be announced")
    left.send(ClientChatMessage.bytes(10, 11, "hello"))
    wait_for(lambda: seen == ["hello"], "the replaced handler to see the chat")


def test_a_burst_of_100000_messages_arrives_whole_and_in_order(network):
    a = network.server(id=1, servername="A")
    b = network.server(id=2, servername="B", parent=a)
    receiver = RawPeer.client(b.port, 20, "receiver")
    receiver.wait_for(lambda m: m, "welcome")
    sender = RawPeer.client(a.port, 10, "sender")
    sender.wait_for(lambda m: len(m) >= 2, "the receiver to be announced")
    sender.send(b"".join(ClientChatMessage.bytes(10, 20, str(n)) for n in range(100_000)))
    chats = receiver.wait_for(lambda m: len(receiver.of_type(ClientChatMessage)) >= 100_000 and
                              receiver.of_type(ClientChatMessage), "100,000 chats", timeout=60)
    assert [chat.content for chat in chats] == [str(n) for n in range(100_000)]


def test_a_flooding_client_does_not_starve_the_others(network):
    """The server takes a bounded bite of each ready connection per turn, so a chat sent while a
    flood is waiting is delivered long before the flood is through, not after it."""
    a = network.server(id=1, servername="A", max_output=64 << 20)
    sink = RawPeer.client(a.port, 10, "sink")
    sink.wait_for(lambda m: m, "welcome")
    flooder = RawPeer.client(a.port, 11, "flooder")
    polite = RawPeer.client(a.port, 12, "polite")
    polite.wait_for(lambda m: m, "welcome")
    frames = [ClientChatMessage.bytes(11, 10, f"flood {n}") for n in range(200_000)]
    flood = b"".join(frames)
    flooder.sock.setblocking(False)
    sent = flooder.sock.send(flood)  # as much as the kernel takes at once: all of it waits for the server
    polite.send(ClientChatMessage.bytes(12, 10, "hello"))
    flooder.sock.setblocking(True)
    flooder.send(flood[sent:])
    sink.wait_for(lambda m: len(sink.of_type(ClientChatMessage)) == 200_001, "the flood and the polite chat",
                  timeout=60)
    order = [chat.source_id for chat in sink.of_type(ClientChatMessage)]
    flood_waiting, total = 0, 0
    for frame in frames:
        total += len(frame)
        if total > sent:
            break
        flood_waiting += 1
    assert order.index(12) < flood_waiting // 2, (
        f"the polite chat came after {order.index(12)} flood messages;"
        f" {flood_waiting} were already waiting when it was sent")


# --------------------------------------------------------------------------------------- fuzz


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=6),
       register_first=st.booleans())
def test_a_live_server_survives_any_bytes(fuzz_server, chunks, register_first):
    server, watcher = fuzz_server
    peer = RawPeer(server.port)
    if register_first:
        peer.send(ClientRegistrationMessage.bytes(77, 0, "fuzzer", ""))
    for chunk in chunks:
        try:
            peer.send(chunk)
        except OSError:
            break  # the server already hung up on it
    peer.close()
    wait_for(lambda: server.is_quiet() and 77 not in server.hosts_db and not unregistered_links(server)
             and not server.held_links(), "the fuzzer's traces to be gone")
    watcher.send(ClientChatMessage.bytes(10, 10, "ping"))
    watcher.wait_for(lambda m: any(getattr(x, "content", "") == "ping" for x in m), "the server to still serve")
    watcher.messages.clear()
    assert set(server.hosts_db) == {10}


@pytest.fixture(scope="module")
def fuzz_server():
    server = RunningServer(id=1, servername="fuzzed", split_hold=0, register_timeout=0.5)
    watcher = RawPeer.client(server.port, 10, "watcher")
    watcher.wait_for(lambda m: m, "welcome")
    yield server, watcher
    server.stop()


# ----------------------------------------------------------------------- issue 10: no silent losses






def test_from_the_command_line_a_failed_join_is_an_error_unless_asked_to_start_alone():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    run = subprocess.run([sys.executable, "ChatServer.py", "--servername", "lonely", "--port", "0", "--bind",
                          "127.0.0.1", "--connect_to_port", str(port)], cwd=ROOT, capture_output=True, text=True,
                         timeout=20)
    assert run.returncode == 1, run.stderr
    assert (run.stderr.splitlines() or [""])[-1].startswith(f"ChatServer.py: could not join localhost:{port}: "), \
        run.stderr
    alone = ServerProcess("--servername", "alone", "--connect_to_port", str(port), "--alone-if-join-fails")
    try:
        wait_for(lambda: "running as a network of our own" in "".join(alone.log), "the server to say it runs alone")
        assert alone.process.poll() is None, "with --alone-if-join-fails the server runs on"
    finally:
        alone.kill()


def test_from_the_command_line_a_refused_id_is_an_error(network):
    a = network.server(id=1, servername="A")
    run = subprocess.run([sys.executable, "ChatServer.py", "--servername", "twin", "--id", "1", "--port", "0",
                          "--bind", "127.0.0.1", "--connect_to_port", str(a.port)], cwd=ROOT, capture_output=True,
                         text=True, timeout=20)
    assert run.returncode == 1 and run.stderr.splitlines()[-1] == (
        f"ChatServer.py: localhost:{a.port} refused us: A machine has already registered with ID 1"
        " (--alone-if-join-fails starts a network of our own instead)"), run.stderr


# ------------------------------------------------------------------ a fuzz of valid frames that lie

WATCHER, FUZZER, OURS = 10, 9, 1


ids = st.sampled_from([0, OURS, FUZZER, WATCHER, 90, 91, 92, 0xFFFFFFFF])


text = st.one_of(st.text(max_size=12), st.just("x" * 255))  # the longest a one-byte length field holds


frames = st.one_of(
    st.builds(lambda source, hop, name: ServerRegistrationMessage.bytes(source, hop, name, ""), ids,
              st.sampled_from([0, FUZZER, 5]), text),
    st.builds(lambda source, hop, name: ClientRegistrationMessage.bytes(source, hop, name, ""), ids,
              st.sampled_from([0, FUZZER, 5]), text),
    st.builds(ClientChatMessage.bytes, ids, ids, text),
    st.builds(ClientQuitMessage.bytes, ids, text),
    st.builds(lambda source, destination, code, content: StatusUpdateMessage.bytes(source, destination, code, content),
              ids, ids, st.integers(0, 3), text),
    st.builds(lambda source, content: ServerQuitMessage.bytes(source, 0, content), ids, text),
)


def broken_utf8(frame: bytes) -> bytes:
    """The same frame, its lengths still right, with its last byte turned into invalid UTF-8."""
    return frame[:-1] + b"\xff" if len(frame) > 15 else frame


# No explain phase: it replays a failure dozens of times, each waiting out a live server, for minutes.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[phase for phase in Phase if phase is not Phase.explain])
@given(stream=st.lists(st.tuples(frames, st.booleans()), min_size=1, max_size=8),
       as_server=st.booleans(), cuts=st.lists(st.integers(0, 2000), max_size=4))
def test_a_live_server_survives_valid_frames_that_lie(valid_fuzz_server: Any, stream: List[Any], as_server: bool,
                                                      cuts: List[int]) -> None:
    server, watcher, log = valid_fuzz_server
    logged_before = log.stat().st_size
    peer = RawPeer.server(server.port, FUZZER, "fuzzer") if as_server else RawPeer.client(server.port, 77, "fuzzer")
    data = b"".join(broken_utf8(frame) if broken else frame for frame, broken in stream)
    points = sorted({point % (len(data) + 1) for point in cuts} | {0, len(data)})
    for start, end in zip(points, points[1:]):
        try:
            peer.send(data[start:end])  # the stream cut anywhere, frames whole or split
        except OSError:
            break  # the server hung up on it: a lie it caught
    peer.close()
    wait_for(lambda: server.is_quiet() and set(server.hosts_db) == {WATCHER} and not server.held_links(),
             "every trace of the fuzzer to be gone")
    watcher.messages.clear()
    watcher.send(ClientChatMessage.bytes(WATCHER, WATCHER, "ping"))
    watcher.wait_for(lambda m: any(getattr(x, "content", "") == "ping" for x in m), "the server to still serve")
    logged = log.read_bytes()[logged_before:].decode("utf-8", "replace")
    assert "unexpected error" not in logged, f"a handler failed on a frame it should have judged:\n{logged}"


@pytest.fixture(scope="module")
def valid_fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    log = tmp_path_factory.mktemp("fuzz") / "fuzzed.log"
    server = RunningServer(id=OURS, servername="fuzzed", split_hold=0, register_timeout=0.5, log_file=str(log))
    watcher = RawPeer.client(server.port, WATCHER, "watcher")
    watcher.wait_for(lambda m: m, "welcome")
    yield server, watcher, log
    server.stop()
