"""Case files (`TestCases/NAME.cfg`): JSON with `type`, `commands` and `final_state`, and optionally
`weight` (points, default 1), `family` and `description`, which only the report uses.

`load_case` reads what a run needs and refuses a file that cannot run at all (not JSON, a key missing,
an unknown type, a command that does not parse). A file without `final_state` loads (its final_state
None), so that --record can fill it in; the lint refuses to grade it, as one whose final_state checks
nothing. Mistakes that a run survives, in the final state or in
what the commands do, are the lint's (Testers/lint.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from Testers.commands import CaseError, ClientCommand, Command, Kill, Launch, Wait, parse_command
from Testers.keys import CASE_TYPES

CASE_KEYS = {"type", "commands", "final_state"}
REQUIRED_CASE_KEYS = CASE_KEYS - {"final_state"}  # --record writes the final state of a case without one
OPTIONAL_CASE_KEYS = {"weight", "family", "description"}  # for the report only; the checker ignores them


@dataclass
class Case:
    name: str
    path: Path
    type: str
    lines: List[str]
    commands: List[Command]
    final_state: Any  # as written (None: missing): the lint says what in it cannot be graded
    weight: float = 1.0
    family: str = ""
    description: str = ""
    warnings: List[str] = field(default_factory=list)  # for the log: what was ignored in the file

    @property
    def total_wait(self) -> float:
        return sum(command.seconds for command in self.commands if isinstance(command, Wait))

    @property
    def launches(self) -> List[Launch]:
        return [command for command in self.commands if isinstance(command, Launch)]


def load_case(path: Path) -> Case:
    """Read a case file and parse every command, so that no mistake that stops a run surfaces halfway."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CaseError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise CaseError("a case file holds one JSON object")
    missing = REQUIRED_CASE_KEYS - data.keys()
    if missing:
        raise CaseError(f"missing keys {sorted(missing)}; a case has {sorted(CASE_KEYS)}"
                        f" and may have {sorted(OPTIONAL_CASE_KEYS)}")
    # The course's files may carry keys of their own: ignored, but said, in case one is a typo.
    unknown = sorted(data.keys() - CASE_KEYS - OPTIONAL_CASE_KEYS)
    warnings = [f"warning: ignored the unknown top-level key {key!r}; a case has {sorted(CASE_KEYS)}"
                f" and may have {sorted(OPTIONAL_CASE_KEYS)}" for key in unknown]
    if data["type"] not in CASE_TYPES:
        raise CaseError(f"unknown case type {data['type']!r}; expected one of {sorted(CASE_TYPES)}")
    if not isinstance(data["commands"], list):
        raise CaseError("commands must be a list of strings")
    commands = []
    kinds: Dict[str, str] = {}  # machine name -> 'server' or 'client'
    for number, line in enumerate(data["commands"], 1):
        try:
            command = parse_command(line)
            if isinstance(command, Launch):
                if command.name in kinds:
                    raise CaseError(f"a machine named {command.name!r} is already launched")
                kinds[command.name] = command.KIND
            elif isinstance(command, ClientCommand) and kinds.get(command.username) != "client":
                raise CaseError(f"no client named {command.username!r} has been launched")
            elif isinstance(command, Kill) and command.target != "ALL" and command.target not in kinds:
                raise CaseError(f"no machine named {command.target!r} has been launched")
        except CaseError as error:
            raise CaseError(f"command {number} {line!r}: {error}") from None
        commands.append(command)
    weight = data.get("weight", 1)
    if not is_weight(weight):
        raise CaseError(f"weight must be a number of points, not {weight!r}")
    return Case(path.stem, path, data["type"], list(data["commands"]), commands, data.get("final_state"),
                weight, str(data.get("family", "")), str(data.get("description", "")), warnings)


def plan_of(case: Case) -> Dict[str, Any]:
    """What a sandboxed run is told of a case: everything but its final state (Testers/child.py)."""
    return {"name": case.name, "type": case.type, "commands": case.lines}


def case_from_plan(plan: Dict[str, Any]) -> Case:
    """The case a sandboxed run carries out, from plan_of: its final state is not there to be read."""
    commands = [parse_command(line) for line in plan["commands"]]
    return Case(plan["name"], Path(plan["name"] + ".cfg"), plan["type"], list(plan["commands"]), commands, None)


def declared_weight(path: Path) -> Optional[float]:
    """The weight a case file claims, even when the rest of it is broken, so the total stays right; None
    when the file cannot be read as JSON, and no weight can be known."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    weight = data.get("weight", 1) if isinstance(data, dict) else 1
    return float(weight) if is_weight(weight) else 1


def is_weight(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def natural_key(name: str) -> List[Union[int, str]]:
    # 2_10 after 2_9: numbers in names compare as numbers.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def select_cases(cases_dir: Path, selectors: List[str]) -> List[Path]:
    """Case files named by the selectors, in natural order: a selector is a case's name or the start of
    names in `cases_dir`, or a path to a .cfg file anywhere (as tab completion gives it). Without
    selectors, every case in `cases_dir`."""
    paths = sorted(Path(cases_dir).glob("*.cfg"), key=lambda path: natural_key(path.stem))
    if not selectors:
        return paths
    chosen: List[Path] = []
    for selector in selectors:
        if selector.endswith(".cfg") and Path(selector).is_file():
            matches = [Path(selector)]
        else:
            name = Path(selector).name
            stem = name[:-4] if name.endswith(".cfg") else name
            matches = [path for path in paths if path.stem.startswith(stem)]
        if not matches:
            raise CaseError(f"no case in {cases_dir} is named or starts with {selector!r}")
        chosen.extend(path for path in matches if path not in chosen)
    return sorted(chosen, key=lambda path: natural_key(path.stem))
