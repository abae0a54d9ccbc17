"""The manager reads case files as the course's harness does, finds the mistakes in them, and grades
as the course does when asked (issue 9).

The course's own 20 files are not in this repository. `course_style()` turns our cases into files
written the way the course's are: hosts that resolve nowhere (`theshire`), no weight, family or
description, `sent_messages_asdqw` expecting [], and the course's kinds of mistakes added on purpose
(adjacency lists that contradict the commands, an entry for a misspelt machine).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
from netkit import ROOT, write_case

import ChatTestManager as manager
from ChatMessageParser import ServerRegistrationMessage
from ChatServer import CRCServer
from CRCTestManager import CRCTestManager

CASES = manager.select_cases(ROOT / "TestCases", [])
HOSTS = ["theshire", "rivendell", "mordor", "gondor"]


def course_style(path: Path, folder: Path) -> Path:
    """One of our cases as the course would write it: hosts that resolve nowhere, the course's keys only."""
    data = json.loads(path.read_text())
    lines = []
    for number, line in enumerate(data["commands"]):
        host = HOSTS[number % len(HOSTS)]
        lines.append(re.sub(r"--(connect_to_host|serverhost) \S+", rf"--\1 {host}", line))
    final_state = {}
    for name, state in data["final_state"].items():
        final_state[name] = {key: value for key, value in state.items() if key != "sent_chunks"}
    copy = folder / path.name
    copy.write_text(json.dumps({"type": data["type"], "commands": lines, "final_state": final_state}, indent=2))
    return copy


# Two servers linked by port, a client on each; used below with one mistake at a time.
NETWORK = [
    "LAUNCHSERVER --id 1 --servername oak --port 5100 --info root",
    "WAIT 0.2",
    "LAUNCHSERVER --id 2 --servername elm --port 5200 --connect_to_host theshire --connect_to_port 5100",
    "WAIT 0.2",
    "LAUNCHCLIENT --id 11 --serverhost mordor --serverport 5100 --username ada",
    "LAUNCHCLIENT --id 12 --serverhost gondor --serverport 5200 --username bob",
    "WAIT 0.3",
    "KILL ALL",
]
RIGHT = {
    "oak": {"hosts_db": [2, 11, 12], "adjacent_server_ids": [2], "adjacent_user_ids": [11]},
    "ada": {"connected_user_ids": [12], "status_updates_log": ["Welcome to the Clemson Relay Chat network ada"]},
}


def test_every_case_written_the_courses_way_passes_with_hosts_that_resolve_nowhere(tmp_path: Path) -> None:
    folder = tmp_path / "course"
    folder.mkdir()
    paths = [course_style(path, folder) for path in CASES]
    settings = manager.Settings(logs_dir=tmp_path / "Logs")
    failed = {result.name: result.explanation for result in (manager.run_case(path, settings) for path in paths)
              if not result.passed or result.case_errors}
    assert not failed, f"expected every case to pass without case errors; these did not: {failed}"


@pytest.mark.parametrize("final_state, where, problem", [
    (dict(RIGHT, eml={"hosts_db": [1]}), "final_state['eml']", "no command launches a machine named 'eml'"),
    ({"oak": dict(RIGHT["oak"], hosts_db=[2, 11, 12, 99])}, "final_state['oak']['hosts_db']",
     "the file expects ids [99], which no command launches"),
    ({"oak": dict(RIGHT["oak"], adjacent_server_ids=[])}, "final_state['oak']['adjacent_server_ids']",
     "the file says []; its commands imply [2] (only ports count)"),
    ({"oak": dict(RIGHT["oak"], adjacent_user_ids=[11, 12])}, "final_state['oak']['adjacent_user_ids']",
     "the file says [11, 12]; its commands imply [11]"),
    ({"oak": dict(RIGHT["oak"], hosts_db=[1, 2, 11, 12])}, "final_state['oak']['hosts_db']",
     "hosts_db holds only other machines"),
    ({"oak": dict(RIGHT["oak"], adjacent_servers=[2])}, "final_state['oak']['adjacent_servers']",
     "unknown key for a server"),
])
def test_the_lint_names_each_mistake_and_the_grade_ignores_only_that_key(
        tmp_path: Path, final_state: Dict[str, Any], where: str, problem: str) -> None:
    # The welcome ada expects is wrong too: that key is graded, so the case must still fail on it.
    final_state = dict(final_state, ada={"status_updates_log": ["Welcome to the Clemson Relay Chat network eve"]})
    path = write_case(tmp_path, "mistaken", NETWORK, final_state)
    findings = [str(finding) for finding in manager.lint(manager.load_case(path))]
    assert any(finding.startswith(where) and problem in finding for finding in findings), \
        f"expected the lint to say {where}: ...{problem}...; it said {findings}"
    result = manager.run_case(path, manager.Settings(logs_dir=tmp_path / "Logs"))
    assert result.case_errors == findings
    assert [problem.split(":")[0] for problem in result.problems] == ["ada.status_updates_log"], result.explanation
    assert f"case error (not graded): {findings[0]}" in (tmp_path / "Logs" / "mistaken.log").read_text()


