"""The test manager's own features: quiet waits (and when a WAIT must take its full time), parallel
workers with their own ports, the drawing of a failed network, the Gradescope and JUnit results files,
lenient top-level keys, the demo, and an error in any thread of a case failing it."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Dict, List

import pytest
from netkit import ROOT, submission, write_case

import ChatClient
import ChatTestManager as manager
from ChatMessageParser import ClientChatMessage
from Testers import ports as port_tools
from Testers.drawing import MachineView, draw_network
from Testers.ports import PortBlock, port_block
from Testers.reports import gradescope_results, junit_xml


def chat_case(wait: float) -> List[str]:
    """Two servers, two clients, a chat: every step followed by a WAIT of `wait` seconds."""
    return [
        "LAUNCHSERVER --id 1 --servername oak --port 4100 --info root",
        f"WAIT {wait}",
        "LAUNCHSERVER --id 2 --servername elm --port 4101 --connect_to_host localhost --connect_to_port 4100",
        f"WAIT {wait}",
        "LAUNCHCLIENT --id 11 --serverhost localhost --serverport 4100 --username ada",
        f"WAIT {wait}",
        "LAUNCHCLIENT --id 12 --serverhost localhost --serverport 4101 --username bob",
        f"WAIT {wait}",
        'CLIENTCOMMAND --username ada --command MESSAGE 12 "hi bob"',
        f"WAIT {wait}",
        "KILL ALL",
    ]


CHAT_STATE = {
    "oak": {"hosts_db": [2, 11, 12], "adjacent_server_ids": [2], "adjacent_user_ids": [11]},
    "elm": {"hosts_db": [1, 11, 12], "adjacent_server_ids": [1], "adjacent_user_ids": [12]},
    "bob": {"connected_user_ids": [11], "chat_messages_log": ['"hi bob"']},
}


def logged_waits(log: Path) -> List[tuple]:
    """(took, asked, why) for every WAIT line of a case's log."""
    return [(float(took), float(asked), why) for took, asked, why
            in re.findall(r"waited ([\d.]+) s of ([\d.]+) s: (.*)", log.read_text())]


def run_command_line(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), *arguments],
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Quiet waits

def test_a_wait_ends_as_soon_as_the_network_is_quiet(tmp_path: Path) -> None:
    case = write_case(tmp_path, "patient", chat_case(30), CHAT_STATE)
    result = manager.run_case(case, manager.Settings(logs_dir=tmp_path / "Logs"))
    assert result.passed, result.explanation
    waits = logged_waits(tmp_path / "Logs" / "patient.log")
    assert len(waits) == 5, f"expected a log line for each of the 5 WAITs, found {waits}"
    for took, asked, why in waits:
        assert asked == 30 and took < asked and why == "the network was quiet", \
            f"expected each WAIT 30 to end early because the network was quiet, the log says {waits}"
    assert [round(record.took, 3) for record in result.waits] == [took for took, _, _ in waits], \
        f"the result's WAIT records {result.waits} differ from the log's {waits}"


def test_a_quiet_wait_does_not_end_while_chats_sent_back_to_back_are_on_their_way(tmp_path: Path) -> None:
    # Nagle's algorithm once held every chat after the first in the sender's kernel, where no machine's
    # is_quiet() looked: the WAIT ended at once and the case lost all but the first chat.
    texts = [f'"chat {number}"' for number in range(20)]
    case = write_case(tmp_path, "burst", [
        "LAUNCHSERVER --id 1 --servername oak --port 4100",
        "WAIT 5",  # until oak listens: elm, started at once, could find no one there and run alone
        "LAUNCHSERVER --id 2 --servername elm --port 4101 --connect_to_host localhost --connect_to_port 4100",
        "WAIT 5",
        "LAUNCHCLIENT --id 11 --serverhost localhost --serverport 4100 --username ada",
        "LAUNCHCLIENT --id 12 --serverhost localhost --serverport 4101 --username bob",
        "WAIT 5",
        *[f"CLIENTCOMMAND --username ada --command MESSAGE 12 {text}" for text in texts],
        "WAIT 5",
        "KILL ALL",
    ], {"bob": {"chat_messages_log": texts}})
    result = manager.run_case(case, manager.Settings(logs_dir=tmp_path / "Logs"))
    assert result.passed, result.explanation
    assert result.waits[-1].why == "the network was quiet", f"the last WAIT should still end early: {result.waits}"


