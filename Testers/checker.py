"""Checks the state machines ended in against a case's `final_state`.

Every key that the final state names is compared; a key this checker does not know is an error, never
skipped, so that a typo cannot turn a check into a silent pass. Values compare as sets plus lengths:
order does not matter (it depends on timing), but a duplicate or a missing entry does.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Iterable, List, Optional

SERVER_KEYS = frozenset({"adjacent_server_ids", "adjacent_user_ids", "hosts_db", "status_updates_log"})
CONNECTIVITY_KEYS = frozenset({"recvd_messages_asdqw", "sent_messages_asdqw"})  # the recorder's hex chunks
CLIENT_KEYS = frozenset({"connected_user_ids", "status_updates_log", "chat_messages_log"})


def allowed_keys(kind: str, case_type: str) -> FrozenSet[str]:
    """Keys a final state may name for a 'server' or 'client' in a case of this type."""
    if kind == "client":
        return CLIENT_KEYS
    return SERVER_KEYS | CONNECTIVITY_KEYS if case_type == "network_connectivity" else SERVER_KEYS


def validate_final_state(final_state: Any, machine_kinds: Dict[str, str], case_type: str) -> List[str]:
    """Problems with the final state itself, found before anything runs.

    `machine_kinds` maps every name the commands launch to 'server' or 'client'.
    """
    if not isinstance(final_state, dict):
        return [f"final_state must be an object keyed by machine name, not {type(final_state).__name__}"]
    problems = []
    for name, expected in final_state.items():
        kind = machine_kinds.get(name)
        if kind is None:
            launched = ", ".join(sorted(machine_kinds)) or "nothing"
            problems.append(f"final_state names {name!r}, but the commands launch no such machine"
                            f" (they launch {launched})")
            continue
        if not isinstance(expected, dict):
            problems.append(f"final_state[{name!r}] must be an object of keys to lists")
            continue
        allowed = allowed_keys(kind, case_type)
        for key, value in expected.items():
            if key not in allowed:
                problems.append(f"final_state[{name!r}] has unknown key {key!r} for a {kind} in a {case_type} case;"
                                f" known keys are {', '.join(sorted(allowed))}")
            elif not isinstance(value, list) or not all(isinstance(item, (int, str)) for item in value):
                problems.append(f"final_state[{name!r}][{key!r}] must be a list of ids or texts, not {value!r}")
    return problems


def observed(machine: Any, key: str) -> List[Any]:
    """A machine's value for a final-state key as a list: the ids of a dict, the items of a list."""
    value = getattr(machine, key)
    return list(value.keys()) if isinstance(value, dict) else list(value)


def _shown(items: Iterable[Any]) -> str:
    # Sorted for reading; repr as the key because a list may mix types (an id saved as a string).
    return "[" + ", ".join(repr(item) for item in sorted(items, key=repr)) + "]"


def compare(label: str, expected: List[Any], found: List[Any]) -> Optional[str]:
    """None when the lists match as sets and in length; otherwise what was expected and what was found."""
    missing = set(expected) - set(found)
    extra = set(found) - set(expected)
    if not missing and not extra and len(expected) == len(found):
        return None
    lines = [f"{label}: expected {len(expected)} item(s) {_shown(expected)}",
             f"{' ' * len(label)}  found    {len(found)} item(s) {_shown(found)}"]
    if missing:
        lines.append(f"{' ' * len(label)}  missing {_shown(missing)}")
    if extra:
        lines.append(f"{' ' * len(label)}  extra   {_shown(extra)}")
    if not missing and not extra:
        lines.append(f"{' ' * len(label)}  same items, but the counts differ (an item is duplicated)")
    return "\n".join(lines)


def check_final_state(final_state: Dict[str, Dict[str, List[Any]]], machines: Dict[str, Any]) -> List[str]:
    """One explanation per key that differs; empty when everything matches."""
    failures = []
    for name, expected_state in final_state.items():
        for key, expected in expected_state.items():
            label = f"{name}.{key}"
            try:
                found = observed(machines[name], key)
            except (AttributeError, TypeError) as error:
                failures.append(f"{label}: expected {_shown(expected)}, but it could not be read: {error}")
                continue
            explanation = compare(label, expected, found)
            if explanation:
                failures.append(explanation)
    return failures
