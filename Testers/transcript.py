"""Transcripts: the messages that crossed each link of a case, in order, per direction, decoded and as
bytes, each with the command it followed. Plain JSON-ready data, so that a run can send its transcript
anywhere and a case can ship the reference's beside it.

A transcript is a dict:

    {"case": NAME, "source": where it comes from (the wire, a recording, a reference log),
     "commands": [each command line of the case],
     "machines": [{"name", "kind", "id"}, in launch order],
     "covers": [the machines whose sending it describes] or None for all of them,
     "own_registrations": whether it shows the registration a joining server sends about itself,
     "messages": [{"from", "to", "after", "hex", "type", "fields"}, in time order],
     "alternatives": [[messages], ...] (optional: other outcomes of a case whose messages race)}

`after` is the index of the command the message followed: the last begun before it was sent, or the one
before a WAIT, which does nothing itself, or for a chat or quit its own client's command among several in
a row (-1: before any). A message sent as a server reacts to a launch
follows that launch, whether the manager had already begun the WAIT after it or not.

Three sources:
- the wire (`Wiretap`): every byte each socket of the case sends, taken as the socket hands it to the
  kernel, so the bytes and their chunking are the run's own, whatever the servers print;
- a recording with our server (`TestCases/NAME.transcript.json`, written by --record);
- the course's reference log (`Correct Logs/NAME.log`): each server's `Sending message to Host ID #N`
  line is what it sent over its link to N, a client's `Sending message to b'...'` what it sent to its
  server. That log never shows the registration a joining server sends about itself.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import socket
import struct
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from Testers.cases import Case
from Testers.commands import ClientCommand, Launch, Wait

Transcript = Dict[str, Any]
Message = Dict[str, Any]

TYPE_NAMES = {0x00: "server registration", 0x01: "status", 0x02: "server quit", 0x80: "client registration",
              0x81: "client chat", 0x82: "client quit"}
_HEADERS: Dict[int, Tuple[struct.Struct, Tuple[str, ...]]] = {
    0x00: (struct.Struct("!BIIBH"), ("source_id", "last_hop_id")),
    0x80: (struct.Struct("!BIIBH"), ("source_id", "last_hop_id")),
    0x01: (struct.Struct("!BIIHI"), ("source_id", "destination_id", "status_code")),
    0x02: (struct.Struct("!BIII"), ("source_id", "replacement_id")),
    0x81: (struct.Struct("!BIII"), ("source_id", "destination_id")),
    0x82: (struct.Struct("!BII"), ("source_id",)),
}
TRANSCRIPT_SUFFIX = ".transcript.json"


# ---------------------------------------------------------------------------------------------
# Bytes to messages

def cut_messages(stream: bytes) -> Tuple[List[Tuple[int, Dict[str, Any]]], bytes]:
    """The whole messages at the start of a stream, each as (end offset, decoded), and what is left: an
    unfinished message, or bytes that cannot be a message at all."""
    messages: List[Tuple[int, Dict[str, Any]]] = []
    offset = 0
    while offset < len(stream):
        kind = stream[offset]
        if kind not in _HEADERS:
            break
        header, names = _HEADERS[kind]
        if len(stream) - offset < header.size:
            break
        values = header.unpack_from(stream, offset)
        registration = kind in (0x00, 0x80)
        body = values[-2] + values[-1] if registration else values[-1]
        end = offset + header.size + body
        if end > len(stream):
            break
        fields: Dict[str, Any] = dict(zip(names, values[1:]))
        text = stream[offset + header.size:end]
        if registration:
            fields["name"] = text[:values[-2]].decode("utf-8", "replace")
            fields["info"] = text[values[-2]:].decode("utf-8", "replace")
        else:
            fields["content"] = text.decode("utf-8", "replace")
        messages.append((end, {"type": TYPE_NAMES[kind], "hex": stream[offset:end].hex(), "fields": fields}))
        offset = end
    return messages, stream[offset:]


def leftover(rest: bytes) -> Dict[str, Any]:
    """What is left at the end of a stream, as a message of its own."""
    whole = rest[0] in _HEADERS
    kind = "an unfinished message" if whole else "bytes that are no message"
    return {"type": kind, "hex": rest.hex(), "fields": {}}


# ---------------------------------------------------------------------------------------------
# The wire

_patch_lock = threading.Lock()
_active: List["Wiretap"] = []
_originals: Dict[str, Any] = {}
_SEND_METHODS = ("send", "sendall", "sendmsg")


class Wiretap:
    """While active, records every byte any socket of this process sends over TCP, with the socket's two
    ends, the sending thread and `after` (the command the run is at). The bytes go to the kernel exactly
    as the sender gave them: the tap only looks."""

    def __init__(self) -> None:
        self.after = -1
        # (ticket, after, (local, peer), thread, bytes): a ticket is drawn as a send begins, since the peer
        # may read and answer before the send returns; sorted by ticket, the records keep cause before effect.
        self.records: List[Tuple[int, int, Tuple[Any, Any], str, bytes]] = []
        self.tickets = itertools.count()
        # Each socket's two ends, read once per socket (weakly held: a closed socket's id comes back).
        self._ends: weakref.WeakKeyDictionary[socket.socket, Tuple[Any, Any]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __enter__(self) -> "Wiretap":
        with _patch_lock:
            if not _active:
                _install()
            _active.append(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with _patch_lock:
            _active.remove(self)
            if not _active:
                _uninstall()

    def saw(self, sock: socket.socket, data: bytes, ticket: int, after: int) -> None:
        ends = self._ends.get(sock)
        if ends is None or ends[1] is None:
            try:
                ends = (sock.getsockname(), sock.getpeername())
            except OSError:
                ends = (None, None)
            self._ends[sock] = ends
        if not (isinstance(ends[0], tuple) and isinstance(ends[1], tuple)):
            return  # not a TCP connection (a wake-up socket pair, say)
        with self._lock:
            self.records.append((ticket, after, ends, threading.current_thread().name, data))


def _install() -> None:
    for method in _SEND_METHODS:
        _originals[method] = socket.socket.__dict__.get(method)
        original = getattr(socket.socket, method)
        setattr(socket.socket, method, _tapped(method, original))


def _uninstall() -> None:
    for method in _SEND_METHODS:
        if _originals[method] is None:
            delattr(socket.socket, method)
        else:
            setattr(socket.socket, method, _originals[method])


def _tapped(method: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def send(sock: socket.socket, data: Any, *args: Any) -> Any:
        taps = [(tap, next(tap.tickets), tap.after) for tap in list(_active)]
        result = original(sock, data, *args)
        if method == "sendall":
            sent = bytes(data)
        elif method == "sendmsg":
            sent = b"".join(bytes(buffer) for buffer in data)[:result]
        else:
            sent = bytes(memoryview(data)[:result])
        if sent:
            for tap, ticket, after in taps:
                tap.saw(sock, sent, ticket, after)
        return result

    return send


def cause(case: Case, after: int, message: Dict[str, Any]) -> int:
    """The command a message sent while `after` was under way followed: WAITs do nothing themselves, and
    a chat or quit follows its own client's command, where several clients' commands came in a row."""
    after = min(after, len(case.commands) - 1)  # a log may mark more commands than the case has
    while after >= 0 and isinstance(case.commands[after], Wait):
        after -= 1
    if message["type"] in ("client chat", "client quit"):
        ids = {launch.name: launch.options.id for launch in case.launches}
        for index in range(after, -1, -1):
            command = case.commands[index]
            if not isinstance(command, (ClientCommand, Wait)):
                break
            if isinstance(command, ClientCommand) and ids.get(command.username) == message["fields"]["source_id"]:
                return index
    return after


def machines_of(case: Case) -> List[Dict[str, Any]]:
    return [{"name": launch.name, "kind": launch.KIND, "id": launch.options.id} for launch in case.launches]


def wire_transcript(tap: Wiretap, case: Case, ports: Dict[int, int]) -> Transcript:
    """The run's transcript from what the tap saw. `ports` maps each port written in the case to the port
    the run gave it; a connection belongs to the case when one of its ends is a server's port."""
    servers: Dict[int, List[Tuple[int, str]]] = {}  # real port -> (command index, server launched on it)
    for index, command in enumerate(case.commands):
        if isinstance(command, Launch) and command.KIND == "server":
            real = ports.get(command.options.port, command.options.port)
            servers.setdefault(real, []).append((index, command.name))
    ids = {machine["name"]: machine["id"] for machine in machines_of(case)}
    by_id: Dict[Any, str] = {}
    for name, number in ids.items():
        by_id.setdefault(number, name)

    def server_on(port: int, after: int) -> str:
        launched = [name for index, name in servers[port] if index <= after] or [servers[port][0][1]]
        return launched[-1]

    streams: Dict[Tuple[int, int, bool], List[Tuple[int, int, bytes]]] = {}  # (server port, other port, from server)
    first: Dict[Tuple[int, int], Tuple[int, str]] = {}  # connection -> (after, thread) of the connector's first send
    for number, (_, after, (local, peer), thread, data) in enumerate(sorted(tap.records)):
        if local[1] in servers:
            key = (local[1], peer[1], True)
        elif peer[1] in servers:
            key = (peer[1], local[1], False)
            first.setdefault(key[:2], (after, thread))
        else:
            continue
        streams.setdefault(key, []).append((number, after, data))

    unique = {number for number in ids.values() if list(ids.values()).count(number) == 1}

    def connector(connection: Tuple[int, int], stream: List[Tuple[int, int, bytes]]) -> str:
        after, thread = first.get(connection, (-1, ""))
        name = thread[len("server "):] if thread.startswith("server ") else ""
        if name in ids:
            return name
        decoded, _ = cut_messages(b"".join(data for _, _, data in stream))
        source = decoded[0][1]["fields"].get("source_id") if decoded else None
        if decoded and decoded[0][1]["type"].endswith("registration") and source in unique:
            return by_id[source]  # a machine introduces itself first (a relay may pass that on late, under chaos)
        command = case.commands[after] if 0 <= after < len(case.commands) else None
        if isinstance(command, Launch):
            return command.name  # a client registers while its LAUNCHCLIENT is carried out
        return by_id.get(source, f"a machine on port {connection[1]}")

    connectors = {(port, other): connector((port, other), stream)
                  for (port, other, from_server), stream in streams.items() if not from_server}
    messages: List[Tuple[int, Message]] = []
    for (port, other, from_server), stream in streams.items():
        there = connectors.get((port, other), f"a machine on port {other}")
        here = server_on(port, stream[0][1])
        sender, receiver = (here, there) if from_server else (there, here)
        data = b"".join(chunk for _, _, chunk in stream)
        decoded, rest = cut_messages(data)
        ends, offset = [], 0
        for number, after, chunk in stream:  # where each chunk ends in the stream: a message is sent with its last byte
            offset += len(chunk)
            ends.append((offset, number, after))
        position = 0
        for end, message in decoded:
            while ends[position][0] < end:
                position += 1
            messages.append((ends[position][1], {"from": sender, "to": receiver,
                                                 "after": cause(case, ends[position][2], message), **message}))
        if rest:
            messages.append((ends[-1][1], {"from": sender, "to": receiver,
                                           "after": cause(case, ends[-1][2], leftover(rest)), **leftover(rest)}))
    messages.sort(key=lambda item: item[0])  # a stable sort: a chunk's messages stay in order
    return {"case": case.name, "source": "the wire of this run", "commands": list(case.lines),
            "machines": machines_of(case), "covers": None, "own_registrations": True,
            "messages": [message for _, message in messages]}


