"""Why a case failed, on the wire: the first message that went otherwise than in the reference's run.

Two transcripts (Testers/transcript.py) are compared link direction by link direction: what A sent to B
in this run against what A sent to B in the reference's. Messages match by their exact bytes, each with
the earliest unmatched equal one, so the order in which a server serves two links (or tells a newcomer
about the hosts it knows) is never a divergence. What is left over on either side is one:

- a message of the reference's that this run sent to another machine ("sent elsewhere"),
- one it sent on the same link in another form ("changed", with the fields that differ),
- one it never sent ("missing"), and one the reference never sent ("extra").

Each has its time: the command it followed, and its place among the messages sent after that command.
The explanation names the first, in words, with the machines' names and ids, and counts the rest.

Two things the reference's run does are never held against a run: the echo of a client quit back over
the link it came in on (the instructor's server does it; ours does not), and, when the reference is a
log, the registration a joining server sends about itself (the log never shows it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from Testers.transcript import Message, Transcript

MISSING, EXTRA, ELSEWHERE, CHANGED = "missing", "extra", "sent elsewhere", "changed"
MORE_SHOWN = 5  # differences listed after the first, in a line each
STATUS_NAMES = {0: "welcome", 1: "unknown id", 2: "duplicate id", 3: "protocol error"}


@dataclass
class Divergence:
    kind: str  # MISSING, EXTRA, ELSEWHERE or CHANGED
    reference: Optional[Message] = None  # the reference's message (not for EXTRA)
    run: Optional[Message] = None  # this run's message (not for MISSING)
    when: Tuple[int, int] = (0, 0)  # (command index, place among the messages sent after it), this run's if it sent one
    fields: List[str] = field(default_factory=list)  # for CHANGED: the fields that differ
    again: bool = False  # for EXTRA: the reference sent it on that link too, but fewer times


def _is_echo(message: Message, earlier: Dict[Tuple[str, str], List[str]]) -> bool:
    """A client quit going back over the link it came in on."""
    return message["type"] == "client quit" and message["hex"] in earlier.get((message["to"], message["from"]), [])


def comparable(transcript: Transcript, covers: Optional[List[str]], own_registrations: bool,
               ids: Dict[str, Any]) -> List[Message]:
    """The messages that count: no quit echoes, only senders the reference describes, and the joining
    server's registration about itself only when the reference shows those."""
    seen: Dict[Tuple[str, str], List[str]] = {}
    kept: List[Message] = []
    for message in transcript["messages"]:
        echo = _is_echo(message, seen)
        seen.setdefault((message["from"], message["to"]), []).append(message["hex"])
        own = (message["type"] == "server registration" and message["fields"].get("last_hop_id") == 0
               and message["fields"].get("source_id") == ids.get(message["from"]))
        if echo or (covers is not None and message["from"] not in covers) or (own and not own_registrations):
            continue
        kept.append(message)
    return kept


def _times(messages: List[Message]) -> Dict[int, Tuple[int, int]]:
    """Each message's time: the command it followed, and its place among those sent after that command."""
    times: Dict[int, Tuple[int, int]] = {}
    places: Dict[int, int] = {}
    for message in messages:
        after = message["after"]
        places[after] = places.get(after, -1) + 1
        times[id(message)] = (after, places[after])
    return times


def closest(reference: Transcript, run: Transcript) -> Transcript:
    """The reference's outcome nearest this run, where it has several (messages that race)."""
    outcomes = [dict(reference, messages=messages, alternatives=[])
                for messages in [reference["messages"], *reference.get("alternatives", [])]]
    return min(outcomes, key=lambda outcome: len(compare(outcome, run)))


def compare(reference: Transcript, run: Transcript) -> List[Divergence]:
    """Every divergence between the two runs, the earliest first (against the nearest of the reference's
    outcomes, where it has several)."""
    if reference.get("alternatives"):
        reference = closest(reference, run)
    ids = {machine["name"]: machine["id"] for machine in run["machines"]}
    own = bool(reference.get("own_registrations", True))
    expected = comparable(reference, None, own, ids)
    seen = comparable(run, reference.get("covers"), own, ids)
    expected_times, seen_times = _times(expected), _times(seen)
    unmatched: Dict[int, Message] = {id(message): message for message in seen}
    waiting: Dict[Tuple[str, str, str], List[Message]] = {}
    for message in seen:
        waiting.setdefault((message["from"], message["to"], message["hex"]), []).append(message)
    missing: List[Message] = []
    for message in expected:
        same = waiting.get((message["from"], message["to"], message["hex"]))
        if same:
            del unmatched[id(same.pop(0))]
        else:
            missing.append(message)
    extra = list(unmatched.values())
    divergences = []
    for message in missing:
        counterpart = _counterpart(message, extra)
        if counterpart is None:
            divergences.append(Divergence(MISSING, message, None, expected_times[id(message)]))
            continue
        extra.remove(counterpart)
        kind = ELSEWHERE if counterpart["hex"] == message["hex"] else CHANGED
        differing = [] if kind == ELSEWHERE else [
            name for name in dict.fromkeys([*message["fields"], *counterpart["fields"]])
            if message["fields"].get(name) != counterpart["fields"].get(name)]
        divergences.append(Divergence(kind, message, counterpart, seen_times[id(counterpart)], differing))
    sent = {(message["from"], message["to"], message["hex"]) for message in expected}
    divergences += [Divergence(EXTRA, None, message, seen_times[id(message)],
                               again=(message["from"], message["to"], message["hex"]) in sent) for message in extra]
    return sorted(divergences, key=lambda divergence: divergence.when)


