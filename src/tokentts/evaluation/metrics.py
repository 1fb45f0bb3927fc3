"""Per-clip metrics: intelligibility, speaker similarity, timing and pauses, DNSMOS.

Each function takes plain audio (mono float32 + sample rate) and text, so the same code scores
a generated sample, a reference recording, or a test fixture.

    errors = word_errors("the text we asked for", asr_transcript)   # WER / CER after Whisper normalisation
    encoder = SpeakerEncoder(); similarity = cosine(encoder.embed(a), encoder.embed(b))
    pauses = pause_stats(wav)                                          # silence ratio, longest pause
    mos = dnsmos(wav)                                                  # None when speechmos is missing
"""

from __future__ import annotations

import importlib.util
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tokentts.audio.io import SAMPLE_RATE, resample
from tokentts.audio.silence import frame_samples, silent_frames
from tokentts.errors import TokenttsError

# Resemblyzer and DNSMOS both work on 16 kHz audio.
_MODEL_SAMPLE_RATE = 16_000

SPEAKER_MODEL_NAME = "Resemblyzer GE2E d-vector (256-d, 16 kHz)"
DNSMOS_MODEL_NAME = "DNSMOS P.835 (speechmos, ONNX)"


# --- intelligibility -------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _english_normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize_text(text: str) -> str:
    """Whisper's English normaliser: lower case, no punctuation, spelled-out forms unified ("Mr." -> "mister")."""
    return " ".join(_english_normalizer()(text).split())


@dataclass
class WordErrors:
    wer: float  # (substitutions + deletions + insertions) / reference words
    cer: float  # the same over characters
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """WER and CER of `hypothesis` against `reference`, both normalised first.

    Normalising both sides keeps written-form differences ("20" vs "twenty", "didn't" vs
    "did not") from counting as errors of the speech.
    """
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        raise TokenttsError(f"reference text {reference!r} has no words after normalisation")
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    return WordErrors(
        wer=float(words.wer),
        cer=float(chars.cer),
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        reference_words=words.hits + words.substitutions + words.deletions,
    )


# Whisper tiny.en misreads clips whose first word starts at their first sample (as synthesized and
# generated clips do) more often than the same speech after a breath of silence; eSpeak's own
# small run-to-run jitter then decides whether a word is heard. Every scored clip gets this much
# silence at both ends, so scores compare the speech, not its edges.
SCORING_PAD_SECONDS = 0.3


