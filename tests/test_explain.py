"""Why a case failed, on the wire: broken servers whose first divergence from the reference's run must be
named with the right machine, link and message; our server and a correct server that orders independent
messages otherwise, for which nothing may be reported; a reference log in the course's format as the only
reference; and the transcripts the cases ship with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import ChatTestManager as manager
from Testers.explain import compare
from Testers.mutants import Mutant
from Testers.transcript import read_transcript, shown, transcript_path

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "TestCases"


@dataclass(frozen=True)
class Broken:
    """A server with one handler broken, the case that shows it, and what its first divergence must say."""

    mutant: Mutant
    case: str
    expected: List[str]  # pieces the explanation's first divergence must hold, in this order
    # Or these: when two wrong messages race (one server's echo, and the next server's), either is first.
    otherwise: Tuple[str, ...] = ()


BROKEN = [
    Broken(Mutant("server-not-flooded", "a new server's registration is not passed on to the other servers",
                  "server registration",
                  "        self.broadcast_message_to_servers(server.registration, ignore_host_id=server.first_link_id)\n",
                  ""),
           "2_2_network_4_servers",
           ["fir never passed the registration of server yew (53, last hop 52) on to ash (51); the reference did,"
            " right after `LAUNCHSERVER yew`"]),
    Broken(Mutant("client-last-hop-kept", "a client's registration is passed on with the last hop it came with",
                  "client registration",
                  "        client.registration = self.relayed(message.bytes)",
                  "        client.registration = message.bytes"),
           "4_2_chat_1_hop",
           ["oak passed the registration of client ada (131, last hop 121) on to elm (122)",
            "with last_hop_id 0 where the reference had 121", "right after `LAUNCHCLIENT ada`"]),
    Broken(Mutant("chat-back-to-sender", "a chat goes back toward its sender", "client chat",
                  "                self.send_message_to_host(message.destination_id, message.bytes):",
                  "                self.send_message_to_host(message.source_id, message.bytes):"),
           "chats_apart",
           ["oak passed the chat '\"over one link\"' from ada (131) to bob (132) on to ada (131) instead of"
            " elm (122)", "the reference sent it to elm"]),
    Broken(Mutant("quit-from-the-server", "a client's quit is passed on with the server's id as its source",
                  "client quit",
                  "        self.broadcast_message_to_servers(message.bytes, ignore_host_id=record.id)\n"
                  "        self.broadcast_message_to_adjacent_clients(message.bytes, ignore_host_id=record.id)\n",
                  "        self.broadcast_message_to_servers(message.bytes[:1] + self.id.to_bytes(4, 'big')"
                  " + message.bytes[5:], ignore_host_id=record.id)\n"
                  "        self.broadcast_message_to_adjacent_clients(message.bytes, ignore_host_id=record.id)\n"),
           "6_2_client_quit_3_servers",
           ["yew passed the quit of client cy (283) ('') on to fir (272) with source_id 273 where the reference had 283;",
            "right after `CLIENTCOMMAND --username cy --command QUIT`"]),
    Broken(Mutant("chat-echoed", "a chat is delivered, and sent back to its sender too", "client chat",
                  "                self.send_message_to_host(message.destination_id, message.bytes):",
                  "                self.send_message_to_host(message.destination_id, message.bytes) and \\\n"
                  "                self.send_message_to_host(message.source_id, message.bytes):"),
           "chats_apart",
           ["oak passed the chat '\"over one link\"' from ada (131) to bob (132) on to ada (131), which the"
            " reference never did"],
           ("elm passed the chat '\"over one link\"' from ada (131) to bob (132) on to oak (121), which the"
            " reference never did",)),
    Broken(Mutant("refusal-worded-for-a-client", "a server with a taken id is refused in the words for a client",
                  "server registration",
                  'f"A machine has already registered with ID {server_id}"',
                  'f"Someone has already registered with ID {server_id}"'),
           "5_2_status_duplicate_server_id",
           ["yew sent the status 'A machine has already registered with ID 201' (code 2, duplicate id; source"
            " yew (203), destination 0) to rogue (201) with content 'Someone has already registered with ID 201' where the"
            " reference had 'A machine has already registered with ID 201'", "right after `LAUNCHSERVER rogue`"]),
]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our cases, and one more: 4_2 with its two chats apart, so that which goes wrong first is not a race
    (in 4_2 both chats are on their way at once), with its transcript recorded as --record-transcripts does."""
    folder = tmp_path_factory.mktemp("cases")
    for path in CASES.iterdir():
        shutil.copy(path, folder)
    case = json.loads((CASES / "4_2_chat_1_hop.cfg").read_text())
    chats = [number for number, command in enumerate(case["commands"]) if command.startswith("CLIENTCOMMAND")]
    case["commands"].insert(chats[1], "WAIT 0.3")
    (folder / "chats_apart.cfg").write_text(json.dumps(case))
    assert manager.main(["--cases", str(folder), "--logs", str(folder / "Logs"), "--record-transcripts",
                         "chats_apart"]) == 0
    return folder