# ---------------------------------------------------------------------------------------------
# Recorded transcripts, and the course's reference logs

def transcript_path(case_path: Path) -> Path:
    return Path(case_path).with_name(Path(case_path).stem + TRANSCRIPT_SUFFIX)


def transcript_text(transcript: Transcript) -> str:
    """A transcript file's layout: a message per line, so that recording again shows a clean diff."""
    head = {key: value for key, value in transcript.items() if key not in ("messages", "alternatives")}
    lines = ["{"] + [f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}," for key, value in head.items()]
    messages = transcript["messages"]
    lines.append('  "messages": [')
    lines += [f"    {json.dumps(message, ensure_ascii=False)}{',' if number < len(messages) - 1 else ''}"
              for number, message in enumerate(messages)]
    lines.append("  ]" + ("," if transcript.get("alternatives") else ""))
    if transcript.get("alternatives"):  # each further outcome our server was seen to have, in the same layout
        alternatives = transcript["alternatives"]
        lines.append('  "alternatives": [')
        for number, outcome in enumerate(alternatives):
            lines.append("    [")
            lines += [f"      {json.dumps(message, ensure_ascii=False)}{',' if place < len(outcome) - 1 else ''}"
                      for place, message in enumerate(outcome)]
            lines.append(f"    ]{',' if number < len(alternatives) - 1 else ''}")
        lines.append("  ]")
    return "\n".join(lines + ["}"]) + "\n"


