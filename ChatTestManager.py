#!/usr/bin/env python3
"""Runs CRC scenario test cases: launches servers and clients as threads, carries out each case's
commands, then compares every machine's state with the case's final_state.

    python3 ChatTestManager.py                      run every case in TestCases/
    python3 ChatTestManager.py 2_ 4_3               run the cases whose names start with 2_ or 4_3
    python3 ChatTestManager.py --list               list the cases with their weights
    python3 ChatTestManager.py --server sub/ChatServer.py   grade another server (a submission)
    python3 ChatTestManager.py --demo               a small network in this process, for a first look

A WAIT ends as soon as the whole network is quiet (see Testers/quiet.py), or when its time has passed;
a server that cannot say whether it is quiet (a submission may not) gets the full time, and
--strict-waits gives every WAIT its full time. Cases run in parallel worker processes (-j N, default
one per core), each worker with its own block of ports; -j 1 runs them one by one in this process.

Options: --cases DIR (another folder of .cfg files), --slow F (multiply every WAIT by F on a slow
machine), --timeout S (a test fails once it runs S seconds beyond its own WAITs), --keep-ports (use
the ports as written instead of free ones; implies -j 1), --logs DIR (where logs go; default Logs/
beside this file), --gradescope FILE and --junit FILE (results for Gradescope and for CI).

A case file is JSON: `type` (network_connectivity or CRC_functionality), `commands`, `final_state`,
and optionally `weight` (points, default 1), `family` and `description`, which only the report uses.
Any other top-level key is ignored with a warning in the test's log; a final_state key the checker does
not know is an error. On a failure the log, the console and the results files draw the network.
Exit status: 0 when every test passed, 1 when any failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Set, Union

KIT_DIR = Path(__file__).resolve().parent
if str(KIT_DIR) not in sys.path:  # so the kit's own modules import when this file is loaded from elsewhere
    sys.path.insert(0, str(KIT_DIR))

# Ours is imported first and stays in sys.modules, so our client and testers keep our parser even
# when a submission brings its own.
import ChatClient  # noqa: E402
import ChatMessageParser  # noqa: E402,F401
from Testers import (  # noqa: E402
    TESTER_FACTORIES,
    ports,
    tester_class,
)
from Testers.checker import allowed_keys, check_final_state, observed, validate_final_state  # noqa: E402
from Testers.drawing import MachineView, draw_network  # noqa: E402
from Testers.ports import PortMap, port_block  # noqa: E402
from Testers.quiet import WaitRecord, can_report_quiet, wait_until_quiet  # noqa: E402
from Testers.reports import write_gradescope, write_junit  # noqa: E402
from Testers.trace import TraceCapture, capture_stdout  # noqa: E402

DEFAULT_CASES_DIR = KIT_DIR / "TestCases"
DEFAULT_LOGS_DIR = KIT_DIR / "Logs"
DEFAULT_SERVER = KIT_DIR / "ChatServer.py"
DEFAULT_TIMEOUT = 30.0  # seconds beyond a case's own WAITs
DRAWING_WIDTH = 94  # a 100-column terminal, less the indent of a failure's lines
CASE_KEYS = {"type", "commands", "final_state"}
OPTIONAL_CASE_KEYS = {"weight", "family", "description"}  # for the report only; the checker ignores them


class CaseError(ValueError):
    """A case file that cannot be run as written."""


# ---------------------------------------------------------------------------------------------
# Commands

def split_arguments(line: str) -> List[str]:
    """Split on white space, keeping each double-quoted run whole, quotes included."""
    tokens: List[str] = []
    current: List[str] = []
    quoted = False
    for char in line:
        if quoted:
            current.append(char)
            quoted = char != '"'
        elif char == '"':
            current.append(char)
            quoted = True
        elif char.isspace():
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(char)
    if quoted:
        raise CaseError(f"unterminated double quote in {line!r}")
    if current:
        tokens.append("".join(current))
    return tokens


class _OptionParser(argparse.ArgumentParser):
    """argparse that raises CaseError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CaseError(f"{self.prog}: {message}")