BUSY_SERVER = """
from ChatServerBase import CRCServer as Ours

class CRCServer(Ours):
    @property
    def serving(self):
        return False  # never seen serving, so never quiet

    @serving.setter
    def serving(self, value):
        pass
"""


def test_a_wait_takes_its_full_time_while_the_network_is_not_quiet(tmp_path: Path) -> None:
    server = submission(tmp_path, "busy", BUSY_SERVER)
    case = write_case(tmp_path, "unquiet", [
        "LAUNCHSERVER --id 1 --servername oak --port 4100",
        "WAIT 0.3",
        "KILL ALL",
    ], {"oak": {"hosts_db": []}})
    result = manager.run_case(case, manager.Settings(server_path=server, logs_dir=tmp_path / "Logs"))
    assert result.passed, result.explanation
    assert [record.why for record in result.waits] == ["the time ran out"], result.waits
    assert result.waits[0].took >= 0.3, f"the WAIT ended before its 0.3 s: {result.waits[0]}"


def test_a_wait_lasts_through_a_hold_down_that_ends_within_it(tmp_path: Path) -> None:
    # After KILL ada, her server holds her departure for its hold-down (5 s) before it acts on it. A
    # WAIT shorter than that ends as soon as the network is quiet, with ada still known; a WAIT that
    # reaches past it lasts until the departure has happened.
    case = write_case(tmp_path, "departure", [
        "LAUNCHSERVER --id 1 --servername oak --port 4100",
        "WAIT 0.2",
        "LAUNCHCLIENT --id 11 --serverhost localhost --serverport 4100 --username ada",
        "WAIT 0.2",
        "KILL ada",
        "WAIT 1",
        "WAIT 6",
        "KILL ALL",
    ], {"oak": {"adjacent_user_ids": [], "hosts_db": []}})
    result = manager.run_case(case, manager.Settings(logs_dir=tmp_path / "Logs"))
    assert result.passed, result.explanation
    whys = [record.why for record in result.waits]
    assert whys == ["the network was quiet"] * 4, whys
    assert result.waits[2].took < 1, f"the WAIT within the hold-down should end once quiet: {result.waits[2]}"
    assert 3 < result.waits[3].took < 6, f"the WAIT past the hold-down should last until it ends: {result.waits[3]}"


MUTE_SERVER_NOTE = "is not built as ours, and cannot be seen to be quiet"


def mute_server(folder: Path) -> Path:
    """Our server with nothing our quiet waits read under the names they read, as a submission written
    for the course's kit would be."""
    source = (ROOT / "ChatServer.py").read_text(encoding="utf-8")
    assert "self.serving = " in source
    path = folder / "mute" / "ChatServer.py"
    path.parent.mkdir()
    path.write_text(source.replace(".serving", ".in_the_loop"), encoding="utf-8")
    return path


def test_a_server_that_cannot_say_it_is_quiet_gets_every_wait_in_full(tmp_path: Path) -> None:
    case = write_case(tmp_path, "mute", chat_case(0.2), CHAT_STATE)
    result = manager.run_case(case, manager.Settings(server_path=mute_server(tmp_path), logs_dir=tmp_path / "Logs"))
    assert result.passed, result.explanation
    waits = logged_waits(tmp_path / "Logs" / "mute.log")
    assert len(waits) == 5 and all(took >= asked and MUTE_SERVER_NOTE in why for took, asked, why in waits), \
        f"expected every WAIT to take its full 0.2 s because the server has no is_quiet(); the log says {waits}"


def test_strict_waits_give_every_wait_its_full_time(tmp_path: Path) -> None:
    case = write_case(tmp_path, "strict", chat_case(0.2), CHAT_STATE)
    result = manager.run_case(case, manager.Settings(strict_waits=True, logs_dir=tmp_path / "Logs"))
    assert result.passed, result.explanation
    waits = logged_waits(tmp_path / "Logs" / "strict.log")
    assert len(waits) == 5 and all(took >= asked and "--strict-waits" in why for took, asked, why in waits), \
        f"expected every WAIT to take its full 0.2 s under --strict-waits; the log says {waits}"


# ---------------------------------------------------------------------------------------------
# Parallel workers and their ports

