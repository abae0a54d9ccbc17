"""What the tests share: fixtures that start servers, server processes, clients and raw peers, and stop
every one of them when the test ends. Helpers and constants (ROOT, DEADLINE, RunningServer, RawPeer,
wait_for and the rest) are in netkit.py, which the tests import."""

from __future__ import annotations

import argparse
from typing import Any, Iterator, List

import pytest
from netkit import RawPeer, RunningServer, ServerProcess, wait_for

from ChatClient import CRCClient


@pytest.fixture
def started() -> Iterator[Any]:
    """started(thing) returns the thing, and stops it at the end of the test, whatever it is."""
    things: List[Any] = []

    def start(thing: Any) -> Any:
        things.append(thing)
        return thing

    yield start
    for thing in things:
        if isinstance(thing, ServerProcess):
            thing.kill()
        elif isinstance(thing, CRCClient):
            thing.stop()
        elif isinstance(thing, RawPeer):
            thing.close()
        else:
            thing.stop()


class Servers(List[RunningServer]):
    """servers(**options) starts a RunningServer in a thread (netkit.RunningServer's arguments); the
    list holds those started so far."""

    def __init__(self, started: Any) -> None:
        super().__init__()
        self.started = started

    def __call__(self, *arguments: Any, **options: Any) -> RunningServer:
        self.append(self.started(RunningServer(*arguments, **options)))
        return self[-1]


@pytest.fixture
def servers(started: Any) -> Servers:
    """Start servers with servers(**options); every one is stopped at the end of the test."""
    return Servers(started)


# ----------------------------------------------- a network of servers, server processes and clients

@pytest.fixture
def network(started):
    """Start servers (no hold-down unless asked), server processes and clients; each is stopped at the end."""

    class Network:
        def server(self, **options) -> RunningServer:
            options.setdefault("split_hold", 0)
            return started(RunningServer(**options))

        def process(self, *arguments: str) -> ServerProcess:
            return started(ServerProcess(*arguments))

        def client(self, server, client_id: int, name: str) -> CRCClient:
            options = argparse.Namespace(id=client_id, serverhost="127.0.0.1", serverport=server.port,
                                         username=name, info="", log_file=None)
            client = started(CRCClient(options, run_on_localhost=True))
            client.run()
            wait_for(lambda: client.status_updates_log, f"{name} to be welcomed")
            return client

    return Network()
