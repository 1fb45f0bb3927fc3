"""Mimi (Kyutai), the codec of CSM: 24 kHz mono, 12.5 frames/s, up to 32 codebooks of 2048 codes."""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import MimiModel

from tokentts.codecs.base import samples_per_frame


class MimiCodec:
    """`Codec` over transformers' `MimiModel` (for CSM: the model's own `codec_model`).

    `num_codebooks` selects how many residual codebooks are used (CSM-1B uses 32).
    """

    def __init__(self, model: MimiModel, num_codebooks: int | None = None):
        self.model = model.eval()
        config = model.config
        self.sample_rate = int(config.sampling_rate)
        self.frame_rate = float(config.frame_rate)
        self.num_codebooks = int(num_codebooks or config.num_quantizers)
        self.codebook_size = int(config.codebook_size)
        if self.num_codebooks > config.num_quantizers:
            raise ValueError(f"Mimi has {config.num_quantizers} codebooks, {self.num_codebooks} requested")

    @property
    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def num_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / samples_per_frame(self))

    @torch.inference_mode()
    def encode(self, wav: np.ndarray) -> torch.LongTensor:
        return self.encode_batch([wav])[0]

    @torch.inference_mode()
    def encode_batch(self, wavs: list[np.ndarray]) -> list[torch.LongTensor]:
        if not wavs:
            return []
        lengths = [len(w) for w in wavs]
        # Every clip is zero-padded to whole frames. Mimi's encoder is causal, so a clip's codes then
        # do not depend on what follows it in the batch: batched and one-by-one encoding agree
        # exactly. (Mimi itself would zero-pad the last partial frame inside each conv layer, which
        # changes that frame's codes depending on the padding after the clip.)
        frame = samples_per_frame(self)
        longest = self.num_frames(max(lengths)) * frame
        batch = np.zeros((len(wavs), 1, longest), dtype=np.float32)
        for row, wav in enumerate(wavs):
            batch[row, 0, : len(wav)] = wav
        param = self._param
        codes = self.model.encode(
            torch.from_numpy(batch).to(param.device, param.dtype), num_quantizers=self.num_codebooks
        ).audio_codes  # [B, K, T]
        return [codes[row, :, : self.num_frames(n)].cpu() for row, n in enumerate(lengths)]

    @torch.inference_mode()
    def decode(self, codes: torch.LongTensor) -> np.ndarray:
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks:
            raise ValueError(f"expected codes [{self.num_codebooks}, T], got {tuple(codes.shape)}")
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        audio = self.model.decode(codes[None].to(self._param.device)).audio_values[0, 0]
        return audio[: codes.shape[1] * samples_per_frame(self)].float().cpu().numpy()
