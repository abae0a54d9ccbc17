"""--chaos SEED: every connection to a server passes through a relay that cuts, glues and delays.

A real network promises a byte stream, not messages: one `recv` may hold half a message, or three. A
server that trusts one `recv` to hold exactly one message passes on loopback, where a small message
usually arrives whole, and fails elsewhere. The relay makes that visible. For each connection to the
server it stands before, it cuts what one side sends into pieces of random size (single bytes
included), delays each piece by up to MAX_DELAY, and sends the pieces that are due together as one
write (so messages are also glued).

Each direction of each connection draws from generators of its own, seeded with SEED, the case, the
connection's number and the direction, and its cuts are offsets in its byte stream: the count of bytes
to the next cut carries over from one `recv` to the next. So the same seed cuts each stream at the same
offsets however `recv` happens to split it, and whatever the other direction does. Two things still
depend on timing: when a stream pauses in the middle of a piece, the part received goes on alone after
MAX_DELAY (an extra cut, so that a sender awaiting a reply is never held up), and when pieces are
glued, since that depends on when they arrive.

A relay reports whether it is quiet like a server does (`is_quiet`, `busy_turns`), so quiet waits see the
bytes it holds.
"""

from __future__ import annotations

import random
import select
import selectors
import socket
import threading
import time
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

MAX_DELAY = 0.003  # seconds a piece may wait in the relay
SINGLE_BYTES = 0.3  # the share of pieces cut to a single byte
MAX_PIECE = 120  # bytes: the other pieces are 1 to this long, so most messages are cut somewhere
POLL_SECONDS = 0.05  # how long the relay's loop sleeps when nothing is due


