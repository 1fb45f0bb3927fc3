"""tokentts: token-based text-to-speech, from a recording to a served, cloned voice."""

__version__ = "0.1.0"
