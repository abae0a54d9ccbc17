#!/usr/bin/env python3
"""Runs CRC scenario test cases: launches servers and clients as threads, carries out each case's
commands, then compares every machine's state with the case's final_state.

    python3 ChatTestManager.py                      run every case in TestCases/
    python3 ChatTestManager.py 2_ 4_3               run the cases whose names start with 2_ or 4_3
    python3 ChatTestManager.py TestCases/4_3_chat_3_hops.cfg   a case named by its file
    python3 ChatTestManager.py --list               list the cases with their weights
    python3 ChatTestManager.py --lint               read each case against its own commands; run nothing
    python3 ChatTestManager.py --server sub/ChatServer.py   grade another server (a submission)
    python3 ChatTestManager.py --as-course          grade exactly as the course's checker does
    python3 ChatTestManager.py --demo               a small network in this process, for a first look

Cases are read as the course's harness reads them: servers and clients connect to 127.0.0.1 whatever
host a case names, connectivity cases record the chunks each server receives, and KILL ALL stops every
machine in launch order. Before a case runs, the lint (Testers/lint.py) reads it against its own
commands: a key it proves wrong is a case error, reported and not graded, and a server is never failed
for a mistake in a case file. --as-course compares only the keys the course's checker compares, skips
machines it cannot find, and says which keys it left unchecked.

A WAIT ends as soon as the whole network is quiet (see Testers/quiet.py), or when its time has passed;
a server our probe cannot read (one not built as ours, as a submission may not be) gets the full time, and
--strict-waits gives every WAIT its full time. Cases run in parallel worker processes (-j N, default
one per core), each worker with its own block of ports; -j 1 runs them one by one in this process.

Options: --cases DIR (another folder of .cfg files), --slow F (multiply every WAIT by F on a slow
machine), --timeout S (a test fails once it runs S seconds beyond its own WAITs), --keep-ports (use
the ports as written instead of free ones; implies -j 1), --logs DIR (where logs go; default Logs/
beside this file), --gradescope FILE and --junit FILE (results for Gradescope and for CI), --record and
--record-transcripts (write what our server does into the cases named), --reference-logs DIR.

A failed case is explained on the wire: what crossed each link in this run (captured from the sockets,
whatever the servers print) is compared with the reference's run, TestCases/NAME.transcript.json (written
by --record with our server) or else the course's reference log NAME.log in --reference-logs DIR (by
default a 'Correct Logs' folder beside the cases), and the first message that went otherwise is named in
words; Logs/NAME.html charts both runs side by side (Testers/transcript.py, explain.py, chart.py).

Each case's log (Logs/CASE.log) holds its commands, each as a `*CMD` line among the servers' trace, the
lint's findings, the waits, the result and the state every machine ended in; Logs/CASE/ holds each
server's and client's own log. On a failure the log, the console and the results files draw the network.
Before any case runs, every path the run writes (the logs' folder, the results files, with --record
the case files) is tried (Testers/paths.py): one that cannot be written stops the run in one line.
Exit status: 0 when every test passed, 1 when any failed or none ran (or, with --lint, when a case has
an error), 2 for a usage error or a path that cannot be written.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

KIT_DIR = Path(__file__).resolve().parent
if str(KIT_DIR) not in sys.path:  # so the kit's own modules import when this file is loaded from elsewhere
    sys.path.insert(0, str(KIT_DIR))

# Ours is imported first and stays in sys.modules, so our client and testers keep our parser even
# when a submission brings its own.
import ChatMessageParser  # noqa: E402,F401
import ChatTerminal  # noqa: E402
from Testers import ports  # noqa: E402
from Testers.cases import Case, declared_weight, load_case, select_cases  # noqa: E402
from Testers.chart import write_chart  # noqa: E402
from Testers.checker import Verdict, check_final_state  # noqa: E402
from Testers.commands import CaseError, parse_command, split_arguments  # noqa: E402,F401
from Testers.drawing import MachineView, draw_network  # noqa: E402
from Testers.explain import closest, compare, explain  # noqa: E402
from Testers.isolation import SANDBOX_MODES, import_problem, probe, run_all_isolated  # noqa: E402
from Testers.keys import keys_for  # noqa: E402
from Testers.lint import Finding, lint  # noqa: E402
from Testers.mutants import MUTANTS, write_mutants  # noqa: E402
from Testers.paths import check_paths  # noqa: E402
from Testers.ports import port_block  # noqa: E402
from Testers.quiet import WaitRecord  # noqa: E402
from Testers.record import record  # noqa: E402
from Testers.reports import write_gradescope, write_junit  # noqa: E402
from Testers.run import (  # noqa: E402,F401  (also the names the course's scripts and our tests use)
    DEFAULT_LOGS_DIR,
    DEFAULT_SERVER,
    DEFAULT_TIMEOUT,
    Limits,
    RunRecord,
    Settings,
    describe_load_error,
    load_server_module,
    record_as_data,
    run_here,
    server_class_for,
    server_parser,
)
from Testers.transcript import Transcript, record_transcript, reference_for, transcript_path  # noqa: E402

DEFAULT_CASES_DIR = KIT_DIR / "TestCases"
DRAWING_WIDTH = 94  # a 100-column terminal, less the indent of a failure's lines
PASSED, FAILED, CASE_ERROR = "PASS", "FAIL", "CASE ERROR"
TRANSCRIPT_RUNS = 16  # --record runs each case this many times for its transcript, to see the outcomes of races


# ---------------------------------------------------------------------------------------------
# Running a case (Testers/run.py) and judging it

@dataclass
class CaseResult:
    name: str
    status: str  # PASSED, FAILED, or CASE_ERROR: the case could not be run as written, and is not graded
    seconds: float
    problems: List[str] = field(default_factory=list)  # checker explanations and errors, in order
    weight: float = 1.0
    family: str = ""
    drawing: str = ""  # the network at the end, drawn when the case failed after it ran
    waits: List[WaitRecord] = field(default_factory=list)  # what each WAIT did, in order
    case_errors: List[str] = field(default_factory=list)  # the lint's findings: mistakes in the case file
    unchecked: List[str] = field(default_factory=list)  # with --as-course, the keys it left unchecked
    exception: Optional[BaseException] = None  # the first exception a machine raised, if any
    logs: List[Path] = field(default_factory=list)  # the case's log file, and the folder of its machines' logs
    observed: Optional[Dict[str, Dict[str, Any]]] = None  # each machine's keys at the end, if the run completed
    graded_errors: List[str] = field(default_factory=list)  # with --as-course, case errors whose key was graded
    logged: List[str] = field(default_factory=list)  # with --as-course, errors servers logged: shown, not failed
    weight_known: bool = True  # False for a case file too broken to say its weight (counted as 0)
    wire: List[str] = field(default_factory=list)  # on a failure: the first divergence on the wire, in words
    transcript: Optional[Transcript] = None  # what crossed each link, from the wire (Testers/transcript.py)

    @property
    def case_error_lines(self) -> List[str]:
        graded = "case error (graded all the same, as the course does)"
        return [f"{graded if error in self.graded_errors else 'case error (not graded)'}: {error}"
                for error in self.case_errors]

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def graded_weight(self) -> float:
        """What the case counts toward the total: nothing when it could not be run as written."""
        return 0 if self.status == CASE_ERROR else self.weight

    @property
    def score(self) -> float:
        return self.weight if self.passed else 0

    @property
    def explanation(self) -> str:
        lines = list(self.problems) or (["passed"] if self.passed else [])
        lines += self.wire
        lines += self.case_error_lines
        lines += [f"not failed, as the course does not: {error}" for error in self.logged]
        if self.unchecked:
            lines.append(f"left unchecked, as the course's checker does: {', '.join(self.unchecked)}")
        return "\n".join(lines)

    @property
    def output(self) -> str:
        """The explanation, the drawing of the network when there is one, and where the logs are."""
        logs = f"\n\nlogs: {', '.join(str(path) for path in self.logs)}" if self.logs else ""
        return self.explanation + (f"\n\n{self.drawing}" if self.drawing else "") + logs


def run_case(path: Path, settings: Optional[Settings] = None) -> CaseResult:
    """Run one case file to completion or to its time limit, and say whether it passed and why not."""
    settings = settings or Settings()
    started = time.monotonic()
    prepared = prepare_case(Path(path), settings)
    if isinstance(prepared, CaseResult):
        return prepared
    case, findings = prepared
    log_dir = case_log_dir(case, settings)
    try:
        server_class = server_class_for(settings)
    except Exception as error:  # whatever a submission raises on import is its failure, not the run's
        problem = f"error: {describe_load_error(settings.server_path, error)}\n{traceback.format_exc().rstrip()}"
        return _not_run(CaseResult(case.name, FAILED, 0.0, [problem], case.weight, case.family, exception=error),
                        case.path, settings)
    return judge(case, findings, settings, run_here(case, settings, server_class, log_dir), started)


def prepare_case(path: Path, settings: Settings) -> Union[Tuple[Case, List[Finding]], CaseResult]:
    """The case and the lint's findings, or the result of a case that cannot run at all (with its log)."""
    try:
        case = load_case(path)
    except CaseError as error:
        weight = declared_weight(path)
        return _not_run(CaseResult(path.stem, CASE_ERROR, 0.0, [], weight or 0, case_errors=[str(error)],
                                   weight_known=weight is not None), path, settings)
    findings = lint(case)
    if settings.recording:
        case = replace(case, final_state={})
        findings = [finding for finding in findings if not finding.about_final_state]
    if any(finding.whole_case for finding in findings):
        return _not_run(CaseResult(case.name, CASE_ERROR, 0.0, [], case.weight, case.family,
                                   case_errors=[str(finding) for finding in findings]), path, settings)
    return case, findings


