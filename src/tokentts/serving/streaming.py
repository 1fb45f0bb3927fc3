"""Encode audio chunk by chunk, so a response can leave while the speech is still being generated.

`tokentts.audio.encode_audio` encodes a whole clip; here one FFmpeg muxer (through PyAV) stays
open for the whole response and writes into a buffer that is emptied after every chunk. The
containers are the streamable ones: WAV gets FFmpeg's "unknown length" header (sizes
0xFFFFFFFF), MP3 and ADTS-AAC are frame sequences, Ogg pages are flushed every 100 ms, and FLAC's
total-length field stays 0 ("unknown"), all of which decoders accept.

    encoder = StreamEncoder("mp3", 24000, speed=1.25)
    for wav in chunks: send(encoder.write(wav))
    send(encoder.close())
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal, get_args

import av
import av.filter
import numpy as np

from tokentts.audio import encode_audio

# response_format -> (FFmpeg container, encoder, muxer options)
CONTAINERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "wav": ("wav", "pcm_s16le", {}),
    "flac": ("flac", "flac", {}),
    "mp3": ("mp3", "libmp3lame", {}),
    "aac": ("adts", "aac", {}),
    "opus": ("ogg", "libopus", {"page_duration": "100000"}),  # microseconds; the default buffers 1 s
}
# OpenAI's response formats; "pcm" is raw 16-bit little-endian samples.
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
MIN_SPEED, MAX_SPEED = 0.25, 4.0


class _Buffer:
    """A write-only, non-seekable file for the muxer; being non-seekable keeps it from rewriting headers."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def _tempo_steps(speed: float) -> list[float]:
    """Split a speed factor into atempo steps within [0.5, 2], the range where atempo sounds best."""
    count = max(1, math.ceil(abs(math.log2(speed)) - 1e-9))
    return [speed ** (1 / count)] * count


class _TempoFilter:
    """Changes speed without changing pitch (FFmpeg's atempo, WSOLA), chunk by chunk."""

    def __init__(self, sample_rate: int, speed: float):
        self.graph = av.filter.Graph()
        node = self.graph.add_abuffer(
            format="flt", sample_rate=sample_rate, layout="mono", time_base=Fraction(1, sample_rate)
        )
        for step in _tempo_steps(speed):
            tempo = self.graph.add("atempo", f"{step:.6f}")
            node.link_to(tempo)
            node = tempo
        node.link_to(self.graph.add("abuffersink"))
        self.graph.configure()
        self.sample_rate = sample_rate
        self.samples_in = 0

    def process(self, wav: np.ndarray | None) -> np.ndarray:
        """Push a chunk (None at the end) and return whatever output is ready."""
        if wav is None:
            self.graph.push(None)
        else:
            frame = av.AudioFrame.from_ndarray(wav.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self.samples_in
            self.samples_in += len(wav)
            self.graph.push(frame)
        out = []
        while True:
            try:
                out.append(self.graph.pull().to_ndarray().reshape(-1))
            except (av.BlockingIOError, av.EOFError):
                break
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class StreamEncoder:
    def __init__(self, fmt: str, sample_rate: int, speed: float = 1.0):
        if fmt not in RESPONSE_FORMATS:
            raise ValueError(f"unsupported response format {fmt!r}")
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}")
        self.fmt = fmt
        self.sample_rate = sample_rate
        self.tempo = _TempoFilter(sample_rate, speed) if speed != 1.0 else None
        self.samples_out = 0
        if fmt != "pcm":
            container, codec, options = CONTAINERS[fmt]
            self._buffer = _Buffer()
            self._container = av.open(self._buffer, mode="w", format=container, options=options)
            self._stream = self._container.add_stream(codec, rate=sample_rate, layout="mono")

    def write(self, wav: np.ndarray) -> bytes:
        """Encode one chunk of mono float32 audio; returns the bytes ready to send (may be empty)."""
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        return self._encode(self.tempo.process(wav) if self.tempo else wav)

    def close(self) -> bytes:
        """Flush the encoder and the container; returns the last bytes of the stream."""
        data = self._encode(self.tempo.process(None)) if self.tempo else b""
        if self.fmt == "pcm":
            return data
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return data + self._buffer.take()

    def _encode(self, wav: np.ndarray) -> bytes:
        if self.fmt == "pcm":
            return encode_audio(wav, self.sample_rate, "pcm") if len(wav) else b""
        if len(wav):
            frame = av.AudioFrame.from_ndarray(np.clip(wav, -1.0, 1.0).reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self.samples_out
            self.samples_out += len(wav)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._buffer.take()
