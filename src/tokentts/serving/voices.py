"""Uploaded voices on disk: a reference clip and its transcript, written atomically.

Layout of the store folder:

    alice.json             {"name": "alice", "transcript": "...", "audio": "alice.3f9c2a1b.flac", ...}
    alice.3f9c2a1b.flac    the reference clip, mono 24 kHz

The JSON file *is* the voice: it is written last, by an atomic rename, and names its audio
file, so a crash mid-upload leaves at most an unreferenced audio file or a dot-prefixed temp
file, which the next start removes. Replacing a voice swaps the JSON in one rename, then
deletes the old clip.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tokentts.audio import SAMPLE_RATE, load_audio, write_audio
from tokentts.config import write_json_atomic
from tokentts.errors import TokenttsError

log = logging.getLogger(__name__)

# Lowercase only: "Alice" and "alice" would be one file on a case-insensitive file system.
# No dots or slashes, so a name can never leave the store folder or look like a temp file.
VOICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VOICE_NAME_RULE = "1-64 characters: lowercase letters, digits, '-' and '_', starting with a letter or digit"


class VoiceExists(TokenttsError):
    """The name is taken and the caller did not ask to replace it."""


class VoiceNotFound(TokenttsError):
    pass


@dataclass
class Voice:
    name: str
    transcript: str
    audio: str  # file name of the clip inside the store folder
    duration: float  # seconds
    transcribed: bool  # True when the transcript came from speech recognition, not the uploader
    created: str  # ISO 8601, UTC


def check_voice_name(name: str) -> str:
    if not VOICE_NAME.match(name):
        raise TokenttsError(f"invalid voice name {name!r}: {VOICE_NAME_RULE}")
    return name


class VoiceStore:
    """Voices in one folder; safe to use from several threads of one process."""

    def __init__(self, folder: Path, reserved: tuple[str, ...] = ()):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.reserved = reserved  # names of built-in voices, which uploads may not take
        self._lock = threading.Lock()
        self._remove_leftovers()

    def _json_path(self, name: str) -> Path:
        return self.folder / f"{check_voice_name(name)}.json"

    def _read(self, path: Path) -> Voice | None:
        try:
            voice = Voice(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable voice file %s: %s", path, exc)
            return None
        # A hand-edited file must not point outside the store folder.
        if voice.name != path.stem or Path(voice.audio).name != voice.audio or voice.audio.startswith("."):
            log.warning("ignoring voice file %s: its name or audio file does not match the store layout", path)
            return None
        return voice

    def _remove_leftovers(self) -> None:
        """Delete what an interrupted upload or replacement left: temp files and unreferenced clips."""
        referenced = {v.audio for v in self.list()}
        for path in self.folder.iterdir():
            if path.is_file() and (path.name.startswith(".") or (path.suffix == ".flac" and path.name not in referenced)):
                log.info("removing leftover of an interrupted upload: %s", path.name)
                path.unlink(missing_ok=True)

    def list(self) -> list[Voice]:
        voices = (self._read(p) for p in sorted(self.folder.glob("*.json")) if VOICE_NAME.match(p.stem))
        return [v for v in voices if v is not None]

    def get(self, name: str) -> Voice:
        path = self._json_path(name)
        voice = self._read(path) if path.exists() else None
        if voice is None:
            raise VoiceNotFound(f"no voice named {name!r}")
        return voice

    def clip(self, voice: Voice) -> np.ndarray:
        """The voice's reference clip, mono at 24 kHz."""
        return load_audio(self.folder / voice.audio, SAMPLE_RATE)

    def check_writable(self, name: str, overwrite: bool) -> Voice | None:
        """Raise unless a voice may be written under `name`; returns the voice it would replace."""
        if name in self.reserved:
            raise VoiceExists(f"{name!r} is a built-in voice; choose another name")
        path = self._json_path(name)
        previous = self._read(path) if path.exists() else None
        if previous is not None and not overwrite:
            raise VoiceExists(f"voice {name!r} exists; pass overwrite=true to replace it")
        return previous

    def add(self, name: str, wav: np.ndarray, transcript: str, *, transcribed: bool, overwrite: bool = False) -> Voice:
        with self._lock:
            previous = self.check_writable(name, overwrite)
            # A fresh file name per upload, so the JSON rename alone switches between old and new clip.
            audio_name = f"{name}.{secrets.token_hex(4)}.flac"
            write_audio(self.folder / audio_name, wav, SAMPLE_RATE)
            voice = Voice(
                name=name,
                transcript=transcript,
                audio=audio_name,
                duration=round(len(wav) / SAMPLE_RATE, 3),
                transcribed=transcribed,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            try:
                write_json_atomic(self._json_path(name), asdict(voice))
            except BaseException:
                (self.folder / audio_name).unlink(missing_ok=True)
                raise
            if previous is not None:
                (self.folder / previous.audio).unlink(missing_ok=True)
            return voice

    def delete(self, name: str) -> None:
        with self._lock:
            voice = self.get(name)
            self._json_path(name).unlink()
            (self.folder / voice.audio).unlink(missing_ok=True)
