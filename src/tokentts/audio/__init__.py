"""Audio I/O: decode anything FFmpeg reads to mono float32 at a chosen rate, resample, encode."""

from tokentts.audio.io import (
    SAMPLE_RATE,
    decode_audio,
    encode_audio,
    load_audio,
    resample,
    to_mono,
    write_audio,
)

__all__ = ["SAMPLE_RATE", "decode_audio", "encode_audio", "load_audio", "resample", "to_mono", "write_audio"]