def _counterpart(message: Message, extra: List[Message]) -> Optional[Message]:
    """This run's message that stands for a missing one: the same bytes on another link from the same
    sender, else one of the same type on the same link (the first sent after the same command, if any)."""
    elsewhere = [other for other in extra if other["from"] == message["from"] and other["hex"] == message["hex"]]
    if elsewhere:
        return elsewhere[0]
    same_link = [other for other in extra if (other["from"], other["to"], other["type"])
                 == (message["from"], message["to"], message["type"])]
    same_source = [other for other in same_link
                   if other["fields"].get("source_id") == message["fields"].get("source_id")]
    candidates = same_source or same_link
    at_once = [other for other in candidates if other["after"] == message["after"]]
    return (at_once or candidates)[0] if candidates else None


# ---------------------------------------------------------------------------------------------
# In words

class Words:
    """Names machines by name and id, as the case launched them."""

    def __init__(self, transcript: Transcript) -> None:
        self.commands: List[str] = transcript["commands"]
        self.ids = {machine["name"]: machine["id"] for machine in transcript["machines"]}
        self.names: Dict[Any, str] = {}
        for machine in transcript["machines"]:
            self.names.setdefault(machine["id"], machine["name"])

    def machine(self, name: str) -> str:
        number = self.ids.get(name)
        return f"{name} ({number})" if number is not None else name

    def host(self, number: Any) -> str:
        name = self.names.get(number)
        return f"{name} ({number})" if name is not None else f"id {number}"

    def command(self, index: int) -> str:
        """The command a message followed: a WAIT does nothing itself, so the one before it."""
        while 0 <= index < len(self.commands) and self.commands[index].split()[:1] == ["WAIT"]:
            index -= 1
        if not 0 <= index < len(self.commands):
            return "before the first command"
        words = self.commands[index].split()
        if words[0] in ("LAUNCHSERVER", "LAUNCHCLIENT"):  # the verb and the machine say enough
            name = next((words[place + 1] for place, word in enumerate(words[:-1])
                         if word in ("--servername", "--username")), "")
            return f"right after `{words[0]} {name}`"
        return f"right after `{self.commands[index]}`"

    def message(self, message: Message) -> str:
        fields = message["fields"]
        kind = message["type"]
        source = self.host(fields.get("source_id"))
        if kind in ("server registration", "client registration"):
            return (f"the registration of {kind.split()[0]} {fields.get('name')} ({fields.get('source_id')},"
                    f" last hop {fields.get('last_hop_id')})")
        if kind == "status":
            code = fields.get("status_code")
            destination = fields.get("destination_id")
            return (f"the status {fields.get('content')!r} (code {code}, {STATUS_NAMES.get(code, 'unknown')};"
                    f" source {source}, destination {self.host(destination) if destination else 0})")
        if kind == "client chat":
            return f"the chat {fields.get('content')!r} from {source} to {self.host(fields.get('destination_id'))}"
        if kind == "client quit":
            return f"the quit of client {source} ({fields.get('content')!r})"
        if kind == "server quit":
            return f"the quit of server {source} ({fields.get('content')!r})"
        return f"{kind} ({len(message['hex']) // 2} bytes: {message['hex'][:40]})"

    def verb(self, message: Message) -> Tuple[str, str]:
        """'sent' for a message about the sender itself, 'passed ... on' for one it forwards."""
        own = message["fields"].get("source_id") == self.ids.get(message["from"])
        return ("sent", "") if own or "source_id" not in message["fields"] else ("passed", " on")

    def divergence(self, divergence: Divergence) -> str:
        reference, run = divergence.reference, divergence.run
        if divergence.kind == MISSING and reference is not None:
            verb, on = self.verb(reference)
            return (f"{reference['from']} never {verb} {self.message(reference)}{on} to"
                    f" {self.machine(reference['to'])}; the reference did, {self.command(reference['after'])}")
        if divergence.kind == EXTRA and run is not None:
            verb, on = self.verb(run)
            again = " a second time" if divergence.again else ""
            return (f"{run['from']} {verb} {self.message(run)}{on} to {self.machine(run['to'])}{again}, which the"
                    f" reference never did; this run did it {self.command(run['after'])}")
        assert reference is not None and run is not None
        verb, on = self.verb(reference)
        if divergence.kind == ELSEWHERE:
            return (f"{run['from']} {verb} {self.message(run)}{on} to {self.machine(run['to'])} instead of"
                    f" {self.machine(reference['to'])}; the reference sent it to"
                    f" {reference['to']}, {self.command(reference['after'])}")
        changes = ", ".join(f"{name} {run['fields'].get(name)!r} where the reference had"
                            f" {reference['fields'].get(name)!r}" for name in divergence.fields)
        return (f"{run['from']} {verb} {self.message(reference)}{on} to {self.machine(run['to'])} with {changes};"
                f" the reference {verb} it {self.command(reference['after'])}")


def explain(reference: Optional[Transcript], run: Optional[Transcript]) -> List[str]:
    """The explanation's lines for a failed case: the first divergence in words and the rest counted,
    or why there is none to give."""
    if reference is None:
        return ["on the wire: no reference to compare with (no transcript beside the case, no --reference-logs)"]
    if run is None:
        return ["on the wire: nothing was captured in this run"]
    divergences = compare(reference, run)
    if not divergences:
        return [f"on the wire: every link carried what it carried in the reference's run ({reference['source']});"
                " the difference is in what the machines kept"]
    words = Words(run)
    lines = [f"first divergence on the wire, against {reference['source']}:",
             f"  {words.divergence(divergences[0])}"]
    rest = divergences[1:]
    if rest:
        lines.append(f"  and {len(rest)} more difference(s) after it, the first {min(len(rest), MORE_SHOWN)}:")
        lines += [f"    - {words.divergence(divergence)}" for divergence in rest[:MORE_SHOWN]]
    return lines
