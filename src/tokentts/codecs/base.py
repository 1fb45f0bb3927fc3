"""The codec interface the model and generation code rely on.

Anything that turns 1-D mono audio into a `[K, T]` grid of integer codes (K codebooks, T frames
at `frame_rate` per second) and back can be plugged in; Mimi (`tokentts.codecs.mimi`) is the one
CSM was trained with.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Codec(Protocol):
    sample_rate: int  # Hz of the waveforms going in and out
    frame_rate: float  # code frames per second
    num_codebooks: int  # K, rows of a code grid
    codebook_size: int  # codes per codebook

    def encode(self, wav: np.ndarray) -> torch.LongTensor:
        """Mono float32 audio at `sample_rate` -> codes `[K, T]` (on the CPU)."""
        ...

    def encode_batch(self, wavs: list[np.ndarray]) -> list[torch.LongTensor]:
        """Several clips at once (padded internally); each result is trimmed to its own length."""
        ...

    def decode(self, codes: torch.LongTensor) -> np.ndarray:
        """Codes `[K, T]` -> mono float32 audio at `sample_rate`."""
        ...


def samples_per_frame(codec: Codec) -> int:
    return int(round(codec.sample_rate / codec.frame_rate))


class StreamingDecoder:
    """Decode a growing code sequence chunk by chunk, for any codec.

    Each call decodes the new frames together with up to `context_frames` frames before them and
    returns only the samples of the new frames. The left context lets the codec's convolutions and
    attention see the history, so the concatenated chunks match a one-shot decode closely
    (exactly once the context covers the codec's receptive field).
    """

    def __init__(self, codec: Codec, context_frames: int = 25):
        self.codec = codec
        self.context_frames = context_frames
        self._history: torch.LongTensor | None = None  # [K, <= context_frames]

    def push(self, codes: torch.LongTensor) -> np.ndarray:
        """Add frames `[K, n]`; return their audio (n * samples_per_frame samples)."""
        if codes.shape[-1] == 0:
            return np.zeros(0, dtype=np.float32)
        codes = codes.cpu()
        window = codes if self._history is None else torch.cat([self._history, codes], dim=-1)
        audio = self.codec.decode(window)
        new_samples = codes.shape[-1] * samples_per_frame(self.codec)
        self._history = window[:, -self.context_frames :] if self.context_frames else None
        return audio[len(audio) - new_samples :] if len(audio) >= new_samples else audio
