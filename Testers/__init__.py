"""Testers: what runs in place of a plain server for each case type, and the test manager's parts.

A case's `type` picks how its servers are built from the CRCServer under test:
`network_connectivity` wraps it in a recorder of raw bytes, `CRC_functionality` uses it unchanged.
The other modules: cases (reading case files), commands (their verbs), keys (the final-state keys),
lint (mistakes in a case file), checker (final state), quiet (quiet waits), ports (a port block per
worker), trace (what servers print, for the log), drawing (the network as text), reports (Gradescope
and JUnit files), record (--record), mutants (--mutants), chaos (--chaos), demo (--demo), and for a
failed case transcript (what crossed each link, from the wire, a recording or a reference log), explain
(its first divergence from the reference's run, in words) and chart (both runs as Logs/NAME.html).
"""

from __future__ import annotations

from typing import Callable, Dict

from Testers.connectivity import make_connectivity_tester
from Testers.keys import CONNECTIVITY, FUNCTIONALITY

TESTER_FACTORIES: Dict[str, Callable[[type], type]] = {
    CONNECTIVITY: make_connectivity_tester,
    FUNCTIONALITY: lambda server_class: server_class,
}


def tester_class(case_type: str, server_class: type) -> type:
    """The class to instantiate for every server of a case of this type."""
    try:
        factory = TESTER_FACTORIES[case_type]
    except KeyError:
        raise ValueError(f"unknown case type {case_type!r}; expected one of {sorted(TESTER_FACTORIES)}") from None
    return factory(server_class)
