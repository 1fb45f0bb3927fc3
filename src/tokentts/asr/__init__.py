"""Speech recognition (faster-whisper) with word timestamps, used by prepare and evaluate."""

from tokentts.asr.whisper import ASR, Segment, Transcript, Word, bundled_model_path, load_asr, transcribe

__all__ = ["ASR", "Segment", "Transcript", "Word", "bundled_model_path", "load_asr", "transcribe"]
