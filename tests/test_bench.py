"""The benchmark command runs to the end and reports a figure on every row.

Only the shape of the report is checked: figures depend on the machine, so no time, rate or ratio is
asserted here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from netkit import ROOT

ROWS = [  # the start of each row's name, in the order the table prints them
    "throughput, 1 server ",
    "throughput, 1 server, vs ours at ",
    "throughput, 3 servers ",
    "throughput, 3 servers, vs ours at ",
    "latency p50, 3 servers",
    "latency p99, 3 servers",
    "join storm",
    "idle CPU per server",
    "memory per client",
    "scenario suite CPU",
]
NUMBER = re.compile(r"^\d+(\.\d+)?$")


@pytest.mark.timeout(600)
def test_quick_run_prints_a_number_on_every_row(tmp_path: Path) -> None:
    markdown = tmp_path / "bench.md"
    result = subprocess.run([sys.executable, "bench/run.py", "--quick", "--markdown", str(markdown)],
                            cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, (
        f"expected `bench/run.py --quick` to exit 0, it exited {result.returncode};\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}")
    lines = result.stdout.splitlines()
    assert lines and lines[0].split()[:3] == ["benchmark", "unit", "ours"], (
        f"expected the table's header line first, got:\n{result.stdout}")
    suite_ready = (ROOT / "ChatTestManager.py").exists()
    for name in ROWS:
        matching = [line for line in lines if line.startswith(name)]
        assert len(matching) == 1, f"expected one row starting with {name!r} in the table, got:\n{result.stdout}"
        ours = re.split(r"\s{2,}", matching[0])[2]
        if name == "scenario suite CPU" and not suite_ready:
            assert ours == "not available", f"expected 'not available' without ChatTestManager.py, got {ours!r}"
            continue
        assert NUMBER.match(ours), f"expected a number in the 'ours' column of {name!r}, got {ours!r}:\n{matching[0]}"
    table = markdown.read_text(encoding="utf-8")
    for name in ROWS:
        assert f"| {name}" in table, f"expected a Markdown row for {name!r} in {markdown}, got:\n{table}"


def test_progress_names_each_benchmark_it_runs() -> None:
    result = subprocess.run([sys.executable, "bench/run.py", "--quick", "--only", "idle,suite"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"expected exit 0, got {result.returncode}; stderr:\n{result.stderr[-3000:]}"
    assert "== idle ==" in result.stderr and "== suite ==" in result.stderr, (
        f"expected a progress line for each chosen benchmark on stderr, got:\n{result.stderr}")
    assert "throughput" not in result.stdout, f"expected only the chosen benchmarks' rows, got:\n{result.stdout}"


def test_unknown_benchmark_is_refused_with_the_choices() -> None:
    result = subprocess.run([sys.executable, "bench/run.py", "--only", "speed"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, f"expected a usage error (exit 2), got {result.returncode}"
    assert "throughput" in result.stderr, f"expected the list of benchmarks in the error, got:\n{result.stderr}"
