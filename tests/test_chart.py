"""Logs/NAME.html in a real browser: headless Chromium (Debian's package) lays out the chart of a failed
case, and the first divergence must be drawn where a student would see it, in red, in both charts.

Chromium is installed by .ci/run where it is missing; elsewhere, without it, the test is skipped with the
reason, and CRC_REQUIRE_CHROMIUM=1 (set by CI) turns that skip into a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from test_explain import BROKEN, broken_server

import ChatTestManager as manager

ROOT = Path(__file__).resolve().parent.parent
WINDOW = (1600, 1400)
RED = (0xD0, 0x02, 0x1B)  # the chart's colour for the first divergence

# Run in the test's copy of the page only: the chart itself has no script. It writes the box of every
# marked element where --dump-dom shows it.
MEASURE = """<script>
addEventListener("load", () => {
  const boxes = [...document.querySelectorAll(".divergence")].map(element => {
    const box = element.getBoundingClientRect();
    return {id: element.id, x: box.x, y: box.y, width: box.width, height: box.height,
            text: element.textContent};
  });
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify(boxes);
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CRC_REQUIRE_CHROMIUM") == "1":
            pytest.fail("CRC_REQUIRE_CHROMIUM=1 but no chromium on PATH: .ci/run installs Debian's package")
        pytest.skip("no chromium on PATH (apt-get install chromium; CI installs it)")
    return found


def run_chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh one each time
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
               *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def png_pixels(path: Path) -> Tuple[int, int, List[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    offset, chunks, header = 8, [], b""
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and not interlace, f"unexpected PNG format {depth}/{colour}/{interlace}"
    step = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * step
    rows: List[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - step] if x >= step else 0
            up = previous[x]
            corner = previous[x - step] if x >= step else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                near = min((abs(guess - left), 0), (abs(guess - up), 1), (abs(guess - corner), 2))[1]
                line[x] = (line[x] + (left, up, corner)[near]) & 0xFF
        rows.append(bytes(line[i] for i in range(stride) if i % step < 3) if step == 4 else bytes(line))
        previous = line
    return width, height, rows


def red_pixels(rows: List[bytes], box: Dict[str, float]) -> int:
    count = 0
    for y in range(max(int(box["y"]), 0), min(int(box["y"] + box["height"]) + 1, len(rows))):
        row = rows[y]
        for x in range(max(int(box["x"]), 0), min(int(box["x"] + box["width"]) + 1, len(row) // 3)):
            pixel = row[3 * x:3 * x + 3]
            if all(abs(channel - wanted) <= 40 for channel, wanted in zip(pixel, RED)):
                count += 1
    return count


@pytest.mark.timeout(300)
def test_the_chart_of_a_failed_case_shows_its_first_divergence_in_a_browser(tmp_path: Path) -> None:
    broken = next(broken for broken in BROKEN if broken.mutant.name == "server-not-flooded")
    settings = manager.Settings(server_path=broken_server(tmp_path, broken.mutant), logs_dir=tmp_path / "Logs")
    result = manager.run_case(ROOT / "TestCases" / f"{broken.case}.cfg", settings)
    assert result.status == manager.FAILED, result.explanation
    chart = tmp_path / "Logs" / f"{broken.case}.html"
    assert chart in [path.resolve() for path in result.logs], result.output
    page = chart.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["'](?!#)""", page), "the chart fetches something: it must be self-contained"

    measured = tmp_path / "measured.html"
    measured.write_text(page.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dump = run_chromium(tmp_path, "--dump-dom", measured.as_uri())
    found = re.search(r'<pre id="measured">(.*?)</pre>', dump.stdout, re.S)
    assert found, f"chromium did not lay out the page: {dump.stderr[-2000:]}"
    boxes = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                       .replace("&gt;", ">"))
    by_id = {box["id"]: box for box in boxes}
    # The missing registration is marked in both charts: dashed where this run should have sent it, and
    # where the reference sent it.
    for chart_id in ("run-first-divergence", "reference-first-divergence"):
        assert chart_id in by_id, f"no element {chart_id} marked as the divergence; marked: {boxes}"
        box = by_id[chart_id]
        assert box["width"] > 20 and box["height"] > 5, f"{chart_id} is not laid out: {box}"
        assert "server yew (53)" in box["text"], f"{chart_id} marks another message: {box}"
        assert 0 <= box["x"] and box["x"] + box["width"] <= WINDOW[0] and 0 <= box["y"] < WINDOW[1], \
            f"{chart_id} lies outside the first screen {WINDOW}: {box}"
    assert by_id["run-first-divergence"]["text"].count("missing:") == 1, by_id["run-first-divergence"]

    shot = tmp_path / "chart.png"
    taken = run_chromium(tmp_path, f"--screenshot={shot}", chart.as_uri())
    assert shot.is_file(), f"no screenshot: {taken.stderr[-2000:]}"
    width, height, rows = png_pixels(shot)
    assert (width, height) == WINDOW, f"the screenshot is {width}x{height}, not {WINDOW}"
    for chart_id in ("run-first-divergence", "reference-first-divergence"):
        assert red_pixels(rows, by_id[chart_id]) > 50, \
            f"the screenshot shows no red where {chart_id} is laid out: {by_id[chart_id]}"
