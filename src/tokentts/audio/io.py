"""Audio in and out without torchcodec: PyAV (FFmpeg) decodes, soundfile/PyAV encode.

All audio inside tokentts is a 1-D float32 numpy array in [-1, 1] plus a sample rate;
24 kHz (the CSM / Mimi rate) unless a function says otherwise.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from tokentts.config import write_bytes_atomic
from tokentts.errors import TokenttsError

SAMPLE_RATE = 24_000

# response formats -> (container, codec) for PyAV; wav/flac/pcm go through soundfile / raw bytes.
_AV_FORMATS = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac"), "m4a": ("ipod", "aac")}


def to_mono(wav: np.ndarray) -> np.ndarray:
    """(samples,) or (samples, channels) -> (samples,) float32 by averaging channels."""
    wav = np.asarray(wav, dtype=np.float32)
    return wav.mean(axis=1) if wav.ndim == 2 else wav


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (band-limited, exact rational ratio)."""
    wav = np.asarray(wav, dtype=np.float32)
    if orig_sr == target_sr:
        return wav
    g = math.gcd(int(orig_sr), int(target_sr))
    return resample_poly(wav, target_sr // g, orig_sr // g).astype(np.float32)


def decode_audio(data: bytes | str | Path, sample_rate: int = SAMPLE_RATE, name: str | None = None) -> np.ndarray:
    """Decode the audio stream of a file or of in-memory bytes to mono float32 at `sample_rate`.

    Video files work too (their first audio stream is used). Raises TokenttsError with one
    line for a missing, non-audio, or corrupt input.
    """
    label = name or (str(data) if isinstance(data, (str, Path)) else "audio data")
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise TokenttsError(f"{label}: no such file")
        if path.is_dir():
            raise TokenttsError(f"{label}: is a directory, not an audio file")
        source: object = str(path)
    else:
        source = io.BytesIO(data)
    chunks: list[np.ndarray] = []
    try:
        with av.open(source, metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise TokenttsError(f"{label}: contains no audio stream")
            stream = container.streams.audio[0]
            # Keep the channels through FFmpeg's resampler and average them here: its own
            # downmix scales stereo by 1/sqrt(2) instead of averaging.
            resampler = av.AudioResampler(format="fltp", rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
    except TokenttsError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise TokenttsError(f"{label}: cannot decode as audio ({exc.__class__.__name__}: {exc})") from None
    if not chunks:
        raise TokenttsError(f"{label}: no audio could be decoded (empty or truncated file)")
    wav = np.concatenate(chunks).astype(np.float32)
    if not np.isfinite(wav).all():
        raise TokenttsError(f"{label}: decoded audio contains invalid samples")
    return wav


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any audio or video file FFmpeg understands as mono float32 at `sample_rate`."""
    return decode_audio(Path(path), sample_rate=sample_rate)


def encode_audio(wav: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """Encode mono float32 audio as wav (16-bit), flac, mp3, opus (ogg), aac, or raw 16-bit pcm."""
    wav = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if fmt == "pcm":
        return (wav * 32767.0).astype("<i2").tobytes()
    if fmt in ("wav", "flac"):
        buf = io.BytesIO()
        sf.write(buf, wav, sample_rate, format=fmt.upper(), subtype="PCM_16")
        return buf.getvalue()
    if fmt not in _AV_FORMATS:
        raise TokenttsError(f"unsupported audio format {fmt!r}; choose one of wav, flac, pcm, {', '.join(_AV_FORMATS)}")
    container_fmt, codec = _AV_FORMATS[fmt]
    # Opus only takes 48/24/16/12/8 kHz; mp3 takes the usual rates including 24 kHz.
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container_fmt) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(wav.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def write_audio(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write audio atomically; the format follows the extension (.wav, .flac, .mp3, .opus, .ogg)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "wav"
    fmt = {"ogg": "opus"}.get(fmt, fmt)
    return write_bytes_atomic(path, encode_audio(wav, sample_rate, fmt))
