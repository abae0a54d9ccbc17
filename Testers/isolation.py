"""Grading a submission that cannot fake, hang or crash its grade: each case's machines run in a sandboxed
child process that is told the case's commands and never its final state, and sends back what it
observed; this process, the grader, judges it, writes the logs and every results file.

A case's child (Testers/sandbox.py around Testers/child.py) is forked by a fork server that has the kit
imported: a copy of what runs a case (the client, the codec, the manager and Testers/, never our
server), made once for a run. It runs from a stage folder of its own: submission/ (the ChatServer.py
under test and the modules beside it, a ChatMessageParser.py of its own say), logs/, tmp/ and plan.json
(the commands and the settings). As root, each child runs as a user id of its own with no privileges, in
namespaces of its own (only loopback for a network, a root that holds the system's folders read-only,
the stage and the kit's copy, nothing else of the machine; the stage on a memory file system of a
bounded size), and every process it leaves is ended with it. Anywhere, it gets limits: memory,
processes, open files, file size, the time to import the submission, and the case's own time limit plus
a grace. Whatever it sends back is bounded and checked before anything is judged; a child that dies,
hangs, or sends garbage fails its case with the reason.
"""

from __future__ import annotations

import atexit
import compileall
import itertools
import json
import os
import pwd
import queue
import re
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
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

from Testers.cases import Case, declared_weight, plan_of
from Testers.keys import FUNCTIONALITY
from Testers.quiet import WaitRecord
from Testers.run import Limits, RunRecord