MESSAGE_FIELDS = {"from": str, "to": str, "after": int, "type": str, "hex": str, "fields": dict}


def read_transcript(path: Path) -> Transcript:
    """A transcript file, every message of it (and of its alternatives) checked for its fields' types; a
    ValueError that says what is wrong otherwise."""
    data: Transcript = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ValueError(f"{path} is not a transcript: it has no list of messages")
    outcomes = [data["messages"], *data.get("alternatives", [])]
    for outcome in outcomes:
        if not isinstance(outcome, list):
            raise ValueError(f"{path}: an outcome is not a list of messages")
        for message in outcome:
            wrong = [name for name, kind in MESSAGE_FIELDS.items()
                     if not isinstance(message, dict) or not isinstance(message.get(name), kind)]
            if wrong:
                raise ValueError(f"{path}: a message without a right {wrong[0]!r}: {str(message)[:80]}")
    return data


def links(transcript: Transcript) -> Dict[Tuple[str, str], List[str]]:
    """Each link direction's messages, as bytes in hex, in order."""
    found: Dict[Tuple[str, str], List[str]] = {}
    for message in transcript["messages"]:
        found.setdefault((message["from"], message["to"]), []).append(message["hex"])
    return found


_LOG_LINE = re.compile(r"^\[(?P<name>[^\]]+)\] \t(?P<text>.*)$")
_TO_HOST = re.compile(r'^Sending message to Host ID #(?P<id>\d+) "(?P<bytes>b.*)"$')
_TO_UNKNOWN = re.compile(r'^Sending message to an unknown IO device "(?P<bytes>b.*)"$')
_FROM_CLIENT = re.compile(r"^Sending message to (?P<bytes>b['\"].*)$")


