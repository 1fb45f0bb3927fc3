"""`tokentts evaluate`: compare base, cloned, fine-tuned and fine-tuned + cloned voices."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tokentts.config import add_config_arguments, config_from_args

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tokentts.evaluation.runner import EvaluateConfig

    parser.add_argument("--out", type=Path, required=True,
                        help="report folder: report.json, report.md, report.html, samples/, config.json")
    add_config_arguments(parser, EvaluateConfig)


def run(args: argparse.Namespace) -> int:
    from tokentts.evaluation.report import check_out_dir, format_value, write_reports
    from tokentts.evaluation.runner import METRICS, EvaluateConfig, evaluate

    config = config_from_args(EvaluateConfig, args)
    check_out_dir(args.out)  # before the long run, not after it

    def progress(done: int, total: int) -> None:
        log.info("sample %d/%d", done, total)

    report = evaluate(config, progress=progress)
    out_dir = write_reports(report, args.out)
    for result in report.conditions:
        parts = []
        for metric in METRICS[:4]:  # WER, CER, similarity, DNSMOS: the headline numbers
            estimate = result.summary.get(metric.key)
            if estimate is not None:
                parts.append(f"{metric.label} {format_value(metric, estimate.mean)}")
        print(f"{result.condition.name:>24}: {', '.join(parts)}")
    print(f"wrote {out_dir / 'report.html'} (ASR: {report.asr_model})")
    return 0
