import numpy as np
import pytest

from tokentts.audio import decode_audio, encode_audio, load_audio, resample
from tokentts.audio.synth import (
    FLITE_VOICES,
    EspeakVoice,
    FliteVoice,
    espeak_variants,
    espeak_word_timings,
    flite_voices,
    synthesize_espeak,
    synthesize_flite,
    synthesize_piper,
)
from tokentts.cli import main
from tokentts.data.synthetic import build_synthetic_corpus, shifted_flite_clips, synthetic_sentences
from tokentts.errors import TokenttsError


def test_espeak_voices_differ_and_have_speech_length():
    text = "The quick brown fox jumps over the lazy dog."
    a = synthesize_espeak(text, EspeakVoice(variant="m3", pitch=30))
    b = synthesize_espeak(text, EspeakVoice(variant="f2", pitch=70, rate=220))
    assert a.dtype == np.float32 and a.ndim == 1
    assert 1.5 < len(a) / 24000 < 5.0
    assert len(b) < len(a)  # faster rate -> shorter
    assert {"m3", "f2", "klatt"} <= set(espeak_variants())


def test_espeak_word_timings_follow_the_speech():
    text = "One, two. Extraordinarily three!"
    fast, slow = EspeakVoice(rate=220), EspeakVoice(rate=110)
    words, total = espeak_word_timings(text, fast)
    assert [char for char, _ in words] == [0, 5, 10, 26]
    starts = [seconds for _, seconds in words]
    assert starts[0] < 0.05 and all(a < b for a, b in zip(starts, starts[1:])) and starts[-1] < total
    assert abs(total - len(synthesize_espeak(text, fast)) / 24000) < 0.05
    # The long word takes longer than the short ones; half the rate, about twice the time.
    assert starts[3] - starts[2] > 1.5 * (starts[1] - starts[0])
    slow_starts = [seconds for _, seconds in espeak_word_timings(text, slow)[0]]
    assert 1.6 < slow_starts[3] / starts[3] < 2.4
    with pytest.raises(TokenttsError, match="empty"):
        espeak_word_timings(" ")


def test_flite_voices_speak_the_text_at_the_asked_rate():
    from tokentts.asr import load_asr
    from tokentts.evaluation.metrics import transcribe_for_scoring, word_errors

    assert set(FLITE_VOICES) <= set(flite_voices())
    # A text that starts like an option is still spoken (it goes to Flite through a file).
    text = "-Twelve boats waited near the harbour."
    normal = synthesize_flite(text, FliteVoice("rms"))
    slow = synthesize_flite(text, FliteVoice("rms", duration_stretch=1.4))
    assert normal.dtype == np.float32 and normal.ndim == 1 and 1.5 < len(normal) / 24000 < 5.0
    assert 1.25 < len(slow) / len(normal) < 1.55
    asr = load_asr("bundled")
    assert word_errors(text, transcribe_for_scoring(asr, normal)).wer <= 0.2
    with pytest.raises(TokenttsError, match="no voice 'nobody'"):
        synthesize_flite(text, FliteVoice("nobody"))
    with pytest.raises(TokenttsError, match="no voice 'nobody'"):  # before any eSpeak clip is made
        build_synthetic_corpus(speakers=200, clips_per_speaker=100, flite_voices=["slt", "nobody"],
                               flite_clips_per_voice=1)
    with pytest.raises(TokenttsError, match="empty"):
        synthesize_flite(" ")
    with pytest.raises(TokenttsError, match="must be positive"):
        FliteVoice("rms", duration_stretch=0)


