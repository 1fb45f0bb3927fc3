"""How a conversation becomes CSM input: a sequence of frames.

Every position of the backbone is one frame of K + 1 columns (K codebooks, then one text column):

- text frames: `<|begin_of_text|>[speaker]text<|end_of_text|>`, one token per frame in the text column;
- audio frames: the K codes of one codec frame (80 ms for Mimi);
- after each audio segment, an end-of-audio frame whose K codes are all 0.

The text column of audio frames holds `<|AUDIO|>` (end-of-audio frame: `<|audio_eos|>`), so
`Prompt.input_ids` is exactly what transformers' `CsmProcessor` produces, and `Prompt.audio_codes`
what `CsmForConditionalGeneration` would get from its codec. A frame's embedding is its text
embedding (text frames) or the sum of its K code embeddings (audio frames), as in the model.

Each frame also has a RoPE position. csm-1b numbers frames 0, 1, 2, ... ("sequential"). Models
pretrained here may use the "aligned" layout instead: a segment's text tokens are spread evenly
over the positions of its audio frames, so that the audio frame at position p finds the text it
speaks near relative distance 0. A small model learns that local attention in minutes, where the
sequential layout leaves it to discover the text-to-audio alignment (which, on a CPU budget, it
does not). The "timed" layout spreads text by eSpeak NG's word timings instead of evenly: each word's
characters share the span eSpeak takes to say that word, scaled to the segment's audio, so the text
at relative distance 0 is the word being spoken, to within a word (even spreading drifts by several
words in a long sentence). For the text to speak, the audio's length is not known yet: the text is
spread over an estimate from the speaking rate (frames per text token) of the voice context or of
the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tokentts.errors import TokenttsError

log = logging.getLogger(__name__)


@dataclass
class Segment:
    speaker: str  # "0", "1", ...
    text: str
    audio: np.ndarray | None = None  # mono float32 at the codec's rate (24 kHz), or None for the target
    codes: torch.LongTensor | None = None  # [K, T] when the audio is already encoded (skips the codec)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None or self.codes is not None


SEQUENTIAL, ALIGNED, TIMED = "sequential", "aligned", "timed"
TEXT_POSITIONS = (SEQUENTIAL, ALIGNED, TIMED)
TEXT_POSITIONS_KEY = "tokentts_text_positions"  # CsmConfig attribute: one of TEXT_POSITIONS (default SEQUENTIAL)
FRAMES_PER_TOKEN_KEY = "tokentts_frames_per_token"  # CsmConfig attribute: the model's speaking rate (aligned)
TEXT_FRONTEND_KEY = "tokentts_text_frontend"  # CsmConfig attribute: "characters" (default) or ESPEAK_IPA
CHARACTERS, ESPEAK_IPA = "characters", "espeak-ipa"  # ESPEAK_IPA: the model reads eSpeak NG's IPA for the text


@dataclass(frozen=True)
class TextLayout:
    """How a model places text positions (read from its config; csm-1b: sequential)."""

    aligned: bool = False  # text positions follow the audio (ALIGNED or TIMED)
    frames_per_token: float = 0.0  # speaking rate used when no voice context gives one
    phonemes: bool = False  # text is turned into eSpeak NG's IPA before tokenizing (English)
    timed: bool = False  # spread by eSpeak NG's word timings (TIMED) rather than evenly

    @classmethod
    def of(cls, config) -> TextLayout:
        layout = getattr(config, TEXT_POSITIONS_KEY, SEQUENTIAL) or SEQUENTIAL
        if layout not in TEXT_POSITIONS:
            raise TokenttsError(f"unknown text position layout {layout!r} in the model config")
        frontend = getattr(config, TEXT_FRONTEND_KEY, CHARACTERS) or CHARACTERS
        if frontend not in (CHARACTERS, ESPEAK_IPA):
            raise TokenttsError(f"unknown text front end {frontend!r} in the model config")
        return cls(layout != SEQUENTIAL, float(getattr(config, FRAMES_PER_TOKEN_KEY, 0.0) or 0.0),
                   frontend == ESPEAK_IPA, layout == TIMED)


@dataclass
class Prompt:
    tokens: torch.LongTensor  # [T, K + 1]: K codes, then the text token
    mask: torch.BoolTensor  # [T, K + 1]: which columns are in use
    positions: torch.LongTensor  # [T] RoPE positions, relative to the prompt's start
    next_position: int  # position of the frame that would follow (where generated audio starts)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def input_ids(self) -> torch.LongTensor:
        """[T] text column, as transformers' CsmProcessor lays it out."""
        return self.tokens[:, -1]

    @property
    def audio_codes(self) -> torch.LongTensor:
        """[T, K] codes (0 in text frames)."""
        return self.tokens[:, :-1]

    @property
    def is_audio(self) -> torch.BoolTensor:
        return self.mask[:, :-1].any(-1)

    @staticmethod
    def cat(parts: Sequence[Prompt]) -> Prompt:
        """Parts one after the other: each part's positions start at the previous part's next_position."""
        offset, positions = 0, []
        for part in parts:
            positions.append(part.positions + offset)
            offset += part.next_position
        return Prompt(torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts]),
                      torch.cat(positions), offset)