def case_log_dir(case: Case, settings: Settings) -> Path:
    """The case's own folder of machine logs, emptied: logs of an earlier run would mislead. Absolute, since
    a server puts a relative log path beside its own file, wherever the manager runs."""
    log_dir = Path(settings.logs_dir).resolve() / case.name
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir


def judge(case: Case, findings: List[Finding], settings: Settings, record: RunRecord, started: float) -> CaseResult:
    """The verdict on a run: its errors, and its state against the case's final state; then the log."""
    # A value that cannot be compared is left out in every mode: the course's checker would crash on it.
    not_graded = {(finding.machine, finding.key) for finding in findings
                  if finding.machine is not None and (finding.shapeless or not settings.as_course)}
    verdict = Verdict()
    if record.finished:
        verdict = check_final_state(case.final_state, record.machines, case.type, not_graded, settings.as_course)
    problems = record.errors + ([] if settings.as_course else record.logged) + verdict.failures
    state = {name: values for name, (kind, values) in record.machines.items()}
    drawing = draw(case, state, verdict.compared, settings.as_course) if problems and state else ""
    log_file = Path(settings.logs_dir).resolve() / f"{case.name}.log"
    graded = {(name, key) for name, keys in verdict.compared.items() for key in keys}  # case errors graded anyway
    result = CaseResult(case.name, FAILED if problems else PASSED, time.monotonic() - started, problems,
                        case.weight, case.family, drawing, record.waits, [str(finding) for finding in findings],
                        verdict.unchecked, record.exception, [log_file, log_file.with_suffix("")],
                        state if record.clean else None,
                        [str(finding) for finding in findings if (finding.machine, finding.key) in graded],
                        record.logged if settings.as_course else [])
    result.transcript = record.transcript
    try:
        _explain_on_the_wire(result, case, settings)
    except Exception as error:  # an explanation that fails must not cost the case its result
        result.wire = [f"on the wire: no explanation, the comparison failed: {type(error).__name__}: {error}"]
    _write_log(log_file, case, settings, record, result, state)
    return result


