"""Cost of scoring one sample in `tokentts evaluate`, per metric, with the bundled Whisper tiny.en.

    .venv/bin/python benchmarks/bench_evaluate.py

Scores eSpeak NG renditions of the built-in test sentences (a voice other than the reference's)
and prints a Markdown table: seconds per clip for ASR (WER/CER), the speaker embedding, DNSMOS
and the pause analysis, plus the mean WER and similarity. Generation is not included: its cost
depends on the model (see bench_generate.py); this is what evaluation adds per sample.
"""

from __future__ import annotations

import platform
import time

import numpy as np

from tokentts.asr import load_asr, transcribe
from tokentts.audio.synth import EspeakVoice, synthesize_espeak
from tokentts.evaluation.metrics import SpeakerEncoder, cosine, dnsmos, pause_stats, word_errors
from tokentts.evaluation.sentences import DEFAULT_SENTENCES


def main() -> None:
    asr = load_asr("bundled")
    encoder = SpeakerEncoder()
    reference = synthesize_espeak("This is my own voice, recorded for cloning.", EspeakVoice(variant="m3"))
    target = encoder.embed(reference)
    dnsmos(reference)  # load the ONNX models outside the timing
    clips = [synthesize_espeak(text, EspeakVoice(variant="m1")) for text in DEFAULT_SENTENCES]
    seconds = {"ASR (tiny.en, beam 5)": 0.0, "speaker embedding": 0.0, "DNSMOS": 0.0, "pauses": 0.0}
    wers, similarities = [], []
    for wav, text in zip(clips, DEFAULT_SENTENCES):
        start = time.perf_counter()
        heard = transcribe(asr, wav, word_timestamps=False, vad=False, language="en").text
        seconds["ASR (tiny.en, beam 5)"] += time.perf_counter() - start
        wers.append(word_errors(text, heard).wer)
        start = time.perf_counter()
        similarities.append(cosine(encoder.embed(wav), target))
        seconds["speaker embedding"] += time.perf_counter() - start
        start = time.perf_counter()
        dnsmos(wav)
        seconds["DNSMOS"] += time.perf_counter() - start
        start = time.perf_counter()
        pause_stats(wav)
        seconds["pauses"] += time.perf_counter() - start
    audio_s = sum(len(w) for w in clips) / 24000
    print(f"{len(clips)} clips, {audio_s:.1f} s of audio; {platform.processor() or platform.machine()}")
    print("| step | s per clip |\n|---|---|")
    for step, total in seconds.items():
        print(f"| {step} | {total / len(clips):.3f} |")
    print(f"| all | {sum(seconds.values()) / len(clips):.3f} |")
    print(f"mean WER {np.mean(wers):.3f}, mean similarity to another eSpeak voice {np.mean(similarities):.3f}")


if __name__ == "__main__":
    main()