def attachments(case: Case) -> Dict[str, str]:
    """Each machine that joins a server, and the server it joins (by the ports written: only ports count)."""
    on_port: Dict[int, str] = {}
    joined: Dict[str, str] = {}
    for launch in case.launches:
        if launch.joins is not None and launch.joins in on_port:
            joined[launch.name] = on_port[launch.joins]
        if launch.KIND == "server":
            on_port[launch.options.port] = launch.name
    return joined


def log_transcript(path: Path, case: Case) -> Transcript:
    """A reference transcript from the course's reference log of this case (`Correct Logs/NAME.log`)."""
    machines = machines_of(case)
    kinds = {machine["name"]: machine["kind"] for machine in machines}
    joined = attachments(case)
    neighbours: Dict[str, List[str]] = {name: [] for name in kinds}
    for name, server in joined.items():
        neighbours[name].append(server)
        neighbours[server].append(name)
    ids = {machine["name"]: machine["id"] for machine in machines}

    def host(sender: str, number: int) -> str:
        near = [name for name in neighbours.get(sender, []) if ids[name] == number]
        anywhere = [name for name, machine_id in ids.items() if machine_id == number]
        return (near or anywhere or [f"host {number}"])[0]

    after = -1
    covers: List[str] = []
    messages: List[Message] = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("*"):
            after += 1
            continue
        found = _LOG_LINE.match(line)
        if found is None or found["name"] not in kinds:
            continue
        sender, text = found["name"], found["text"]
        if sender not in covers:
            covers.append(sender)
        if (to_host := _TO_HOST.match(text)) is not None:
            receiver, data = host(sender, int(to_host["id"])), to_host["bytes"]
        elif (to_unknown := _TO_UNKNOWN.match(text)) is not None:
            # A refusal goes to the machine that just tried to join this server.
            launched = [command.name for command in case.commands[:max(after, 0) + 1]
                        if isinstance(command, Launch) and joined.get(command.name) == sender]
            receiver, data = (launched[-1] if launched else "an unknown IO device"), to_unknown["bytes"]
        elif kinds[sender] == "client" and (from_client := _FROM_CLIENT.match(text)) is not None:
            receiver, data = joined.get(sender, "its server"), from_client["bytes"]
        else:
            continue
        try:
            frame = ast.literal_eval(data)
        except Exception:  # a line of a log that is no bytes literal (nor one cheap to read): not a message
            continue
        if not isinstance(frame, bytes):
            continue
        decoded, rest = cut_messages(frame)
        for _, message in decoded:
            messages.append({"from": sender, "to": receiver, "after": cause(case, after, message), **message})
        if rest:
            messages.append({"from": sender, "to": receiver, "after": cause(case, after, leftover(rest)),
                             **leftover(rest)})
    return {"case": case.name, "source": f"the reference log {shown(path)}", "commands": list(case.lines),
            "machines": machines, "covers": covers, "own_registrations": False, "messages": messages}


