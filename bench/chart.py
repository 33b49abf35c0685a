"""Draws docs/benchmarks.svg from bench/results/summary.json: chatcluster and
the Socket.IO peer side by side (fan-out latency: p50, and p99 for
deliveries on the sender's instance and on the other, memory per idle
connection). Plain SVG, no plotting library.

  python3 bench/chart.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / "bench" / "results" / "summary.json"
OUT = ROOT / "docs" / "benchmarks.svg"
COLOURS = {"chatcluster": "#2f5bd3", "socketio": "#d97a1e"}
LABELS = {"chatcluster": "chatcluster", "socketio": "Socket.IO + Redis adapter"}


def panel(x: int, title: str, unit: str, groups: list[tuple[str, dict[str, float | None]]]) -> str:
    """One bar chart: groups of bars (one per system), scaled to the largest."""
    width, height, top, bottom = 380, 300, 50, 250
    values = [v for _, bars in groups for v in bars.values() if v]
    peak = max(values) if values else 1
    out = [f'<g transform="translate({x},0)">',
           f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{title}</text>',
           f'<line x1="30" y1="{bottom}" x2="{width - 10}" y2="{bottom}" stroke="#888"/>']
    slot = (width - 50) / len(groups)
    for g, (name, bars) in enumerate(groups):
        bar_width = slot / (len(bars) + 1)
        for b, (system, value) in enumerate(bars.items()):
            left = 40 + g * slot + b * bar_width + bar_width / 2
            h = 0 if not value else (bottom - top) * value / peak
            out.append(f'<rect x="{left:.1f}" y="{bottom - h:.1f}" width="{bar_width * 0.9:.1f}" height="{h:.1f}" fill="{COLOURS[system]}"/>')
            label = "n/a" if value is None else (f"{value:.2f}" if value < 10 else f"{value:.0f}")
            out.append(f'<text x="{left + bar_width * 0.45:.1f}" y="{bottom - h - 5:.1f}" text-anchor="middle" font-size="12">{label}</text>')
        out.append(f'<text x="{40 + g * slot + slot / 2:.1f}" y="{bottom + 20}" text-anchor="middle" font-size="13">{name}</text>')
    out.append(f'<text x="{width / 2}" y="{bottom + 42}" text-anchor="middle" font-size="12" fill="#555">{unit}</text>')
    out.append("</g>")
    return "\n".join(out)


def main() -> None:
    summary = json.loads(SUMMARY.read_text())
    s = summary["scenarios"]

    def value(scenario: str, system: str, key: str, scale: float = 1.0):
        v = s.get(f"{scenario}/{system}", {}).get(key)
        return None if v is None else v * scale

    latency = [(label, {sys: value("fanout", sys, key) for sys in COLOURS})
               for label, key in (("p50", "p50_ms"), ("p99 same pod", "same_server_p99_ms"),
                                  ("p99 cross pod", "cross_server_p99_ms"))]
    memory = [("per idle connection", {sys: value("idle", sys, "rss_per_connection_bytes", 1 / 1024) for sys in COLOURS})]
    legend = "".join(
        f'<rect x="{20 + i * 260}" y="330" width="14" height="14" fill="{c}"/>'
        f'<text x="{40 + i * 260}" y="342" font-size="13">{LABELS[sys]}</text>'
        for i, (sys, c) in enumerate(COLOURS.items()))
    machine = summary.get("machine", {})
    caption = (f'{machine.get("cores", "?")} cores, {machine.get("cpu", "")}; medians of {summary.get("repeats")} runs, '
               f'{machine.get("date", "")}')
    svg = f"""<svg xmlns="http://www.w3.org/2000/svg" width="800" height="380" font-family="sans-serif">
<rect width="800" height="380" fill="white"/>
{panel(0, "Fan-out latency, two instances", "milliseconds (lower is better)", latency)}
{panel(410, "Memory", "KiB of server RSS (lower is better)", memory)}
{legend}
<text x="20" y="370" font-size="11" fill="#555">{caption}</text>
</svg>
"""
    OUT.write_text(svg)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
