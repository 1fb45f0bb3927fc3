"""Training data: open a voice dataset, encode every clip with the codec once, cache the codes.

transformers' processor path hands raw audio to the model and re-encodes it with Mimi inside every
forward pass, one clip at a time. Here each clip is decoded and encoded once, in length-sorted
batches, and the codes are cached under a key made of the dataset's fingerprint, the codec's
identity (class, settings, weights) and the settings that decide which rows are encoded. Training
steps then only read integer codes.

Rows that cannot be used are dropped and counted by reason, never silently truncated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tokentts.audio.silence import trim_silence
from tokentts.codecs.base import Codec
from tokentts.data.dataset import decode_audio_cell, load_voice_dataset
from tokentts.errors import TokenttsError
from tokentts.training.config import FinetuneConfig

log = logging.getLogger(__name__)

SPEAKER_COLUMNS = ("source", "speaker_id")  # what `tokentts prepare` and common HF voice datasets use
CACHE_FORMAT = 1  # bump when the cached layout changes


@dataclass
class EncodedClip:
    row: int  # index of the row in the source dataset
    text: str
    speaker: str
    codes: torch.Tensor  # [K, T] codec codes (int16 in memory: Mimi codes are < 2048)

    @property
    def num_frames(self) -> int:
        return self.codes.shape[1]


@dataclass
class EncodedDataset:
    clips: list[EncodedClip]
    rows_total: int
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    cache_dir: Path | None = None
    from_cache: bool = False


def default_cache_root() -> Path:
    return Path(os.environ.get("TOKENTTS_CACHE") or Path.home() / ".cache" / "tokentts")


def open_dataset(cfg: FinetuneConfig) -> tuple[Any, str | None]:
    """The source dataset (audio left undecoded) and the speaker column to use (None: everyone is speaker 0)."""
    ds = load_voice_dataset(cfg.dataset, split=cfg.split, audio_column=cfg.audio_column)
    if cfg.text_column not in ds.column_names:
        raise TokenttsError(f"dataset {cfg.dataset} has no text column {cfg.text_column!r} (columns: {', '.join(ds.column_names)})")
    speaker_column = cfg.speaker_column
    if speaker_column is not None and speaker_column not in ds.column_names:
        raise TokenttsError(f"dataset {cfg.dataset} has no speaker column {speaker_column!r} (columns: {', '.join(ds.column_names)})")
    if speaker_column is None:
        speaker_column = next((c for c in SPEAKER_COLUMNS if c in ds.column_names), None)
    if len(ds) == 0:
        raise TokenttsError(f"dataset {cfg.dataset} (split {cfg.split}) is empty")
    columns = [cfg.audio_column, cfg.text_column] + ([speaker_column] if speaker_column else [])
    return ds.select_columns(columns), speaker_column


def speaker_id(value: Any) -> str | None:
    """CSM speakers are small integers written as `[0]`; anything else can't be a speaker id."""
    text = str(value).strip()
    return text if text.isdigit() else None


