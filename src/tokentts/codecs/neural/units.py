"""Codebook 0 as units of Whisper's encoder: what is said, not who says it.

A codec trained only on synthetic voices learns a codebook 0 that encodes the voice along with the
phone: a natural voice then speaks a new codebook-0 language, which a language model trained on
the synthetic voices cannot read from text and cannot clone (measured: teacher-forced codebook-0
loss of the embedded model on Piper Joe was worse than uniform). Whisper's encoder, trained on
680k hours of real speech, is close to speaker-invariant, so its features clustered by k-means
(HuBERT-style units) make a codebook 0 that a natural voice shares with the training voices:
on the same sentence, DTW-aligned frames of an eSpeak voice and Piper Joe got the same one of 256
units 42 % of the time, against 6 % for a learned codebook 0 and 4 % for different sentences.

    features = whisper_features(clips, 24_000, 25.0)   # [T, 384] per clip at the codec's frame rate
    centroids = fit_centroids(features, 256)           # [256, 384], saved with the codec
    units = nearest_units(centroids, features[0], T)   # [T] codebook-0 codes of clip 0
"""

from __future__ import annotations

import numpy as np
import torch

from tokentts.errors import TokenttsError


def whisper_features(clips: list[np.ndarray], sample_rate: int, frame_rate: float) -> list[torch.Tensor]:
    """The bundled Whisper tiny.en's encoder features of each clip at `frame_rate` (its 50 Hz
    frames averaged in groups, e.g. pairs for 25 frames/s), float16 to halve a corpus's memory."""
    from tokentts.asr.whisper import ENCODER_FRAME_RATE, encoder_features, load_asr

    ratio = ENCODER_FRAME_RATE / frame_rate
    if ratio != int(ratio):
        raise TokenttsError(f"Whisper units need a codec frame rate dividing {ENCODER_FRAME_RATE:g} (got {frame_rate:g})")
    group = int(ratio)
    pooled = []
    for features in encoder_features(load_asr("bundled"), clips, sample_rate):
        frames = len(features) // group
        pooled.append(torch.from_numpy(features[: frames * group].reshape(frames, group, -1).mean(1)).half())
    return pooled


def fit_centroids(features: list[torch.Tensor], count: int, seed: int = 0, max_frames: int = 200_000) -> torch.Tensor:
    """k-means centroids [count, S] of the frames of `features` (at most `max_frames` random ones)."""
    from sklearn.cluster import MiniBatchKMeans

    frames = torch.cat([f for f in features if len(f)]).float()
    if len(frames) < count:
        raise TokenttsError(f"{len(frames)} frames of speech cannot make {count} units: use more clips")
    if len(frames) > max_frames:
        frames = frames[torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))[:max_frames]]
    kmeans = MiniBatchKMeans(count, random_state=seed, batch_size=4096, n_init=3).fit(frames.numpy())
    return torch.from_numpy(kmeans.cluster_centers_).float()


def nearest_units(centroids: torch.Tensor, features: torch.Tensor, frames: int) -> torch.LongTensor:
    """The nearest centroid of each frame of `features` [T', S], as exactly `frames` codes: Whisper
    rounds a clip to whole 20 ms frames, so a codec frame past its end repeats the last unit."""
    if len(features) == 0:
        return torch.zeros(frames, dtype=torch.long)
    features = features.float()
    distances = features.pow(2).sum(1, keepdim=True) - 2 * features @ centroids.t() + centroids.pow(2).sum(1)[None]
    units = distances.argmin(1)[:frames]
    return torch.cat([units, units[-1:].expand(frames - len(units))])
