"""`tokentts prepare SOURCE... --out DIR`: long recordings to a voice dataset.

    tokentts prepare talk.mp3 https://example.com/interview --speaker 0 1 --out voice
    # fix words in voice/transcript.txt, then:
    tokentts prepare voice --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import datasets
from tqdm import tqdm

from tokentts.config import CONFIG_FILENAME, add_config_arguments, build_config, config_from_args, read_config_file
from tokentts.data.prepare import PrepareConfig, prepare
from tokentts.data.summary import format_summary
from tokentts.errors import TokenttsError


_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="*", metavar="SOURCE", help="audio/video files or http(s) URLs; with --resume: DIR")
    add_config_arguments(parser, PrepareConfig, skip=("sources",))


def run(args: argparse.Namespace) -> int:
    # Our own progress bar and summary say what happens; silence the libraries' chatter.
    datasets.disable_progress_bars()
    if not args.verbose:
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    args.sources = args.sources or None  # no SOURCE on the command line: keep those of a --config file
    config = _resume_config(args) if args.resume else config_from_args(PrepareConfig, args)
    bar: tqdm | None = None

    def show_progress(done: float, total: float) -> None:
        nonlocal bar
        if bar is None:
            # disable=None: a bar on a terminal only, not in logs and pipes.
            bar = tqdm(total=round(total, 1), desc="transcribing", disable=None, bar_format=_BAR_FORMAT)
        bar.n = round(done, 1)
        bar.refresh()

    try:
        result = prepare(config, progress=show_progress)
    finally:
        if bar is not None:
            bar.close()
    print(format_summary(result.summary))
    print(f"wrote {result.out} (dataset, transcript.txt to correct, summary.json, durations.png)")
    return 0


def _resume_config(args: argparse.Namespace) -> PrepareConfig:
    """The previous run's settings, overridden by the flags given now."""
    if args.out is None and len(args.sources or ()) != 1:
        raise TokenttsError("--resume takes the prepared folder: tokentts prepare DIR --resume")
    out = Path(args.out or args.sources[0])
    if not (out / CONFIG_FILENAME).is_file():
        raise TokenttsError(f"{out} is not a prepared dataset folder (no {CONFIG_FILENAME})")
    previous = read_config_file(out / CONFIG_FILENAME)
    if args.config:
        previous.update(read_config_file(args.config))
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareConfig) if getattr(args, f.name, None) is not None}
    given.pop("sources", None)
    return build_config(PrepareConfig, {**previous, **given, "out": out, "resume": True})
