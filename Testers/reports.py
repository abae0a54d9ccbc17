"""Results files for other tools: Gradescope's autograder results.json, and JUnit XML for CI.

Both take the manager's CaseResults (anything with name, status, passed, score, graded_weight, seconds,
family and output) in case order. A case that could not be run as written (a case error) counts for
nothing: 0 of 0 points in Gradescope, skipped in JUnit.
"""

from __future__ import annotations

import json
import re
import socket
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Sequence

# XML 1.0 cannot carry these at all, not even escaped; a submission's status text might hold one.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def gradescope_results(results: Sequence[Any], seconds: float, visibility: str = "visible",
                       problem: str = "") -> Dict[str, Any]:
    """The autograder results format: a test per case with its points, and the explanation and drawing
    of a failure as its output (Gradescope shows it in a <pre> block, so the drawing keeps its shape)."""
    score = sum(result.score for result in results)
    total = sum(result.graded_weight for result in results)
    passed = sum(result.passed for result in results)
    graded = sum(result.status in ("PASS", "FAIL") for result in results)  # as the console counts them
    tests: List[Dict[str, Any]] = []
    for result in results:
        verdict = {"PASS": "passed", "FAIL": "failed"}.get(result.status, "not graded: the case file has errors")
        test = {
            "name": result.name,
            "score": result.score,
            "max_score": result.graded_weight,
            "output": f"{verdict} in {result.seconds:.1f} s\n" + ("" if result.passed else result.output),
            "tags": [result.family] if result.family else [],
            "visibility": visibility,
        }
        if result.status in ("PASS", "FAIL"):
            test["status"] = verdict  # Gradescope knows only these two
        tests.append(test)
    return {
        "score": score,
        "execution_time": round(seconds, 1),
        "output": (f"{problem}\n" if problem else "") + f"{passed} of {graded} tests passed; {score:g} of"
                  f" {total:g} points",
        "visibility": visibility,
        "stdout_visibility": "hidden",  # the run's console output repeats what the tests say
        "test_output_format": "text",
        "tests": tests,
    }


def write_gradescope(path: Path, results: Sequence[Any], seconds: float, problem: str = "") -> None:
    """`problem`: what went wrong with the whole submission (it cannot be loaded, say), shown first."""
    data = gradescope_results(results, seconds, problem=problem)
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def junit_xml(results: Sequence[Any], seconds: float, suite_name: str = "CRC scenarios") -> str:
    """A <testsuites> document with one <testsuite> and a <testcase> per case; a failed case has a
    <failure> whose message is the first line of the explanation and whose text is all of it."""
    failures = sum(result.status == "FAIL" for result in results)
    skipped = sum(result.status not in ("PASS", "FAIL") for result in results)
    suites = ElementTree.Element("testsuites", name=suite_name, tests=str(len(results)), failures=str(failures),
                                 errors="0", time=f"{seconds:.3f}")
    suite = ElementTree.SubElement(suites, "testsuite", {
        "name": suite_name, "tests": str(len(results)), "failures": str(failures), "errors": "0",
        "skipped": str(skipped),
        "time": f"{seconds:.3f}", "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "hostname": socket.gethostname(),
    })
    for result in results:
        family = re.sub(r"\W+", "_", result.family).strip("_") if result.family else "cases"
        case = ElementTree.SubElement(suite, "testcase", name=result.name, classname=f"crc.{family}",
                                      time=f"{result.seconds:.3f}")
        output = _xml_text(result.output)
        if result.status == "FAIL":
            failure = ElementTree.SubElement(case, "failure", message=output.splitlines()[0] if output else "failed",
                                             type="AssertionError")
            failure.text = output
        elif result.status != "PASS":
            ElementTree.SubElement(case, "skipped", message=output.splitlines()[0] if output else "case error")
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: Path, results: Sequence[Any], seconds: float) -> None:
    Path(path).write_text(junit_xml(results, seconds), encoding="utf-8")
