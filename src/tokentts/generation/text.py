"""Split long text into chunks the model can speak one at a time.

CSM sees at most 2048 frames (text tokens + 80 ms audio frames), and quality drops on long
utterances, so long text is spoken chunk by chunk: whole sentences, grouped up to `max_chars`;
a sentence longer than that is cut at a clause boundary (, ; :) or, failing that, between words.
"""

from __future__ import annotations

import re

# A sentence ends at . ! ? … (optionally followed by closing quotes/brackets) before whitespace.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’)\]]))\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    for clause in _CLAUSE_END.split(sentence):
        if len(clause) <= max_chars:
            pieces.append(clause)
            continue
        words, line = clause.split(), ""
        for word in words:
            if line and len(line) + 1 + len(word) > max_chars:
                pieces.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            pieces.append(line)
    return _group(pieces, max_chars)


def _group(pieces: list[str], max_chars: int) -> list[str]:
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= max_chars:
            chunks[-1] = f"{chunks[-1]} {piece}"
        else:
            chunks.append(piece)
    return chunks


def split_sentences(text: str, max_chars: int = 250) -> list[str]:
    """Text -> chunks of whole sentences, each at most `max_chars` long where possible."""
    text = " ".join(text.split())
    if not text:
        return [""]  # the prompt builder reports empty text with a clear error
    sentences = [s for s in _SENTENCE_END.split(text) if s]
    return _group([piece for s in sentences for piece in _cut_long(s, max_chars)], max_chars)