def test_the_lint_names_mistakes_in_the_commands(tmp_path: Path) -> None:
    nowhere = write_case(tmp_path, "nowhere", NETWORK[:2] + [
        "LAUNCHSERVER --id 2 --servername elm --port 5200 --connect_to_host theshire --connect_to_port 5999",
        "LAUNCHCLIENT --id 11 --serverhost mordor --serverport 5300 --username ada", "KILL ALL"],
        {"oak": {"hosts_db": []}})
    (first, second) = manager.lint(manager.load_case(nowhere))
    assert str(first) == ("command 3 'LAUNCHSERVER --id 2 --servername elm --port 5200 --connect_to_host theshire"
                          " --connect_to_port 5999': elm joins port 5999, where nobody listens at that point")
    assert str(second).startswith("command 4") and "ada joins port 5300" in str(second)
    assert not first.whole_case, "a join to nowhere is reported; what it proves wrong is not graded key by key"

    same_port = write_case(tmp_path, "same_port", ["LAUNCHSERVER --id 1 --servername oak --port 5100",
                                              "LAUNCHSERVER --id 2 --servername elm --port 5100", "KILL ALL"],
                          {"oak": {"hosts_db": []}})
    (finding,) = manager.lint(manager.load_case(same_port))
    assert finding.whole_case and "port 5100 is taken: server oak listens there already" in str(finding)
    result = manager.run_case(same_port, manager.Settings(logs_dir=tmp_path / "Logs"))
    assert result.status == manager.CASE_ERROR and result.graded_weight == 0 and result.score == 0

    bad_wait = write_case(tmp_path, "bad_wait", NETWORK[:1] + ["WAIT soon", "KILL ALL"], {})
    run = subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), "--lint", str(bad_wait)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "ERROR  bad_wait" in run.stdout and "command 2 'WAIT soon': WAIT needs one number of seconds" in run.stdout


def test_an_id_free_again_after_a_quit_or_a_kill_is_taken_by_the_next_without_a_case_error(tmp_path: Path) -> None:
    path = write_case(tmp_path, "reuse", [
        "LAUNCHSERVER --id 1 --servername oak --port 5100",
        "WAIT 0.2",
        "LAUNCHCLIENT --id 5 --serverhost mordor --serverport 5100 --username ada",
        "LAUNCHCLIENT --id 6 --serverhost mordor --serverport 5100 --username cy",
        "WAIT 0.3",
        'CLIENTCOMMAND --username ada --command QUIT "bye"',
        "KILL cy",
        "WAIT 0.3",
        "LAUNCHCLIENT --id 5 --serverhost mordor --serverport 5100 --username bob",
        "LAUNCHCLIENT --id 6 --serverhost mordor --serverport 5100 --username dee",
        "WAIT 0.3",
        "KILL ALL",
    ], {"oak": {"hosts_db": [5, 6], "adjacent_user_ids": [5, 6]}, "bob": {"connected_user_ids": [6]}})
    assert manager.lint(manager.load_case(path)) == [], "ids 5 and 6 were free again: nobody was refused"
    result = manager.run_case(path, manager.Settings(logs_dir=tmp_path / "Logs"))
    assert result.passed and not result.case_errors, result.explanation


def test_our_own_cases_are_lint_clean() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), "--lint"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == f"0 error(s) in {len(CASES)} case(s)", run.stdout


def test_as_course_compares_only_the_courses_keys_and_skips_unknown_machines(tmp_path: Path) -> None:
    final_state = {"oak": dict(RIGHT["oak"], adjacent_server_ids=[7], adjacent_user_ids=[]),
                   "ada": RIGHT["ada"], "eml": {"hosts_db": [1]}}
    path = write_case(tmp_path, "as_course", NETWORK, final_state)
    result = manager.run_case(path, manager.Settings(logs_dir=tmp_path / "Logs", as_course=True))
    assert result.passed, result.explanation
    assert result.unchecked == ["oak.adjacent_server_ids", "oak.adjacent_user_ids"], result.unchecked
    assert "left unchecked, as the course's checker does: oak.adjacent_server_ids, oak.adjacent_user_ids" \
        in result.explanation
    wrong_hosts = write_case(tmp_path, "wrong_hosts", NETWORK, {"oak": {"hosts_db": [2, 11, 12, 99]}})
    graded = manager.run_case(wrong_hosts, manager.Settings(logs_dir=tmp_path / "Logs", as_course=True))
    assert not graded.passed and graded.problems[0].startswith("oak.hosts_db"), graded.explanation
    assert "case error (graded all the same, as the course does): final_state['oak']['hosts_db']" \
        in graded.explanation and "not graded" not in graded.explanation, graded.explanation


