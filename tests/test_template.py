"""Our ChatServer.py is the course's template completed: every method the template declares, with its
parameters, in the template's order; the attributes its __init__ sets; message_handlers doing the
dispatch, so that replacing or emptying a handler changes what the server does."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any, List
from unittest import mock

import pytest
from netkit import ROOT, RawPeer, RunningServer, server_options, wait_for

import ChatServer
from ChatMessageParser import ClientChatMessage
from ChatServer import CRCServer

# The template's methods, in its order, each with its parameters (the contract's "The course's template").
TEMPLATE_METHODS = [
    ("__init__", ["options", "run_on_localhost"]),
    ("run", []),
    ("setup_server_socket", []),
    ("connect_to_server", []),
    ("check_IO_devices_for_messages", []),
    ("cleanup", []),
    ("accept_new_connection", ["io_device"]),
    ("handle_io_device_events", ["io_device", "event_mask"]),
    ("handle_messages", ["io_device", "recv_data"]),
    ("send_message_to_host", ["destination_id", "message"]),
    ("broadcast_message_to_servers", ["message", "ignore_host_id"]),
    ("broadcast_message_to_adjacent_clients", ["message", "ignore_host_id"]),
    ("send_message_to_unknown_io_device", ["io_device", "message"]),
    ("handle_server_registration_message", ["io_device", "message"]),
    ("handle_status_message", ["io_device", "message"]),
    ("handle_client_registration_message", ["io_device", "message"]),
    ("handle_client_chat_message", ["io_device", "message"]),
    ("handle_client_quit_message", ["io_device", "message"]),
    ("init_logging", []),
    ("print_info", ["msg"]),
    ("union", ["lst1", "lst2"]),
    ("intersect", ["lst1", "lst2"]),
    ("diff", ["list1", "list2"]),
]
TEMPLATE_ATTRIBUTES = ["sel", "hosts_db", "adjacent_server_ids", "adjacent_user_ids", "status_updates_log", "id",
                       "server_name", "server_info", "port", "connect_to_host", "connect_to_host_addr",
                       "connect_to_port", "request_terminate", "message_handlers", "log_file", "logger"]


@pytest.fixture
def unstarted():
    server = CRCServer(server_options(id=5, servername="shape", connect_to_host="theshire", connect_to_port=9),
                       run_on_localhost=True)
    yield server
    server.sel.close()


def test_every_template_method_exists_with_its_parameters_in_the_templates_order() -> None:
    for name, parameters in TEMPLATE_METHODS:
        method = getattr(CRCServer, name, None)
        assert callable(method), f"CRCServer has no method {name}"
        found = [p for p in inspect.signature(method).parameters if p != "self"]
        assert found == parameters, f"{name}: expected parameters {parameters}, found {found}"
    tree = ast.parse((ROOT / "ChatServer.py").read_text(encoding="utf-8"))
    (server_class,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "CRCServer"]
    defined = [node.name for node in server_class.body if isinstance(node, ast.FunctionDef)]
    template_names = [name for name, _ in TEMPLATE_METHODS]
    in_file_order = [name for name in defined if name in template_names]
    assert in_file_order == template_names, f"expected the template's order {template_names}, found {in_file_order}"


def test_init_sets_the_templates_attributes_and_the_host_to_connect_to(unstarted: CRCServer) -> None:
    missing = [name for name in TEMPLATE_ATTRIBUTES if not hasattr(unstarted, name)]
    assert not missing, f"CRCServer() does not set {missing}"
    assert (unstarted.connect_to_host, unstarted.connect_to_host_addr) == ("theshire", "127.0.0.1"), \
        "in a test harness the printable host stays as given and the address connected to is 127.0.0.1"
    assert sorted(unstarted.message_handlers) == [0x00, 0x01, 0x02, 0x80, 0x81, 0x82]
    assert unstarted.message_handlers[0x81] == unstarted.handle_client_chat_message


def test_the_list_helpers_are_set_operations_returning_lists(unstarted: CRCServer) -> None:
    assert sorted(unstarted.union([1, 2, 2], [2, 3])) == [1, 2, 3]
    assert unstarted.intersect([1, 2, 3], [3, 2, 9]) in ([2, 3], [3, 2])
    assert unstarted.diff([1, 2, 3], [2]) in ([1, 3], [3, 1])
    assert all(isinstance(result, list) for result in
               (unstarted.union([], []), unstarted.intersect([], []), unstarted.diff([], [])))


def test_init_logging_puts_a_relative_log_file_in_logs_beside_the_server(tmp_path: Path) -> None:
    name = f"template-test-{tmp_path.name}.log"
    server = CRCServer(server_options(id=6, servername="logger", log_file=name), run_on_localhost=True)
    try:
        server.print_info("a line for the log")
        path = Path(ChatServer.__file__).resolve().parent / "Logs" / name
        assert path.is_file(), f"expected the log at {path}"
        assert "a line for the log" in path.read_text(encoding="utf-8")
    finally:
        for handler in server.logger.handlers:
            handler.close()
        server.sel.close()
        (Path(ChatServer.__file__).resolve().parent / "Logs" / name).unlink(missing_ok=True)


def test_without_a_log_file_nothing_is_written_and_nothing_is_printed_from_the_command_line(capsys: Any) -> None:
    server = CRCServer(server_options(id=7, servername="quiet", log_file=None, trace=None))
    try:
        server.print_info("not for the terminal")
        assert capsys.readouterr().out == "", "from the command line the trace is off unless -v"
    finally:
        server.sel.close()


# --------------------------------------------------------------------------- dispatch


def chat_between_two_clients(server: RunningServer) -> List[Any]:
    """Two clients on one server; the first sends the second a chat. What the second receives."""
    left, right = RawPeer.client(server.port, 10, "left"), RawPeer.client(server.port, 11, "right")
    right.wait_for(lambda m: m, "right's welcome")
    left.wait_for(lambda m: len(m) >= 2, "right to be announced")
    left.send(ClientChatMessage.bytes(10, 11, "hello") + ClientChatMessage.bytes(10, 11, "again"))
    wait_for(lambda: server.is_quiet(), "the server to handle both chats")
    right.pump(0.2)
    return right.of_type(ClientChatMessage)


class SilentChats(CRCServer):
    def handle_client_chat_message(self, io_device: Any, message: Any) -> None:
        self.silenced = getattr(self, "silenced", 0) + 1


@pytest.mark.parametrize("how", ["subclass", "on the object", "in message_handlers"])
def test_a_replaced_chat_handler_sees_every_chat_and_the_server_does_what_it_does(how: str) -> None:
    seen: List[str] = []
    if how == "subclass":
        server = RunningServer(SilentChats, id=1, servername="A")
    else:
        server = RunningServer(id=1, servername="A")
        replacement = lambda io_device, message: seen.append(message.content)  # noqa: E731
        if how == "on the object":  # the entry too, as the template's dispatch wants
            server.server.handle_client_chat_message = replacement
        server.server.message_handlers[0x81] = replacement
    try:
        delivered = chat_between_two_clients(server)
    finally:
        server.stop()
    assert delivered == [], f"the replaced handler forwards nothing, yet {delivered} arrived"
    if how == "subclass":
        assert server.server.silenced == 2, "the subclass's handler must see both chats"
    else:
        assert seen == ["hello", "again"], f"the replacement must see both chats in order, saw {seen}"


def test_the_real_handler_delivers_the_same_chats() -> None:
    server = RunningServer(id=1, servername="A")
    try:
        delivered = chat_between_two_clients(server)
    finally:
        server.stop()
    assert [chat.content for chat in delivered] == ["hello", "again"]


def test_a_handler_patched_in_message_handlers_and_restored_gives_the_server_back() -> None:
    server = RunningServer(id=1, servername="A")
    try:
        with mock.patch.dict(server.server.message_handlers, {0x81: mock.Mock()}):
            assert chat_between_two_clients(server) == [] and server.server.message_handlers[0x81].call_count == 2
        left, right = RawPeer.client(server.port, 12, "left2"), RawPeer.client(server.port, 13, "right2")
        right.wait_for(lambda m: m, "right2's welcome")
        left.wait_for(lambda m: len(m) >= 2, "right2 to be announced")
        left.send(ClientChatMessage.bytes(12, 13, "restored"))
        right.wait_for(lambda m: right.of_type(ClientChatMessage), "the chat, delivered by the restored handler")
        assert [chat.content for chat in right.of_type(ClientChatMessage)] == ["restored"]
    finally:
        server.stop()


def test_init_sets_the_templates_attributes_and_at_most_twelve_of_ours(unstarted: CRCServer) -> None:
    ours = sorted(set(vars(unstarted)) - set(TEMPLATE_ATTRIBUTES))
    assert len(ours) <= 12, f"expected at most 12 attributes beyond the template's 16, found {len(ours)}: {ours}"


def test_every_method_of_ours_is_called_by_the_server_itself() -> None:
    # A method that only the test manager, the benchmarks or the tests call belongs with them, not here.
    source = (ROOT / "ChatServer.py").read_text(encoding="utf-8")
    template_names = {name for name, _ in TEMPLATE_METHODS}
    ours = [name for name, member in vars(CRCServer).items()
            if callable(member) and not name.startswith("__") and name not in template_names]
    unused = [name for name in ours if source.count(f".{name}") == 0]
    assert ours and not unused, f"expected every method of ours to be used in ChatServer.py; not used: {unused}"
