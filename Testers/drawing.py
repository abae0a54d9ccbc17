"""Draws a network as text: the tree of servers with their clients, what each machine believes in,
and where that differs from the expected final state. Plain ASCII, wrapped to a terminal's width.

    oak (41)
    |   links    elm (42)
    |   clients  ada (181)
    |   hosts    elm (42), ada (181)
    |            missing: bob (183)
    |-- client ada (181)
    |       knows    (none)
    `-- elm (42)
            links    oak (41)
            ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from Testers.checker import difference
from Testers.keys import KEYS, LINKS, UNREADABLE

# What each row shows, in order: (label, state key), from the keys' table. A machine shows the rows
# its `seen` holds.
SERVER_ROWS = [(key.label, key.name) for key in KEYS if key.kind == "server" and key.drawn]
CLIENT_ROWS = [(key.label, key.name) for key in KEYS if key.kind == "client" and key.drawn]
LABEL_WIDTH = 9  # "received " and the like: rows line up
HEADLINE = ("The network at the end, as each machine saw it. Marked where it differs from the expected\n"
            "final state: 'missing' = expected but not there, 'extra' = there but not expected.")
DIFFERS = "   <-- not as expected"


@dataclass
class MachineView:
    """One machine as the drawing needs it."""
    name: str
    kind: str  # 'server' or 'client'
    id: Optional[int]
    attached_to: Optional[str] = None  # a client's server, or the server a server was launched to join
    seen: Dict[str, Any] = field(default_factory=dict)  # key -> list, or {UNREADABLE: why} (Testers.keys.Key.read)
    expected: Dict[str, List[Any]] = field(default_factory=dict)  # key -> list, for the keys the checker compared


class Drawing:
    def __init__(self, machines: Sequence[MachineView], width: int, as_sets: bool) -> None:
        self.machines = list(machines)
        self.width = width
        self.as_sets = as_sets  # compare as the checker did: as sets under --as-course
        self.by_name = {machine.name: machine for machine in self.machines}
        self.names: Dict[Any, str] = {}  # id -> name; the first machine launched with an id keeps it
        for machine in self.machines:
            if machine.id is not None:
                self.names.setdefault(machine.id, machine.name)
        self.rank = {machine_id: index for index, machine_id in enumerate(self.names)}  # launch order
        self.lines: List[str] = []

    def in_order(self, items: List[Any]) -> List[Any]:
        """Launched machines in launch order, then anything else: easier to compare than arrival order."""
        return sorted(items, key=lambda item: (self.rank.get(item, len(self.rank)), repr(item)))

    def label(self, item: Any) -> str:
        name = self.names.get(item)
        return f"{name} ({item})" if name is not None else str(item)

    def differs(self, machine: MachineView) -> bool:
        return any(key in machine.seen and self.marks(expected, machine.seen[key])
                   for key, expected in machine.expected.items())

    def marks(self, expected: List[Any], seen: Any) -> List[str]:
        """Where what a machine holds differs from what was expected, by the checker's comparison."""
        if not isinstance(seen, list):
            return ["could not be read"]
        differs = difference(expected, seen, self.as_sets)
        if differs is None:
            return []
        missing, extra = differs
        return ([f"missing: {', '.join(map(self.label, self.in_order(missing)))}"] if missing else []) + \
            ([f"extra: {', '.join(map(self.label, self.in_order(extra)))}"] if extra else []) + \
            ([] if missing or extra else ["same items, but the counts differ"])

    # ------------------------------------------------------------------------- the tree's shape

    def links(self, server: MachineView) -> List[str]:
        """Servers this one is linked to: as either side saw it, or as launched when no server can say."""
        servers = [machine for machine in self.machines if machine.kind == "server"]
        if any(LINKS in machine.seen for machine in servers):
            def listed(a: MachineView, b: MachineView) -> bool:
                # An id two machines share stands for the first one launched with it.
                value = a.seen.get(LINKS)
                return isinstance(value, list) and b.id in value and self.names.get(b.id) == b.name
            return [other.name for other in servers
                    if other is not server and (listed(server, other) or listed(other, server))]
        return [other.name for other in servers
                if other.attached_to == server.name or server.attached_to == other.name]

    def draw(self, headline: bool) -> str:
        self.lines = HEADLINE.splitlines() + [""] if headline else []
        visited: Set[str] = set()
        servers = [machine for machine in self.machines if machine.kind == "server"]
        for number, root in enumerate(servers):
            if root.name in visited:
                continue
            note = "" if number == 0 else "   (not linked to the servers above)"
            self.server(root, "", "", visited, note)
        homeless = [machine for machine in self.machines if machine.kind == "client"
                    and (machine.attached_to not in self.by_name or self.by_name[machine.attached_to].kind != "server")]
        if homeless:
            self.lines.append("clients on no launched server:")
            for client in homeless:
                self.client(client, "", "")
        return "\n".join(self.lines)

    def server(self, server: MachineView, first: str, rest: str, visited: Set[str], note: str = "") -> None:
        visited.add(server.name)
        children = [name for name in self.links(server) if name not in visited]
        visited.update(children)  # claimed here, so that a cycle draws each server once
        clients = [machine for machine in self.machines
                   if machine.kind == "client" and machine.attached_to == server.name]
        self.lines.append(first + self.label_of(server) + note + (DIFFERS if self.differs(server) else ""))
        inner = rest + ("|   " if clients or children else "    ")
        self.rows(server, SERVER_ROWS, inner)
        branches = [("client", client) for client in clients] + [("server", self.by_name[name]) for name in children]
        for index, (kind, machine) in enumerate(branches):
            last = index == len(branches) - 1
            head, tail = (rest + "`-- ", rest + "    ") if last else (rest + "|-- ", rest + "|   ")
            if kind == "client":
                self.client(machine, head, tail)
            else:
                self.server(machine, head, tail, visited)

    def client(self, client: MachineView, first: str, rest: str) -> None:
        self.lines.append(first + "client " + self.label_of(client) + (DIFFERS if self.differs(client) else ""))
        self.rows(client, CLIENT_ROWS, rest + "    ")

    def label_of(self, machine: MachineView) -> str:
        return f"{machine.name} ({machine.id})" if machine.id is not None else machine.name

    # ------------------------------------------------------------------------- the rows

    def rows(self, machine: MachineView, rows: List[Tuple[str, str]], prefix: str) -> None:
        for label, key in rows:
            if key not in machine.seen:
                continue
            seen = machine.seen[key]
            if isinstance(seen, list):
                self.wrap(prefix, label, [self.label(item) for item in self.in_order(seen)] or ["(none)"])
            else:
                self.wrap(prefix, label, [f"<unreadable: {seen.get(UNREADABLE) if isinstance(seen, dict) else seen}>"])
            marks = self.marks(machine.expected[key], seen) if key in machine.expected else []
            if marks:
                self.wrap(prefix, "", ["; ".join(marks)])

    def wrap(self, prefix: str, label: str, items: List[str]) -> None:
        """Items joined by commas, lines broken between items (or inside one too long for a line)."""
        indent = prefix + " " * LABEL_WIDTH
        room = max(self.width - len(indent), 20)
        lines: List[str] = []
        line = ""
        for index, item in enumerate(items):
            piece = item + ("," if index < len(items) - 1 else "")
            if line and len(line) + 1 + len(piece) > room:
                lines.append(line)
                line = ""
            while len(piece) > room:  # a long hex chunk: cut it over several lines
                lines.append(piece[:room])
                piece = piece[room:]
            line = f"{line} {piece}" if line else piece
        lines.append(line)
        self.lines.append(prefix + f"{label:<{LABEL_WIDTH}}" + lines[0])
        self.lines.extend(indent + text for text in lines[1:])


def draw_network(machines: Sequence[MachineView], width: int = 100, headline: bool = True,
                 as_sets: bool = False) -> str:
    """The drawing of these machines' network, at most `width` columns wide; the headline explains the
    marks, which only a comparison with an expected state has (as sets, as the course's checker does,
    with `as_sets`)."""
    return Drawing(machines, width, as_sets).draw(headline)
