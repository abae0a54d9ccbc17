"""`python3 ChatTestManager.py --demo`: a small CRC network in this one process, for a first look.

Three servers in a chain, a client on each; the network is drawn once it has formed, then a few chats
and a quit, each event printed as the client that received it sees it, then everything stops. Only the
demo prints, one line at a time: the servers' trace is off.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from ChatClient import CRCClient
from ChatMessageParser import Message
from ChatServer import CRCServer
from ChatTerminal import describe_event
from Testers.drawing import MachineView, draw_network
from Testers.keys import FUNCTIONALITY, keys_for
from Testers.quiet import ServerProbe, wait_until_quiet

SERVERS = [(1, "alpha"), (2, "beta"), (3, "gamma")]  # a chain: each joins the one before
CLIENTS = [(101, "alice", "alpha"), (102, "bob", "beta"), (103, "carol", "gamma")]
CHATS = [("alice", 103, "hi carol, this crosses all three servers"), ("carol", 101, "hello alice!"),
         ("bob", 101, "alice, beta here"), ("alice", 999, "anyone with id 999?")]
SETTLE_SECONDS = 5.0  # at most this long for the network to go quiet after a step; it takes milliseconds


class Demo:
    def __init__(self, say: Callable[[str], None], pause: float) -> None:
        self.say = say
        self.pause = pause  # between steps, so that a reader can follow
        self.print_lock = threading.Lock()  # events come from the clients' listener threads
        self.servers: List[CRCServer] = []
        self.probes: List[ServerProbe] = []  # what the quiet waits read of each server
        self.threads: List[threading.Thread] = []
        self.clients: List[CRCClient] = []
        self.homes: Dict[str, str] = {}  # client name -> server name

    def shout(self, text: str) -> None:
        with self.print_lock:
            self.say(text)

    def settle(self) -> None:
        """Until every message has arrived (or a few seconds), then a pause for the reader."""
        quiet, _ = wait_until_quiet(self.probes + self.clients, SETTLE_SECONDS, threading.Event())
        if not quiet:
            self.shout(f"(the network was still busy after {SETTLE_SECONDS:g} s)")
        time.sleep(self.pause)

    def start_server(self, server_id: int, name: str) -> None:
        joins = self.servers[-1] if self.servers else None
        options = argparse.Namespace(id=server_id, servername=name, info=f"demo server {name}", port=0,
                                     connect_to_host="127.0.0.1" if joins else None,
                                     connect_to_port=joins.port if joins else None, log_file=None,
                                     trace=False)  # the trace is for logs: printed here, from the servers'
        # threads, its lines came between the demo's (print writes a line and its end apart), glued to them
        server = CRCServer(options, run_on_localhost=True)
        thread = threading.Thread(target=server.run, name=f"server {name}", daemon=True)
        self.servers.append(server)
        self.probes.append(ServerProbe(server))
        self.threads.append(thread)
        thread.start()
        deadline = time.monotonic() + SETTLE_SECONDS
        while server.server_socket is None and time.monotonic() < deadline:  # port 0: its real port comes with it
            time.sleep(0.001)
        self.settle()
        joined = f", joined {joins.server_name}" if joins else ", the first server"
        self.shout(f"server {name} (id {server_id}) listening on 127.0.0.1:{server.port}{joined}")

    def start_client(self, client_id: int, name: str, home: str) -> None:
        server = next(server for server in self.servers if server.server_name == home)
        options = argparse.Namespace(id=client_id, serverhost="127.0.0.1", serverport=server.port, username=name,
                                     info=f"demo client {name}", log_file=None, simulate=True, verbose=False,
                                     debug=False)
        client = CRCClient(options, run_on_localhost=True)
        client.on_event = lambda message, known, client=client: self.show(client, message, known)
        self.clients.append(client)
        self.homes[name] = home
        self.shout(f"client {name} (id {client_id}) connects to {home}:")
        client.run()
        self.settle()

    def show(self, client: CRCClient, message: Message, known_name: Optional[str]) -> None:
        """An event as the client that received it sees it (as the terminal client prints it)."""
        text = describe_event(message, known_name)
        if text is not None:
            self.shout(f"    [{client.client_name} sees] {text}")

    def draw(self) -> str:
        def seen(kind: str, machine: Any) -> Dict[str, Any]:
            return {key.name: key.observe(machine) for key in keys_for(kind, FUNCTIONALITY) if key.drawn}

        views = [MachineView(server.server_name, "server", server.id, None, seen("server", server))
                 for server in self.servers]
        views += [MachineView(client.client_name, "client", client.id, self.homes[client.client_name],
                              seen("client", client)) for client in self.clients]
        return draw_network(views, headline=False)

    def client(self, name: str) -> CRCClient:
        return next(client for client in self.clients if client.client_name == name)

    def run(self) -> int:
        self.shout("A CRC network in this process: three servers in a chain, a client on each.\n")
        try:
            for server_id, name in SERVERS:
                self.start_server(server_id, name)
            for client_id, name, home in CLIENTS:
                self.start_client(client_id, name, home)
            self.shout("\nThe network as the servers and clients see it:\n")
            self.shout(self.draw())
            self.shout("\nChats, routed hop by hop:")
            for sender, destination, text in CHATS:
                self.shout(f"  {sender} sends to id {destination}: {text}")
                self.client(sender).message_other_client(destination, text)
                self.settle()
            self.shout("  bob quits: see you")
            self.client("bob").quit("see you")
            self.settle()
        finally:
            self.stop()
        self.shout("\nStopped every server and client. Try it in terminals: see README.md.")
        return 0

    def stop(self) -> None:
        for client in self.clients:
            client.stop()
        for server, thread in zip(self.servers, self.threads):
            server.request_terminate = True
            thread.join(2.0)


def run_demo(say: Callable[[str], None] = print, pause: float = 0.4) -> int:
    return Demo(say, pause).run()