def _explain_on_the_wire(result: CaseResult, case: Case, settings: Settings) -> None:
    """For a failed case: the first divergence of its transcript from the reference's run, in words, and
    the chart of both (Logs/NAME.html), named among the logs. It needs only the result and the case's
    files, not the run, so it is done wherever the transcript was sent (a sandboxed run sends it back)."""
    chart = Path(settings.logs_dir).resolve() / f"{case.name}.html"
    chart.unlink(missing_ok=True)  # an earlier run's chart would mislead
    if result.passed or result.transcript is None:
        return
    try:
        reference = reference_for(case, settings.reference_logs)
    except (OSError, ValueError) as error:
        result.wire = [f"on the wire: the reference cannot be read: {error}"]
        return
    reference = closest(reference, result.transcript) if reference is not None else None
    result.wire = explain(reference, result.transcript)
    divergences = compare(reference, result.transcript) if reference is not None else []
    write_chart(chart, case.name, result.transcript, reference, divergences, result.wire, result.drawing)
    result.logs.append(chart)


def draw(case: Case, state: Dict[str, Dict[str, Any]], compared: Dict[str, Dict[str, List[Any]]],
         as_course: bool) -> str:
    """The network as the machines saw it at the end (`state`: each machine's keys as read), marked where it
    differs from what the checker compared."""
    by_port: Dict[int, str] = {}  # written port -> the server launched on it (so far)
    views = []
    for command in case.launches:
        attached = by_port.get(command.joins) if command.joins is not None else None
        if command.KIND == "server":
            by_port[command.options.port] = command.name
        if command.name not in state:
            continue  # never launched: the run stopped before it
        drawn = {key.name for key in keys_for(command.KIND, case.type) if key.drawn}
        seen = {key: value for key, value in state[command.name].items() if key in drawn}
        views.append(MachineView(command.name, command.KIND, command.options.id, attached, seen,
                                 compared.get(command.name, {})))
    return draw_network(views, DRAWING_WIDTH, as_sets=as_course)


