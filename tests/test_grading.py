"""Grading that a submission cannot fake, hang or crash (issue 16): each case runs in a sandboxed child
that never sees the final state; whatever a submission does at import or at run time, it scores what an
empty template scores, the results file is the grader's and valid, and the run ends within its limits.
Also the Gradescope bundle's real run_autograder in a tree laid out like Gradescope's, and a whole class
graded into a CSV."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

import ChatTestManager as manager
from Testers.isolation import FIRST_UID, probe, sandbox_uid

ROOT = Path(__file__).resolve().parent.parent
CASES = ["1_1_connectivity_2_servers", "3_1_clients_1_server_1_client"]  # short: an empty server waits in full

# The course's template with nothing filled in: it starts no server at all.
EMPTY = '''
import selectors

class BaseConnectionData:
    def __init__(self):
        self.write_buffer = b""

class CRCServer:
    def __init__(self, options, run_on_localhost=False):
        self.sel = selectors.DefaultSelector()
        self.hosts_db, self.adjacent_server_ids, self.adjacent_user_ids, self.status_updates_log = {}, [], [], []
        self.id, self.server_name, self.server_info = options.id, options.servername, options.info
        self.port, self.connect_to_host, self.connect_to_port = options.port, options.connect_to_host, options.connect_to_port
        self.request_terminate = False

    def run(self):
        pass
'''


def misbehaving(folder: Path, results: Path) -> Dict[str, str]:
    """Submissions that try to fake, hang or crash their grade, each on top of the empty template."""
    cases = folder / "cases"
    return {
        # Finds our reference server on disk and passes it off as its own.
        "uses the reference server": EMPTY + f'''
import importlib.util, os
for path in [{str(ROOT / "ChatServer.py")!r}, os.path.join(os.getcwd(), "..", "ChatServer.py")]:
    if os.path.isfile(path) and os.path.abspath(path) != os.path.abspath(__file__):
        spec = importlib.util.spec_from_file_location("reference", path)
        reference = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reference)
        CRCServer = reference.CRCServer
        break
''',
        # Reads the expected final states and sets its machines' attributes from them.
        "reads the answers": EMPTY + f'''
import glob, json
ANSWERS = {{}}
for path in glob.glob({str(cases / "*.cfg")!r}) + glob.glob({str(ROOT / "TestCases" / "*.cfg")!r}):
    ANSWERS.update(json.load(open(path))["final_state"])
Empty = CRCServer
class CRCServer(Empty):
    def __init__(self, options, run_on_localhost=False):
        super().__init__(options, run_on_localhost)
        self.recvd_messages_asdqw, self.sent_messages_asdqw = [], []
        for key, value in ANSWERS.get(options.servername, {{}}).items():
            setattr(self, key, dict.fromkeys(value) if key == "hosts_db" else value)
''',
        # Rewrites the results file as Python exits.
        "forges the results at exit": EMPTY + f'''
import atexit, json
def forge():
    try:
        open({str(results)!r}, "w").write(json.dumps({{"score": 75, "tests": []}}))
    except OSError:
        pass
atexit.register(forge)
''',
        "calls os._exit(0) at import": "import os\nos._exit(0)\n",
        "kills its parent's process group": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n",
        "kills its parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "never finishes importing": "while True:\n    pass\n",
        "takes 8 GiB of memory": "blocks = [bytearray(256 << 20) for _ in range(32)]\n",
        "calls sys.exit() at module level": "import sys\nsys.exit()\n",
        "waits for input at import": "input()\n",
        # Leaves a daemon behind that outlives it, out of its session.
        "leaves a daemon": EMPTY + '''
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            time.sleep(1)
    os._exit(0)
''',
    }


def grade(server: Path, cases: Path, results: Path, *more: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """The grader's command line; afterwards, no process of any user it gave its sandboxes may be left."""
    with subprocess.Popen([sys.executable, str(ROOT / "ChatTestManager.py"), "--server", str(server), "--cases",
                           str(cases), "--gradescope", str(results), "--logs", str(results.parent / "Logs"),
                           "--limit-import", "3", *more], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        stdout, stderr = process.communicate(timeout=timeout)
    users = range(sandbox_uid(0, process.pid), sandbox_uid(0, process.pid) + 64)
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _owner(pid) in users]
    assert not left, f"processes of the grader's sandbox users are still running: {left}\n{stdout}{stderr}"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def case_folder(folder: Path) -> Path:
    cases = folder / "cases"
    cases.mkdir()
    for name in CASES:
        shutil.copy(ROOT / "TestCases" / f"{name}.cfg", cases)
    return cases


