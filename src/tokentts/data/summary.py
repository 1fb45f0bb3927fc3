"""What a prepared dataset holds: counts, durations, drops, warnings; JSON, text and a histogram."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tokentts.data.segment import DroppedSpan

SUMMARY_JSON = "summary.json"
HISTOGRAM_PNG = "durations.png"

# The seed recipe trained on about 50 clips of up to 30 s; warn when a dataset has far less speech.
SEED_SECONDS = 50 * 30.0
FAR_BELOW_SHARE = 0.5


def summarize(durations: list[float], dropped: list[tuple[str, DroppedSpan]]) -> dict[str, Any]:
    """Clip count and duration statistics, and the dropped spans with their reasons.

    `dropped` pairs each dropped span with the name of the source it came from.
    """
    total = sum(durations)
    summary: dict[str, Any] = {
        "clips": len(durations),
        "total_seconds": round(total, 2),
        "mean_seconds": round(total / len(durations), 2) if durations else 0.0,
        "min_seconds": round(min(durations), 2) if durations else 0.0,
        "max_seconds": round(max(durations), 2) if durations else 0.0,
        "dropped": dict(Counter(span.reason for _, span in dropped)),
        "dropped_spans": [
            {"source_file": name, "reason": s.reason, "text": s.text, "start": s.start, "end": s.end} for name, s in dropped
        ],
        "warnings": [],
    }
    if total < FAR_BELOW_SHARE * SEED_SECONDS:
        summary["warnings"].append(
            f"only {total / 60:.1f} min of speech in {len(durations)} clips; the seed recipe fine-tuned on about "
            f"50 clips of up to 30 s (~{SEED_SECONDS / 60:.0f} min): expect a weaker voice"
        )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['clips']} clips, {summary['total_seconds']:.1f} s in total "
        f"(mean {summary['mean_seconds']:.1f} s, min {summary['min_seconds']:.1f} s, max {summary['max_seconds']:.1f} s)"
    ]
    for reason, count in summary["dropped"].items():
        lines.append(f"dropped {count}: {reason}")
    lines += [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)


def write_histogram(durations: list[float], path: Path, max_seconds: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(durations, bins=max(1, int(max_seconds)), range=(0, max_seconds), color="#4c72b0", edgecolor="white")
    ax.set_xlabel("clip duration (s)")
    ax.set_ylabel("clips")
    ax.set_title(f"{len(durations)} clips, {sum(durations) / 60:.1f} min")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
