#!/usr/bin/env python3
"""Benchmarks of the CRC server, each beside a reference measured in the same command.

    python3 bench/run.py [--quick] [--only NAME ...] [--markdown FILE] [--profile FILE] [--baseline REV]

The reference is the ceiling, bench/relay.py: a plain selectors relay that forwards bytes and parses
nothing, run and chained like the servers. Throughput is also measured beside our own server as it was
at git revision --baseline (default BASELINE), so that a change that costs speed shows as a ratio.
Every server and relay is its own process on loopback; the harness drives them over raw sockets and
counts bytes in the timed parts, so that it is not the bottleneck.
Progress goes to stderr; the table goes to stdout (and, with --markdown, to a file as Markdown).
--quick runs every benchmark on a small load (a smoke run for the tests; its figures are not the
issue's). --profile FILE runs the middle server of the 3-server throughput chain under cProfile.
--baseline none leaves the baseline out (where the checkout has no git history, it is left out anyway).

Benchmarks: throughput, latency, storm, idle, memory, suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import pstats
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import wire
from procs import HOST, KIT_DIR, SERVER, Fleet, Process
from wire import FRAME_SIZE, SetupClient

from ChatMessageParser import CLIENT_REGISTRATION, STATUS_UPDATE, StreamDecoder  # on the path that wire set

RECEIVE_SIZE = 256 * 1024
STALL_SECONDS = 20.0  # a timed run with no progress for this long has failed
CONNECT_BATCH = 100  # connections opened before letting the peer accept them (its backlog is 128)


# Our server before issue 8 sent every message through its handler: the throughput it must keep 60 % of.
BASELINE = "81f4a68"


@dataclass
class Load:
    messages: int  # chat frames per throughput run
    repeats: int  # throughput runs per chain; the table shows the median
    round_trips: int
    warmup: int  # round trips not counted, so connection set-up and first-call costs stay out of the figures
    storm_clients: int
    idle_seconds: float
    memory_clients: int
    suite_cases: List[str]  # names given to ChatTestManager.py; empty: every case
    full: bool  # the loads: only then is a row judged against its goal
    profile_to: Optional[str] = None  # run the middle server of the 3-server throughput chain under cProfile
    baseline: Optional[str] = BASELINE  # git revision of our server to measure throughput beside; None: none


FULL = Load(messages=200_000, repeats=7, round_trips=3000, warmup=200, storm_clients=1000, idle_seconds=5.0,
            memory_clients=5000, suite_cases=[], full=True)
QUICK = Load(messages=20_000, repeats=1, round_trips=300, warmup=50, storm_clients=100, idle_seconds=1.0,
             memory_clients=300, suite_cases=["3_1"], full=False)


@dataclass
class Row:
    name: str
    unit: str
    ours: Optional[float]
    reference: Optional[float] = None  # the relay's figure, or the baseline server's where the name says so
    goal: str = "—"
    met: Optional[bool] = None  # None: the row has no goal, or this load is not the goal's
    digits: int = 0
    failure: str = ""

    @property
    def ratio(self) -> Optional[float]:
        if self.ours is None or not self.reference:
            return None
        return self.ours / self.reference

    def judge(self, goal: str, met: Callable[[float], bool], applies: bool) -> Row:
        """A goal on the ratio, judged only under the goal's load and where there is a ratio."""
        self.goal = goal
        self.met = met(self.ratio) if applies and self.ratio is not None else None
        return self

    def cells(self) -> List[str]:
        def number(value: Optional[float]) -> str:
            return "—" if value is None else f"{value:.{self.digits}f}"

        ours = self.failure or ("not available" if self.ours is None else number(self.ours))
        ratio = "—" if self.ratio is None else f"{self.ratio:.2f}"
        met = "—" if self.met is None else ("yes" if self.met else "NO")
        return [self.name, self.unit, ours, number(self.reference), ratio, self.goal, met]


