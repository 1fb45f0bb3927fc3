"""Where recordings come from: local audio/video files and http(s) URLs (fetched with yt-dlp).

Every source ends up as mono float32 audio at 24 kHz plus a content hash of the original file,
which keys the transcript cache.
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from tokentts.audio.io import SAMPLE_RATE, decode_audio
from tokentts.errors import TokenttsError

log = logging.getLogger(__name__)

# Decoding less than this share of the duration a file declares means it was cut short.
_MIN_DECODED_SHARE = 0.8


@dataclass
class SourceAudio:
    name: str  # as given: a path or a URL
    speaker: str
    content_hash: str  # sha256 of the file's bytes
    audio: np.ndarray  # mono float32 at SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def display_name(source: str) -> str:
    """How a source is named in the dataset's `source_file` column: a URL as is, a file by its name."""
    return source if is_url(source) else Path(source).name


def is_url(source: str) -> bool:
    return re.match(r"^https?://", source, re.IGNORECASE) is not None


def open_source(source: str, speaker: str, download_dir: Path) -> SourceAudio:
    """Fetch (for a URL), decode to 24 kHz mono, and hash one source; one-line errors for bad input."""
    path = fetch_url(source, download_dir) if is_url(source) else Path(source)
    # decode_audio raises one-line errors for missing, non-audio and undecodable files.
    audio = decode_audio(path, SAMPLE_RATE, name=source)
    check_complete(path, len(audio) / SAMPLE_RATE, label=source)
    return SourceAudio(source, speaker, file_sha256(path), audio)


class _YtDlpLogger:
    """Sends yt-dlp's messages to our debug log instead of the terminal; failures arrive as exceptions."""

    def debug(self, message: str) -> None:
        log.debug("yt-dlp: %s", message)

    def info(self, message: str) -> None:
        log.debug("yt-dlp: %s", message)

    def warning(self, message: str) -> None:
        log.debug("yt-dlp warning: %s", message)

    def error(self, message: str) -> None:
        log.debug("yt-dlp error: %s", message)


def fetch_url(url: str, download_dir: Path) -> Path:
    """Download the audio of a web page or media URL with yt-dlp (best audio-only format when there is one)."""
    import yt_dlp

    options = {
        "format": "bestaudio/best",
        "outtmpl": str(download_dir / "%(id).80s.%(ext)s"),
        "noplaylist": True,
        "logger": _YtDlpLogger(),
        "noprogress": True,
        "socket_timeout": 30,
        "retries": 2,
    }
    download_dir.mkdir(parents=True, exist_ok=True)
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(url, download=True)
    except yt_dlp.utils.YoutubeDLError as exc:
        reason = str(exc).splitlines()[0].removeprefix("ERROR: ")
        raise TokenttsError(f"{url}: cannot download: {reason}") from None
    downloads = (info or {}).get("requested_downloads") or []
    if not downloads or not Path(downloads[0]["filepath"]).is_file():
        raise TokenttsError(f"{url}: yt-dlp found no single media file to download (a playlist?)")
    return Path(downloads[0]["filepath"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_complete(path: Path, decoded_seconds: float, label: str) -> None:
    """Raise when a file decodes to much less audio than it declares: FFmpeg decodes a
    truncated file up to the cut without any error."""
    declared = declared_duration(path)
    if declared and decoded_seconds < _MIN_DECODED_SHARE * declared:
        raise TokenttsError(
            f"{label}: truncated or corrupt file (decoded {decoded_seconds:.1f} s of the {declared:.1f} s it declares)"
        )


def declared_duration(path: Path) -> float | None:
    """The duration a file's header declares, in seconds, or None when it declares none."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _wav_declared_duration(head)
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return container.duration / av.time_base if container.duration else None
    except av.error.FFmpegError:
        return None


def _wav_declared_duration(head: bytes) -> float | None:
    # FFmpeg derives a WAV's duration from the file size, so read the data chunk's size from the header.
    position, byte_rate = 12, None
    while position + 8 <= len(head):
        chunk_id, size = head[position : position + 4], struct.unpack("<I", head[position + 4 : position + 8])[0]
        if chunk_id == b"fmt " and position + 20 <= len(head):
            byte_rate = struct.unpack("<I", head[position + 16 : position + 20])[0]
        elif chunk_id == b"data":
            # Streaming writers leave the size 0 or 0xFFFFFFFF: nothing is declared then.
            return size / byte_rate if byte_rate and 0 < size < 0xFFFFFFFF else None
        position += 8 + size + (size & 1)
    return None


def normalize_loudness(audio: np.ndarray, target_lufs: float = -23.0, peak_dbfs: float = -1.0) -> np.ndarray:
    """Scale to `target_lufs` integrated loudness (ITU-R BS.1770 via pyloudnorm), keeping peaks below `peak_dbfs`."""
    import pyloudnorm

    loudness = pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(audio)
    if not np.isfinite(loudness):  # silence, or shorter than one 400 ms gating block
        return audio
    gain = 10 ** ((target_lufs - loudness) / 20)
    peak = float(np.max(np.abs(audio))) * gain
    peak_limit = 10 ** (peak_dbfs / 20)
    if peak > peak_limit:
        gain *= peak_limit / peak
    return (audio * gain).astype(np.float32)
