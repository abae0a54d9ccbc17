"""The paths check before a run: every file and folder the run will write (results files, logs) is tried
first, so that a path that cannot be written stops the run at once, in one line, instead of after every
case has run and its results are lost.

A folder is created if missing (the run would create it) and a file is made in it and removed; a file
is opened for appending (nothing in it changes) and removed again if it was not there. Trying is the one
check that holds for every reason a write can fail: a missing folder, a file where a folder should be,
permissions (which root ignores), a read-only file system.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Optional, Tuple


def file_problem(path: Path) -> Optional[str]:
    """Why a file cannot be written at `path`, or None. Its folder must exist: a typo there should not
    make folders."""
    path = Path(path)
    if path.is_dir():
        return "it is a folder; give a file name"
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        return f"the folder {path.parent} {what}"
    existed = path.exists()
    try:
        with path.open("a", encoding="utf-8"):
            pass
        if not existed:
            path.unlink()
    except OSError as error:
        return f"cannot write it: {error.strerror or error}"
    return None


def folder_problem(path: Path) -> Optional[str]:
    """Why files cannot be written in the folder `path` (made if missing), or None."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        return f"cannot write in it: {error.strerror or error}"
    return None


def check_paths(files: List[Tuple[str, Optional[Path]]], folders: List[Tuple[str, Optional[Path]]]) -> List[str]:
    """One line per path that cannot be written, each naming its option: `files` and `folders` are
    (option, path) pairs, a path None when the option was not given."""
    problems = []
    for pairs, problem_of in ((files, file_problem), (folders, folder_problem)):
        for option, path in pairs:
            problem = problem_of(path) if path is not None else None
            if problem:
                problems.append(f"{option} {path}: {problem}")
    return problems
