"""Checks the state machines ended in against a case's `final_state`.

By default every key that the final state names is compared, except those the lint proves wrong
(Testers/lint.py), which are case errors and not graded. With `as_course`, only the keys the course's
checker compares are compared, and a machine it cannot find is skipped, as the course does; the keys
left unchecked are listed. Values compare as multisets: order does not matter (it depends on timing),
but how many times each item appears does, so one chat dropped and another duplicated is caught. The
course's checker compares sets plus lengths, which cannot see that; with `as_course` ours does the same.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from Testers.keys import UNREADABLE, find


@dataclass
class Verdict:
    failures: List[str] = field(default_factory=list)  # one explanation per key that differs
    unchecked: List[str] = field(default_factory=list)  # machine.key named in the file but not compared
    compared: Dict[str, Dict[str, List[Any]]] = field(default_factory=dict)  # machine -> key -> the list expected


def _shown(items: Iterable[Any]) -> str:
    # Sorted for reading; repr as the key because a list may mix types (an id saved as a string).
    return "[" + ", ".join(repr(item) for item in sorted(items, key=repr)) + "]"


def difference(expected: List[Any], found: List[Any], as_sets: bool = False) -> Optional[Tuple[List[Any], List[Any]]]:
    """None when the lists hold the same items as many times each (with `as_sets`, as the course's checker
    does: the same items, and the same length); otherwise (missing, extra), both empty when only the
    counts differ. The drawing marks a machine by this too, so that it marks what the grade saw."""
    if as_sets:
        missing: List[Any] = sorted(set(expected) - set(found), key=repr)
        extra: List[Any] = sorted(set(found) - set(expected), key=repr)
        same = len(expected) == len(found)
    else:
        missing = list((Counter(expected) - Counter(found)).elements())
        extra = list((Counter(found) - Counter(expected)).elements())
        same = True
    return None if same and not missing and not extra else (missing, extra)


def compare(label: str, expected: List[Any], found: List[Any], as_sets: bool = False) -> Optional[str]:
    """None when the lists match (see difference); otherwise what was expected and what was found."""
    differs = difference(expected, found, as_sets)
    if differs is None:
        return None
    missing, extra = differs
    lines = [f"{label}: expected {len(expected)} item(s) {_shown(expected)}",
             f"{' ' * len(label)}  found    {len(found)} item(s) {_shown(found)}"]
    if missing:
        lines.append(f"{' ' * len(label)}  missing {_shown(missing)}")
    if extra:
        lines.append(f"{' ' * len(label)}  extra   {_shown(extra)}")
    if not missing and not extra:
        lines.append(f"{' ' * len(label)}  same items, but the counts differ (an item is duplicated)")
    return "\n".join(lines)


def check_final_state(final_state: Dict[str, Any], observed: Dict[str, Tuple[str, Dict[str, Any]]], case_type: str,
                      not_graded: Set[Tuple[str, Optional[str]]], as_course: bool = False) -> Verdict:
    """Compare each machine's state with the final state. `observed` maps a machine's name to its kind and
    its keys as read at the end (Testers.keys.read_machine); `not_graded` holds (machine, key) pairs the
    lint proved wrong, and (machine, None) for whole entries."""
    verdict = Verdict()
    for name, expected_state in final_state.items():
        if name not in observed or (name, None) in not_graded:
            continue  # the lint names it; the course skips it silently
        kind, values = observed[name]
        for key_name, expected in expected_state.items():
            label = f"{name}.{key_name}"
            key = find(kind, case_type, key_name)
            if key is None or (name, key_name) in not_graded:
                continue
            if as_course and not key.course_checks:
                verdict.unchecked.append(label)
                continue
            verdict.compared.setdefault(name, {})[key_name] = expected  # graded, even if it cannot be read
            found = values.get(key_name, {UNREADABLE: "it was not sent back"})
            if not isinstance(found, list):
                why = found.get(UNREADABLE) if isinstance(found, dict) else None
                verdict.failures.append(f"{label}: expected {_shown(expected)}, but it could not be read: {why}")
                continue
            explanation = compare(label, expected, found, as_sets=as_course)
            if explanation:
                verdict.failures.append(explanation)
    return verdict