def test_port_blocks_of_different_workers_never_overlap() -> None:
    for slots in (1, 2, 3, 8, 64):
        blocks = [port_block(slot, slots) for slot in range(slots)]
        for block in blocks:
            assert 1024 < block.low < block.high <= 65536 and block.low <= block.next < block.high, repr(block)
        for first, second in zip(blocks, blocks[1:]):
            assert first.high <= second.low, f"with {slots} workers, blocks {first!r} and {second!r} overlap"


def test_a_port_block_walks_on_and_wraps(monkeypatch: pytest.MonkeyPatch) -> None:
    # The walk alone: a fixed range of real ports may be held by a parallel test at any moment, so here
    # only 20009 is in use; the probe itself is tested on a real socket below.
    monkeypatch.setattr(port_tools, "_port_is_free", lambda port: port != 20009)
    block = PortBlock(20000, 20010)
    block.next = 20007
    assert block.take({20007}) == 20008, "the first free port from where the walk stands, skipping the case's own"
    assert block.take(set()) == 20000, "20009 is in use, so the walk wraps to the start of the block"
    ports_taken = [block.take(set()) for _ in range(9)]
    assert ports_taken == [20001, 20002, 20003, 20004, 20005, 20006, 20007, 20008, 20000], ports_taken


def test_a_port_block_skips_a_port_another_program_holds() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        block = PortBlock(held, held + 1)
        with pytest.raises(RuntimeError, match=f"no free port left in {held}-{held}"):
            block.take(set())


def parallel_cases(folder: Path) -> None:
    """Four cases, two of them expecting what does not happen; WAITs in full (the server cannot say it
    is quiet), so that each case lasts long enough for the second worker to take the next one."""
    for name, hosts in (("1_good", [11]), ("2_bad", []), ("3_good", [11]), ("4_bad", [])):
        write_case(folder, name, [
            "LAUNCHSERVER --id 1 --servername oak --port 4100",
            "WAIT 0.2",
            "LAUNCHCLIENT --id 11 --serverhost localhost --serverport 4100 --username ada",
            "WAIT 1.5",
            "KILL ALL",
        ], {"oak": {"hosts_db": hosts}}, weight=2)


