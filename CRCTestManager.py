#!/usr/bin/env python3
"""The test manager under the name the assignment text gives it, and the Python interface the course's
autograder scripts call, on our manager underneath (quiet waits, the lint, the logs and the reports).

    python3 CRCTestManager.py [the options of ChatTestManager.py]      runs the suite as it does

    from CRCTestManager import CRCTestManager
    manager = CRCTestManager(CRCServerImpl=None, CRCMessageParserImpl=None, catch_exceptions=True)
    score, results = manager.run_tests({"1_1_connectivity_2_servers": 7, "4_2_chat_1_hop": 3})

`run_tests` runs each case `TestCases/NAME.cfg` beside this file, one after another in this process,
in the sorted order of their names, writes `Logs/NAME.log` for each, and returns the sum of the points
of the cases that passed (an int when the points are ints) and a dict per case, in that order: `test`
(its name), `passed`, `errors` (the explanation, with the first message that went otherwise on the wire
than in the reference's run, or None) and `exception` (with catch_exceptions, the first exception a
server or client raised, or None). Without catch_exceptions such
an exception propagates out of run_tests, as in the course's manager. A key the lint proves wrong is
not graded (the explanation names it); a case that cannot run at all fails with the reason. Each case
loads the ChatServer.py beside this file as it runs: when it cannot be loaded (a syntax error, say),
each case fails saying why with catch_exceptions, and without it the load error propagates from the
first case. Each case is reported as it ends, as ChatTestManager.py reports it.

CRCServerImpl replaces the CRCServer imported from ChatServer.py beside this file; CRCMessageParserImpl
(a module, or any object with the contract's names) is what that ChatServer.py imports as its
ChatMessageParser, for a server whose parser lives elsewhere.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

import ChatTestManager
from ChatTestManager import CASE_ERROR, KIT_DIR, Settings, report, run_case


class CRCTestManager:
    def __init__(self, CRCServerImpl: Optional[type] = None, CRCMessageParserImpl: Any = None,
                 catch_exceptions: bool = False) -> None:
        # Nothing is loaded here: each case loads ChatServer.py as it runs, so that a submission that
        # cannot load fails each case saying why (with catch_exceptions), not the constructor.
        self.server_class = CRCServerImpl
        self.parser = None if CRCMessageParserImpl is None else as_module(CRCMessageParserImpl)
        self.catch_exceptions = catch_exceptions
        self.cases_dir = KIT_DIR / "TestCases"
        self.logs_dir = KIT_DIR / "Logs"

    def run_tests(self, tests: Dict[str, float]) -> Tuple[float, List[Dict[str, Any]]]:
        settings = Settings(server_path=ChatTestManager.DEFAULT_SERVER, logs_dir=self.logs_dir,
                            server_class=self.server_class, parser=self.parser)
        score: float = 0  # an int while the points are: 75, not 75.0, as the course's scripts print it
        results: List[Dict[str, Any]] = []
        for name in sorted(tests):  # the course's order: a script reads results[i] by it
            points = tests[name]
            result = run_case(self.cases_dir / f"{name}.cfg", settings)
            report(result)
            if result.exception is not None and not self.catch_exceptions:
                raise result.exception
            if result.passed:
                score += points
            errors = None if result.passed else result.output
            if result.status == CASE_ERROR:
                errors = f"the case file cannot be run as written:\n{result.output}"
            results.append({"test": name, "passed": result.passed, "errors": errors,
                            "exception": result.exception if self.catch_exceptions else None})
        return score, results


def as_module(parser: Any) -> ModuleType:
    """A parser given as any object with the contract's names, as a module the server can import."""
    if isinstance(parser, ModuleType):
        return parser
    module = ModuleType("ChatMessageParser")
    module.__dict__.update({name: getattr(parser, name) for name in dir(parser) if not name.startswith("__")})
    return module


if __name__ == "__main__":
    sys.exit(ChatTestManager.command_line("CRCTestManager.py"))
