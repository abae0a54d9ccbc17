"""Tools for the people who write the cases (issue 12): --record, --mutants and --chaos."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest
from netkit import ROOT, submission, wait_for, write_case

import ChatTestManager as manager
from Testers.chaos import MAX_DELAY, ChaosRelay, Pipe
from Testers.mutants import MUTANTS

pytestmark = pytest.mark.timeout(300)


def run_command_line(*arguments: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), *arguments], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


# ------------------------------------------------------------------------------------------ record

CHAT_COMMANDS = [
    "LAUNCHSERVER --id 1 --servername oak --port 6100",
    "WAIT 0.2",  # without it elm may try to join before oak listens: --record would refuse the case
    "LAUNCHSERVER --id 2 --servername elm --port 6200 --connect_to_host theshire --connect_to_port 6100",
    "WAIT 0.2",
    "LAUNCHCLIENT --id 11 --serverhost theshire --serverport 6100 --username ada",
    "LAUNCHCLIENT --id 12 --serverhost theshire --serverport 6200 --username bob",
    "WAIT 0.2",
    'CLIENTCOMMAND --username ada --command MESSAGE 12 "hello bob"',
    "WAIT 0.2",
    "CLIENTCOMMAND --username bob --command QUIT",
    "WAIT 0.3",
    "KILL ALL",
]


def test_record_fills_an_empty_final_state_with_what_the_network_ends_in_and_again_changes_nothing(
        tmp_path: Path) -> None:
    case = write_case(tmp_path, "fresh", CHAT_COMMANDS, {}, weight=2)
    first = run_command_line("--record", str(case), "--logs", str(tmp_path / "Logs"))
    assert first.returncode == 0 and "recorded" in first.stdout, first.stdout + first.stderr
    data = json.loads(case.read_text())
    assert data["weight"] == 2 and data["commands"] == CHAT_COMMANDS, "the file's other fields stay as they were"
    assert data["final_state"]["oak"] == {"adjacent_server_ids": [2], "adjacent_user_ids": [11], "hosts_db": [2, 11],
                                          "status_updates_log": []}
    assert data["final_state"]["bob"]["chat_messages_log"] == ['"hello bob"']
    assert data["final_state"]["ada"]["connected_user_ids"] == [], "bob quit: ada knows no one"
    assert "oak.hosts_db: (not checked) -> [2, 11]" in first.stdout, first.stdout
    text = case.read_text()
    again = run_command_line("--record", str(case), "--logs", str(tmp_path / "Logs"))
    assert again.returncode == 0 and "fresh: unchanged" in again.stdout and case.read_text() == text, again.stdout
    assert manager.run_case(case, manager.Settings(logs_dir=tmp_path / "Logs")).passed


def test_record_keys_only_keeps_to_the_keys_the_file_names(tmp_path: Path) -> None:
    case = write_case(tmp_path, "narrow", CHAT_COMMANDS, {"bob": {"chat_messages_log": ["wrong"]}})
    run = run_command_line("--record", "--record-keys-only", str(case), "--logs", str(tmp_path / "Logs"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(case.read_text())["final_state"] == {"bob": {"chat_messages_log": ['"hello bob"']}}
    assert "bob.chat_messages_log: ['wrong'] -> ['\"hello bob\"']" in run.stdout, run.stdout


def test_record_refuses_a_case_whose_outcome_depends_on_timing_naming_the_keys(tmp_path: Path) -> None:
    case = tmp_path / "random.cfg"
    original = json.dumps({"type": "CRC_functionality", "final_state": {}, "commands": [
        "LAUNCHSERVER --id 1 --servername oak --port 6100",
        "WAIT 0.2",
        "LAUNCHCLIENT --serverhost localhost --serverport 6100 --username ada",  # no --id: a random one
        "WAIT 0.2",
        "KILL ALL"]})
    case.write_text(original)
    run = run_command_line("--record", str(case), "--logs", str(tmp_path / "Logs"))
    assert run.returncode == 1 and "REFUSED  random: not recorded: two runs disagree on oak.adjacent_user_ids," \
        " oak.hosts_db" in run.stdout, run.stdout
    assert case.read_text() == original, "a refused case is left as it was"
    steady = json.loads(original)
    steady["final_state"] = {"oak": {"adjacent_server_ids": ["wrong"]}}  # the same in every run
    case.write_text(json.dumps(steady))
    narrow = run_command_line("--record", "--record-keys-only", str(case), "--logs", str(tmp_path / "Logs"))
    assert narrow.returncode == 0 and "oak.adjacent_server_ids: ['wrong'] -> []" in narrow.stdout, \
        f"only the keys written need agree:\n{narrow.stdout}"


# ----------------------------------------------------------------------------------------- mutants

def test_every_mutant_changes_exactly_one_piece_of_the_server() -> None:
    source = (ROOT / "ChatServer.py").read_text()
    assert len(MUTANTS) >= 12 and len({mutant.name for mutant in MUTANTS}) == len(MUTANTS)
    parts = {mutant.part for mutant in MUTANTS}
    assert parts >= {"server registration", "status", "client registration", "client chat", "client quit",
                     "the loop"}, f"every handler and the loop need a mutant; covered: {sorted(parts)}"
    for mutant in MUTANTS:
        mutated = mutant.source(source)  # raises unless its piece is found exactly once
        assert mutated != source, f"mutant {mutant.name} changes nothing"
        compile(mutated, mutant.name, "exec")


def test_our_cases_catch_every_mutant() -> None:
    run = run_command_line("--mutants", "--require-kill")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Every one of the {len(MUTANTS)} mutants is caught by at least one case." in run.stdout, run.stdout
    rows = [line.split() for line in run.stdout.splitlines() if line.split() and line.split()[0] in
            {mutant.name for mutant in MUTANTS}]
    assert len(rows) == len(MUTANTS) and all("X" in row for row in rows), run.stdout


def test_a_weak_case_set_lets_named_mutants_survive_and_require_kill_fails(tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    weak.mkdir()
    shutil.copy(ROOT / "TestCases" / "2_1_network_2_servers.cfg", weak)  # no clients, no chats, no quits
    run = run_command_line("--mutants", "--require-kill", "--cases", str(weak), "--logs", str(tmp_path / "Logs"))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Mutants no case catches:" in run.stdout
    assert "  no-welcome (client registration): a client that registers is never welcomed" in run.stdout
    assert "  no-unknown-id (client chat): a chat to an unknown id is dropped without a word" in run.stdout
    without_require = run_command_line("--mutants", "--cases", str(weak), "--logs", str(tmp_path / "Logs"))
    assert without_require.returncode == 0, "survivors alone are a report, not a failure"


# ------------------------------------------------------------------------------------------- chaos

def test_the_same_seed_cuts_the_same_stream_the_same_way() -> None:
    def pieces(seed: str) -> List[bytes]:
        left, right = socket.socketpair()
        with left, right:
            pipe = Pipe(left, right, seed)
            pipe.cut(bytes(range(200)) * 5)
            pipe.flush(0.0)  # the stream pauses: what is held of the last piece goes too
            return [piece for _, piece in pipe.pieces]

    first, again, other = pieces("7/case/6100/1"), pieces("7/case/6100/1"), pieces("8/case/6100/1")
    assert first == again and first != other
    assert b"".join(first) == bytes(range(200)) * 5 and any(len(piece) == 1 for piece in first)


def test_a_seed_cuts_a_stream_at_the_same_offsets_however_recv_splits_it() -> None:
    stream = bytes(range(256)) * 8

    def cuts(chunks: List[int]) -> List[int]:
        left, right = socket.socketpair()
        with left, right:
            pipe = Pipe(left, right, "7/case/6100/1")
            offset = 0
            for size in chunks:
                pipe.cut(stream[offset:offset + size])
                offset += size
            ends = [0]
            for _, piece in pipe.pieces:
                ends.append(ends[-1] + len(piece))
            return ends[1:]

    whole, split = cuts([len(stream)]), cuts([700, 1, 300, 1000, 47])
    assert len(whole) > 10 and whole == split, f"cut at {whole} read whole, at {split} read in five chunks"


def test_each_piece_waits_at_most_the_relays_delay_after_it_came_and_in_order() -> None:
    left, right = socket.socketpair()
    with left, right:
        pipe = Pipe(left, right, "7/case/6100/1")
        came = time.monotonic()
        pipe.cut(b"x" * 65_600)  # the largest chat: hundreds of pieces
        dues = [due for due, _ in pipe.pieces]
    assert len(dues) > 300 and dues == sorted(dues), "pieces leave in the order they came"
    late = max(dues) - came
    assert late <= MAX_DELAY + 0.05, f"the last piece is due {late:.3f} s after it came; at most {MAX_DELAY} s was meant"


def test_relays_with_the_same_seed_draw_alike_whatever_port_their_server_got() -> None:
    def draws(relay: ChaosRelay) -> List[float]:
        with socket.create_connection(("127.0.0.1", relay.port)):
            wait_for(lambda: len(relay.pipes) == 2, "the relay to take the connection")
            return [(pipe.cutter.left, pipe.delays.random()) for pipe in relay.pipes.values()]

    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_server(("127.0.0.1", 0)) as other_run:
        relays = [ChaosRelay(sock.getsockname()[1], "7/case/6100") for sock in (server, other_run)]
        try:
            assert draws(relays[0]) == draws(relays[1]), "a seed must replay a run, wherever its servers listen"
        finally:
            for relay in relays:
                relay.stop()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_our_server_passes_every_case_under_chaos(seed: int, tmp_path: Path) -> None:
    run = run_command_line("--chaos", str(seed), "--logs", str(tmp_path / "Logs"))
    assert run.returncode == 0 and "Under chaos every case that ran passed." in run.stdout, run.stdout + run.stderr
    assert f"chaos seed {seed}" in (tmp_path / "Logs" / "4_3_chat_3_hops.log").read_text()


def test_a_server_launched_again_on_its_port_leaves_no_relay_behind(tmp_path: Path) -> None:
    case = write_case(tmp_path, "again", [
        "LAUNCHSERVER --id 1 --servername oak --port 4100",
        "WAIT 0.2",
        "KILL oak",
        "WAIT 0.2",
        "LAUNCHSERVER --id 1 --servername ash --port 4100",
        "WAIT 0.2",
        "KILL ALL",
    ], {"ash": {"hosts_db": []}})
    result = manager.run_case(case, manager.Settings(logs_dir=tmp_path / "Logs", chaos=4))
    assert result.passed, result.explanation
    wait_for(lambda: not [thread for thread in threading.enumerate() if thread.name.startswith("chaos relay")],
             "every relay of the case to stop with it")


TRUSTING_SERVER = '''
from ChatMessageParser import MessageParser
from ChatServerBase import CRCServer as Ours


class CRCServer(Ours):
    """Takes each chunk it receives for whole messages, as a hurried student might."""

    def handle_messages(self, io_device, recv_data):
        for message in MessageParser.parse_messages(recv_data):
            self.message_handlers[message.message_type](io_device, message)
            io_device = self.sel.get_key(io_device.fileobj)
'''


def test_a_server_that_takes_each_read_for_whole_messages_fails_only_under_chaos(tmp_path: Path) -> None:
    server = submission(tmp_path, "trusting", TRUSTING_SERVER)
    cases = ["3_3", "4_3", "6_2", "7_2"]
    plain = run_command_line("--server", str(server), "--logs", str(tmp_path / "plain"), *cases)
    assert plain.returncode == 0, f"without chaos it passes, as on loopback it usually does:\n{plain.stdout}"
    chaos = run_command_line("--server", str(server), "--chaos", "5", "--logs", str(tmp_path / "chaos"), *cases)
    assert chaos.returncode == 1, chaos.stdout
    assert "Fail only under chaos" in chaos.stdout and "takes a read for a whole message" in chaos.stdout, chaos.stdout
