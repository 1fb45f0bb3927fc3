"""What a trained codec is worth: held-out reconstruction loss per number of codebooks,
per-codebook usage, and intelligibility (Whisper WER of reconstructions vs originals)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokentts.audio.io import write_audio
from tokentts.codecs.neural.codec import NeuralCodec
from tokentts.codecs.neural.losses import SpectralLoss

log = logging.getLogger(__name__)

SAMPLES_WRITTEN = 3


def codebook_usage(codes: list[torch.LongTensor], codebook_size: int) -> list[dict[str, Any]]:
    """Per codebook over all frames of `codes` ([K, T] each): perplexity (exp of the code entropy;
    `codebook_size` when every code is equally used, 1 when one code is) and codes never used."""
    stacked = torch.cat(codes, dim=1)  # [K, frames]
    usage = []
    for k, row in enumerate(stacked):
        counts = torch.bincount(row, minlength=codebook_size).double()
        p = counts[counts > 0] / counts.sum()
        usage.append(
            {
                "codebook": k,
                "perplexity": round(float(torch.exp(-(p * p.log()).sum())), 1),
                "used": int((counts > 0).sum()),
                "dead": int((counts == 0).sum()),
            }
        )
    return usage


@torch.inference_mode()
def held_out_losses(codec: NeuralCodec, loss_fn: SpectralLoss, clips: list[np.ndarray]) -> list[dict[str, Any]]:
    """Mean spectral losses on held-out clips when decoding from the first k codebooks, for k = 1, 2, 4, ..., K."""
    prefixes = sorted({min(2**i, codec.num_codebooks) for i in range(codec.num_codebooks.bit_length() + 1)})
    rows = []
    for k in prefixes:
        stft = mel = 0.0
        for clip in clips:
            wav = codec.model.pad(torch.from_numpy(clip)[None])
            reconstruction = codec.model.decode(codec.model.encode(wav)[:, :k])
            losses = loss_fn(reconstruction, wav)
            stft, mel = stft + float(losses.stft), mel + float(losses.mel)
        rows.append({"codebooks": k, "stft": round(stft / len(clips), 4), "mel": round(mel / len(clips), 4)})
    return rows


def intelligibility(
    originals: list[np.ndarray], reconstructions: list[np.ndarray], texts: list[str], asr_model: str
) -> dict[str, Any]:
    """Corpus WER (errors / reference words) of the ASR on originals and on reconstructions, same ASR."""
    from tokentts.asr.whisper import load_asr
    from tokentts.evaluation.metrics import transcribe_for_scoring, word_errors

    asr = load_asr(asr_model)
    clips, totals = [], {"original": [0, 0], "reconstructed": [0, 0]}
    for original, reconstruction, text in zip(originals, reconstructions, texts):
        row: dict[str, Any] = {"text": text}
        for name, wav in (("original", original), ("reconstructed", reconstruction)):
            heard = transcribe_for_scoring(asr, wav)
            errors = word_errors(text, heard)
            row[name] = heard
            totals[name][0] += errors.substitutions + errors.deletions + errors.insertions
            totals[name][1] += errors.reference_words
        clips.append(row)
    return {
        "asr": asr.name,
        "clips": len(clips),
        "wer_original": round(totals["original"][0] / max(1, totals["original"][1]), 4),
        "wer_reconstructed": round(totals["reconstructed"][0] / max(1, totals["reconstructed"][1]), 4),
        "transcripts": clips,
    }


def build_report(
    codec: NeuralCodec,
    loss_fn: SpectralLoss,
    held_out: list[np.ndarray],
    held_out_texts: list[str],
    usage_clips: list[np.ndarray],
    samples_dir: Path,
    asr_model: str,
) -> dict[str, Any]:
    log.info("report: encoding %d clips for codebook usage", len(usage_clips) + len(held_out))
    codes = codec.encode_batch(held_out) + [codec.encode(clip) for clip in usage_clips]
    reconstructions = [codec.decode(c)[: len(clip)] for c, clip in zip(codes, held_out)]
    for index, (original, reconstruction) in enumerate(list(zip(held_out, reconstructions))[:SAMPLES_WRITTEN]):
        write_audio(samples_dir / f"{index:02d}_original.wav", original, codec.sample_rate)
        write_audio(samples_dir / f"{index:02d}_reconstructed.wav", reconstruction, codec.sample_rate)
    report: dict[str, Any] = {
        "codec": {"frame_rate": codec.frame_rate, "num_codebooks": codec.num_codebooks, "codebook_size": codec.codebook_size},
        "held_out_losses": held_out_losses(codec, loss_fn, held_out),
        "codebook_usage": codebook_usage(codes, codec.codebook_size),
    }
    if asr_model != "none" and any(held_out_texts):
        log.info("report: transcribing %d held-out clips and their reconstructions with Whisper", len(held_out))
        report["intelligibility"] = intelligibility(held_out, reconstructions, held_out_texts, asr_model)
    return report