def broken_server(tmp_path: Path, mutant: Mutant) -> Path:
    server = tmp_path / mutant.name / "ChatServer.py"
    server.parent.mkdir(parents=True)
    server.write_text(mutant.source((ROOT / "ChatServer.py").read_text(encoding="utf-8")), encoding="utf-8")
    return server


def first_divergence(explanation: str) -> str:
    lines = explanation.splitlines()
    starts = [number for number, line in enumerate(lines) if line.startswith("first divergence on the wire")]
    assert starts, f"no divergence explained in:\n{explanation}"
    return lines[starts[0] + 1].strip()


def assert_says(said: str, pieces: List[str]) -> None:
    position = 0
    for piece in pieces:
        found = said.find(piece, position)
        assert found >= 0, f"expected {piece!r} (after position {position}) in the first divergence, saw:\n{said}"
        position = found + len(piece)


@pytest.mark.parametrize("broken", BROKEN, ids=[broken.mutant.name for broken in BROKEN])
def test_a_broken_server_is_explained_by_its_first_wrong_message(broken: Broken, cases: Path, tmp_path: Path) -> None:
    settings = manager.Settings(server_path=broken_server(tmp_path, broken.mutant), logs_dir=tmp_path / "Logs")
    result = manager.run_case(cases / f"{broken.case}.cfg", settings)
    assert result.status == manager.FAILED, f"{broken.mutant.bug}: the case passed:\n{result.explanation}"
    said = first_divergence(result.explanation)
    if not any(other in said for other in broken.otherwise):
        assert_says(said, broken.expected)
    # The same words in the case's log, and its chart named among the logs.
    assert first_divergence(result.explanation) in (tmp_path / "Logs" / f"{broken.case}.log").read_text()
    assert tmp_path / "Logs" / f"{broken.case}.html" in [path.resolve() for path in result.logs]


def run_clean(server: Path, tmp_path: Path) -> Dict[str, List[str]]:
    """Every case with this server: the divergences found in each (none for a correct server)."""
    settings = manager.Settings(server_path=server, logs_dir=tmp_path / "Logs")
    found: Dict[str, List[str]] = {}
    for path in manager.select_cases(CASES, []):
        result = manager.run_case(path, settings)
        assert result.passed, f"{path.stem} failed:\n{result.explanation}"
        assert result.transcript is not None
        divergences = compare(read_transcript(transcript_path(path)), result.transcript)
        if divergences:
            found[path.stem] = [f"{divergence.kind}: {divergence.reference or divergence.run}"
                                for divergence in divergences]
    return found


def test_our_server_diverges_nowhere_from_the_transcripts_it_recorded(tmp_path: Path) -> None:
    assert run_clean(ROOT / "ChatServer.py", tmp_path) == {}


