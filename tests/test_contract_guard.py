"""Guards that our ChatServer.py, dropped alone into the course's kit, still works there.

The course's kit has its own ChatMessageParser.py that offers only the contract's API. So the whole
scenario suite runs with ChatServer.py copied beside tests/contract_parser/ChatMessageParser.py (an
independently written parser with exactly that API), and a static check reads ChatServer.py's imports.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import List

import pytest
from netkit import ROOT

import ChatMessageParser as our_parser

CONTRACT_PARSER = Path(__file__).resolve().parent / "contract_parser" / "ChatMessageParser.py"

# The contract's names, and each builder's parameters in order.
CONTRACT_BUILDERS = {
    "ServerRegistrationMessage": ["source_id", "last_hop_id", "server_name", "server_info"],
    "ClientRegistrationMessage": ["source_id", "last_hop_id", "client_name", "client_info"],
    "StatusUpdateMessage": ["source_id", "destination_id", "message_code", "content"],
    "ClientChatMessage": ["source_id", "destination_id", "content"],
    "ClientQuitMessage": ["source_id", "content"],
    "ServerQuitMessage": ["source_id", "replacement_server_id", "content"],
}
CONTRACT_NAMES = {"MessageParser", *CONTRACT_BUILDERS}
# Every kind of line the course's reference server prints (the contract's "The trace").
TRACE_LINE = re.compile(r"\[[^\]]+\] \t(Launching server .+\.\.\.|Configuring the server socket\.\.\."
                        r"|Connecting to remote server .+:\d+\.\.\.|Listening for new connections on port \d+"
                        r"|Cleaning up the server|Received message from Host ID #\d+ \"b(['\"]).*\2\""
                        r"|Sending message to (Host ID #\d+|an unknown IO device) \"b(['\"]).*\4\")")


def load_contract_parser() -> ModuleType:
    spec = importlib.util.spec_from_file_location("contract_parser", CONTRACT_PARSER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_problems(source: str) -> List[str]:
    """What a server's source imports beyond the standard library and the contract's parser names."""
    problems = []
    parser_aliases = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ChatMessageParser":
                    parser_aliases.add(alias.asname or alias.name)
                elif alias.name.split(".")[0] not in sys.stdlib_module_names:
                    problems.append(f"line {node.lineno}: import {alias.name} is not in the standard library")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                problems.append(f"line {node.lineno}: relative import from {'.' * node.level}{module}")
            elif module == "ChatMessageParser":
                for alias in node.names:
                    if alias.name not in CONTRACT_NAMES:
                        problems.append(f"line {node.lineno}: ChatMessageParser.{alias.name} is not in the contract")
            elif module.split(".")[0] not in sys.stdlib_module_names:
                problems.append(f"line {node.lineno}: from {module} is not in the standard library")
    for node in ast.walk(tree):  # uses through `import ChatMessageParser`
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in parser_aliases and node.attr not in CONTRACT_NAMES):
            problems.append(f"line {node.lineno}: ChatMessageParser.{node.attr} is not in the contract")
    return problems


def test_the_server_imports_only_the_standard_library_and_the_contracts_parser_names() -> None:
    problems = import_problems((ROOT / "ChatServer.py").read_text(encoding="utf-8"))
    assert not problems, "ChatServer.py must import only the standard library and the contract's names:\n" + \
        "\n".join(problems)


@pytest.mark.parametrize("source, complaint", [
    ("from ChatMessageParser import StreamDecoder", "ChatMessageParser.StreamDecoder is not in the contract"),
    ("from ChatMessageParser import *", "ChatMessageParser.* is not in the contract"),
    ("import ChatMessageParser as P\nP.STATUS_WELCOME", "ChatMessageParser.STATUS_WELCOME is not in the contract"),
    ("import numpy", "import numpy is not in the standard library"),
    ("from .helpers import x", "relative import"),
])
def test_the_import_check_catches_what_the_course_kit_would_not_have(source: str, complaint: str) -> None:
    problems = import_problems(source)
    assert any(complaint in problem for problem in problems), f"expected {complaint!r} among {problems}"


def test_the_import_check_accepts_the_standard_library_and_contract_names() -> None:
    source = "import socket, selectors\nimport ChatMessageParser\nChatMessageParser.MessageParser\n" \
             "from ChatMessageParser import ClientQuitMessage as Quit"
    assert import_problems(source) == []


def test_the_cut_down_parser_offers_exactly_the_contract_and_encodes_as_ours_does() -> None:
    parser = load_contract_parser()
    public = {name for name in vars(parser) if not name.startswith("_")}
    assert public == CONTRACT_NAMES, f"expected exactly {sorted(CONTRACT_NAMES)}, found {sorted(public)}"
    samples = {
        "ServerRegistrationMessage": (70000, 0, "srv", "info é"),
        "ClientRegistrationMessage": (4000000000, 12, "kim", ""),
        "StatusUpdateMessage": (1, 0, 2, "A machine has already registered with ID 7"),
        "ClientChatMessage": (5, 6, '"Hi"'),
        "ClientQuitMessage": (5, "bye"),
        "ServerQuitMessage": (1, 2, "going"),
    }
    stream = b""
    for name, parameters in CONTRACT_BUILDERS.items():
        builder = getattr(parser, name).bytes
        assert list(inspect.signature(builder).parameters) == parameters, f"{name}.bytes parameters"
        frame = builder(*samples[name])
        assert frame == getattr(our_parser, name).bytes(*samples[name]), f"{name} encodes differently from ours"
        stream += frame
    theirs_parsed, ours_parsed = parser.MessageParser.parse_messages(stream), our_parser.MessageParser.parse_messages(stream)
    assert len(theirs_parsed) == len(ours_parsed) == len(CONTRACT_BUILDERS), \
        f"expected {len(CONTRACT_BUILDERS)} messages from each parser, got {len(theirs_parsed)} and {len(ours_parsed)}"
    for theirs, ours in zip(theirs_parsed, ours_parsed, strict=True):
        assert vars(theirs) == vars(ours), f"{type(ours).__name__}: parsed {vars(theirs)}, ours parsed {vars(ours)}"
    with pytest.raises(ValueError):
        parser.MessageParser.parse_messages(stream[:-1])  # only whole messages, as the contract says


@pytest.mark.timeout(900)
def test_the_whole_scenario_suite_passes_with_only_the_contracts_parser(tmp_path: Path) -> None:
    submission = tmp_path / "submission"
    submission.mkdir()
    shutil.copy(ROOT / "ChatServer.py", submission / "ChatServer.py")
    shutil.copy(CONTRACT_PARSER, submission / "ChatMessageParser.py")
    logs = tmp_path / "Logs"
    run = subprocess.run(
        [sys.executable, str(ROOT / "ChatTestManager.py"), "--server", str(submission / "ChatServer.py"),
         "--logs", str(logs)],
        capture_output=True, text=True, timeout=850, cwd=tmp_path,
    )
    assert run.returncode == 0, (f"expected every case to pass with the contract's parser, exit status"
                                 f" {run.returncode}:\n{run.stdout}\n{run.stderr}")
    first_log = sorted(logs.glob("*.log"))[0].read_text()
    assert f"parser   {submission / 'ChatMessageParser.py'}" in first_log, \
        f"the server did not import the cut-down parser:\n{first_log[:500]}"
    # Its trace is there, every line of a form the course's reference prints.
    trace_lines = [line for log in logs.glob("*.log")
                   for line in log.read_text().partition("\ntrace (")[2].splitlines()[1:]
                   if line and not line.startswith("*CMD ")]
    odd = [line for line in trace_lines if not TRACE_LINE.fullmatch(line)]
    assert trace_lines and not odd, f"expected only the reference's kinds of trace line, found {odd[:5]}"
    # Still fast there: the quiet probe reads nothing beyond the server itself, so every WAIT ends on quiet.
    endings = [ending for log in logs.glob("*.log")
               for ending in re.findall(r"waited [\d.]+ s of [\d.]+ s: (.*)", log.read_text())]
    assert endings and set(endings) == {"the network was quiet"}, \
        f"expected every WAIT to end because the network was quiet, found {sorted(set(endings))}"