HEADERS = ["benchmark", "unit", "ours", "reference", "ratio", "goal", "met"]
NOTES: List[str] = []


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def listener() -> socket.socket:
    """Where the last relay of a chain delivers: the harness's own end of the relay chain."""
    return socket.create_server((HOST, 0), backlog=1024)


def accept(server_socket: socket.socket) -> socket.socket:
    server_socket.settimeout(10)
    sock, _ = server_socket.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# ------------------------------------------------------------------------------------ throughput

def blast(sender: socket.socket, receiver: socket.socket, count: int, frame: bytes) -> float:
    """Send `count` copies of `frame` as fast as the link takes them; seconds until the last byte is in."""
    payload = frame * count
    failures: List[OSError] = []

    def send() -> None:
        try:
            sender.sendall(payload)
        except OSError as error:
            failures.append(error)

    sender.settimeout(None)
    receiver.settimeout(STALL_SECONDS)
    view = memoryview(bytearray(RECEIVE_SIZE))
    received = 0
    thread = threading.Thread(target=send, daemon=True)  # sendall leaves the GIL while the kernel copies
    start = time.perf_counter()
    thread.start()
    try:
        while received < len(payload):
            count_in = receiver.recv_into(view)
            if not count_in:
                raise RuntimeError("the far end closed the link")
            received += count_in
    except (socket.timeout, RuntimeError) as error:
        raise RuntimeError(f"delivery stopped after {received // FRAME_SIZE} of {count} messages ({error};"
                           f" sender: {failures or 'no error'})") from None
    elapsed = time.perf_counter() - start
    thread.join()
    if received != len(payload):
        raise RuntimeError(f"expected {len(payload)} bytes, received {received}")
    return elapsed


def baseline_program(revision: str, folder: Path) -> Optional[Path]:
    """Our ChatServer.py and ChatMessageParser.py as they were at a git revision, written into `folder`;
    None (and a note) where git cannot show them."""
    for name in ("ChatServer.py", "ChatMessageParser.py"):
        try:
            shown = subprocess.run(["git", "-C", str(KIT_DIR), "show", f"{revision}:{name}"], capture_output=True,
                                   timeout=30)
        except (OSError, subprocess.TimeoutExpired) as error:
            NOTES.append(f"Baseline: left out, git could not run ({error}).")
            return None
        if shown.returncode:
            NOTES.append(f"Baseline: left out, `git show {revision}:{name}` failed: "
                         f"{shown.stderr.decode(errors='replace').strip()}")
            return None
        (folder / name).write_bytes(shown.stdout)
    return folder / "ChatServer.py"


def server_pair(fleet: Fleet, length: int, program: Path, profile: Optional[str] = None) -> Tuple[socket.socket, ...]:
    """A chain of `length` servers with a registered client at each end: (sender, receiver) sockets."""
    servers = fleet.server_chain(length, profile_middle_to=profile, program=program)
    receiver = SetupClient(servers[-1].port, 102, "receiver")
    sender = SetupClient(servers[0].port, 101, "sender")
    sender.wait_to_know([102])
    receiver.wait_to_know([101])
    return sender.sock, receiver.sock


