"""`tokentts finetune`: LoRA fine-tune CSM on a voice dataset.

    tokentts finetune --dataset my_voice --output-dir my_voice_lora
    torchrun --nproc_per_node 2 -m tokentts.cli finetune --dataset my_voice --output-dir my_voice_lora
    tokentts generate --model sesame/csm-1b --adapter my_voice_lora --text "Hello." --out hello.wav
"""

from __future__ import annotations

import argparse

from tokentts.config import add_config_arguments, config_from_args
from tokentts.training.config import FinetuneConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, FinetuneConfig)


def run(args: argparse.Namespace) -> int:
    from tokentts.training.finetune import finetune

    result = finetune(config_from_args(FinetuneConfig, args))
    if not result.is_main_process:
        return 0
    metrics, data = result.metrics, result.metrics["data"]
    dropped = sum(data["dropped"].values())
    summary = f"trained {metrics['steps']} steps on {data['train_clips']} clips ({data['train_audio_seconds']:.0f} s of audio)"
    print(summary + (f"; dropped {dropped} of {data['rows']} rows" if dropped else ""))
    if metrics["eval_loss"] is not None:
        start = f"{metrics['eval_loss_start']:.3f} -> " if metrics["eval_loss_start"] is not None else ""
        print(f"eval loss {start}{metrics['eval_loss']:.3f}")
    print(f"wrote {result.output_dir}")
    return 0
