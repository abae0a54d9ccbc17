"""Every command line of the kit answers a bad value with one line that names the option and what it
takes, and exit status 2; never a traceback (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = ["ChatServer.py", "--servername", "a"]
CLIENT = ["ChatClient.py", "-S", "127.0.0.1", "-P", "1"]
LONG_NAME = "x" * 256

BAD = [
    (SERVER + ["--port", "99999"], "--port: must be a whole number from 0 to 65,535, not '99999'"),
    (SERVER + ["--port", "-1"], "--port: must be a whole number from 0 to 65,535, not '-1'"),
    (SERVER + ["--port", "eighty"], "--port: must be a whole number from 0 to 65,535, not 'eighty'"),
    (["ChatServer.py", "--servername", LONG_NAME, "--port", "0"], "--servername: must be 1 to 255 bytes of UTF-8"),
    (["ChatServer.py", "--servername", "", "--port", "0"], "--servername: must be 1 to 255 bytes of UTF-8, not 0"),
    (SERVER + ["--port", "0", "--info", "i" * 70000], "--info: must be at most 65,535 bytes of UTF-8, not 70,000"),
    (SERVER + ["--port", "0", "--id", "0"], "--id: must be a whole number from 1 to 4,294,967,295, not '0'"),
    (SERVER + ["--port", "0", "--connect_to_port", "70000"], "--connect_to_port: must be a whole number from 1"),
    (SERVER + ["--port", "0", "--split-hold", "-1"], "--split-hold: must be a number 0 s or more, not '-1'"),
    (SERVER + ["--port", "0", "--max-frame-size", "8"], "--max-frame-size: must be a whole number 16 bytes or more"),
    (SERVER + ["--port", "0", "--register-timeout", "nan"], "--register-timeout: must be a number"),
    (CLIENT[:4] + ["99999", "-U", "kim"], "--serverport: must be from 1 to 65535, not 99999"),
    (CLIENT + ["-U", ""], "--username: a name may not be empty"),
    (CLIENT + ["-U", "two words"], "--username: a name may not hold white space"),
    (CLIENT + ["-U", LONG_NAME], "--username: a name is at most 255 bytes of UTF-8, not 256"),
    (CLIENT + ["-U", "kim", "-I", "i" * 70000], "--info: the info is at most 65535 bytes of UTF-8, not 70000"),
    (CLIENT + ["-U", "kim", "--id", "0"], "--id: must be from 1 to 4294967295, not 0"),
    (["ChatTestManager.py", "--server", "no/such/ChatServer.py"], "cannot load no/such/ChatServer.py: no such file"),
    (["ChatTestManager.py", "--server", "tests"], "cannot load tests: it is a folder, not a file"),
    (["ChatTestManager.py", "--cases", "no/such/folder"], "--cases no/such/folder: no such folder"),
    (["ChatTestManager.py", "--ports", "9000"], "--ports: must be LOW-HIGH"),
    (["ChatTestManager.py", "-j", "0"], "-j/--jobs: must be 1 or more, not 0"),
    (["ChatTestManager.py", "--slow", "-2"], "--slow: must be above 0, not -2"),
    (["CRCTestManager.py", "9_no_such_case"], "no case in"),
]


@pytest.mark.parametrize("arguments, complaint", BAD, ids=[" ".join(arguments)[:60] for arguments, _ in BAD])
def test_a_bad_value_is_one_line_exit_status_2_and_no_traceback(arguments: List[str], complaint: str) -> None:
    run = subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    output = run.stdout + run.stderr
    assert run.returncode == 2, f"expected exit status 2, got {run.returncode}: {output}"
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and complaint in lines[0], f"expected one line containing {complaint!r}, got:\n{output}"


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
