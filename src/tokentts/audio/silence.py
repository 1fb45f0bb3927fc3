"""Silence from frame energy: which stretches of a clip are silent, and a clip without its silent edges."""

from __future__ import annotations

import numpy as np

from tokentts.audio.io import SAMPLE_RATE


def silent_frames(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, frame_s: float = 0.02, relative_db: float = 40.0,
                  floor_db: float = -60.0) -> np.ndarray:
    """One bool per `frame_s` frame: silent when `relative_db` below the loudest frame or below
    `floor_db` dBFS. Relative to the loudest frame so that quiet and loud recordings are judged
    alike; the absolute floor makes an all-near-zero clip silent rather than quiet speech."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    frame = frame_samples(frame_s, sample_rate)
    n_frames = len(wav) // frame
    if n_frames == 0:
        return np.ones(0, dtype=bool)
    frames = wav[: n_frames * frame].reshape(n_frames, frame)
    level_db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    return (level_db < level_db.max() - relative_db) | (level_db < floor_db)


def frame_samples(frame_s: float, sample_rate: int) -> int:
    return max(1, int(round(frame_s * sample_rate)))


def trim_silence(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, margin_s: float = 0.05,
                 frame_s: float = 0.01, relative_db: float = 50.0) -> np.ndarray:
    """`wav` from its first to its last voiced frame, with `margin_s` of what lies beyond kept on each
    side; a clip with no voiced frame comes back unchanged. The threshold lies lower than for pauses
    (50 dB below the loudest frame), and the margin keeps the fade of a last consonant."""
    silent = silent_frames(wav, sample_rate, frame_s, relative_db)
    voiced = np.flatnonzero(~silent)
    if len(voiced) == 0:
        return wav
    frame, margin = frame_samples(frame_s, sample_rate), int(round(margin_s * sample_rate))
    start = max(0, voiced[0] * frame - margin)
    end = min(len(wav), (voiced[-1] + 1) * frame + margin)
    return wav[start:end]
