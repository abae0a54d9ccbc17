"""Quiet waits: end a WAIT as soon as the whole network has nothing left to do.

Our CRCServer and CRCClient each answer `is_quiet()` (nothing unsent, nothing unread, no partial
message) and count their busy turns in `busy_turns`. One machine's answer alone proves little: a
message may pass from one machine to another between their two checks. So the network counts as quiet
only when every machine says so in two sweeps in a row and no machine's `busy_turns` moved between
them: whatever was passed on between two checks of the first sweep shows up in the second, either as
an unread socket or as a turn counted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Tuple

POLL_SECONDS = 0.003  # between sweeps: short against a WAIT, long enough not to starve the machines


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
