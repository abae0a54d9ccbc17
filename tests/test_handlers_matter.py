"""The handlers are where the behaviour lives: a copy of our server with one of the five handlers
emptied fails the scenario cases of that handler's family, as course staff check when they break a
copy on purpose to see that their tests catch it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List

import pytest
from netkit import ROOT

import ChatTestManager as manager

CASES = ROOT / "TestCases"

# Each handler, and the cases that must fail without it.
FAMILIES = {
    "handle_server_registration_message": ["2_1", "2_2", "2_3"],
    "handle_status_message": ["5_2"],  # a refused server logs why only through its status handler
    "handle_client_registration_message": ["3_1", "3_2", "3_3", "3_4"],
    "handle_client_chat_message": ["4_1", "4_2", "4_3"],
    "handle_client_quit_message": ["6_1", "6_2", "6_3"],
}


def with_empty_handler(source: str, handler: str) -> str:
    """The server's source with one CRCServer method's body replaced by `pass`."""
    tree = ast.parse(source)
    (server_class,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "CRCServer"]
    (method,) = [node for node in server_class.body if isinstance(node, ast.FunctionDef) and node.name == handler]
    method.body = [ast.Pass()]
    return ast.unparse(tree)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("handler", list(FAMILIES))
def test_emptying_a_handler_fails_the_cases_of_its_family(handler: str, tmp_path: Path) -> None:
    broken = tmp_path / "ChatServer.py"
    broken.write_text(with_empty_handler((ROOT / "ChatServer.py").read_text(encoding="utf-8"), handler))
    settings = manager.Settings(server_path=broken, logs_dir=tmp_path / "Logs")
    passed: List[str] = []
    for path in manager.select_cases(CASES, FAMILIES[handler]):
        result = manager.run_case(path, settings)
        assert not result.problems or not result.problems[0].startswith("error: cannot load"), result.explanation
        if result.passed:
            passed.append(path.stem)
    assert not passed, f"with {handler} emptied, these cases still passed: {passed}"


def test_the_unbroken_copy_passes_the_same_cases(tmp_path: Path) -> None:
    copy = tmp_path / "ChatServer.py"
    copy.write_text(ast.unparse(ast.parse((ROOT / "ChatServer.py").read_text(encoding="utf-8"))))
    settings = manager.Settings(server_path=copy, logs_dir=tmp_path / "Logs")
    names = [name for names in FAMILIES.values() for name in names]
    failed = [result.name for result in (manager.run_case(path, settings)
                                         for path in manager.select_cases(CASES, names)) if not result.passed]
    assert not failed, f"the copy rewritten without any change failed {failed}: the test above would prove nothing"
