"""Training examples as CSM learns them, built from cached codes.

One example is a frame sequence (layout in `tokentts.model.prompt`):

    [context: <bos>[spk]text<eos>  audio frames  end-of-audio]   (optional, same speaker)
    <bos>[spk]text<eos>  audio frames  end-of-audio

(with `context_speaker_swap`, some examples with a context put another speaker's id in both headers:
the voice must then come from the context audio, which is what cloning asks of the model; with
`prior_speakers`, the speakers of a prior dataset, only their examples are swapped, only among their
ids, and each of them has a context)

with labels `[T, K]`: the codes of the target's audio frames and of its end-of-audio frame (all
zeros: that label is what teaches the model to stop), -100 everywhere else. transformers' CSM loss
trains the backbone on codebook 0 of every labelled frame and the depth decoder on codebooks 1..K-1
of the frames whose codebooks 1..K-1 are labelled; only a `depth_frame_fraction` of the audio
frames keep those labels (Sesame's compute amortisation), the end-of-audio frame always does.

The random choices (context clip, depth frames) come from a generator seeded by (seed, epoch,
index), so an example is the same on every process and after a resume.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from tokentts.errors import TokenttsError
from tokentts.model.prompt import Prompt, TextLayout, encode_spoken, header_length, segment_frames, spoken_text
from tokentts.training.data import EncodedClip

IGNORE = -100  # label value the loss skips


@dataclass
class TrainingClip:
    row: int  # row of the source dataset
    speaker: str
    text_ids: list[int]  # <bos>[speaker]text<eos>
    codes: torch.Tensor  # [K, T]
    header_tokens: int  # of text_ids, the <bos>[speaker] part
    durations: list[float] | None = None  # per text token, the timed layout's spreading weights

    @property
    def num_positions(self) -> int:
        """Frames this clip takes: text, audio, end-of-audio."""
        return len(self.text_ids) + self.codes.shape[1] + 1


def tokenize_clips(clips: list[EncodedClip], tokenizer: Any, max_text_tokens: int,
                   max_positions: int, layout: TextLayout = TextLayout()) -> tuple[list[TrainingClip], Counter]:
    """Tokenize the transcripts as the model's `layout` reads them (characters or eSpeak IPA, with
    word timings for the timed layout); drop (and count) rows over the text limit or the model's context."""
    kept: list[TrainingClip] = []
    dropped: Counter = Counter()
    for clip in clips:
        try:
            spoken, durations = spoken_text(clip.text, layout)
            text_ids = encode_spoken(tokenizer, clip.speaker, spoken)
        except TokenttsError:
            dropped["text the tokenizer cannot encode"] += 1
            continue
        item = TrainingClip(clip.row, clip.speaker, text_ids, clip.codes, header_length(tokenizer, clip.speaker),
                            durations)
        if len(text_ids) > max_text_tokens:
            dropped[f"text over {max_text_tokens} tokens"] += 1
        elif item.num_positions > max_positions:
            dropped[f"longer than the model's {max_positions} positions"] += 1
        else:
            kept.append(item)
    return kept, dropped


