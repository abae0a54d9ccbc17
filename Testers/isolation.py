"""Grading a submission that cannot fake, hang or crash its grade: each case's machines run in a sandboxed
child process that is told the case's commands and never its final state, and sends back what it
observed; this process, the grader, judges it, writes the logs and every results file.

A case's child (Testers/sandbox.py around Testers/child.py) runs from a stage folder of its own: kit/
(what runs a case: the client, the codec, the manager and Testers/, not our server), submission/ (the
ChatServer.py under test, and a ChatMessageParser.py of its own if it has one beside it), logs/ and
plan.json (the commands and the settings). As root, each child runs as a user id of its own with no
privileges, in namespaces of its own (only loopback for a network, a root that holds the system's
folders read-only and the stage, nothing else of the machine), and every process it leaves is ended with
it. Anywhere, it gets limits: memory, processes, open files, file size, the time to import the
submission, and the case's own time limit plus a grace. Whatever it sends back is bounded and checked
before anything is judged; a child that dies, hangs, or sends garbage fails its case with the reason.
"""

from __future__ import annotations

import atexit
import compileall
import itertools
import json
import os
import pwd
import queue
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from Testers.cases import Case, declared_weight, plan_of
from Testers.keys import FUNCTIONALITY
from Testers.quiet import WaitRecord
from Testers.run import Limits, RunRecord

KIT_DIR = Path(__file__).resolve().parent.parent
KIT_FILES = ("ChatClient.py", "ChatMessageParser.py", "ChatTestManager.py")  # and Testers/: never ChatServer.py
REPORT_LIMIT = 32 << 20  # bytes a child may send back: far above any case's state and trace
OUTPUT_KEPT = 16 << 10  # bytes kept of what a child prints outside the case's trace
LOGS_KEPT = 64 << 20  # bytes of a child's log files copied into Logs/
SUBMISSION_LIMIT = 16 << 20  # bytes of a submission's file that are staged
# Nothing of the grader's environment reaches a submission: a course's secrets may be there.
# glibc would reserve 64 MiB of address space for each thread's malloc arena: two arenas in all.
CHILD_ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
                     "MALLOC_ARENA_MAX": "2"}
ENDING_SECONDS = 3.0  # a child given to end, before it is made to
FIRST_UID = 1_900_000_000  # sandbox users: ids no system hands out, one per child at a time


SANDBOX_MODES = ("auto", "user", "process")  # all the machine allows; no namespaces; neither those nor a user


@dataclass(frozen=True)
class Isolation:
    """What the grader applies on this machine: a user of the child's own (as root), and namespaces; and
    why what is not applied could not be."""
    own_user: bool
    namespaces: bool
    why_not: str = ""
    in_process: bool = False  # no fork on this system: the submission runs in the grader's process

    def describe(self, limits: Limits) -> List[str]:
        """What is applied, and once, what cannot be and why."""
        if self.in_process:
            return [f"Isolation not applied ({self.why_not}): the submission runs in this process, as in the"
                    " course's kit, and nothing keeps it from the grade."]
        applied = ["a process of its own", limits.describe(), "every process it leaves ended"]
        if self.own_user:
            applied.insert(1, "a user of its own without privileges")
        if self.namespaces:
            applied.insert(2, "namespaces of its own (loopback only; of this machine's files only the system's)")
        lines = [f"Isolation: each case runs in {', '.join(applied)}."]
        missing = ([] if self.own_user else ["a user of its own", "a limit on its processes"]) + \
            ([] if self.namespaces else ["a network of its own", "hiding the kit, the cases and the results"])
        if missing:
            lines.append(f"Isolation not applied ({self.why_not}): {', '.join(missing)}. A submission can read"
                         " what this user can read" + ("." if self.own_user else ", and signal its processes."))
        return lines