def bench_throughput(load: Load) -> List[Row]:
    rows = []
    frame = wire.chat_frame(101, 102)
    with tempfile.TemporaryDirectory(prefix="crc-bench-baseline-") as folder:
        baseline = baseline_program(load.baseline, Path(folder)) if load.baseline else None
        for length in (1, 3):
            profile = load.profile_to if length == 3 else None
            chains = f"{length} server(s) with a client at each end, a chain of {length} relay(s)" + \
                (f" and {length} server(s) as at {load.baseline}" if baseline else "")
            progress(f"throughput: a chain of {chains}"
                     + (" (middle server under cProfile: its figure is not representative)" if profile else ""))
            with Fleet() as fleet, listener() as far_end:
                pairs: Dict[str, Tuple[socket.socket, ...]] = {}
                try:
                    pairs["ours"] = server_pair(fleet, length, SERVER, profile)
                    if baseline:
                        try:
                            pairs["baseline"] = server_pair(fleet, length, baseline)
                        except (OSError, RuntimeError) as error:  # an old server that will not start
                            NOTES.append(f"Baseline: left out, our server as at {load.baseline} failed: {error}")
                            baseline = None
                    relays = fleet.relay_chain(length, far_end.getsockname()[1])
                    pairs["relays"] = (wire.connect(relays[0].port), accept(far_end))
                    rates: Dict[str, List[float]] = {side: [] for side in pairs}
                    for attempt in range(load.repeats):  # alternating, so that all see the same machine load
                        progress(f"throughput: run {attempt + 1} of {load.repeats}: {load.messages} messages through"
                                 f" each of: {', '.join(pairs)}")
                        for side, (sender, receiver) in pairs.items():
                            rates[side].append(load.messages / blast(sender, receiver, load.messages, frame))
                finally:
                    for sock in (sock for pair in pairs.values() for sock in pair):
                        sock.close()
            medians = {side: statistics.median(figures) for side, figures in rates.items()}
            progress("throughput: " + ", ".join(f"{side} {rate:.0f} msg/s" for side, rate in medians.items())
                     + " (medians)")
            name = f"throughput, {length} server{'s' if length > 1 else ''}"
            row = Row(name, "msg/s", medians["ours"], medians["relays"])
            judged = load.full and not profile
            if length == 3:
                row.judge("ratio ≥ 0.5", lambda ratio: ratio >= 0.5, judged)
            rows.append(row)
            if baseline:
                before = Row(f"{name}, vs ours at {load.baseline}", "msg/s", medians["ours"], medians["baseline"])
                if length == 3:
                    before.judge("ratio ≥ 0.6", lambda ratio: ratio >= 0.6, judged)
                rows.append(before)
    NOTES.append(f"Throughput: {load.messages} chat frames of {FRAME_SIZE} bytes in all ({wire.CHAT_HEADER}-byte"
                 f" header, {FRAME_SIZE - wire.CHAT_HEADER} bytes of content), sent back to back from a client"
                 " on the first server to a client on the last; timed until the last byte arrives; median of"
                 f" {load.repeats} run(s), alternating with the relays"
                 + (f" and with our server as at {load.baseline} (the 'vs' rows)." if baseline else "."))
    return rows


# ------------------------------------------------------------------------------------ latency

def round_trips(a: socket.socket, b: socket.socket, ping: bytes, pong: bytes, count: int) -> List[float]:
    """Ping from a to b, pong back, `count` times; one thread, so only the network path is timed."""
    times = []
    for turn in range(count):
        start = time.perf_counter()
        a.sendall(ping)
        got_ping = wire.receive_exactly(b, FRAME_SIZE)
        b.sendall(pong)
        got_pong = wire.receive_exactly(a, FRAME_SIZE)
        times.append(time.perf_counter() - start)
        if got_ping != ping or got_pong != pong:
            raise RuntimeError(f"round trip {turn}: expected the frames sent, got {got_ping!r} and {got_pong!r}")
    return times


def percentile(sorted_times: Sequence[float], fraction: float) -> float:
    return sorted_times[min(len(sorted_times) - 1, int(fraction * len(sorted_times)))]


