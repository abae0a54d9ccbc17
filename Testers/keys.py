"""The final-state keys a case may check: one table that the checker, the lint, the drawings and the
demo all read. Adding a key means adding a line here (and, for a key of a tester's own, the attribute
that tester keeps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

# The keys that other code reasons about by name (the lint, the drawing's tree), named once here.
LINKS, USERS, HOSTS, SENT_ASDQW = "adjacent_server_ids", "adjacent_user_ids", "hosts_db", "sent_messages_asdqw"

UNREADABLE = "unreadable"  # the key of what an observed value that could not be read holds instead
UNJSONABLE = "<not JSON data>"  # the start of an observed item that was not a JSON scalar

CONNECTIVITY = "network_connectivity"
FUNCTIONALITY = "CRC_functionality"
CASE_TYPES = (CONNECTIVITY, FUNCTIONALITY)


@dataclass(frozen=True)
class Key:
    name: str  # the attribute read, and the key in a case's final_state
    kind: str  # "server" or "client"
    label: str  # its row in a drawing of the network
    course_checks: bool  # the course's checker compares it (--as-course compares only these)
    holds_ids: bool  # a list of machine ids (the lint checks each one was launched)
    case_type: Optional[str] = None  # only in cases of this type; None: in every case
    drawn: bool = False  # shown in a drawing of the network

    def observe(self, machine: Any) -> List[Any]:
        """A machine's value as a list: the ids of a dict, the items of a list."""
        value = getattr(machine, self.name)
        return list(value.keys()) if isinstance(value, dict) else list(value)

    def read(self, machine: Any) -> Any:
        """What the checker compares, as plain JSON data: the list of `observe`, each item that is not a
        JSON scalar written as a text that no case can expect; or {"unreadable": why} when it cannot be read.
        A grader judges what a sandboxed run sends back in this form, and an in-process run the same way."""
        try:
            return [item if isinstance(item, (str, int, float, bool)) or item is None else f"{UNJSONABLE} {item!r}"
                    for item in self.observe(machine)]
        except Exception as error:  # a submission's attribute may be anything, or a property that raises
            return {UNREADABLE: f"{type(error).__name__}: {error}"}


KEYS = [
    Key(LINKS, "server", "links", course_checks=False, holds_ids=True, drawn=True),
    Key(USERS, "server", "clients", course_checks=False, holds_ids=True, drawn=True),
    Key(HOSTS, "server", "hosts", course_checks=True, holds_ids=True, drawn=True),
    Key("status_updates_log", "server", "statuses", course_checks=True, holds_ids=False),
    # The connectivity recorder's chunks, in hex: those received, as the course keeps them; the course
    # never fills sent_messages_asdqw (its files expect []), so the chunks sent are ours, sent_chunks.
    Key("recvd_messages_asdqw", "server", "received", course_checks=True, holds_ids=False,
        case_type=CONNECTIVITY, drawn=True),
    Key(SENT_ASDQW, "server", "sent (asdqw)", course_checks=True, holds_ids=False,
        case_type=CONNECTIVITY),
    Key("sent_chunks", "server", "sent", course_checks=False, holds_ids=False, case_type=CONNECTIVITY, drawn=True),
    Key("connected_user_ids", "client", "knows", course_checks=True, holds_ids=True, drawn=True),
    Key("status_updates_log", "client", "statuses", course_checks=True, holds_ids=False),
    Key("chat_messages_log", "client", "chats", course_checks=True, holds_ids=False),
    # Ours: what a client got that servers must never send it (a server registration or quit), by type.
    Key("unexpected_messages_log", "client", "unexpected", course_checks=False, holds_ids=False),
]


def keys_for(kind: str, case_type: str) -> List[Key]:
    """The keys a final state may name for a 'server' or 'client' in a case of this type."""
    return [key for key in KEYS if key.kind == kind and key.case_type in (None, case_type)]


def read_machine(machine: Any, kind: str, case_type: str) -> Dict[str, Any]:
    """Every key a final state may name for this machine, read (see Key.read)."""
    return {key.name: key.read(machine) for key in keys_for(kind, case_type)}


def find(kind: str, case_type: str, name: str) -> Optional[Key]:
    return next((key for key in keys_for(kind, case_type) if key.name == name), None)