@lru_cache(maxsize=None)
def probe(mode: str = "auto") -> Isolation:
    """What can be applied here (in `mode`, at most), found once: namespaces are tried in a throwaway
    process, and a user of its own needs an interpreter that every user may run."""
    if not hasattr(os, "fork"):
        return Isolation(False, False, f"no fork on {sys.platform}", in_process=True)
    if not sys.platform.startswith("linux"):
        return Isolation(False, False, f"not Linux ({sys.platform})")
    if os.geteuid() != 0:
        return Isolation(False, False, "not run as root")
    if mode == "process":
        return Isolation(False, False, "--sandbox process")
    why = "--sandbox user"
    if mode == "auto":
        answer = subprocess.run([_python(), "-I", "-S", "-B", str(KIT_DIR / "Testers" / "sandbox.py"), "--probe"],
                                capture_output=True, text=True, timeout=30)
        try:
            found = json.loads(answer.stdout)
            why = f"no namespaces here: {found['why']}"
        except (ValueError, KeyError, TypeError):
            found = {"namespaces": False}
            why = f"no namespaces here: the probe failed: {answer.stderr.strip()[-300:]}"
        if found["namespaces"]:  # the jail shows the interpreter to its user wherever it lies
            return Isolation(True, True)
    # Without namespaces, a user of its own runs the interpreter where it lies: only if everyone may.
    hidden = [path for path in _interpreter_paths() if not _reachable_by_anyone(path)]
    if hidden:
        return Isolation(False, False, f"{why}; and {hidden[0]} is not open to every user")
    return Isolation(True, False, why)


def _interpreter_paths() -> List[str]:
    return sorted({_python(), *(os.path.realpath(path) for path in (sys.base_prefix, sys.base_exec_prefix))})


def _reachable_by_anyone(path: str) -> bool:
    """Every folder on the way may be passed by anyone, and the file or folder itself read."""
    parts = Path(path).parts
    for depth in range(1, len(parts)):
        if not os.stat(os.path.join(*parts[:depth])).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def _python() -> str:
    """The interpreter itself, not a virtual environment's link to it: the child needs only the standard
    library, and its folders are what the jail shows."""
    return os.path.realpath(sys.executable)


def sandbox_uid(slot: int, grader: Optional[int] = None) -> int:
    """A user id no account has, for the child in this slot of this grader (by default, this process): no
    two children of this machine's graders share one at a time, so killing every process of that user
    ends exactly that child's."""
    uid = FIRST_UID + ((grader or os.getpid()) % 100_000) * 64 + slot % 64
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 6_400_000


