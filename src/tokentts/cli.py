"""The `tokentts` command: a thin layer over the library.

Each subcommand lives in its stage's package as a module with two functions,
`add_arguments(parser)` and `run(args) -> int`; it is imported only when used so that
`tokentts --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from tokentts.errors import TokenttsError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tokentts.demo", "run the main job end to end, offline: target voice -> prepare -> finetune -> evaluate"),
    "synth": ("tokentts.audio.commands", "speak a text with an embedded voice (eSpeak NG or Piper) to a file"),
    "finetune": ("tokentts.training.commands", "LoRA fine-tune CSM on a voice dataset (pre-tokenized audio, exact resume, DDP)"),
    "generate": ("tokentts.generation.commands", "speak a text with a CSM model, optionally cloning a reference voice"),
    "evaluate": ("tokentts.evaluation.commands", "compare base, cloned, fine-tuned and fine-tuned + cloned voices: WER, similarity, pauses, DNSMOS"),
    "prepare": ("tokentts.data.commands", "turn long recordings (files or URLs) into a voice dataset"),
    "synth-corpus": ("tokentts.data.synthetic", "build a multi-speaker eSpeak NG voice dataset from generated sentences"),
    "pretrain": ("tokentts.training.pretrain_commands", "train a small CSM from scratch on a multi-speaker dataset with any codec (neural or Mimi)"),
    "build-base": ("tokentts.training.base_model", "the embedded base model's recipe: eSpeak corpus -> codec -> pretrain -> evaluate -> package"),
    "train-codec": ("tokentts.codecs.neural.commands", "train the small neural audio codec (RVQ, 24 kHz, 25 frames/s) on a voice dataset"),
    "serve": ("tokentts.serving.commands", "serve speech over HTTP (OpenAI-compatible /v1/audio/speech, voices) with a web page"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokentts", description="Token-based TTS: prepare, fine-tune, clone, evaluate, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    requested = next((a for a in sys.argv[1:] if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported (heavy imports: torch, transformers).
        if name == requested:
            importlib.import_module(module).add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def _quiet_libraries() -> None:
    """Keep the libraries' per-call chatter (faster-whisper's "Processing audio", weight-loading
    bars) out of the user's progress output; --verbose shows it."""
    for name in ("faster_whisper", "httpx", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Deprecations inside transformers/peft are theirs to fix, not the user's to read.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:
        _quiet_libraries()
    if not hasattr(args, "_module"):
        importlib.import_module(COMMANDS[args.command][0]).add_arguments(argparse.ArgumentParser())
        parser.error(f"run `tokentts {args.command} --help`")
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except TokenttsError as exc:
        if args.verbose:
            raise
        print(f"tokentts {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokentts {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