def test_two_workers_run_cases_side_by_side_each_with_its_own_ports(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    parallel_cases(cases)
    logs = tmp_path / "Logs"
    # Our server, run in the workers (not graded in sandboxes); full waits, so that the cases overlap.
    run = run_command_line("-j", "2", "--cases", str(cases), "--logs", str(logs), "--strict-waits")
    assert run.returncode == 1, f"expected exit status 1 after failures, got {run.returncode}:\n{run.stdout}{run.stderr}"
    finished = [line.split()[:2] for line in run.stdout.splitlines() if re.match(r"(PASS|FAIL)  \S+  \(", line)]
    assert sorted(finished) == [["FAIL", "2_bad"], ["FAIL", "4_bad"], ["PASS", "1_good"], ["PASS", "3_good"]], run.stdout
    table = run.stdout[run.stdout.index("\nTest "):].splitlines()[2:6]
    assert [row.split()[0] for row in table] == ["1_good", "2_bad", "3_good", "4_bad"], "the table is in case order"
    assert run.stdout.splitlines()[-2] == "Score: 4/8; 2 of 4 tests passed", run.stdout
    assert "oak.hosts_db: expected 0 item(s) []" in run.stdout, run.stdout

    workers: Dict[str, tuple] = {}  # pid -> its port block
    used: Dict[int, str] = {}  # port -> the case that used it
    for log in sorted(logs.glob("*.log")):
        text = log.read_text()
        pid, low, high = re.search(r"worker   process (\d+), port block (\d+)-(\d+)", text).groups()
        assert workers.setdefault(pid, (int(low), int(high))) == (int(low), int(high))
        ports = [int(port) for port in re.findall(r": (\d+)", re.search(r"ports    (\{.*\})", text).group(1))]
        for port in ports:
            assert int(low) <= port <= int(high), f"{log.stem} used port {port}, outside its worker's block {low}-{high}"
            assert port not in used, f"port {port} was used by both {used.get(port)} and {log.stem}"
            used[port] = log.stem
    assert len(workers) == 2, f"expected the cases to be spread over 2 worker processes, saw {workers}"
    (first_low, first_high), (second_low, second_high) = sorted(workers.values())
    assert first_high < second_low, f"the two workers' port blocks overlap: {sorted(workers.values())}"


def test_keep_ports_runs_one_case_at_a_time(tmp_path: Path) -> None:
    # Cases as written share ports (all of ours start at 7017), so they cannot run side by side.
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("1_a", "2_b"):
        write_case(cases, name, ["LAUNCHSERVER --id 1 --servername oak --port 0", "WAIT 0.1", "KILL ALL"],
                   {"oak": {"hosts_db": []}})
    run = run_command_line("-j", "2", "--keep-ports", "--cases", str(cases), "--logs", str(tmp_path / "Logs"))
    assert run.returncode == 0, run.stdout + run.stderr
    pids = {re.search(r"worker   process (\d+)", log.read_text()).group(1) for log in (tmp_path / "Logs").glob("*.log")}
    assert len(pids) == 1, f"expected both cases in one process, saw processes {pids}"


# ---------------------------------------------------------------------------------------------
# The drawing of a failed network

def test_a_failure_draws_the_network_naming_missing_and_extra_items(tmp_path: Path) -> None:
    wrong = dict(CHAT_STATE, oak={"hosts_db": [2, 11], "adjacent_server_ids": [2], "adjacent_user_ids": [11]},
                 bob={"connected_user_ids": [11, 2]})
    case = write_case(tmp_path, "wrong", chat_case(0.3), wrong)
    result = manager.run_case(case, manager.Settings(logs_dir=tmp_path / "Logs"))
    assert not result.passed
    assert result.drawing.split("\n\n", 1)[1] == """\
oak (1)   <-- not as expected
|   links    elm (2)
|   clients  ada (11)
|   hosts    elm (2), ada (11), bob (12)
|            extra: bob (12)
|-- client ada (11)
|       knows    bob (12)
`-- elm (2)
    |   links    oak (1)
    |   clients  bob (12)
    |   hosts    oak (1), ada (11), bob (12)
    `-- client bob (12)   <-- not as expected
            knows    ada (11)
                     missing: elm (2)""", result.drawing
    assert result.drawing in (tmp_path / "Logs" / "wrong.log").read_text(), "the log lacks the drawing"
    assert manager.run_case(write_case(tmp_path, "right", chat_case(0.3), CHAT_STATE),
                            manager.Settings(logs_dir=tmp_path / "Logs")).drawing == "", "a passing case has no drawing"


def test_the_drawing_fits_100_columns_and_shows_every_server_once() -> None:
    servers = [MachineView(f"server{n}", "server", 4000000000 + n, f"server{(n - 1) // 2}" if n > 1 else None)
               for n in range(1, 12)]
    ids = [view.id for view in servers]
    clients = [MachineView(f"client{n}", "client", 4100000000 + n, f"server{n}", {"connected_user_ids": []})
               for n in range(1, 9)]
    all_ids = ids + [client.id for client in clients]
    for view in servers:
        neighbours = [other.id for other in servers if other.attached_to == view.name or view.attached_to == other.name]
        view.seen = {"adjacent_server_ids": neighbours, "adjacent_user_ids": [], "hosts_db": [i for i in all_ids if i != view.id]}
        view.expected = {"hosts_db": [i for i in all_ids if i != view.id] + [7]}
    drawing = draw_network(servers + clients).splitlines()
    assert max(len(line) for line in drawing) <= 100, "\n".join(line for line in drawing if len(line) > 100)
    headers = [line for line in drawing if re.search(r"server\d+ \(\d+\)( |$)", line) and "hosts" not in line
               and "links" not in line and "missing" not in line and "client " not in line]
    assert len(headers) == 11, "expected each of the 11 servers drawn once:\n" + "\n".join(drawing)
    assert sum("missing: 7" in line for line in drawing) == 11, "\n".join(drawing)


def test_the_drawing_shows_servers_that_are_not_linked_and_clients_without_a_server() -> None:
    views = [
        MachineView("ash", "server", 201, None, {"adjacent_server_ids": [], "hosts_db": []}, {"adjacent_server_ids": [202]}),
        MachineView("fir", "server", 202, "ash", {"adjacent_server_ids": [], "hosts_db": []}),
        MachineView("rogue", "server", 201, "fir", {"adjacent_server_ids": [], "hosts_db": []}),
        MachineView("kim", "client", 9, None, {"connected_user_ids": "<unreadable: no such attribute>"}, {"connected_user_ids": []}),
    ]
    drawing = draw_network(views)
    assert "fir (202)   (not linked to the servers above)" in drawing, drawing
    assert "rogue (201)   (not linked to the servers above)" in drawing, drawing
    assert "missing: fir (202)" in drawing, drawing
    assert "clients on no launched server:\nclient kim (9)   <-- not as expected" in drawing, drawing
    assert "could not be read" in drawing, drawing


# ---------------------------------------------------------------------------------------------
# Results files

def two_cases(folder: Path) -> None:
    for name, hosts, weight in (("1_good", [11], 2), ("2_bad", [], 3)):
        write_case(folder, name, [
            "LAUNCHSERVER --id 1 --servername oak --port 4100",
            "WAIT 0.3",
            "LAUNCHCLIENT --id 11 --serverhost localhost --serverport 4100 --username ada",
            "WAIT 0.3",
            "KILL ALL",
        ], {"oak": {"hosts_db": hosts}}, weight=weight, family="clients")


def test_gradescope_results_carry_each_test_its_points_and_the_failure_explained(tmp_path: Path) -> None:
    two_cases(tmp_path)
    results = tmp_path / "results.json"
    run = run_command_line("--cases", str(tmp_path), "--logs", str(tmp_path / "Logs"), "--gradescope", str(results))
    assert run.returncode == 1, run.stdout + run.stderr
    data = json.loads(results.read_text())
    assert data["score"] == 2 and data["visibility"] == "visible" and data["execution_time"] >= 0, data
    assert [(test["name"], test["score"], test["max_score"], test["status"]) for test in data["tests"]] == \
        [("1_good", 2, 2, "passed"), ("2_bad", 0, 3, "failed")], data["tests"]
    for test in data["tests"]:
        assert test["visibility"] == "visible" and test["tags"] == ["clients"], test
    bad = data["tests"][1]["output"]
    assert "oak.hosts_db: expected 0 item(s) []" in bad, bad
    assert "oak (1)   <-- not as expected" in bad and "extra: ada (11)" in bad, bad
    assert data["tests"][0]["output"].startswith("passed in "), data["tests"][0]


def test_junit_xml_parses_and_has_a_testcase_per_case_with_failures_explained(tmp_path: Path) -> None:
    two_cases(tmp_path)
    report = tmp_path / "junit.xml"
    run = run_command_line("--cases", str(tmp_path), "--logs", str(tmp_path / "Logs"), "--junit", str(report))
    assert run.returncode == 1, run.stdout + run.stderr
    root = ElementTree.parse(report).getroot()
    suite = root.find("testsuite")
    assert root.tag == "testsuites" and suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0"), suite.attrib
    cases = suite.findall("testcase")
    assert [(case.get("name"), case.get("classname")) for case in cases] == \
        [("1_good", "crc.clients"), ("2_bad", "crc.clients")]
    assert all(float(case.get("time")) >= 0 for case in cases)
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "oak.hosts_db: expected 0 item(s) []", \
        failure is not None and failure.attrib
    assert "extra: ada (11)" in failure.text, failure.text


def test_junit_xml_stays_well_formed_with_control_characters_in_an_explanation() -> None:
    result = manager.CaseResult("odd", manager.FAILED, 0.1, ["kim.status_updates_log: found ['\x01\x1b[31m']"], 1,
                                "status")
    root = ElementTree.fromstring(junit_xml([result], 0.1))
    assert "\ufffd" in root.find("testsuite/testcase/failure").text


# ---------------------------------------------------------------------------------------------
# Case files and the demo

def test_an_unknown_top_level_key_is_a_warning_in_the_log_not_an_error(tmp_path: Path) -> None:
    case = write_case(tmp_path, "extra_key", chat_case(0.3), CHAT_STATE, points_possible=10)
    result = manager.run_case(case, manager.Settings(logs_dir=tmp_path / "Logs"))
    assert result.passed, result.explanation
    log = (tmp_path / "Logs" / "extra_key.log").read_text()
    assert "warning: ignored the unknown top-level key 'points_possible'" in log, log[:800]


def test_the_demo_starts_a_network_shows_chats_and_a_quit_and_exits_0() -> None:
    run = run_command_line("--demo", timeout=60)
    assert run.returncode == 0, f"expected exit status 0, got {run.returncode}:\n{run.stdout}{run.stderr}"
    for seen in ("server gamma (id 3) listening on 127.0.0.1:", "joined beta",
                 "[alice sees] [server] Welcome to the Clemson Relay Chat network alice",
                 "[carol sees] alice: hi carol, this crosses all three servers",
                 "[alice sees] carol: hello alice!",
                 "[alice sees] [server] Unknown ID 999",
                 "[carol sees] * bob left: see you",
                 "`-- gamma (3)"):
        assert seen in run.stdout, f"expected {seen!r} in the demo's output:\n{run.stdout}"
    assert run.stderr == "", run.stderr
    # Issue 19: the servers' trace (raw bytes) reached the terminal, from their own threads, and a line of
    # it could be glued to one of the demo's.
    traced = [line for line in run.stdout.splitlines() if "Host ID #" in line or "\t" in line]
    assert not traced, "expected no trace line in the demo; it printed:\n" + "\n".join(traced[:5])
    glued = [line for line in run.stdout.splitlines() if " sees] " in line and not re.match(r"    \[\w+ sees\] ", line)]
    assert not glued, "expected each event on a line of its own; these are glued:\n" + "\n".join(glued)


# ---------------------------------------------------------------------------------------------
# Issue 10: the manager on a shared machine, and failures that point at their cause

def test_ports_come_from_the_range_given_and_a_case_may_be_named_by_its_file(tmp_path: Path) -> None:
    case = write_case(tmp_path, "ranged", chat_case(0.2), CHAT_STATE)
    logs = tmp_path / "Logs"
    run = run_command_line("--ports", "23000-23099", "--logs", str(logs), str(case))
    assert run.returncode == 0, run.stdout + run.stderr
    used = [int(port) for port in re.findall(r": (\d+)", re.search(r"ports    (\{.*\})", (logs / "ranged.log").read_text()).group(1))]
    assert used and all(23000 <= port <= 23099 for port in used), f"ports {used} are outside 23000-23099"


def test_a_failure_says_where_its_logs_are(tmp_path: Path) -> None:
    case = write_case(tmp_path, "wrong", chat_case(0.2), dict(CHAT_STATE, oak={"hosts_db": []}))
    logs = tmp_path / "Logs"
    run = run_command_line("--logs", str(logs), str(case))
    assert run.returncode == 1 and f"logs: {logs / 'wrong.log'}, {logs / 'wrong'}" in run.stdout, run.stdout


def test_a_relative_logs_folder_holds_every_log_of_the_case_and_is_the_one_printed(tmp_path: Path) -> None:
    case = write_case(tmp_path, "wrong", chat_case(0.2), dict(CHAT_STATE, oak={"hosts_db": []}))
    run = subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), "--logs", "mine", str(case)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    logs = tmp_path / "mine"
    assert run.returncode == 1 and f"logs: {logs / 'wrong.log'}, {logs / 'wrong'}" in run.stdout, run.stdout
    assert (logs / "wrong" / "oak.log").is_file(), \
        f"a server's log belongs in the folder given; found {sorted(str(path) for path in logs.rglob('*'))}"