REORDERED = [  # each loop over independent links runs backwards; a client is announced to clients first, and
    # a newcomer is told about the hosts we know, and a new client about the other clients, last first
    ("            for host in list(self.hosts_db.values()):  # our whole view",
     "            for host in list(self.hosts_db.values())[::-1]:  # our whole view"),
    ("            for other in others:\n", "            for other in others[::-1]:\n"),
    ("        for server_id in self.adjacent_server_ids:",
     "        for server_id in reversed(self.adjacent_server_ids):"),
    ("        for client_id in self.adjacent_user_ids:", "        for client_id in reversed(self.adjacent_user_ids):"),
    ("        self.broadcast_message_to_servers(client.registration, ignore_host_id=client.first_link_id)\n"
     "        self.broadcast_message_to_adjacent_clients(client.registration, ignore_host_id=client_id)\n",
     "        self.broadcast_message_to_adjacent_clients(client.registration, ignore_host_id=client_id)\n"
     "        self.broadcast_message_to_servers(client.registration, ignore_host_id=client.first_link_id)\n"),
]


def test_a_server_that_serves_links_in_another_order_diverges_nowhere(tmp_path: Path) -> None:
    source = (ROOT / "ChatServer.py").read_text(encoding="utf-8")
    for original, reordered in REORDERED:
        assert source.count(original) == 1, f"not found once in ChatServer.py: {original!r}"
        source = source.replace(original, reordered)
    server = tmp_path / "reordered" / "ChatServer.py"
    server.parent.mkdir()
    server.write_text(source, encoding="utf-8")
    assert run_clean(server, tmp_path) == {}


def course_log(name: str, log_file: Path, transcript: Dict[str, Any]) -> str:
    """A reference log in the course's format, built from a run of ours: its trace, each command as a
    `*` line, and what each client sent as `[NAME] \\tSending message to b'...'` after its command."""
    trace = log_file.read_text(encoding="utf-8").split("trace (what the servers printed, and each command as *CMD):\n")[1]
    clients = {machine["name"] for machine in transcript["machines"] if machine["kind"] == "client"}
    sent: Dict[int, List[str]] = {}
    for message in transcript["messages"]:
        if message["from"] in clients:
            sent.setdefault(message["after"], []).append(
                f"[{message['from']}] \tSending message to {bytes.fromhex(message['hex'])!r}")
    lines = ["#" * 60, f"Beginning test {name}"]
    command = -1
    for line in trace.splitlines():
        if line.startswith("*CMD "):
            lines += sent.pop(command, [])
            command += 1
            verb, _, rest = line[len("*CMD "):].partition(" ")
            lines.append(f"*{verb}.........\t{rest}")
        elif line.strip():
            lines.append(line)
    lines += [line for after in sorted(sent) for line in sent[after]]
    return "\n".join(lines + ["Test passed:True", ""])


def test_a_course_reference_log_alone_explains_a_broken_server(cases: Path, tmp_path: Path) -> None:
    name = "chats_apart"
    ours = manager.run_case(cases / f"{name}.cfg", manager.Settings(logs_dir=tmp_path / "ours"))
    assert ours.passed and ours.transcript is not None, ours.explanation
    reference_logs = tmp_path / "Correct Logs"
    reference_logs.mkdir()
    log = course_log(name, tmp_path / "ours" / f"{name}.log", ours.transcript)
    assert 'Sending message to Host ID #122 "b' in log and "[ada] \tSending message to b'" in log, log
    (reference_logs / f"{name}.log").write_text(log, encoding="utf-8")
    alone = tmp_path / "TestCases"  # the case alone, as the course's kit has it: no transcript beside it
    alone.mkdir()
    shutil.copy(cases / f"{name}.cfg", alone)

    broken = next(broken for broken in BROKEN if broken.mutant.name == "chat-back-to-sender")
    settings = manager.Settings(server_path=broken_server(tmp_path, broken.mutant), logs_dir=tmp_path / "Logs",
                                reference_logs=reference_logs)
    result = manager.run_case(alone / f"{name}.cfg", settings)
    assert result.status == manager.FAILED
    assert f"against the reference log {shown(reference_logs / name)}.log" in result.explanation, result.explanation
    assert_says(first_divergence(result.explanation), broken.expected)

    # Our server, against the same log: nothing (the joining servers' own registrations are not in it).
    again = manager.run_case(alone / f"{name}.cfg", manager.Settings(logs_dir=tmp_path / "again",
                                                                      reference_logs=reference_logs))
    assert again.transcript is not None
    reference = manager.reference_for(manager.load_case(alone / f"{name}.cfg"), reference_logs)
    assert reference is not None
    assert compare(reference, again.transcript) == []


