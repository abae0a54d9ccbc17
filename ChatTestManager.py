#!/usr/bin/env python3
"""Runs CRC scenario test cases: launches servers and clients as threads, carries out each case's
commands, then compares every machine's state with the case's final_state.

    python3 ChatTestManager.py                      run every case in TestCases/
    python3 ChatTestManager.py 2_ 4_3               run the cases whose names start with 2_ or 4_3
    python3 ChatTestManager.py TestCases/4_3_chat_3_hops.cfg   a case named by its file
    python3 ChatTestManager.py --list               list the cases with their weights
    python3 ChatTestManager.py --lint               read each case against its own commands; run nothing
    python3 ChatTestManager.py --server sub/ChatServer.py   grade another server (a submission)
    python3 ChatTestManager.py --as-course          grade exactly as the course's checker does
    python3 ChatTestManager.py --demo               a small network in this process, for a first look

Cases are read as the course's harness reads them: servers and clients connect to 127.0.0.1 whatever
host a case names, connectivity cases record the chunks each server receives, and KILL ALL stops every
machine in launch order. Before a case runs, the lint (Testers/lint.py) reads it against its own
commands: a key it proves wrong is a case error, reported and not graded, and a server is never failed
for a mistake in a case file. --as-course compares only the keys the course's checker compares, skips
machines it cannot find, and says which keys it left unchecked.

A WAIT ends as soon as the whole network is quiet (see Testers/quiet.py), or when its time has passed;
a server that cannot say whether it is quiet (a submission may not) gets the full time, and
--strict-waits gives every WAIT its full time. Cases run in parallel worker processes (-j N, default
one per core), each worker with its own block of ports; -j 1 runs them one by one in this process.

Options: --cases DIR (another folder of .cfg files), --slow F (multiply every WAIT by F on a slow
machine), --timeout S (a test fails once it runs S seconds beyond its own WAITs), --keep-ports (use
the ports as written instead of free ones; implies -j 1), --logs DIR (where logs go; default Logs/
beside this file), --gradescope FILE and --junit FILE (results for Gradescope and for CI), --record and
--record-transcripts (write what our server does into the cases named), --reference-logs DIR.

A failed case is explained on the wire: what crossed each link in this run (captured from the sockets,
whatever the servers print) is compared with the reference's run, TestCases/NAME.transcript.json (written
by --record with our server) or else the course's reference log NAME.log in --reference-logs DIR (by
default a 'Correct Logs' folder beside the cases), and the first message that went otherwise is named in
words; Logs/NAME.html charts both runs side by side (Testers/transcript.py, explain.py, chart.py).

Each case's log (Logs/CASE.log) holds its commands, each as a `*CMD` line among the servers' trace, the
lint's findings, the waits, the result and the state every machine ended in; Logs/CASE/ holds each
server's and client's own log. On a failure the log, the console and the results files draw the network.
Exit status: 0 when every test passed, 1 when any failed (or, with --lint, when a case has an error),
2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

KIT_DIR = Path(__file__).resolve().parent
if str(KIT_DIR) not in sys.path:  # so the kit's own modules import when this file is loaded from elsewhere
    sys.path.insert(0, str(KIT_DIR))

# Ours is imported first and stays in sys.modules, so our client and testers keep our parser even
# when a submission brings its own.
import ChatClient  # noqa: E402
import ChatMessageParser  # noqa: E402,F401
from Testers import ports, tester_class  # noqa: E402
from Testers.cases import Case, declared_weight, load_case, select_cases  # noqa: E402
from Testers.chaos import ChaosRelay  # noqa: E402
from Testers.chart import write_chart  # noqa: E402
from Testers.checker import check_final_state  # noqa: E402
from Testers.commands import CaseError, parse_command, split_arguments  # noqa: E402,F401
from Testers.drawing import MachineView, draw_network  # noqa: E402
from Testers.explain import closest, compare, explain  # noqa: E402
from Testers.keys import CONNECTIVITY, keys_for  # noqa: E402
from Testers.lint import lint  # noqa: E402
from Testers.mutants import MUTANTS, write_mutants  # noqa: E402
from Testers.ports import PortMap, port_block  # noqa: E402
from Testers.quiet import WaitRecord, can_report_quiet, wait_until_quiet  # noqa: E402
from Testers.record import record  # noqa: E402
from Testers.reports import write_gradescope, write_junit  # noqa: E402
from Testers.trace import TraceCapture, capture_stdout  # noqa: E402
from Testers.transcript import Transcript, Wiretap, record_transcript, reference_for, wire_transcript  # noqa: E402

DEFAULT_CASES_DIR = KIT_DIR / "TestCases"
DEFAULT_LOGS_DIR = KIT_DIR / "Logs"
DEFAULT_SERVER = KIT_DIR / "ChatServer.py"
DEFAULT_TIMEOUT = 30.0  # seconds beyond a case's own WAITs
DRAWING_WIDTH = 94  # a 100-column terminal, less the indent of a failure's lines
PASSED, FAILED, CASE_ERROR = "PASS", "FAIL", "CASE ERROR"
TRANSCRIPT_RUNS = 16  # --record runs each case this many times for its transcript, to see the outcomes of races


# ---------------------------------------------------------------------------------------------
# The server under test

_loaded_servers: Dict[Path, ModuleType] = {}
_server_parsers: Dict[Path, Path] = {}  # server file -> the ChatMessageParser.py it imported


def load_server_module(path: Path = DEFAULT_SERVER, parser: Optional[ModuleType] = None) -> ModuleType:
    """Import a ChatServer.py as a module named ChatServer.

    What it imports as ChatMessageParser is `parser` if given, else a ChatMessageParser.py beside it, as
    in the course's kit, else ours; that parser is in sys.modules only while the server module runs its
    imports, so everything else keeps ours. Other modules beside it are found too, while it loads. A
    server loaded with a parser of its own is not cached.
    """
    path = Path(path).resolve()
    if parser is None and path in _loaded_servers:
        return _loaded_servers[path]
    if not path.is_file():
        raise FileNotFoundError(f"no server file {path}")
    saved = {name: sys.modules.get(name) for name in ("ChatServer", "ChatMessageParser")}
    kit_parser = KIT_DIR / "ChatMessageParser.py"
    beside = path.with_name("ChatMessageParser.py")
    parser_path = beside if beside.is_file() and not beside.samefile(kit_parser) else kit_parser
    sys.path.insert(0, str(path.parent))
    try:
        if parser is not None:
            sys.modules["ChatMessageParser"] = parser
        elif parser_path != kit_parser:
            _exec_module("ChatMessageParser", parser_path)
        module = _exec_module("ChatServer", path)
    finally:
        sys.path.remove(str(path.parent))
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    if not isinstance(getattr(module, "CRCServer", None), type):
        raise ImportError(f"{path} defines no class CRCServer")
    if parser is None:
        _loaded_servers[path] = module
        _server_parsers[path] = parser_path
    return module


def describe_load_error(path: Path, error: BaseException) -> str:
    """One line: why a server file cannot be loaded, with the file and line where that shows."""
    if isinstance(error, FileNotFoundError):
        return f"cannot load {path}: {'it is a folder, not a file' if Path(path).is_dir() else 'no such file'}"
    if isinstance(error, SyntaxError):
        return f"cannot load {path}: {type(error).__name__}: {error.msg} ({error.filename}, line {error.lineno})"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).resolve() == Path(path).resolve()]
    place = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"cannot load {path}: {type(error).__name__}: {error}{place}"


def _exec_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # visible while it runs, as a normal import would be
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Running a case

@dataclass
class Settings:
    server_path: Path = DEFAULT_SERVER
    slow: float = 1.0  # every WAIT is multiplied by this
    timeout: float = DEFAULT_TIMEOUT  # seconds a case may run beyond its own (slowed) WAITs
    keep_ports: bool = False
    logs_dir: Path = DEFAULT_LOGS_DIR
    strict_waits: bool = False  # every WAIT takes its full time, as in the course's kit
    as_course: bool = False  # grade as the course's checker does: its keys only, case errors graded all the same
    server_class: Optional[type] = None  # a CRCServer class to test instead of server_path's (in-process runs)
    parser: Optional[ModuleType] = None  # what server_path imports as ChatMessageParser (in-process runs)
    ports: Optional[Tuple[int, int]] = None  # the ports the servers may use (low, high), shared among the workers
    chaos: Optional[int] = None  # a seed: connections to servers pass through relays that cut, glue and delay
    reference_logs: Optional[Path] = None  # the course's reference logs (NAME.log), for cases without a transcript


@dataclass
class CaseResult:
    name: str
    status: str  # PASSED, FAILED, or CASE_ERROR: the case could not be run as written, and is not graded
    seconds: float
    problems: List[str] = field(default_factory=list)  # checker explanations and errors, in order
    weight: float = 1.0
    family: str = ""
    drawing: str = ""  # the network at the end, drawn when the case failed after it ran
    waits: List[WaitRecord] = field(default_factory=list)  # what each WAIT did, in order
    case_errors: List[str] = field(default_factory=list)  # the lint's findings: mistakes in the case file
    unchecked: List[str] = field(default_factory=list)  # with --as-course, the keys it left unchecked
    exception: Optional[BaseException] = None  # the first exception a machine raised, if any
    logs: List[Path] = field(default_factory=list)  # the case's log file, and the folder of its machines' logs
    observed: Optional[Dict[str, Dict[str, Any]]] = None  # each machine's keys at the end, if the run completed
    graded_errors: List[str] = field(default_factory=list)  # with --as-course, case errors whose key was graded
    logged: List[str] = field(default_factory=list)  # with --as-course, errors servers logged: shown, not failed
    wire: List[str] = field(default_factory=list)  # on a failure: the first divergence on the wire, in words
    transcript: Optional[Transcript] = None  # what crossed each link, from the wire (Testers/transcript.py)

    @property
    def case_error_lines(self) -> List[str]:
        graded = "case error (graded all the same, as the course does)"
        return [f"{graded if error in self.graded_errors else 'case error (not graded)'}: {error}"
                for error in self.case_errors]

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def graded_weight(self) -> float:
        """What the case counts toward the total: nothing when it could not be run as written."""
        return 0 if self.status == CASE_ERROR else self.weight

    @property
    def score(self) -> float:
        return self.weight if self.passed else 0

    @property
    def explanation(self) -> str:
        lines = list(self.problems) or (["passed"] if self.passed else [])
        lines += self.wire
        lines += self.case_error_lines
        lines += [f"not failed, as the course does not: {error}" for error in self.logged]
        if self.unchecked:
            lines.append(f"left unchecked, as the course's checker does: {', '.join(self.unchecked)}")
        return "\n".join(lines)

    @property
    def output(self) -> str:
        """The explanation, the drawing of the network when there is one, and where the logs are."""
        logs = f"\n\nlogs: {', '.join(str(path) for path in self.logs)}" if self.logs else ""
        return self.explanation + (f"\n\n{self.drawing}" if self.drawing else "") + logs


class CaseRun:
    """One run of one case: the machines it launched and what went wrong. `execute` runs in a worker
    thread so that the caller can give up on it when it hangs. The commands call back the methods
    under `execute` (Testers.commands.Runner)."""

    def __init__(self, case: Case, settings: Settings, server_class: type, log_dir: Path, trace: TraceCapture,
                 not_graded: Set[Tuple[str, Optional[str]]]) -> None:
        self.case = case
        self.settings = settings
        self.server_class = tester_class(case.type, server_class)
        self.log_dir = log_dir
        self.trace = trace
        self.not_graded = not_graded
        self.ports = PortMap(settings.keep_ports)
        self.machines: Dict[str, Tuple[str, Any]] = {}  # name -> (kind, machine), in launch order
        self.server_threads: Dict[str, threading.Thread] = {}
        self.problems: List[str] = []
        self.unchecked: List[str] = []
        self.compared: Dict[str, Dict[str, List[Any]]] = {}  # machine -> key -> expected, as the checker compared
        self.crashes: List[str] = []  # exceptions that ended a machine's thread
        self.logged: List[str] = []  # exceptions servers logged (ours drops a link for a handler's bug)
        self.loggers: List[Tuple[logging.Logger, _ErrorsLogged]] = []  # what to unhook when the case ends
        self.exceptions: List[BaseException] = []
        self.journal: List[str] = []  # what happened, for the log file
        self.waits: List[WaitRecord] = []
        self.stopped: Set[str] = set()  # machines stopped by a KILL: they take no part in quiet waits
        # Under --chaos, the relay before each server, by the port written in the case. Not for a
        # connectivity case, whose keys are the raw chunks that the relays would cut.
        self.relays: Dict[int, ChaosRelay] = {}
        self.chaos = settings.chaos if case.type != CONNECTIVITY else None
        self.step = "before the first command"
        self.tap: Optional[Wiretap] = None  # told each command as it begins, to date what the wire carries
        self.aborted = threading.Event()
        self.started = time.monotonic()

    @property
    def servers(self) -> Dict[str, Any]:
        return {name: machine for name, (kind, machine) in self.machines.items() if kind == "server"}

    @property
    def clients(self) -> Dict[str, Any]:
        return {name: machine for name, (kind, machine) in self.machines.items() if kind == "client"}

    @property
    def errors(self) -> List[str]:
        """What fails the case besides the final state: crashes, and logged errors (which the course's
        checker never sees, so not under --as-course)."""
        return self.crashes + ([] if self.settings.as_course else self.logged)

    def note(self, text: str) -> None:
        self.journal.append(f"{time.monotonic() - self.started:8.3f}s  {text}")

    def execute(self) -> None:
        try:
            for number, (line, command) in enumerate(zip(self.case.lines, self.case.commands), 1):
                if self.aborted.is_set():
                    return
                self.step = f"command {number} {line!r}"
                self.note(self.step)
                self.trace.add(f"*CMD {line}")  # among the servers' trace, as the course's harness logs it
                if self.tap is not None:
                    self.tap.after = number - 1
                command.carry_out(self)
            verdict = check_final_state(self.case.final_state, self.machines, self.case.type, self.not_graded,
                                        self.settings.as_course)
            self.problems.extend(self.errors + verdict.failures)
            self.unchecked = verdict.unchecked
            self.compared = verdict.compared
        except Exception as error:  # a server or client that raises is a failed test, not a crash of the run
            self.exceptions.append(error)
            self.problems.extend(self.errors)
            self.problems.append(f"error at {self.step}: {type(error).__name__}: {error}")
            self.note(traceback.format_exc())
        finally:
            self.stop_everything(join=True)

    # ------------------------------------------------------------------ what the commands call

    def launch_server(self, written: argparse.Namespace) -> None:
        options = argparse.Namespace(**vars(written))
        options.port = self.ports(written.port)
        options.connect_to_port = self.port_to_reach(written.connect_to_port)
        if self.chaos is not None:
            if written.port in self.relays:  # a server launched again on its port: a relay of its own
                self.relays.pop(written.port).stop()
            self.relays[written.port] = ChaosRelay(options.port, f"{self.chaos}/{self.case.name}/{written.port}")
        options.log_file = self.log_path(written.log_file, written.servername)
        self.note(f"    {written.servername}: port {options.port}, connects to {options.connect_to_port}")
        server = self.server_class(options, run_on_localhost=True)
        name = written.servername
        logger = getattr(server, "logger", None)
        # One handler per logger: servers that share one would otherwise report each error once per server.
        if isinstance(logger, logging.Logger) and all(logger is not hooked for hooked, _ in self.loggers):
            handler = _ErrorsLogged(self.logged.append)
            logger.addHandler(handler)
            self.loggers.append((logger, handler))
        thread = threading.Thread(target=self._serve, args=(name, server), name=f"server {name}", daemon=True)
        self.machines[name] = ("server", server)
        self.server_threads[name] = thread
        thread.start()

    def launch_client(self, written: argparse.Namespace) -> None:
        options = argparse.Namespace(**vars(written), simulate=True, verbose=False, debug=False)
        options.serverport = self.port_to_reach(written.serverport)
        options.log_file = self.log_path(written.log_file, written.username)
        self.note(f"    {written.username}: server port {options.serverport}")
        client = ChatClient.CRCClient(options, run_on_localhost=True)
        self.machines[written.username] = ("client", client)
        client.run()

    def port_to_reach(self, written: Optional[int]) -> Optional[int]:
        """Where a machine connects to reach the server on a port the case names: its relay, under chaos."""
        relay = self.relays.get(written) if written is not None else None
        return relay.port if relay is not None else self.ports(written)

    def client(self, name: str) -> Any:
        return self.machines[name][1]

    def wait(self, seconds: float) -> None:
        """A WAIT: until the network is quiet or the time has passed (see Testers/quiet.py)."""
        seconds *= self.settings.slow
        started = time.monotonic()
        running = [server for name, server in self.servers.items()
                   if name not in self.stopped and self.server_threads[name].is_alive()]
        mute = [name for name, server in self.servers.items() if not can_report_quiet(server)]
        if self.settings.strict_waits or mute:
            self.aborted.wait(seconds)
            if self.settings.strict_waits:
                why = "full time (--strict-waits)"
            else:
                why = f"full time: server {mute[0]} cannot say whether it is quiet (no is_quiet() and busy_turns)"
            record = WaitRecord(seconds, time.monotonic() - started, why)
        else:
            machines = running + list(self.clients.values()) + list(self.relays.values())
            quiet, took = wait_until_quiet(machines, seconds, self.aborted)
            record = WaitRecord(seconds, took, "the network was quiet" if quiet else "the time ran out")
        self.waits.append(record)
        self.note(f"    {record.line}")

    def kill_all(self) -> None:
        """Every machine, one after another in launch order, as the course's kit does: each must stop
        without announcing anything, and the others must not react before they are stopped too."""
        for name in self.machines:
            self.kill(name)

    def kill(self, name: str) -> None:
        self.stopped.add(name)
        kind, machine = self.machines[name]
        self.note(f"    stopping {kind} {name}")
        if kind == "server":
            machine.request_terminate = True
            self.server_threads[name].join()
        else:
            machine.stop()  # waits until its connection is closed, so that the next WAIT sees its server react

    # ------------------------------------------------------------------------------ the rest

    def log_path(self, requested: Optional[str], name: str) -> str:
        # Only the file name is kept: every machine's log goes in this case's own folder.
        return str(self.log_dir / (Path(requested).name if requested else f"{name}.log"))

    def _serve(self, name: str, server: Any) -> None:
        try:
            server.run()
        except Exception as error:
            self.exceptions.append(error)
            self.crashes.append(f"server {name} crashed:\n{traceback.format_exc().rstrip()}")

    def stop_everything(self, join: bool) -> None:
        """Stop whatever still runs: after a failure, or when the time limit gives up on the case."""
        for name, server in list(self.servers.items()):
            server.request_terminate = True
            if join:
                self.server_threads[name].join(2.0)
        for client in list(self.clients.values()):
            client.request_terminate = True
        for relay in self.relays.values():
            relay.stop(2.0 if join else None)
        for logger, handler in self.loggers:  # a logger outlives the case (a module's, say): unhook ours
            logger.removeHandler(handler)
        self.loggers.clear()

    def busy(self, worker: threading.Thread) -> List[str]:
        """At a time-out: each machine that was not quiet, and where its thread was."""
        frames = sys._current_frames()
        lines = [f"  the manager, carrying out that command: {where(frames.get(worker.ident or 0))}"]
        for name, (kind, machine) in list(self.machines.items()):
            thread = self.server_threads.get(name) if kind == "server" else getattr(machine, "_listener", None)
            if thread is None or not thread.is_alive():
                continue
            if not can_report_quiet(machine):
                state = "cannot say whether it is quiet"
            elif machine.is_quiet():
                continue
            else:
                state = "busy"
            lines.append(f"  {kind} {name}: {state}, {where(frames.get(thread.ident or 0))}")
        return lines

    def abort(self) -> None:
        self.aborted.set()
        self.stop_everything(join=False)

    def observed_state(self) -> Dict[str, Dict[str, Any]]:
        """Every checkable key of every machine, for the log."""
        state: Dict[str, Dict[str, Any]] = {}
        for name, (kind, machine) in list(self.machines.items()):
            state[name] = {}
            for key in keys_for(kind, self.case.type):
                try:
                    state[name][key.name] = key.observe(machine)
                except (AttributeError, TypeError) as error:
                    state[name][key.name] = f"<unreadable: {error}>"
        return state

    def draw(self, state: Dict[str, Dict[str, Any]]) -> str:
        """The network as the machines saw it at the end (`state`, from observed_state), marked where it
        differs from what the checker compared."""
        by_port: Dict[int, str] = {}  # written port -> the server launched on it (so far)
        views = []
        for command in self.case.launches:
            attached = by_port.get(command.joins) if command.joins is not None else None
            if command.KIND == "server":
                by_port[command.options.port] = command.name
            if command.name not in state:
                continue  # never launched: the run stopped before it
            drawn = {key.name for key in keys_for(command.KIND, self.case.type) if key.drawn}
            seen = {key: value for key, value in state[command.name].items() if key in drawn}
            views.append(MachineView(command.name, command.KIND, command.options.id, attached, seen,
                                     self.compared.get(command.name, {})))
        return draw_network(views, DRAWING_WIDTH, as_sets=self.settings.as_course)


class _ErrorsLogged(logging.Handler):
    """Takes a server's logged exceptions (ours costs a link, not the server, for a handler's bug) into
    the case's report, traceback and all, named by the thread that logged it: each server runs in a
    thread named for it."""

    def __init__(self, report: Callable[[str], None]) -> None:
        super().__init__(logging.ERROR)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self.report(f"{record.threadName} logged an unexpected error: {record.getMessage()}\n{trace}")


class _ThreadErrors:
    """Collects exceptions that end any thread (a client's listener, say) while a case runs."""

    def __init__(self) -> None:
        self.errors: List[str] = []
        self.exceptions: List[BaseException] = []
        self._previous: Callable[[Any], object] = threading.excepthook

    def __enter__(self) -> "_ThreadErrors":
        threading.excepthook = self._hook
        return self

    def __exit__(self, *exc_info: Any) -> None:
        threading.excepthook = self._previous

    def _hook(self, args: Any) -> None:
        name = args.thread.name if args.thread else "a thread"
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        self.errors.append(f"{name} raised:\n{text.rstrip()}")
        if args.exc_value is not None:
            self.exceptions.append(args.exc_value)
        self._previous(args)


def where(frame: Optional[FrameType]) -> str:
    """Where a thread is: its innermost frame outside the standard library."""
    library = sysconfig.get_paths()["stdlib"]
    while frame is not None and frame.f_code.co_filename.startswith(library):
        frame = frame.f_back
    if frame is None:
        return "in the standard library"
    return f"in {frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}, line {frame.f_lineno})"


def server_class_for(settings: Settings) -> type:
    if settings.server_class is not None:
        return settings.server_class
    return load_server_module(settings.server_path, settings.parser).CRCServer  # type: ignore[no-any-return]


def run_case(path: Path, settings: Optional[Settings] = None) -> CaseResult:
    """Run one case file to completion or to its time limit, and say whether it passed and why not."""
    settings = settings or Settings()
    path = Path(path)
    started = time.monotonic()
    try:
        case = load_case(path)
    except CaseError as error:
        return _not_run(CaseResult(path.stem, CASE_ERROR, 0.0, [], declared_weight(path), case_errors=[str(error)]),
                        path, settings)
    findings = lint(case)
    whole = [finding for finding in findings if finding.whole_case]
    if whole:
        return _not_run(CaseResult(case.name, CASE_ERROR, 0.0, [], case.weight, case.family,
                                   case_errors=[str(finding) for finding in findings]), path, settings)
    try:
        server_class = server_class_for(settings)
    except Exception as error:  # whatever a submission raises on import is its failure, not the run's
        problem = f"error: {describe_load_error(settings.server_path, error)}\n{traceback.format_exc().rstrip()}"
        return _not_run(CaseResult(case.name, FAILED, 0.0, [problem], case.weight, case.family, exception=error),
                        path, settings)

    # A value that cannot be compared is left out in every mode: the course's checker would crash on it.
    not_graded = {(finding.machine, finding.key) for finding in findings
                  if finding.machine is not None and (finding.shapeless or not settings.as_course)}
    # Absolute: a server puts a relative log path beside its own file, wherever the manager runs.
    log_dir = Path(settings.logs_dir).resolve() / case.name
    shutil.rmtree(log_dir, ignore_errors=True)  # logs of an earlier run would mislead
    log_dir.mkdir(parents=True, exist_ok=True)
    limit = settings.timeout + settings.slow * case.total_wait
    with _ThreadErrors() as thread_errors, capture_stdout() as trace, Wiretap() as tap:
        run = CaseRun(case, settings, server_class, log_dir, trace, not_graded)
        run.tap = tap
        worker = threading.Thread(target=run.execute, name=f"case {case.name}", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            busy = run.busy(worker)
            run.abort()  # the worker is abandoned; it is a daemon thread and holds nothing we need
            problems = [f"time limit: the test was still running after {limit:.1f} s"
                        f" ({settings.timeout:g} s beyond its WAITs), at {run.step}", *busy] + run.errors
        else:
            problems = list(run.problems)
    problems += thread_errors.errors
    state = run.observed_state()  # once: a machine left running after a time-out may still change it
    drawing = run.draw(state) if problems and run.machines else ""
    exceptions = run.exceptions + thread_errors.exceptions
    log_file = Path(settings.logs_dir).resolve() / f"{case.name}.log"
    graded = {(name, key) for name, keys in run.compared.items() for key in keys}  # a case error there: graded anyway
    completed = not (worker.is_alive() or run.crashes or run.logged or thread_errors.errors or exceptions)
    result = CaseResult(case.name, FAILED if problems else PASSED, time.monotonic() - started, problems,
                        case.weight, case.family, drawing, list(run.waits), [str(finding) for finding in findings],
                        run.unchecked, exceptions[0] if exceptions else None, [log_file, log_dir],
                        state if completed else None,
                        [str(finding) for finding in findings if (finding.machine, finding.key) in graded],
                        run.logged if settings.as_course else [])
    try:
        result.transcript = wire_transcript(tap, case, dict(run.ports.ports))  # plain data: it may travel as JSON
        _explain_on_the_wire(result, case, settings)
    except Exception:  # an explanation that fails must not cost the case its result
        result.wire = [f"on the wire: no explanation, the comparison failed:\n{traceback.format_exc().rstrip()}"]
    _write_log(log_file, case, settings, run, result, trace, state)
    return result


def _explain_on_the_wire(result: CaseResult, case: Case, settings: Settings) -> None:
    """For a failed case: the first divergence of its transcript from the reference's run, in words, and
    the chart of both (Logs/NAME.html), named among the logs. It needs only the result and the case's
    files, not the run, so it can be done wherever the transcript was sent."""
    chart = Path(settings.logs_dir).resolve() / f"{case.name}.html"
    chart.unlink(missing_ok=True)  # an earlier run's chart would mislead
    if result.passed or result.transcript is None:
        return
    try:
        reference = reference_for(case, settings.reference_logs)
    except (OSError, ValueError) as error:
        result.wire = [f"on the wire: the reference cannot be read: {error}"]
        return
    reference = closest(reference, result.transcript) if reference is not None else None
    result.wire = explain(reference, result.transcript)
    divergences = compare(reference, result.transcript) if reference is not None else []
    write_chart(chart, case.name, result.transcript, reference, divergences, result.wire, result.drawing)
    result.logs.append(chart)


def _not_run(result: CaseResult, path: Path, settings: Settings) -> CaseResult:
    """A case that could not run still gets its log, saying why, in place of an earlier run's logs."""
    logs = Path(settings.logs_dir).resolve()
    shutil.rmtree(logs / result.name, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    result.logs = [logs / f"{result.name}.log"]
    server = settings.server_class or Path(settings.server_path).resolve()
    lines = [f"case     {result.name} ({path})", f"server   {server}", "", f"result   {result.status}",
             *result.explanation.splitlines(), ""]
    result.logs[0].write_text("\n".join(lines), encoding="utf-8")
    return result


def _write_log(log_file: Path, case: Case, settings: Settings, run: CaseRun, result: CaseResult,
               trace: TraceCapture, state: Dict[str, Dict[str, Any]]) -> None:
    server = settings.server_class or Path(settings.server_path).resolve()
    lines = [
        f"case     {case.name} ({case.path})",
        f"type     {case.type}; weight {case.weight:g}; family {case.family or '-'}",
        f"server   {server}",
        f"parser   {_server_parsers.get(Path(settings.server_path).resolve())} (what that server imported)",
        f"settings slow {settings.slow:g}, timeout {settings.timeout:g} s, keep ports {settings.keep_ports},"
        f" strict waits {settings.strict_waits}, as the course {settings.as_course}, chaos"
        f" {'seed ' + str(run.chaos) if run.chaos is not None else 'none'}",
        f"worker   process {os.getpid()}, port block {ports.block!r}",
        f"ports    {run.ports.ports or 'as written'}",
        f"logs     {run.log_dir}",
        *case.warnings,
        *result.case_error_lines,
        "",
        *run.journal,
        "",
        f"result   {result.status} in {result.seconds:.2f} s",
        *result.explanation.splitlines(),
        *([""] + result.drawing.splitlines() if result.drawing else []),
        "",
        "observed state:",
    ]
    for name, keys in state.items():
        lines.append(f"  {name}")
        lines.extend(f"    {key}: {json.dumps(value, default=repr)}" for key, value in keys.items())
    lines += ["", "trace (what the servers printed, and each command as *CMD):", *trace.ended(), ""]
    log_file.write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command line

def _points(value: float) -> str:
    return f"{value:g}"


def print_table(results: List[CaseResult]) -> None:
    width = max([len(result.name) for result in results] + [4])
    family_width = max([len(result.family) for result in results] + [6])
    print()
    print(f"{'Test':<{width}}  {'Family':<{family_width}}  {'Result':<10}  Points  Time    Case errors")
    for result in results:
        points = f"{_points(result.score)}/{_points(result.graded_weight)}"
        errors = str(len(result.case_errors)) if result.case_errors else ""
        print(f"{result.name:<{width}}  {result.family or '-':<{family_width}}  {result.status:<10}"
              f"  {points:>6}  {result.seconds:5.1f} s  {errors}".rstrip())
    graded = [result for result in results if result.status != CASE_ERROR]
    passed = sum(result.passed for result in graded)
    total = sum(result.graded_weight for result in results)
    score = sum(result.score for result in results)
    summary = f"Score: {_points(score)}/{_points(total)}; {passed} of {len(graded)} tests passed"
    not_run = [result for result in results if result.status == CASE_ERROR]
    with_errors = [result for result in results if result.case_errors and result.status != CASE_ERROR]
    if not_run:
        summary += (f"; {len(not_run)} case(s) not run for errors in the file"
                    f" ({_points(sum(result.weight for result in not_run))} points not graded)")
    if with_errors:
        anyway = sum(len(result.graded_errors) for result in with_errors)
        summary += f"; {sum(len(result.case_errors) for result in with_errors)} case error(s) in" \
                   f" {len(with_errors)} case(s) that ran" + \
                   (f" ({anyway} graded all the same, as the course does)" if anyway else " (those keys not graded)")
    print(summary, flush=True)


def record_cases(paths: List[Path], settings: Settings, keys_only: bool, states: bool = True,
                 transcripts: bool = True) -> int:
    """--record: write what our server's network really ends in into each case file, and what crossed
    each link into the transcript beside it (--record-transcripts: only that); 1 if any is refused."""
    runs: List[Transcript] = []  # each run's transcript, for the outcomes a case's links can have

    def observe(path: Path) -> Tuple[Optional[Dict[str, Dict[str, Any]]], str]:
        result = run_case(path, settings)
        if result.transcript is not None and result.observed is not None:
            runs.append(result.transcript)
        return result.observed, result.explanation

    refused = 0
    for path in paths:
        runs.clear()
        if states:
            written, what = record(path, observe, keys_only)
        else:
            complete = [observe(path)[0] is not None for _ in range(2)]
            written, what = all(complete), "not recorded: a run did not complete (see its log)"
        if transcripts and written:
            while len(runs) < TRANSCRIPT_RUNS:  # more runs than the state needs: a rarer outcome shows too
                observe(path)
            written, said = record_transcript(path, runs)
            what = f"{what}; {said}" if states else said
        refused += not written
        print(f"{'ok     ' if written else 'REFUSED'}  {path.stem}: {what}", flush=True)
    return 1 if refused else 0


def compare_without_chaos(results: List[CaseResult], paths: List[Path], settings: Settings, jobs: int) -> None:
    """After a run under --chaos: run the cases that failed again without it, and say which fail only
    under chaos (the server trusts one read to hold exactly one message, which networks do not promise)."""
    failed = [path for path, result in zip(paths, results) if result.status == FAILED]
    if not failed:
        print("Under chaos every case that ran passed.")
        return
    print(f"\nRunning the {len(failed)} case(s) that failed under chaos again, without it:", flush=True)
    again = run_all([(path, settings) for path in failed], jobs, lambda index, result: None)
    only = [result.name for result in again if result.status == PASSED]
    both = [result.name for result in again if result.status != PASSED]
    if only:
        print(f"Fail only under chaos ({len(only)}): {', '.join(only)} -- the server takes a read for a whole"
              " message somewhere; a real network cuts and glues messages as the relays did")
    if both:
        print(f"Fail without chaos too ({len(both)}): {', '.join(both)}")


def list_cases(paths: List[Path]) -> None:
    for path in paths:
        try:
            case = load_case(path)
            print(f"{case.name:<40} {_points(case.weight):>3}  {case.family or '-':<16} {case.description}")
        except CaseError as error:
            print(f"{path.stem:<40} error: {error}")


def lint_cases(paths: List[Path]) -> int:
    """--lint: every mistake in each case, named with the case and the command or key; 1 if any."""
    errors = 0
    for path in paths:
        try:
            findings: List[Any] = lint(load_case(path))
        except CaseError as error:
            findings = [error]
        errors += len(findings)
        print(f"{'ok   ' if not findings else 'ERROR'}  {path.stem}", flush=True)
        for finding in findings:
            note = "  (the whole case cannot be graded)" if getattr(finding, "whole_case", True) else ""
            print(f"       {finding}{note}", flush=True)
    print(f"{errors} error(s) in {len(paths)} case(s)")
    return 1 if errors else 0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    def positive(text: str) -> float:
        value = float(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    def workers(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
        return value

    def port_range(text: str) -> Tuple[int, int]:
        low, _, high = text.partition("-")
        if not (low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) <= 65535):
            raise argparse.ArgumentTypeError(f"must be LOW-HIGH, from 1024 to 65535 with LOW below HIGH, not {text!r}")
        return int(low), int(high)

    parser = ChatClient.ArgumentParser(prog="ChatTestManager.py", description="Run CRC scenario test cases.")
    parser.add_argument("names", nargs="*",
                        help="run only these cases: names, starts of names, or paths to .cfg files")
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES_DIR, help="folder of .cfg case files")
    parser.add_argument("--server", type=Path, default=DEFAULT_SERVER, help="the ChatServer.py to test")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--lint", action="store_true",
                        help="read each case against its own commands, report every mistake, and exit")
    parser.add_argument("--record", action="store_true",
                        help="run the cases named (twice each, with our server) and write the final state they"
                             " end in into each file")
    parser.add_argument("--record-transcripts", action="store_true",
                        help="run the cases named (twice each, with our server) and write only what crossed each"
                             " link into NAME.transcript.json beside each case")
    parser.add_argument("--reference-logs", type=Path, metavar="DIR",
                        help="the course's reference logs (NAME.log, as in its 'Correct Logs' folder): what a"
                             " failed case is compared with where it has no transcript beside it")
    parser.add_argument("--record-keys-only", action="store_true",
                        help="with --record, only the keys each file already names")
    parser.add_argument("--mutants", action="store_true",
                        help="run the cases against each mutant of our server (a deliberate bug each) and show"
                             " which cases catch which")
    parser.add_argument("--require-kill", action="store_true",
                        help="with --mutants, exit 1 when a mutant passes every case")
    parser.add_argument("--chaos", type=int, metavar="SEED",
                        help="pass every connection to a server through a relay that cuts the byte stream at"
                             " random points, glues writes together and delays them, all drawn from SEED")
    parser.add_argument("--as-course", action="store_true",
                        help="grade exactly as the course's checker does: only its keys, machines it cannot find"
                             " skipped, the lint's findings reported but graded all the same (except values that"
                             " cannot be compared), errors a server logs shown but not failed")
    parser.add_argument("-j", "--jobs", type=workers, default=os.cpu_count() or 1, metavar="N",
                        help="run N cases at a time in worker processes (default: one per core, %(default)s here);"
                             " 1 runs them one by one in this process")
    parser.add_argument("--strict-waits", action="store_true",
                        help="give every WAIT its full time, as the course's kit does, instead of ending it"
                             " once the network is quiet")
    parser.add_argument("--slow", type=positive, default=1.0, help="multiply every WAIT by this factor")
    parser.add_argument("--timeout", type=positive, default=DEFAULT_TIMEOUT,
                        help="fail a test still running this many seconds beyond its WAITs (default %(default)g)")
    parser.add_argument("--keep-ports", action="store_true", help="use the ports written in the cases (implies -j 1)")
    parser.add_argument("--ports", type=port_range, metavar="LO-HI",
                        help="give the servers ports from this range only, shared among the workers (default: a"
                             " free port below the system's ephemeral range)")
    parser.add_argument("--logs", type=Path, default=DEFAULT_LOGS_DIR, help="folder for logs (default Logs/)")
    parser.add_argument("--gradescope", type=Path, metavar="FILE",
                        help="also write the results in Gradescope's autograder format (results.json)")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write the results as JUnit XML, for CI")
    parser.add_argument("--demo", action="store_true",
                        help="start a small network (3 servers, 3 clients) in this process and show messages flowing")
    return parser.parse_args(argv)


def report(result: CaseResult) -> None:
    """One line per finished test, and why it failed or what in its file is wrong."""
    print(f"{result.status}  {result.name}  ({result.seconds:.1f} s)", flush=True)
    for line in result.output.splitlines() if not result.passed or result.case_errors or result.logged else []:
        print(f"      {line}".rstrip(), flush=True)


def _start_worker(slots: Any, count: int, port_range: Optional[Tuple[int, int]]) -> None:
    """In a new worker process: take a slot no other worker of this run has, and its ports."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops the run
    ports.block = port_block(slots.get(), count, port_range)


def run_cases(paths: List[Path], settings: Settings, jobs: int) -> List[CaseResult]:
    """Run the cases, `jobs` at a time, reporting each as it finishes; the results in case order."""
    return run_all([(path, settings) for path in paths], jobs, lambda index, result: report(result))


def run_all(work: List[Tuple[Path, Settings]], jobs: int,
            done: Callable[[int, CaseResult], None]) -> List[CaseResult]:
    """Run each case with its settings, `jobs` at a time in worker processes (or, with one job, in this
    process), calling `done` with each result's place in `work` as it comes; the results in that order."""
    jobs = min(jobs, len(work))
    if jobs == 1:
        ports.block = port_block(0, 1, work[0][1].ports)
        results = []
        for index, (path, settings) in enumerate(work):
            results.append(run_case(path, settings))
            done(index, results[-1])
        return results
    # spawn, not fork: a fork of a process with threads (pytest's, an abandoned case's) can deadlock.
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(jobs):
        slots.put(slot)
    finished: Dict[int, CaseResult] = {}
    with ProcessPoolExecutor(jobs, context, _start_worker, (slots, jobs, work[0][1].ports)) as pool:
        futures: Dict[Future[CaseResult], int] = {pool.submit(run_case, path, settings): index
                                                  for index, (path, settings) in enumerate(work)}
        try:
            for future in as_completed(futures):
                index = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool as error:  # a worker died (a submission called os._exit, say)
                    path = work[index][0]
                    result = CaseResult(path.stem, FAILED, 0.0, [f"error: the worker process died: {error}"],
                                        declared_weight(path))
                finished[index] = result
                done(index, result)
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)  # the cases under way finish; the queued ones never start
            raise
    return [finished[index] for index in range(len(work))]


def run_mutants(paths: List[Path], settings: Settings, jobs: int, require_kill: bool) -> int:
    """--mutants: every case against every mutant of our server (Testers/mutants.py), then a matrix of
    which cases catch which mutants, the score each mutant would get, and the mutants no case catches.
    With require_kill, 1 when a mutant survives."""
    with tempfile.TemporaryDirectory(prefix="crc-mutants-") as folder:
        servers = write_mutants(DEFAULT_SERVER, Path(folder))
        work = [(path, replace(settings, server_path=servers[mutant.name],
                               logs_dir=Path(settings.logs_dir) / "mutants" / mutant.name))
                for mutant in MUTANTS for path in paths]
        left = {mutant.name: len(paths) for mutant in MUTANTS}

        def done(index: int, result: CaseResult) -> None:
            mutant = MUTANTS[index // len(paths)]
            left[mutant.name] -= 1
            if not left[mutant.name]:
                print(f"  {mutant.name}: all {len(paths)} case(s) run", flush=True)

        print(f"Running {len(paths)} case(s) against each of {len(MUTANTS)} mutants of our server:"
              f" {len(work)} runs, {min(jobs, len(work))} at a time", flush=True)
        results = run_all(work, jobs, done)
    return print_mutant_matrix(paths, results, require_kill)


def print_mutant_matrix(paths: List[Path], results: List[CaseResult], require_kill: bool) -> int:
    columns = ["_".join(path.stem.split("_")[:2]) for path in paths]
    width = max(len(mutant.name) for mutant in MUTANTS)
    print("\nMutants by cases (X: the case fails, so it catches the mutant; .: the mutant passes it)")
    print(f"{'':<{width}}  " + " ".join(f"{column:>3}" for column in columns) + "   score")
    survivors = []
    for number, mutant in enumerate(MUTANTS):
        row = results[number * len(paths):(number + 1) * len(paths)]
        marks = ["X" if result.status == FAILED else "." for result in row]
        score = sum(result.score for result in row)
        total = sum(result.graded_weight for result in row)  # a case error counts for nothing, as in the table
        print(f"{mutant.name:<{width}}  " + " ".join(f"{mark:>3}" for mark in marks) + f"   {_points(score)}/"
              f"{_points(total)}", flush=True)
        if "X" not in marks:
            survivors.append(mutant)
    if survivors:
        print("\nMutants no case catches:")
        for mutant in survivors:
            print(f"  {mutant.name} ({mutant.part}): {mutant.bug}")
    else:
        print(f"\nEvery one of the {len(MUTANTS)} mutants is caught by at least one case.")
    return 1 if survivors and require_kill else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.demo:
        from Testers.demo import run_demo  # only the demo needs it
        return run_demo()
    if not args.cases.is_dir():
        print(f"error: --cases {args.cases}: no such folder", file=sys.stderr)
        return 2
    try:
        paths = select_cases(args.cases, args.names)
    except CaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: no .cfg case files in {args.cases}", file=sys.stderr)
        return 2
    if args.list:
        list_cases(paths)
        return 0
    if args.lint:
        return lint_cases(paths)
    if args.record or args.record_transcripts:
        if not args.names:
            print("error: --record needs the cases to record, by name or file", file=sys.stderr)
            return 2
        ports.block = port_block(0, 1, args.ports)
        return record_cases(paths, Settings(logs_dir=args.logs, slow=args.slow, timeout=args.timeout),
                            args.record_keys_only, states=args.record)
    try:
        load_server_module(args.server)
    except Exception as error:  # whatever a submission raises on import: one line, not a traceback of ours
        problem = describe_load_error(args.server, error)
        print(f"error: {problem}", file=sys.stderr)
        if args.gradescope:  # the autograder still gets results: every test failed, and why
            failed = [CaseResult(path.stem, FAILED, 0.0, [f"error: {problem}"], declared_weight(path))
                      for path in paths]
            write_gradescope(args.gradescope, failed, 0.0, problem)
        return 2
    if args.reference_logs is not None and not args.reference_logs.is_dir():
        print(f"error: --reference-logs {args.reference_logs}: no such folder", file=sys.stderr)
        return 2
    # The course's kit keeps its reference logs in 'Correct Logs' beside its TestCases folder.
    beside = args.cases.resolve().parent / "Correct Logs"
    reference_logs = args.reference_logs or (beside if beside.is_dir() else None)
    settings = Settings(args.server, args.slow, args.timeout, args.keep_ports, args.logs, args.strict_waits,
                        args.as_course, ports=args.ports, chaos=args.chaos, reference_logs=reference_logs)
    jobs = 1 if args.keep_ports else args.jobs  # cases as written share their ports
    if args.mutants:
        return run_mutants(paths, settings, jobs, args.require_kill)
    started = time.monotonic()
    try:
        results = run_cases(paths, settings, jobs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    seconds = time.monotonic() - started
    print_table(results)
    if args.chaos is not None:
        compare_without_chaos(results, paths, replace(settings, chaos=None), jobs)
    charts = [str(path) for result in results for path in result.logs if path.suffix == ".html"]
    if charts:  # the run's last line: where to look first
        print(f"Charts of the failed case(s), this run beside the reference: {', '.join(charts)}")
    if args.gradescope:
        write_gradescope(args.gradescope, results, seconds)
    if args.junit:
        write_junit(args.junit, results, seconds)
    return 0 if all(result.status != FAILED for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