def bench_latency(load: Load) -> List[Row]:
    ping, pong = wire.chat_frame(201, 202), wire.chat_frame(202, 201)
    progress("latency: a 3-server chain with clients on servers 1 and 3, and a 3-relay chain")
    with Fleet() as fleet, listener() as far_end:
        servers = fleet.server_chain(3)
        a, b = SetupClient(servers[0].port, 201, "ping"), SetupClient(servers[-1].port, 202, "pong")
        a.wait_to_know([202])
        b.wait_to_know([201])
        relays = fleet.relay_chain(3, far_end.getsockname()[1])
        with wire.connect(relays[0].port) as relay_a, accept(far_end) as relay_b, a.sock, b.sock:
            pairs = {"ours": (a.sock, b.sock), "ceiling": (relay_a, relay_b)}
            for sock in (a.sock, b.sock, relay_a, relay_b):
                sock.settimeout(STALL_SECONDS)
            times: Dict[str, List[float]] = {"ours": [], "ceiling": []}
            for first, second in pairs.values():
                round_trips(first, second, ping, pong, load.warmup)  # not counted: first-call costs
            progress(f"latency: {load.round_trips} round trips on each chain, alternating in blocks of 100"
                     " so that both see the same machine load")
            for block in range(0, load.round_trips, 100):
                for side, (first, second) in pairs.items():
                    times[side] += round_trips(first, second, ping, pong, min(100, load.round_trips - block))
    ours, ceiling = sorted(times["ours"]), sorted(times["ceiling"])
    micro = 1e6
    p50 = Row("latency p50, 3 servers", "µs", percentile(ours, 0.5) * micro, percentile(ceiling, 0.5) * micro)
    p50.judge("ratio ≤ 1.5", lambda ratio: ratio <= 1.5, load.full)
    p99 = Row("latency p99, 3 servers", "µs", percentile(ours, 0.99) * micro, percentile(ceiling, 0.99) * micro)
    progress(f"latency: p50 {p50.ours:.0f} µs (relays {p50.reference:.0f}), p99 {p99.ours:.0f} µs"
             f" (relays {p99.reference:.0f})")
    return [p50, p99]


# ------------------------------------------------------------------------------------ join storm

