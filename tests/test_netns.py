"""A CRC network spread over Linux network namespaces: each server on an address of its own, a chat
relayed over veth links between them, never over loopback.

    ns a                      ns b                                ns c
    alpha  10.231.1.1 --veth-- 10.231.1.2  beta  10.231.2.2 --veth-- 10.231.2.3  gamma
    alice                                                                         carol

a and c share no link and no route, so alice's chat to carol can only reach her through the servers.
The addresses are a private test range that exists only inside the namespaces this test creates; the
veths are created inside those namespaces, so the host's own interfaces and routes are never touched.
Needs root and iproute2 (`ip`, `ss`); skipped, with the probe's error, where namespaces cannot be made.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Iterator, List, Optional, Tuple

import pytest
from netkit import ROOT

DEADLINE = 10.0  # seconds for anything that should happen at once between namespaces on one host
PREFIX = f"crc-{os.getpid()}"  # namespace names carry our pid, so overlapping runs never collide

# (namespace, interface, address/prefix, peer namespace, peer interface, peer address/prefix)
LINKS = [("a", "ab", "10.231.1.1/24", "b", "ba", "10.231.1.2/24"),
         ("b", "bc", "10.231.2.2/24", "c", "cb", "10.231.2.3/24")]
ADDRESS_A, ADDRESS_B_TO_A, ADDRESS_B, ADDRESS_C = "10.231.1.1", "10.231.1.2", "10.231.2.2", "10.231.2.3"


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE)


def why_namespaces_unavailable() -> Optional[str]:
    """The reason this machine cannot run the test, found by really making a namespace with a veth."""
    if os.geteuid() != 0:
        return f"needs root to create network namespaces (running as uid {os.geteuid()})"
    missing = [tool for tool in ("ip", "ss") if shutil.which(tool) is None]
    if missing:
        return f"needs iproute2, but {' and '.join(missing)} is not on PATH"
    probe = f"{PREFIX}-probe"
    made = run("ip", "netns", "add", probe)
    if made.returncode != 0:
        return f"cannot create a network namespace: `ip netns add {probe}` said {made.stderr.strip()!r}"
    reason = None
    # A container may allow the namespace yet refuse a veth or the mounts that `ip netns exec` makes.
    for command in (("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1"),
                    ("ip", "netns", "exec", probe, "true")):
        result = run(*command)
        if result.returncode != 0:
            reason = f"`{' '.join(command)}` failed: {result.stderr.strip()!r}"
            break
    deleted = run("ip", "netns", "del", probe)
    if deleted.returncode != 0:
        pytest.fail(f"expected to delete the probe namespace {probe}; `ip netns del` said {deleted.stderr.strip()!r}")
    return reason


class NsProcess:
    """A program run inside a namespace, its output (stdout and stderr together) collected line by line."""

    def __init__(self, label: str, namespace: str, *arguments: str) -> None:
        self.label = label
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, *arguments], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: List[str] = []
        # Keep reading: a full pipe would block the program, and the lines are what the test checks.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def say(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        # `ip netns exec` execs the program, so this pid is the program itself.
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(DEADLINE)
        self.process.stdin.close()


class Lab:
    """Three namespaces joined a-b and b-c, and the programs started in them; close() removes it all."""

    def __init__(self) -> None:
        self.namespaces: List[str] = []
        self.programs: List[NsProcess] = []

    def ns(self, short: str) -> str:
        return f"{PREFIX}-{short}"

    def ip(self, *arguments: str) -> None:
        result = run("ip", *arguments)
        assert result.returncode == 0, f"expected `ip {' '.join(arguments)}` to succeed; it said {result.stderr.strip()!r}"

    def build(self) -> None:
        for short in "abc":
            self.ip("netns", "add", self.ns(short))
            self.namespaces.append(self.ns(short))
            # Even a server and a client in one namespace talk through lo when they use its real address.
            self.ip("-n", self.ns(short), "link", "set", "lo", "up")
        for near, near_if, near_address, far, far_if, far_address in LINKS:
            # Created inside the namespaces, so the veth never appears among the host's interfaces.
            self.ip("-n", self.ns(near), "link", "add", near_if, "type", "veth", "peer", "name", far_if,
                    "netns", self.ns(far))
            for short, interface, address in ((near, near_if, near_address), (far, far_if, far_address)):
                self.ip("-n", self.ns(short), "addr", "add", address, "dev", interface)
                self.ip("-n", self.ns(short), "link", "set", interface, "up")

    def start(self, label: str, short: str, *arguments: str) -> NsProcess:
        program = NsProcess(label, self.ns(short), *arguments)
        self.programs.append(program)
        return program

    def transcript(self) -> str:
        return "\n".join(f"--- {program.label} (exit {program.process.poll()}):\n" + "\n".join(program.lines)
                         for program in self.programs)

    def wait_line(self, program: NsProcess, pattern: str, what: str) -> re.Match:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            for line in list(program.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            time.sleep(0.02)
        raise AssertionError(f"waited {DEADLINE:.0f} s for {what}: a line from {program.label} matching "
                             f"{pattern!r}; saw none. Everything printed so far:\n{self.transcript()}")

    def server(self, short: str, name: str, server_id: int, bind: str, *join: str) -> Tuple[NsProcess, int]:
        """Start a server bound to `bind` in namespace `short`; also return the port its log says it listens on."""
        program = self.start(name, short, "ChatServer.py", "--servername", name, "--id", str(server_id),
                             "--port", "0", "--bind", bind, *join)
        found = self.wait_line(program, rf"listening on {re.escape(bind)}:(\d+)", f"{name} to listen on {bind}")
        return program, int(found[1])

    def tcp(self, short: str, state: str) -> List[Tuple[str, str]]:
        """(local, peer) address:port pairs of the TCP sockets in a namespace, as `ss` sees them there."""
        result = run("ip", "netns", "exec", self.ns(short), "ss", "-Htn", "state", state)
        assert result.returncode == 0, f"expected `ss` to run in {self.ns(short)}; it said {result.stderr.strip()!r}"
        # Without a state column (one state was asked for): Recv-Q Send-Q Local Peer [Process].
        return [(columns[2], columns[3]) for columns in map(str.split, result.stdout.splitlines()) if len(columns) >= 4]

    def close(self) -> None:
        """Stop every program, then delete the namespaces (which deletes their veths); report any leftover."""
        for program in self.programs:
            program.stop()
        failures = [f"{namespace}: {result.stderr.strip()!r}" for namespace in self.namespaces
                    if (result := run("ip", "netns", "del", namespace)).returncode != 0]
        assert not failures, f"expected to delete every namespace this test made; could not delete {failures}"


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = why_namespaces_unavailable()
    if reason and os.environ.get("CRC_REQUIRE_NETNS") == "1":  # CI, where namespaces can be made
        pytest.fail(f"CRC_REQUIRE_NETNS=1, but network namespaces are not available: {reason}")
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


@pytest.mark.timeout(60)
def test_chat_crosses_three_namespaces_over_real_addresses(lab: Lab) -> None:
    _, port_a = lab.server("a", "alpha", 1, ADDRESS_A)
    # beta listens on its side facing gamma and joins alpha across the a-b veth.
    beta, port_b = lab.server("b", "beta", 2, ADDRESS_B, "--connect_to_host", ADDRESS_A, "--connect_to_port", str(port_a))
    gamma, port_c = lab.server("c", "gamma", 3, ADDRESS_C, "--connect_to_host", ADDRESS_B, "--connect_to_port", str(port_b))
    for server, target in ((beta, f"{ADDRESS_A}:{port_a}"), (gamma, f"{ADDRESS_B}:{port_b}")):
        lab.wait_line(server, rf"connected to {re.escape(target)} and sent our registration", f"{server.label} to join {target}")

    alice = lab.start("alice", "a", "ChatClient.py", "-S", ADDRESS_A, "-P", str(port_a), "-U", "alice", "--id", "101")
    lab.wait_line(alice, r"Welcome to the Clemson Relay Chat network alice", "alpha to welcome alice")
    carol = lab.start("carol", "c", "ChatClient.py", "-S", ADDRESS_C, "-P", str(port_c), "-U", "carol", "--id", "103")
    lab.wait_line(carol, r"Welcome to the Clemson Relay Chat network carol", "gamma to welcome carol")
    # carol's registration has crossed both veths once alice's server tells her carol is online.
    lab.wait_line(alice, r"^\* carol is online \(id 103\)$", "alice to learn that carol, two namespaces away, is online")

    alice.say("/msg carol hello from namespace a")
    lab.wait_line(carol, r"^alice: hello from namespace a$", "alice's chat to arrive at carol")
    carol.say("/msg alice hello back from namespace c")
    lab.wait_line(alice, r"^carol: hello back from namespace c$", "carol's reply to arrive at alice")

    # The sockets themselves, seen from inside each namespace: servers listen only on their own
    # addresses, and the server links run between the namespaces' veth addresses.
    for short, address, port in (("a", ADDRESS_A, port_a), ("b", ADDRESS_B, port_b), ("c", ADDRESS_C, port_c)):
        listening = [local for local, _ in lab.tcp(short, "listening")]
        assert listening == [f"{address}:{port}"], \
            f"expected the server in {lab.ns(short)} to listen on {address}:{port} only; ss shows {listening}"
    for short, local_address, peer in (("b", ADDRESS_B_TO_A, f"{ADDRESS_A}:{port_a}"),
                                       ("c", ADDRESS_C, f"{ADDRESS_B}:{port_b}")):
        links = lab.tcp(short, "established")
        assert any(local.startswith(f"{local_address}:") and remote == peer for local, remote in links), \
            f"expected a link in {lab.ns(short)} from {local_address} to {peer}; ss shows (local, peer) {links}"