class Cutter:
    """Where one byte stream is cut: at offsets drawn from its own generator, whatever the chunks it
    comes in."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.tail = b""  # bytes received since the last cut, waiting for the rest of their piece
        self.left = self.draw()  # bytes from the last cut to the next one

    def draw(self) -> int:
        return 1 if self.rng.random() < SINGLE_BYTES else self.rng.randint(1, MAX_PIECE)

    def feed(self, data: bytes) -> List[bytes]:
        """The pieces that `data` completes, in order."""
        data = self.tail + data
        pieces = []
        while len(data) >= self.left:
            pieces.append(data[:self.left])
            data = data[self.left:]
            self.left = self.draw()
        self.tail = data
        return pieces

    def flush(self) -> bytes:
        """The bytes held for an unfinished piece, when the stream pauses: the next cut stays where it was."""
        tail, self.tail = self.tail, b""
        self.left -= len(tail)
        return tail


class Pipe:
    """One direction of one connection: what `source` sends, in pieces, for `target`."""

    def __init__(self, source: socket.socket, target: socket.socket, seed: str) -> None:
        self.source = source
        self.target = target
        # Cuts and delays draw apart: the delays drawn cannot shift where the next cut falls.
        self.cutter = Cutter(random.Random(f"{seed}/cuts"))
        self.delays = random.Random(f"{seed}/delays")
        self.pieces: Deque[Tuple[float, bytes]] = deque()  # (when it is due, bytes), in order
        self.tail_due = 0.0  # when the cutter's tail goes on alone, if no more bytes come
        self.ended = False  # the source closed (and is no longer read): close once the pieces are out
        self.partner: Optional[Pipe] = None  # the other direction of the same connection

    def cut(self, data: bytes) -> None:
        now = time.monotonic()
        due = self.pieces[-1][0] if self.pieces else now
        for piece in self.cutter.feed(data):
            # Up to MAX_DELAY after it came, and never before the piece ahead of it: delays that added
            # up piece after piece would hold a large message for seconds.
            due = max(due, now + self.delays.uniform(0, MAX_DELAY))
            self.pieces.append((due, piece))
        self.tail_due = now + MAX_DELAY

    def flush(self, now: float) -> None:
        """The stream paused in the middle of a piece (or ended): what is held of it goes on now."""
        if self.cutter.tail:
            self.pieces.append((max(now, self.pieces[-1][0] if self.pieces else 0.0), self.cutter.flush()))

    def next_due(self) -> Optional[float]:
        """When this pipe next has something to do, if it holds anything."""
        if self.pieces:
            return self.pieces[0][0]
        return self.tail_due if self.cutter.tail else None

    def send_due(self, now: float) -> None:
        """Everything due, glued into one write."""
        if self.cutter.tail and now >= self.tail_due:
            self.flush(now)
        due = []
        while self.pieces and self.pieces[0][0] <= now:
            due.append(self.pieces.popleft()[1])
        if due:
            self.target.sendall(b"".join(due))


class ChaosRelay:
    """Listens on a port of its own and relays each connection to `target_port`, in a thread."""

    def __init__(self, target_port: int, seed: str) -> None:
        self.target_port = target_port
        self.seed = seed
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.pipes: Dict[socket.socket, Pipe] = {}  # by source socket
        self.connections = 0
        self.busy_turns = 0  # +1 as a busy turn starts and +1 as it ends (see is_quiet)
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name=f"chaos relay to {target_port}", daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            while not self.stopping:
                due = [when for when in (pipe.next_due() for pipe in list(self.pipes.values())) if when is not None]
                timeout = max(0.0, min(due) - time.monotonic()) if due else POLL_SECONDS
                events = self.sel.select(min(timeout, POLL_SECONDS))
                if not events and not due:
                    continue
                self.busy_turns += 1
                try:
                    self.turn(events)
                finally:
                    self.busy_turns += 1
        finally:
            for sock in [self.listener, *self.pipes]:
                sock.close()
            self.sel.close()

    def turn(self, events: List[Tuple[selectors.SelectorKey, int]]) -> None:
        for key, _ in events:
            if key.data is None:
                self.accept()
                continue
            pipe: Pipe = key.data
            try:
                data = pipe.source.recv(65536)
            except OSError:
                data = b""
            if data:
                pipe.cut(data)
            else:
                pipe.flush(time.monotonic())
                self.end(pipe)
        now = time.monotonic()
        for pipe in list(self.pipes.values()):
            try:
                pipe.send_due(now)
            except OSError:  # its target is gone: what it holds can go nowhere
                pipe.pieces.clear()
                pipe.cutter.flush()
                self.end(pipe)
            if pipe.ended and not pipe.pieces and not pipe.cutter.tail:
                self.close(pipe)

    def end(self, pipe: Pipe) -> None:
        """Read this source no more (it is at its end, or its bytes can go nowhere)."""
        if not pipe.ended:
            pipe.ended = True
            self.sel.unregister(pipe.source)

    def accept(self) -> None:
        try:
            near, _ = self.listener.accept()
        except OSError:
            return
        try:
            far = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            near.close()
            return
        self.connections += 1
        # Not the target port, which is drawn afresh each run: the same seed must cut the same way. A
        # generator per direction: one shared would hand out its draws in whatever order bytes arrive.
        seed = f"{self.seed}/{self.connections}"
        pipes = [Pipe(near, far, f"{seed}/to server"), Pipe(far, near, f"{seed}/from server")]
        pipes[0].partner, pipes[1].partner = pipes[1], pipes[0]
        for pipe in pipes:
            pipe.source.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe.source.settimeout(5)  # a side that takes nothing for this long fails the connection
            self.pipes[pipe.source] = pipe
            self.sel.register(pipe.source, selectors.EVENT_READ, pipe)

    def close(self, pipe: Pipe) -> None:
        """A side closed, and what it sent is through: the other side sees the connection close."""
        for each in (pipe, pipe.partner):
            if each is not None and self.pipes.pop(each.source, None) is not None:
                self.end(each)
                each.source.close()

    def is_quiet(self) -> bool:
        """True when the relay holds no bytes and has nothing to read or accept."""
        turn = self.busy_turns
        if turn % 2:
            return False
        try:
            pipes = list(self.pipes.values())
            if any(pipe.next_due() is not None for pipe in pipes):
                return False
            poller = select.poll()
            for sock in [self.listener] + [pipe.source for pipe in pipes if not pipe.ended]:
                poller.register(sock, select.POLLIN)
            ready = poller.poll(0)
        except (RuntimeError, ValueError, OSError):
            return False
        return not ready and self.busy_turns == turn

    def stop(self, timeout: Optional[float] = 2.0) -> None:
        """Stop the relay, waiting for it at most `timeout` seconds (None: not at all)."""
        self.stopping = True
        if timeout is not None:
            self.thread.join(timeout)
