"""Voice-dataset preparation: sources -> transcript -> clips -> Hugging Face dataset (`tokentts prepare`)."""

from tokentts.data.dataset import Clip, clips_to_dataset, decode_audio_cell, iter_audio_rows, load_voice_dataset
from tokentts.data.prepare import PrepareConfig, PrepareResult, prepare

__all__ = [
    "Clip",
    "PrepareConfig",
    "PrepareResult",
    "clips_to_dataset",
    "decode_audio_cell",
    "iter_audio_rows",
    "load_voice_dataset",
    "prepare",
]
