"""The lint: reads a case against its own commands and names the mistakes in it.

It replays the commands as the course's harness carries them out, where only ports count (every host
is 127.0.0.1): who listens on which port at each point, which server each server and client joins,
which joins are refused for a duplicate id, who quits and who is killed. Then it holds each final-state
key against that, and reports, with the case's name and the command or key:

- a command that breaks the run: two servers on one port at once (a whole-case error: not graded);
- a server or client joining a port that nobody listens on at that point;
- a final-state entry for a machine no command launches, a key unknown for that machine, a value that
  is not a list;
- ids expected that no command launches, or that the commands never connect to that machine's network;
- adjacency lists that contradict the tree the commands build (checked only where no KILL of that
  machine or of a neighbour leaves the end uncertain);
- chunks expected in sent_messages_asdqw, which nothing fills (the course's recorder records none);
- a final_state that is missing or checks nothing (a whole-case error: a case that passes without
  comparing anything would say nothing about the server).

A key such a finding names is not graded: a server is never failed for a mistake in a case file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set

from Testers.cases import Case
from Testers.commands import ClientCommand, Kill, Launch
from Testers.keys import HOSTS, LINKS, SENT_ASDQW, USERS, find, keys_for


@dataclass
class Finding:
    """One mistake in a case file. `machine` and `key` say what is not graded because of it: a key, a
    whole final-state entry (key None), or the whole case (`whole_case`); a finding about a command only
    (machine None, whole_case False) is reported and excludes nothing. A `shapeless` value cannot be
    compared at all, so it is excluded even where other findings are graded all the same (--as-course)."""

    where: str  # the command or final-state key, as a reader finds it in the file
    problem: str  # what the file says, and what its own commands imply
    machine: Optional[str] = None
    key: Optional[str] = None
    whole_case: bool = False
    shapeless: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"

    @property
    def about_final_state(self) -> bool:
        return self.where.startswith("final_state")


@dataclass
class Machine:
    name: str
    kind: str  # "server" or "client"
    id: Optional[int]
    neighbours: Set[str] = field(default_factory=set)  # servers linked to a server; a client's server
    clients: Set[str] = field(default_factory=set)  # clients attached to a server
    refused: bool = False  # its join was refused: its id was taken in the network it joined
    quit: bool = False
    killed: bool = False  # by a KILL of its own (not KILL ALL, after which the state is read)


class Replay:
    """The network the commands build, where only ports count."""

    def __init__(self, case: Case) -> None:
        self.machines: Dict[str, Machine] = {}
        self.findings: List[Finding] = []
        listeners: Dict[int, str] = {}  # port -> the server listening there now
        for number, (line, command) in enumerate(zip(case.lines, case.commands), 1):
            where = f"command {number} {line!r}"
            if isinstance(command, Launch):
                machine = self.launch(command.name, command.KIND, command.options.id)
                own = command.options.port if command.KIND == "server" else None  # where a server listens
                if own in listeners:
                    self.findings.append(Finding(where, f"port {own} is taken: server {listeners[own]} listens"
                                                 " there already", whole_case=True))
                if command.joins is not None:
                    self.join(machine, listeners.get(command.joins), command.joins, where)
                if own is not None:
                    listeners[own] = command.name
            elif isinstance(command, ClientCommand) and command.action == "QUIT":
                self.machines[command.username].quit = True
            elif isinstance(command, Kill) and command.target != "ALL":
                self.machines[command.target].killed = True
                for port, name in list(listeners.items()):
                    if name == command.target:
                        del listeners[port]

    def launch(self, name: str, kind: str, machine_id: Optional[int]) -> Machine:
        self.machines[name] = Machine(name, kind, machine_id)
        return self.machines[name]

    def join(self, joiner: Machine, target: Optional[str], port: int, where: str) -> None:
        if target is None:
            self.findings.append(Finding(where, f"{joiner.name} joins port {port}, where nobody listens at that point"))
            return
        if joiner.id is not None and joiner.id in {machine.id for machine in self.network(target, present=True)}:
            joiner.refused = True  # a duplicate id: the server there refuses it, and that may be the point
            return
        host = self.machines[target]
        if joiner.kind == "server":
            host.neighbours.add(joiner.name)
        else:
            host.clients.add(joiner.name)
        joiner.neighbours.add(target)

    def network(self, name: str, present: bool = False) -> List[Machine]:
        """Every machine ever connected to this one, itself included; with `present`, only those still
        there and reached through machines still there (an id that quit, or was killed, is free again)."""
        seen, todo = {name}, [name]
        while todo:
            machine = self.machines[todo.pop()]
            for other in machine.neighbours | machine.clients:
                if present and (self.machines[other].quit or self.machines[other].killed):
                    continue
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return [self.machines[other] for other in seen]

    def ids(self, names: Set[str]) -> List[int]:
        return sorted(self.machines[name].id for name in names if self.machines[name].id is not None)  # type: ignore[misc]


def lint(case: Case) -> List[Finding]:
    replay = Replay(case)
    findings = list(replay.findings)
    record = f"write what the network should end in, or let python3 ChatTestManager.py --record {case.name} write it"
    if case.final_state is None:
        return findings + [Finding("final_state", f"is missing: {record}", whole_case=True)]
    if not isinstance(case.final_state, dict):
        return findings + [Finding("final_state", "must be an object keyed by machine name, not"
                                   f" {type(case.final_state).__name__}", whole_case=True)]
    launched_ids = {machine.id for machine in replay.machines.values() if machine.id is not None}
    for name, expected in case.final_state.items():
        machine = replay.machines.get(name)
        if machine is None:
            launched = ", ".join(replay.machines) or "nothing"
            findings.append(Finding(f"final_state[{name!r}]", f"no command launches a machine named {name!r}"
                                    f" (they launch {launched})", machine=name))
            continue
        if not isinstance(expected, dict):
            findings.append(Finding(f"final_state[{name!r}]", "must be an object of keys to lists", machine=name,
                                    shapeless=True))
            continue
        for key_name, value in expected.items():
            problem = key_problem(case, replay, machine, key_name, value, launched_ids)
            if problem:
                findings.append(Finding(f"final_state[{name!r}][{key_name!r}]", problem, machine=name, key=key_name,
                                        shapeless=not is_comparable(value)))
    if not any(isinstance(expected, dict) and expected for expected in case.final_state.values()):
        findings.append(Finding("final_state", f"checks nothing: it names no key of any machine; {record}",
                                whole_case=True))
    return findings


def key_problem(case: Case, replay: Replay, machine: Machine, key_name: str, value: Any,
                launched_ids: Set[Any]) -> Optional[str]:
    """What the commands prove wrong about one expected value, or None."""
    key = find(machine.kind, case.type, key_name)
    if key is None:
        known = ", ".join(sorted({key.name for key in keys_for(machine.kind, case.type)}))
        return f"unknown key for a {machine.kind} in a {case.type} case; known keys are {known}"
    if not is_comparable(value):
        return f"must be a list of ids or texts, not {value!r}"
    if key_name == SENT_ASDQW and value:
        return ("the file expects chunks here, but nothing fills this key (the course's recorder records"
                " none; our recorder keeps the chunks sent in sent_chunks)")
    if not key.holds_ids:
        return None
    unknown = sorted(set(value) - launched_ids, key=repr)
    if unknown:
        return f"the file expects ids {unknown}, which no command launches"
    if key_name == HOSTS and machine.id in value:
        return f"the file expects {machine.name}'s own id {machine.id}, but hosts_db holds only other machines"
    reachable = {other.id for other in replay.network(machine.name)}
    unreachable = sorted(set(value) - reachable, key=repr)
    if unreachable:
        return f"the file expects ids {unreachable}, which its commands never connect to {machine.name}'s network"
    if key_name in (LINKS, USERS):
        return adjacency_problem(replay, machine, key_name, value)
    return None


def is_comparable(value: Any) -> bool:
    """A list of ids or texts: what the checker can compare, as a multiset or as a set."""
    return isinstance(value, list) and all(isinstance(item, (int, str)) for item in value)


def adjacency_problem(replay: Replay, server: Machine, key_name: str, value: List[Any]) -> Optional[str]:
    linked = server.neighbours if key_name == LINKS else server.clients
    if server.killed or any(replay.machines[name].killed for name in linked):
        return None  # a KILL leaves what the end holds up to the hold-down: not provable from the commands
    implied = replay.ids({name for name in linked if not replay.machines[name].quit})
    if sorted(set(value), key=repr) == sorted(implied, key=repr):
        return None
    return f"the file says {sorted(value, key=repr)}; its commands imply {implied} (only ports count)"
