"""`tokentts generate`: speak a text with a CSM model, optionally in the voice of a reference clip."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokentts.config import add_config_arguments, config_from_args, write_config
from tokentts.errors import TokenttsError
from tokentts.generation.engine import BUILT_IN_SAMPLING, SamplingConfig

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig(SamplingConfig):
    """Sampling settings (inherited) plus what to say, in which voice, with which model."""

    model: str | None = field(default=None, metadata={
        "help": "CSM model folder or hub id (e.g. sesame/csm-1b); default: the embedded base model, if this build has one"})
    adapter: Path | None = field(default=None, metadata={"help": "LoRA adapter folder made by `tokentts finetune`"})
    text: str | None = field(default=None, metadata={"help": "text to speak"})
    text_file: Path | None = field(default=None, metadata={"help": "read the text to speak from this file"})
    voice: list[Path] | None = field(default=None, metadata={"help": "reference clip(s) of the voice to clone"})
    voice_text: list[str] | None = field(
        default=None, metadata={"help": "transcript of each --voice clip (default: transcribed with Whisper)"})
    max_reference_seconds: float = field(default=15.0, metadata={"help": "longer reference clips are trimmed"})
    speaker: str = field(default="0", metadata={"help": "speaker id of the generated speech (and its references)"})
    stream: bool = field(default=False, metadata={"help": "generate chunk by chunk; with --out -, write raw "
                                                          "16-bit PCM to stdout as it is produced"})
    out: Path | None = field(default=None, metadata={"help": "output audio file (.wav .flac .mp3 ...), or - with --stream"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 (default: cuda if available)"})
    dtype: str | None = field(default=None, metadata={"help": "float32 or bfloat16 (default: bf16 on CUDA, fp32 on CPU)"})
    quantize: str | None = field(default=None, metadata={
        "help": "int8: weight-only int8 matmuls on CPU (about 3x faster per frame, ~1%% error per mat-vec)", "choices": ["int8"]})

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingConfig)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, GenerateConfig)


def read_text(config: GenerateConfig) -> str:
    if (config.text is None) == (config.text_file is None):
        raise TokenttsError("give exactly one of --text or --text-file")
    if config.text_file is not None:
        try:
            return config.text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenttsError(f"cannot read text file {config.text_file}: {exc}") from None
    return config.text


def run(args: argparse.Namespace) -> int:
    from tokentts.audio import SAMPLE_RATE, resample, write_audio
    from tokentts.generation.engine import Generator
    from tokentts.model.embedded import default_model
    from tokentts.model.loading import load_model
    from tokentts.model.prompt import check_speaker, load_reference

    config = config_from_args(GenerateConfig, args)
    if config.model is None:
        config.model = default_model()
    if config.out is None:
        raise TokenttsError("--out is required")
    to_stdout = str(config.out) == "-"
    if to_stdout and not config.stream:
        raise TokenttsError("--out - (stdout) needs --stream")
    text = read_text(config)
    if not text.strip():
        raise TokenttsError("the text is empty")
    check_speaker(config.speaker)
    if config.adapter is not None and not config.adapter.is_dir():
        raise TokenttsError(f"adapter folder {config.adapter} does not exist")
    voices = config.voice or []
    voice_texts = config.voice_text or []
    if voice_texts and len(voice_texts) != len(voices):
        raise TokenttsError(f"{len(voices)} --voice clip(s) but {len(voice_texts)} --voice-text transcript(s)")
    sampling = config.sampling()

    # References first: a bad clip is reported before the (slow) model load.
    context = [
        load_reference(path, voice_texts[i] if voice_texts else None, config.speaker, config.max_reference_seconds,
                       SAMPLE_RATE)
        for i, path in enumerate(voices)
    ]
    loaded = load_model(config.model, config.adapter, config.device, config.dtype)
    if loaded.codec.sample_rate != SAMPLE_RATE:
        for segment in context:
            segment.audio = resample(segment.audio, SAMPLE_RATE, loaded.codec.sample_rate)
    generator = Generator(loaded, quantize=config.quantize)
    sampling = sampling.resolved(generator.model_sampling)
    config = dataclasses.replace(config, **{name: getattr(sampling, name) for name in BUILT_IN_SAMPLING})  # as run
    start = time.perf_counter()
    if config.stream:
        chunks = []
        for chunk in generator.stream(text, config.speaker, context, sampling):
            if not chunks:
                log.info("first audio after %.2f s", time.perf_counter() - start)
            chunks.append(chunk)
            if to_stdout:
                sys.stdout.buffer.write((np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes())
                sys.stdout.buffer.flush()
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        stop_reason = "streamed"
    else:
        result = generator.generate(text, config.speaker, context, sampling)
        audio, stop_reason = result.audio, result.stop_reason
    elapsed = time.perf_counter() - start
    seconds = len(audio) / loaded.codec.sample_rate
    if not to_stdout:
        write_audio(config.out, audio, loaded.codec.sample_rate)
        write_config(config, config.out.parent, filename=f"{config.out.stem}.config.json")
    log.info("%s: %.2f s of audio in %.2f s (real-time factor %.2f, stop: %s)",
             "stdout" if to_stdout else config.out, seconds, elapsed, elapsed / max(seconds, 1e-9), stop_reason)
    return 0