KIT_DIR = Path(__file__).resolve().parent.parent
# What a case runs with, and Testers/: never ChatServer.py, which is the answer.
KIT_FILES = ("ChatClient.py", "ChatMessageParser.py", "ChatTerminal.py", "ChatTestManager.py")
REPORT_LIMIT = 32 << 20  # bytes a child may send back: far above any case's state and trace (ours: 135 KB)
LINE_LIMIT = 1 << 20  # bytes of one line a child sends, but its record
CONTAINERS_LIMIT = 1_000_000  # JSON objects and lists in a record: what the grader's memory pays to read it
TRANSCRIPT_LIMIT = 20_000  # messages of a transcript explained (ours: 262 at most): comparing costs their square
EVENTS = ("started", "loaded", "load_failed", "step", "record")  # what Testers/child.py sends
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
    """What watching a child gave: its events (the first of each kind, but the last record and the last
    few steps: a child may send any number), what it printed, how it ended, and why it was stopped."""
    events: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    steps: Deque[str] = field(default_factory=lambda: deque(maxlen=100))
    printed: bytes = b""
    printed_total: int = 0
    status: Optional[int] = None  # Popen's: negative for a signal
    stopped: str = ""  # why the grader ended it, if it did
    loaded_at: Optional[float] = None

    def first(self, name: str) -> Optional[Dict[str, Any]]:
        return self.events.get(name)

    def take(self, event: Dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "step":
            self.steps.append(str(event.get("text")))
        elif kind == "record" or kind not in self.events:
            self.events[kind] = event

    @property
    def last_step(self) -> str:
        return self.steps[-1] if self.steps else "before the first command"

    def printed_tail(self, lines: int = 20) -> str:
        text = self.printed.decode("utf-8", "backslashreplace").rstrip()
        return "\n".join(text.splitlines()[-lines:])

    @property
    def printed_last(self) -> str:
        """What it printed last, for an explanation, or nothing."""
        return f"\nwhat it printed last:\n{self.printed_tail(10)}" if self.printed else ""


class Stage:
    """A case's stage folder and the child that runs in it (see the module's docstring)."""

    def __init__(self, case: Case, settings: Any, server: Path, kit: Path, isolation: Isolation, slot: int,
                 slots: int) -> None:
        self.case, self.settings, self.server, self.kit, self.isolation = case, settings, server, kit, isolation
        self.limits: Limits = settings.limits
        self.uid = sandbox_uid(slot) if isolation.own_user else None
        self.folder = Path(tempfile.mkdtemp(prefix=f"crc-{case.name}-"))
        self.mounted = isolation.namespaces  # as root: what the submission writes cannot fill the disk
        if self.mounted:
            from Testers.sandbox import MS_NODEV, MS_NOSUID, mount  # ctypes and libc, only where root mounts
            mount("tmpfs", str(self.folder), "tmpfs", MS_NOSUID | MS_NODEV, f"size={4 * self.limits.file_mib}m")
        self.folder.chmod(0o711)  # the child's user may pass through, not list
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
        if self.mounted:
            from Testers.sandbox import unmount
            unmount(str(self.folder))
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
        try:
            number = forks.start(self.config, report_end, output_end)
        except BaseException:
            os.close(report)
            os.close(output)
            raise
        outcome = Outcome()
        try:
            self._watch(report, output, case_limit, outcome)
        finally:
            os.close(report)
            os.close(output)
            outcome.status = self._end(forks, number, outcome)
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
                        event = _event(line)
                        if event is not None:
                            outcome.take(event)
                        if outcome.loaded_at is None and outcome.first("loaded"):
                            outcome.loaded_at = time.monotonic()
                            deadline = outcome.loaded_at + case_limit + self.limits.grace_seconds
        selector.close()

    def _end(self, forks: "ForkServer", number: int, outcome: Outcome) -> Optional[int]:
        """Whatever happened, the child and every process it left end before its case is judged; how it
        ended, as Popen's returncode (negative for a signal)."""
        status = None if outcome.stopped else forks.ended(number, ENDING_SECONDS)
        if status is None and not outcome.stopped and not outcome.first("record"):
            outcome.stopped = "closed its output and its report, but did not end"
        # SIGTERM: the case's process ends the runner and all it left; SIGKILL if it cannot, and then its
        # user's processes, which without namespaces nothing else would end.
        for how, user in ((signal.SIGTERM, None), (signal.SIGKILL, self.uid)):
            if status is not None:
                break
            forks.kill(number, how, user)
            status = forks.ended(number, ENDING_SECONDS)
        forks.forget(number)
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
    forks a sandboxed child for each case (see serve there). Started again if it ever dies: without a user
    of its own, a submission can kill it."""

    def __init__(self) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="crc-kit-")
        self.kit = copy_kit(Path(self.folder.name))
        self.lock = threading.Lock()
        self.numbers = itertools.count(1)
        self.answers: Dict[int, "queue.Queue[Dict[str, Any]]"] = {}  # case -> what the fork server says of it
        self.process: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen(
            [_python(), "-I", "-S", "-B", str(KIT_DIR / "Testers" / "sandbox.py"), "--serve", str(theirs.fileno()),
             str(self.kit)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
            start_new_session=True, env=CHILD_ENVIRONMENT)
        theirs.close()
        self.channel = ours
        self.served: List[int] = []  # the cases this process of the fork server was asked for
        threading.Thread(target=self._listen, args=(ours, self.process, self.served), name="fork server",
                         daemon=True).start()

    def _listen(self, channel: socket.socket, process: subprocess.Popen,  # type: ignore[type-arg]
                served: List[int]) -> None:
        """Hands each answer to the case it is for; when this fork server is gone, each of its cases still
        waiting hears so (not those of the one started after it)."""
        while True:
            message = channel.recv(1 << 16)
            if not message:
                break
            answer = json.loads(message)
            waiting = self.answers.get(answer.get("case"))
            if waiting is not None:
                waiting.put(answer)
        with self.lock:
            process.wait()
            channel.close()
            for number in served:
                waiting = self.answers.get(number)
                if waiting is not None:
                    waiting.put({"gone": True})

    def start(self, config: Callable[[int], Dict[str, Any]], report: int, output: int) -> int:
        """Fork a child with the config for a new case number, writing to these pipes (closed here); its
        number."""
        try:
            with self.lock:
                if self.process is None or self.process.poll() is not None:  # not yet, or no more
                    self._start()
                number = next(self.numbers)
                self.answers[number] = queue.Queue()
                self.served.append(number)
                socket.send_fds(self.channel, [json.dumps(config(number)).encode()], [report, output])
        finally:
            os.close(report)
            os.close(output)
        try:
            answer = self.answers[number].get(timeout=30)
        except queue.Empty:
            answer = {}
        if "pid" not in answer:
            self.forget(number)
            raise RuntimeError("the fork server did not start the case")
        return number

    def ended(self, number: int, seconds: float) -> Optional[int]:
        """The case's child's status as os.waitpid gives it, once it ended, waiting at most `seconds`; None
        if it has not ended, or if the fork server is gone and cannot say."""
        waiting = self.answers.get(number)
        if waiting is None:
            return None
        try:
            answer = waiting.get(timeout=seconds)
        except queue.Empty:
            return None
        if "gone" in answer:
            waiting.put(answer)  # and so it stays for whoever asks again
        return int(answer["status"]) if "status" in answer else None

    def kill(self, number: int, how: int, user: Optional[int]) -> None:
        """Send the case's process this signal if it has not ended (the fork server alone knows: it reaps
        them), and given a user id, end every process of that user."""
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                try:
                    self.channel.send(json.dumps({"kill": number, "signal": int(how), "user": user}).encode())
                except OSError:
                    pass  # gone: its cases' processes went with it, or are its orphans, ended with it

    def forget(self, number: int) -> None:
        self.answers.pop(number, None)

    def close(self) -> None:
        """Closing the channel ends the fork server, whatever case it still runs and whatever they left."""
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


def _event(line: bytes) -> Optional[Dict[str, Any]]:
    """A line a child sent, as an event of a kind the runner sends, every text in it valid and printable
    (a lone surrogate could not be written to a log or a CSV), or None. It comes from the submission's
    process, so nothing about it is trusted: a record that would cost the grader much memory to read is
    kept as unreadable, and so is one nested too deep."""
    kind = re.match(rb'\{"event": "(\w+)"', line)
    name = kind.group(1).decode() if kind else ""
    if name not in EVENTS or (name != "record" and len(line) > LINE_LIMIT):
        return None
    if line.count(b"{") + line.count(b"[") > CONTAINERS_LIMIT:
        return {"event": name, "record": None}
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return {"event": name, "record": None} if name == "record" else None
    return _clean(event) if isinstance(event, dict) and event.get("event") == name else None


def _clean(value: Any) -> Any:
    """JSON data with every text made valid UTF-8 (a lone surrogate becomes '?')."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {_clean(key): _clean(item) for key, item in value.items()}
    return value


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
    if not outcome.first("started"):
        return f"the sandbox could not start the runner: {describe_end(outcome, limits, 'at start')}" \
               f"{outcome.printed_last}"
    failed = outcome.first("load_failed")
    if failed and not outcome.stopped:
        if failed.get("memory"):
            return f"cannot load {server}: went over the memory limit of {limits.memory_mib} MiB (a MemoryError)"
        return str(failed.get("problem", f"cannot load {server}"))
    return f"cannot load {server}: {describe_end(outcome, limits, 'during import')}{outcome.printed_last}"


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
    record = outcome.first("record")
    problem = load_problem(outcome, limits, server)
    if problem is None and (outcome.stopped or record is None):
        problem = f"{describe_end(outcome, limits, 'while the case ran')}, at {outcome.last_step}{outcome.printed_last}"
    if problem is None and record is not None:
        try:
            return _checked_record(record.get("record"), limits), about
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            problem = f"its process sent back a record that cannot be read ({error})"
    return RunRecord({}, [f"error: {problem}"], [], False, False, journal=list(outcome.steps)), about


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
    if isinstance(transcript, dict) and len(transcript.get("messages") or ()) > TRANSCRIPT_LIMIT:
        transcript = None  # explaining it would cost the grader the square of its length
    return RunRecord(machines, errors, texts(data["logged"]), data["finished"] is True, data["clean"] is True,
                     waits, texts(data["journal"]), texts(data["trace"]), texts(data["about"]),
                     SubmissionError(exception) if isinstance(exception, str) else None,
                     transcript if isinstance(transcript, dict) else None)


