"""`prepare`: long recordings in, a clean voice dataset out.

    sources -> decode to 24 kHz mono (optional loudness normalisation)
            -> faster-whisper words + times (cached by content hash)
            -> transcript.json + editable transcript.txt
            -> transcript.txt lines aligned onto the ASR word times
            -> clips (segment.plan_clips) -> Hugging Face dataset + summary

A run builds everything in a hidden folder next to the output and renames it into place at the
end, so a failed run leaves nothing behind. The output folder keeps the decoded sources, so
`--resume` (after editing transcript.txt) re-segments without the original files or the network.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokentts.asr.whisper import ASR, DEFAULT_MODEL, Transcript, load_asr, transcribe
from tokentts.audio.io import SAMPLE_RATE, load_audio, write_audio
from tokentts.config import building_directory, write_config, write_json_atomic
from tokentts.data.dataset import Clip, clips_to_dataset
from tokentts.data.segment import ClipRules, DroppedSpan, plan_clips
from tokentts.data.sources import SourceAudio, display_name, normalize_loudness, open_source
from tokentts.data.summary import HISTOGRAM_PNG, SUMMARY_JSON, summarize, write_histogram
from tokentts.data.transcript import (
    TRANSCRIPT_JSON,
    TRANSCRIPT_TXT,
    AlignmentReport,
    align_lines,
    format_transcript_txt,
    parse_transcript_txt,
    read_text,
    speech_words,
    transcript_lines,
)
from tokentts.errors import TokenttsError

log = logging.getLogger(__name__)

SOURCES_DIR = "sources"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokentts"


@dataclass
class PrepareConfig:
    sources: list[str] = field(default_factory=list, metadata={"help": "audio/video files or http(s) URLs"})
    out: Path | None = field(default=None, metadata={"help": "output dataset folder"})
    speaker: list[str] = field(
        default_factory=lambda: ["0"],
        metadata={"help": "speaker id (0, 1, ...) of each source, or one id for all (column `source`)"},
    )
    asr_model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "faster-whisper model name, Hub id or folder; falls back to the bundled tiny.en offline"},
    )
    language: str | None = field(default=None, metadata={"help": "language code, e.g. en (default: detect)"})
    min_seconds: float = field(default=1.0, metadata={"help": "shortest clip"})
    max_seconds: float = field(default=30.0, metadata={"help": "longest clip"})
    padding: float = field(default=0.2, metadata={"help": "most silence kept before the first and after the last word"})
    max_gap: float = field(default=2.0, metadata={"help": "never keep a pause longer than this inside a clip"})
    normalize_loudness: bool = field(default=False, metadata={"help": "normalise each source to --target-lufs"})
    target_lufs: float = field(default=-23.0, metadata={"help": "integrated loudness target (EBU R128: -23)"})
    cache_dir: Path = field(default_factory=default_cache_dir, metadata={"help": "transcript cache folder"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output folder"})
    resume: bool = field(default=False, metadata={"help": "re-segment an output folder from its edited transcript.txt"})
    push_to_hub: str | None = field(default=None, metadata={"help": "also push the dataset to this Hub repo id"})
    private: bool = field(default=False, metadata={"help": "make the pushed Hub dataset private"})


@dataclass
class SourceRecord:
    """One source as stored in transcript.json."""

    name: str
    speaker: str
    audio_file: str  # path of its decoded 24 kHz audio, relative to the output folder
    sha256: str
    duration: float
    transcript: Transcript
    transcript_origin: str = "transcribed"  # "transcribed", "cache" or "transcript.json" (resume); not stored

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "speaker": self.speaker,
            "audio_file": self.audio_file,
            "sha256": self.sha256,
            "duration": self.duration,
            "transcript": self.transcript.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceRecord:
        fields = {k: data[k] for k in ("name", "speaker", "audio_file", "sha256", "duration")}
        return cls(**fields, transcript=Transcript.from_dict(data["transcript"]), transcript_origin="transcript.json")


@dataclass
class PrepareResult:
    out: Path
    summary: dict[str, Any]
    clips: int


# progress(seconds of audio transcribed, seconds to transcribe in this run)
Progress = Callable[[float, float], None]


def prepare(config: PrepareConfig, progress: Progress | None = None) -> PrepareResult:
    """Run the whole stage: a fresh dataset from `config.sources`, or (`resume`) a re-segmentation of `config.out`."""
    _validate(config)
    out = Path(config.out)
    with building_directory(out) as build_dir:
        if config.resume:
            records = _copy_previous_run(out, build_dir)
        else:
            records = _transcribe_sources(config, build_dir, progress)
        summary = _segment_and_save(config, records, build_dir)
    if config.push_to_hub:
        push_dataset(out, config.push_to_hub, config.private)
    return PrepareResult(out, summary, summary["clips"])


def _validate(config: PrepareConfig) -> None:
    if config.out is None:
        raise TokenttsError("no output folder: pass --out DIR")
    out = Path(config.out)
    if not 0 < config.min_seconds < config.max_seconds:
        raise TokenttsError(f"need 0 < --min-seconds < --max-seconds (got {config.min_seconds:g} and {config.max_seconds:g})")
    if not 0 <= config.padding < config.max_seconds / 4:
        raise TokenttsError(f"--padding {config.padding:g} is out of range")
    if config.resume:
        for name in (TRANSCRIPT_JSON, SOURCES_DIR):
            if not (out / name).exists():
                raise TokenttsError(f"{out} is not a prepared dataset folder to resume (no {name})")
        return
    if not config.sources:
        raise TokenttsError("no source given: pass audio/video files or URLs")
    if not all(speaker.isdigit() for speaker in config.speaker):
        raise TokenttsError(f"--speaker ids must be whole numbers, as CSM names speakers [0], [1], ... (got {' '.join(config.speaker)})")
    if len(config.speaker) not in (1, len(config.sources)):
        raise TokenttsError(f"got {len(config.speaker)} --speaker ids for {len(config.sources)} sources: give one, or one per source")
    if out.exists() and not config.overwrite:
        raise TokenttsError(f"{out} already exists; pass --overwrite to replace it, or --resume to re-segment it")


def _transcribe_sources(config: PrepareConfig, build_dir: Path, progress: Progress | None) -> list[SourceRecord]:
    speakers = config.speaker * len(config.sources) if len(config.speaker) == 1 else config.speaker
    with tempfile.TemporaryDirectory(prefix=".downloads-", dir=build_dir) as downloads:
        opened = [open_source(name, speaker, Path(downloads)) for name, speaker in zip(config.sources, speakers)]
    for source in opened:
        if source.duration < config.min_seconds:
            raise TokenttsError(f"{source.name}: {source.duration:.2f} s of audio is shorter than --min-seconds {config.min_seconds:g}")

    asr = load_asr(config.asr_model)
    cached = [_read_cached_transcript(config, asr, s) for s in opened]
    to_do = sum(s.duration for s, t in zip(opened, cached) if t is None)
    done = 0.0
    records = []
    for index, (source, transcript) in enumerate(zip(opened, cached), start=1):
        origin = "cache"
        if transcript is None:
            origin = "transcribed"
            offset = done
            report = (lambda d, _t, offset=offset: progress(offset + d, to_do)) if progress else None
            transcript = transcribe(asr, source.audio, SAMPLE_RATE, progress=report, language=config.language)
            done += source.duration
            _write_cached_transcript(config, asr, source, transcript)
        if not speech_words(transcript):
            raise TokenttsError(f"{source.name}: no speech found (silence, music, or noise only)")
        audio = normalize_loudness(source.audio, config.target_lufs) if config.normalize_loudness else source.audio
        audio_file = f"{SOURCES_DIR}/{index:02d}-{_slug(display_name(source.name))}.flac"
        write_audio(build_dir / audio_file, audio, SAMPLE_RATE)
        records.append(
            SourceRecord(source.name, source.speaker, audio_file, source.content_hash, source.duration, transcript, origin)
        )
    write_json_atomic(build_dir / TRANSCRIPT_JSON, {"asr_model": asr.name, "sources": [r.to_dict() for r in records]})
    _write_transcript_txt(build_dir, records)
    return records


def _cache_file(config: PrepareConfig, asr: ASR, source: SourceAudio) -> Path:
    # Keyed by the file's content and everything that changes the transcript: model and language.
    key = f"{source.content_hash[:32]}-{_slug(asr.name)}-{config.language or 'auto'}"
    return Path(config.cache_dir).expanduser() / "transcripts" / f"{key}.json"


def _read_cached_transcript(config: PrepareConfig, asr: ASR, source: SourceAudio) -> Transcript | None:
    path = _cache_file(config, asr, source)
    try:
        return Transcript.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not cached, or an unreadable entry: transcribe again


def _write_cached_transcript(config: PrepareConfig, asr: ASR, source: SourceAudio, transcript: Transcript) -> None:
    try:
        write_json_atomic(_cache_file(config, asr, source), transcript.to_dict())
    except OSError as exc:  # a read-only cache only costs time later
        log.warning("cannot write the transcript cache (%s); continuing", exc)


def _copy_previous_run(out: Path, build_dir: Path) -> list[SourceRecord]:
    try:
        data = json.loads((out / TRANSCRIPT_JSON).read_text())
        records = [SourceRecord.from_dict(s) for s in data["sources"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TokenttsError(f"{out / TRANSCRIPT_JSON} is unreadable ({exc.__class__.__name__}); prepare the sources again") from None
    shutil.copytree(out / SOURCES_DIR, build_dir / SOURCES_DIR)
    shutil.copy2(out / TRANSCRIPT_JSON, build_dir / TRANSCRIPT_JSON)
    edited = out / TRANSCRIPT_TXT
    if edited.exists():
        shutil.copy2(edited, build_dir / TRANSCRIPT_TXT)
    else:  # deleted by the user: start over from the ASR text
        _write_transcript_txt(build_dir, records)
    return records


def _write_transcript_txt(build_dir: Path, records: list[SourceRecord]) -> None:
    lines = [transcript_lines(r.transcript) for r in records]
    text = format_transcript_txt([display_name(r.name) for r in records], lines)
    (build_dir / TRANSCRIPT_TXT).write_text(text, encoding="utf-8")


def _segment_and_save(config: PrepareConfig, records: list[SourceRecord], build_dir: Path) -> dict[str, Any]:
    """Align transcript.txt onto the ASR words, cut the clips, and write the dataset and summary."""
    lines_per_source = parse_transcript_txt(read_text(build_dir / TRANSCRIPT_TXT), len(records))
    if not any(lines_per_source):
        raise TokenttsError(f"{TRANSCRIPT_TXT} is empty; restore it, or delete it to start over from the ASR text")
    rules = ClipRules(config.min_seconds, config.max_seconds, config.padding, config.max_gap)
    clips: list[Clip] = []
    dropped: list[tuple[str, DroppedSpan]] = []
    alignment = AlignmentReport()
    for record, lines in zip(records, lines_per_source):
        name = display_name(record.name)
        if not lines:
            log.info("%s: no lines left in %s, source left out", name, TRANSCRIPT_TXT)
            continue
        asr_words = speech_words(record.transcript)
        sentences, report = align_lines(asr_words, lines, label=name)
        alignment.matched_words += report.matched_words
        alignment.total_words += report.total_words
        alignment.poorly_aligned += report.poorly_aligned
        audio = load_audio(build_dir / record.audio_file, SAMPLE_RATE)
        planned, dropped_here = plan_clips(sentences, asr_words, audio, SAMPLE_RATE, rules)
        dropped += [(name, span) for span in dropped_here]
        for clip in planned:
            segment = audio[round(clip.start * SAMPLE_RATE) : round(clip.end * SAMPLE_RATE)]
            clips.append(Clip(segment, clip.text, record.speaker, clip.start, clip.end, name))
    for line in alignment.poorly_aligned:
        log.warning("poorly aligned, left out: %s", line)
    if not clips:
        reasons = ", ".join(sorted({span.reason for _, span in dropped})) or "no sentences"
        raise TokenttsError(f"no clip survived segmentation ({reasons}); check --min-seconds/--max-seconds and the transcript")

    clips_to_dataset(clips).save_to_disk(str(build_dir))
    durations = [clip.duration for clip in clips]
    summary = summarize(durations, dropped)
    summary["sources"] = [
        {"name": r.name, "speaker": r.speaker, "duration": round(r.duration, 2), "transcript": r.transcript_origin}
        for r in records
    ]
    summary["asr_model"] = records[0].transcript.model
    summary["alignment"] = {
        "matched_words": alignment.matched_words,
        "total_words": alignment.total_words,
        "poorly_aligned": alignment.poorly_aligned,
    }
    write_json_atomic(build_dir / SUMMARY_JSON, summary)
    write_histogram(durations, build_dir / HISTOGRAM_PNG, config.max_seconds)
    write_config(config, build_dir)
    return summary


def push_dataset(out: Path, repo_id: str, private: bool = False) -> None:
    """Upload a prepared dataset to the Hugging Face Hub (audio bytes are already embedded)."""
    import datasets

    try:
        datasets.load_from_disk(str(out)).push_to_hub(repo_id, private=private)
    except Exception as exc:  # network, auth and Hub errors come in many types
        raise TokenttsError(f"push to the Hub as {repo_id} failed ({exc.__class__.__name__}: {exc}); the dataset is in {out}") from None


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._")[:60] or "source"
