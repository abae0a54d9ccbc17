"""Every command line of the kit (ChatServer.py, ChatClient.py, ChatTestManager.py, CRCTestManager.py)
answers each bad value with one line that names the option and what is wrong, and a non-zero exit status:
2 for a value refused before anything starts, 1 for what only trying shows (a port in use, an address
that is no address); never a traceback, and never after work was done and lost (issues 10 and 19)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest
from netkit import ROOT

SERVER = ["ChatServer.py", "--servername", "a"]
CLIENT = ["ChatClient.py", "-S", "127.0.0.1", "-P", "1"]
LONG_NAME = "x" * 256
# Paths that cannot be written, even by root: a folder that does not exist, a file where a folder must
# be, a folder where a file must be, and a read-only file system.
NO_FOLDER = "/no/such/folder/out.txt"
UNDER_A_FILE = str(ROOT / "README.md" / "out.txt")
A_FOLDER = str(ROOT / "tests")
READ_ONLY = "/sys/crc-test-out.txt"


def manager_cases(program: str) -> List[Tuple[List[str], str, int]]:
    """The bad values of a test manager's command line; both names take the same options."""
    return [
        ([program, "--server", "no/such/ChatServer.py"], "cannot load no/such/ChatServer.py: no such file", 2),
        ([program, "--server", "tests"], "cannot load tests: it is a folder, not a file", 2),
        ([program, "--cases", "no/such/folder"], "--cases no/such/folder: no such folder", 2),
        ([program, "--cases", "README.md"], "--cases README.md: no such folder", 2),
        ([program, "9_no_such_case"], "no case in", 2),
        ([program, "--ports", "9000"], "--ports: must be LOW-HIGH, from 1,024 to 65,535", 2),
        ([program, "--ports", "2000-1000"], "--ports: must be LOW-HIGH", 2),
        ([program, "-j", "0"], "-j/--jobs: must be a whole number 1 or more, not '0'", 2),
        ([program, "-j", "two"], "-j/--jobs: must be a whole number 1 or more, not 'two'", 2),
        ([program, "--slow", "-2"], "--slow: must be a number above 0, not '-2'", 2),
        ([program, "--slow", "inf"], "--slow: must be a number above 0, not 'inf'", 2),
        ([program, "--timeout", "nan"], "--timeout: must be a number above 0, not 'nan'", 2),
        ([program, "--chaos", "x"], "--chaos: invalid int value: 'x'", 2),
        ([program, "--record"], "--record needs the cases to record", 2),
        ([program, "--record-keys-only", "1_1"], "--record-keys-only: only with --record", 2),
        ([program, "--require-kill"], "--require-kill: only with --mutants", 2),
        ([program, "--no-such-option"], "unrecognized arguments: --no-such-option", 2),
        ([program, "--gradescope", NO_FOLDER], f"--gradescope {NO_FOLDER}: the folder /no/such/folder does not exist", 2),
        ([program, "--gradescope", UNDER_A_FILE], "README.md is not a folder", 2),
        ([program, "--gradescope", A_FOLDER], "it is a folder; give a file name", 2),
        ([program, "--gradescope", READ_ONLY], f"--gradescope {READ_ONLY}: cannot write it", 2),
        ([program, "--junit", NO_FOLDER], f"--junit {NO_FOLDER}: the folder /no/such/folder does not exist", 2),
        ([program, "--junit", A_FOLDER], "it is a folder; give a file name", 2),
        ([program, "--junit", READ_ONLY], f"--junit {READ_ONLY}: cannot write it", 2),
        ([program, "--logs", UNDER_A_FILE], f"--logs {UNDER_A_FILE}: cannot write in it", 2),
        ([program, "--logs", str(ROOT / "README.md")], "cannot write in it", 2),
        ([program, "--logs", "/sys/kernel"], "--logs /sys/kernel: cannot write in it", 2),
        ([program, "--mutants", "--logs", "/sys/kernel"], "--logs /sys/kernel: cannot write in it", 2),
        ([program, "--record", "4_1", "--logs", "/sys/kernel"], "--logs /sys/kernel: cannot write in it", 2),
        ([program, "--server", "no/such/ChatServer.py", "--gradescope", NO_FOLDER], f"--gradescope {NO_FOLDER}", 2),
    ]