BUGGY_SERVER = '''
from ChatServer import CRCServer as Ours

class CRCServer(Ours):
    def handle_client_chat_message(self, io_device, message):
        raise KeyError("a bug in the chat handler")
'''


def test_a_handlers_exception_appears_in_the_failing_tests_report(tmp_path: Path) -> None:
    server = submission(tmp_path, "buggy", BUGGY_SERVER.replace("from ChatServer import", "from ChatServerBase import"))
    case = write_case(tmp_path, "chat", chat_case(0.2), CHAT_STATE)
    result = manager.run_case(case, manager.Settings(server_path=server, logs_dir=tmp_path / "Logs"))
    assert not result.passed
    text = result.explanation
    assert "logged an unexpected error: unexpected error while serving client ada (11)" in text, text
    assert "Traceback (most recent call last)" in text and "KeyError: 'a bug in the chat handler'" in text, text


SHARED_LOGGER_SERVER = '''
import logging
from ChatServerBase import CRCServer as Ours

class CRCServer(Ours):
    def init_logging(self):
        self.logger = logging.getLogger("crc submission")  # one logger for every server, as many submissions have
        super().init_logging()

    def handle_client_chat_message(self, io_device, message):
        super().handle_client_chat_message(io_device, message)
        raise KeyError("a bug after the chat was passed on")
'''