def codec_fingerprint(codec: Codec) -> str:
    """Identity of a codec: its class and settings, plus a hash of its weights when it is a torch model."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(codec).__name__}:{codec.sample_rate}:{codec.frame_rate}:{codec.num_codebooks}:{codec.codebook_size}".encode())
    module = getattr(codec, "model", None)
    if isinstance(module, torch.nn.Module):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(ds: Any, codec: Codec, cfg: FinetuneConfig, speaker_column: str | None) -> str:
    settings = [CACHE_FORMAT, ds._fingerprint, codec_fingerprint(codec), cfg.audio_column, cfg.text_column,
                speaker_column, cfg.max_audio_seconds]
    if cfg.trim_silence:  # named only when on, so that caches written before the setting existed stay valid
        settings.append("trim_silence")
    return hashlib.blake2b(json.dumps(settings).encode(), digest_size=16).hexdigest()


def encode_dataset(ds: Any, codec: Codec, cfg: FinetuneConfig, speaker_column: str | None,
                   device: torch.device = torch.device("cpu")) -> EncodedDataset:
    """Codes for every usable row of `ds`, from the cache when this dataset was encoded by this codec before.

    `device` is where the codec runs (it sets the default batch size)."""
    cache_dir = Path(cfg.cache_dir or default_cache_root()) / "codes" / cache_key(ds, codec, cfg, speaker_column)
    if (cache_dir / "clips.json").is_file():
        encoded = read_cache(cache_dir)
        log.info("using cached codes of %d clips from %s", len(encoded.clips), cache_dir)
        return encoded
    encoded = _encode_rows(ds, codec, cfg, speaker_column, cfg.encode_batch_seconds or default_encode_batch_seconds(device))
    encoded.cache_dir = write_cache(cache_dir, encoded)
    return encoded


def _decoded_rows(ds: Any, cfg: FinetuneConfig, speaker_column: str | None, sample_rate: int,
                  dropped: Counter) -> Iterator[tuple[int, str, str, np.ndarray]]:
    """(row, text, speaker, audio) for rows that decode and fit the audio limit; the others counted in `dropped`."""
    max_samples = int(cfg.max_audio_seconds * sample_rate)
    for row, example in enumerate(tqdm(ds, desc="reading audio", unit="clip", total=len(ds))):
        text = example[cfg.text_column]
        if not isinstance(text, str) or not text.strip():
            dropped["empty text"] += 1
            continue
        speaker = speaker_id(example[speaker_column]) if speaker_column else "0"
        if speaker is None:
            dropped["speaker id not a number"] += 1
            continue
        cell = example[cfg.audio_column]
        try:
            if not isinstance(cell, dict):
                raise TokenttsError(f"row {row}: the audio cell is {type(cell).__name__}, not audio")
            audio = decode_audio_cell(cell, sample_rate)
            if cfg.trim_silence:
                audio = trim_silence(audio, sample_rate)
        except TokenttsError as exc:
            if dropped["undecodable audio"] < 3:
                log.warning("skipping row %d: %s", row, exc)
            dropped["undecodable audio"] += 1
            continue
        if len(audio) > max_samples:
            dropped[f"audio over {cfg.max_audio_seconds:g} s"] += 1
            continue
        yield row, text.strip(), speaker, audio


def encode_in_batches(codec: Codec, wavs: list[np.ndarray], batch_seconds: float) -> list[torch.Tensor]:
    """Codes `[K, T]` for each clip, in the order given; clips are sorted by length and batched up to
    `batch_seconds` of padded audio, so that the codec pads little."""
    limit = int(batch_seconds * codec.sample_rate)
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    codes: list[torch.Tensor | None] = [None] * len(wavs)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and len(wavs[order[end]]) * (end - start + 1) <= limit:
            end += 1
        batch = order[start:end]
        for index, clip_codes in zip(batch, codec.encode_batch([wavs[i] for i in batch])):
            codes[index] = clip_codes
        start = end
    return codes


def default_encode_batch_seconds(device: torch.device) -> float:
    # Measured with Mimi: on a GPU large batches win; on a CPU a batch of 8 clips encodes 2x slower
    # than clip by clip (memory-bound convolutions over long padded batches), a few seconds at a time is best.
    return 60.0 if device.type == "cuda" else 8.0


def _encode_rows(ds: Any, codec: Codec, cfg: FinetuneConfig, speaker_column: str | None, batch_seconds: float) -> EncodedDataset:
    dropped: Counter = Counter()
    clips: list[EncodedClip] = []
    window: list[tuple[int, str, str, np.ndarray]] = []  # decoded rows waiting to be encoded

    def encode_window() -> None:
        codes = encode_in_batches(codec, [audio for *_, audio in window], batch_seconds)
        clips.extend(EncodedClip(row, text, speaker, c.to(torch.int16)) for (row, text, speaker, _), c in zip(window, codes))
        window.clear()

    # A window of several batches' worth of clips is sorted by length before batching.
    window_samples = 8 * batch_seconds * codec.sample_rate
    for item in _decoded_rows(ds, cfg, speaker_column, codec.sample_rate, dropped):
        window.append(item)
        if sum(len(audio) for *_, audio in window) >= window_samples:
            encode_window()
    encode_window()
    return EncodedDataset(clips=clips, rows_total=len(ds), dropped=dropped)


def write_cache(cache_dir: Path, encoded: EncodedDataset) -> Path:
    """Write the codes into a temporary folder beside `cache_dir`, then rename it into place."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.", dir=cache_dir.parent))
    try:
        lengths = [clip.num_frames for clip in encoded.clips]
        codes = torch.cat([clip.codes for clip in encoded.clips], dim=1) if encoded.clips else torch.zeros(0, 0, dtype=torch.int16)
        save_file({"codes": codes.contiguous(), "lengths": torch.tensor(lengths, dtype=torch.int64)}, tmp / "codes.safetensors")
        meta = {"rows_total": encoded.rows_total, "dropped": dict(encoded.dropped),
                "clips": [{"row": c.row, "text": c.text, "speaker": c.speaker} for c in encoded.clips]}
        (tmp / "clips.json").write_text(json.dumps(meta, ensure_ascii=False))
        os.replace(tmp, cache_dir)
    except OSError:
        # Another process (e.g. a second launch on the same data) finished the same cache first.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (cache_dir / "clips.json").is_file():
            raise
    return cache_dir


def read_cache(cache_dir: Path) -> EncodedDataset:
    meta = json.loads((cache_dir / "clips.json").read_text())
    tensors = load_file(cache_dir / "codes.safetensors")
    lengths = tensors["lengths"].tolist()
    pieces = torch.split(tensors["codes"], lengths, dim=1) if lengths else []
    clips = [EncodedClip(c["row"], c["text"], c["speaker"], codes) for c, codes in zip(meta["clips"], pieces)]
    return EncodedDataset(clips=clips, rows_total=meta["rows_total"], dropped=Counter(meta["dropped"]),
                          cache_dir=cache_dir, from_cache=True)