def _median_pitch_hz(wav: np.ndarray, sample_rate: int = 24000) -> float:
    """Autocorrelation pitch (60-400 Hz) of the loudest 40 ms frames."""
    n = int(0.04 * sample_rate)
    frames = [wav[i:i + n] - wav[i:i + n].mean() for i in range(0, len(wav) - n, n // 2)]
    levels = [np.sqrt(np.mean(f ** 2)) for f in frames]
    lags = np.arange(sample_rate // 400, sample_rate // 60)
    pitches = [sample_rate / lags[np.argmax(np.correlate(f, f, "full")[n - 1:][lags])]
               for f, level in zip(frames, levels) if level > 0.3 * max(levels)]
    return float(np.median(pitches))


def _spectral_centroid_hz(wav: np.ndarray, sample_rate: int = 24000) -> float:
    spectrum = np.abs(np.fft.rfft(wav))
    return float((spectrum * np.fft.rfftfreq(len(wav), 1 / sample_rate)).sum() / spectrum.sum())


def test_a_flite_voice_shifted_in_vocal_tract_and_pitch_keeps_its_rate():
    text = "Twelve boats waited near the harbour."
    plain = synthesize_flite(text, FliteVoice("kal16"))
    smaller = synthesize_flite(text, FliteVoice("kal16", vocal_tract=1.12, pitch_hz=100))
    larger = synthesize_flite(text, FliteVoice("kal16", vocal_tract=0.88, pitch_hz=100))
    for shifted in (smaller, larger):  # the rate is kept, and the asked pitch (kal16's own is about 100 Hz)
        assert 0.95 < len(shifted) / len(plain) < 1.05
        assert 90 < _median_pitch_hz(shifted) < 120
    # the formants move by the factor
    assert 1.07 < _spectral_centroid_hz(smaller) / _spectral_centroid_hz(plain) < 1.17
    assert 0.8 < _spectral_centroid_hz(larger) / _spectral_centroid_hz(plain) < 0.93
    low, high = (synthesize_flite(text, FliteVoice("kal16", pitch_hz=hz)) for hz in (80, 140))
    assert _median_pitch_hz(high) > 1.4 * _median_pitch_hz(low)
    # with no pitch given, the voice's own moves with the formants
    assert _median_pitch_hz(synthesize_flite(text, FliteVoice("slt", vocal_tract=0.88))) < 0.93 * _median_pitch_hz(
        synthesize_flite(text, FliteVoice("slt")))
    with pytest.raises(TokenttsError, match="must be positive"):
        FliteVoice("kal16", vocal_tract=0)


def test_shifted_flite_speakers_are_new_voices_saying_further_sentences():
    from tokentts.evaluation.metrics import SpeakerEncoder, cosine

    clips = shifted_flite_clips(["kal16", "slt"], speakers_per_voice=2, clips_per_speaker=2, first_speaker=5,
                                first_sentence=300, seed=3)
    assert [c.source for c in clips] == ["5", "5", "6", "6", "7", "7", "8", "8"]
    assert [c.source_file.split(":")[1] for c in clips] == ["kal16"] * 4 + ["slt"] * 4
    # each speaker keeps its own vocal tract and pitch; the sentences come from the asked place on
    shifts = [c.source_file.split(":", 2)[2] for c in clips]
    assert shifts[0::2] == shifts[1::2] and len(set(shifts)) == 4
    assert {c.text for c in clips} <= set(synthetic_sentences(20_300, seed=3)[300:])
    assert all(c.end == len(c.audio) / 24000 > 1.0 for c in clips)
    again = shifted_flite_clips(["kal16", "slt"], 2, 2, 5, 300, seed=3)
    assert all(np.array_equal(a.audio, b.audio) and a.text == b.text for a, b in zip(clips, again))
    # To a speaker encoder, shifting kal16's vocal tract by 0.88 and by 1.12 makes two other voices.
    # (Speaker embeddings of two sentences each; kal16's own two pairs agree at about 0.95.)
    encoder, texts = SpeakerEncoder(), synthetic_sentences(4, seed=5)

    def voice_of(voice: FliteVoice, pair: list[str]) -> np.ndarray:
        return encoder.embed_speaker([synthesize_flite(text, voice) for text in pair])

    plain = voice_of(FliteVoice("kal16"), texts[:2])
    shifted = [voice_of(FliteVoice("kal16", vocal_tract=vt, pitch_hz=100), texts[2:]) for vt in (0.88, 1.12)]
    assert cosine(plain, voice_of(FliteVoice("kal16"), texts[2:])) > 0.9
    assert max(cosine(plain, s) for s in shifted) < 0.85
    with pytest.raises(TokenttsError, match="no pitch is known for Flite voice kal "):
        shifted_flite_clips(["kal"], 1, 1, 0, 0)
    with pytest.raises(TokenttsError, match="at least one speaker"):
        shifted_flite_clips(["slt"], 0, 1, 0, 0)


def test_piper_repeats_a_seeded_clip_and_varies_an_unseeded_one():
    text = "We counted five birds while the wind swept over the hospital."
    first, again = synthesize_piper(text, seed=3), synthesize_piper(text, seed=3)
    assert np.array_equal(first, again)
    # Piper samples its prosody: other seeds, or none, give other takes of the same sentence.
    assert not np.array_equal(first, synthesize_piper(text, seed=4))
    assert not np.array_equal(synthesize_piper(text), synthesize_piper(text))
    assert len(first) > 24000  # a 2-3 s sentence at 24 kHz


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_encode_decode_roundtrip_keeps_rate_and_length(fmt):
    wav = synthesize_espeak("Round trip through a codec.")
    data = encode_audio(wav, 24000, fmt)
    back = decode_audio(data, 24000)
    # lossy codecs add priming samples; the length stays within 60 ms
    assert abs(len(back) - len(wav)) < 0.06 * 24000
    if fmt in ("wav", "flac"):
        assert np.max(np.abs(back - wav)) < 1e-3


def test_load_resamples_and_downmixes(tmp_path):
    import soundfile as sf

    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    sf.write(tmp_path / "s.wav", stereo, 44100)
    wav = load_audio(tmp_path / "s.wav")
    assert wav.ndim == 1 and abs(len(wav) - 24000) <= 2
    assert abs(np.abs(wav).max() - 0.5) < 0.02
    assert len(resample(wav, 24000, 16000)) == 16000


def test_bad_audio_inputs_raise_one_line(tmp_path):
    (tmp_path / "notaudio.wav").write_text("hello, I am text")
    with pytest.raises(TokenttsError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(TokenttsError, match="notaudio.wav"):
        load_audio(tmp_path / "notaudio.wav")
    good = encode_audio(synthesize_espeak("truncated file"), 24000, "mp3")
    (tmp_path / "trunc.mp3").write_bytes(good[:200])
    with pytest.raises(TokenttsError):
        wav = load_audio(tmp_path / "trunc.mp3")
        assert len(wav) > 12000  # a truncated mp3 must not pass as the whole clip


def test_write_audio_is_atomic_and_cli_reports_errors(tmp_path, capsys):
    out = tmp_path / "hi.flac"
    assert main(["synth", "--text", "hello", "--variant", "m1", "--out", str(out)]) == 0
    assert len(load_audio(out)) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["hi.flac"]
    assert main(["synth", "--text", " ", "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty" in err[0]
    assert not (tmp_path / "x.wav").exists()


def test_trim_silence_cuts_the_silent_edges_and_nothing_of_the_speech():
    from tokentts.audio.silence import trim_silence

    speech = synthesize_espeak("Trim the quiet edges.")
    rng = np.random.default_rng(0)
    hiss = lambda seconds: (rng.standard_normal(int(seconds * 24000)) * 1e-4).astype(np.float32)  # -80 dBFS
    padded = np.concatenate([hiss(0.6), speech, hiss(0.9)])
    trimmed = trim_silence(padded, 24000)
    # eSpeak's own edges are a few milliseconds; the padding goes, the 50 ms margins stay.
    assert abs(len(trimmed) - len(speech)) < 0.12 * 24000, (len(trimmed), len(speech))
    # A cut, not a copy: every sample above -40 dBFS is kept.
    offset = next(i for i in range(len(padded) - len(trimmed) + 1) if np.array_equal(padded[i:i + 100], trimmed[:100]))
    loud = np.flatnonzero(np.abs(padded) > 0.01)
    assert offset <= loud[0] and offset + len(trimmed) > loud[-1]
    # Silence alone, or speech without silent edges, comes back whole.
    assert len(trim_silence(hiss(1.0), 24000)) == 24000
    assert len(trim_silence(speech[2400:-2400], 24000)) >= len(speech) - 4800 - 480


def _silent_edges_s(wav: np.ndarray) -> tuple[float, float]:
    from tokentts.audio.silence import silent_frames

    voiced = np.flatnonzero(~silent_frames(wav, 24000, 0.01, 50.0))
    return voiced[0] * 0.01, len(wav) / 24000 - (voiced[-1] + 1) * 0.01


def test_flite_voices_join_the_synthetic_corpus_as_speakers_after_espeak():
    espeak_only = build_synthetic_corpus(speakers=2, clips_per_speaker=3, seed=1)
    clips = build_synthetic_corpus(speakers=2, clips_per_speaker=3, seed=1, flite_voices=["slt", "awb"],
                                   flite_clips_per_voice=2)
    # The eSpeak part does not change when voices are added; they say its sentences, as speakers 2 and 3.
    assert [(c.text, c.source) for c in clips[:6]] == [(c.text, c.source) for c in espeak_only]
    # Each clip's length shows its drawn rate (+-15 %); eSpeak itself moves it by a few samples.
    assert np.allclose([len(c.audio) for c in clips[:6]], [len(c.audio) for c in espeak_only], rtol=0.005)
    assert [(c.source, c.source_file) for c in clips[6:]] == [("2", "flite:slt")] * 2 + [("3", "flite:awb")] * 2
    assert {c.text for c in clips[6:]} <= {c.text for c in espeak_only}
    # Flite's silent edges are cut to a margin of 50 ms, near eSpeak's.
    assert sum(_silent_edges_s(synthesize_flite(clips[6].text, FliteVoice("slt")))) > 0.25
    for clip in clips[6:]:
        assert clip.end == len(clip.audio) / 24000 and max(_silent_edges_s(clip.audio)) <= 0.07
