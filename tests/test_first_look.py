"""Issue 19, the manager as a newcomer meets it: its name in its help, the list of cases, a case file
that is not JSON, a case that checks nothing, the README's case syntax and keys, a run where no test ran."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import List

from netkit import ROOT, write_case

from Testers.keys import KEYS

README = (ROOT / "README.md").read_text(encoding="utf-8")
ONE_CLIENT = [
    "LAUNCHSERVER --id 1 --servername hub --port 4300",
    "WAIT 0.3",
    "LAUNCHCLIENT --id 70 --serverhost localhost --serverport 4300 --username ann",
    "WAIT 0.3",
    "KILL ALL",
]


def run(command: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / command), *arguments], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def section(title: str) -> str:
    """The README's section under this heading, up to the next one."""
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else len(README)]


def test_the_help_of_crctestmanager_names_crctestmanager() -> None:
    shown = run("CRCTestManager.py", "--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: CRCTestManager.py "), shown.stdout[:200]
    wrong = run("CRCTestManager.py", "--jobs", "0")
    assert wrong.stderr.startswith("CRCTestManager.py: "), wrong.stderr


def test_the_list_has_a_header_and_its_columns_stay_in_line_with_a_long_name(tmp_path: Path) -> None:
    long_name = "8_1_" + "a_very_long_case_name_" * 3
    write_case(tmp_path, long_name, ONE_CLIENT, {"hub": {"hosts_db": [70]}}, weight=4, family="long")
    write_case(tmp_path, "8_2_short", ONE_CLIENT, {"hub": {"hosts_db": [70]}}, weight=12, family="short")
    listing = run("ChatTestManager.py", "--cases", str(tmp_path), "--list")
    lines = listing.stdout.splitlines()
    assert listing.returncode == 0 and re.match(r"Case +Points +Family +Description$", lines[0]), listing.stdout
    family_column = {line.rindex(family) for line, family in zip(lines, ["Family", "long", "short"])}
    points_end = {line.rindex(points) + len(points) for line, points in zip(lines, ["Points", " 4", " 12"])}
    assert len(family_column) == 1 and len(points_end) == 1, f"expected aligned columns:\n{listing.stdout}"


def test_a_case_file_that_is_not_json_counts_the_same_in_the_table_and_the_summary(tmp_path: Path) -> None:
    write_case(tmp_path, "1_good", ONE_CLIENT, {"hub": {"hosts_db": [70]}}, weight=2)
    (tmp_path / "2_broken.cfg").write_text('{"type": "CRC_functionality", "weight": 5,')
    shown = run("ChatTestManager.py", "--cases", str(tmp_path), "--logs", str(tmp_path / "Logs"))
    row = next(line for line in shown.stdout.splitlines() if line.startswith("2_broken "))
    assert " -/? " in row, f"expected the row to say it is not graded, of a weight unknown: {row!r}"
    summary = shown.stdout.splitlines()[-1]
    assert summary == ("Score: 2/2; 1 of 1 tests passed; 1 case(s) not run for errors in the file (0 points and"
                       " 1 case(s) of unknown weight not graded)"), summary


def test_a_case_that_checks_nothing_is_not_passed_and_a_run_where_no_test_ran_exits_1(tmp_path: Path) -> None:
    write_case(tmp_path, "1_empty", ONE_CLIENT, {}, weight=3)
    write_case(tmp_path, "2_no_keys", ONE_CLIENT, {"hub": {}, "ann": {}})
    shown = run("ChatTestManager.py", "--cases", str(tmp_path), "--logs", str(tmp_path / "Logs"))
    assert shown.returncode == 1, f"expected exit status 1 when no test ran:\n{shown.stdout}{shown.stderr}"
    assert "PASS" not in shown.stdout and shown.stdout.count("final_state: checks nothing") == 2, shown.stdout
    assert "no test ran" in shown.stderr, shown.stderr


def test_a_case_without_a_final_state_is_a_case_error_and_record_fills_it_in(tmp_path: Path) -> None:
    case = tmp_path / "1_fresh.cfg"
    case.write_text(json.dumps({"type": "CRC_functionality", "commands": ONE_CLIENT}))
    shown = run("ChatTestManager.py", "--cases", str(tmp_path), "--logs", str(tmp_path / "Logs"))
    assert shown.returncode == 1 and "final_state: is missing" in shown.stdout, shown.stdout + shown.stderr
    recorded = run("ChatTestManager.py", "--cases", str(tmp_path), "--logs", str(tmp_path / "Logs"), "--record", "1_")
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    expected = json.loads(case.read_text())["final_state"]
    assert expected["hub"]["hosts_db"] == [70] and expected["ann"]["status_updates_log"] == \
        ["Welcome to the Clemson Relay Chat network ann"], expected
    again = run("ChatTestManager.py", "--cases", str(tmp_path), "--logs", str(tmp_path / "Logs"))
    assert again.returncode == 0 and "PASS  1_fresh" in again.stdout, again.stdout + again.stderr


def test_the_readme_example_case_runs_and_passes_and_names_every_verb(tmp_path: Path) -> None:
    writing = section("Writing a new case")
    example = re.search(r"\n((?:    .*\n)+)", writing[writing.index("An example"):])
    assert example, "expected an indented example case in the README's 'Writing a new case'"
    case = json.loads(example.group(1))
    for verb in ["LAUNCHSERVER", "LAUNCHCLIENT", "CLIENTCOMMAND", "--command MESSAGE", "--command QUIT", "WAIT",
                 "KILL ALL"]:
        assert f"`{verb}" in writing or f" {verb} " in writing, f"the README's syntax table lacks {verb}"
        assert any(verb in command for command in case["commands"]), f"the README's example never uses {verb}"
    (tmp_path / "example.cfg").write_text(json.dumps(case))
    shown = run("ChatTestManager.py", "--cases", str(tmp_path), "--logs", str(tmp_path / "Logs"))
    assert shown.returncode == 0 and "PASS  example" in shown.stdout, shown.stdout + shown.stderr
    assert "case error" not in shown.stdout, shown.stdout


def test_the_readme_names_every_key_and_counts_the_extra_cases_right() -> None:
    manager = section("The scenario test manager")
    missing = [key.name for key in KEYS if f"`{key.name}`" not in manager]
    assert not missing, f"the README's key list lacks {missing}"
    extra = [path for path in (ROOT / "TestCases").glob("*.cfg")
             if json.loads(path.read_text()).get("weight") == 0]
    words: List[str] = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight"]
    assert f"and {words[len(extra)]} more for what the course's tests lack" in section("Grading a submission"), \
        f"expected the README to count {len(extra)} extra cases"
