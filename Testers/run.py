"""Running a case's commands: servers as threads of this process and our clients, as the course's kit
runs them, with quiet waits, chaos relays and the trace; what the run gives is a RunRecord, plain data,
never judged here. The manager (ChatTestManager.py) runs cases here in its own worker processes, or, when
it grades a submission, in a sandboxed child (Testers/child.py) that imports this module and little else.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import sysconfig
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import ChatClient
from Testers import ports, tester_class
from Testers.cases import Case
from Testers.chaos import ChaosRelay
from Testers.keys import CONNECTIVITY, read_machine
from Testers.ports import PortMap
from Testers.quiet import ServerProbe, WaitRecord, can_report_quiet, wait_until_quiet
from Testers.trace import TraceCapture, capture_stdout
from Testers.transcript import Transcript, Wiretap, wire_transcript

KIT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_LOGS_DIR = KIT_DIR / "Logs"
DEFAULT_SERVER = KIT_DIR / "ChatServer.py"
DEFAULT_TIMEOUT = 30.0  # seconds beyond a case's own WAITs


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
    if isinstance(error, FileNotFoundError) and not Path(path).is_file():  # not one the submission raised
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

@dataclass(frozen=True)
class Limits:
    memory_mib: int = 1024  # address space, of which threads' stacks take much without using it
    processes: int = 256  # processes and threads of the child's user (with a user of its own)
    open_files: int = 1024
    file_mib: int = 64  # the largest file it may write; also the size of its /tmp
    import_seconds: float = 10.0  # to import the submission
    grace_seconds: float = 15.0  # beyond the case's own time limit (--timeout plus its WAITs)

    def describe(self) -> str:
        return (f"{self.memory_mib} MiB of memory, {self.processes} processes, {self.open_files} open files,"
                f" files up to {self.file_mib} MiB, {self.import_seconds:g} s to import, the case's own"
                f" time limit plus {self.grace_seconds:g} s")


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
    recording: bool = False  # --record: the run observes the final state, so what the file expects is moot
    reference_logs: Optional[Path] = None  # the course's reference logs (NAME.log), for cases without a transcript
    isolate: bool = False  # grading: each case in a sandboxed child process (Testers/isolation.py)
    sandbox: str = "auto"  # how much of the sandbox to apply (Testers.isolation.SANDBOX_MODES)
    limits: Limits = field(default_factory=Limits)  # what that child may use


class CaseRun:
    """One run of one case: the machines it launched and what went wrong. `execute` runs in a worker
    thread so that the caller can give up on it when it hangs. The commands call back the methods
    under `execute` (Testers.commands.Runner)."""

    def __init__(self, case: Case, settings: Settings, server_class: type, log_dir: Path,
                 trace: TraceCapture, on_step: Callable[[str], None]) -> None:
        self.case = case
        self.on_step = on_step
        self.settings = settings
        self.server_class = tester_class(case.type, server_class)
        self.log_dir = log_dir
        self.trace = trace
        self.ports = PortMap(settings.keep_ports)
        self.machines: Dict[str, Tuple[str, Any]] = {}  # name -> (kind, machine), in launch order
        self.server_threads: Dict[str, threading.Thread] = {}
        self.probes: Dict[str, ServerProbe] = {}  # the servers our quiet waits can read (Testers/quiet.py)
        self.finished = False  # every command was carried out
        self.failure = ""  # why a command failed, if one did
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

    def note(self, text: str) -> None:
        self.journal.append(f"{time.monotonic() - self.started:8.3f}s  {text}")

    def execute(self) -> None:
        try:
            for number, (line, command) in enumerate(zip(self.case.lines, self.case.commands), 1):
                if self.aborted.is_set():
                    return
                self.step = f"command {number} {line!r}"
                self.note(self.step)
                self.on_step(self.step)
                if self.tap is not None:
                    self.tap.after = number - 1
                self.trace.add(f"*CMD {line}")  # among the servers' trace, as the course's harness logs it
                command.carry_out(self)
            self.finished = True
        except Exception as error:  # a server or client that raises is a failed test, not a crash of the run
            self.exceptions.append(error)
            self.failure = f"error at {self.step}: {type(error).__name__}: {error}"
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
        if ServerProbe.fits(server):
            self.probes[name] = ServerProbe(server)
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
        running = [self.probes[name] for name in self.servers
                   if name not in self.stopped and self.server_threads[name].is_alive() and name in self.probes]
        mute = [name for name in self.servers if name not in self.probes]
        if self.settings.strict_waits or mute:
            self.aborted.wait(seconds)
            if self.settings.strict_waits:
                why = "full time (--strict-waits)"
            else:
                why = f"full time: server {mute[0]} is not built as ours, and cannot be seen to be quiet"
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
            probe: Any = self.probes.get(name) if kind == "server" else machine
            if not can_report_quiet(probe):
                state = "cannot say whether it is quiet"
            elif probe.is_quiet():
                continue
            else:
                state = "busy"
            lines.append(f"  {kind} {name}: {state}, {where(frames.get(thread.ident or 0))}")
        return lines

    def abort(self) -> None:
        self.aborted.set()
        self.stop_everything(join=False)

    def observed_state(self) -> Dict[str, Tuple[str, Dict[str, Any]]]:
        """Every checkable key of every machine, read once (Testers.keys.Key.read)."""
        return {name: (kind, read_machine(machine, kind, self.case.type))
                for name, (kind, machine) in list(self.machines.items())}


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


@dataclass
class RunRecord:
    """What one run of a case's commands gave, as plain data, never judged: what an in-process run hands
    to `judge`, and what a sandboxed child sends back to the grader (Testers/isolation.py), which alone
    holds the case's final state."""
    machines: Dict[str, Tuple[str, Dict[str, Any]]]  # name -> (kind, its keys as read at the end), launch order
    errors: List[str]  # what fails the case whatever the state: a time-out, a crash, a command that raised
    logged: List[str]  # errors servers logged: they fail the case, except under --as-course
    finished: bool  # every command was carried out in time: the final state is checked
    clean: bool  # and nothing crashed, raised or was logged: the state is worth recording
    waits: List[WaitRecord] = field(default_factory=list)
    journal: List[str] = field(default_factory=list)  # what happened, with times, for the log
    trace: List[str] = field(default_factory=list)  # what the servers printed, and each command as *CMD
    about: List[str] = field(default_factory=list)  # lines for the log's head: ports, worker, chaos
    exception: Optional[BaseException] = None  # in-process: the first exception a machine raised
    transcript: Optional[Transcript] = None  # what crossed each link, from the wire (Testers/transcript.py)


