"""Throughput of `tokentts prepare` in multiples of real time, with the bundled Whisper tiny.en.

    .venv/bin/python benchmarks/bench_prepare.py --minutes 3

Synthesizes a recording with eSpeak NG, then times a fresh run (decode, transcribe, segment,
write the dataset; the transcript cache is empty) and a `--resume` run (align the transcript
and re-segment only). Prints a Markdown table row per run.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np

from tokentts.asr import load_asr
from tokentts.audio import SAMPLE_RATE, write_audio
from tokentts.audio.synth import synthesize_espeak
from tokentts.data import PrepareConfig, prepare

SENTENCES = [
    "The old lighthouse stood at the edge of the cliff.",
    "Every night its lamp turned slowly over the dark water.",
    "Sailors trusted the light to guide them safely home.",
    "One winter a storm broke the glass and the lamp went out.",
    "The keeper climbed the stairs with a lantern in his hand.",
    "He worked until morning to repair the broken window.",
    "When the sun rose, the ships were waiting in the harbour.",
    "The whole town remembered how the keeper saved the fleet.",
]


def synthesize_recording(minutes: float) -> np.ndarray:
    pause = np.zeros(int(0.5 * SAMPLE_RATE), dtype=np.float32)
    parts, seconds, i = [], 0.0, 0
    while seconds < minutes * 60:
        speech = synthesize_espeak(SENTENCES[i % len(SENTENCES)])
        parts += [speech, pause]
        seconds += (len(speech) + len(pause)) / SAMPLE_RATE
        i += 1
    return np.concatenate(parts)


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the synthesized recording")
    args = parser.parse_args()
    datasets.disable_progress_bars()

    load_asr("bundled")  # model loading is a one-off per process; keep it out of the throughput
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio = synthesize_recording(args.minutes)
        seconds = len(audio) / SAMPLE_RATE
        source = write_audio(work / "talk.flac", audio)
        config = PrepareConfig(sources=[str(source)], out=work / "voice", asr_model="bundled", cache_dir=work / "cache")

        started = time.perf_counter()
        result = prepare(config)
        fresh = time.perf_counter() - started

        started = time.perf_counter()
        prepare(replace(config, resume=True))
        resumed = time.perf_counter() - started

    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"audio: {seconds:.0f} s, {result.clips} clips")
    print("| run | audio (s) | wall (s) | x real time |")
    print("|---|---|---|---|")
    print(f"| fresh (transcribe + segment + write) | {seconds:.0f} | {fresh:.1f} | {seconds / fresh:.1f} |")
    print(f"| --resume (align + segment + write) | {seconds:.0f} | {resumed:.1f} | {seconds / resumed:.1f} |")


if __name__ == "__main__":
    main()