class CsmTrainingDataset(Dataset):
    """Examples (tokens, mask, labels) for transformers' Trainer; see the module docstring."""

    def __init__(self, clips: list[TrainingClip], *, audio_token_id: int, audio_eos_token_id: int,
                 depth_frame_fraction: float, context_probability: float = 0.0, context_speaker_swap: float = 0.0,
                 context_pool: list[TrainingClip] | None = None, max_positions: int = 2048, seed: int = 0,
                 aligned: bool = False, input_code_noise: float = 0.0, codebook_size: int = 0,
                 prior_speakers: Collection[str] | None = None):
        """`aligned`: the model's text layout (`tokentts.model.prompt.TextLayout`); `input_code_noise`:
        share of the input's codebook 1..K-1 codes replaced by random codes below `codebook_size`;
        `prior_speakers`: other voices trained beside the one being fine-tuned, so that it keeps cloning: each
        of their examples has a context, and a swap renames only them, to one another's ids (None: a swap
        may rename any speaker)."""
        if input_code_noise and codebook_size < 1:
            raise ValueError("input_code_noise needs the codebook_size")
        self.clips = clips
        self.input_code_noise = input_code_noise
        self.codebook_size = codebook_size
        self.context_speaker_swap = context_speaker_swap
        self.prior_speakers = None if prior_speakers is None else frozenset(prior_speakers)
        self.aligned = aligned
        self.audio_token_id = audio_token_id
        self.audio_eos_token_id = audio_eos_token_id
        self.depth_frame_fraction = depth_frame_fraction
        self.context_probability = context_probability
        self.max_positions = max_positions
        self.seed = seed
        self.epoch = 0
        self.by_speaker: dict[str, list[TrainingClip]] = defaultdict(list)
        for clip in context_pool if context_pool is not None else clips:
            self.by_speaker[clip.speaker].append(clip)
        # `<bos>[speaker]` of every speaker, for examples whose speaker id is swapped.
        self.headers = {c.speaker: c.text_ids[:c.header_tokens] for c in [*clips, *(context_pool or [])]}

    def _swappable(self, speaker: str) -> bool:
        return self.prior_speakers is None or speaker in self.prior_speakers

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def lengths(self) -> list[int]:
        return [clip.num_positions for clip in self.clips]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _context_for(self, target: TrainingClip, rng: np.random.Generator) -> TrainingClip | None:
        probability = 1.0 if self.prior_speakers and target.speaker in self.prior_speakers else self.context_probability
        if probability == 0 or rng.random() >= probability:
            return None
        candidates = [c for c in self.by_speaker[target.speaker] if c.row != target.row]
        if not candidates:
            return None
        context = candidates[rng.integers(len(candidates))]
        return context if context.num_positions + target.num_positions + 2 <= self.max_positions else None

    def _swap_speaker(self, clips: list[TrainingClip], rng: np.random.Generator) -> list[TrainingClip]:
        """The clips (a context and its target) under another speaker's id: the id then names a voice
        the audio does not have, and only the context tells the model whose voice to continue."""
        others = sorted(s for s in self.headers if s != clips[0].speaker and self._swappable(s))
        if not others:
            return clips
        header = self.headers[others[rng.integers(len(others))]]
        return [dataclasses.replace(c, text_ids=[*header, *c.text_ids[c.header_tokens:]], header_tokens=len(header))
                for c in clips]

    def _frames(self, clip: TrainingClip) -> Prompt:
        return segment_frames(clip.text_ids, clip.codes.long(), num_codebooks=clip.codes.shape[0],
                              audio_token_id=self.audio_token_id, audio_eos_token_id=self.audio_eos_token_id,
                              aligned=self.aligned, header_tokens=clip.header_tokens, durations=clip.durations)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        target = self.clips[index]
        context = self._context_for(target, rng)
        clips = [context, target] if context else [target]
        if (context and self.context_speaker_swap and self._swappable(target.speaker)
                and rng.random() < self.context_speaker_swap):
            clips = self._swap_speaker(clips, rng)
        prompt = Prompt.cat([self._frames(clip) for clip in clips])
        first_audio = len(prompt) - target.codes.shape[1] - 1
        labels = torch.full(prompt.audio_codes.shape, IGNORE, dtype=torch.long)
        labels[first_audio:] = prompt.audio_codes[first_audio:]
        # The depth decoder sees only a fraction of the audio frames; the end-of-audio frame always.
        num_audio = target.codes.shape[1]
        num_depth = math.ceil(self.depth_frame_fraction * num_audio)
        skipped = rng.permutation(num_audio)[num_depth:]
        labels[first_audio + torch.from_numpy(skipped), 1:] = IGNORE
        tokens = prompt.tokens
        if self.input_code_noise:
            # The model reads noisy fine codes (as the depth decoder's samples are at generation time)
            # and still predicts the true ones: labels were taken above.
            fine = tokens[:, 1:-1]
            audio = prompt.mask[:, 1:-1] & (tokens[:, -1:] != self.audio_eos_token_id)  # end-of-audio frames stay 0
            noisy = torch.from_numpy(rng.random(fine.shape) < self.input_code_noise) & audio
            random_codes = torch.from_numpy(rng.integers(0, self.codebook_size, fine.shape))
            tokens = torch.cat([tokens[:, :1], torch.where(noisy, random_codes, fine), tokens[:, -1:]], dim=1)
        return {"tokens": tokens, "mask": prompt.mask, "labels": labels, "position_ids": prompt.positions}


def collate_frames(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into a batch with an attention mask."""
    longest = max(len(e["tokens"]) for e in examples)
    batch = {
        "tokens": torch.zeros(len(examples), longest, examples[0]["tokens"].shape[1], dtype=torch.long),
        "mask": torch.zeros(len(examples), longest, examples[0]["mask"].shape[1], dtype=torch.bool),
        "labels": torch.full((len(examples), longest, examples[0]["labels"].shape[1]), IGNORE, dtype=torch.long),
        "attention_mask": torch.zeros(len(examples), longest, dtype=torch.long),
        "position_ids": torch.zeros(len(examples), longest, dtype=torch.long),
    }
    for row, example in enumerate(examples):
        n = len(example["tokens"])
        for key in ("tokens", "mask", "labels", "position_ids"):
            batch[key][row, :n] = example[key]
        batch["attention_mask"][row, :n] = 1
    return batch


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length grouping (batches of similar length, little padding) with its shuffle
    seeded by (seed, epoch): the same order on every process and after a resume."""

    def __init__(self, dataset: CsmTrainingDataset, batch_size: int, seed: int):
        super().__init__(batch_size, lengths=dataset.lengths)
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