def test_connectivity_cases_record_what_each_server_receives_and_nothing_in_sent_messages(tmp_path: Path) -> None:
    elm_joins = ServerRegistrationMessage.bytes(2, 0, "elm", "").hex()
    path = write_case(tmp_path, "links", NETWORK[:4] + ["KILL ALL"], {
        "oak": {"recvd_messages_asdqw": [elm_joins], "sent_messages_asdqw": [], "sent_chunks": []},
        "elm": {"recvd_messages_asdqw": [], "sent_messages_asdqw": [], "sent_chunks": [elm_joins]},
    }, type="network_connectivity")
    result = manager.run_case(path, manager.Settings(logs_dir=tmp_path / "Logs"))
    assert result.passed and not result.case_errors, result.explanation


def test_the_log_keeps_the_trace_with_a_line_per_command_and_kill_all_goes_in_launch_order(tmp_path: Path) -> None:
    path = write_case(tmp_path, "logged", NETWORK, RIGHT)
    assert manager.run_case(path, manager.Settings(logs_dir=tmp_path / "Logs")).passed
    log = (tmp_path / "Logs" / "logged.log").read_text()
    trace = log.partition("\ntrace (")[2].splitlines()[1:]
    port = re.search(r"oak: port (\d+)", log).group(1)  # type: ignore[union-attr]
    oak = [line for line in trace if line.startswith("[oak]")]
    assert trace[0] == f"*CMD {NETWORK[0]}" and oak[:3] == [
        "[oak] \tLaunching server oak...", "[oak] \tConfiguring the server socket...",
        f"[oak] \tListening for new connections on port {port}"], trace[:6]
    assert trace.index(f"*CMD {NETWORK[2]}") < trace.index("[elm] \tLaunching server elm..."), trace
    stops = re.findall(r"stopping (?:server|client) (\w+)", log)
    assert stops == ["oak", "elm", "ada", "bob"], f"KILL ALL must stop the machines in launch order, saw {stops}"


class MuteServer(CRCServer):
    """A server written for the course's kit: nothing our quiet waits read (Testers/quiet.py)."""

    serving = property(None, lambda self, value: None)  # type: ignore[assignment]  # set, never read


class MuteServerWithoutChats(MuteServer):
    def handle_client_chat_message(self, io_device: Any, message: Any) -> None:
        pass


def test_a_server_written_for_the_courses_kit_runs_course_style_cases_with_full_waits(tmp_path: Path) -> None:
    folder = tmp_path / "course"
    folder.mkdir()
    paths = [course_style(path, folder) for path in manager.select_cases(ROOT / "TestCases", ["1_1", "3_3", "4_2"])]
    settings = manager.Settings(logs_dir=tmp_path / "Logs", server_class=MuteServer)
    for path in paths:
        result = manager.run_case(path, settings)
        assert result.passed, f"{path.stem}: {result.explanation}"
        assert result.waits and all(wait.why.startswith("full time: server") for wait in result.waits), result.waits


def test_an_autograder_script_drives_crctestmanager_as_the_course_does() -> None:
    tests = {"4_2_chat_1_hop": 3, "3_1_clients_1_server_1_client": 3}  # results come in sorted order all the same
    log = ROOT / "Logs" / "4_2_chat_1_hop.log"
    log.unlink(missing_ok=True)  # left by an earlier run, it would prove nothing
    score, results = CRCTestManager(CRCServerImpl=MuteServer, catch_exceptions=True).run_tests(tests)
    assert type(score) is int, f"integer points give an integer score, as the course's: {score!r}"
    assert score == 6 and [(r["test"], r["passed"], r["errors"], r["exception"]) for r in results] == [
        ("3_1_clients_1_server_1_client", True, None, None), ("4_2_chat_1_hop", True, None, None)], results
    assert log.is_file(), f"run_tests must write {log}, as the course's does"

    score, results = CRCTestManager(CRCServerImpl=MuteServerWithoutChats, catch_exceptions=True).run_tests(tests)
    assert score == 3 and [result["passed"] for result in results] == [True, False], results
    assert "bob.chat_messages_log: expected 1 item(s)" in results[1]["errors"], results[1]["errors"]


