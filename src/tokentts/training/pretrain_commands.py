"""`tokentts pretrain`: train a small CSM from scratch on a multi-speaker dataset with any codec.

    tokentts synth-corpus --out corpus --speakers 24 --clips-per-speaker 40
    tokentts train-codec --dataset corpus --out codec
    tokentts pretrain --dataset corpus --codec codec --output-dir base --epochs 20
    tokentts generate --model base --text "Hello." --out hello.wav
"""

from __future__ import annotations

import argparse

from tokentts.config import add_config_arguments, config_from_args
from tokentts.training.pretrain import FINETUNE_ONLY, PretrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PretrainConfig, skip=FINETUNE_ONLY)


def run(args: argparse.Namespace) -> int:
    from tokentts.training.pretrain import pretrain

    result = pretrain(config_from_args(PretrainConfig, args))
    if not result.is_main_process:
        return 0
    metrics, data = result.metrics, result.metrics["data"]
    print(f"trained {metrics['trainable_parameters'] / 1e6:.1f} M parameters for {metrics['steps']} steps on "
          f"{data['train_clips']} clips ({data['train_audio_seconds']:.0f} s of audio), train loss {metrics['train_loss']:.3f}")
    if metrics["eval_loss"] is not None:
        start = f"{metrics['eval_loss_start']:.3f} -> " if metrics["eval_loss_start"] is not None else ""
        print(f"eval loss {start}{metrics['eval_loss']:.3f}")
    print(f"wrote {result.output_dir}")
    return 0