BAD: List[Tuple[List[str], str, int]] = [
    (SERVER + ["--port", "99999"], "--port: must be a whole number from 0 to 65,535, not '99999'", 2),
    (SERVER + ["--port", "-1"], "--port: must be a whole number from 0 to 65,535, not '-1'", 2),
    (SERVER + ["--port", "eighty"], "--port: must be a whole number from 0 to 65,535, not 'eighty'", 2),
    (SERVER, "the following arguments are required: --port", 2),
    (["ChatServer.py", "--port", "0"], "the following arguments are required: --servername", 2),
    (["ChatServer.py", "--servername", LONG_NAME, "--port", "0"], "--servername: must be 1 to 255 bytes of UTF-8", 2),
    (["ChatServer.py", "--servername", "", "--port", "0"], "--servername: must be 1 to 255 bytes of UTF-8, not 0", 2),
    (SERVER + ["--port", "0", "--info", "i" * 70000], "--info: must be at most 65,535 bytes of UTF-8, not 70,000", 2),
    (SERVER + ["--port", "0", "--id", "0"], "--id: must be a whole number from 1 to 4,294,967,295, not '0'", 2),
    (SERVER + ["--port", "0", "--id", "4294967296"], "--id: must be a whole number from 1 to 4,294,967,295", 2),
    (SERVER + ["--port", "0", "--connect_to_port", "70000"], "--connect_to_port: must be a whole number from 1", 2),
    (SERVER + ["--port", "0", "--connect_to_host", "localhost"], "--connect_to_host: needs --connect_to_port", 2),
    (SERVER + ["--port", "0", "--split-hold", "-1"], "--split-hold: must be a number 0 s or more, not '-1'", 2),
    (SERVER + ["--port", "0", "--max-frame-size", "8"], "--max-frame-size: must be a whole number 16 bytes or more", 2),
    (SERVER + ["--port", "0", "--max-output", "0"], "--max-output: must be a whole number 1 bytes or more", 2),
    (SERVER + ["--port", "0", "--register-timeout", "nan"], "--register-timeout: must be a number", 2),
    (SERVER + ["--port", "0", "--stall-timeout", "soon"], "--stall-timeout: must be a number", 2),
    (SERVER + ["--port", "0", "--reconnect-first", "0"], "--reconnect-first: must be a number from 0.01 to 3600 s", 2),
    (SERVER + ["--port", "0", "--reconnect-max", "1e9"], "--reconnect-max: must be a number from 0.01 to 3600 s", 2),
    (SERVER + ["--port", "0", "--log-file", UNDER_A_FILE], f"--log-file {UNDER_A_FILE}: cannot write it", 2),
    (SERVER + ["--port", "0", "--log-file", A_FOLDER], f"--log-file {A_FOLDER}: cannot write it", 2),
    (SERVER + ["--port", "0", "--log-file", READ_ONLY], f"--log-file {READ_ONLY}: cannot write it", 2),
    (SERVER + ["--port", "0", "--bind", "999.1.1.1"], "cannot listen on 999.1.1.1:0", 1),
    (SERVER + ["--port", "0", "--connect_to_host", "nosuch.invalid", "--connect_to_port", "9"],
     "could not join nosuch.invalid:9", 1),
    (SERVER + ["--port", "0", "--connect_to_port", "1"], "could not join localhost:1", 1),
    (SERVER + ["--port", "0", "--no-such-option"], "unrecognized arguments: --no-such-option", 2),
    (["ChatClient.py", "-S", "", "-P", "9001", "-U", "al"], "--serverhost: the host may not be empty", 2),
    (CLIENT[:4] + ["99999", "-U", "kim"], "--serverport: must be a whole number from 1 to 65,535, not '99999'", 2),
    (CLIENT[:4] + ["0", "-U", "kim"], "--serverport: must be a whole number from 1 to 65,535, not '0'", 2),
    (CLIENT[:4] + ["http", "-U", "kim"], "--serverport: must be a whole number from 1 to 65,535, not 'http'", 2),
    (CLIENT, "the following arguments are required: -U/--username", 2),
    (CLIENT + ["-U", ""], "--username: a name may not be empty", 2),
    (CLIENT + ["-U", "two words"], "--username: a name may not hold white space", 2),
    (CLIENT + ["-U", LONG_NAME], "--username: a name is at most 255 bytes of UTF-8, not 256", 2),
    (CLIENT + ["-U", "kim", "-I", "i" * 70000], "--info: the info is at most 65,535 bytes of UTF-8, not 70,000", 2),
    (CLIENT + ["-U", "kim", "--id", "0"], "--id: must be a whole number from 1 to 4,294,967,295, not '0'", 2),
    (CLIENT + ["-U", "kim", "--id", "-5"], "--id: must be a whole number from 1 to 4,294,967,295, not '-5'", 2),
    (CLIENT + ["-U", "kim", "--log-file", NO_FOLDER], f"--log-file: cannot write '{NO_FOLDER}'", 2),
    (CLIENT + ["-U", "kim", "--log-file", UNDER_A_FILE], "--log-file: cannot write", 2),
    (CLIENT + ["-U", "kim", "--log-file", A_FOLDER], "--log-file: cannot write", 2),
    (CLIENT + ["-U", "kim", "--log-file", READ_ONLY], "--log-file: cannot write", 2),
    (CLIENT + ["-U", "kim", "--no-such-option"], "unrecognized arguments: --no-such-option", 2),
    *manager_cases("ChatTestManager.py"),
    *manager_cases("CRCTestManager.py"),
]