def _server_option_parser() -> _OptionParser:
    parser = _OptionParser(prog="LAUNCHSERVER", add_help=False, allow_abbrev=False)
    parser.add_argument("--id", type=int, default=None)
    parser.add_argument("--servername", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--info", default="")
    parser.add_argument("--connect_to_host", default=None)
    parser.add_argument("--connect_to_port", type=int, default=None)
    parser.add_argument("--log-file", dest="log_file", default=None)
    return parser


def _client_option_parser() -> _OptionParser:
    parser = _OptionParser(prog="LAUNCHCLIENT", add_help=False, allow_abbrev=False)
    parser.add_argument("--id", type=int, default=None)
    parser.add_argument("--serverhost", default="localhost")
    parser.add_argument("--serverport", type=int, required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--info", default="")
    parser.add_argument("--log-file", dest="log_file", default=None)
    return parser


SERVER_OPTIONS = _server_option_parser()
CLIENT_OPTIONS = _client_option_parser()


@dataclass
class LaunchServer:
    options: argparse.Namespace  # exactly the contract's server options, ports as written in the case

    @property
    def name(self) -> str:
        return str(self.options.servername)


@dataclass
class LaunchClient:
    options: argparse.Namespace

    @property
    def name(self) -> str:
        return str(self.options.username)


@dataclass
class ClientCommand:
    username: str
    action: str  # MESSAGE or QUIT
    text: str
    destination: Optional[int] = None


@dataclass
class Wait:
    seconds: float


@dataclass
class Kill:
    target: str  # ALL or a machine's name


Command = Union[LaunchServer, LaunchClient, ClientCommand, Wait, Kill]


def _parse_client_command(arguments: List[str]) -> ClientCommand:
    username: Optional[str] = None
    words: Optional[List[str]] = None
    index = 0
    while index < len(arguments):
        if arguments[index] == "--username" and index + 1 < len(arguments):
            username = arguments[index + 1]
            index += 2
        elif arguments[index] == "--command":
            # Everything after --command up to a later --username is the command and its text.
            end = arguments.index("--username", index) if "--username" in arguments[index:] else len(arguments)
            words = arguments[index + 1:end]
            index = end
        else:
            raise CaseError(f"CLIENTCOMMAND: unexpected argument {arguments[index]!r}")
    if username is None or not words:
        raise CaseError("CLIENTCOMMAND needs --username NAME and --command MESSAGE ID TEXT or --command QUIT [TEXT]")
    action, rest = words[0], words[1:]
    if action == "QUIT":
        return ClientCommand(username, action, " ".join(rest))
    if action == "MESSAGE":
        if len(rest) < 2 or not (rest[0].isascii() and rest[0].isdigit()):
            raise CaseError(f"CLIENTCOMMAND --command MESSAGE needs a destination id and a text, not {rest!r}")
        return ClientCommand(username, action, " ".join(rest[1:]), int(rest[0]))
    raise CaseError(f"CLIENTCOMMAND: unknown command {action!r}; expected MESSAGE or QUIT")


def parse_command(line: str) -> Command:
    if not isinstance(line, str):
        raise CaseError(f"a command must be a string, not {line!r}")
    words = split_arguments(line)
    if not words:
        raise CaseError("empty command")
    verb, arguments = words[0], words[1:]
    if verb == "LAUNCHSERVER":
        return LaunchServer(SERVER_OPTIONS.parse_args(arguments))
    if verb == "LAUNCHCLIENT":
        return LaunchClient(CLIENT_OPTIONS.parse_args(arguments))
    if verb == "CLIENTCOMMAND":
        return _parse_client_command(arguments)
    if verb == "WAIT":
        try:
            seconds = float(arguments[0]) if len(arguments) == 1 else -1.0
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < math.inf:  # also refuses nan
            raise CaseError(f"WAIT needs one number of seconds, not {arguments!r}")
        return Wait(seconds)
    if verb == "KILL":
        if len(arguments) != 1:
            raise CaseError(f"KILL needs ALL or one machine's name, not {arguments!r}")
        return Kill(arguments[0])
    raise CaseError(f"unknown command {verb!r}; expected LAUNCHSERVER, LAUNCHCLIENT, CLIENTCOMMAND, WAIT or KILL")


# ---------------------------------------------------------------------------------------------
# Case files

@dataclass
class Case:
    name: str
    path: Path
    type: str
    lines: List[str]
    commands: List[Command]
    final_state: Dict[str, Dict[str, List[Any]]]
    weight: float = 1.0
    family: str = ""
    description: str = ""
    warnings: List[str] = field(default_factory=list)  # for the log: what was ignored in the file

    @property
    def total_wait(self) -> float:
        return sum(command.seconds for command in self.commands if isinstance(command, Wait))


def load_case(path: Path) -> Case:
    """Read and check a case file completely, so that no mistake in it surfaces halfway through a run."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CaseError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise CaseError("a case file holds one JSON object")
    missing = CASE_KEYS - data.keys()
    if missing:
        raise CaseError(f"missing keys {sorted(missing)}; a case has {sorted(CASE_KEYS)}"
                        f" and may have {sorted(OPTIONAL_CASE_KEYS)}")
    # The course's files may carry keys of their own: ignored, but said, in case one is a typo.
    unknown = sorted(data.keys() - CASE_KEYS - OPTIONAL_CASE_KEYS)
    warnings = [f"warning: ignored the unknown top-level key {key!r}; a case has {sorted(CASE_KEYS)}"
                f" and may have {sorted(OPTIONAL_CASE_KEYS)}" for key in unknown]
    if data["type"] not in TESTER_FACTORIES:
        raise CaseError(f"unknown case type {data['type']!r}; expected one of {sorted(TESTER_FACTORIES)}")
    if not isinstance(data["commands"], list):
        raise CaseError("commands must be a list of strings")
    commands = []
    kinds: Dict[str, str] = {}  # machine name -> 'server' or 'client', in launch order
    for number, line in enumerate(data["commands"], 1):
        try:
            command = parse_command(line)
            if isinstance(command, (LaunchServer, LaunchClient)):
                if command.name in kinds:
                    raise CaseError(f"a machine named {command.name!r} is already launched")
                kinds[command.name] = "server" if isinstance(command, LaunchServer) else "client"
            elif isinstance(command, ClientCommand) and kinds.get(command.username) != "client":
                raise CaseError(f"no client named {command.username!r} has been launched")
            elif isinstance(command, Kill) and command.target != "ALL" and command.target not in kinds:
                raise CaseError(f"no machine named {command.target!r} has been launched")
        except CaseError as error:
            raise CaseError(f"command {number} {line!r}: {error}") from None
        commands.append(command)
    problems = validate_final_state(data["final_state"], kinds, data["type"])
    if problems:
        raise CaseError("; ".join(problems))
    weight = data.get("weight", 1)
    if not _is_weight(weight):
        raise CaseError(f"weight must be a number of points, not {weight!r}")
    return Case(path.stem, path, data["type"], list(data["commands"]), commands, data["final_state"],
                weight, str(data.get("family", "")), str(data.get("description", "")), warnings)


def _declared_weight(path: Path) -> float:
    """The weight a case file claims, even when the rest of it is broken, so the total stays right."""
    try:
        weight = json.loads(path.read_text(encoding="utf-8")).get("weight", 1)
    except (OSError, ValueError, AttributeError):
        return 1
    return weight if _is_weight(weight) else 1


def _is_weight(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _natural_key(name: str) -> List[Union[int, str]]:
    # 2_10 after 2_9: numbers in names compare as numbers.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def select_cases(cases_dir: Path, selectors: List[str]) -> List[Path]:
    """Case files whose names equal or start with one of the selectors (all of them without any)."""
    paths = sorted(Path(cases_dir).glob("*.cfg"), key=lambda path: _natural_key(path.stem))
    if not selectors:
        return paths
    chosen: List[Path] = []
    for selector in selectors:
        stem = selector[:-4] if selector.endswith(".cfg") else selector
        matches = [path for path in paths if path.stem.startswith(stem)]
        if not matches:
            raise CaseError(f"no case in {cases_dir} is named or starts with {selector!r}")
        chosen.extend(path for path in matches if path not in chosen)
    return sorted(chosen, key=lambda path: _natural_key(path.stem))


# ---------------------------------------------------------------------------------------------
# The server under test

_loaded_servers: Dict[Path, ModuleType] = {}
_server_parsers: Dict[Path, Path] = {}  # server file -> the ChatMessageParser.py it imported


def load_server_module(path: Path = DEFAULT_SERVER) -> ModuleType:
    """Import a ChatServer.py as a module named ChatServer.

    A ChatMessageParser.py beside it is what that server imports, as in the course's kit; it is in
    sys.modules only while the server module runs its imports, so everything else keeps ours.
    """
    path = Path(path).resolve()
    if path in _loaded_servers:
        return _loaded_servers[path]
    if not path.is_file():
        raise FileNotFoundError(f"no server file {path}")
    saved = {name: sys.modules.get(name) for name in ("ChatServer", "ChatMessageParser")}
    kit_parser = KIT_DIR / "ChatMessageParser.py"
    beside = path.with_name("ChatMessageParser.py")
    parser_path = beside if beside.is_file() and not beside.samefile(kit_parser) else kit_parser
    try:
        if parser_path != kit_parser:
            _exec_module("ChatMessageParser", parser_path)
        module = _exec_module("ChatServer", path)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    if not isinstance(getattr(module, "CRCServer", None), type):
        raise ImportError(f"{path} defines no class CRCServer")
    _loaded_servers[path] = module
    _server_parsers[path] = parser_path
    return module


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


@dataclass
class CaseResult:
    name: str
    passed: bool
    seconds: float
    problems: List[str] = field(default_factory=list)  # checker explanations and errors, in order
    weight: float = 1.0
    family: str = ""
    drawing: str = ""  # the network at the end, drawn when the case failed after it ran
    waits: List[WaitRecord] = field(default_factory=list)  # what each WAIT did, in order

    @property
    def score(self) -> float:
        return self.weight if self.passed else 0

    @property
    def explanation(self) -> str:
        return "\n".join(self.problems) if self.problems else "passed"

    @property
    def output(self) -> str:
        """The explanation, and the drawing of the network when there is one."""
        return self.explanation + (f"\n\n{self.drawing}" if self.drawing else "")


class CaseRun:
    """One run of one case: the machines it launched and what went wrong. `execute` runs in a worker
    thread so that the caller can give up on it when it hangs."""

    def __init__(self, case: Case, settings: Settings, server_class: type, log_dir: Path) -> None:
        self.case = case
        self.settings = settings
        self.server_class = tester_class(case.type, server_class)
        self.log_dir = log_dir
        self.ports = PortMap(settings.keep_ports)
        self.servers: Dict[str, Any] = {}
        self.server_threads: Dict[str, threading.Thread] = {}
        self.clients: Dict[str, Any] = {}
        self.problems: List[str] = []
        self.crashes: List[str] = []  # exceptions that ended a machine's thread
        self.journal: List[str] = []  # what happened, for the log file
        self.waits: List[WaitRecord] = []
        self.stopped: Set[str] = set()  # servers stopped by a KILL: they take no part in quiet waits
        self.step = "before the first command"
        self.aborted = threading.Event()
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        self.journal.append(f"{time.monotonic() - self.started:8.3f}s  {text}")

    def execute(self) -> None:
        try:
            for number, (line, command) in enumerate(zip(self.case.lines, self.case.commands), 1):
                if self.aborted.is_set():
                    return
                self.step = f"command {number} {line!r}"
                self.note(self.step)
                self.carry_out(command)
            failures = check_final_state(self.case.final_state, {**self.servers, **self.clients})
            self.problems.extend(self.crashes + failures)
        except Exception as error:  # a server or client that raises is a failed test, not a crash of the run
            self.problems.extend(self.crashes)
            self.problems.append(f"error at {self.step}: {type(error).__name__}: {error}")
            self.note(traceback.format_exc())
        finally:
            self.stop_everything(join=True)

    def carry_out(self, command: Command) -> None:
        if isinstance(command, LaunchServer):
            self.launch_server(command.options)
        elif isinstance(command, LaunchClient):
            self.launch_client(command.options)
        elif isinstance(command, ClientCommand):
            client = self.clients[command.username]
            if command.action == "MESSAGE":
                client.message_other_client(command.destination, command.text)
            else:
                client.quit(command.text)
        elif isinstance(command, Wait):
            self.wait(command.seconds * self.settings.slow)
        elif command.target == "ALL":
            # Servers one after another, as the course's kit does: each must stop without
            # announcing anything, and the others must not react before they are stopped too.
            for name in list(self.servers):
                self.stop_server(name)
            for client in self.clients.values():
                client.request_terminate = True  # all at once, then wait for each listener to end
            for client in self.clients.values():
                client.stop()
        elif command.target in self.servers:
            self.stop_server(command.target)
        else:
            self.stop_client(command.target)

    def wait(self, seconds: float) -> None:
        """A WAIT: until the network is quiet or the time has passed (see Testers/quiet.py)."""
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
            quiet, took = wait_until_quiet(running + list(self.clients.values()), seconds, self.aborted)
            record = WaitRecord(seconds, took, "the network was quiet" if quiet else "the time ran out")
        self.waits.append(record)
        self.note(f"    {record.line}")

    def log_path(self, requested: Optional[str], name: str) -> str:
        # Only the file name is kept: every machine's log goes in this case's own folder.
        return str(self.log_dir / (Path(requested).name if requested else f"{name}.log"))

    def launch_server(self, written: argparse.Namespace) -> None:
        options = argparse.Namespace(**vars(written))
        options.port = self.ports(written.port)
        options.connect_to_port = self.ports(written.connect_to_port)
        options.log_file = self.log_path(written.log_file, written.servername)
        self.note(f"    {written.servername}: port {options.port}, connects to {options.connect_to_port}")
        server = self.server_class(options, run_on_localhost=True)
        name = written.servername
        thread = threading.Thread(target=self._serve, args=(name, server), name=f"server {name}", daemon=True)
        self.servers[name] = server
        self.server_threads[name] = thread
        thread.start()

    def _serve(self, name: str, server: Any) -> None:
        try:
            server.run()
        except Exception:
            self.crashes.append(f"server {name} crashed:\n{traceback.format_exc().rstrip()}")

    def launch_client(self, written: argparse.Namespace) -> None:
        options = argparse.Namespace(**vars(written), simulate=True, verbose=False, debug=False)
        options.serverport = self.ports(written.serverport)
        options.log_file = self.log_path(written.log_file, written.username)
        self.note(f"    {written.username}: server port {options.serverport}")
        client = ChatClient.CRCClient(options, run_on_localhost=True)
        self.clients[written.username] = client
        client.run()

    def stop_server(self, name: str) -> None:
        self.stopped.add(name)
        self.servers[name].request_terminate = True
        self.server_threads[name].join()

    def stop_client(self, name: str) -> None:
        """Stop a client and wait until its connection is closed, so that the next WAIT sees its server
        react."""
        self.clients[name].stop()

    def stop_everything(self, join: bool) -> None:
        """Stop whatever still runs: after a failure, or when the time limit gives up on the case."""
        for name, server in list(self.servers.items()):
            server.request_terminate = True
            if join:
                self.server_threads[name].join(2.0)
        for client in list(self.clients.values()):
            client.request_terminate = True

    def abort(self) -> None:
        self.aborted.set()
        self.stop_everything(join=False)

    def observed_state(self) -> Dict[str, Dict[str, Any]]:
        """Every checkable key of every machine, for the log."""
        state: Dict[str, Dict[str, Any]] = {}
        for kind, machines in (("server", self.servers), ("client", self.clients)):
            for name, machine in list(machines.items()):
                state[name] = {}
                for key in sorted(allowed_keys(kind, self.case.type)):
                    try:
                        state[name][key] = observed(machine, key)
                    except (AttributeError, TypeError) as error:
                        state[name][key] = f"<unreadable: {error}>"
        return state

    def draw(self) -> str:
        """The network as the machines saw it at the end, marked where it differs from final_state."""
        shown = ["recvd_messages_asdqw", "sent_messages_asdqw"] if self.case.type == "network_connectivity" \
            else ["adjacent_server_ids", "adjacent_user_ids", "hosts_db"]
        state = self.observed_state()
        by_port: Dict[int, str] = {}  # written port -> the server launched on it (so far)
        views = []
        for command in self.case.commands:
            if isinstance(command, LaunchServer):
                name, kind, attached = command.name, "server", by_port.get(command.options.connect_to_port)
                by_port[command.options.port] = name
            elif isinstance(command, LaunchClient):
                name, kind, attached = command.name, "client", by_port.get(command.options.serverport)
            else:
                continue
            if name not in state:
                continue  # never launched: the run stopped before it
            keys = shown if kind == "server" else ["connected_user_ids"]
            seen = {key: value for key, value in state[name].items() if key in keys}
            expected = self.case.final_state.get(name, {})
            views.append(MachineView(name, kind, command.options.id, attached, seen, expected))
        return draw_network(views, DRAWING_WIDTH)


class _ThreadErrors:
    """Collects exceptions that end any thread (a client's listener, say) while a case runs."""

    def __init__(self) -> None:
        self.errors: List[str] = []
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
        self._previous(args)


def run_case(path: Path, settings: Optional[Settings] = None) -> CaseResult:
    """Run one case file to completion or to its time limit, and say whether it passed and why not."""
    settings = settings or Settings()
    path = Path(path)
    started = time.monotonic()
    try:
        case = load_case(path)
    except CaseError as error:
        return CaseResult(path.stem, False, 0.0, [f"error: {error}"], weight=_declared_weight(path))
    try:
        server_class = load_server_module(settings.server_path).CRCServer
    except Exception:  # whatever a submission raises on import is its failure, not the run's
        problem = f"error: cannot load {settings.server_path}:\n{traceback.format_exc().rstrip()}"
        return CaseResult(case.name, False, 0.0, [problem], case.weight, case.family)

    log_dir = Path(settings.logs_dir) / case.name
    shutil.rmtree(log_dir, ignore_errors=True)  # logs of an earlier run would mislead
    log_dir.mkdir(parents=True, exist_ok=True)
    run = CaseRun(case, settings, server_class, log_dir)
    limit = settings.timeout + settings.slow * case.total_wait
    with _ThreadErrors() as thread_errors, capture_stdout() as trace:
        worker = threading.Thread(target=run.execute, name=f"case {case.name}", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            run.abort()  # the worker is abandoned; it is a daemon thread and holds nothing we need
            problems = [f"time limit: the test was still running after {limit:.1f} s"
                        f" ({settings.timeout:g} s beyond its WAITs), at {run.step}"] + run.crashes
        else:
            problems = list(run.problems)
    problems += thread_errors.errors
    drawing = run.draw() if problems and (run.servers or run.clients) else ""
    result = CaseResult(case.name, not problems, time.monotonic() - started, problems, case.weight, case.family,
                        drawing, list(run.waits))
    _write_log(Path(settings.logs_dir) / f"{case.name}.log", case, settings, run, result, trace)
    return result


def _write_log(log_file: Path, case: Case, settings: Settings, run: CaseRun, result: CaseResult,
               trace: TraceCapture) -> None:
    lines = [
        f"case     {case.name} ({case.path})",
        f"type     {case.type}; weight {case.weight:g}; family {case.family or '-'}",
        f"server   {Path(settings.server_path).resolve()}",
        f"parser   {_server_parsers.get(Path(settings.server_path).resolve())} (what that server imported)",
        f"settings slow {settings.slow:g}, timeout {settings.timeout:g} s, keep ports {settings.keep_ports},"
        f" strict waits {settings.strict_waits}",
        f"worker   process {os.getpid()}, port block {ports.block!r}",
        f"ports    {run.ports.ports or 'as written'}",
        f"logs     {run.log_dir}",
        *case.warnings,
        "",
        *run.journal,
        "",
        f"result   {'PASS' if result.passed else 'FAIL'} in {result.seconds:.2f} s",
        *result.problems,
        *([""] + result.drawing.splitlines() if result.drawing else []),
        "",
        "observed state:",
    ]
    for name, state in run.observed_state().items():
        lines.append(f"  {name}")
        lines.extend(f"    {key}: {json.dumps(value, default=repr)}" for key, value in state.items())
    lines += ["", "trace (what the servers printed):", *trace.ended(), ""]
    log_file.write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command line

def _points(value: float) -> str:
    return f"{value:g}"


def print_table(results: List[CaseResult]) -> None:
    width = max([len(result.name) for result in results] + [4])
    family_width = max([len(result.family) for result in results] + [6])
    print()
    print(f"{'Test':<{width}}  {'Family':<{family_width}}  Result  Points  Time")
    for result in results:
        points = f"{_points(result.score)}/{_points(result.weight)}"
        verdict = "PASS" if result.passed else "FAIL"
        print(f"{result.name:<{width}}  {result.family or '-':<{family_width}}  {verdict:<6}"
              f"  {points:>6}  {result.seconds:5.1f} s")
    passed = sum(result.passed for result in results)
    total = sum(result.weight for result in results)
    score = sum(result.score for result in results)
    print(f"Score: {_points(score)}/{_points(total)}; {passed} of {len(results)} tests passed", flush=True)


def list_cases(paths: List[Path]) -> None:
    for path in paths:
        try:
            case = load_case(path)
            print(f"{case.name:<40} {_points(case.weight):>3}  {case.family or '-':<16} {case.description}")
        except CaseError as error:
            print(f"{path.stem:<40} error: {error}")


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

    parser = argparse.ArgumentParser(description="Run CRC scenario test cases.")
    parser.add_argument("names", nargs="*", help="run only the cases whose names are or start with these")
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES_DIR, help="folder of .cfg case files")
    parser.add_argument("--server", type=Path, default=DEFAULT_SERVER, help="the ChatServer.py to test")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
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
    parser.add_argument("--logs", type=Path, default=DEFAULT_LOGS_DIR, help="folder for logs (default Logs/)")
    parser.add_argument("--gradescope", type=Path, metavar="FILE",
                        help="also write the results in Gradescope's autograder format (results.json)")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write the results as JUnit XML, for CI")
    parser.add_argument("--demo", action="store_true",
                        help="start a small network (3 servers, 3 clients) in this process and show messages flowing")
    return parser.parse_args(argv)


def report(result: CaseResult) -> None:
    """One line per finished test, and why it failed."""
    print(f"{'PASS' if result.passed else 'FAIL'}  {result.name}  ({result.seconds:.1f} s)", flush=True)
    for line in result.output.splitlines() if not result.passed else []:
        print(f"      {line}".rstrip(), flush=True)


def _start_worker(slots: Any, count: int) -> None:
    """In a new worker process: take a slot no other worker of this run has, and its ports."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops the run
    ports.block = port_block(slots.get(), count)


def run_cases(paths: List[Path], settings: Settings, jobs: int) -> List[CaseResult]:
    """Run the cases, `jobs` at a time, reporting each as it finishes; the results in case order."""
    if jobs == 1:
        results = []
        for path in paths:
            results.append(run_case(path, settings))
            report(results[-1])
        return results
    # spawn, not fork: a fork of a process with threads (pytest's, an abandoned case's) can deadlock.
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(jobs):
        slots.put(slot)
    finished: Dict[int, CaseResult] = {}
    with ProcessPoolExecutor(jobs, context, _start_worker, (slots, jobs)) as pool:
        futures: Dict[Future[CaseResult], int] = {pool.submit(run_case, path, settings): index
                                                  for index, path in enumerate(paths)}
        try:
            for future in as_completed(futures):
                index = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool as error:  # a worker died (a submission called os._exit, say)
                    result = CaseResult(paths[index].stem, False, 0.0, [f"error: the worker process died: {error}"],
                                        _declared_weight(paths[index]))
                finished[index] = result
                report(result)
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)  # the cases under way finish; the queued ones never start
            raise
    return [finished[index] for index in range(len(paths))]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.demo:
        from Testers.demo import run_demo  # only the demo needs it
        return run_demo()
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
    try:
        load_server_module(args.server)
    except Exception:  # whatever a submission raises on import, report it rather than a traceback of ours
        print(f"error: cannot load {args.server}:\n{traceback.format_exc()}", file=sys.stderr)
        return 2
    settings = Settings(args.server, args.slow, args.timeout, args.keep_ports, args.logs, args.strict_waits)
    jobs = 1 if args.keep_ports else min(args.jobs, len(paths))  # cases as written share their ports
    started = time.monotonic()
    try:
        results = run_cases(paths, settings, jobs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    seconds = time.monotonic() - started
    print_table(results)
    if args.gradescope:
        write_gradescope(args.gradescope, results, seconds)
    if args.junit:
        write_junit(args.junit, results, seconds)
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