def test_every_case_ships_with_its_transcript() -> None:
    for path in manager.select_cases(CASES, []):
        transcript = read_transcript(transcript_path(path))
        assert transcript["commands"] == json.loads(path.read_text())["commands"], \
            f"{transcript_path(path).name} was recorded for other commands than {path.name}'s: record it again"
        assert transcript["messages"], f"{transcript_path(path).name} holds no message"


def test_the_explanation_reaches_the_console_the_results_and_the_course_interface(
        cases: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = next(broken for broken in BROKEN if broken.mutant.name == "chat-back-to-sender")
    server = broken_server(tmp_path, broken.mutant)
    results = tmp_path / "results.json"
    status = manager.main(["--cases", str(cases), "--server", str(server), "--logs", str(tmp_path / "Logs"),
                           "--gradescope", str(results), "-j", "1", "chats_apart"])
    printed = capsys.readouterr().out
    assert status == 1, printed
    said = first_divergence(printed.replace("\n      ", "\n"))
    assert_says(said, broken.expected)
    chart = (tmp_path / "Logs" / "chats_apart.html").resolve()
    assert printed.splitlines()[-1] == f"Charts of the failed case(s), this run beside the reference: {chart}", printed
    (test,) = json.loads(results.read_text())["tests"]
    assert said in test["output"] and str(chart) in test["output"], test["output"]

    from CRCTestManager import CRCTestManager
    course = CRCTestManager(CRCServerImpl=manager.load_server_module(server).CRCServer, catch_exceptions=True)
    course.cases_dir, course.logs_dir = cases, tmp_path / "course"
    score, (outcome,) = course.run_tests({"chats_apart": 3})
    assert score == 0 and not outcome["passed"]
    assert_says(first_divergence(outcome["errors"]), broken.expected)


def test_the_wiretap_records_what_each_send_gave_the_kernel_and_changes_nothing(tmp_path: Path) -> None:
    import socket

    from Testers.transcript import Wiretap

    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    port, sender_end = listener.getsockname()[1], sender.getsockname()
    with Wiretap() as tap:
        tap.after = 3
        assert sender.send(b"abc") == 3
        sender.sendall(bytearray(b"defg"))
        assert sender.sendmsg([b"h", memoryview(b"ij")]) == 3
    sender.send(b"not seen")  # after the tap: not recorded, and send is the socket's own again
    assert "send" not in socket.socket.__dict__ and "sendall" not in socket.socket.__dict__
    sender.close()
    received = b""
    while chunk := receiver.recv(100):
        received += chunk
    for sock in (receiver, listener):
        sock.close()
    assert received == b"abcdefghijnot seen", f"the bytes changed on their way: {received!r}"
    assert [(after, data) for _, after, _, _, data in sorted(tap.records)] == [(3, b"abc"), (3, b"defg"), (3, b"hij")]
    ends = {ends for _, _, ends, _, _ in tap.records}
    assert ends == {(sender_end, ("127.0.0.1", port))}, f"expected the connection to port {port}, saw {ends}"


def transcript(*messages: Tuple[str, str, bytes]) -> Dict[str, Any]:
    from Testers.transcript import cut_messages

    return {"case": "made", "source": "made by hand", "commands": ["LAUNCHCLIENT --username ada"],
            "machines": [{"name": "oak", "kind": "server", "id": 1}, {"name": "elm", "kind": "server", "id": 2},
                         {"name": "ada", "kind": "client", "id": 11}, {"name": "bob", "kind": "client", "id": 12}],
            "covers": None, "own_registrations": True,
            "messages": [{"from": sender, "to": receiver, "after": 0, **cut_messages(data)[0][0][1]}
                         for sender, receiver, data in messages]}


def test_the_reference_echoing_a_quit_and_independent_orders_are_no_divergence() -> None:
    from ChatMessageParser import ClientQuitMessage, ClientRegistrationMessage

    quit = ClientQuitMessage.bytes(11, "bye")
    ada, bob = ClientRegistrationMessage.bytes(11, 1, "ada", ""), ClientRegistrationMessage.bytes(12, 1, "bob", "")
    # The instructor's server sends a quit back over the link it came in on; ours does not.
    reference = transcript(("ada", "oak", quit), ("oak", "elm", quit), ("elm", "oak", quit), ("oak", "ada", quit))
    assert compare(reference, transcript(("ada", "oak", quit), ("oak", "elm", quit))) == []
    # Two links served in either order, and a newcomer told of the hosts in another order.
    reference = transcript(("oak", "elm", ada), ("oak", "bob", ada), ("oak", "elm", bob))
    run = transcript(("oak", "bob", ada), ("oak", "elm", bob), ("oak", "elm", ada))
    assert compare(reference, run) == []
    # But a quit that never went on is one.
    (missing,) = compare(transcript(("ada", "oak", quit), ("oak", "elm", quit)), transcript(("ada", "oak", quit)))
    assert (missing.kind, missing.reference and missing.reference["to"]) == ("missing", "elm")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_under_chaos_a_clients_link_is_named_by_who_registered_on_it(seed: int, tmp_path: Path) -> None:
    # A relay passes a client's registration on after a delay, when the next LAUNCHCLIENT may be under way.
    path = CASES / "7_4_clients_hear_nothing_meant_for_servers.cfg"
    result = manager.run_case(path, manager.Settings(logs_dir=tmp_path / "Logs", chaos=seed))
    assert result.passed and result.transcript is not None, result.explanation
    outcomes = read_transcript(transcript_path(path))
    best = min((compare(dict(outcomes, messages=messages), result.transcript)
                for messages in [outcomes["messages"], *outcomes.get("alternatives", [])]), key=len)
    assert best == [], f"seed {seed}: a run that passed diverges: {[str(item)[:200] for item in best[:3]]}"


def test_a_broken_reference_is_said_in_one_line_and_the_case_keeps_its_verdict(cases: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cases"
    folder.mkdir()
    shutil.copy(cases / "4_2_chat_1_hop.cfg", folder)
    transcript_path(folder / "4_2_chat_1_hop.cfg").write_text('{"messages": [{"from": "w"}]}')
    mutant = next(broken.mutant for broken in BROKEN if broken.case == "4_2_chat_1_hop")
    settings = manager.Settings(server_path=broken_server(tmp_path, mutant), logs_dir=tmp_path / "Logs")
    result = manager.run_case(folder / "4_2_chat_1_hop.cfg", settings)
    assert result.status == manager.FAILED and "Traceback" not in result.explanation, result.explanation
    said = [line for line in result.explanation.splitlines() if line.startswith("on the wire")]
    assert len(said) == 1 and "a message without a right 'to'" in said[0], result.explanation


def test_a_transcript_that_cannot_be_written_stops_recording_before_any_run(tmp_path: Path) -> None:
    shutil.copy(CASES / "4_1_chat_0_hops.cfg", tmp_path)
    blocked = transcript_path(tmp_path / "4_1_chat_0_hops.cfg")
    blocked.mkdir()  # a folder where the transcript goes
    run = subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), "--cases", str(tmp_path), "--logs",
                          str(tmp_path / "Logs"), "--record-transcripts", "4_1"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and run.stderr.strip() == f"error: --record {blocked}: it is a folder; give a file name", \
        run.stdout + run.stderr
    assert not (tmp_path / "Logs" / "4_1_chat_0_hops.log").exists(), "a case ran before the paths were checked"
