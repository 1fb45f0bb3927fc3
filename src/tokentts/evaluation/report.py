"""Write an evaluation as report.json, report.md and a self-contained report.html.

The folder also holds every sample as WAV (`samples/<condition>/s<sentence>-<sample>.wav`), the
reference clip and the resolved config. The HTML page embeds its charts (PNG) and audio (MP3)
as data: URIs, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import tokentts
from tokentts.audio.io import encode_audio, write_audio
from tokentts.config import building_directory, config_to_dict, write_config, write_json_atomic
from tokentts.errors import TokenttsError
from tokentts.evaluation.runner import (
    DIFFERENCE_METRICS,
    METRICS,
    Difference,
    EvaluationReport,
    Metric,
    condition_slug,
)
from tokentts.evaluation.stats import Estimate

REPORT_FILES = ("report.json", "report.md", "report.html")


def write_reports(report: EvaluationReport, out_dir: Path) -> Path:
    """Write the report folder; it appears complete or not at all.

    Everything goes to a temporary folder beside `out_dir` that is renamed at the end. An
    existing `out_dir` is replaced only when it is empty or holds an earlier report.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    with building_directory(out_dir) as staging:
        _write_audio_files(report, staging)
        write_json_atomic(staging / "report.json", report_to_dict(report))
        (staging / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (staging / "report.html").write_text(render_html(report), encoding="utf-8")
        write_config(report.config, staging)
    return out_dir


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that holds something other than an earlier report."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "report.json").exists())):
        raise TokenttsError(f"{out_dir} exists and is not an evaluation report folder; choose another --out")


def _write_audio_files(report: EvaluationReport, folder: Path) -> None:
    report.reference.audio_file = "reference.wav"
    write_audio(folder / report.reference.audio_file, report.reference.audio, report.sample_rate)
    for result in report.conditions:
        for sample in result.samples:
            sample.audio_file = (
                f"samples/{condition_slug(result.condition.name)}/s{sample.sentence_index:02d}-{sample.sample_index}.wav"
            )
            write_audio(folder / sample.audio_file, sample.audio, report.sample_rate)


# --- JSON ------------------------------------------------------------------------------------


def _estimate_dict(estimate: Estimate | None) -> dict[str, float] | None:
    if estimate is None:
        return None
    return {"mean": estimate.mean, "low": estimate.low, "high": estimate.high, "n": estimate.n}


def report_to_dict(report: EvaluationReport) -> dict[str, Any]:
    best = {metric.key: report.best(metric) for metric in METRICS}
    return {
        "tokentts_version": tokentts.__version__,
        "created": report.created,
        "models": {
            "tts": report.config.model,
            "asr": report.asr_model,
            "speaker_embedding": report.speaker_model,
            "dnsmos": report.dnsmos_model,
        },
        "confidence_interval": "95% cluster bootstrap over sentences (2000 resamples)",
        "config": config_to_dict(report.config),
        "sentences": report.sentences,
        "reference": {
            "text": report.reference.text,
            "transcribed": report.reference.transcribed,
            "audio_file": report.reference.audio_file,
            "scores": config_to_dict(report.reference.scores),
        },
        "metrics": [{"key": m.key, "label": m.label, "better": m.better, "percent": m.percent} for m in METRICS],
        "best": best,
        "differences": [
            {"metric": d.metric.key, "earlier": d.earlier, "later": d.later, "difference": _estimate_dict(d.estimate),
             "beyond_interval": d.beyond_interval}
            for d in _differences(report)
        ],
        "conditions": [
            {
                "name": result.condition.name,
                "adapter": str(result.condition.adapter) if result.condition.adapter else None,
                "cloned": result.condition.cloned,
                "recorded": result.condition.recorded,
                "summary": {key: _estimate_dict(est) for key, est in result.summary.items()},
                "samples": [
                    {
                        "sentence_index": s.sentence_index,
                        "sample_index": s.sample_index,
                        "seed": s.seed,
                        "text": s.text,
                        "audio_file": s.audio_file,
                        "stop_reason": s.stop_reason,
                        "runaway": s.runaway,
                        "long_pause": s.long_pause,
                        "rate_vs_reference": s.rate_vs_reference,
                        "real_time_factor": s.real_time_factor,
                        "scores": config_to_dict(s.scores),
                    }
                    for s in result.samples
                ],
            }
            for result in report.conditions
        ],
    }


# --- formatting ------------------------------------------------------------------------------


def _differences(report: EvaluationReport) -> list[Difference]:
    return [d for m in METRICS if m.key in DIFFERENCE_METRICS for d in report.differences(m)]


def _difference_rows(report: EvaluationReport) -> list[tuple[str, str, str, str]]:
    """(metric, "later − earlier", mean [interval], verdict) for the reports' difference tables."""
    rows = []
    for d in _differences(report):
        if d.estimate is None:
            continue
        verdict = "yes" if d.beyond_interval else "no"
        rows.append((d.metric.label, f"{d.later} − {d.earlier}",
                     f"{format_value(d.metric, d.estimate.mean)} {format_interval(d.metric, d.estimate)}", verdict))
    return rows



def format_value(metric: Metric, value: float) -> str:
    return f"{value * 100:.1f}%" if metric.percent else f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def format_interval(metric: Metric, estimate: Estimate) -> str:
    return f"[{format_value(metric, estimate.low)}, {format_value(metric, estimate.high)}]"


def _models_lines(report: EvaluationReport) -> list[tuple[str, str]]:
    reference_note = " (transcribed by the ASR model)" if report.reference.transcribed else ""
    return [
        ("TTS model", report.config.model),
        ("Adapters", ", ".join(str(a) for a in report.config.adapters) or "none"),
        ("ASR (WER/CER)", f"faster-whisper {report.asr_model}, Whisper English normaliser, jiwer"),
        ("Speaker similarity", f"cosine of {report.speaker_model} embeddings, against "
                               + (f"{len(report.config.target_clips)} held-out target clip(s)" if report.config.target_clips
                                  else "the reference clip (also the cloning context)")),
        ("Naturalness", report.dnsmos_model or "not measured (speechmos not installed or --no-dnsmos)"),
        ("Reference", f"{report.config.reference} — “{report.reference.text}”{reference_note}"),
        ("Samples", f"{len(report.sentences)} sentence(s) × {report.config.samples_per_sentence} sample(s) per condition, "
                    f"seeds from {report.config.seed}"),
        ("Created", report.created),
    ]


def _table_metrics(report: EvaluationReport) -> list[tuple[Metric, list[str]]]:
    """The metrics that have values, each with the names of its best conditions."""
    return [(m, report.best(m)) for m in METRICS if any(c.summary.get(m.key) for c in report.conditions)]


def _reference_values(report: EvaluationReport) -> dict[str, float | None]:
    """The reference recording's own numbers, shown for scale (WER only when its transcript was given)."""
    scores = report.reference.scores
    return {
        "wer": None if report.reference.transcribed else scores.wer,
        "cer": None if report.reference.transcribed else scores.cer,
        "dnsmos": scores.dnsmos.overall if scores.dnsmos else None,
        "duration_s": scores.duration_s,
        "silence_ratio": scores.silence_ratio,
        "longest_pause_s": scores.longest_pause_s,
    }


# --- Markdown --------------------------------------------------------------------------------


def render_markdown(report: EvaluationReport) -> str:
    lines = ["# tokentts evaluation", ""]
    lines += [f"- **{name}:** {value}" for name, value in _models_lines(report)]
    lines += ["", "## Results", "",
              "Mean over all samples with its 95% confidence interval (cluster bootstrap over sentences); "
              "**bold** marks the best condition (none when all tie).", ""]
    metrics = _table_metrics(report)
    lines.append("| Condition | " + " | ".join(m.label for m, _ in metrics) + " |")
    lines.append("|---|" + "---:|" * len(metrics))
    for result in report.conditions:
        cells = []
        for metric, best in metrics:
            estimate = result.summary.get(metric.key)
            if estimate is None:
                cells.append("–")
                continue
            value = format_value(metric, estimate.mean)
            if result.condition.name in best:
                value = f"**{value}**"
            cells.append(f"{value} {format_interval(metric, estimate)}")
        lines.append(f"| {result.condition.name} | " + " | ".join(cells) + " |")
    reference = _reference_values(report)
    lines.append("| *reference recording* | " + " | ".join(
        format_value(m, reference[m.key]) if reference.get(m.key) is not None else "" for m, _ in metrics) + " |")
    lines += ["", "Better: " + "; ".join(f"{m.label}: {m.better}" for m, _ in metrics if m.better) + ".", ""]
    differences = _difference_rows(report)
    if differences:
        lines += ["## Paired differences", "",
                  "Each pair of conditions on the same sentences and seeds: mean difference with its 95% interval "
                  "(cluster bootstrap over sentences); *beyond* = the interval excludes 0.", "",
                  "| Metric | Difference | Mean [95% CI] | Beyond |", "|---|---|---:|---|"]
        lines += [f"| {metric} | {pair} | {value} | {verdict} |" for metric, pair, value, verdict in differences]
        lines.append("")
    lines += ["## Samples", ""]
    for index, text in enumerate(report.sentences):
        lines.append(f"{index + 1}. {text}")
        for result in report.conditions:
            links = ", ".join(
                f"[{s.sample_index + 1}]({s.audio_file})" for s in result.samples if s.sentence_index == index
            )
            lines.append(f"   - {result.condition.name}: {links}")
    lines.append("")
    return "\n".join(lines)


# --- HTML ------------------------------------------------------------------------------------


def _audio_data_uri(wav, sample_rate: int) -> str:
    # MP3 keeps the page a tenth the size of WAV, and every browser plays it.
    return "data:audio/mpeg;base64," + base64.b64encode(encode_audio(wav, sample_rate, "mp3")).decode("ascii")


def _chart_png(report: EvaluationReport, metric: Metric) -> str | None:
    """A bar chart of one metric per condition with its confidence interval, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r.condition.name, r.summary.get(metric.key)) for r in report.conditions]
    rows = [(name, est) for name, est in rows if est is not None]
    if not rows:
        return None
    scale = 100.0 if metric.percent else 1.0
    names = [name for name, _ in rows]
    means = [est.mean * scale for _, est in rows]
    errors = [[(est.mean - est.low) * scale for _, est in rows], [(est.high - est.mean) * scale for _, est in rows]]
    best = report.best(metric)
    colors = ["#2e7d32" if name in best else "#5c7fa3" for name in names]
    fig, ax = plt.subplots(figsize=(4.6, 3.0), dpi=100)
    try:
        ax.bar(range(len(names)), means, yerr=errors, capsize=4, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        better = f" ({metric.better} is better)" if metric.better else ""
        ax.set_title(f"{metric.label}{' (%)' if metric.percent else ''}{better}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if metric.better == "closer to 1":
            ax.axhline(1.0, color="#999", linestyle="--", linewidth=1)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _results_table(report: EvaluationReport) -> str:
    metrics = _table_metrics(report)
    head = "".join(f"<th>{html.escape(m.label)}</th>" for m, _ in metrics)
    rows = []
    for result in report.conditions:
        cells = []
        for metric, best in metrics:
            estimate = result.summary.get(metric.key)
            if estimate is None:
                cells.append("<td>–</td>")
                continue
            css = ' class="best"' if result.condition.name in best else ""
            cells.append(f"<td{css}>{format_value(metric, estimate.mean)}"
                         f"<div class=\"ci\">{format_interval(metric, estimate)}</div></td>")
        rows.append(f"<tr><td>{html.escape(result.condition.name)}</td>{''.join(cells)}</tr>")
    # The reference recording itself, for scale; not a competitor for "best".
    reference = _reference_values(report)
    reference_cells = "".join(
        f"<td>{format_value(m, reference[m.key]) if reference.get(m.key) is not None else ''}</td>" for m, _ in metrics
    )
    rows.append(f'<tr class="reference"><td>reference recording</td>{reference_cells}</tr>')
    return (f'<div class="metrics-table"><table id="results"><thead><tr><th>Condition</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _differences_table(report: EvaluationReport) -> str:
    rows = "".join(f"<tr><td>{html.escape(metric)}</td><td>{html.escape(pair)}</td><td>{html.escape(value)}</td>"
                   f"<td>{verdict}</td></tr>" for metric, pair, value, verdict in _difference_rows(report))
    if not rows:
        return ""
    return ("<h2>Paired differences</h2><p class=\"note\">Each pair of conditions on the same sentences and seeds: "
            "mean difference with its 95% interval; beyond = the interval excludes 0.</p>"
            '<div class="metrics-table"><table id="differences"><thead><tr><th>Metric</th><th>Difference</th>'
            f"<th>Mean [95% CI]</th><th>Beyond</th></tr></thead><tbody>{rows}</tbody></table></div>")


def _samples_section(report: EvaluationReport) -> str:
    parts = []
    n = report.config.samples_per_sentence
    sample_heads = "".join(f"<th>Sample {j + 1}</th>" for j in range(n))
    for index, text in enumerate(report.sentences):
        rows = []
        for result in report.conditions:
            cells = []
            for sample in (s for s in result.samples if s.sentence_index == index):
                similarity = f"{sample.scores.similarity:.2f}" if sample.scores.similarity is not None else "–"
                transcript = sample.scores.transcript.strip()
                heard = f"“{html.escape(transcript)}”" if transcript else "(no words heard)"
                cells.append(
                    f'<td><audio controls preload="metadata" src="{_audio_data_uri(sample.audio, report.sample_rate)}">'
                    f"</audio><div class=\"transcript\">WER {sample.scores.wer * 100:.0f}% · sim {similarity} · "
                    f"{sample.scores.duration_s:.1f} s{' · runaway' if sample.runaway else ''}<br>"
                    f"{heard}</div></td>"
                )
            rows.append(f"<tr><td>{html.escape(result.condition.name)}</td>{''.join(cells)}</tr>")
        parts.append(f"<h3>{index + 1}. {html.escape(text)}</h3><table class=\"samples\"><thead><tr><th>Condition</th>"
                     f"{sample_heads}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "".join(parts)


def render_html(report: EvaluationReport) -> str:
    models = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _models_lines(report))
    charts = []
    for metric in METRICS:
        if metric.better is None:
            continue
        png = _chart_png(report, metric)
        if png:
            charts.append(f'<figure><img alt="{html.escape(metric.label)} by condition" '
                          f'src="data:image/png;base64,{png}"></figure>')
    body = (
        "<h1>tokentts evaluation</h1>"
        f'<dl class="models">{models}</dl>'
        "<h2>Results</h2>"
        '<p class="note">Mean over all samples, with its 95% confidence interval in brackets (cluster bootstrap '
        "over sentences); ★ marks the best condition. Similarity values are only comparable between reports that "
        "use the same embedding model.</p>"
        f"{_results_table(report)}"
        f"{_differences_table(report)}"
        f'<h2>Charts</h2><div class="charts">{"".join(charts)}</div>'
        "<h2>Samples</h2><p class=\"note\">The reference voice stays at the top of the page while you listen.</p>"
        f"{_samples_section(report)}"
    )
    template = Template(resources.files("tokentts.evaluation").joinpath("report_template.html").read_text("utf-8"))
    return template.substitute(
        title="tokentts evaluation",
        reference_src=_audio_data_uri(report.reference.audio, report.sample_rate),
        reference_text=html.escape(report.reference.text),
        body=body,
    )
