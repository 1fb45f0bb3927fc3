"""faster-whisper wrapper: offline fallback, word timestamps, VAD, progress, (de)serialisation."""

from __future__ import annotations

import logging
import time

import jiwer
import numpy as np
import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from tokentts.asr import Transcript, load_asr, transcribe
from tokentts.audio import SAMPLE_RATE, resample
from tokentts.audio.synth import synthesize_espeak
from tokentts.errors import TokenttsError

SENTENCE = "We planted tomatoes in the garden last spring. By the summer the plants were taller than the fence."
normalize = EnglishTextNormalizer()


@pytest.fixture(scope="module")
def asr():
    return load_asr("bundled")


@pytest.fixture(scope="module")
def speech():
    return synthesize_espeak(SENTENCE)


def test_turbo_falls_back_to_bundled_model_fast_and_says_so(caplog):
    load_asr.cache_clear()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        asr = load_asr("turbo")
    assert time.monotonic() - started < 10, "an offline lookup must not wait on the network"
    assert asr.name == "tiny.en (bundled)"
    assert "not available offline" in caplog.text and "tiny.en" in caplog.text
    assert load_asr("turbo") is asr, "a model is loaded once per process"


def test_unavailable_model_without_fallback_and_unknown_name_are_one_line_errors():
    with pytest.raises(TokenttsError, match="not available offline"):
        load_asr("large-v3", fallback=False)
    with pytest.raises(TokenttsError, match="unknown Whisper model"):
        load_asr("no-such-model")


def test_transcribes_speech_with_ordered_word_times(asr, speech):
    transcript = transcribe(asr, speech)
    wer = jiwer.wer(normalize(SENTENCE), normalize(transcript.text))
    assert wer <= 0.2, transcript.text
    words = transcript.words
    assert len(words) >= 15
    duration = len(speech) / SAMPLE_RATE
    assert transcript.duration == pytest.approx(duration, abs=0.01)
    for previous, word in zip(words, words[1:]):
        assert previous.start <= word.start
    for word in words:
        assert 0 <= word.start <= word.end <= duration
        assert 0 <= word.probability <= 1
    assert words[-1].end > duration * 0.7, "times are on the input's timeline, not compressed"


def test_times_follow_the_input_sample_rate(asr, speech):
    at_24k = transcribe(asr, speech, sample_rate=SAMPLE_RATE)
    at_16k = transcribe(asr, resample(speech, SAMPLE_RATE, 16000), sample_rate=16000)
    assert at_16k.text == at_24k.text
    assert at_16k.words[-1].end == pytest.approx(at_24k.words[-1].end, abs=0.05)


def test_vad_skips_a_long_silence_and_times_stay_on_the_original_timeline(asr, speech):
    silence = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    transcript = transcribe(asr, np.concatenate([silence, speech]), vad=True)
    assert transcript.words[0].start >= 2.5, "no word may be placed in the leading silence"
    assert transcribe(asr, silence, vad=True).words == []


def test_progress_reports_audio_seconds_up_to_the_total(asr, speech):
    calls: list[tuple[float, float]] = []
    transcribe(asr, speech, progress=lambda done, total: calls.append((done, total)))
    assert calls, "progress is reported"
    assert all(0 <= done <= total for done, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1][0] == pytest.approx(calls[-1][1])


def test_transcript_round_trips_through_a_dict(asr, speech):
    transcript = transcribe(asr, speech)
    again = Transcript.from_dict(transcript.to_dict())
    assert again == transcript
    assert again.model == "tiny.en (bundled)"
