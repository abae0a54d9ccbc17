"""The servers' trace: what they print while a case runs, kept for the case's log, never shown on the
terminal (a case of eleven servers prints thousands of lines).

In the course's harness everything printed goes into the test's log; so here, while a case runs,
sys.stdout is a TraceCapture. Servers and clients print from their own threads, so a line is kept whole
whichever thread writes it.
"""

from __future__ import annotations

import io
import sys
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, List


class TraceCapture(io.TextIOBase):
    def __init__(self) -> None:
        super().__init__()
        self.lines: List[str] = []
        self._partial: Dict[int, str] = {}  # thread id -> the start of a line that thread has not ended yet
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        with self._lock:
            *whole, rest = (self._partial.pop(thread, "") + text).split("\n")
            self.lines.extend(whole)
            if rest:
                self._partial[thread] = rest
        return len(text)

    def add(self, line: str) -> None:
        """A line of the manager's own, in its place among the servers' lines."""
        with self._lock:
            self.lines.append(line)

    def ended(self) -> List[str]:
        """Every line, with what any thread left unended at the end."""
        with self._lock:
            return self.lines + list(self._partial.values())


@contextmanager
def capture_stdout() -> Iterator[TraceCapture]:
    """sys.stdout goes to a TraceCapture until the block ends. The manager runs one case at a time per
    process, so the whole process's stdout can be the case's."""
    capture = TraceCapture()
    previous, sys.stdout = sys.stdout, capture
    try:
        yield capture
    finally:
        sys.stdout = previous
