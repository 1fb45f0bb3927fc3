"""Settings of `tokentts serve`: model, address, limits, where voices live."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_data_dir() -> Path:
    """Where uploaded voices live unless --data-dir says otherwise ($XDG_DATA_HOME/tokentts/serve)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "tokentts" / "serve"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ServeConfig:
    model: str | None = field(default=None, metadata=_help("model folder or Hub id (default: the embedded base model)"))
    adapter: str | None = field(
        default=None, metadata=_help("LoRA adapter folder from `tokentts finetune`; served as the 'default' voice")
    )
    host: str = field(default="127.0.0.1", metadata=_help("address to listen on (0.0.0.0 exposes the server to the network)"))
    port: int = field(default=8000, metadata=_help("TCP port"))
    api_key: str | None = field(
        default=None, metadata=_help("require 'Authorization: Bearer KEY' on /v1 (default: $TOKENTTS_API_KEY, else no key)")
    )
    data_dir: Path = field(
        default_factory=default_data_dir, metadata=_help("folder for uploaded voices (voices/) and the resolved config")
    )
    device: str | None = field(default=None, metadata=_help("torch device (default: cuda if available, else cpu)"))
    dtype: str | None = field(default=None, metadata=_help("model dtype, e.g. float32, bfloat16"))
    max_seconds: float = field(default=20.0, metadata=_help("longest audio one request may generate, seconds"))
    max_input_chars: int = field(default=4096, metadata=_help("longest input text, characters (OpenAI's limit is 4096)"))
    max_queue: int = field(default=8, metadata=_help("requests that may wait behind the one generating; more get HTTP 429"))
    request_timeout: float = field(
        default=300.0, metadata=_help("seconds a request may take, waiting included; then 504 or a cut stream")
    )
    max_upload_mb: float = field(default=20.0, metadata=_help("largest voice upload, megabytes"))
    min_voice_seconds: float = field(default=1.0, metadata=_help("shortest reference clip for a voice, seconds"))
    # Every request in a voice runs its clip's frames through the model again, so long clips slow every answer.
    max_voice_seconds: float = field(default=20.0, metadata=_help("longest reference clip for a voice, seconds"))
    asr_model: str = field(
        default="turbo", metadata=_help("Whisper model that transcribes voices uploaded without a transcript")
    )

    def __post_init__(self) -> None:
        for name in ("max_seconds", "request_timeout", "max_upload_mb", "max_voice_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_input_chars < 1 or self.max_queue < 0 or not 0 <= self.min_voice_seconds <= self.max_voice_seconds:
            raise ValueError("max_input_chars >= 1, max_queue >= 0 and 0 <= min_voice_seconds <= max_voice_seconds")
        self.data_dir = Path(self.data_dir)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def voices_dir(self) -> Path:
        return self.data_dir / "voices"
