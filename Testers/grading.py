"""Grading beyond one submission: the zip a course uploads to Gradescope, and a whole class at once.

    python3 ChatTestManager.py --autograder-zip autograder.zip [--cases DIR]
    python3 ChatTestManager.py --grade-folder SUBMISSIONS --csv grades.csv [-j N]

The zip holds `setup.sh` (run once when Gradescope builds its image), `run_autograder` (run for every
submission, as root) and the kit without our server (the answer): the manager, the client, the codec,
Testers/, and the cases with their transcripts. `run_autograder` grades
`/autograder/submission/ChatServer.py` into `/autograder/results/results.json`, each case in a sandbox
(Testers/isolation.py); AUTOGRADER_ROOT moves `/autograder` elsewhere, for a test.

A class: every SUBMISSIONS/NAME/ChatServer.py is graded as one submission is, several students at a time,
with a line per student as each is done, and a CSV of names, points per case, totals and any problem.
"""

from __future__ import annotations

import csv
import os
import stat
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from ChatTerminal import printable
from Testers.isolation import KIT_DIR, KIT_FILES, Slots, failed_by_grader, import_problem, run_isolated

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image: the kit needs Python 3.9 or
# later and nothing else (the standard library alone).
set -euo pipefail
if ! command -v python3 >/dev/null 2>&1; then
    apt-get update && apt-get install -y python3
fi
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else "the CRC kit needs Python 3.9 or later")'
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission, as root. Each case of the student's ChatServer.py runs in a
# sandbox: a process of its own, as a user of its own, in namespaces of its own where the container allows
# them, with limits; it never sees the cases' final states nor this folder, and cannot write the results.
# AUTOGRADER_ROOT moves /autograder elsewhere (the kit's own test of this script does).
set -uo pipefail
root="${AUTOGRADER_ROOT:-/autograder}"
results="$root/results/results.json"
mkdir -p "$root/results"
# Only root may read the kit (it holds the cases' answers) or write the results, whatever else happens.
chmod -R go-rwx "$root/source" "$root/results"
cd "$root/source" || exit 1
python3 ChatTestManager.py --server "$root/submission/ChatServer.py" --cases "$root/source/TestCases" \\
    --logs "$root/source/Logs" --gradescope "$results"
status=$?
# The manager writes the results whatever the submission does; should the grader itself fail before it
# could, the student still gets a valid file that says so, and not just "the autograder failed".
if ! python3 -c 'import json, sys; json.load(open(sys.argv[1]))["tests"]' "$results" 2>/dev/null; then
    python3 - "$results" "$status" <<'EOF'
import json, sys
json.dump({"score": 0, "output": f"The grader itself failed (exit status {sys.argv[2]}); please tell the course"
           " staff.", "tests": []}, open(sys.argv[1], "w"))
EOF
fi
exit 0
"""


def write_autograder_zip(target: Path, cases: Path) -> int:
    """--autograder-zip: the zip a course uploads to Gradescope. Returns the exit status."""
    configs = sorted(cases.glob("*.cfg"))
    if not configs:
        print(f"error: --cases {cases}: no .cfg case files", file=sys.stderr)
        return 2
    executable = (stat.S_IFREG | 0o755) << 16
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, text in (("setup.sh", SETUP), ("run_autograder", RUN_AUTOGRADER)):
            entry = zipfile.ZipInfo(name, time.localtime()[:6])
            entry.external_attr = executable
            entry.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(entry, text)
        kit = [KIT_DIR / name for name in (*KIT_FILES, "CRCTestManager.py")] + \
            sorted((KIT_DIR / "Testers").glob("*.py"))
        for path in kit:
            bundle.write(path, str(path.relative_to(KIT_DIR)))
        for path in configs + sorted(cases.glob("*.transcript.json")):
            bundle.write(path, f"TestCases/{path.name}")
    print(f"Wrote {target}: setup.sh, run_autograder, the kit without our server, and {len(configs)} case(s)"
          f" from {cases}. Upload it as the autograder of a Gradescope assignment.")
    return 0


# ---------------------------------------------------------------------------------------------- a class

def grade_folder(folder: Path, paths: List[Path], settings: Any, jobs: int, csv_path: Optional[Path],
                 new_result: Callable[..., Any]) -> int:
    """--grade-folder: every FOLDER/NAME/ChatServer.py, `jobs` students at a time; a line per student as
    each is done, and the CSV. `new_result` makes a failed ChatTestManager.CaseResult for a case that
    could not run (the manager's own class). Returns the exit status: 0 once every student is graded."""
    students = sorted(path for path in folder.iterdir() if path.is_dir())
    if not students:
        print(f"error: --grade-folder {folder}: no student folders in it", file=sys.stderr)
        return 2
    print(f"Grading {len(students)} submission(s) in {folder}, {min(jobs, len(students))} at a time,"
          f" {len(paths)} case(s) each:", flush=True)
    rows: List[Tuple[str, List[Any], str]] = []
    started = time.monotonic()

    slots = Slots(jobs)

    def grade(student: Path) -> Tuple[str, List[Any], str]:
        server = student / "ChatServer.py"
        mine = replace(settings, server_path=server, logs_dir=Path(settings.logs_dir) / student.name)
        with slots.taken() as slot:
            problem = f"no ChatServer.py in {student}" if not os.path.lexists(server) else \
                import_problem(mine, slot, jobs)
            if problem:
                return student.name, [new_result(path, f"error: {problem}") for path in paths], \
                    problem.splitlines()[0]
            results = []
            for path in paths:
                try:
                    results.append(run_isolated(path, mine, slot, jobs))
                except Exception:  # this case says so; the student's other cases and the class go on
                    results.append(failed_by_grader(path))
            return student.name, results, ""

    with ThreadPoolExecutor(min(jobs, len(students)), thread_name_prefix="student") as pool:
        futures = {pool.submit(grade, student): student for student in students}
        for done, future in enumerate(as_completed(futures), 1):
            name, results, problem = future.result()
            rows.append((name, results, problem))
            score = sum(result.score for result in results)
            total = sum(result.graded_weight for result in results)
            passed = sum(result.passed for result in results)
            print(printable(f"[{done}/{len(students)}] {name}: {score:g}/{total:g}, {passed} of {len(results)}"
                            f" case(s) passed{f'; {problem}' if problem else ''}"), flush=True)
    rows.sort(key=lambda row: row[0])
    if csv_path is not None:
        write_csv(csv_path, [path.stem for path in paths], rows)
        print(f"Wrote {csv_path}: {len(rows)} student(s) in {time.monotonic() - started:.1f} s.")
    return 0


def write_csv(path: Path, cases: List[str], rows: List[Tuple[str, List[Any], str]]) -> None:
    """A row per student: the name, the points of each case, the total, the most there was, any problem."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["student", *cases, "total", "out of", "problem"])
        for name, results, problem in rows:
            writer.writerow([cell(name), *[f"{result.score:g}" for result in results],
                             f"{sum(result.score for result in results):g}",
                             f"{sum(result.graded_weight for result in results):g}", cell(problem)])


def cell(text: str) -> str:
    """A text for a spreadsheet cell: never a formula (a file name or an error can start with '='), never
    a control character."""
    text = printable(text)
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text
