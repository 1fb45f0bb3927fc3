"""A small trainable neural audio codec (log-mel encoder, residual VQ, iSTFT decoder) behind the `Codec` interface."""

from tokentts.codecs.neural.codec import NeuralCodec, load_codec
from tokentts.codecs.neural.model import CodecModel, CodecModelConfig

__all__ = ["CodecModel", "CodecModelConfig", "NeuralCodec", "load_codec"]
