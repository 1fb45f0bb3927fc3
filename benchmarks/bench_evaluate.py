"""Cost of scoring one sample in `tokentts evaluate`, per metric, with the bundled Whisper tiny.en.

    .venv/bin/python benchmarks/bench_evaluate.py

Scores eSpeak NG renditions of the built-in test sentences (a voice other than the reference's)
and prints a Markdown table: seconds per clip for ASR (WER/CER), the speaker embedding, DNSMOS
and the pause analysis, plus the mean WER and similarity: what evaluation adds per sample.

Then generation of the samples with the embedded base model: one sample at a time (as evaluate
did before batching) against `--batch-size 16` (one random stream per sample), side by side in
the same run, with how many samples came out identical.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch

from tokentts.asr import load_asr, transcribe
from tokentts.audio.synth import EspeakVoice, synthesize_espeak
from tokentts.evaluation.metrics import SpeakerEncoder, cosine, dnsmos, pause_stats, word_errors
from tokentts.evaluation.sentences import DEFAULT_SENTENCES
from tokentts.generation import Generator, SamplingConfig
from tokentts.model import load_model
from tokentts.model.embedded import embedded_model_path


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
    generation_costs()


def generation_costs(samples_per_sentence: int = 2, batch_size: int = 16) -> None:
    """Seconds per generated sample (8 s at most), one at a time vs batched, embedded base model."""
    generator = Generator(load_model(str(embedded_model_path())))
    sampling = SamplingConfig(max_seconds=8.0)
    planned = [(text, 1000 * i + j) for i, text in enumerate(DEFAULT_SENTENCES) for j in range(samples_per_sentence)]
    generator.generate(planned[0][0], sampling=sampling)  # warm up outside the timing
    start = time.perf_counter()
    single = [generator.generate(text, sampling=SamplingConfig(max_seconds=8.0, seed=seed)) for text, seed in planned]
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = []
    for first in range(0, len(planned), batch_size):
        rows = planned[first : first + batch_size]
        batched += generator.generate_batch([t for t, _ in rows], sampling=sampling, seeds=[s for _, s in rows])
    batched_s = time.perf_counter() - start
    same = sum(torch.equal(a.codes, b.codes) for a, b in zip(single, batched))
    audio_s = sum(r.codes.shape[1] for r in single) / generator.codec.frame_rate
    print(f"\ngeneration, embedded base, {len(planned)} samples ({audio_s:.0f} s of audio), {torch.get_num_threads()} threads")
    print("| generation | s per sample |\n|---|---|")
    print(f"| one at a time | {single_s / len(planned):.3f} |")
    print(f"| batches of {batch_size}, a seed per sample | {batched_s / len(planned):.3f} |")
    print(f"speed-up {single_s / batched_s:.1f}x; {same} of {len(planned)} samples identical")


if __name__ == "__main__":
    main()