@pytest.mark.parametrize("as_course", [False, True])
def test_a_logged_error_is_reported_once_per_case_and_under_as_course_shown_but_not_failed(
        tmp_path: Path, as_course: bool) -> None:
    server = submission(tmp_path, "shared", SHARED_LOGGER_SERVER)
    case = write_case(tmp_path, "chat", chat_case(0.2), CHAT_STATE)
    settings = manager.Settings(server_path=server, logs_dir=tmp_path / "Logs", as_course=as_course)
    for run in range(2):  # a second case in the same process must not hear the first case's servers
        result = manager.run_case(case, settings)
        assert result.passed == as_course, result.explanation
        # Each of the two servers on the chat's way hits the bug once; the logger they share must not
        # make every error come out once per server, nor stay hooked for the next case.
        text = result.explanation
        assert text.count("logged an unexpected error") == 2, f"run {run + 1}: {text}"
        assert "server oak logged an unexpected error: unexpected error while serving client ada (11)" in text, text
        assert "server elm logged an unexpected error: unexpected error while serving server oak (1)" in text, text
        assert "KeyError: 'a bug after the chat was passed on'" in text, text


STUCK_SERVER = '''
import time
from ChatServerBase import CRCServer as Ours

class CRCServer(Ours):
    def handle_client_chat_message(self, io_device, message):
        time.sleep(30)  # stuck in a handler, as a broken submission might be
'''