def _not_run(result: CaseResult, path: Path, settings: Settings) -> CaseResult:
    """A case that could not run still gets its log, saying why, in place of an earlier run's logs."""
    logs = Path(settings.logs_dir).resolve()
    shutil.rmtree(logs / result.name, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    result.logs = [logs / f"{result.name}.log"]
    server = settings.server_class or Path(settings.server_path).resolve()
    lines = [f"case     {result.name} ({path})", f"server   {server}", "", f"result   {result.status}",
             *result.explanation.splitlines(), ""]
    result.logs[0].write_text("\n".join(lines), encoding="utf-8")
    return result


def _write_log(log_file: Path, case: Case, settings: Settings, record: RunRecord, result: CaseResult,
               state: Dict[str, Dict[str, Any]]) -> None:
    server = settings.server_class or Path(settings.server_path).resolve()
    parser = server_parser(settings.server_path)
    lines = [
        f"case     {case.name} ({case.path})",
        f"type     {case.type}; weight {case.weight:g}; family {case.family or '-'}",
        f"server   {server}",
        *([f"parser   {parser} (what that server imported)"] if parser else []),
        f"settings slow {settings.slow:g}, timeout {settings.timeout:g} s, keep ports {settings.keep_ports},"
        f" strict waits {settings.strict_waits}, as the course {settings.as_course}",
        *record.about,
        *case.warnings,
        *result.case_error_lines,
        "",
        *record.journal,
        "",
        f"result   {result.status} in {result.seconds:.2f} s",
        *result.explanation.splitlines(),
        *([""] + result.drawing.splitlines() if result.drawing else []),
        "",
        "observed state:",
    ]
    for name, keys in state.items():
        lines.append(f"  {name}")
        lines.extend(f"    {key}: {json.dumps(value, default=repr)}" for key, value in keys.items())
    lines += ["", "trace (what the servers printed, and each command as *CMD):", *record.trace, ""]
    log_file.write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command line

def _points(value: float) -> str:
    return f"{value:g}"


def print_table(results: List[CaseResult]) -> None:
    width = max([len(result.name) for result in results] + [4])
    family_width = max([len(result.family) for result in results] + [6])
    print()
    print(f"{'Test':<{width}}  {'Family':<{family_width}}  {'Result':<10}  Points  Time    Case errors")
    for result in results:
        points = f"{_points(result.score)}/{_points(result.graded_weight)}"
        if result.status == CASE_ERROR:  # not graded: '-' out of the points it would have counted
            points = f"-/{_points(result.weight) if result.weight_known else '?'}"
        errors = str(len(result.case_errors)) if result.case_errors else ""
        print(f"{result.name:<{width}}  {result.family or '-':<{family_width}}  {result.status:<10}"
              f"  {points:>6}  {result.seconds:5.1f} s  {errors}".rstrip())
    graded = [result for result in results if result.status != CASE_ERROR]
    passed = sum(result.passed for result in graded)
    total = sum(result.graded_weight for result in results)
    score = sum(result.score for result in results)
    summary = f"Score: {_points(score)}/{_points(total)}; {passed} of {len(graded)} tests passed"
    not_run = [result for result in results if result.status == CASE_ERROR]
    with_errors = [result for result in results if result.case_errors and result.status != CASE_ERROR]
    if not_run:
        unknown = sum(not result.weight_known for result in not_run)
        summary += (f"; {len(not_run)} case(s) not run for errors in the file"
                    f" ({_points(sum(result.weight for result in not_run))} points"
                    f"{f' and {unknown} case(s) of unknown weight' if unknown else ''} not graded)")
    if with_errors:
        anyway = sum(len(result.graded_errors) for result in with_errors)
        summary += f"; {sum(len(result.case_errors) for result in with_errors)} case error(s) in" \
                   f" {len(with_errors)} case(s) that ran" + \
                   (f" ({anyway} graded all the same, as the course does)" if anyway else " (those keys not graded)")
    print(summary, flush=True)


def record_cases(paths: List[Path], settings: Settings, keys_only: bool, states: bool = True,
                 transcripts: bool = True) -> int:
    """--record: write what our server's network really ends in into each case file, and what crossed
    each link into the transcript beside it (--record-transcripts: only that); 1 if any is refused."""
    runs: List[Transcript] = []  # each run's transcript, for the outcomes a case's links can have

    def observe(path: Path) -> Tuple[Optional[Dict[str, Dict[str, Any]]], str]:
        result = run_case(path, settings)
        if result.transcript is not None and result.observed is not None:
            runs.append(result.transcript)
        return result.observed, result.explanation

    refused = 0
    for path in paths:
        runs.clear()
        if states:
            written, what = record(path, observe, keys_only)
        else:
            complete = [observe(path)[0] is not None for _ in range(2)]
            written, what = all(complete), "not recorded: a run did not complete (see its log)"
        if transcripts and written:
            while len(runs) < TRANSCRIPT_RUNS:  # more runs than the state needs: a rarer outcome shows too
                observe(path)
            written, said = record_transcript(path, runs)
            what = f"{what}; {said}" if states else said
        refused += not written
        print(f"{'ok     ' if written else 'REFUSED'}  {path.stem}: {what}", flush=True)
    return 1 if refused else 0


def compare_without_chaos(results: List[CaseResult], paths: List[Path], settings: Settings, jobs: int) -> None:
    """After a run under --chaos: run the cases that failed again without it, and say which fail only
    under chaos (the server trusts one read to hold exactly one message, which networks do not promise)."""
    failed = [path for path, result in zip(paths, results) if result.status == FAILED]
    if not failed:
        print("Under chaos every case that ran passed.")
        return
    print(f"\nRunning the {len(failed)} case(s) that failed under chaos again, without it:", flush=True)
    again = run_all([(path, settings) for path in failed], jobs, lambda index, result: None)
    only = [result.name for result in again if result.status == PASSED]
    both = [result.name for result in again if result.status != PASSED]
    if only:
        print(f"Fail only under chaos ({len(only)}): {', '.join(only)} -- the server takes a read for a whole"
              " message somewhere; a real network cuts and glues messages as the relays did")
    if both:
        print(f"Fail without chaos too ({len(both)}): {', '.join(both)}")


def list_cases(paths: List[Path]) -> None:
    rows: List[Tuple[str, str, str, str]] = [("Case", "Points", "Family", "Description")]
    for path in paths:
        try:
            case = load_case(path)
            rows.append((case.name, _points(case.weight), case.family or "-", case.description))
        except CaseError as error:
            rows.append((path.stem, "-", "-", f"error: {error}"))
    width = max(len(row[0]) for row in rows)
    family_width = max(len(row[2]) for row in rows)
    for name, points, family, description in rows:
        print(f"{name:<{width}}  {points:>6}  {family:<{family_width}}  {description}".rstrip())


def lint_cases(paths: List[Path]) -> int:
    """--lint: every mistake in each case, named with the case and the command or key; 1 if any."""
    errors = 0
    for path in paths:
        try:
            findings: List[Any] = lint(load_case(path))
        except CaseError as error:
            findings = [error]
        errors += len(findings)
        print(f"{'ok   ' if not findings else 'ERROR'}  {path.stem}", flush=True)
        for finding in findings:
            note = "  (the whole case cannot be graded)" if getattr(finding, "whole_case", True) else ""
            print(f"       {finding}{note}", flush=True)
    print(f"{errors} error(s) in {len(paths)} case(s)")
    return 1 if errors else 0


def parse_args(argv: Optional[List[str]] = None, prog: str = "ChatTestManager.py") -> argparse.Namespace:
    def positive(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 < value < math.inf:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
        return value

    def workers(text: str) -> int:
        if not (text.isascii() and text.isdigit() and int(text) >= 1):
            raise argparse.ArgumentTypeError(f"must be a whole number 1 or more, not {text!r}")
        return int(text)

    whole = workers

    def port_range(text: str) -> Tuple[int, int]:
        low, _, high = text.partition("-")
        if not (low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) <= 65535):
            raise argparse.ArgumentTypeError(f"must be LOW-HIGH, from 1,024 to 65,535 with LOW below HIGH,"
                                             f" not {text!r}")
        return int(low), int(high)

    parser = ChatTerminal.ArgumentParser(prog=prog, description="Run CRC scenario test cases.")
    parser.add_argument("names", nargs="*",
                        help="run only these cases: names, starts of names, or paths to .cfg files")
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES_DIR, help="folder of .cfg case files")
    parser.add_argument("--server", type=Path,
                        help="grade this ChatServer.py: each case runs in a sandboxed child process (see --limit-*)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--lint", action="store_true",
                        help="read each case against its own commands, report every mistake, and exit")
    parser.add_argument("--record", action="store_true",
                        help="run the cases named (twice each, with our server) and write the final state they"
                             " end in into each file")
    parser.add_argument("--record-transcripts", action="store_true",
                        help="run the cases named (twice each, with our server) and write only what crossed each"
                             " link into NAME.transcript.json beside each case")
    parser.add_argument("--reference-logs", type=Path, metavar="DIR",
                        help="the course's reference logs (NAME.log, as in its 'Correct Logs' folder): what a"
                             " failed case is compared with where it has no transcript beside it")
    parser.add_argument("--record-keys-only", action="store_true",
                        help="with --record, only the keys each file already names")
    parser.add_argument("--mutants", action="store_true",
                        help="run the cases against each mutant of our server (a deliberate bug each) and show"
                             " which cases catch which")
    parser.add_argument("--require-kill", action="store_true",
                        help="with --mutants, exit 1 when a mutant passes every case")
    parser.add_argument("--chaos", type=int, metavar="SEED",
                        help="pass every connection to a server through a relay that cuts the byte stream at"
                             " random points, glues writes together and delays them, all drawn from SEED")
    parser.add_argument("--as-course", action="store_true",
                        help="grade exactly as the course's checker does: only its keys, machines it cannot find"
                             " skipped, the lint's findings reported but graded all the same (except values that"
                             " cannot be compared), errors a server logs shown but not failed")
    parser.add_argument("-j", "--jobs", type=workers, default=os.cpu_count() or 1, metavar="N",
                        help="run N cases at a time in worker processes (default: one per core, %(default)s here);"
                             " 1 runs them one by one in this process")
    parser.add_argument("--strict-waits", action="store_true",
                        help="give every WAIT its full time, as the course's kit does, instead of ending it"
                             " once the network is quiet")
    parser.add_argument("--slow", type=positive, default=1.0, help="multiply every WAIT by this factor")
    parser.add_argument("--timeout", type=positive, default=DEFAULT_TIMEOUT,
                        help="fail a test still running this many seconds beyond its WAITs (default %(default)g)")
    parser.add_argument("--keep-ports", action="store_true", help="use the ports written in the cases (implies -j 1)")
    parser.add_argument("--ports", type=port_range, metavar="LO-HI",
                        help="give the servers ports from this range only, shared among the workers (default: a"
                             " free port below the system's ephemeral range)")
    parser.add_argument("--logs", type=Path, default=DEFAULT_LOGS_DIR, help="folder for logs (default Logs/)")
    parser.add_argument("--gradescope", type=Path, metavar="FILE",
                        help="also write the results in Gradescope's autograder format (results.json)")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write the results as JUnit XML, for CI")
    limits = Limits()
    parser.add_argument("--limit-memory", type=whole, default=limits.memory_mib, metavar="MiB",
                        help="grading: the address space of a case's child (default %(default)s)")
    parser.add_argument("--limit-processes", type=whole, default=limits.processes, metavar="N",
                        help="grading: the processes and threads of a case's child, as root (default %(default)s)")
    parser.add_argument("--limit-open-files", type=whole, default=limits.open_files, metavar="N",
                        help="grading: the open files of a case's child (default %(default)s)")
    parser.add_argument("--limit-file-size", type=whole, default=limits.file_mib, metavar="MiB",
                        help="grading: the largest file a case's child may write (default %(default)s)")
    parser.add_argument("--limit-import", type=positive, default=limits.import_seconds, metavar="S",
                        help="grading: the seconds a submission may take to import (default %(default)g)")
    parser.add_argument("--limit-grace", type=positive, default=limits.grace_seconds, metavar="S",
                        help="grading: the seconds a case's child gets beyond the case's own time limit before it"
                             " is ended (default %(default)g)")
    parser.add_argument("--autograder-zip", type=Path, metavar="FILE",
                        help="write the zip a course uploads to Gradescope (setup.sh, run_autograder, the kit without"
                             " our server, the cases of --cases) and exit")
    parser.add_argument("--grade-folder", type=Path, metavar="DIR",
                        help="grade every DIR/NAME/ChatServer.py, each case in a sandbox, -j students at a time")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="with --grade-folder: write each student's points per case and total here")
    parser.add_argument("--sandbox", choices=SANDBOX_MODES, default="auto",
                        help="grading: auto applies all this machine allows; user, no namespaces (as in a container"
                             " that forbids them); process, not even a user of its own (as without root)")
    parser.add_argument("--demo", action="store_true",
                        help="start a small network (3 servers, 3 clients) in this process and show messages flowing")
    args = parser.parse_args(argv)
    for option, needs in (("--record-keys-only", "record"), ("--require-kill", "mutants"), ("--csv", "grade_folder")):
        if getattr(args, option[2:].replace("-", "_")) and not getattr(args, needs):
            parser.error(f"{option}: only with --{needs.replace('_', '-')}")
    return args


