"""--record: write into a case file the final state our server really ends in.

Each case runs twice; if the two runs disagree on a key, the case's outcome depends on timing and the
file is left as it was, with the keys named. Otherwise its final_state becomes what was observed: every
key its case type supports for every machine it launches, or with keys_only only the keys the file
already names. Every other field and the commands stay as they are, and the file is written in one
stable layout (a command per line, each expected list on one line, sorted), so that recording again
shows as a clean diff.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

State = Dict[str, Dict[str, List[Any]]]


def stable(values: List[Any]) -> List[Any]:
    """A list in the order it is written: numbers first, ascending, then texts."""
    return sorted(values, key=lambda value: (isinstance(value, str), value))


def disagreements(first: State, second: State) -> List[str]:
    """machine.key for every value the two runs saw differently (as multisets: order is timing's)."""
    names = list(dict.fromkeys([*first, *second]))
    def seen(state: State, name: str, key: str) -> Counter[str]:
        return Counter(map(repr, state.get(name, {}).get(key, [])))

    return [f"{name}.{key}" for name in names for key in dict.fromkeys([*first.get(name, {}), *second.get(name, {})])
            if seen(first, name, key) != seen(second, name, key)]


def case_text(data: Dict[str, Any]) -> str:
    """A case file in the kit's layout: two-space indents, a command per line, each list on one line."""
    def inline(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["{"]
    fields = list(data.items())
    for index, (field, value) in enumerate(fields):
        end = "," if index < len(fields) - 1 else ""
        if field == "commands" and isinstance(value, list):
            lines.append('  "commands": [')
            lines += [f"    {inline(command)}{',' if number < len(value) - 1 else ''}"
                      for number, command in enumerate(value)]
            lines.append(f"  ]{end}")
        elif field == "final_state" and isinstance(value, dict) and value:
            lines.append('  "final_state": {')
            machines = list(value.items())
            for number, (name, state) in enumerate(machines):
                lines.append(f"    {inline(name)}: {{")
                keys = list(state.items())
                lines += [f"      {inline(key)}: {inline(expected)}{',' if position < len(keys) - 1 else ''}"
                          for position, (key, expected) in enumerate(keys)]
                lines.append(f"    }}{',' if number < len(machines) - 1 else ''}")
            lines.append(f"  }}{end}")
        else:
            lines.append(f"  {inline(field)}: {inline(value)}{end}")
    return "\n".join(lines + ["}"]) + "\n"


def record(path: Path, observe: Callable[[Path], Tuple[Optional[State], str]], keys_only: bool) -> Tuple[bool, str]:
    """Record one case: (whether the file was written, what to tell the user). `observe` runs the case
    once and returns the state every machine ended in, or None and why not."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    old: Dict[str, Dict[str, Any]] = data.get("final_state") if isinstance(data.get("final_state"), dict) else {}
    if keys_only and not any(isinstance(keys, dict) and keys for keys in old.values()):
        return False, "not recorded: the file names no keys to record; without --record-keys-only, every key is"
    runs = []
    for _ in range(2):
        state, problem = observe(path)
        if state is None:
            return False, f"not recorded: {problem}"
        runs.append(state)
    if keys_only:  # only these are written, so only these must agree
        runs = [{name: {key: state[name][key] for key in old[name] if key in state.get(name, {})}
                 for name in old if name in state} for state in runs]
    disagreeing = disagreements(*runs)
    if disagreeing:
        return False, (f"not recorded: two runs disagree on {', '.join(disagreeing)}; the outcome depends on"
                       " timing (add WAITs, or check fewer keys)")
    observed = runs[0]
    new = {name: {key: stable(values) for key, values in state.items()} for name, state in observed.items()}
    changes = [f"{name}.{key}: {old.get(name, {}).get(key, '(not checked)')} -> {values}"
               for name, state in new.items() for key, values in state.items()
               if old.get(name, {}).get(key) != values]
    changes += [f"{name}: no longer checked (no command launches it)" for name in old if name not in new]
    data["final_state"] = new
    text = case_text(data)
    if text == Path(path).read_text(encoding="utf-8"):
        return True, "unchanged"
    Path(path).write_text(text, encoding="utf-8")
    if not changes:
        return True, "recorded (the layout only)"
    return True, "recorded" + "".join(f"\n    {change}" for change in changes)
