"""`tokentts synth`: make a recording with a known script from an embedded voice."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokentts.audio.io import write_audio
from tokentts.audio.synth import EspeakVoice, synthesize_espeak, synthesize_piper
from tokentts.errors import TokenttsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="text to speak")
    text.add_argument("--text-file", type=Path, help="file with the text to speak")
    parser.add_argument("--voice", choices=["espeak", "piper"], default="espeak")
    parser.add_argument("--language", default="en-us", help="eSpeak voice, e.g. en-us, en-gb")
    parser.add_argument("--variant", default=None, help="eSpeak variant, e.g. m3, f2, klatt")
    parser.add_argument("--pitch", type=int, default=50, help="eSpeak pitch 0-99")
    parser.add_argument("--rate", type=int, default=165, help="eSpeak rate, words per minute")
    parser.add_argument("--out", type=Path, required=True, help="output audio file (.wav, .flac, .mp3, ...)")


def run(args: argparse.Namespace) -> int:
    if args.text_file:
        try:
            text = args.text_file.read_text()
        except OSError as exc:
            raise TokenttsError(f"cannot read {args.text_file}: {exc.strerror}") from None
    else:
        text = args.text
    if args.voice == "piper":
        wav = synthesize_piper(text)
    else:
        wav = synthesize_espeak(text, EspeakVoice(args.language, args.variant, args.pitch, args.rate))
    write_audio(args.out, wav)
    print(f"wrote {args.out} ({len(wav) / 24000:.1f} s)")
    return 0
