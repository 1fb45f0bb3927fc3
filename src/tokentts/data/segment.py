"""Cut a timed transcript into training clips.

Rules (the seed recipe's, made safe for TTS training):
- whole sentences are packed greedily into one clip while it stays within `max_seconds`;
- a sentence longer than that is split at its longest pause between words, recursively;
- a clip never spans a pause longer than `max_gap` (music, a long silence, a change of scene);
- a clip is cut inside the pause between two words, at most `padding` seconds from the speech
  and never past the middle of the pause, so it holds no part of a neighbouring word;
- clips shorter than `min_seconds` are dropped, and so are sentences whose corrected text did
  not align with the audio (their times are guesses).

Whisper's word times are often late or early by a few hundred milliseconds (faster-whisper
#294), so the pause between two words is located in the signal itself: the longest quiet
stretch between the middles of the two words.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from tokentts.asr.whisper import Word
from tokentts.data.transcript import MIN_LINE_MATCH, Sentence

FRAME_SECONDS = 0.01
# A frame is quiet when it is this far below the loud (95th percentile) frames of the recording...
QUIET_BELOW_SPEECH_DB = 35.0
# ...or at least this close to its noise floor (10th percentile), for recordings with background noise.
QUIET_ABOVE_FLOOR_DB = 6.0


@dataclass
class PlannedClip:
    text: str
    start: float  # cut points in the source recording, seconds
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class DroppedSpan:
    reason: str
    text: str
    start: float
    end: float


class Pauses:
    """Where a recording is quiet, from the energy of 10 ms frames."""

    def __init__(self, audio: np.ndarray, sample_rate: int) -> None:
        hop = round(FRAME_SECONDS * sample_rate)
        frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
        self.frame_db = 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-10)
        self.duration = len(audio) / sample_rate
        if len(self.frame_db):
            loud, floor = np.percentile(self.frame_db, [95, 10])
            self.threshold_db = max(loud - QUIET_BELOW_SPEECH_DB, floor + QUIET_ABOVE_FLOOR_DB)
        else:
            self.threshold_db = 0.0

    def between(self, before: Word | None, after: Word | None) -> tuple[float, float]:
        """The pause (start, end) between two words; `None` stands for the recording's start or end.

        It is the longest quiet stretch between the middles of the two words, else the quietest
        frame of the gap that Whisper reports; zero-length when there is no gap at all.
        """
        lo = (before.start + before.end) / 2 if before else 0.0
        hi = (after.start + after.end) / 2 if after else self.duration
        first, last = int(lo / FRAME_SECONDS), int(hi / FRAME_SECONDS)
        quiet = self.frame_db[first:last] < self.threshold_db
        run = _longest_true_run(quiet)
        if run is not None:
            return (first + run[0]) * FRAME_SECONDS, min((first + run[1]) * FRAME_SECONDS, self.duration)
        if before is None:
            return 0.0, 0.0
        if after is None:
            return self.duration, self.duration
        gap_first, gap_last = int(before.end / FRAME_SECONDS), int(after.start / FRAME_SECONDS)
        if gap_last > gap_first:
            t = (gap_first + int(np.argmin(self.frame_db[gap_first:gap_last]))) * FRAME_SECONDS
        else:
            t = (before.end + after.start) / 2
        return t, t


def _longest_true_run(mask: np.ndarray) -> tuple[int, int] | None:
    """(start, end) indices of the longest run of True, end exclusive; None when there is none."""
    if not mask.any():
        return None
    padded = np.concatenate(([0], mask.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[::2], edges[1::2]
    longest = int(np.argmax(ends - starts))
    return int(starts[longest]), int(ends[longest])


@dataclass
class ClipRules:
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    padding: float = 0.2  # most silence kept before the first and after the last word
    max_gap: float = 2.0  # longest pause kept inside a clip


def plan_clips(
    sentences: list[Sentence], asr_words: list[Word], audio: np.ndarray, sample_rate: int, rules: ClipRules
) -> tuple[list[PlannedClip], list[DroppedSpan]]:
    """Clips (text and cut points) for one source recording.

    `asr_words` are all the words the ASR heard, also those the user deleted from the transcript:
    no clip may contain them, so they bound the cuts and end runs of sentences like a dropped one.
    """
    # The words spoken outside every sentence (deleted lines) bound the cuts along with the
    # sentences' own words; ASR words inside a sentence's span are represented by that sentence.
    spans = [(s.start, s.end) for s in sentences]
    left_out = [w for w in asr_words if not _inside(spans, (w.start + w.end) / 2)]
    cutter = _Cutter([w for s in sentences for w in s.words] + left_out, Pauses(audio, sample_rate), rules.padding)
    dropped: list[DroppedSpan] = []
    # Runs of consecutive usable sentences; a dropped sentence ends a run, so that no clip holds
    # audio whose text is unknown.
    runs: list[list[list[Word]]] = [[]]
    for sentence in sentences:
        if sentence.match < MIN_LINE_MATCH:
            dropped.append(DroppedSpan("text does not align with the audio", sentence.text, sentence.start, sentence.end))
            runs.append([])
        else:
            runs[-1] += cutter.split_long(sentence.words, rules.max_seconds)

    clips: list[PlannedClip] = []
    for group in (g for run in runs for g in cutter.pack(run, rules.max_seconds, rules.max_gap)):
        clip = PlannedClip(" ".join(w.text for w in group), cutter.start_of(group[0]), cutter.end_of(group[-1]))
        if clip.duration < rules.min_seconds:
            dropped.append(DroppedSpan(f"shorter than {rules.min_seconds:g} s", clip.text, clip.start, clip.end))
        elif clip.duration > rules.max_seconds:
            reason = f"longer than {rules.max_seconds:g} s (no pause to split at)"
            dropped.append(DroppedSpan(reason, clip.text, clip.start, clip.end))
        else:
            clips.append(clip)
    return clips, dropped


def _inside(spans: list[tuple[float, float]], t: float) -> bool:
    """Whether `t` lies in one of the time-ordered, non-overlapping `spans`."""
    i = bisect.bisect_right(spans, (t, float("inf"))) - 1
    return i >= 0 and spans[i][0] <= t <= spans[i][1]


class _Cutter:
    """Cut points around words, knowing every word spoken in the recording."""

    def __init__(self, words: list[Word], pauses: Pauses, padding: float) -> None:
        self.words = sorted(words, key=lambda w: w.start)
        self.starts = [w.start for w in self.words]
        self.pauses = pauses
        self.padding = padding

    def previous(self, word: Word) -> Word | None:
        i = bisect.bisect_left(self.starts, word.start)
        return self.words[i - 1] if i > 0 else None

    def following(self, word: Word) -> Word | None:
        i = bisect.bisect_right(self.starts, word.start)
        return self.words[i] if i < len(self.words) else None

    def start_of(self, first: Word) -> float:
        """Where a clip starting with `first` begins: `padding` before the speech, within the pause's second half."""
        pause_start, pause_end = self.pauses.between(self.previous(first), first)
        return round(max(pause_end - self.padding, (pause_start + pause_end) / 2), 3)

    def end_of(self, last: Word) -> float:
        pause_start, pause_end = self.pauses.between(last, self.following(last))
        return round(min(pause_start + self.padding, (pause_start + pause_end) / 2), 3)

    def pause_length(self, before: Word, after: Word) -> float:
        start, end = self.pauses.between(before, after)
        return end - start

    def split_long(self, words: list[Word], max_seconds: float) -> list[list[Word]]:
        """Split a run of words at its longest pause until every piece fits in `max_seconds`."""
        if len(words) < 2 or self.end_of(words[-1]) - self.start_of(words[0]) <= max_seconds:
            return [words]
        cut = 1 + max(range(len(words) - 1), key=lambda i: self.pause_length(words[i], words[i + 1]))
        return self.split_long(words[:cut], max_seconds) + self.split_long(words[cut:], max_seconds)

    def pack(self, pieces: list[list[Word]], max_seconds: float, max_gap: float) -> list[list[Word]]:
        """Greedily join consecutive pieces while the clip fits, no pause in it exceeds `max_gap`,
        and no word left out of the transcript lies between them."""
        groups: list[list[Word]] = []
        for piece in pieces:
            if groups:
                last, first = groups[-1][-1], piece[0]
                following = self.following(last)
                if (
                    following is not None
                    and following.start == first.start
                    and self.end_of(piece[-1]) - self.start_of(groups[-1][0]) <= max_seconds
                    and self.pause_length(last, first) <= max_gap
                ):
                    groups[-1].extend(piece)
                    continue
            groups.append(list(piece))
        return groups
