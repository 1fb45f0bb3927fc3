"""`tokentts train-codec`: train the neural codec on a voice dataset and report on it."""

from __future__ import annotations

import argparse
import json

from tokentts.codecs.neural.train import TrainCodecConfig, train_codec
from tokentts.config import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainCodecConfig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(TrainCodecConfig, args)
    codec_dir = train_codec(config)
    report = json.loads((config.out / "report.json").read_text())
    print(f"codec saved to {codec_dir}")
    for row in report["codebook_usage"]:
        print(f"  codebook {row['codebook']}: perplexity {row['perplexity']:.1f} / {config.codebook_size}, "
              f"{row['dead']} dead codes")
    if "intelligibility" in report:
        wer = report["intelligibility"]
        print(f"  WER ({wer['asr']}, {wer['clips']} held-out clips): originals {wer['wer_original']:.3f}, "
              f"reconstructions {wer['wer_reconstructed']:.3f}")
    print(f"report: {config.out / 'report.json'}")
    return 0
