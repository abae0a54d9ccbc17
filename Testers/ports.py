"""Ports for the servers of a case: each port written in a case maps to a free one, so that cases can
run while other programs (or other cases) use the ports they name.

Every process hands out ports only from its own block. A parallel run gives each worker process its
own slot, and the blocks of different slots never overlap, so two workers can never pick the same
port, whatever the timing; a probe (bind and close) skips ports other programs hold.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Dict, Optional, Set, Tuple


def _ephemeral_low() -> int:
    """The lowest port the system hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _port_is_free(port: int) -> bool:
    # Without SO_REUSEADDR, so a port still in TIME_WAIT counts as taken for a server that binds
    # without it; on all addresses, so it conflicts with any address a server may pick.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


class PortBlock:
    """A block of ports [low, high) that only this process hands out. Walked in order from a random
    start, so a case never gets a port an earlier case of this run just used (and left in TIME_WAIT),
    and two runs of the manager at the same time rarely probe the same port at once."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.next = random.randrange(low, high)

    def __repr__(self) -> str:
        return f"{self.low}-{self.high - 1}"

    def take(self, taken: Set[int]) -> int:
        for _ in range(self.high - self.low):
            port = self.next
            self.next = port + 1 if port + 1 < self.high else self.low
            if port not in taken and _port_is_free(port):
                return port
        raise RuntimeError(f"no free port left in {self!r}")


def port_block(slot: int, slots: int, ports: Optional[Tuple[int, int]] = None) -> PortBlock:
    """Worker `slot`'s share of `ports` (low and high, both included), by default the ports below the
    ephemeral range (from which the system picks outgoing connections' ports, so that none takes a
    server's port before it binds it). Shares of different slots never overlap: two workers of one run
    can never pick the same port."""
    if ports is not None:
        low, high = ports[0], ports[1] + 1
    else:
        low, high = 10000, _ephemeral_low()
        if high - low < 100 * slots:  # an unusual system whose ephemeral range starts low: use the top
            low, high = 10000, 65536
    span = (high - low) // slots
    return PortBlock(low + slot * span, low + (slot + 1) * span)


block = port_block(0, 1)  # this process's block; a worker process of a parallel run gets its own


class PortMap:
    """Maps each port written in a case to a free port from this process's block: same port in, same
    port out."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.ports: Dict[int, int] = {}

    def __call__(self, port: Optional[int]) -> Optional[int]:
        if port is None or self.keep:
            return port
        if port not in self.ports:
            self.ports[port] = block.take(set(self.ports.values()))
        return self.ports[port]
