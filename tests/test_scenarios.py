"""Every scenario case in TestCases/ against our server and client, and the test manager itself:
that it fails wrong expectations with a clear explanation, refuses unknown final-state keys, gives up on a hung
case, reports on the command line, parses commands as the contract says and loads a submission."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from netkit import ROOT, write_case

import ChatMessageParser
import ChatTestManager as manager
from Testers.checker import compare
from Testers.ports import PortMap

CASES = manager.select_cases(ROOT / "TestCases", [])


@pytest.fixture
def settings(tmp_path: Path) -> manager.Settings:
    return manager.Settings(logs_dir=tmp_path / "Logs")


ONE_SERVER_ONE_CLIENT = [
    "LAUNCHSERVER --id 7 --servername hub --port 4100 --info test",
    "WAIT 0.3",
    "LAUNCHCLIENT --id 70 --serverhost localhost --serverport 4100 --username kim --info k",
    "WAIT 0.5",
    "KILL ALL",
]


# ---------------------------------------------------------------------------------------------
# The scenario suite

@pytest.mark.parametrize("case_path", CASES, ids=[path.stem for path in CASES])
def test_scenario_case(case_path: Path, settings: manager.Settings) -> None:
    result = manager.run_case(case_path, settings)
    assert result.passed, f"{case_path.name} failed:\n{result.explanation}"


def test_the_suite_has_the_courses_families_and_weights() -> None:
    weights: Dict[str, List[float]] = {}
    for path in CASES:
        case = manager.load_case(path)
        weights.setdefault(case.family, []).append(case.weight)
    assert {family: ws for family, ws in weights.items() if family != "extra"} == {
        "connectivity": [7, 6, 5],
        "server networks": [7, 6, 5],
        "clients": [3, 3, 4, 3],
        "chat": [3, 3, 3],
        "status": [2, 2, 2, 2],
        "client quit": [3, 3, 3],
    }
    assert sum(sum(ws) for ws in weights.values()) == 75


# ---------------------------------------------------------------------------------------------
# Checking and reporting

def test_a_wrong_final_state_fails_naming_what_was_expected_and_found(tmp_path: Path, settings: manager.Settings) -> None:
    case = write_case(tmp_path, "wrong", ONE_SERVER_ONE_CLIENT, {
        "hub": {"hosts_db": [70], "adjacent_user_ids": [70]},
        "kim": {"status_updates_log": ["Welcome to the Clemson Relay Chat network kym"]},
    })
    result = manager.run_case(case, settings)
    assert not result.passed, "a case expecting the wrong welcome passed"
    assert result.problems == [
        "kim.status_updates_log: expected 1 item(s) ['Welcome to the Clemson Relay Chat network kym']\n"
        "                        found    1 item(s) ['Welcome to the Clemson Relay Chat network kim']\n"
        "                        missing ['Welcome to the Clemson Relay Chat network kym']\n"
        "                        extra   ['Welcome to the Clemson Relay Chat network kim']"
    ], result.explanation


def test_lists_compare_as_multisets_and_as_the_course_as_sets_plus_lengths() -> None:
    assert compare("x", [1, 2, 3], [3, 1, 2]) is None
    swapped = compare("x", ["ping", "ping", "hey"], ["ping", "hey", "hey"])  # one dropped, another doubled
    assert swapped is not None and "missing ['ping']" in swapped and "extra   ['hey']" in swapped, swapped
    assert compare("x", ["ping", "ping", "hey"], ["ping", "hey", "hey"], as_sets=True) is None, \
        "the course's checker cannot see this; --as-course must grade as it does"
    duplicated = compare("x", ["hi"], ["hi", "hi"], as_sets=True)
    assert duplicated is not None and "counts differ" in duplicated, duplicated


def test_a_case_grades_a_log_as_a_multiset_and_as_the_course_grades_it_with_as_course(
        tmp_path: Path, settings: manager.Settings) -> None:
    commands = [
        "LAUNCHSERVER --id 7 --servername hub --port 4100",
        "WAIT 0.2",
        "LAUNCHCLIENT --id 70 --serverhost localhost --serverport 4100 --username kim",
        "LAUNCHCLIENT --id 71 --serverhost localhost --serverport 4100 --username lee",
        "WAIT 0.3",
        'CLIENTCOMMAND --username kim --command MESSAGE 71 "ping"',
        'CLIENTCOMMAND --username kim --command MESSAGE 71 "hey"',
        'CLIENTCOMMAND --username kim --command MESSAGE 71 "hey"',
        "WAIT 0.3",
        "KILL ALL",
    ]
    expected = {"lee": {"chat_messages_log": ['"ping"', '"ping"', '"hey"']}}  # one ping short, one hey too many
    case = write_case(tmp_path, "counts", commands, expected)
    ours = manager.run_case(case, settings)
    assert ours.status == manager.FAILED and "missing ['\"ping\"']" in ours.explanation, ours.explanation
    as_course = manager.run_case(case, manager.Settings(logs_dir=tmp_path / "course", as_course=True))
    assert as_course.status == manager.PASSED, f"the course's checker compares sets: {as_course.explanation}"


@pytest.mark.parametrize("final_state, complaint", [
    ({"hub": {"host_db": []}}, "final_state['hub']['host_db']: unknown key for a server"),
    ({"hub": {"connected_user_ids": [70]}}, "final_state['hub']['connected_user_ids']: unknown key for a server"),
    ({"hub": {"recvd_messages_asdqw": []}}, "unknown key for a server in a CRC_functionality case"),
    ({"nobody": {"hosts_db": []}}, "final_state['nobody']: no command launches a machine named 'nobody'"),
    ({"hub": {"hosts_db": 70}}, "final_state['hub']['hosts_db']: must be a list"),
])
def test_a_final_state_the_checker_does_not_know_is_a_case_error_and_the_rest_is_graded(
        tmp_path: Path, settings: manager.Settings, final_state: dict, complaint: str) -> None:
    wrong_welcome = {"status_updates_log": ["Welcome to the Clemson Relay Chat network kym"]}
    result = manager.run_case(write_case(tmp_path, "bad", ONE_SERVER_ONE_CLIENT, dict(final_state, kim=wrong_welcome)),
                              settings)
    assert any(complaint in error for error in result.case_errors), \
        f"expected a case error containing {complaint!r}, got: {result.case_errors}"
    assert result.problems and result.problems[0].startswith("kim.status_updates_log"), \
        f"the rest of the case must still be graded: {result.explanation}"
    assert result.status == manager.FAILED and len(result.problems) == 1, result.explanation


HANGING_SERVER = '''
import time

class CRCServer:
    """Ignores request_terminate, as a broken submission might."""

    def __init__(self, options, run_on_localhost=False):
        self.request_terminate = False

    def run(self):
        give_up = time.monotonic() + 30  # so the abandoned thread does not outlive the test run by much
        while time.monotonic() < give_up:
            time.sleep(0.05)
'''


def test_a_hung_case_fails_at_the_time_limit(tmp_path: Path) -> None:
    server = tmp_path / "hung" / "ChatServer.py"
    server.parent.mkdir()
    server.write_text(HANGING_SERVER)
    case = write_case(tmp_path, "hangs", ["LAUNCHSERVER --id 1 --servername stuck --port 4200", "WAIT 0.1", "KILL ALL"],
                      {"stuck": {"hosts_db": []}})
    result = manager.run_case(case, manager.Settings(server_path=server, timeout=0.5, logs_dir=tmp_path / "Logs"))
    assert not result.passed
    assert "time limit" in result.explanation and "'KILL ALL'" in result.explanation, result.explanation


def test_slow_multiplies_a_wait_that_takes_its_full_time(tmp_path: Path) -> None:
    case = write_case(tmp_path, "fixed", ["LAUNCHSERVER --id 1 --servername one --port 4300", "WAIT 0.2", "KILL ALL"],
                      {"one": {"hosts_db": []}})
    result = manager.run_case(case, manager.Settings(slow=3, strict_waits=True, logs_dir=tmp_path / "Logs"))
    assert result.passed, result.explanation
    (wait,) = result.waits
    assert wait.asked == pytest.approx(0.6) and wait.took >= 0.6, f"expected a WAIT of 3 x 0.2 s, saw {wait}"


def test_slow_multiplies_every_wait(tmp_path: Path) -> None:
    # 300 s of WAIT slowed by 0.001 is 0.3 s; unslowed it would hit the 30 s time limit and fail.
    case = write_case(tmp_path, "long", ["LAUNCHSERVER --id 1 --servername one --port 4300", "WAIT 300", "KILL ALL"],
                      {"one": {"hosts_db": []}})
    result = manager.run_case(case, manager.Settings(slow=0.001, logs_dir=tmp_path / "Logs"))
    assert result.passed, result.explanation


def run_command_line(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), *arguments],
                          capture_output=True, text=True, timeout=120)


def test_the_command_line_prints_each_test_and_a_table_and_exits_nonzero_on_failure(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    write_case(cases, "1_good", ONE_SERVER_ONE_CLIENT, {"hub": {"adjacent_user_ids": [70]}}, weight=2)
    write_case(cases, "2_bad", ONE_SERVER_ONE_CLIENT, {"hub": {"hosts_db": []}}, weight=3)
    run = run_command_line("--cases", str(cases), "--logs", str(tmp_path / "Logs"))
    assert run.returncode == 1, f"expected exit status 1 after a failure, got {run.returncode}:\n{run.stdout}{run.stderr}"
    lines = run.stdout.splitlines()
    # A line per test as it finishes: in parallel workers (the default), either may finish first.
    finished = sorted(line.split("  ")[:2] for line in lines if line.startswith(("PASS  ", "FAIL  ")))
    assert finished == [["FAIL", "2_bad"], ["PASS", "1_good"]], run.stdout
    assert "hub.hosts_db: expected 0 item(s) []" in run.stdout, run.stdout
    assert lines[-2] == "Score: 2/5; 1 of 2 tests passed", run.stdout
    # The last line names the chart of the failed case, this run beside the reference.
    assert lines[-1] == ("Charts of the failed case(s), this run beside the reference:"
                         f" {(tmp_path / 'Logs' / '2_bad.html').resolve()}"), run.stdout
    assert "result   FAIL" in (tmp_path / "Logs" / "2_bad.log").read_text()
    assert (tmp_path / "Logs" / "2_bad" / "hub.log").exists(), "the server's own log is not in the case's folder"

    passing = run_command_line("--cases", str(cases), "--logs", str(tmp_path / "Logs"), "1_")
    assert passing.returncode == 0, f"expected exit status 0 when all pass:\n{passing.stdout}{passing.stderr}"


def test_the_command_line_lists_cases_and_refuses_names_that_match_nothing() -> None:
    listing = run_command_line("--list")
    assert listing.returncode == 0 and "4_3_chat_3_hops" in listing.stdout, listing.stdout + listing.stderr
    unknown = run_command_line("9_no_such_case")
    assert unknown.returncode == 2 and "9_no_such_case" in unknown.stderr, unknown.stdout + unknown.stderr


def test_names_and_prefixes_select_cases_in_natural_order(tmp_path: Path) -> None:
    for name in ["2_1_a", "2_10_b", "2_2_c", "4_3_d", "4_30_e", "5_1_f"]:
        (tmp_path / f"{name}.cfg").write_text("{}")
    chosen = manager.select_cases(tmp_path, ["2_", "4_3_", "5_1_f.cfg"])
    assert [path.stem for path in chosen] == ["2_1_a", "2_2_c", "2_10_b", "4_3_d", "5_1_f"]
    with pytest.raises(manager.CaseError, match="7_"):
        manager.select_cases(tmp_path, ["7_"])


# ---------------------------------------------------------------------------------------------
# Commands

@pytest.mark.parametrize("line, words", [
    ('MESSAGE 12 "Hi"', ["MESSAGE", "12", '"Hi"']),
    ('  MESSAGE   12   "Hi  there"  ', ["MESSAGE", "12", '"Hi  there"']),
    ('--info "two words" --id 3', ["--info", '"two words"', "--id", "3"]),
    ('a"b c"d e', ['a"b c"d', "e"]),
    ('QUIT ""', ["QUIT", '""']),
    ("\tWAIT\t1 ", ["WAIT", "1"]),
])
def test_arguments_split_on_white_space_keeping_quoted_runs_whole_with_their_quotes(line: str, words: List[str]) -> None:
    assert manager.split_arguments(line) == words


def test_an_unterminated_quote_is_an_error() -> None:
    with pytest.raises(manager.CaseError, match="unterminated"):
        manager.split_arguments('MESSAGE 1 "oops')


def test_client_commands_keep_the_quotes_in_the_text() -> None:
    message = manager.parse_command('CLIENTCOMMAND --username kim --command MESSAGE 70 "Hi there"')
    assert (message.username, message.action, message.destination, message.text) == ("kim", "MESSAGE", 70, '"Hi there"')
    quit_with_text = manager.parse_command('CLIENTCOMMAND --username kim --command QUIT "bye now"')
    assert (quit_with_text.action, quit_with_text.text) == ("QUIT", '"bye now"')
    assert manager.parse_command("CLIENTCOMMAND --username kim --command QUIT").text == ""


@pytest.mark.parametrize("line, complaint", [
    ("LAUNCHSERVER --servername x", "--port"),
    ("LAUNCHSERVER --servername x --port 1 --bogus 2", "--bogus"),
    ("LAUNCHCLIENT --username x --serverport nine", "nine"),
    ("CLIENTCOMMAND --username kim --command SHOUT hi", "SHOUT"),
    ("CLIENTCOMMAND --username kim --command MESSAGE bob hi", "destination id"),
    ("CLIENTCOMMAND --username kim --command MESSAGE \u00b2 hi", "destination id"),
    ("WAIT soon", "WAIT"),
    ("WAIT nan", "WAIT"),
    ("WAIT inf", "WAIT"),
    ("KILL", "KILL"),
    ("DANCE", "DANCE"),
])
def test_malformed_commands_are_errors_that_say_why(line: str, complaint: str) -> None:
    with pytest.raises(manager.CaseError, match=complaint):
        manager.parse_command(line)


def test_a_quoted_chat_arrives_with_its_quotes_and_spaces(tmp_path: Path, settings: manager.Settings) -> None:
    case = write_case(tmp_path, "quotes", ONE_SERVER_ONE_CLIENT[:-1] + [
        "LAUNCHCLIENT --id 71 --serverhost localhost --serverport 4100 --username lee --info l",
        "WAIT 0.3",
        'CLIENTCOMMAND --username kim --command MESSAGE 71 "Hi  there"',
        "WAIT 0.5",
        "KILL ALL",
    ], {"lee": {"chat_messages_log": ['"Hi  there"']}})
    result = manager.run_case(case, settings)
    assert result.passed, result.explanation


# ---------------------------------------------------------------------------------------------
# Ports and submissions

def test_written_ports_map_to_free_ports_consistently() -> None:
    ports = PortMap()
    first, second = ports(5000), ports(5001)
    assert ports(5000) == first and first != second and ports(None) is None
    for port in (first, second):
        with socket.socket() as probe:
            probe.bind(("", port))  # raises if the port were taken
    assert PortMap(keep=True)(5000) == 5000


def test_a_case_runs_even_when_its_written_port_is_taken_unless_ports_are_kept(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        case = write_case(tmp_path, "taken", [command.replace("4100", str(taken)) for command in ONE_SERVER_ONE_CLIENT],
                          {"hub": {"adjacent_user_ids": [70]}})
        remapped = manager.run_case(case, manager.Settings(logs_dir=tmp_path / "Logs"))
        assert remapped.passed, remapped.explanation
        kept = manager.run_case(case, manager.Settings(keep_ports=True, logs_dir=tmp_path / "Logs"))
        assert not kept.passed and "Address already in use" in kept.explanation, kept.explanation


def test_a_submission_imports_the_parser_beside_it_while_the_kit_keeps_ours(tmp_path: Path) -> None:
    (tmp_path / "ChatMessageParser.py").write_text("WHOSE = 'the submission'\n")
    (tmp_path / "ChatServer.py").write_text(
        "import ChatMessageParser\nPARSER = ChatMessageParser.WHOSE\n\nclass CRCServer:\n    pass\n")
    had_chat_server = "ChatServer" in sys.modules
    module = manager.load_server_module(tmp_path / "ChatServer.py")
    assert module.PARSER == "the submission"
    assert sys.modules["ChatMessageParser"] is ChatMessageParser, "the kit's parser was replaced by the submission's"
    assert ("ChatServer" in sys.modules) == had_chat_server and sys.modules.get("ChatServer") is not module


@pytest.mark.parametrize("commands, server, said", [
    (["LAUNCHSERVER --id 7 --servername hub --port 4100", "WAIT soon", "KILL ALL"], None,
     "command 2 'WAIT soon': WAIT needs one number of seconds"),
    (["LAUNCHSERVER --id 7 --servername hub --port 4100", "LAUNCHSERVER --id 8 --servername rim --port 4100",
      "KILL ALL"], None, "port 4100 is taken: server hub listens there already"),
    (ONE_SERVER_ONE_CLIENT, "class CRCServer(:\n", "cannot load"),
])
def test_a_case_that_cannot_run_still_writes_its_log_in_place_of_an_old_one(
        tmp_path: Path, commands: List[str], server: str, said: str) -> None:
    logs = tmp_path / "Logs"
    (logs / "broken").mkdir(parents=True)
    (logs / "broken.log").write_text("an earlier run's log, which would mislead")
    (logs / "broken" / "hub.log").write_text("an earlier run's server log")
    settings = manager.Settings(logs_dir=logs)
    if server:
        settings.server_path = tmp_path / "sub" / "ChatServer.py"
        settings.server_path.parent.mkdir()
        settings.server_path.write_text(server)
    result = manager.run_case(write_case(tmp_path, "broken", commands, {"hub": {"hosts_db": []}}), settings)
    log = (logs / "broken.log").read_text()
    assert "earlier run" not in log and said in log and f"result   {result.status}" in log, log
    assert not (logs / "broken").exists(), "an earlier run's machine logs would mislead"
    assert result.logs == [logs / "broken.log"], result.logs