def run_here(case: Case, settings: Settings, server_class: type, log_dir: Path,
             on_step: Callable[[str], None] = lambda step: None) -> RunRecord:
    """Carry out a case's commands with servers of `server_class` as threads of this process, as the
    course's kit does, to completion or to the case's time limit. `on_step` hears of each command as it
    starts."""
    limit = settings.timeout + settings.slow * case.total_wait
    with _ThreadErrors() as thread_errors, capture_stdout() as trace, Wiretap() as tap:
        run = CaseRun(case, settings, server_class, log_dir, trace, on_step)
        run.tap = tap
        worker = threading.Thread(target=run.execute, name=f"case {case.name}", daemon=True)
        worker.start()
        worker.join(limit)
        errors: List[str] = []
        if worker.is_alive():
            errors = [f"time limit: the test was still running after {limit:.1f} s"
                      f" ({settings.timeout:g} s beyond its WAITs), at {run.step}", *run.busy(worker)]
            run.abort()  # the worker is abandoned; it is a daemon thread and holds nothing we need
    errors += run.crashes + ([run.failure] if run.failure else []) + thread_errors.errors
    exceptions = run.exceptions + thread_errors.exceptions
    chaos = f"seed {run.chaos}" if run.chaos is not None else "none"
    about = [f"worker   process {os.getpid()}, port block {ports.block!r}, chaos {chaos}",
             f"ports    {run.ports.ports or 'as written'}", f"logs     {log_dir}"]
    try:
        transcript: Optional[Transcript] = wire_transcript(tap, case, dict(run.ports.ports))
    except Exception:  # a transcript that cannot be made must not cost the case its result
        transcript = None
        about.append(f"wire     no transcript: {traceback.format_exc().rstrip().splitlines()[-1]}")
    return RunRecord(run.observed_state(),  # once: a machine left running after a time-out may still change it
                     errors, list(run.logged), run.finished and not worker.is_alive(),
                     not (errors or run.logged or exceptions), list(run.waits), list(run.journal), trace.ended(),
                     about, exceptions[0] if exceptions else None, transcript)


def record_as_data(record: RunRecord) -> Dict[str, Any]:
    """A RunRecord as JSON data, for a sandboxed run to send back (Testers/isolation.py reads it)."""
    data = {name: getattr(record, name) for name in RunRecord.__dataclass_fields__}
    data["waits"] = [asdict(wait) for wait in record.waits]
    data["exception"] = None if record.exception is None else f"{type(record.exception).__name__}: {record.exception}"
    return data


def server_parser(server_path: Path) -> Optional[str]:
    """The ChatMessageParser.py a loaded server imported, for the log."""
    parser = _server_parsers.get(Path(server_path).resolve())
    return str(parser) if parser else None
