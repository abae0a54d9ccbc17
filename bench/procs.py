"""Processes for the benchmarks: servers and relays, each its own process, and what /proc says of them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

KIT_DIR = Path(__file__).resolve().parent.parent
SERVER = KIT_DIR / "ChatServer.py"
RELAY = Path(__file__).resolve().parent / "relay.py"
HOST = "127.0.0.1"
_LISTENING = re.compile(r"listening on [\d.*]+:(\d+)")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Process:
    """A server or relay started by the harness. Its stderr goes to a file, never a pipe: a pipe nobody
    reads fills up, and a server logging into it would stall and skew the figures."""

    def __init__(self, name: str, argv: List[str], log_dir: str) -> None:
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, cwd=KIT_DIR, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=log)
        self.pid = self.popen.pid
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not log 'listening on {HOST}:PORT' within {timeout:g} s;"
                           f" its log says: {self.log_path.read_text(errors='replace')[-800:]!r}")

    def cpu_seconds(self) -> float:
        """CPU time used so far, user plus system. /proc/PID/schedstat counts it in nanoseconds, fine enough
        for an idle server (it counts the main thread only; servers and relays have no other thread);
        /proc/PID/stat, in clock ticks of usually 10 ms, is the fallback."""
        try:
            with open(f"/proc/{self.pid}/schedstat") as schedstat:
                return int(schedstat.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime and stime: fields 14 and 15

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/{self.pid}/status of {self.name} has no VmRSS line")

    def stop(self) -> None:
        """SIGTERM (a server says goodbye and exits, which also lets cProfile write its file), then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Fleet:
    """Every process one benchmark started; `with Fleet() as fleet:` stops them all, even on an error."""

    def __init__(self) -> None:
        self.processes: List[Process] = []
        self._log_dir = tempfile.TemporaryDirectory(prefix="crc-bench-")

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *_exc: object) -> None:
        for process in reversed(self.processes):
            process.stop()
        self._log_dir.cleanup()

    def server(self, server_id: int, parent: Optional[Process] = None, extra: Optional[List[str]] = None,
               profile_to: Optional[str] = None, program: Path = SERVER) -> Process:
        """Start a ChatServer.py (ours unless `program` says which) on a free loopback port, joining
        `parent` if given."""
        argv = [sys.executable]
        if profile_to:
            argv += ["-m", "cProfile", "-o", profile_to]
        argv += [str(program), "--servername", f"s{server_id}", "--id", str(server_id),
                 "--bind", HOST, "--port", "0"]
        if parent is not None:
            argv += ["--connect_to_host", HOST, "--connect_to_port", str(parent.port)]
        process = Process(f"s{server_id}", argv + (extra or []), self._log_dir.name)
        self.processes.append(process)
        return process

    def relay(self, to_port: int) -> Process:
        """Start a relay that forwards every connection it accepts to `to_port`."""
        name = f"relay{len(self.processes) + 1}"
        process = Process(name, [sys.executable, str(RELAY), "--to", f"{HOST}:{to_port}"], self._log_dir.name)
        self.processes.append(process)
        return process

    def server_chain(self, length: int, extra: Optional[List[str]] = None,
                     profile_middle_to: Optional[str] = None, program: Path = SERVER) -> List[Process]:
        """Servers 1..length, each joining the one before it."""
        chain: List[Process] = []
        for index in range(length):
            profile = profile_middle_to if index == length // 2 and length > 1 else None
            chain.append(self.server(index + 1, chain[-1] if chain else None, extra, profile, program))
        return chain

    def relay_chain(self, length: int, to_port: int) -> List[Process]:
        """Relays that end at `to_port`; the first in the returned list is where a sender connects."""
        chain: List[Process] = []
        for _ in range(length):
            chain.insert(0, self.relay(chain[0].port if chain else to_port))
        return chain
