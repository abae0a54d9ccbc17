"""A case's commands: one table of verbs, each a class that parses its own arguments and carries itself
out on a run. Adding a verb means adding a class here and naming it in VERBS.

    LAUNCHSERVER --id N --servername NAME --port P [--info I] [--connect_to_host H --connect_to_port Q]
                 [--log-file F]
    LAUNCHCLIENT --id N --serverhost H --serverport P --username NAME [--info I] [--log-file F]
    CLIENTCOMMAND --username NAME --command MESSAGE ID "TEXT"   or   --command QUIT ["TEXT"]
    WAIT SECONDS
    KILL ALL   or   KILL NAME

Arguments split on white space, keeping each double-quoted run whole with its quotes, as the course's
harness does (so a chat sent as "Hi" is logged as "Hi", quotes included).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Protocol, Type, TypeVar, Union


class CaseError(ValueError):
    """A mistake in a case file: a command that cannot run, or an expectation its own commands disprove."""


class Runner(Protocol):
    """What a command needs of the run it is part of (ChatTestManager's CaseRun)."""

    def launch_server(self, options: argparse.Namespace) -> None: ...
    def launch_client(self, options: argparse.Namespace) -> None: ...
    def client(self, name: str) -> Any: ...
    def wait(self, seconds: float) -> None: ...
    def kill_all(self) -> None: ...
    def kill(self, name: str) -> None: ...


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


def _options(prog: str, *specs: tuple) -> _OptionParser:  # type: ignore[type-arg]
    parser = _OptionParser(prog=prog, add_help=False, allow_abbrev=False)
    for flag, kind, required, default in specs:
        parser.add_argument(flag, dest=flag.lstrip("-").replace("-", "_"), type=kind, required=required,
                            default=default)
    return parser


L = TypeVar("L", bound="Launch")


@dataclass
class Launch:
    """Start a machine; the ports are the ones written in the case (the run maps them to free ones)."""

    options: argparse.Namespace
    KIND: ClassVar[str]  # "server" or "client"
    VERB: ClassVar[str]
    PARSER: ClassVar[_OptionParser]
    NAME: ClassVar[str]  # the option that names the machine
    JOINS: ClassVar[str]  # the option that names the port of the server it joins

    @classmethod
    def parse(cls: Type[L], arguments: List[str]) -> L:
        return cls(cls.PARSER.parse_args(arguments))

    @property
    def name(self) -> str:
        return str(getattr(self.options, self.NAME))

    @property
    def joins(self) -> Optional[int]:
        """The port written for the server it joins (None: a server that joins no one)."""
        port: Optional[int] = getattr(self.options, self.JOINS)
        return port


class LaunchServer(Launch):
    KIND, VERB, NAME, JOINS = "server", "LAUNCHSERVER", "servername", "connect_to_port"
    PARSER = _options(VERB, ("--id", int, False, None), ("--servername", str, True, None), ("--port", int, True, None),
                      ("--info", str, False, ""), ("--connect_to_host", str, False, None),
                      ("--connect_to_port", int, False, None), ("--log-file", str, False, None))

    def carry_out(self, run: Runner) -> None:
        run.launch_server(self.options)


class LaunchClient(Launch):
    KIND, VERB, NAME, JOINS = "client", "LAUNCHCLIENT", "username", "serverport"
    PARSER = _options(VERB, ("--id", int, False, None), ("--serverhost", str, False, "localhost"),
                      ("--serverport", int, True, None), ("--username", str, True, None), ("--info", str, False, ""),
                      ("--log-file", str, False, None))

    def carry_out(self, run: Runner) -> None:
        run.launch_client(self.options)


@dataclass
class ClientCommand:
    username: str
    action: str  # MESSAGE or QUIT
    text: str
    destination: Optional[int] = None
    VERB = "CLIENTCOMMAND"

    @classmethod
    def parse(cls, arguments: List[str]) -> "ClientCommand":
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
            raise CaseError("CLIENTCOMMAND needs --username NAME and --command MESSAGE ID TEXT"
                            " or --command QUIT [TEXT]")
        action, rest = words[0], words[1:]
        if action == "QUIT":
            return cls(username, action, " ".join(rest))
        if action == "MESSAGE":
            if len(rest) < 2 or not (rest[0].isascii() and rest[0].isdigit()):
                raise CaseError(f"CLIENTCOMMAND --command MESSAGE needs a destination id and a text, not {rest!r}")
            return cls(username, action, " ".join(rest[1:]), int(rest[0]))
        raise CaseError(f"CLIENTCOMMAND: unknown command {action!r}; expected MESSAGE or QUIT")

    def carry_out(self, run: Runner) -> None:
        client = run.client(self.username)
        if self.action == "MESSAGE":
            client.message_other_client(self.destination, self.text)
        else:
            client.quit(self.text)


@dataclass
class Wait:
    seconds: float
    VERB = "WAIT"

    @classmethod
    def parse(cls, arguments: List[str]) -> "Wait":
        try:
            seconds = float(arguments[0]) if len(arguments) == 1 else -1.0
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < math.inf:  # also refuses nan
            raise CaseError(f"WAIT needs one number of seconds, not {arguments!r}")
        return cls(seconds)

    def carry_out(self, run: Runner) -> None:
        run.wait(self.seconds)


@dataclass
class Kill:
    target: str  # ALL or a machine's name
    VERB = "KILL"

    @classmethod
    def parse(cls, arguments: List[str]) -> "Kill":
        if len(arguments) != 1:
            raise CaseError(f"KILL needs ALL or one machine's name, not {arguments!r}")
        return cls(arguments[0])

    def carry_out(self, run: Runner) -> None:
        if self.target == "ALL":
            run.kill_all()
        else:
            run.kill(self.target)


Command = Union[LaunchServer, LaunchClient, ClientCommand, Wait, Kill]
VERBS: Dict[str, Type[Command]] = {verb.VERB: verb for verb in (LaunchServer, LaunchClient, ClientCommand, Wait, Kill)}


def parse_command(line: Any) -> Command:
    if not isinstance(line, str):
        raise CaseError(f"a command must be a string, not {line!r}")
    words = split_arguments(line)
    if not words:
        raise CaseError("empty command")
    verb = VERBS.get(words[0])
    if verb is None:
        raise CaseError(f"unknown command {words[0]!r}; expected {', '.join(VERBS)}")
    return verb.parse(words[1:])