def test_python3_crctestmanager_runs_the_suite(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "CRCTestManager.py"), "5_", "--logs", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == "Score: 8/8; 4 of 4 tests passed", run.stdout


@pytest.mark.parametrize("as_course", [False, True])
@pytest.mark.parametrize("oak, complaint", [
    ({"hosts_db": 5}, "final_state['oak']['hosts_db']: must be a list of ids or texts, not 5"),
    ([1], "final_state['oak']: must be an object of keys to lists"),
])
def test_a_value_of_the_wrong_shape_is_a_case_error_in_every_mode_and_never_fails_the_server(
        tmp_path: Path, as_course: bool, oak: Any, complaint: str) -> None:
    # ada's welcome is wrong too: the rest of the case is still graded, and fails on that alone.
    path = write_case(tmp_path, "shapeless", NETWORK, {
        "oak": oak, "ada": {"status_updates_log": ["Welcome to the Clemson Relay Chat network eve"]}})
    result = manager.run_case(path, manager.Settings(logs_dir=tmp_path / "Logs", as_course=as_course))
    assert f"case error (not graded): {complaint}" in result.case_error_lines, result.explanation
    assert [problem.split(":")[0] for problem in result.problems] == ["ada.status_updates_log"], result.explanation
    assert result.exception is None, result.explanation
    assert "oak (1)\n" in result.drawing and "oak (1)   <--" not in result.drawing, result.drawing


def test_a_value_of_the_wrong_shape_does_not_stop_a_run_as_the_course(tmp_path: Path) -> None:
    path = write_case(tmp_path, "shapeless", NETWORK, {"oak": {"hosts_db": 5}})
    run = subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), "--as-course", "-j", "1",
                          "--logs", str(tmp_path / "Logs"), str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert "case error (not graded): final_state['oak']['hosts_db']: must be a list" in run.stdout, run.stdout


def test_as_course_draws_and_labels_graded_only_what_the_course_compares(tmp_path: Path) -> None:
    # oak's adjacency list is wrong and eml was never launched: the course compares neither. oak's hosts_db
    # names oak itself: a case error the course grades. ada expects bob twice: as sets the items agree and
    # only the count differs.
    final_state = {"oak": dict(RIGHT["oak"], adjacent_server_ids=[7], hosts_db=[1, 2, 11, 12]),
                   "eml": {"hosts_db": [1]}, "ada": {"connected_user_ids": [12, 12]}}
    path = write_case(tmp_path, "as_course_drawn", NETWORK, final_state)
    result = manager.run_case(path, manager.Settings(logs_dir=tmp_path / "Logs", as_course=True))
    assert [problem.split(":")[0] for problem in result.problems] == ["oak.hosts_db", "ada.connected_user_ids"], \
        result.explanation
    drawing = result.drawing.splitlines()
    links = next(index for index, line in enumerate(drawing) if line.startswith("|   links"))
    assert not drawing[links + 1].startswith("|         "), f"oak's links were not graded:\n{result.drawing}"
    assert "same items, but the counts differ" in result.drawing and "missing: bob" not in result.drawing, \
        result.drawing
    lines = result.case_error_lines
    assert any(line.startswith("case error (not graded): final_state['oak']['adjacent_server_ids']")
               for line in lines), lines
    assert any(line.startswith("case error (not graded): final_state['eml']") for line in lines), lines
    assert any(line.startswith("case error (graded all the same, as the course does): final_state['oak']['hosts_db']")
               for line in lines), lines


def test_crctestmanager_reports_a_server_that_cannot_load_per_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # As the course's autograder meets a submission with a syntax error: built, run, each case failed.
    broken = tmp_path / "ChatServer.py"
    broken.write_text("class CRCServer(:\n")
    monkeypatch.setattr(manager, "DEFAULT_SERVER", broken)
    grader = CRCTestManager(catch_exceptions=True)
    grader.logs_dir = tmp_path / "Logs"
    score, results = grader.run_tests({"3_1_clients_1_server_1_client": 3, "4_2_chat_1_hop": 3})
    assert score == 0 and [result["passed"] for result in results] == [False, False], results
    for result in results:
        assert f"error: cannot load {broken}: SyntaxError" in result["errors"], result["errors"]
        assert isinstance(result["exception"], SyntaxError), result
    assert "FAIL  4_2_chat_1_hop" in capsys.readouterr().out
    assert "cannot load" in (tmp_path / "Logs" / "4_2_chat_1_hop.log").read_text()
    strict = CRCTestManager()  # without catch_exceptions, the load error propagates, as in the course's manager
    strict.logs_dir = tmp_path / "Logs"
    with pytest.raises(SyntaxError):
        strict.run_tests({"3_1_clients_1_server_1_client": 3})
