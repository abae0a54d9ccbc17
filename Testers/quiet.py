"""Quiet waits: end a WAIT as soon as the whole network has nothing left to do.

Every machine taking part answers `is_quiet()` (nothing unsent, nothing unread, no partial message) and
counts its busy turns in `busy_turns`: our CRCClient and the chaos relays themselves, and a server
through a ServerProbe, which reads what a server built as ours keeps (ChatServer.py has no hook of its
own for this). A server the probe cannot read, a student's own, gets every WAIT in full, as in the
course's kit. One machine's answer alone proves little: a
message may pass from one machine to another between their two checks. So the network counts as quiet
only when every machine says so in two sweeps in a row and no machine's `busy_turns` moved between
them: whatever was passed on between two checks of the first sweep shows up in the second, either as
an unread socket or as a turn counted.
"""

from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Tuple

from ChatClient import unsent_bytes

POLL_SECONDS = 0.003  # between sweeps: short against a WAIT, long enough not to starve the machines


class ServerProbe:
    """Quiet waits for a server built as ours (our ChatServer.py, a copy of it graded with --server, a
    mutant): it counts the loop's turns by wrapping `serve_turn` on the object, and reads the server's
    `links`, `server_socket`, `serving` and `timers` from outside. Made before the server runs."""

    READS = ("links", "timers", "server_socket", "serving")

    @classmethod
    def fits(cls, server: Any) -> bool:
        return callable(getattr(server, "serve_turn", None)) and all(hasattr(server, name) for name in cls.READS) \
            and isinstance(getattr(server.timers, "due", None), dict)

    def __init__(self, server: Any) -> None:
        self.server = server
        self.busy_turns = 0  # +1 as a busy turn starts and +1 as it ends: odd during a turn
        serve_turn = server.serve_turn

        def counted(events: Any) -> None:
            self.busy_turns += 1
            try:
                serve_turn(events)
            finally:
                self.busy_turns += 1

        server.serve_turn = counted

    def is_quiet(self) -> bool:
        """True when the server has nothing left to do: no unsent output, no partial frame, nothing to
        read or accept. Read from another thread, so it looks between two reads of the turn counter and
        answers False when in doubt."""
        server, turn = self.server, self.busy_turns
        if turn % 2 or not server.serving:
            return False
        try:
            links = list(server.links)
            if any(link.record.write_buffer or link.state in ("paused", "connecting")
                   or (link.state == "open" and link.cutter.pending) or unsent_bytes(link.sock) for link in links):
                return False
            poller = select.poll()
            listening = server.server_socket
            for sock in [link.sock for link in links] + ([listening] if listening is not None else []):
                poller.register(sock, select.POLLIN)
            ready = poller.poll(0)
        except (RuntimeError, ValueError, OSError, TypeError, AttributeError):
            # The loop changed its sockets meanwhile (or this system has no poll()): not provably quiet.
            return False
        return not ready and self.busy_turns == turn

    def next_deadline(self) -> Optional[float]:
        """When (on time.monotonic()) the server's next timer fires (a held departure, say); None without."""
        try:
            return min((when for when, _ in list(self.server.timers.due.values())), default=None)
        except RuntimeError:  # the loop changed them meanwhile: something is happening now
            return time.monotonic()


def can_report_quiet(machine: Any) -> bool:
    """True for a machine that offers is_quiet() and busy_turns (ours do; a submission may not)."""
    return callable(getattr(machine, "is_quiet", None)) and isinstance(getattr(machine, "busy_turns", None), int)


def sweep(machines: Iterable[Any]) -> Optional[Tuple[int, ...]]:
    """Every machine's busy_turns if every machine is quiet now, else None."""
    turns = []
    for machine in machines:
        before = machine.busy_turns
        if not machine.is_quiet():
            return None
        turns.append(before)
    return tuple(turns)


@dataclass
class WaitRecord:
    """What one WAIT did, for the log and the tests."""
    asked: float  # seconds the case asked for (after --slow)
    took: float  # seconds it actually took
    why: str  # why it ended

    @property
    def line(self) -> str:
        return f"waited {self.took:.3f} s of {self.asked:g} s: {self.why}"


def timer_due(machines: Iterable[Any], moment: float) -> bool:
    """True if some machine has a timer (a server's hold-down, say) that fires by `moment`."""
    for machine in machines:
        next_deadline = getattr(machine, "next_deadline", None)
        due = next_deadline() if callable(next_deadline) else None
        if due is not None and due <= moment:
            return True
    return False


def wait_until_quiet(machines: List[Any], seconds: float, stop: threading.Event) -> Tuple[bool, float]:
    """Wait until the machines are quiet (two equal sweeps in a row, and no timer of theirs due within
    the WAIT), at most `seconds`, or until `stop` is set. Returns whether the network was found quiet,
    and how long this took."""
    started = time.monotonic()
    deadline = started + seconds
    previous: Optional[Tuple[int, ...]] = None
    while True:
        current = sweep(machines)
        if current is not None and current == previous and not timer_due(machines, deadline):
            return True, time.monotonic() - started
        previous = current
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stop.wait(min(POLL_SECONDS, remaining)):
            return False, time.monotonic() - started
