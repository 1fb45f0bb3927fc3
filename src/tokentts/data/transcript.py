"""Transcripts on disk, sentences, and aligning a corrected transcript onto ASR word timings.

The ASR result of every source is kept in `transcript.json` (segments, words, times,
probabilities). `transcript.txt` is the editable view: one sentence a line, one `## source`
header per source. Whatever lines the user leaves there are the sentences that segmentation
packs into clips; their words get times by sequence alignment against the ASR words.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from tokentts.asr.whisper import Transcript, Word
from tokentts.errors import TokenttsError

TRANSCRIPT_JSON = "transcript.json"
TRANSCRIPT_TXT = "transcript.txt"

_SENTENCE_END = re.compile(r"[.!?…][\"')\]»”’]*$")
_SOURCE_HEADER = re.compile(r"^##\s*source\s+(\d+)\b")
# Whisper's non-speech markers ("♪", "[Music]", "(upbeat music)") are not words of a speaker.
_NON_SPEECH = re.compile(r"^[\[(♪*].*[\])♪*]$|^♪+$")

# A line whose words match the ASR words less than this is reported and left out of the dataset.
MIN_LINE_MATCH = 0.5
# Below this share of matching words, a corrected transcript is taken to be unrelated to the audio.
MIN_SOURCE_MATCH = 0.3


@dataclass
class Sentence:
    """A line of the transcript: its text and its words with times in the source recording."""

    text: str
    words: list[Word]
    # Share of the words whose text matched an ASR word exactly; the rest got interpolated times.
    match: float = 1.0

    @property
    def start(self) -> float:
        return self.words[0].start

    @property
    def end(self) -> float:
        return self.words[-1].end


@dataclass
class AlignmentReport:
    matched_words: int = 0
    total_words: int = 0
    poorly_aligned: list[str] = field(default_factory=list)  # "source, sentence N: 'text' (x of y words match ...)"


def normalize_token(token: str) -> str:
    """Lower-case letters and digits only: the comparison key for aligning words."""
    return re.sub(r"[^\w']+", "", token.lower()).strip("'")


def speech_words(transcript: Transcript) -> list[Word]:
    """The transcript's words, without Whisper's non-speech markers such as "♪" or "(upbeat music)"."""
    return [
        w
        for segment in transcript.segments
        if not _NON_SPEECH.match(segment.text)
        for w in segment.words
        if normalize_token(w.text) and not _NON_SPEECH.match(w.text)
    ]


def split_sentences(words: list[Word]) -> list[list[Word]]:
    """Group words into sentences ending with . ! ? (Whisper attaches punctuation to words)."""
    sentences: list[list[Word]] = []
    current: list[Word] = []
    for word in words:
        current.append(word)
        if _SENTENCE_END.search(word.text):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def transcript_lines(transcript: Transcript) -> list[str]:
    return [" ".join(w.text for w in sentence) for sentence in split_sentences(speech_words(transcript))]


def format_transcript_txt(sources: list[str], lines_per_source: list[list[str]]) -> str:
    out = [
        "# tokentts transcript: one sentence a line. Fix misrecognised words and names, join or split",
        "# lines where sentences really end, delete lines to leave them out, then run",
        "#   tokentts prepare DIR --resume",
        "# Lines starting with '#' are ignored; keep the '## source' lines.",
    ]
    for index, (name, lines) in enumerate(zip(sources, lines_per_source), start=1):
        out += ["", f"## source {index}: {name}", *lines]
    return "\n".join(out) + "\n"


def parse_transcript_txt(text: str, num_sources: int) -> list[list[str]]:
    """The sentences of each source, from an edited transcript.txt."""
    per_source: list[list[str]] = [[] for _ in range(num_sources)]
    current = 0 if num_sources == 1 else None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = _SOURCE_HEADER.match(line)
        if header:
            index = int(header.group(1)) - 1
            if not 0 <= index < num_sources:
                raise TokenttsError(f"{TRANSCRIPT_TXT} line {number}: there is no source {index + 1}")
            current = index
            continue
        if not line or line.startswith("#"):
            continue
        if current is None:
            raise TokenttsError(f"{TRANSCRIPT_TXT} line {number}: text before the first '## source' line")
        per_source[current].append(line)
    return per_source


def align_lines(asr_words: list[Word], lines: list[str], label: str) -> tuple[list[Sentence], AlignmentReport]:
    """Give every word of the corrected `lines` a time, taken from the ASR word it aligns to.

    difflib aligns the normalised word sequences. Equal words keep their ASR times; a replaced
    run shares the time span of the ASR words it replaces, in proportion to word length; an
    inserted word is placed in the gap between its neighbours. Raises TokenttsError when the
    lines as a whole do not match the audio (empty or unrelated text).
    """
    tokens = [(line_index, token) for line_index, line in enumerate(lines) for token in line.split()]
    if not tokens:
        raise TokenttsError(f"{label}: the transcript is empty; restore {TRANSCRIPT_TXT} or delete it to start over")
    if not asr_words:
        raise TokenttsError(f"{label}: no speech was recognised, so there is nothing to align the transcript to")
    timed: list[Word | None] = [None] * len(tokens)
    matched = [False] * len(tokens)
    matcher = difflib.SequenceMatcher(
        None, [normalize_token(w.text) for w in asr_words], [normalize_token(t) for _, t in tokens], autojunk=False
    )
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2)):
                timed[j] = Word(tokens[j][1], asr_words[i].start, asr_words[i].end, asr_words[i].probability)
                matched[j] = True
        elif op == "replace":
            span = (asr_words[i1].start, asr_words[i2 - 1].end)
            for j, (start, end) in zip(range(j1, j2), _share_span(span, [t for _, t in tokens[j1:j2]])):
                timed[j] = Word(tokens[j][1], start, end, 0.0)
    # Inserted words (no ASR counterpart) go into the gap between the timed words around them.
    j = 0
    while j < len(tokens):
        if timed[j] is not None:
            j += 1
            continue
        k = j
        while k < len(tokens) and timed[k] is None:
            k += 1
        left = timed[j - 1].end if j > 0 else asr_words[0].start
        right = timed[k].start if k < len(tokens) else asr_words[-1].end
        for m, (start, end) in zip(range(j, k), _share_span((left, max(left, right)), [t for _, t in tokens[j:k]])):
            timed[m] = Word(tokens[m][1], start, end, 0.0)
        j = k

    report = AlignmentReport(matched_words=sum(matched), total_words=len(tokens))
    if report.matched_words < MIN_SOURCE_MATCH * len(tokens):
        raise TokenttsError(
            f"{label}: {TRANSCRIPT_TXT} does not match the recording (only {report.matched_words} of "
            f"{len(tokens)} words align); fix it or delete it to start over"
        )
    token_indices: dict[int, list[int]] = {}
    for j, (line_index, _) in enumerate(tokens):
        token_indices.setdefault(line_index, []).append(j)
    sentences = []
    for line_index, members in token_indices.items():
        hits = sum(matched[j] for j in members)
        sentences.append(Sentence(lines[line_index], [timed[j] for j in members], hits / len(members)))
        if hits < MIN_LINE_MATCH * len(members):
            report.poorly_aligned.append(
                f"{label}, sentence {line_index + 1}: {lines[line_index]!r} ({hits} of {len(members)} words match the audio)"
            )
    return sentences, report


def _share_span(span: tuple[float, float], tokens: list[str]) -> list[tuple[float, float]]:
    """Split a time span over tokens in proportion to their length in characters."""
    start, end = span
    weights = [max(1, len(normalize_token(t))) for t in tokens]
    total = sum(weights)
    out, t = [], start
    for weight in weights:
        step = (end - start) * weight / total
        out.append((round(t, 3), round(t + step, 3)))
        t += step
    return out


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenttsError(f"cannot read {path}: {exc}") from None
