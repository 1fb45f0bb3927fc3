"""What the server does, without HTTP: speak a text in a voice, manage uploaded voices.

`SpeechService` owns the model (through `tokentts.generation.Generator`), the voice store and
the single generation worker. The HTTP layer (`tokentts.serving.app`) only validates requests,
queues `speech_chunks` on the worker and maps errors to status codes.

A voice is a cloning context: its reference clip and transcript go before the text, as a
`Segment` of speaker 0, and the model continues in that voice. The built-in voice "default" has
no context: the base model's speaker 0, or, when an adapter is loaded, the fine-tuned voice.
"""

from __future__ import annotations

import logging
from collections.abc import Generator as GeneratorType
from pathlib import Path

import numpy as np
import torch

from tokentts.audio import SAMPLE_RATE, decode_audio
from tokentts.errors import TokenttsError
from tokentts.generation import Generator, SamplingConfig
from tokentts.model import LoadedModel, Segment
from tokentts.serving.config import ServeConfig
from tokentts.serving.streaming import StreamEncoder
from tokentts.serving.voices import Voice, VoiceStore
from tokentts.serving.worker import SerialWorker

log = logging.getLogger(__name__)

DEFAULT_VOICE = "default"
SPEAKER = "0"
# What the upload endpoint accepts: anything FFmpeg decodes, announced as one of these.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm")


class UnsupportedAudio(TokenttsError):
    pass


class UploadTooLarge(TokenttsError):
    pass


def is_audio_upload(filename: str | None, content_type: str | None) -> bool:
    """An upload counts as audio when its type or its file name says so (browsers differ in which they send)."""
    content_type = (content_type or "").split(";")[0].strip().lower()
    return (
        content_type.startswith("audio/")
        or content_type == "video/webm"  # what browsers' MediaRecorder produces
        or Path(filename or "").suffix.lower() in AUDIO_EXTENSIONS
    )


class SpeechService:
    def __init__(self, config: ServeConfig, loaded: LoadedModel):
        self.config = config
        self.loaded = loaded
        self.generator = Generator(loaded)
        self.sample_rate = self.generator.sample_rate
        self.voices = VoiceStore(config.voices_dir, reserved=(DEFAULT_VOICE,))
        self.worker = SerialWorker(config.max_queue)
        # Each voice's clip encoded once (in the worker thread, which owns the model):
        # voice name -> (its audio file, codes); a replaced voice has a new audio file.
        self._voice_codes: dict[str, tuple[str, torch.LongTensor]] = {}

    @property
    def default_voice_description(self) -> str:
        if self.config.adapter:
            return f"the fine-tuned voice of adapter {self.config.adapter}"
        return "the model's own speaker 0, without a reference clip"

    def close(self) -> None:
        self.worker.close()

    # ---- speech ---------------------------------------------------------------------------

    def find_voice(self, name: str) -> Voice | None:
        """None for the built-in voice; raises VoiceNotFound for an unknown name."""
        return None if name == DEFAULT_VOICE else self.voices.get(name)

    def speech_chunks(
        self, text: str, voice: Voice | None, fmt: str, speed: float = 1.0, seed: int | None = None
    ) -> GeneratorType[bytes, None, None]:
        """Encoded audio as it is generated. Runs in the worker thread: it uses the model."""
        encoder = StreamEncoder(fmt, self.sample_rate, speed)
        sampling = SamplingConfig(seed=seed, max_seconds=self.config.max_seconds)
        # max_seconds bounds each sentence; this bounds the whole answer.
        samples_left = int(self.config.max_seconds * self.sample_rate)
        for wav in self.generator.stream(text, SPEAKER, self._context(voice), sampling):
            wav = wav[:samples_left]
            samples_left -= len(wav)
            if data := encoder.write(wav):
                yield data
            if samples_left <= 0:
                break
        yield encoder.close()

    def _context(self, voice: Voice | None) -> list[Segment]:
        if voice is None:
            return []
        audio, codes = self._voice_codes.get(voice.name, ("", None))
        if audio != voice.audio or codes is None:
            codes = self.loaded.codec.encode(self.voices.clip(voice))
            self._voice_codes[voice.name] = (voice.audio, codes)
        return [Segment(SPEAKER, voice.transcript, codes=codes)]

    # ---- voices ---------------------------------------------------------------------------

    def add_voice(
        self,
        name: str,
        data: bytes,
        *,
        filename: str | None,
        content_type: str | None,
        transcript: str | None = None,
        overwrite: bool = False,
    ) -> Voice:
        """Validate an uploaded clip, transcribe it if needed, and store it. Blocking (decoding, ASR)."""
        # Checked again, under the store's lock, when writing; checking first saves decoding and ASR.
        self.voices.check_writable(name, overwrite)
        if len(data) > self.config.max_upload_bytes:
            raise UploadTooLarge(f"the file is larger than {self.config.max_upload_mb:g} MB")
        if not data:
            raise TokenttsError("the uploaded file is empty")
        if not is_audio_upload(filename, content_type):
            accepted = ", ".join(AUDIO_EXTENSIONS)
            raise UnsupportedAudio(f"{content_type or 'this file type'} is not audio; send one of {accepted}")
        try:
            wav = decode_audio(data, SAMPLE_RATE, name=filename or "upload")
        except TokenttsError as exc:
            raise UnsupportedAudio(str(exc)) from None
        duration = len(wav) / SAMPLE_RATE
        if not self.config.min_voice_seconds <= duration <= self.config.max_voice_seconds:
            raise TokenttsError(
                f"the clip is {duration:.1f} s long; a voice needs "
                f"{self.config.min_voice_seconds:g} to {self.config.max_voice_seconds:g} s"
            )
        if np.abs(wav).max() < 1e-3:
            raise TokenttsError("the clip is silent")
        transcript = " ".join((transcript or "").split())
        transcribed = not transcript
        if transcribed:
            transcript = self._transcribe(wav)
        voice = self.voices.add(name, wav, transcript, transcribed=transcribed, overwrite=overwrite)
        log.info("voice %r saved (%.1f s%s)", name, duration, ", transcribed" if transcribed else "")
        return voice

    def delete_voice(self, name: str) -> None:
        if name == DEFAULT_VOICE:
            raise TokenttsError("the built-in voice cannot be deleted")
        self.voices.delete(name)
        self._voice_codes.pop(name, None)

    def _transcribe(self, wav: np.ndarray) -> str:
        from tokentts.asr import load_asr
        from tokentts.model.prompt import transcribe_reference

        asr = load_asr(self.config.asr_model)
        try:
            return transcribe_reference(wav, SAMPLE_RATE, asr)
        except TokenttsError:  # its message names a CLI flag; say what an HTTP client can do
            raise TokenttsError("no speech could be recognised in the clip; send its transcript") from None
