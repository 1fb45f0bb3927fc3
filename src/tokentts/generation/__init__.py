"""Speech generation with CSM: our decoding loop, sampling, text splitting, `tokentts generate`."""

from tokentts.generation.engine import GenerationResult, Generator, SamplingConfig

__all__ = ["GenerationResult", "Generator", "SamplingConfig"]