def written(folder: Path, name: str, source: str) -> Path:
    server = folder / name.replace(" ", "_").replace("'", "") / "ChatServer.py"
    server.parent.mkdir(parents=True)
    server.write_text(source)
    return server


@pytest.fixture(scope="module")
def empty_score(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """What the empty template scores: what no misbehaviour may beat."""
    folder = tmp_path_factory.mktemp("empty")
    results = folder / "results.json"
    run = grade(written(folder, "empty", EMPTY), case_folder(folder), results)
    assert run.returncode == 1, run.stdout + run.stderr
    return json.loads(results.read_text())


@pytest.mark.parametrize("name", list(misbehaving(Path("/"), Path("/"))))
def test_a_submission_that_misbehaves_scores_what_an_empty_template_scores(
        tmp_path: Path, name: str, empty_score: Dict[str, Any]) -> None:
    results = tmp_path / "results.json"
    cases = case_folder(tmp_path)
    server = written(tmp_path, name, misbehaving(tmp_path, results)[name])
    started = time.monotonic()
    run = grade(server, cases, results)
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode in (1, 2) and "Traceback" not in run.stderr, f"{name}: the grader said:\n{output}"
    data = json.loads(results.read_text())  # written by the grader, and valid
    assert data["score"] == empty_score["score"] == 0, f"{name}: scored {data['score']}:\n{output}"
    assert [test["name"] for test in data["tests"]] == CASES, data
    assert all(test["status"] == "failed" and test["score"] == 0 for test in data["tests"]), data
    # Within its limits: 3 s to import, then each case's own time limit and the grace.
    assert took < 3 + 2 * (manager.DEFAULT_TIMEOUT + 1.4 + 15), f"{name}: took {took:.0f} s"


def _owner(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


@pytest.mark.parametrize("name, reason", [
    ("calls os._exit(0) at import", "exited during import (status 0)"),
    ("never finishes importing", "did not finish importing within 3 s"),
    ("takes 8 GiB of memory", "went over the memory limit of 1024 MiB"),
    ("calls sys.exit() at module level", "exited during import (sys.exit, status None)"),
    ("waits for input at import", "EOFError: EOF when reading a line"),
])
def test_a_submission_that_cannot_load_fails_every_case_with_its_reason(tmp_path: Path, name: str,
                                                                          reason: str) -> None:
    results = tmp_path / "results.json"
    server = written(tmp_path, name, misbehaving(tmp_path, results)[name])
    run = grade(server, case_folder(tmp_path), results)
    assert run.returncode == 2 and run.stderr.startswith(f"error: cannot load {server}: ") \
        and reason in run.stderr and len(run.stderr.splitlines()) == 1, run.stdout + run.stderr
    data = json.loads(results.read_text())
    assert all(reason in test["output"] for test in data["tests"]), data


def test_a_submission_that_goes_wrong_while_a_case_runs_fails_that_case_with_the_reason(tmp_path: Path) -> None:
    # It loads, then ends its own process when the first server starts.
    source = EMPTY.replace("    def run(self):\n        pass", "    def run(self):\n        import os\n"
                                                                 "        os._exit(3)")
    results = tmp_path / "results.json"
    run = grade(written(tmp_path, "exits", source), case_folder(tmp_path), results)
    data = json.loads(results.read_text())
    for test in data["tests"]:
        assert "error: exited while the case ran (status 3), at command 1 'LAUNCHSERVER" in test["output"], \
            run.stdout + run.stderr


NEEDS_NAMESPACES = pytest.mark.skipif(not probe().namespaces, reason=f"no namespaces here: {probe().why_not}")


@NEEDS_NAMESPACES
def test_a_sandboxed_case_sees_no_answers_no_kit_no_results_and_only_loopback(tmp_path: Path) -> None:
    # The submission reports what it can reach by printing it, at import: the log keeps what a child prints.
    results = tmp_path / "results" / "results.json"
    results.parent.mkdir()
    cases = case_folder(tmp_path)
    probe_source = EMPTY + f'''
import os, socket
def can(what, path):
    try:
        open(path, what).close()
        return True
    except OSError:
        return False
print("REACH", os.getuid(), [name for _, name in socket.if_nameindex()],
      can("r", {str(cases / (CASES[0] + ".cfg"))!r}), can("r", {str(ROOT / "ChatServer.py")!r}),
      can("r", {str(ROOT / "TestCases" / (CASES[0] + ".cfg"))!r}), can("a", {str(results.parent / "forged")!r}),
      os.path.exists({str(ROOT)!r}), sorted(os.listdir("/")))
'''
    grade(written(tmp_path, "prober", probe_source), cases, results)
    log = (results.parent / "Logs" / f"{CASES[0]}.log").read_text()
    seen = next(line for line in log.splitlines() if "REACH" in line)
    uid, interfaces, *reach = seen.split("REACH ", 1)[1].split(" ", 2)
    assert int(uid) >= FIRST_UID, seen
    assert interfaces == "['lo']", seen
    assert reach[0].startswith("False False False False False"), f"it reached a case, the kit or the results: {seen}"
    assert not (results.parent / "forged").exists()


def test_a_slow_correct_submission_scores_the_same_sandboxed_as_in_this_process(tmp_path: Path) -> None:
    # Ours, with nothing our quiet waits read (full WAITs, as a student's), a millisecond slower per chunk.
    source = (ROOT / "ChatServer.py").read_text()
    assert "self.serving = " in source
    source = source.replace(".serving", ".in_the_loop")
    source += "\nimport time as _time\n_handle = CRCServer.handle_messages\n" \
              "def _slow(self, io_device, recv_data):\n    _time.sleep(0.001)\n    return _handle(self, io_device, recv_data)\n" \
              "CRCServer.handle_messages = _slow\n"
    server = written(tmp_path, "slow", source)
    cases = [ROOT / "TestCases" / f"{name}.cfg" for name in ("4_2_chat_1_hop", "5_3_status_duplicate_client_id")]
    here = [manager.run_case(path, manager.Settings(server_path=server, logs_dir=tmp_path / "here")) for path in cases]
    results = tmp_path / "results.json"
    run = grade(server, _folder_of(tmp_path, cases), results)
    data = json.loads(results.read_text())
    assert [(test["name"], test["score"]) for test in data["tests"]] == \
        [(result.name, result.score) for result in here] and data["score"] == 5, run.stdout + run.stderr


def _folder_of(folder: Path, cases: List[Path]) -> Path:
    chosen = folder / "chosen"
    chosen.mkdir()
    for path in cases:
        shutil.copy(path, chosen)
    return chosen


# --------------------------------------------------------------------------------- the Gradescope bundle

def autograder_tree(tmp_path: Path) -> Path:
    """The bundle, unpacked as Gradescope unpacks it: the zip into source/, the submission in submission/."""
    bundle = tmp_path / "autograder.zip"
    made = subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), "--autograder-zip", str(bundle)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and bundle.is_file(), made.stdout + made.stderr
    root = tmp_path / "autograder"
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        assert {"setup.sh", "run_autograder", "ChatTestManager.py", "Testers/sandbox.py",
                "TestCases/4_2_chat_1_hop.cfg", "TestCases/4_2_chat_1_hop.transcript.json"} <= set(names), names
        assert "ChatServer.py" not in names, "the bundle must not hold the reference server: it is the answer"
        archive.extractall(root / "source")
        for name in ("setup.sh", "run_autograder"):
            mode = archive.getinfo(name).external_attr >> 16
            assert mode & 0o111, f"{name} must be executable in the zip, mode {oct(mode)}"
            (root / "source" / name).chmod(0o755)
    (root / "submission").mkdir()
    return root


def run_autograder(root: Path, source: str) -> Dict[str, Any]:
    (root / "submission" / "ChatServer.py").write_text(source)
    run = subprocess.run(["bash", str(root / "source" / "run_autograder")], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "AUTOGRADER_ROOT": str(root)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert oct((root / "results").stat().st_mode & 0o777) == "0o700", "the results are root's alone"
    return json.loads((root / "results" / "results.json").read_text())


def test_the_bundles_run_autograder_grades_ours_75_of_75_and_a_misbehaving_one_0(tmp_path: Path) -> None:
    root = autograder_tree(tmp_path)
    data = run_autograder(root, (ROOT / "ChatServer.py").read_text())
    assert data["score"] == 75 and len(data["tests"]) == 24, data["output"]
    assert all(test["status"] == "passed" for test in data["tests"] if test["max_score"]), data

    answers = root / "source" / "TestCases"
    cheat = EMPTY + f'''
import glob, json
ANSWERS = {{}}
for path in glob.glob({str(answers / "*.cfg")!r}):
    ANSWERS.update(json.load(open(path))["final_state"])
Empty = CRCServer
class CRCServer(Empty):
    def __init__(self, options, run_on_localhost=False):
        super().__init__(options, run_on_localhost)
        for key, value in ANSWERS.get(options.servername, {{}}).items():
            setattr(self, key, dict.fromkeys(value) if key == "hosts_db" else value)
'''
    assert run_autograder(root, cheat)["score"] == 0
    data = run_autograder(root, "import os\nos._exit(0)\n")
    assert data["score"] == 0 and len(data["tests"]) == 24, data
    assert all("exited during import (status 0)" in test["output"] for test in data["tests"]), data


# ------------------------------------------------------------------------------------------- a class

def test_grade_folder_grades_a_class_into_a_csv(tmp_path: Path) -> None:
    folder = tmp_path / "class"
    folder.mkdir()
    sources = misbehaving(tmp_path, tmp_path / "results.json")
    chosen = ["uses the reference server", "reads the answers", "calls os._exit(0) at import",
              "never finishes importing", "takes 8 GiB of memory", "kills its parent", "leaves a daemon"]
    for name in chosen:
        written(folder, name, sources[name])
    written(folder, "ours", (ROOT / "ChatServer.py").read_text())
    written(folder, "empty", EMPTY)
    (folder / "handed_in_nothing").mkdir()
    grades = tmp_path / "grades.csv"
    run = subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), "--grade-folder", str(folder), "--csv",
                          str(grades), "--logs", str(tmp_path / "Logs"), "--limit-import", "3", *CASES],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    progress = [line for line in run.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 10 and progress[-1].startswith("[10/10] "), run.stdout
    with open(grades, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["student"] for row in rows] == sorted(path.name for path in folder.iterdir()), rows
    totals = {row["student"]: (row[CASES[0]], row[CASES[1]], row["total"], row["out of"]) for row in rows}
    assert totals.pop("ours") == ("7", "3", "10", "10"), rows
    assert set(totals.values()) == {("0", "0", "0", "10")}, rows
    problems = {row["student"]: row["problem"] for row in rows}
    assert problems["handed_in_nothing"].startswith("no ChatServer.py in"), problems
    assert "did not finish importing within 3 s" in problems["never_finishes_importing"], problems


# ---------------------------------------------------------------------------------------- without root

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.mark.skipif(os.geteuid() != 0 or SYSTEM_PYTHON is None,
                    reason="needs root, to run the grader as another user, and a python3 every user may run")
def test_without_root_the_grader_says_once_what_it_cannot_apply_and_applies_the_rest(tmp_path: Path) -> None:
    # The kit in a folder every user may read, graded by `nobody` with the system's Python.
    kit = Path(shutil.copytree(ROOT, Path(os.path.realpath("/tmp")) / f"crc-kit-nobody-{os.getpid()}",
                               ignore=shutil.ignore_patterns(".venv", ".git", "tests", "bench", "Logs", "__pycache__",
                                                             "*.transcript.json")))
    try:
        marker = kit / "daemon-was-here"
        (kit / "sub").mkdir()
        daemon = EMPTY + f'''
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(2)
        open({str(marker)!r}, "w").write("it outlived its case")
    os._exit(0)
'''
        for name, source in (("ours", (ROOT / "ChatServer.py").read_text()), ("daemon", daemon),
                             ("exits", "import os\nos._exit(0)\n")):
            (kit / "sub" / name).mkdir()
            (kit / "sub" / name / "ChatServer.py").write_text(source)
        for path in [kit, *kit.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o666)
        runs = {}
        for name in ("ours", "daemon", "exits"):
            runs[name] = subprocess.run(
                [SYSTEM_PYTHON, "ChatTestManager.py", "--server", f"sub/{name}/ChatServer.py", "--logs", f"Logs-{name}",
                 "--gradescope", f"results-{name}.json", "3_1", "1_1"], cwd=kit, capture_output=True, text=True,
                timeout=300, user=65534, group=65534, extra_groups=[])
        said = [line for line in runs["ours"].stdout.splitlines() if line.startswith("Isolation not applied")]
        assert said == ["Isolation not applied (not run as root): a user of its own, a limit on its processes, a"
                        " network of its own, hiding the kit, the cases and the results. A submission can read what"
                        " this user can read, and signal its processes."], runs["ours"].stdout
        assert "10 s to import" in runs["ours"].stdout and "1024 MiB of memory" in runs["ours"].stdout
        assert runs["ours"].returncode == 0 and json.loads((kit / "results-ours.json").read_text())["score"] == 10
        assert json.loads((kit / "results-daemon.json").read_text())["score"] == 0
        assert "exited during import (status 0)" in runs["exits"].stderr, runs["exits"].stdout + runs["exits"].stderr
        time.sleep(3)
        assert not marker.exists(), "a process the submission left outlived its case"
    finally:
        shutil.rmtree(kit)


@pytest.mark.skipif(os.geteuid() != 0 or SYSTEM_PYTHON is None,
                    reason="needs root, and a python3 every user may run for a user of its own without namespaces")
def test_as_root_without_namespaces_each_case_runs_as_a_user_of_its_own_and_ends_with_all_it_left(
        tmp_path: Path) -> None:
    # As in a container that forbids namespaces: the cases of two at once must not end each other.
    cases = case_folder(tmp_path)
    for name in ("4_2_chat_1_hop", "5_1_status_welcome"):
        shutil.copy(ROOT / "TestCases" / f"{name}.cfg", cases)
    daemon = written(tmp_path, "daemon", misbehaving(tmp_path, tmp_path / "r.json")["leaves a daemon"])
    for server, expected in ((ROOT / "ChatServer.py", 15), (daemon, 0)):
        results = tmp_path / f"{server.parent.name}.json"
        with subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "ChatTestManager.py"), "--server", str(server), "--cases",
                               str(cases), "--gradescope", str(results), "--logs", str(tmp_path / "Logs"),
                               "--sandbox", "user", "-j", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as process:
            output, _ = process.communicate(timeout=300)
        assert "Isolation not applied (--sandbox user): a network of its own" in output, output
        assert json.loads(results.read_text())["score"] == expected, output
        users = range(sandbox_uid(0, process.pid), sandbox_uid(0, process.pid) + 64)
        assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _owner(pid) in users], output


