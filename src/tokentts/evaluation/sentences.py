"""Test sentences: a built-in default set, or one sentence per line from a file."""

from __future__ import annotations

from pathlib import Path

from tokentts.errors import TokenttsError
from tokentts.evaluation.metrics import count_words

# Short and long, statements and questions, names, numbers and a list: the cases where
# token TTS models skip words, stall, or trail off. Written as they should be spoken.
DEFAULT_SENTENCES: tuple[str, ...] = (
    "The weather is lovely today, so we are going for a walk by the river.",
    "Could you send me the report before the meeting on Thursday?",
    "I never expected the old bridge to be closed for the whole summer.",
    "Please remember to buy milk, bread, eggs and a bag of apples.",
    "She said the train would arrive at half past seven, but it was late again.",
    "Honestly, that was the best concert I have been to in years!",
    "Turn left at the second light, then keep going until you see the library.",
    "The committee will announce its decision after reviewing every application carefully.",
    "Why does the cat always sit on the keyboard when I am working?",
    "A small boat drifted slowly across the quiet lake as the sun went down.",
)


def load_sentences(path: Path | None = None, limit: int | None = None) -> list[str]:
    """Sentences from `path` (one per non-empty line, `#` lines skipped), or the default set."""
    if path is None:
        sentences = list(DEFAULT_SENTENCES)
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenttsError(f"cannot read sentences file {path}: {exc}") from None
        sentences = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not sentences:
            raise TokenttsError(f"sentences file {path} has no sentences")
        unscorable = [s for s in sentences if count_words(s) == 0]
        if unscorable:
            raise TokenttsError(f"sentence {unscorable[0]!r} in {path} has no words to score")
    return sentences[:limit] if limit else sentences
