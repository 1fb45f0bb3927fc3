"""Fine-tuning CSM on a voice dataset: pre-tokenized audio, CSM's loss, LoRA, transformers' Trainer."""

from tokentts.training.config import FinetuneConfig
from tokentts.training.finetune import FinetuneResult, finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]
