"""Audio codecs: waveform <-> discrete codes `[K, T]` (K codebooks, T frames)."""

from tokentts.codecs.base import Codec
from tokentts.codecs.mimi import MimiCodec

__all__ = ["Codec", "MimiCodec"]