def test_a_time_out_names_the_machines_still_busy_and_where_they_are(tmp_path: Path) -> None:
    server = submission(tmp_path, "stuck", STUCK_SERVER)
    case = write_case(tmp_path, "stuck", chat_case(0.2), CHAT_STATE)
    result = manager.run_case(case, manager.Settings(server_path=server, logs_dir=tmp_path / "Logs", timeout=1))
    text = result.explanation
    assert text.startswith("time limit: the test was still running"), text
    assert re.search(r"server oak: busy, in handle_client_chat_message \(ChatServer\.py, line 7\)", text), text


def test_gradescope_and_the_mutant_matrix_count_only_graded_cases(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # A case error counts for nothing: not as a test in Gradescope's summary, not as points in the matrix.
    good = manager.CaseResult("1_good", manager.PASSED, 0.1, [], 2)
    broken = manager.CaseResult("2_broken", manager.CASE_ERROR, 0.0, [], 3, case_errors=["command 1: no"])
    data = gradescope_results([good, broken], 0.2)
    assert data["output"] == "1 of 1 tests passed; 2 of 2 points", data["output"]
    paths = [write_case(tmp_path, "1_good", [], {}, weight=2), write_case(tmp_path, "2_broken", [], {}, weight=3)]
    manager.print_mutant_matrix(paths, [good, broken] * len(manager.MUTANTS), require_kill=False)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(manager.MUTANTS[0].name)]
    assert rows and rows[0].endswith("   2/2"), rows


UNREADABLE_SERVER = '''
from ChatServerBase import CRCServer as Ours


class CRCServer(Ours):
    def __getattribute__(self, name):
        if name == "adjacent_user_ids" and object.__getattribute__(self, "request_terminate"):
            raise AttributeError("a half-written server lost its adjacent_user_ids")
        return object.__getattribute__(self, name)
'''


def test_a_key_that_cannot_be_read_fails_the_case_and_is_marked_in_the_drawing(tmp_path: Path) -> None:
    server = submission(tmp_path, "unreadable", UNREADABLE_SERVER)
    case = write_case(tmp_path, "chat", chat_case(0.2), CHAT_STATE)
    result = manager.run_case(case, manager.Settings(server_path=server, logs_dir=tmp_path / "Logs"))
    assert not result.passed and "oak.adjacent_user_ids: expected [11], but it could not be read" in result.explanation, \
        result.explanation
    assert "oak (1)   <-- not as expected" in result.drawing, result.drawing


# ------------------------------------------------------------------- errors in any thread of a case

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
