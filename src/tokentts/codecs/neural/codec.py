"""`NeuralCodec`: a trained `CodecModel` behind the `Codec` interface, saved as a folder.

A codec folder holds `codec_config.json` (the `CodecModelConfig`) and `model.safetensors`
(weights and codebooks); `load_codec(path)` accepts that folder or a `train-codec` output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tokentts.codecs.neural.model import CodecModel, CodecModelConfig
from tokentts.config import building_directory, build_config, config_to_dict
from tokentts.errors import TokenttsError

CONFIG_FILE = "codec_config.json"
WEIGHTS_FILE = "model.safetensors"
CODEC_SUBDIR = "codec"  # where `train-codec` puts the final codec inside its output folder


class NeuralCodec:
    """The `Codec` protocol over a `CodecModel` (24 kHz, 25 frames/s by default)."""

    def __init__(self, model: CodecModel):
        self.model = model.eval()
        config = model.config
        self.sample_rate = config.sample_rate
        self.frame_rate = config.frame_rate
        self.num_codebooks = config.num_codebooks
        self.codebook_size = config.codebook_size

    def num_frames(self, num_samples: int) -> int:
        return -(-num_samples // self.model.config.samples_per_frame)

    @torch.inference_mode()
    def encode(self, wav: np.ndarray) -> torch.LongTensor:
        return self.encode_batch([wav])[0]

    @torch.inference_mode()
    def encode_batch(self, wavs: list[np.ndarray]) -> list[torch.LongTensor]:
        if not wavs:
            return []
        lengths = [len(w) for w in wavs]
        batch = torch.zeros(len(wavs), max(lengths))
        for row, wav in enumerate(wavs):
            batch[row, : len(wav)] = torch.from_numpy(np.asarray(wav, dtype=np.float32))
        codes = self.model.encode(batch, lengths)
        return [codes[row, :, : self.num_frames(n)].clone() for row, n in enumerate(lengths)]

    @torch.inference_mode()
    def decode(self, codes: torch.LongTensor) -> np.ndarray:
        if codes.ndim != 2 or codes.shape[0] > self.num_codebooks:
            raise ValueError(f"expected codes [{self.num_codebooks}, T], got {tuple(codes.shape)}")
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.model.decode(codes[None].long().cpu())[0].numpy()

    def save(self, path: Path) -> Path:
        """Write the codec folder atomically (a temporary sibling folder renamed at the end)."""
        return save_codec_model(self.model, path)


def save_codec_model(model: CodecModel, path: Path) -> Path:
    path = Path(path)
    with building_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config_to_dict(model.config), indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    return path


def load_codec_model(path: Path) -> CodecModel:
    path = Path(path)
    if (path / CODEC_SUBDIR / CONFIG_FILE).exists():
        path = path / CODEC_SUBDIR
    if not (path / CONFIG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
        raise TokenttsError(f"{path}: not a neural codec folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        values = json.loads((path / CONFIG_FILE).read_text())
    except ValueError as exc:
        raise TokenttsError(f"{path / CONFIG_FILE}: not valid JSON ({exc})") from None
    model = CodecModel(build_config(CodecModelConfig, values))
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    except RuntimeError as exc:
        raise TokenttsError(f"{path / WEIGHTS_FILE}: weights do not match {CONFIG_FILE} ({str(exc).splitlines()[0]})") from None
    return model.eval()


def load_codec(path: str | Path) -> NeuralCodec:
    """A trained neural codec from its folder (or a `train-codec` output folder)."""
    return NeuralCodec(load_codec_model(Path(path)))


