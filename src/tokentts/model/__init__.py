"""CSM model: loading (with adapters), a tiny random factory, and the prompt (frame) layout."""

from tokentts.model.loading import LoadedModel, load_model
from tokentts.model.prompt import Prompt, Segment, build_prompt, embed_prompt
from tokentts.model.tiny import save_tiny_csm

__all__ = ["LoadedModel", "Prompt", "Segment", "build_prompt", "embed_prompt", "load_model", "save_tiny_csm"]
