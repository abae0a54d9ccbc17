"""Logs/NAME.html: a failed case as a message sequence chart, this run beside the reference.

One self-contained page (inline SVG and CSS, nothing fetched, no script): the explanation, two charts
side by side with a lifeline per machine, an arrow per message and each command as a mark on the time
axis (both charts share the axis: each command's stretch is as tall as the longer side needs), the first
divergence marked in red in both (a message of the reference's that this run lacks is drawn dashed where
this run should have sent it), the other differences in orange, and the network as the machines saw it.
Hovering over an arrow shows the message in words and its bytes.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from Testers.explain import MISSING, Divergence, Words
from Testers.transcript import Message, Transcript

COLUMN = 130  # pixels between lifelines
ROW = 24  # pixels per message
MARK = 26  # pixels for a command's mark
TOP = 56  # pixels above the first row: the machines' names
LEFT = 90  # pixels left of the first lifeline
LABEL = 30  # characters of a message's label on its arrow

STYLE = """
body { font-family: sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; }
.explanation { white-space: pre-wrap; font-family: monospace; background: #fff4f4; border-left: 6px solid #d0021b;
  padding: 8px 12px; }
.charts { display: flex; gap: 24px; align-items: flex-start; }
figure { margin: 0; border: 1px solid #ccc; padding: 8px; }
figcaption { font-weight: bold; margin-bottom: 6px; height: 1.3em; white-space: nowrap; }
pre.network { background: #f6f6f6; padding: 8px 12px; }
svg text { font-size: 11px; font-family: sans-serif; }
.lifeline { stroke: #888; stroke-dasharray: 4 3; }
.machine { font-weight: bold; }
.command line { stroke: #36c; stroke-dasharray: 2 2; }
.command text { fill: #36c; }
.message line { stroke: #333; stroke-width: 1.2; }
.difference line { stroke: #f08c00; stroke-width: 2.5; }
.difference text { fill: #b35f00; }
.divergence line { stroke: #d0021b; stroke-width: 3.5; }
.divergence text { fill: #d0021b; font-weight: bold; }
.divergence rect { fill: #ffd0d0; }
.missing line { stroke-dasharray: 6 4; }
"""


def _short(words: Words, message: Message) -> str:
    fields = message["fields"]
    kind = message["type"]
    if kind.endswith("registration"):
        text = f"{kind.split()[0]} {fields.get('name')} ({fields.get('source_id')}) hop {fields.get('last_hop_id')}"
    elif kind == "status":
        text = f"status {fields.get('status_code')} {fields.get('content')!r}"
    elif kind == "client chat":
        text = f"chat {fields.get('content')!r} to {fields.get('destination_id')}"
    elif kind in ("client quit", "server quit"):
        text = f"{kind} of {words.host(fields.get('source_id'))}"
    else:
        text = kind
    return text if len(text) <= LABEL else text[:LABEL - 1] + "…"


def _layout(run: List[Message], reference: List[Message], commands: int) -> Tuple[Dict[int, int], int]:
    """The y of each command's mark (from -1, before any), shared by both charts, and the total height."""
    def counts(messages: List[Message]) -> Dict[int, int]:
        found: Dict[int, int] = {}
        for message in messages:
            found[message["after"]] = found.get(message["after"], 0) + 1
        return found

    mine, theirs = counts(run), counts(reference)
    marks: Dict[int, int] = {}
    y = TOP
    for after in range(-1, commands):
        marks[after] = y
        y += (MARK if after >= 0 else 0) + ROW * max(mine.get(after, 0), theirs.get(after, 0))
    return marks, y + ROW


def _svg(title: str, messages: List[Message], ghosts: List[Message], machines: List[str], words: Words,
         marks: Dict[int, int], height: int, marked: Dict[int, str], prefix: str) -> str:
    """One chart: `ghosts` are the reference's messages this run lacks, drawn dashed at their time."""
    x = {name: LEFT + COLUMN * place for place, name in enumerate(machines)}
    width = LEFT + COLUMN * max(len(machines) - 1, 0) + COLUMN // 2 + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img"'
             f' aria-label="{html.escape(title)}">',
             f'<defs><marker id="{prefix}-head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9"'
             ' markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
             '<path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker></defs>']
    for name, at in x.items():
        parts.append(f'<text class="machine" x="{at}" y="{TOP - 30}" text-anchor="middle">{html.escape(name)}</text>')
        number = html.escape(str(words.ids.get(name, "")))
        parts.append(f'<text x="{at}" y="{TOP - 16}" text-anchor="middle">{number}</text>')
        parts.append(f'<line class="lifeline" x1="{at}" y1="{TOP - 10}" x2="{at}" y2="{height - 4}"/>')
    for after, y in marks.items():
        if after >= 0:
            label = html.escape(words.commands[after][:60])
            parts.append(f'<g class="command"><line x1="4" y1="{y + 8}" x2="{width - 4}" y2="{y + 8}"/>'
                         f'<text x="4" y="{y + 20}">{after + 1}. {label}</text></g>')
    rows: Dict[int, int] = {}
    drawn = sorted([(message, False) for message in messages] + [(ghost, True) for ghost in ghosts],
                   key=lambda item: item[0]["after"])
    for message, ghost in drawn:
        after = message["after"]
        place = rows.get(after, 0)
        rows[after] = place + 1
        y = marks.get(after, TOP) + (MARK if after >= 0 else 0) + ROW * place + ROW // 2 + 4
        start, end = x.get(message["from"], LEFT), x.get(message["to"], LEFT)
        mark = marked.get(id(message), "")
        classes = " ".join(filter(None, ["message", mark, "missing" if ghost else ""]))
        element = f' id="{prefix}-first-divergence"' if mark == "divergence" else ""
        label = ("missing: " if ghost else "") + _short(words, message)
        tip = f"{words.message(message)}\n{message['from']} -> {message['to']}\nbytes {message['hex']}"
        backdrop = (f'<rect x="{min(start, end) - 6}" y="{y - 15}" width="{abs(end - start) + 12}" height="{ROW - 2}"/>'
                    if mark == "divergence" else "")
        parts.append(f'<g class="{classes}"{element}><title>{html.escape(tip)}</title>{backdrop}'
                     f'<line x1="{start}" y1="{y}" x2="{end}" y2="{y}" marker-end="url(#{prefix}-head)"/>'
                     f'<text x="{(start + end) // 2}" y="{y - 4}" text-anchor="middle">{html.escape(label)}</text></g>')
    parts.append("</svg>")
    return "\n".join(parts)


def chart_html(name: str, run: Transcript, reference: Optional[Transcript], divergences: List[Divergence],
               explanation: List[str], drawing: str) -> str:
    words = Words(run)
    messages = run["messages"]
    expected = reference["messages"] if reference is not None else []
    machines = [machine["name"] for machine in run["machines"]]
    for message in messages + expected:  # a peer the case never named (an unregistered socket, say)
        for end in (message["from"], message["to"]):
            if end not in machines:
                machines.append(end)
    ghosts = [divergence.reference for divergence in divergences
              if divergence.kind == MISSING and divergence.reference is not None]
    marked: Dict[int, str] = {}
    for number, divergence in enumerate(divergences):
        for message in (divergence.run, divergence.reference):
            if message is not None:
                marked[id(message)] = "divergence" if number == 0 else "difference"
    marks, height = _layout(messages + ghosts, expected, len(words.commands))
    source = html.escape(reference["source"]) if reference is not None else "no reference"
    run_chart = _svg("this run", messages, ghosts, machines, words, marks, height, marked, "run")
    reference_chart = (_svg("the reference", expected, [], machines, words, marks, height, marked, "reference")
                       if reference is not None else "<p>No reference for this case.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(name)}: this run beside the reference</title>
<style>{STYLE}</style></head>
<body>
<h1>{html.escape(name)}: this run beside the reference</h1>
<div class="explanation" id="explanation">{html.escape(chr(10).join(explanation))}</div>
<p>The reference is {source}. <a href="#run-first-divergence">The first divergence in the charts.</a>
Time runs down; each command is a blue mark. Red: the first divergence; orange: the later differences;
dashed: a message the reference sent that this run did not. Hover over an arrow for the message and its bytes.</p>
<div class="charts">
<figure><figcaption>this run (from the wire)</figcaption>{run_chart}</figure>
<figure><figcaption title="{source}">the reference</figcaption>{reference_chart}</figure>
</div>
<h2>The network as the machines saw it at the end</h2>
<pre class="network">{html.escape(drawing or "(no drawing)")}</pre>
</body></html>
"""


def write_chart(path: Path, name: str, run: Transcript, reference: Optional[Transcript],
                divergences: List[Divergence], explanation: List[str], drawing: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(chart_html(name, run, reference, divergences, explanation, drawing), encoding="utf-8")