def copy_kit(folder: Path) -> Path:
    """What a child runs a case with, copied once for a whole run into folder/kit, compiled (a child
    started without compiled modules spends more time compiling than running a case), readable by every
    user and writable by none but this one. Never our server: it is the answer."""
    kit = folder / "kit"
    (kit / "Testers").mkdir(parents=True)
    for source in [KIT_DIR / name for name in KIT_FILES] + sorted((KIT_DIR / "Testers").glob("*.py")):
        shutil.copyfile(source, kit / source.relative_to(KIT_DIR))
    compileall.compile_dir(kit, quiet=2)
    for path in [kit, *kit.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    folder.chmod(0o755)
    return kit


# ---------------------------------------------------------------------------------------- one case

@dataclass
class Outcome:
    """What watching a child gave: its events, what it printed, how it ended, and why it was stopped."""
    events: List[Dict[str, Any]] = field(default_factory=list)
    printed: bytes = b""
    printed_total: int = 0
    status: Optional[int] = None  # Popen's: negative for a signal
    stopped: str = ""  # why the grader ended it, if it did
    loaded_at: Optional[float] = None

    def first(self, name: str) -> Optional[Dict[str, Any]]:
        return next((event for event in self.events if event.get("event") == name), None)

    @property
    def last_step(self) -> str:
        steps = [event.get("text") for event in self.events if event.get("event") == "step"]
        return str(steps[-1]) if steps else "before the first command"

    def printed_tail(self, lines: int = 20) -> str:
        text = self.printed.decode("utf-8", "backslashreplace").rstrip()
        return "\n".join(text.splitlines()[-lines:])


class Stage:
    """A case's stage folder and the child that runs in it (see the module's docstring)."""

    def __init__(self, case: Case, settings: Any, server: Path, kit: Path, isolation: Isolation, slot: int,
                 slots: int) -> None:
        self.case, self.settings, self.server, self.kit, self.isolation = case, settings, server, kit, isolation
        self.limits: Limits = settings.limits
        self.uid = sandbox_uid(slot) if isolation.own_user else None
        self.folder = Path(tempfile.mkdtemp(prefix=f"crc-{case.name}-"))
        self.folder.chmod(0o711)  # the child's user may pass through, not list
        (self.folder / "kit").mkdir(mode=0o755)  # where the jail shows the kit (`kit`, one copy for every case)
        submission = self.folder / "submission"
        submission.mkdir()
        # The server and the modules beside it (its own ChatMessageParser.py, as in the course's kit, or a
        # helper of a student's), never through a link: it could point at the answers.
        copy_regular(server, submission / "ChatServer.py")
        for module in sorted(server.parent.glob("*.py")):
            if module.name != "ChatServer.py":
                copy_regular(module, submission / module.name)
        for folder in (submission, self.folder / "logs", self.folder / "tmp"):
            folder.mkdir(exist_ok=True)
            self._hand_over(folder)
        (self.folder / "root").mkdir(mode=0o755)
        plan = {"case": plan_of(case), "slot": slot, "slots": slots,
                "settings": {"slow": settings.slow, "timeout": settings.timeout, "keep_ports": settings.keep_ports,
                             "strict_waits": settings.strict_waits, "chaos": settings.chaos, "ports": settings.ports}}
        (self.folder / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
        (self.folder / "plan.json").chmod(0o644)

    def _hand_over(self, folder: Path) -> None:
        """The child's user owns what it may write, and alone may read it."""
        for path in [folder, *folder.rglob("*")]:
            if self.uid is not None:
                os.chown(path, self.uid, self.uid, follow_symlinks=False)
        folder.chmod(0o700)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def here(self, text: str) -> str:
        """A text of the child's with the staged submission named where it really is: a student knows that."""
        return text.replace(str(self.folder / "submission"), str(self.server.parent))

    def config(self, number: int) -> Dict[str, Any]:
        prefixes = [path for path in _interpreter_paths() if os.path.isdir(path)]
        return {"case": number, "stage": str(self.folder), "kit": str(self.kit), "uid": self.uid,
                "namespaces": self.isolation.namespaces, "prefixes": prefixes,
                "limits": {name: getattr(self.limits, name) for name in ("memory_mib", "processes", "open_files",
                                                                          "file_mib")}}

    def run(self, forks: "ForkServer", case_limit: float) -> Outcome:
        """Start the child and watch it to its end, or end it at a limit."""
        report, report_end = os.pipe()
        output, output_end = os.pipe()
        number, pid = forks.start(self.config, report_end, output_end)
        outcome = Outcome()
        try:
            self._watch(report, output, case_limit, outcome)
        finally:
            os.close(report)
            os.close(output)
            outcome.status = self._end(forks, number, pid, outcome)
        return outcome

    def _watch(self, report: int, output: int, case_limit: float, outcome: Outcome) -> None:
        started = time.monotonic()
        deadline = started + self.limits.import_seconds
        selector = selectors.DefaultSelector()
        selector.register(report, selectors.EVENT_READ)
        selector.register(output, selectors.EVENT_READ)
        pending = b""
        received = 0
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if outcome.loaded_at is None and not outcome.first("load_failed"):
                    outcome.stopped = f"did not finish importing within {self.limits.import_seconds:g} s"
                else:
                    outcome.stopped = (f"did not finish within {case_limit + self.limits.grace_seconds:.1f} s (the"
                                       f" case's own limit of {case_limit:.1f} s, and {self.limits.grace_seconds:g} s"
                                       f" more), at {outcome.last_step}")
                return
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                elif key.fd == output:
                    outcome.printed_total += len(chunk)
                    outcome.printed = (outcome.printed + chunk)[-OUTPUT_KEPT:]
                else:
                    received += len(chunk)
                    if received > REPORT_LIMIT:
                        outcome.stopped = f"sent back more than {REPORT_LIMIT >> 20} MiB"
                        return
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        outcome.events.append(_event(line))
                        if outcome.events[-1].get("event") == "loaded" and outcome.loaded_at is None:
                            outcome.loaded_at = time.monotonic()
                            deadline = outcome.loaded_at + case_limit + self.limits.grace_seconds
        selector.close()

    def _end(self, forks: "ForkServer", number: int, pid: int, outcome: Outcome) -> Optional[int]:
        """Whatever happened, the child and every process it left end before its case is judged; how it
        ended, as Popen's returncode (negative for a signal)."""
        status = None if outcome.stopped else forks.ended(number, ENDING_SECONDS)
        if status is None and not outcome.stopped and not outcome.first("record"):
            outcome.stopped = "closed its output and its report, but did not end"
        for how in (signal.SIGTERM, signal.SIGKILL):  # SIGTERM: the sandbox ends everything it started
            if status is not None:
                break
            try:
                os.kill(pid, how)
            except ProcessLookupError:
                pass
            status = forks.ended(number, ENDING_SECONDS)
        if self.uid is not None and not self.isolation.namespaces:
            from Testers.sandbox import kill_leftovers  # ctypes and libc, only where a user was made
            kill_leftovers(self.uid)
        return None if status is None else os.waitstatus_to_exitcode(status)

    def copy_logs(self, log_dir: Path) -> List[str]:
        """The machines' log files the child wrote, into the case's log folder: regular files only, never
        through a link, up to LOGS_KEPT bytes in all. Returns what was left out."""
        left_out: List[str] = []
        budget = LOGS_KEPT
        for folder in (self.folder / "logs", self.folder / "submission" / "Logs"):
            if not folder.is_dir() or folder.is_symlink():
                continue
            for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
                copied = copy_regular(Path(entry.path), log_dir / entry.name, budget)
                if copied is None:
                    left_out.append(entry.name)
                else:
                    budget -= copied
        return left_out


class ForkServer:
    """The grader's end of Testers/sandbox.py's fork server: one process, started once for a run, that
    forks a sandboxed child for each case (see serve there). Started again if it ever dies."""

    def __init__(self) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="crc-kit-")
        self.kit = copy_kit(Path(self.folder.name))
        self.lock = threading.Lock()
        self.numbers = itertools.count(1)
        self.answers: Dict[int, "queue.Queue[Dict[str, Any]]"] = {}
        self.process: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen(
            [_python(), "-I", "-S", "-B", str(KIT_DIR / "Testers" / "sandbox.py"), "--serve", str(theirs.fileno()),
             str(self.kit)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
            start_new_session=True, env=CHILD_ENVIRONMENT)
        theirs.close()
        self.channel = ours
        threading.Thread(target=self._listen, args=(ours, self.process), name="fork server", daemon=True).start()

    def _listen(self, channel: socket.socket, process: subprocess.Popen) -> None:  # type: ignore[type-arg]
        """Hands each answer to the case it is for; when the fork server is gone (a submission run without
        a user of its own can kill it), each case still waiting hears so."""
        while True:
            message = channel.recv(1 << 16)
            if not message:
                break
            answer = json.loads(message)
            if "case" in answer:
                self.answers[answer["case"]].put(answer)
        with self.lock:
            process.wait()
            channel.close()
            for answers in list(self.answers.values()):
                answers.put({"gone": True})

    def start(self, config: Callable[[int], Dict[str, Any]], report: int, output: int) -> Tuple[int, int]:
        """Fork a child with the config for a number, writing to these pipes (closed here): (number, pid)."""
        with self.lock:
            if self.process is None or self.process.poll() is not None:  # not yet, or no more
                self._start()
            number = next(self.numbers)
            self.answers[number] = queue.Queue()
            socket.send_fds(self.channel, [json.dumps(config(number)).encode()], [report, output])
        os.close(report)
        os.close(output)
        answer = self.answers[number].get(timeout=30)
        if "pid" not in answer:
            raise RuntimeError("the fork server ended before it started the case")
        return number, int(answer["pid"])

    def ended(self, number: int, seconds: float) -> Optional[int]:
        """The case's child's status as os.waitpid gives it, once it ended, waiting at most `seconds`."""
        try:
            answer = self.answers[number].get(timeout=seconds)
        except queue.Empty:
            return None
        self.answers.pop(number, None)
        return int(answer["status"]) if "status" in answer else None

    def close(self) -> None:
        """Closing the channel ends the fork server, and whatever case it still runs."""
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                self.channel.shutdown(socket.SHUT_RDWR)  # the listener's recv holds the socket open until then
                self.process.wait(10)
        self.folder.cleanup()


@lru_cache(maxsize=None)
def fork_server() -> ForkServer:
    """This process's fork server, started when first needed and ended when this process ends."""
    server = ForkServer()
    atexit.register(server.close)
    return server


def copy_regular(source: Path, target: Path, budget: int = SUBMISSION_LIMIT) -> Optional[int]:
    """Copy a regular file of at most `budget` bytes, never through a link (nor a second hard link, which
    may be another name of a file its owner could not read); its size, or None when nothing was copied."""
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > budget:
            return None
        target.write_bytes(file.read(info.st_size))
        return info.st_size


def _event(line: bytes) -> Dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        return {"event": "garbled"}
    return event if isinstance(event, dict) else {"event": "garbled"}


# ------------------------------------------------------------------------------------ the verdict

def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_end(outcome: Outcome, limits: Limits, when: str) -> str:
    """How a child that sent no record ended, in a line."""
    if outcome.stopped:
        return outcome.stopped + "; its processes were ended"
    status = outcome.status if outcome.status is not None else 0
    if status >= 0:
        return f"exited {when} (status {status})"
    number = -status
    if number == signal.SIGXFSZ:
        return f"went over the file size limit of {limits.file_mib} MiB {when} ({signal_name(number)})"
    if number == signal.SIGXCPU:
        return f"went over its processor time limit {when} ({signal_name(number)})"
    return f"killed its own process {when} ({signal_name(number)}), or the system did"


def load_problem(outcome: Outcome, limits: Limits, server: Path) -> Optional[str]:
    """Why the submission was not loaded in this child (a line, then any detail), or None once it was."""
    if outcome.first("loaded"):
        return None
    printed = f"\nwhat it printed last:\n{outcome.printed_tail(10)}" if outcome.printed else ""
    if not outcome.first("started"):
        return f"the sandbox could not start the runner: {describe_end(outcome, limits, 'at start')}{printed}"
    failed = outcome.first("load_failed")
    if failed and not outcome.stopped:
        if failed.get("memory"):
            return f"cannot load {server}: went over the memory limit of {limits.memory_mib} MiB (a MemoryError)"
        return str(failed.get("problem", f"cannot load {server}"))
    return f"cannot load {server}: {describe_end(outcome, limits, 'during import')}{printed}"


def record_from(outcome: Outcome, limits: Limits, server: Path) -> Tuple[RunRecord, List[str]]:
    """The child's record as a RunRecord, or a RunRecord that fails the case with the reason it has none;
    and lines for the log about the child."""
    about = [f"child    exit {outcome.status}; printed {outcome.printed_total} bytes outside the trace"]
    if outcome.printed:
        about += ["         what it printed, the end of it:"] + \
            [f"         | {line}" for line in outcome.printed_tail().splitlines()]
    loaded = outcome.first("loaded")
    if loaded and isinstance(loaded.get("parser"), str):
        about.append(f"parser   {loaded['parser']} (what that server imported, in its sandbox)")
    records = [event.get("record") for event in outcome.events if event.get("event") == "record"]
    problem = load_problem(outcome, limits, server)
    if problem is None and (outcome.stopped or not records):
        printed = f"\nwhat it printed last:\n{outcome.printed_tail(10)}" if outcome.printed else ""
        problem = f"{describe_end(outcome, limits, 'while the case ran')}, at {outcome.last_step}{printed}"
    if problem is None:
        try:
            return _checked_record(records[-1], limits), about
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            problem = f"its process sent back a record that cannot be read ({error})"
    steps = [str(event.get("text")) for event in outcome.events if event.get("event") == "step"]
    return RunRecord({}, [f"error: {problem}"], [], False, False, journal=steps), about


def _checked_record(data: Any, limits: Limits) -> RunRecord:
    """A record as the child sent it, every field checked for its type: it comes from the submission's
    process, which may have written anything there."""

    def texts(value: Any) -> List[str]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError("a list of texts expected")
        return list(value)

    def observed(value: Any) -> Any:
        if isinstance(value, list) and all(item is None or isinstance(item, (str, int, float, bool)) for item in value):
            return list(value)
        if isinstance(value, dict) and isinstance(value.get("unreadable"), str):
            return {"unreadable": value["unreadable"]}
        raise ValueError(f"an observed value is neither a list of JSON scalars nor unreadable: {str(value)[:80]}")

    machines = {}
    for name, (kind, keys) in dict(data["machines"]).items():
        if not isinstance(name, str) or kind not in ("server", "client") or not isinstance(keys, dict):
            raise ValueError(f"machine {str(name)[:40]} is not (kind, keys)")
        machines[name] = (kind, {str(key): observed(value) for key, value in keys.items()})
    waits = [WaitRecord(float(wait["asked"]), float(wait["took"]), str(wait["why"])) for wait in data["waits"]]
    errors = texts(data["errors"])
    if any("MemoryError" in error for error in errors):
        errors.insert(0, f"went over the memory limit of {limits.memory_mib} MiB (a MemoryError, below)")
    exception = data["exception"]
    transcript = data.get("transcript")  # read only by the explanation, which takes any shape without harm
    return RunRecord(machines, errors, texts(data["logged"]), data["finished"] is True, data["clean"] is True,
                     waits, texts(data["journal"]), texts(data["trace"]), texts(data["about"]),
                     SubmissionError(exception) if isinstance(exception, str) else None,
                     transcript if isinstance(transcript, dict) else None)


class SubmissionError(Exception):
    """An exception raised in a sandboxed child, known by its text."""


def run_isolated(path: Path, settings: Any, slot: int = 0, slots: int = 1) -> Any:
    """Run one case file in a sandboxed child and judge what it sends back: a ChatTestManager.CaseResult."""
    import ChatTestManager as manager

    started = time.monotonic()
    prepared = manager.prepare_case(Path(path), settings)
    if isinstance(prepared, manager.CaseResult):
        return prepared
    case, findings = prepared
    log_dir = manager.case_log_dir(case, settings)
    isolation = probe(settings.sandbox)
    server = Path(settings.server_path).resolve()
    stage = Stage(case, settings, server, fork_server().kit, isolation, slot, slots)
    try:
        outcome = stage.run(fork_server(), settings.timeout + settings.slow * case.total_wait)
        record, about = record_from(outcome, settings.limits, server)
        left_out = stage.copy_logs(log_dir)
    finally:
        stage.close()
    for name in ("errors", "logged", "journal", "about", "trace"):
        setattr(record, name, [stage.here(line) for line in getattr(record, name)])
    record.about = [stage.here(line) for line in about] + record.about + [
        f"sandbox  user {stage.uid if stage.uid is not None else 'ours'}, namespaces {isolation.namespaces};"
        f" {settings.limits.describe()}"]
    if left_out:
        record.about.append(f"logs     left out (not regular files, or over {LOGS_KEPT >> 20} MiB):"
                            f" {', '.join(left_out)}")
    return manager.judge(case, findings, settings, record, started)


def import_problem(settings: Any) -> Optional[str]:
    """Why the submission cannot even be imported, tried once in a sandboxed child before any case runs
    (a line, then any detail), or None: a submission that cannot load fails every case for that one reason
    at once, instead of after each case's own time limit."""
    server = Path(settings.server_path).resolve()
    case = Case("import", server, FUNCTIONALITY, [], [], None)
    stage = Stage(case, settings, server, fork_server().kit, probe(settings.sandbox), 0, 1)
    try:
        outcome = stage.run(fork_server(), 0.0)
    finally:
        stage.close()
    problem = load_problem(outcome, settings.limits, server)
    return None if problem is None else stage.here(problem)


def run_all_isolated(work: List[Tuple[Path, Any]], jobs: int, done: Callable[[int, Any], None]) -> List[Any]:
    """Run each case in a child of its own, `jobs` at a time, calling `done` with each result's place in
    `work` as it comes; the results in that order. Each child running at once has a slot of its own: its
    user id and, without namespaces, its block of ports."""
    import ChatTestManager as manager

    slots: "queue.Queue[int]" = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)

    def one(path: Path, settings: Any) -> Any:
        slot = slots.get()
        try:
            return run_isolated(path, settings, slot, jobs)
        except Exception:  # a fault of the grader's: this case says so, and the others still run
            return manager.CaseResult(path.stem, manager.FAILED, 0.0,
                                      [f"error: the grader failed on this case:\n{traceback.format_exc().rstrip()}"],
                                      declared_weight(path) or 0)
        finally:
            slots.put(slot)

    finished: Dict[int, Any] = {}
    with ThreadPoolExecutor(jobs, thread_name_prefix="case") as pool:
        futures = {pool.submit(one, path, settings): index for index, (path, settings) in enumerate(work)}
        try:
            for future in as_completed(futures):
                finished[futures[future]] = future.result()
                done(futures[future], finished[futures[future]])
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            fork_server().close()  # and every case it runs
            raise
    return [finished[index] for index in range(len(work))]