def one_line(arguments: List[str], timeout: float = 60) -> Tuple[int, str]:
    run = subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    return run.returncode, run.stdout + run.stderr


@pytest.mark.parametrize("arguments, complaint, status", BAD,
                         ids=[" ".join(arguments)[:70] for arguments, _, _ in BAD])
def test_a_bad_value_is_one_line_a_non_zero_exit_and_no_traceback(arguments: List[str], complaint: str,
                                                                  status: int) -> None:
    code, output = one_line(arguments)
    assert code == status, f"expected exit status {status}, got {code}: {output}"
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and complaint in lines[0], f"expected one line containing {complaint!r}, got:\n{output}"
    assert not Path(NO_FOLDER).parent.exists() and not (ROOT / "tests" / "out.txt").exists()


def test_a_port_in_use_is_one_line_naming_it() -> None:
    with socket.create_server(("", 0)) as taken:
        port = taken.getsockname()[1]
        code, output = one_line(SERVER + ["--port", str(port)])
    assert code == 1 and output.strip() == f"ChatServer.py: cannot listen on *:{port}: Address already in use", \
        f"expected one line naming the port and exit status 1, got {code}:\n{output}"


def test_a_results_file_that_cannot_be_written_stops_the_run_before_any_case(tmp_path: Path) -> None:
    """Issue 19: the run went through every case and then died writing the results, losing them all."""
    for option in ("--gradescope", "--junit"):
        code, output = one_line(["ChatTestManager.py", "4_1", "--logs", str(tmp_path / "Logs"), option,
                                 str(tmp_path / "missing" / "out")])
        assert code == 2 and output.strip() == f"error: {option} {tmp_path / 'missing' / 'out'}: the folder" \
                                               f" {tmp_path / 'missing'} does not exist", output
        assert not (tmp_path / "Logs" / "4_1_chat_0_hops.log").exists(), "expected no case to run"


def test_a_submission_with_a_syntax_error_is_one_line_and_still_gets_gradescope_results(tmp_path: Path) -> None:
    submission = tmp_path / "ChatServer.py"
    submission.write_text("class CRCServer:\n    def run(self)\n        pass\n")
    results = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "ChatTestManager.py", "--server", str(submission), "--gradescope",
                          str(results)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert run.stderr.strip() == f"error: cannot load {submission}: SyntaxError: expected ':' ({submission}, line 2)"
    data = json.loads(results.read_text())
    assert data["score"] == 0 and data["tests"] and all(test["status"] == "failed" for test in data["tests"]), data
    assert f"SyntaxError: expected ':' ({submission}, line 2)" in data["output"]
    assert all("line 2" in test["output"] for test in data["tests"])


def test_a_submission_that_raises_on_import_names_its_file_and_line(tmp_path: Path) -> None:
    submission = tmp_path / "ChatServer.py"
    submission.write_text("import selectors\n\nLIMIT = 1 / 0\n")
    run = subprocess.run([sys.executable, "ChatTestManager.py", "--server", str(submission)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.strip() == \
        f"error: cannot load {submission}: ZeroDivisionError: division by zero ({submission}, line 3)", run.stderr