# Whisper sometimes loops: "at half half half ..." for 45 words on a 4.6 s clip, whose 16-bit copy it
# transcribes without looping. One such clip outweighed 119 others in a mean WER. Whisper's own test
# for a loop is a transcript that compresses too well (openai-whisper's compression_ratio_threshold).
LOOP_COMPRESSION_RATIO = 2.4


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def transcribe_for_scoring(asr, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """What the ASR model hears in `wav`, deterministically: beam search at temperature 0, no VAD (a
    skipped word must count as an error), English, with `SCORING_PAD_SECONDS` of silence around the clip.
    A looping transcript is decoded again, barred from repeating any three words."""
    from tokentts.asr import transcribe

    pad = np.zeros(int(SCORING_PAD_SECONDS * sample_rate), dtype=np.float32)
    padded = np.concatenate([pad, np.asarray(wav, dtype=np.float32), pad])
    options = dict(word_timestamps=False, vad=False, language="en", temperature=0.0)
    text = transcribe(asr, padded, sample_rate, **options).text
    if compression_ratio(text) > LOOP_COMPRESSION_RATIO:
        # Whisper retries by sampling at higher temperatures, but CTranslate2 cannot seed that per call
        # (one random generator per worker thread, seeded once), and a score must be repeatable.
        text = transcribe(asr, padded, sample_rate, no_repeat_ngram_size=3, **options).text
    return text


def count_words(text: str) -> int:
    return len(normalize_text(text).split())


# --- speaker similarity ----------------------------------------------------------------------


class SpeakerEncoder:
    """Resemblyzer's speaker encoder (its weights ship inside the wheel, so it works offline).

    Similarities are only comparable between runs that used the same embedding model; reports
    name it (`SPEAKER_MODEL_NAME`).
    """

    name = SPEAKER_MODEL_NAME

    def __init__(self, device: str = "cpu") -> None:
        with warnings.catch_warnings():
            # Resemblyzer imports deprecated APIs (pkg_resources via webrtcvad, scipy.ndimage.morphology);
            # the warnings are not ours to fix.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder, preprocess_wav

        self._encoder = VoiceEncoder(device=device, verbose=False)
        self._preprocess = preprocess_wav

    def embed(self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
        """A unit-length 256-d embedding of one clip (long silences trimmed, volume normalised);
        None when the clip has no speech left to embed."""
        # Resample here (polyphase) rather than in Resemblyzer (librosa), which is slow on first use.
        prepared = self._preprocess(resample(wav, sample_rate, _MODEL_SAMPLE_RATE))
        if len(prepared) == 0:
            return None
        with _one_torch_thread():
            return self._encoder.embed_utterance(prepared)

    def embed_speaker(self, wavs: list[np.ndarray], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """One embedding for a speaker from several clips: the normalised mean of their embeddings."""
        embeddings = [e for e in (self.embed(w, sample_rate) for w in wavs) if e is not None]
        if not embeddings:
            raise TokenttsError("the target voice clips contain no speech to embed")
        mean = np.mean(embeddings, axis=0)
        return mean / np.linalg.norm(mean)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run PyTorch on one thread inside the block.

    The encoder's LSTM is a chain of tiny time steps: extra threads only add a barrier per step,
    and when the cores are busy each barrier can stall (measured on a loaded 2-core machine:
    0.15 s per clip with one thread, 0.6-6.8 s with two).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- timing and pauses -----------------------------------------------------------------------


@dataclass
class PauseStats:
    duration_s: float
    speech_span_s: float  # first to last voiced frame: the duration without leading/trailing silence
    silence_ratio: float  # fraction of the clip that is silent
    longest_pause_s: float  # longest silent stretch anywhere in the clip


def pause_stats(
    wav: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    frame_s: float = 0.02,
    relative_db: float = 40.0,
    floor_db: float = -60.0,
) -> PauseStats:
    """Pauses from frame energy (`tokentts.audio.silence.silent_frames`)."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    duration = len(wav) / sample_rate
    frame = frame_samples(frame_s, sample_rate)
    silent = silent_frames(wav, sample_rate, frame_s, relative_db, floor_db)
    voiced = np.flatnonzero(~silent)
    if len(voiced) == 0:  # all silent, or shorter than a frame
        return PauseStats(duration, 0.0, 1.0, duration)
    speech_span = float(voiced[-1] - voiced[0] + 1) * frame / sample_rate
    return PauseStats(
        duration_s=duration,
        speech_span_s=speech_span,
        silence_ratio=float(silent.mean()),
        longest_pause_s=_longest_run(silent) * frame / sample_rate,
    )


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True values."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    return int((ends - starts).max()) if len(starts) else 0


def speaking_rate_wpm(text: str, speech_span_s: float) -> float:
    """Words per minute over the voiced span (leading/trailing silence excluded)."""
    return count_words(text) / speech_span_s * 60.0 if speech_span_s > 0 else 0.0


# --- naturalness -----------------------------------------------------------------------------


@dataclass
class DnsmosScores:
    overall: float  # OVRL, 1-5
    signal: float  # SIG: speech distortion
    background: float  # BAK: noise
    p808: float  # the P.808 MOS model


def dnsmos_available() -> bool:
    return importlib.util.find_spec("speechmos") is not None


# DNSMOS scores 9.01 s windows.
_DNSMOS_WINDOW_S = 9.01


def dnsmos(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> DnsmosScores:
    """DNSMOS of one clip through speechmos (its ONNX models ship in the wheel)."""
    if not dnsmos_available():
        raise TokenttsError("DNSMOS needs the speechmos package: pip install speechmos")
    from speechmos import dnsmos as speechmos_dnsmos

    audio = np.clip(resample(wav, sample_rate, _MODEL_SAMPLE_RATE), -1.0, 1.0)
    if len(audio) == 0:
        raise TokenttsError("cannot score an empty clip with DNSMOS")
    window = int(_DNSMOS_WINDOW_S * _MODEL_SAMPLE_RATE)
    if len(audio) < window:
        # speechmos doubles a short clip until it fills a window, then averages windows sliding
        # over that periodic signal; scoring only its first window costs one model call, not ~8.
        audio = np.tile(audio, -(-window // len(audio)))[:window]
    scores = speechmos_dnsmos.run(audio, _MODEL_SAMPLE_RATE)
    return DnsmosScores(
        overall=float(scores["ovrl_mos"]),
        signal=float(scores["sig_mos"]),
        background=float(scores["bak_mos"]),
        p808=float(scores["p808_mos"]),
    )
