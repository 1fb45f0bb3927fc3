"""Voice datasets as Hugging Face `datasets`, written and read without torchcodec.

On disk and on the Hub a voice dataset is an ordinary Audio dataset (audio bytes embedded as
WAV, 24 kHz), so anyone can `load_dataset` it and decode audio with torchcodec. Inside tokentts
the audio column is read with decoding switched off and decoded by PyAV (`tokentts.audio`),
because datasets >= 4 decodes Audio only through torchcodec (datasets #7678).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokentts.audio.io import SAMPLE_RATE, decode_audio, encode_audio
from tokentts.errors import TokenttsError


@dataclass
class Clip:
    """One row of a voice dataset: a snippet of a source recording and what is said in it."""

    audio: np.ndarray  # mono float32 at SAMPLE_RATE
    text: str
    source: str  # speaker id, "0" for a single-speaker dataset (CSM's `[0]` prefix)
    start: float  # seconds into the source recording
    end: float
    source_file: str

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def clips_to_dataset(clips: list[Clip]) -> Any:
    """A `datasets.Dataset` with columns audio (Audio, 24 kHz, WAV bytes embedded), text, source, start, end, source_file."""
    from datasets import Audio, Dataset, Features, Value

    # Rows are built as the Audio feature's storage struct ({"bytes", "path"}) and then cast to
    # Audio: Audio.encode_example would import torchcodec even for ready-made bytes.
    storage = Features(
        {
            "audio": {"bytes": Value("binary"), "path": Value("string")},
            "text": Value("string"),
            "source": Value("string"),
            "start": Value("float64"),
            "end": Value("float64"),
            "source_file": Value("string"),
        }
    )
    rows = [
        {
            "audio": {"bytes": encode_audio(clip.audio, SAMPLE_RATE, "wav"), "path": f"clip_{index:05d}.wav"},
            "text": clip.text,
            "source": clip.source,
            "start": clip.start,
            "end": clip.end,
            "source_file": clip.source_file,
        }
        for index, clip in enumerate(clips)
    ]
    # from_dict keeps the columns of an empty dataset (from_list would write a table without any).
    columns = {name: [row[name] for row in rows] for name in storage}
    return Dataset.from_dict(columns, features=storage).cast_column("audio", Audio(sampling_rate=SAMPLE_RATE))


def load_voice_dataset(path_or_repo: str | Path, split: str = "train", audio_column: str = "audio") -> Any:
    """Open a dataset saved with `save_to_disk` (a folder) or a Hub dataset id, audio left undecoded.

    The returned dataset's audio column holds {"bytes", "path"} dicts; decode them with
    `decode_audio_cell` or iterate with `iter_audio_rows`.
    """
    import datasets

    path = Path(path_or_repo)
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        elif path.exists():
            raise TokenttsError(f"{path}: not a dataset folder")
        else:
            loaded = datasets.load_dataset(str(path_or_repo), split=split)
    except TokenttsError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise TokenttsError(f"cannot load dataset {path_or_repo}: {exc}") from None
    except IndexError:  # datasets fails this way on a dataset saved with no rows (0 shards)
        raise TokenttsError(f"dataset {path_or_repo} is empty") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise TokenttsError(f"dataset {path_or_repo} has no split {split!r} (it has {', '.join(loaded)})")
        loaded = loaded[split]
    if audio_column not in loaded.column_names:
        raise TokenttsError(f"dataset {path_or_repo} has no {audio_column!r} column (columns: {', '.join(loaded.column_names)})")
    return loaded.cast_column(audio_column, datasets.Audio(decode=False))


def decode_audio_cell(cell: dict[str, Any], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """An undecoded Audio value ({"bytes", "path"}) as mono float32 at `sample_rate`."""
    if cell.get("bytes"):
        return decode_audio(cell["bytes"], sample_rate, name=cell.get("path") or "dataset audio")
    if cell.get("path"):
        return decode_audio(Path(cell["path"]), sample_rate)
    raise TokenttsError("dataset row has neither audio bytes nor an audio path")


def iter_audio_rows(
    dataset: Any, sample_rate: int = SAMPLE_RATE, audio_column: str = "audio"
) -> Iterator[dict[str, Any]]:
    """Rows of a dataset from `load_voice_dataset` with the audio replaced by a float32 numpy array."""
    for row in dataset:
        yield {**row, audio_column: decode_audio_cell(row[audio_column], sample_rate)}