def report(result: CaseResult) -> None:
    """One line per finished test, and why it failed or what in its file is wrong."""
    print(f"{result.status}  {result.name}  ({result.seconds:.1f} s)", flush=True)
    for line in result.output.splitlines() if not result.passed or result.case_errors or result.logged else []:
        print(f"      {ChatTerminal.printable(line)}".rstrip(), flush=True)  # a submission's text: no escapes


def _start_worker(slots: Any, count: int, port_range: Optional[Tuple[int, int]]) -> None:
    """In a new worker process: take a slot no other worker of this run has, and its ports."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops the run
    ports.block = port_block(slots.get(), count, port_range)


def run_cases(paths: List[Path], settings: Settings, jobs: int) -> List[CaseResult]:
    """Run the cases, `jobs` at a time, reporting each as it finishes; the results in case order."""
    return run_all([(path, settings) for path in paths], jobs, lambda index, result: report(result))


def run_all(work: List[Tuple[Path, Settings]], jobs: int,
            done: Callable[[int, CaseResult], None]) -> List[CaseResult]:
    """Run each case with its settings, `jobs` at a time in worker processes (or, with one job, in this
    process), calling `done` with each result's place in `work` as it comes; the results in that order."""
    jobs = min(jobs, len(work))
    if work and work[0][1].isolate:
        return run_all_isolated(work, jobs, done)
    if jobs == 1:
        ports.block = port_block(0, 1, work[0][1].ports)
        results = []
        for index, (path, settings) in enumerate(work):
            results.append(run_case(path, settings))
            done(index, results[-1])
        return results
    # spawn, not fork: a fork of a process with threads (pytest's, an abandoned case's) can deadlock.
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(jobs):
        slots.put(slot)
    finished: Dict[int, CaseResult] = {}
    with ProcessPoolExecutor(jobs, context, _start_worker, (slots, jobs, work[0][1].ports)) as pool:
        futures: Dict[Future[CaseResult], int] = {pool.submit(run_case, path, settings): index
                                                  for index, (path, settings) in enumerate(work)}
        try:
            for future in as_completed(futures):
                index = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool as error:  # a worker died (a submission called os._exit, say)
                    path = work[index][0]
                    result = CaseResult(path.stem, FAILED, 0.0, [f"error: the worker process died: {error}"],
                                        declared_weight(path) or 0)
                finished[index] = result
                done(index, result)
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)  # the cases under way finish; the queued ones never start
            raise
    return [finished[index] for index in range(len(work))]