class SubmissionError(Exception):
    """An exception raised in a sandboxed child, known by its text."""


def submission_path(settings: Any) -> Path:
    """The submission's file, absolute: its folder as the grader named it, with any link in it followed,
    but the file itself as it is (a link there is refused: it could point at the answers)."""
    given = Path(settings.server_path).absolute()
    return given.parent.resolve() / given.name


def submission_problem(server: Path) -> Optional[str]:
    """Why the file cannot be graded as it is (it is not one regular file of its own), or None."""
    try:
        info = os.lstat(server)
    except OSError:
        return f"cannot load {server}: no such file"
    if stat.S_ISLNK(info.st_mode):
        return f"cannot load {server}: it is a link; only a file is graded"
    if not stat.S_ISREG(info.st_mode):
        return f"cannot load {server}: {'it is a folder' if stat.S_ISDIR(info.st_mode) else 'it is no file'}"
    if info.st_nlink != 1:
        return f"cannot load {server}: it has another name (a hard link); only a file of its own is graded"
    if info.st_size > SUBMISSION_LIMIT:
        return f"cannot load {server}: it is over {SUBMISSION_LIMIT >> 20} MiB"
    return None


class Slots:
    """The slots of the children running at once: each its user id, and without namespaces its ports."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.free: "queue.Queue[int]" = queue.Queue()
        for slot in range(count):
            self.free.put(slot)

    @contextmanager
    def taken(self) -> Iterator[int]:
        slot = self.free.get()
        try:
            yield slot
        finally:
            self.free.put(slot)


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
    server = submission_path(settings)
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
                            f" {', '.join(left_out[:20])}{' and more' if len(left_out) > 20 else ''}")
    return manager.judge(case, findings, settings, record, started)


def import_problem(settings: Any, slot: int = 0, slots: int = 1) -> Optional[str]:
    """Why the submission cannot even be imported, tried once in a sandboxed child before any case runs
    (a line, then any detail), or None: a submission that cannot load fails every case for that one reason
    at once, instead of after each case's own time limit."""
    server = submission_path(settings)
    problem = submission_problem(server)
    if problem:
        return problem
    case = Case("import", server, FUNCTIONALITY, [], [], None)
    stage = Stage(case, settings, server, fork_server().kit, probe(settings.sandbox), slot, slots)
    try:
        outcome = stage.run(fork_server(), 0.0)
    finally:
        stage.close()
    problem = load_problem(outcome, settings.limits, server)
    return None if problem is None else stage.here(problem)


def failed_by_grader(path: Path) -> Any:
    """A case the grader failed on, by a fault of its own: it says so, and the others still run."""
    import ChatTestManager as manager

    return manager.CaseResult(path.stem, manager.FAILED, 0.0,
                              [f"error: the grader failed on this case, not the submission:\n"
                               f"{traceback.format_exc().rstrip()}"], declared_weight(path) or 0)


def run_all_isolated(work: List[Tuple[Path, Any]], jobs: int, done: Callable[[int, Any], None]) -> List[Any]:
    """Run each case in a child of its own, `jobs` at a time, calling `done` with each result's place in
    `work` as it comes; the results in that order."""
    slots = Slots(jobs)

    def one(path: Path, settings: Any) -> Any:
        with slots.taken() as slot:
            try:
                return run_isolated(path, settings, slot, jobs)
            except Exception:
                return failed_by_grader(path)

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
