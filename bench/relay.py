#!/usr/bin/env python3
"""The ceiling for the benchmarks: a byte-forwarding relay that parses nothing.

    python3 bench/relay.py --to HOST:PORT [--port 0] [--bind 127.0.0.1]

Every connection it accepts is paired with a new connection to --to, and bytes are copied both ways.
Relays chain like servers (a relay's --to is the next relay's port), so a chain of relays carries the
same traffic over the same number of sockets as a chain of servers, minus all the CRC work. It is the
plain loop the issue asks for: one selector, non-blocking sockets, large reads, and write interest only
while a socket has unsent bytes. It logs `relay listening on ADDR:PORT` on stderr once it listens.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
from typing import Optional, Tuple

RECEIVE_SIZE = 256 * 1024  # the same read size as the server's, so only the CRC work differs


class Pipe:
    """One socket of a pair: bytes read here go to the peer's output."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.peer: Optional[Pipe] = None
        self.output = bytearray()  # unsent bytes for this socket


def open_pipe(selector: selectors.BaseSelector, sock: socket.socket) -> Pipe:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pipe = Pipe(sock)
    selector.register(sock, selectors.EVENT_READ, pipe)
    return pipe


def close_pair(selector: selectors.BaseSelector, pipe: Pipe) -> None:
    # Unsent bytes are dropped: the benchmarks never close a connection in the middle of a transfer.
    for side in (pipe, pipe.peer):
        if side is not None and side.sock.fileno() >= 0:
            selector.unregister(side.sock)
            side.sock.close()


def accept(selector: selectors.BaseSelector, listener: socket.socket, target: Tuple[str, int]) -> None:
    try:
        inbound, _ = listener.accept()
    except OSError:  # the peer gave up before we got to it
        return
    try:
        outbound = socket.create_connection(target, timeout=5)  # blocking: loopback connects at once
    except OSError as error:
        print(f"relay: cannot reach {target[0]}:{target[1]}: {error}", file=sys.stderr)
        inbound.close()
        return
    first, second = open_pipe(selector, inbound), open_pipe(selector, outbound)
    first.peer, second.peer = second, first


def relay_readable(selector: selectors.BaseSelector, pipe: Pipe) -> None:
    try:
        chunk = pipe.sock.recv(RECEIVE_SIZE)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        chunk = b""
    if not chunk:
        close_pair(selector, pipe)
        return
    peer = pipe.peer
    assert peer is not None, "a pipe is paired before it is registered"
    if not peer.output:  # ask for write events only from now until the output is gone
        selector.modify(peer.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, peer)
    peer.output += chunk


def relay_writable(selector: selectors.BaseSelector, pipe: Pipe) -> None:
    try:
        sent = pipe.sock.send(pipe.output)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        close_pair(selector, pipe)
        return
    del pipe.output[:sent]
    if not pipe.output:
        selector.modify(pipe.sock, selectors.EVENT_READ, pipe)


def serve(listener: socket.socket, target: Tuple[str, int]) -> None:
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, mask in selector.select():
            pipe = key.data
            if pipe is None:
                accept(selector, listener, target)
                continue
            if mask & selectors.EVENT_WRITE and pipe.sock.fileno() >= 0:
                relay_writable(selector, pipe)
            if mask & selectors.EVENT_READ and pipe.sock.fileno() >= 0:
                relay_readable(selector, pipe)


def main() -> int:
    parser = argparse.ArgumentParser(description="Forward bytes between each accepted connection and --to.")
    parser.add_argument("--to", required=True, metavar="HOST:PORT", help="where each accepted connection is relayed")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    options = parser.parse_args()
    host, _, port = options.to.rpartition(":")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((options.bind, options.port))
    listener.listen(1024)
    listener.setblocking(False)
    print("relay listening on %s:%d" % listener.getsockname()[:2], file=sys.stderr, flush=True)
    try:
        serve(listener, (host, int(port)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