def run_mutants(paths: List[Path], settings: Settings, jobs: int, require_kill: bool) -> int:
    """--mutants: every case against every mutant of our server (Testers/mutants.py), then a matrix of
    which cases catch which mutants, the score each mutant would get, and the mutants no case catches.
    With require_kill, 1 when a mutant survives."""
    with tempfile.TemporaryDirectory(prefix="crc-mutants-") as folder:
        servers = write_mutants(DEFAULT_SERVER, Path(folder))
        work = [(path, replace(settings, server_path=servers[mutant.name],
                               logs_dir=Path(settings.logs_dir) / "mutants" / mutant.name))
                for mutant in MUTANTS for path in paths]
        left = {mutant.name: len(paths) for mutant in MUTANTS}

        def done(index: int, result: CaseResult) -> None:
            mutant = MUTANTS[index // len(paths)]
            left[mutant.name] -= 1
            if not left[mutant.name]:
                print(f"  {mutant.name}: all {len(paths)} case(s) run", flush=True)

        print(f"Running {len(paths)} case(s) against each of {len(MUTANTS)} mutants of our server:"
              f" {len(work)} runs, {min(jobs, len(work))} at a time", flush=True)
        results = run_all(work, jobs, done)
    return print_mutant_matrix(paths, results, require_kill)


def print_mutant_matrix(paths: List[Path], results: List[CaseResult], require_kill: bool) -> int:
    columns = ["_".join(path.stem.split("_")[:2]) for path in paths]
    width = max(len(mutant.name) for mutant in MUTANTS)
    print("\nMutants by cases (X: the case fails, so it catches the mutant; .: the mutant passes it)")
    print(f"{'':<{width}}  " + " ".join(f"{column:>3}" for column in columns) + "   score")
    survivors = []
    for number, mutant in enumerate(MUTANTS):
        row = results[number * len(paths):(number + 1) * len(paths)]
        marks = ["X" if result.status == FAILED else "." for result in row]
        score = sum(result.score for result in row)
        total = sum(result.graded_weight for result in row)  # a case error counts for nothing, as in the table
        print(f"{mutant.name:<{width}}  " + " ".join(f"{mark:>3}" for mark in marks) + f"   {_points(score)}/"
              f"{_points(total)}", flush=True)
        if "X" not in marks:
            survivors.append(mutant)
    if survivors:
        print("\nMutants no case catches:")
        for mutant in survivors:
            print(f"  {mutant.name} ({mutant.part}): {mutant.bug}")
    else:
        print(f"\nEvery one of the {len(MUTANTS)} mutants is caught by at least one case.")
    return 1 if survivors and require_kill else 0


def refuse(paths: List[Path], problem: str, gradescope: Optional[Path]) -> int:
    """A run that cannot grade: one line (then any detail), and with --gradescope a valid results file that
    fails every test for that reason (an autograder without one shows the student only that it failed)."""
    print(f"error: {ChatTerminal.printable(problem.splitlines()[0])}", file=sys.stderr)
    if gradescope:
        failed = [CaseResult(path.stem, FAILED, 0.0, [f"error: {problem}"], declared_weight(path) or 0)
                  for path in paths]
        write_gradescope(gradescope, failed, 0.0, problem)
    return 2


def output_paths_problem(args: argparse.Namespace, paths: List[Path]) -> Optional[str]:
    """Before any case runs: the first path the run would write and cannot (results files, the logs'
    folder, and with --record the case files), or None."""
    files = [("--gradescope", args.gradescope), ("--junit", args.junit), ("--csv", args.csv),
             ("--autograder-zip", args.autograder_zip)]
    files += [("--record", path) for path in paths] if args.record else []
    files += [("--record", transcript_path(path)) for path in paths] if args.record or args.record_transcripts else []
    problems = check_paths(files, [("--logs", args.logs)])
    return problems[0] if problems else None


def main(argv: Optional[List[str]] = None, prog: str = "ChatTestManager.py") -> int:
    """`prog`: the name the help and the errors give this command (CRCTestManager.py runs it too)."""
    args = parse_args(argv, prog)
    if args.demo:
        from Testers.demo import run_demo  # only the demo needs it
        return run_demo()
    if not args.cases.is_dir():
        print(f"error: --cases {args.cases}: no such folder", file=sys.stderr)
        return 2
    try:
        paths = select_cases(args.cases, args.names)
    except CaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: no .cfg case files in {args.cases}", file=sys.stderr)
        return 2
    if args.list:
        list_cases(paths)
        return 0
    if args.lint:
        return lint_cases(paths)
    if args.reference_logs is not None and not args.reference_logs.is_dir():
        print(f"error: --reference-logs {args.reference_logs}: no such folder", file=sys.stderr)
        return 2
    if args.grade_folder is not None and not args.grade_folder.is_dir():
        print(f"error: --grade-folder {args.grade_folder}: no such folder", file=sys.stderr)
        return 2
    problem = output_paths_problem(args, paths)
    if problem:  # an autograder still gets results, where it can
        return refuse(paths, problem, None if problem.startswith("--gradescope ") else args.gradescope)
    if args.autograder_zip:
        from Testers.grading import write_autograder_zip  # only this needs it
        return write_autograder_zip(args.autograder_zip, args.cases)
    if args.record or args.record_transcripts:
        if not args.names:
            print("error: --record needs the cases to record, by name or file", file=sys.stderr)
            return 2
        ports.block = port_block(0, 1, args.ports)
        return record_cases(paths, Settings(logs_dir=args.logs, slow=args.slow, timeout=args.timeout, recording=True),
                            args.record_keys_only, states=args.record)
    # The course's kit keeps its reference logs in 'Correct Logs' beside its TestCases folder.
    beside = args.cases.resolve().parent / "Correct Logs"
    reference_logs = args.reference_logs or (beside if beside.is_dir() else None)
    grading = any(given is not None for given in (args.server, args.gradescope, args.junit, args.grade_folder))
    server = args.server or DEFAULT_SERVER
    limits = Limits(args.limit_memory, args.limit_processes, args.limit_open_files, args.limit_file_size,
                    args.limit_import, args.limit_grace)
    settings = Settings(server, args.slow, args.timeout, args.keep_ports, args.logs, args.strict_waits,
                        args.as_course, ports=args.ports, chaos=args.chaos, limits=limits, sandbox=args.sandbox,
                        reference_logs=reference_logs)
    if grading:
        if args.grade_folder is None and not server.is_file():  # the one check made here: nothing of it runs here
            return refuse(paths, describe_load_error(server, FileNotFoundError(server)), args.gradescope)
        isolation = probe(args.sandbox)
        settings.isolate = not isolation.in_process
        if settings.isolate and os.geteuid() == 0 and not isolation.own_user and args.sandbox != "process":
            return refuse(paths, f"cannot sandbox a submission here ({isolation.why_not}): it would run as root;"
                                 " --sandbox process runs it so all the same", args.gradescope)
        for line in isolation.describe(limits):
            print(line, flush=True)
        if args.grade_folder is not None:
            if isolation.in_process:
                print("error: --grade-folder: grading a class needs a system with fork", file=sys.stderr)
                return 2
            from Testers.grading import grade_folder  # only this needs it
            return grade_folder(args.grade_folder, paths, settings, args.jobs, args.csv,
                                lambda path, problem: CaseResult(path.stem, FAILED, 0.0, [problem],
                                                                 declared_weight(path) or 0))
        problem = import_problem(settings) if settings.isolate else None
        if problem:
            return refuse(paths, problem, args.gradescope)
    else:
        try:
            load_server_module(server)
        except Exception as error:  # ours, broken in a checkout: one line, not a traceback
            print(f"error: {describe_load_error(server, error)}", file=sys.stderr)
            return 2
    jobs = 1 if args.keep_ports else args.jobs  # cases as written share their ports
    if args.mutants:
        return run_mutants(paths, settings, jobs, args.require_kill)
    started = time.monotonic()
    try:
        results = run_cases(paths, settings, jobs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a fault of the grader's own: the results files still say so, and the student is not blamed
        traceback.print_exc()
        return refuse(paths, f"the grader failed, not the submission: {traceback.format_exc().splitlines()[-1]}",
                      args.gradescope)
    seconds = time.monotonic() - started
    print_table(results)
    if args.chaos is not None:
        compare_without_chaos(results, paths, replace(settings, chaos=None), jobs)
    charts = [str(path) for result in results for path in result.logs if path.suffix == ".html"]
    if charts:  # the run's last line: where to look first
        print(f"Charts of the failed case(s), this run beside the reference: {', '.join(charts)}")
    if args.gradescope:
        write_gradescope(args.gradescope, results, seconds)
    if args.junit:
        write_junit(args.junit, results, seconds)
    if all(result.status == CASE_ERROR for result in results):
        print("error: no test ran: every case named has errors in its file", file=sys.stderr)
        return 1
    return 0 if all(result.status != FAILED for result in results) else 1


def command_line(prog: str) -> int:
    """main() as a command: a reader that stops reading (`| head`) ends the run without a traceback."""
    try:
        return main(prog=prog)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no one reads what is still buffered
        return 1


if __name__ == "__main__":
    sys.exit(command_line("ChatTestManager.py"))