def shown(path: Path) -> str:
    """A path as a user would type it: from the current folder when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def reference_for(case: Case, reference_logs: Optional[Path]) -> Optional[Transcript]:
    """The reference to compare a run with: the transcript beside the case, else the course's reference
    log in `reference_logs`, else None."""
    recorded = transcript_path(case.path)
    if recorded.is_file():
        transcript = read_transcript(recorded)
        transcript["source"] = f"the reference transcript {shown(recorded)}"
        return transcript
    if reference_logs is not None and (Path(reference_logs) / f"{case.name}.log").is_file():
        return log_transcript(Path(reference_logs) / f"{case.name}.log", case)
    return None


def link_disagreements(first: Transcript, second: Transcript) -> List[str]:
    """The link directions on which two runs sent different messages (as multisets: order is timing's)."""
    ones, others = links(first), links(second)
    return [f"{sender} -> {receiver}" for sender, receiver in dict.fromkeys([*ones, *others])
            if sorted(ones.get((sender, receiver), [])) != sorted(others.get((sender, receiver), []))]


def record_transcript(case_path: Path, runs: List[Transcript]) -> Tuple[bool, str]:
    """--record: write the transcript of our server's runs beside the case; (whether it was written, what
    to tell the user). Where the runs' links carried different messages (a chat and a quit racing, say),
    each outcome is kept: the first as the messages, the others as alternatives."""
    if not runs:
        return False, "transcript not recorded: no run completed"
    outcomes = [runs[0]]
    for run in runs[1:]:
        if all(link_disagreements(outcome, run) for outcome in outcomes):
            outcomes.append(run)
    transcript = dict(runs[0], source="a run of the kit's own ChatServer.py, recorded with --record")
    if len(outcomes) > 1:
        transcript["alternatives"] = [outcome["messages"] for outcome in outcomes[1:]]
    path = transcript_path(case_path)
    text = transcript_text(transcript)
    differ = (f"; {len(outcomes)} outcomes in {len(runs)} runs, differing on"
              f" {', '.join(link_disagreements(outcomes[0], outcomes[1]))}" if len(outcomes) > 1 else "")
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return True, f"transcript unchanged ({path.name}{differ})"
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        return False, f"transcript not recorded: cannot write {path}: {error.strerror or error}"
    return True, f"transcript recorded ({path.name}, {len(transcript['messages'])} messages{differ})"
