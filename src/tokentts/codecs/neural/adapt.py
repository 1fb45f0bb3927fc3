"""Adapt a neural codec's decoder to one voice, keeping its codes.

A small codec trained on synthetic voices keeps in its codes what is said, but much of a new
voice's timbre only in the decoder's weights: decoded, a natural voice comes back sounding like
the training voices (measured: speaker similarity of Piper Joe to itself falls from 0.91 to 0.48
through the embedded codec, and rises to 0.85 after 3 minutes of decoder adaptation on 48
sentences). Training only the decoder, on the voice's own recordings, leaves the encoder and the
quantizer untouched, so every code means what it meant to the language model: fine-tuning the
model (LoRA) and adapting the decoder are independent, and the adapted codec travels with the
adapter (`tokentts finetune` saves it in the adapter's `codec/`).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from tokentts.codecs.neural.codec import NeuralCodec
from tokentts.codecs.neural.losses import SpectralLoss
from tokentts.codecs.neural.model import CodecModel
from tokentts.codecs.neural.train import crop_units, random_crops

log = logging.getLogger(__name__)


@dataclass
class DecoderAdaptation:
    codec: NeuralCodec  # a copy of the input codec with the adapted decoder
    steps: int
    seconds: float
    loss_start: float  # spectral reconstruction loss on held-back crops of the voice, before
    loss_end: float  # ... and after


class _CropSampler:
    """Random crops of the voice's clips, with their codebook-0 units for a Whisper-unit codec: Whisper
    hears each whole clip once, as when the clip is encoded for the language model, and every crop
    takes its frames' units (Whisper on a 2 s crop alone hears something else, and costs a pass a step)."""

    def __init__(self, model: CodecModel, clips: list[np.ndarray], batch_size: int, length: int):
        self.model, self.clips, self.batch_size, self.length = model, clips, batch_size, length
        self.units = None
        if model.unit_embedding is not None:
            self.units = [model.units(torch.from_numpy(np.asarray(clip, dtype=np.float32))[None])[0] for clip in clips]

    def codes(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.LongTensor]:
        """A batch of crops [B, N] and their codes [B, K, T]."""
        frame = self.model.config.samples_per_frame
        batch, picks = random_crops(self.clips, self.batch_size, self.length, rng,
                                     frame if self.units is not None else 1)
        units = None if self.units is None else crop_units(self.units, picks, -(-self.length // frame), frame)
        with torch.no_grad():
            return batch, self.model.encode(batch, units=units)


def _held_back_loss(model: CodecModel, loss_fn: SpectralLoss, crops: torch.Tensor, codes: torch.LongTensor) -> float:
    with torch.no_grad():
        return float(loss_fn(model.decode(codes), crops).total)


def adapt_decoder(codec: NeuralCodec, clips: list[np.ndarray], steps: int, batch_size: int = 8,
                  crop_seconds: float = 2.0, learning_rate: float = 5e-4, seed: int = 0) -> DecoderAdaptation:
    """Train a copy of `codec`'s decoder for `steps` steps on random crops of `clips` (24 kHz mono)."""
    adapted = NeuralCodec(copy.deepcopy(codec.model))
    model = adapted.model
    loss_fn = SpectralLoss(model.front_end)
    rng = np.random.default_rng(seed)
    sampler = _CropSampler(model, clips, batch_size, int(crop_seconds * codec.sample_rate))
    held_back, held_back_codes = sampler.codes(np.random.default_rng(seed + 1))
    start_loss = _held_back_loss(model, loss_fn, held_back, held_back_codes)
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=learning_rate, betas=(0.8, 0.99))
    started = time.perf_counter()
    for _ in range(steps):
        batch, codes = sampler.codes(rng)
        with torch.no_grad():  # the codes, and what they quantize to, stay as they are
            quantized = model.dequantize(codes)
        model.decoder.train()
        loss = loss_fn(model.decoder(quantized), batch).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), 1.0)
        optimizer.step()
    model.eval()
    result = DecoderAdaptation(adapted, steps, time.perf_counter() - started, start_loss,
                               _held_back_loss(model, loss_fn, held_back, held_back_codes))
    log.info("codec decoder adapted in %d steps (%.0f s): reconstruction loss %.3f -> %.3f", steps, result.seconds,
             result.loss_start, result.loss_end)
    return result
