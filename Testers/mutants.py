"""Mutants: copies of our ChatServer.py, each with one small, deliberate bug of the kind students make.

A test set that lets a mutant pass every case would let a student's server with that bug pass too.
`--mutants` runs the cases against each mutant and shows which cases catch which mutant (see
ChatTestManager.run_mutants). Each mutant is a named replacement of one piece of the server's source;
tests/test_case_tools.py checks that every piece is still found exactly once, so that a change to the
server cannot quietly turn a mutant into the unchanged server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str  # one line: what is wrong with this server
    part: str  # the handler, or the loop, that the bug is in
    original: str  # a piece of ChatServer.py's source, found exactly once ...
    mutated: str  # ... and what it becomes

    def source(self, server_source: str) -> str:
        found = server_source.count(self.original)
        if found != 1:
            raise ValueError(f"mutant {self.name}: its piece of the server is found {found} times, not once:\n"
                             f"{self.original}")
        return server_source.replace(self.original, self.mutated)


MUTANTS: List[Mutant] = [
    Mutant("no-welcome", "a client that registers is never welcomed", "client registration",
           "            self.send_status(client_id, STATUS_WELCOME, welcome)\n", "            pass\n"),
    Mutant("wrong-welcome", "the welcome's text is not the contract's", "client registration",
           'welcome = f"Welcome to the Clemson Relay Chat network {client.client_name}"',
           'welcome = f"Welcome to the CRC network {client.client_name}"'),
    Mutant("registration-flooded-back", "a client's registration is flooded back to the client itself",
           "client registration",
           "self.broadcast_message_to_adjacent_clients(client.registration, ignore_host_id=client_id)",
           "self.broadcast_message_to_adjacent_clients(client.registration)"),
    Mutant("newcomer-not-told", "a new neighbour server is not told the network it joins", "server registration",
           "            for host in list(self.hosts_db.values()):  # our whole view",
           "            for host in []:  # our whole view"),
    Mutant("server-registrations-to-clients", "server registrations are sent to clients too", "server registration",
           "        self.broadcast_message_to_servers(server.registration, ignore_host_id=server.first_link_id)\n",
           "        self.broadcast_message_to_servers(server.registration, ignore_host_id=server.first_link_id)\n"
           "        self.broadcast_message_to_adjacent_clients(server.registration)\n"),
    Mutant("first-link-from-source", "a server behind a neighbour gets its own id as its first link",
           "server registration", "            self.routes.add_behind(server, record.id)",
           "            self.routes.add_behind(server, server_id)"),
    Mutant("last-hop-kept", "a registration is passed on with the last hop it came with", "server registration",
           "        server.registration = self.relayed(message.bytes)", "        server.registration = message.bytes"),
    Mutant("no-unknown-id", "a chat to an unknown id is dropped without a word", "client chat",
           '        self.send_status(message.source_id, STATUS_UNKNOWN_ID, f"Unknown ID {message.destination_id}")',
           "        pass"),
    Mutant("chat-down-the-wrong-link", "a chat goes back toward its sender instead of its destination",
           "client chat", "                self.send_message_to_host(message.destination_id, message.bytes):",
           "                self.send_message_to_host(message.source_id, message.bytes):"),
    Mutant("quitter-kept", "a client that quits stays in hosts_db", "client quit",
           "        self.routes.forget(client.id)\n        self.logger.info(\"client %s (%d) quit",
           "        self.logger.info(\"client %s (%d) quit"),
    Mutant("quit-not-passed-to-clients", "a client's quit is not passed on to the other clients", "client quit",
           "        self.broadcast_message_to_adjacent_clients(message.bytes, ignore_host_id=record.id)\n", ""),
    Mutant("duplicate-id-accepted", "a client with a taken id is accepted", "client registration",
           "        if self.place(client, record) == TAKEN:", "        if False:"),
    Mutant("refusal-not-logged", "a server refused by the one it joins does not log why", "status",
           "            self.status_updates_log.append(message.content)\n            self.uplink.failed(",
           "            self.uplink.failed("),
    Mutant("one-message-per-read", "only the first message of each chunk received is handled", "the loop",
           "            for message in link.cutter.feed(recv_data):",
           "            for message in link.cutter.feed(recv_data)[:1]:"),
]


def write_mutants(server: Path, folder: Path) -> Dict[str, Path]:
    """Each mutant's ChatServer.py, in a folder of its own under `folder`; name -> path."""
    source = Path(server).read_text(encoding="utf-8")
    paths = {}
    for mutant in MUTANTS:
        path = Path(folder) / mutant.name / "ChatServer.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(mutant.source(source), encoding="utf-8")
        paths[mutant.name] = path
    return paths