def check_speaker(speaker: str) -> str:
    speaker = str(speaker)
    if not speaker.isdigit():
        raise TokenttsError(f"speaker must be a number like 0 or 1, got {speaker!r}")
    return speaker


def normalize_text(text: str) -> str:
    """The text as the model reads it: whitespace runs made single spaces; rejects empty or invalid text."""
    text = " ".join(str(text).split())
    if not text:
        raise TokenttsError("the text is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. undecodable bytes in a command-line argument
        raise TokenttsError("the text is not valid Unicode (it holds undecodable bytes)") from None
    return text


def tokenize_text(tokenizer, speaker: str, text: str, layout: TextLayout = TextLayout()) -> list[int]:
    """`<|begin_of_text|>[speaker]text<|end_of_text|>` as token ids, the text as the model's `layout`
    reads it (`spoken_text`); rejects what the tokenizer can't encode."""
    return encode_spoken(tokenizer, speaker, spoken_text(text, layout)[0])


def encode_spoken(tokenizer, speaker: str, text: str) -> list[int]:
    """`tokenize_text` for a text already in the form the model reads (`spoken_text`'s first item)."""
    body = tokenizer.encode(f"[{check_speaker(speaker)}]{text}", add_special_tokens=False)
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in body:
        unknown = [ch for ch in text if tokenizer.unk_token_id in tokenizer.encode(ch, add_special_tokens=False)]
        raise TokenttsError(f"the text has characters the tokenizer cannot encode: {''.join(sorted(set(unknown)))!r}")
    return [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]


def spoken_text(text: str, layout: TextLayout = TextLayout()) -> tuple[str, tuple[float, ...] | None]:
    """What a model of this `layout` reads for `text`, and for the timed layout how long each UTF-8
    byte of it takes to say (the weights that spread it over the audio; None otherwise):

    - characters: the text itself (whitespace normalised); timed: eSpeak NG's time for each word
      (from its start to the next word's start), shared by the word's bytes and what follows it;
    - espeak-ipa: eSpeak NG's IPA for the text; timed: the phonemes eSpeak actually speaks, each
      with its own duration, a space before each word and "," for each pause.
    """
    text = normalize_text(text)
    if layout.phonemes and layout.timed:
        return _phoneme_timed(text)
    if layout.phonemes:
        from tokentts.audio.synth import espeak_phonemes

        ipa = espeak_phonemes(text)
        if not ipa:  # e.g. only punctuation: a phoneme model has nothing to read
            raise TokenttsError("eSpeak NG finds nothing to say in the text")
        return ipa, None
    return text, _word_timed(text) if layout.timed else None


# Cached: eSpeak's timings move by a fraction of a millisecond from call to call (state it keeps
# between calls), which could move a text token by one position; a text must always get the same.
@lru_cache(maxsize=8192)
def _word_timed(text: str) -> tuple[float, ...]:
    from tokentts.audio.synth import espeak_word_timings

    word_starts, total = espeak_word_timings(text)
    # Word starts as character boundaries; the first word's span also takes any leading characters.
    starts = sorted({char: seconds for char, seconds in word_starts if 0 <= char < len(text)}.items())
    if not starts or total <= 0:  # nothing spoken (e.g. only punctuation): even spreading
        return (1.0,) * len(text.encode("utf-8"))
    bounds = [(0, 0.0)] + starts[1:] + [(len(text), max(total, starts[-1][1]))]
    return _byte_durations([(text[char:next_char], next_seconds - seconds)
                            for (char, seconds), (next_char, next_seconds) in zip(bounds, bounds[1:])])


@lru_cache(maxsize=8192)
def _phoneme_timed(text: str) -> tuple[str, tuple[float, ...]]:
    from tokentts.audio.synth import espeak_phoneme_timings

    items, total = espeak_phoneme_timings(text)
    while items and items[0][0] == " ":  # the first word's start needs no separator
        items = items[1:]
    if not any(symbol.strip() for symbol, _ in items):
        raise TokenttsError("eSpeak NG finds nothing to say in the text")
    items[0] = (items[0][0], 0.0)  # the first phoneme also takes the leading silence
    pieces = [(symbol or ",", next_start - start)
              for (symbol, start), (_, next_start) in zip(items, [*items[1:], ("", max(total, items[-1][1]))])]
    return "".join(symbol for symbol, _ in pieces), _byte_durations(pieces)


def _byte_durations(pieces: list[tuple[str, float]]) -> tuple[float, ...]:
    """Each piece's seconds shared evenly by its UTF-8 bytes."""
    durations: list[float] = []
    for piece, seconds in pieces:
        size = len(piece.encode("utf-8"))
        # A floor keeps every byte a little time: eSpeak may start two words at the same sample.
        durations += [max(seconds, 0.01) / size] * size
    return tuple(durations)


def header_length(tokenizer, speaker: str) -> int:
    """Tokens before the text itself in `tokenize_text`'s output: `<|begin_of_text|>[speaker]`."""
    return 1 + len(tokenizer.encode(f"[{check_speaker(speaker)}]", add_special_tokens=False))


def text_frames(token_ids: Sequence[int], num_codebooks: int) -> Prompt:
    n = len(token_ids)
    tokens = torch.zeros(n, num_codebooks + 1, dtype=torch.long)
    tokens[:, -1] = torch.tensor(token_ids, dtype=torch.long)
    mask = torch.zeros(n, num_codebooks + 1, dtype=torch.bool)
    mask[:, -1] = True
    return Prompt(tokens, mask, torch.arange(n), n)


def align_text(text: Prompt, header_tokens: int, num_frames: int, durations: Sequence[float] | None = None) -> Prompt:
    """Text frames in the aligned layout, for audio of `num_frames` frames at positions 0..num_frames - 1:
    the header (`<|begin_of_text|>[speaker]`) at 0, each text token at the middle of its share of
    [0, num_frames) (shares proportional to `durations`, one per text token; even without), the
    end-of-text token at num_frames. The audio that follows starts at 0."""
    body = len(text) - header_tokens - 1
    if body < 1 or num_frames < 1:
        raise ValueError("aligned text needs at least one text token and one audio frame")
    if durations is None:
        spread = ((torch.arange(body, dtype=torch.float64) + 0.5) * (num_frames / body)).long()
    elif len(durations) != body:
        raise TokenttsError(f"{len(durations)} durations for {body} text tokens: the timed layout needs "
                            "a tokenizer with one token per UTF-8 byte")
    else:
        share = torch.tensor(durations, dtype=torch.float64)
        share = share / share.sum() * num_frames
        spread = (torch.cumsum(share, 0) - share / 2).long()
    positions = torch.cat([torch.zeros(header_tokens, dtype=torch.long), spread, torch.tensor([num_frames])])
    return Prompt(text.tokens, text.mask, positions, 0)


def audio_frames(codes: torch.LongTensor, audio_token_id: int, audio_eos_token_id: int) -> Prompt:
    """Codes [K, T] -> T audio frames plus the all-zero end-of-audio frame."""
    num_codebooks, n = codes.shape
    tokens = torch.zeros(n + 1, num_codebooks + 1, dtype=torch.long)
    tokens[:n, :-1] = codes.T.cpu()
    tokens[:n, -1] = audio_token_id
    tokens[n, -1] = audio_eos_token_id
    mask = torch.zeros(n + 1, num_codebooks + 1, dtype=torch.bool)
    mask[:, :-1] = True
    return Prompt(tokens, mask, torch.arange(n + 1), n + 1)


def segment_frames(text_ids: Sequence[int], codes: torch.LongTensor | None, *, num_codebooks: int,
                   audio_token_id: int, audio_eos_token_id: int, aligned: bool = False, header_tokens: int = 0,
                   target_frames: int = 0, durations: Sequence[float] | None = None) -> Prompt:
    """One segment's frames: its text, then (when it has `codes` [K, T]) its audio and end-of-audio.
    In the aligned layout a target without audio spreads its text over `target_frames` frames, in
    shares proportional to `durations` (the timed layout) or evenly."""
    text = text_frames(text_ids, num_codebooks)
    if aligned:
        text = align_text(text, header_tokens, codes.shape[1] if codes is not None else target_frames, durations)
    if codes is None:
        return text
    return Prompt.cat([text, audio_frames(codes, audio_token_id, audio_eos_token_id)])


def speaking_rate(segments: Sequence[tuple[int, int]]) -> float | None:
    """Frames per text token over (text tokens, audio frames) pairs; None when there are none."""
    tokens = sum(t for t, _ in segments)
    frames = sum(f for _, f in segments)
    return frames / tokens if tokens and frames else None


def encode_segments(segments: Sequence[Segment], codec) -> list[Segment]:
    """The segments with their audio replaced by codes (all clips encoded in one batch)."""
    to_encode = [s for s in segments if s.codes is None and s.audio is not None]
    encoded = iter(codec.encode_batch([np.asarray(s.audio, dtype=np.float32) for s in to_encode]))
    return [Segment(s.speaker, s.text, codes=next(encoded)) if s.codes is None and s.audio is not None else s
            for s in segments]


def build_prompt(segments: Sequence[Segment], loaded, frames_per_token: float | None = None) -> Prompt:
    """Frames for a conversation: every segment's text, then its audio (if any) and end-of-audio.

    The last segment is normally the target (text only): generation continues after its text.
    `loaded` is a `tokentts.model.LoadedModel`. In the aligned layout, a segment without audio is
    spread over its text length times `frames_per_token` (default: the rate of the segments with
    audio, else the model's).
    """
    config = loaded.model.config
    tokenizer = loaded.processor.tokenizer
    layout = TextLayout.of(config)
    rows = []
    for segment in encode_segments(segments, loaded.codec):
        spoken, durations = spoken_text(segment.text, layout)
        text_ids = encode_spoken(tokenizer, segment.speaker, spoken)
        header = header_length(tokenizer, segment.speaker)
        codes = segment.codes
        if codes is not None:
            if codes.shape[0] != config.num_codebooks:
                raise TokenttsError(f"segment codes have {codes.shape[0]} codebooks, the model uses {config.num_codebooks}")
        rows.append((text_ids, header, codes, durations))
    if frames_per_token is None and layout.aligned:
        rate = speaking_rate([(len(t) - h - 1, c.shape[1]) for t, h, c, _ in rows if c is not None])
        frames_per_token = rate or layout.frames_per_token
        if not frames_per_token:
            raise TokenttsError("the model config has no speaking rate for its aligned text layout")
    parts = [segment_frames(text_ids, codes, num_codebooks=config.num_codebooks, audio_token_id=config.audio_token_id,
                            audio_eos_token_id=config.audio_eos_token_id, aligned=layout.aligned, header_tokens=header,
                            target_frames=max(1, round((len(text_ids) - header - 1) * (frames_per_token or 0))),
                            durations=durations)
             for text_ids, header, codes, durations in rows]
    return Prompt.cat(parts)


def embed_frames(model, tokens: torch.LongTensor, mask: torch.BoolTensor) -> torch.Tensor:
    """Frames [B, T, K+1] -> backbone inputs [B, T, hidden], exactly as CsmForConditionalGeneration embeds them."""
    text = model.embed_text_tokens(tokens[..., -1].masked_fill(~mask[..., -1], 0))
    audio = model.backbone_model.embed_tokens(tokens[..., :-1])  # sum of the K code embeddings
    is_audio = mask[..., :-1].any(-1, keepdim=True)
    return torch.where(is_audio, audio, text)


def embed_prompt(model, prompt: Prompt) -> torch.Tensor:
    """One prompt -> [1, T, hidden] on the model's device."""
    device = model.embed_text_tokens.weight.device
    return embed_frames(model, prompt.tokens[None].to(device), prompt.mask[None].to(device))


def load_reference(audio: str | Path | np.ndarray, text: str | None = None, speaker: str = "0",
                   max_seconds: float = 15.0, sample_rate: int = 24000, asr=None) -> Segment:
    """A voice-cloning reference: audio (file in any format/rate/channels, or mono array at `sample_rate`)
    with its transcript. Longer than `max_seconds` is trimmed with a warning; no transcript means
    it is transcribed with `tokentts.asr.whisper` (or the `asr` given)."""
    from tokentts.audio import load_audio

    if isinstance(audio, (str, Path)):
        try:
            wav = load_audio(audio, sample_rate=sample_rate)
        except TokenttsError as exc:
            raise TokenttsError(f"cannot read reference audio {exc}") from None
        name = str(audio)
    else:
        wav = np.asarray(audio, dtype=np.float32)
        name = "reference audio"
        if wav.ndim != 1:
            raise TokenttsError(f"{name} must be mono (1-D), got shape {wav.shape}")
    if len(wav) < sample_rate // 10:
        raise TokenttsError(f"{name} is empty or shorter than 0.1 s")
    limit = int(max_seconds * sample_rate)
    if len(wav) > limit:
        log.warning("%s is %.1f s long; using only its first %.1f s", name, len(wav) / sample_rate, max_seconds)
        wav = wav[:limit]
        if text is not None:
            log.warning("the trimmed reference no longer matches its full transcript; consider a shorter clip "
                        "or omit --voice-text to have it transcribed")
    if text is None or not text.strip():
        text = transcribe_reference(wav, sample_rate, asr)
    return Segment(speaker=check_speaker(speaker), text=text, audio=wav)


def transcribe_reference(wav: np.ndarray, sample_rate: int, asr=None) -> str:
    from tokentts.asr.whisper import load_asr, transcribe

    if asr is None:
        asr = load_asr()
    text = transcribe(asr, wav, sample_rate=sample_rate, word_timestamps=False).text.strip()
    if not text:
        raise TokenttsError("the reference clip has no recognisable speech; pass its transcript with --voice-text")
    log.info("reference transcript (%s): %s", getattr(asr, "name", "asr"), text)
    return text
