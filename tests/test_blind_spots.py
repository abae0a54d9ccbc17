"""Tests for the behaviours an audit found no test would notice breaking (issue 13): errors in any
thread of a case, the handlers under a fuzz of valid frames, a duplicate server id two hops away, and a
chat between two clients of one server that must never leave it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from netkit import RawPeer, RunningServer, submission, wait_for, write_case

import ChatClient
import ChatTestManager as manager
from ChatMessageParser import (
    ClientChatMessage,
    ClientQuitMessage,
    ClientRegistrationMessage,
    ServerQuitMessage,
    ServerRegistrationMessage,
    StatusUpdateMessage,
)

pytestmark = pytest.mark.timeout(120)


CHAT = [
    "LAUNCHSERVER --id 1 --servername oak --port 4100",
    "WAIT 0.2",
    "LAUNCHCLIENT --id 11 --serverhost localhost --serverport 4100 --username ada",
    "LAUNCHCLIENT --id 12 --serverhost localhost --serverport 4100 --username bob",
    "WAIT 0.2",
    'CLIENTCOMMAND --username ada --command MESSAGE 12 "hi"',
    "WAIT 0.2",
    "KILL ALL",
]


# ------------------------------------------------------------------------- errors in any thread

@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the exception is the point
def test_a_client_listeners_exception_fails_the_case_with_its_traceback(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    handle = ChatClient.CRCClient._handle

    def breaks_on_chats(client: Any, message: Any) -> None:
        if isinstance(message, ClientChatMessage):
            raise RuntimeError("the listener broke on a chat")
        handle(client, message)

    monkeypatch.setattr(ChatClient.CRCClient, "_handle", breaks_on_chats)
    result = manager.run_case(write_case(tmp_path, "case", CHAT, {"oak": {"hosts_db": [11, 12]}}),
                              manager.Settings(logs_dir=tmp_path / "Logs"))
    assert not result.passed, "a listener that died must fail the case, though the state checked is right"
    assert "RuntimeError: the listener broke on a chat" in result.explanation, result.explanation
    assert "Traceback" in result.explanation


CRASHING_SERVER = '''
from ChatServerBase import CRCServer as Ours

class CRCServer(Ours):
    def check_IO_devices_for_messages(self):
        raise RuntimeError("the server's loop broke")
'''


def test_a_server_threads_crash_fails_the_case_naming_the_server(tmp_path: Path) -> None:
    server = submission(tmp_path, "crashing", CRASHING_SERVER)
    case = write_case(tmp_path, "case", ["LAUNCHSERVER --id 1 --servername oak --port 4100", "WAIT 0.2", "KILL ALL"],
                      {"oak": {"hosts_db": []}})
    result = manager.run_case(case, manager.Settings(server_path=server, logs_dir=tmp_path / "Logs"))
    assert not result.passed and "server oak crashed:" in result.explanation, result.explanation
    assert "RuntimeError: the server's loop broke" in result.explanation


# ----------------------------------------------------------------------- a fuzz of valid frames

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


# -------------------------------------------------------------------- a duplicate id, far away

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


# ----------------------------------------------------------------- a chat that stays at home

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