def build_tree(fleet: Fleet, count: int) -> List[Process]:
    """A binary tree of servers: server i+1 joins server (i-1)//2 + 1."""
    tree: List[Process] = []
    for index in range(count):
        tree.append(fleet.server(index + 1, tree[(index - 1) // 2] if index else None))
    return tree


def bench_storm(load: Load) -> List[Row]:
    servers, clients = 11, load.storm_clients
    progress(f"join storm: starting an {servers}-server tree")
    with Fleet() as fleet:
        tree = build_tree(fleet, servers)
        # One probe client per server; once each knows the others, every server link is up.
        probes = [SetupClient(server.port, 900 + index, f"p{index:04d}") for index, server in enumerate(tree)]
        for probe in probes:
            probe.wait_to_know([other.id for other in probes])
        progress(f"join storm: tree is up; connecting {clients} clients spread over the {servers} servers")
        socks = [wire.connect(tree[index % servers].port) for index in range(clients)]
        try:
            time.sleep(0.3)  # let every server accept its share before the clock starts
            elapsed = storm(socks, servers)
        finally:
            for sock in socks + [probe.sock for probe in probes]:
                sock.close()
    progress(f"join storm: every client knew every other after {elapsed:.2f} s")
    NOTES.append(f"Join storm: {clients} clients (names u0000…, ids 10000…) on an {servers}-server binary tree, "
                 f"registrations sent at once; timed until each client has received a registration for each "
                 f"other client and for the {servers} probe clients that checked the tree was up, counted by "
                 "bytes and checked by decoding afterwards.")
    return [Row(f"join storm, {clients} clients, {servers} servers", "s", elapsed, goal="< 2 s",
                met=elapsed < 2 if load.full else None, digits=2)]


def storm(socks: List[socket.socket], probes: int) -> float:
    """Register every client at once; seconds until each has its welcome and every other's registration."""
    names = [f"u{index:04d}" for index in range(len(socks))]
    others = len(socks) - 1 + probes
    expected = wire.welcome_size(names[0]) + others * len(wire.registration_frame(1, names[0]))
    selector = selectors.DefaultSelector()
    received: List[List[bytes]] = [[] for _ in socks]
    missing = [expected] * len(socks)
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    waiting = len(socks)
    start = time.perf_counter()
    for index, sock in enumerate(socks):
        sock.send(wire.registration_frame(10000 + index, names[index]))  # 17 bytes: always taken whole
    last_progress = time.perf_counter()
    while waiting:
        events = selector.select(timeout=1.0)
        now = time.perf_counter()
        if events:
            last_progress = now
        elif now - last_progress > STALL_SECONDS:
            raise RuntimeError(f"{waiting} of {len(socks)} clients still miss registrations after {now - start:.1f} s")
        for key, _ in events:
            index = key.data
            chunk = key.fileobj.recv(RECEIVE_SIZE)  # type: ignore[union-attr]
            if not chunk:
                raise RuntimeError(f"client {names[index]}: the server closed its link")
            received[index].append(chunk)
            missing[index] -= len(chunk)
            if missing[index] <= 0:
                waiting -= 1
                selector.unregister(key.fileobj)
    elapsed = time.perf_counter() - start
    selector.close()
    for index, chunks in enumerate(received):
        check_storm_client(names[index], b"".join(chunks), others)
    return elapsed


def check_storm_client(name: str, data: bytes, others: int) -> None:
    messages = StreamDecoder().feed(data)
    sources = {message.source_id for message in messages if message.message_type == CLIENT_REGISTRATION}
    if len(messages) != others + 1 or len(sources) != others or messages[0].message_type != STATUS_UPDATE:
        raise RuntimeError(f"client {name}: expected a welcome then {others} registrations from distinct clients,"
                           f" got {len(messages)} messages from {len(sources)} distinct sources")


# ------------------------------------------------------------------------------------ idle

def cpu_percentages(processes: List[Process], seconds: float) -> List[float]:
    """Each process's user+system CPU over the same `seconds` of wall time, in % of one core."""
    before = [process.cpu_seconds() for process in processes]
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    return [100 * (process.cpu_seconds() - used) / wall for process, used in zip(processes, before)]


def bench_idle(load: Load) -> List[Row]:
    progress("idle: a 3-server chain with 2 clients on each server, and a 3-relay chain with 2 connections")
    with Fleet() as fleet, listener() as far_end:
        servers = fleet.server_chain(3)
        clients = [SetupClient(servers[index % 3].port, 300 + index, f"idle{index}") for index in range(6)]
        for client in clients:
            client.wait_to_know([other.id for other in clients])
        relays = fleet.relay_chain(3, far_end.getsockname()[1])
        links = [wire.connect(relays[0].port) for _ in range(2)]
        links += [accept(far_end) for _ in range(2)]
        time.sleep(0.5)  # let start-up work finish
        progress(f"idle: measuring CPU of the 3 servers and 3 relays over {load.idle_seconds:g} s")
        shares = cpu_percentages(servers + relays, load.idle_seconds)
        for sock in links + [client.sock for client in clients]:
            sock.close()
    ours, ceiling = max(shares[:3]), max(shares[3:])
    progress(f"idle: servers {', '.join(f'{share:.2f}%' for share in shares[:3])}; relays "
             f"{', '.join(f'{share:.2f}%' for share in shares[3:])}")
    NOTES.append(f"Idle: the busiest of 3 idle servers (2 clients each) over {load.idle_seconds:g} s, user+system "
                 "CPU (from /proc/PID/schedstat, in ns); the ceiling is the busiest of 3 idle relays.")
    return [Row("idle CPU per server", "% core", ours, ceiling, goal="< 1 %",
                met=ours < 1 if load.full else None, digits=2)]


# ------------------------------------------------------------------------------------ memory

def raise_file_limit(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the servers it starts) toward `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def drain(selector: selectors.BaseSelector, received: Dict[int, int], done: Callable[[], bool]) -> None:
    """Read and discard whatever the server sends until `done()`, counting bytes per client."""
    last_progress = time.monotonic()
    while not done():
        events = selector.select(timeout=1.0)
        if events:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            raise RuntimeError(f"no bytes for {STALL_SECONDS:g} s while attaching clients")
        for key, _ in events:
            chunk = key.fileobj.recv(RECEIVE_SIZE)  # type: ignore[union-attr]
            if not chunk:
                raise RuntimeError(f"the server closed the link of client {key.data}")
            received[key.data] += len(chunk)


def attach_clients(port: int, count: int) -> List[socket.socket]:
    """Register `count` clients on one server, and read all it sends them until every one knows every other."""
    names = [f"m{index:05d}" for index in range(count)]
    welcome = wire.welcome_size(names[0])
    expected = welcome + (count - 1) * len(wire.registration_frame(1, names[0]))
    selector = selectors.DefaultSelector()
    received: Dict[int, int] = {}
    socks: List[socket.socket] = []
    for first in range(0, count, CONNECT_BATCH):
        batch = range(first, min(count, first + CONNECT_BATCH))
        for index in batch:
            sock = wire.connect(port)
            sock.sendall(wire.registration_frame(20000 + index, names[index]))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
            received[index] = 0
            socks.append(sock)
        drain(selector, received, lambda batch=batch: all(received[index] >= welcome  # type: ignore[misc]
                                                           for index in batch))
        if first // CONNECT_BATCH % 10 == 9:
            progress(f"memory: {first + len(batch)} of {count} clients registered")
    drain(selector, received, lambda: all(got >= expected for got in received.values()))
    selector.close()
    wrong = [index for index, got in received.items() if got != expected]
    if wrong:
        raise RuntimeError(f"client {names[wrong[0]]} expected {expected} bytes, received {received[wrong[0]]}")
    return socks


def attach_relay_connections(relay_port: int, far_end: socket.socket, count: int) -> List[socket.socket]:
    socks: List[socket.socket] = []
    for first in range(0, count, CONNECT_BATCH):
        batch = min(CONNECT_BATCH, count - first)
        socks += [wire.connect(relay_port) for _ in range(batch)]
        socks += [accept(far_end) for _ in range(batch)]
    return socks


def bench_memory(load: Load) -> List[Row]:
    wanted = load.memory_clients
    limit = raise_file_limit(2 * wanted + 200)  # the relay's ceiling needs both ends of each connection here
    count = min(wanted, (limit - 200) // 2)
    if count < wanted:
        NOTES.append(f"Memory: the open-file limit ({limit}, hard limit reached) allows only {count} clients, "
                     f"not {wanted}.")
    socks: List[socket.socket] = []
    with Fleet() as fleet, listener() as far_end:
        try:
            server = fleet.server(1)
            time.sleep(0.5)
            before = server.rss_bytes()
            progress(f"memory: server RSS {before / 1024:.0f} KiB; attaching {count} clients (each learns every other)")
            socks = attach_clients(server.port, count)
            time.sleep(0.5)
            after = server.rss_bytes()
            ours = (after - before) / count
            progress(f"memory: server RSS {after / 1024:.0f} KiB with {count} clients: {ours:.0f} bytes each")
            relay = fleet.relay(far_end.getsockname()[1])
            time.sleep(0.5)
            relay_before = relay.rss_bytes()
            progress(f"memory: relay RSS {relay_before / 1024:.0f} KiB; relaying {count} idle connections")
            socks += attach_relay_connections(relay.port, far_end, count)
            time.sleep(0.5)
            ceiling = (relay.rss_bytes() - relay_before) / count
            progress(f"memory: relay {ceiling:.0f} bytes per relayed connection")
        finally:
            for sock in socks:
                sock.close()
    NOTES.append(f"Memory: growth of one server's RSS (VmRSS in /proc/PID/status) from start to {count} registered "
                 "idle clients, after all their registrations were delivered; the ceiling is a relay's growth per "
                 "relayed connection (two sockets each).")
    return [Row(f"memory per client, {count} clients", "bytes", ours, ceiling, goal="< 2048",
                met=ours < 2048 if load.full and count == wanted else None)]


# ------------------------------------------------------------------------------------ scenario suite

def bench_suite(load: Load) -> List[Row]:
    manager = KIT_DIR / "ChatTestManager.py"
    name = "scenario suite CPU" + (f" (cases {', '.join(load.suite_cases)})" if load.suite_cases else "")
    command = " ".join(["python3 ChatTestManager.py"] + load.suite_cases)
    progress(f"suite: running {command}")
    with tempfile.TemporaryDirectory(prefix="crc-bench-suite-") as logs, \
            open(os.path.join(logs, "output.txt"), "w+") as output:
        start = time.monotonic()
        popen = subprocess.Popen([sys.executable, str(manager), "--logs", logs, *load.suite_cases], cwd=KIT_DIR,
                                 stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(popen.pid, 0)  # wait4: the CPU time of this child and all it waited for
        popen.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        output.seek(0)
        last_line = (output.read().strip().splitlines() or ["(no output)"])[-1]
    cpu = usage.ru_utime + usage.ru_stime
    progress(f"suite: {cpu:.2f} s CPU over {wall:.1f} s; it said: {last_line}")
    NOTES.append(f"Scenario suite: user+system CPU of `{command}` and every thread it ran"
                 f" (wall {wall:.1f} s, exit status {popen.returncode}: {last_line}).")
    return [Row(name, "s", cpu, digits=2)]


# ------------------------------------------------------------------------------------ the table

BENCHMARKS: Dict[str, Callable[[Load], List[Row]]] = {
    "throughput": bench_throughput,
    "latency": bench_latency,
    "storm": bench_storm,
    "idle": bench_idle,
    "memory": bench_memory,
    "suite": bench_suite,
}


def text_table(rows: List[Row]) -> str:
    lines = [HEADERS] + [row.cells() for row in rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(HEADERS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def markdown(rows: List[Row], command: str) -> str:
    lines = [f"Command: `{command}` — {platform.python_implementation()} {platform.python_version()},"
             f" {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    lines += [""] + [f"- {note}" for note in NOTES]
    return "\n".join(lines) + "\n"


def print_profile(path: str) -> None:
    progress(f"profile of the middle server written to {path}; top functions:")
    for order in ("cumulative", "tottime"):
        stats = pstats.Stats(path, stream=sys.stderr)
        stats.strip_dirs().sort_stats(order).print_stats(15)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the CRC server against a byte-forwarding relay.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run on a small load")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only these benchmarks (repeat or comma-separate): {', '.join(BENCHMARKS)}")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown to FILE")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the middle server of the 3-server throughput chain under cProfile, into FILE")
    parser.add_argument("--baseline", default=BASELINE, metavar="REV",
                        help="measure throughput beside our server as at this git revision (default %(default)s;"
                             " 'none': do not)")
    options = parser.parse_args(argv)
    chosen = [name for item in options.only for name in item.split(",") if name] or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    load = replace(QUICK if options.quick else FULL,
                   profile_to=options.profile and os.path.abspath(options.profile),
                   baseline=None if options.baseline == "none" else options.baseline)
    if options.quick:
        NOTES.append("Quick run: small loads, so no row is judged against its goal.")
    rows: List[Row] = []
    for name in chosen:
        progress(f"== {name} ==")
        try:
            rows += BENCHMARKS[name](load)
        except Exception as error:  # one broken benchmark must not hide the others' figures
            progress(f"{name} FAILED: {error}")
            rows.append(Row(name, "", None, failure=f"failed: {error}"))
    print(text_table(rows), flush=True)
    if options.markdown:
        command = "python3 bench/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
        with open(options.markdown, "w", encoding="utf-8") as file:
            file.write(markdown(rows, command))
    if options.profile and "throughput" in chosen:
        print_profile(options.profile)
    return 1 if any(row.failure for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
