"""The runner of a sandboxed case: loads the submission and carries out the case's commands, then sends
back what it observed. It knows the commands, never the final state; the grader judges.

Testers/sandbox.py calls `main` once the process is shut in, with the kit already imported. STAGE holds
submission/ (the ChatServer.py under test and the modules beside it; the folder it runs in), logs/ (the
machines' logs) and plan.json (Testers/isolation.py writes it). What it observed goes back as lines of
JSON on the file descriptor REPORT_FD, as it happens: the runner started, the submission loaded (or why
not), each command as it starts, and at the end the run's record (Testers.run.RunRecord as plain data).
"""

from __future__ import annotations

import json
import os
import site
import sys
import traceback
from pathlib import Path
from typing import IO, Any, Dict, NoReturn


def main(stage: Path, report_fd: int) -> NoReturn:
    report = os.fdopen(report_fd, "w", encoding="utf-8", buffering=1)
    status = 0
    try:
        run(stage, report)
    except BaseException:  # ours: the grader shows what was printed
        traceback.print_exc()
        status = 1
    report.close()
    sys.stdout.flush()
    os._exit(status)  # threads a submission left running must not hold the process open


def run(stage: Path, report: IO[str]) -> None:
    def send(event: str, **fields: Any) -> None:
        report.write(json.dumps({"event": event, **fields}) + "\n")
        report.flush()

    send("started")
    site.setquit()  # started without site (-S, faster): a stray exit() acts as it does elsewhere
    from Testers import ports
    from Testers import run as manager
    from Testers.cases import case_from_plan

    plan: Dict[str, Any] = json.loads((stage / "plan.json").read_text(encoding="utf-8"))
    case = case_from_plan(plan["case"])
    settings = manager.Settings(**plan["settings"])
    ports.block = ports.port_block(plan["slot"], plan["slots"], settings.ports)
    server_path = stage / "submission" / "ChatServer.py"
    try:
        module = manager.load_server_module(server_path)
    except SystemExit as stop:
        send("load_failed", problem=f"cannot load {server_path}: exited during import (sys.exit, status {stop.code!r})")
        return
    except MemoryError:
        send("load_failed", memory=True)
        return
    except BaseException as error:  # whatever a submission raises on import is its failure, not the run's
        send("load_failed", problem=f"{manager.describe_load_error(server_path, error)}\n"
                                    f"{traceback.format_exc().rstrip()}")
        return
    send("loaded", parser=manager.server_parser(server_path))
    record = manager.run_here(case, settings, module.CRCServer, stage / "logs",
                              on_step=lambda step: send("step", text=step))
    send("record", record=manager.record_as_data(record))