@pytest.mark.skipif(os.geteuid() != 0, reason="only root could run a submission as root")
def test_as_root_a_submission_never_runs_as_root_unless_asked(tmp_path: Path) -> None:
    hidden = not probe("user").own_user  # this interpreter lies where not every user may run it
    results = tmp_path / "results.json"
    run = grade(ROOT / "ChatServer.py", case_folder(tmp_path), results, "--sandbox", "user")
    if hidden:
        assert run.returncode == 2 and "cannot sandbox a submission here" in run.stderr and "it would run as root" \
            in run.stderr, run.stdout + run.stderr
        assert json.loads(results.read_text())["score"] == 0
    else:
        assert run.returncode == 0, run.stdout + run.stderr


def test_what_a_child_sends_back_cannot_break_the_grader_the_results_or_the_csv(tmp_path: Path) -> None:
    # Forged reports, written at import on the report's descriptor (3): nested past any parser's depth, a
    # lone surrogate, a spreadsheet formula and a terminal escape in a reason, a record that is no record.
    forged = {
        "nested": 'import os\nos.write(3, b\'{"event": "record", "record": \' + b"[" * 200000 + b"\\n")\n',
        "surrogate": 'import os, json\nos.write(3, (json.dumps({"event": "load_failed", "problem":'
                     ' "=HYPERLINK(\\"x\\") \\ud800 \\x1b[2J"}) + "\\n").encode())\nos._exit(0)\n',
        "garbage": EMPTY + 'import os\nos.write(3, b\'{"event": "record", "record": {"machines": 5}}\\n\')\n',
    }
    folder = tmp_path / "class"
    for name, source in forged.items():
        written(folder, name, source)
    grades = tmp_path / "grades.csv"
    run = subprocess.run([sys.executable, str(ROOT / "ChatTestManager.py"), "--grade-folder", str(folder), "--csv",
                          str(grades), "--logs", str(tmp_path / "Logs"), *CASES], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert "\x1b" not in run.stdout, "a submission's text reached the terminal unescaped"
    with open(grades, newline="", encoding="utf-8") as file:
        rows = {row["student"]: row for row in csv.DictReader(file)}
    assert set(rows) == set(forged) and all(row["total"] == "0" for row in rows.values()), rows
    assert rows["surrogate"]["problem"].startswith("'=HYPERLINK"), rows["surrogate"]
    for name in forged:
        assert run.stdout.count(f"] {name}: 0/10") == 1, run.stdout


def test_a_submission_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    link = tmp_path / "sub" / "ChatServer.py"
    link.parent.mkdir()
    link.symlink_to(ROOT / "ChatServer.py")  # our server, which would pass every case
    results = tmp_path / "results.json"
    run = grade(link, case_folder(tmp_path), results)
    assert run.returncode == 2 and f"cannot load {link}: it is a link; only a file is graded" in run.stderr, \
        run.stdout + run.stderr
    assert json.loads(results.read_text())["score"] == 0
