"""Load a CSM checkpoint (local folder or hub id) with an optional LoRA adapter, ready for inference."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoProcessor, CsmForConditionalGeneration, CsmProcessor

from tokentts.codecs.base import Codec
from tokentts.codecs.mimi import MimiCodec
from tokentts.codecs.neural import load_codec
from tokentts.errors import TokenttsError
from tokentts.model.prompt import FRAMES_PER_TOKEN_KEY, TextLayout

log = logging.getLogger(__name__)

# A model folder whose audio codec is not its own Mimi (`codec_model`) keeps that codec here, as a
# saved neural codec (see tokentts.training.pretrain); `codec_model` is then an unused placeholder.
MODEL_CODEC_SUBDIR = "codec"
# An adapter for a model with the aligned text layout carries its voice's speaking rate here.
SPEAKING_RATE_FILENAME = "speaking_rate.json"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: CsmForConditionalGeneration  # eval mode, on `device`, adapter (if any) merged in
    processor: CsmProcessor
    codec: Codec
    device: torch.device
    dtype: torch.dtype
    source: str  # path or hub id it came from

    @property
    def num_codebooks(self) -> int:
        return self.model.config.num_codebooks

    @property
    def max_positions(self) -> int:
        return self.model.config.max_position_embeddings


def pick_device(device: str | None = None) -> torch.device:
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise TokenttsError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise TokenttsError(f"device {device!r} requested but CUDA is not available")
        return chosen
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    if dtype:
        if dtype not in DTYPES:
            raise TokenttsError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On CPU, fp32: exact and supported everywhere. bf16 (dtype="bfloat16") halves the weight bytes
    # read per step and pays off on CPUs with native bf16 (AVX512-BF16 / AMX).
    return torch.float32


def check_tied_audio_embeddings(model: CsmForConditionalGeneration) -> None:
    """Early transformers 5.x left the depth decoder's audio embeddings random instead of tied."""
    backbone = model.backbone_model.embed_tokens.embed_audio_tokens.weight
    depth = model.depth_decoder.model.embed_tokens.weight
    if backbone.data_ptr() != depth.data_ptr() and not torch.equal(backbone, depth):
        raise TokenttsError(
            "the backbone and depth-decoder audio embeddings are not tied (known transformers 5.x loading bug); "
            "upgrade transformers or re-save the checkpoint"
        )


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def _apply_adapter(model: CsmForConditionalGeneration, adapter: Path, source: str) -> CsmForConditionalGeneration:
    from peft import PeftConfig, PeftModel, load_peft_weights, set_peft_model_state_dict

    if not (adapter / "adapter_config.json").is_file():
        raise TokenttsError(f"adapter {adapter} has no adapter_config.json (not a PEFT/LoRA adapter folder)")
    config = PeftConfig.from_pretrained(str(adapter))
    made_for = config.base_model_name_or_path or "an unknown base"
    # PeftModel.from_pretrained would silently skip weights whose names don't match this model;
    # loading them ourselves lets a mismatch fail loudly.
    try:
        peft_model = PeftModel(model, config)
        loaded = set_peft_model_state_dict(peft_model, load_peft_weights(str(adapter), device="cpu"))
    except (RuntimeError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenttsError(f"adapter {adapter} does not fit model {source} (made for {made_for}): {first_line}") from None
    if loaded.unexpected_keys:
        raise TokenttsError(f"adapter {adapter} does not fit model {source} (made for {made_for}): "
                            f"{len(loaded.unexpected_keys)} weights match no layer, e.g. {loaded.unexpected_keys[0]}")
    # Merged weights make inference exactly as fast as the base model.
    return peft_model.merge_and_unload()


def load_model(model: str | Path, adapter: str | Path | None = None, device: str | None = None,
               dtype: str | None = None) -> LoadedModel:
    """Load CSM + processor + codec; merge `adapter` (a PEFT LoRA folder) if given."""
    source = str(model)
    if not Path(source).expanduser().is_dir() and not _looks_like_hub_id(source):
        raise TokenttsError(f"model {source!r} is neither a folder nor a hub id like sesame/csm-1b")
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser())
    chosen_device = pick_device(device)
    chosen_dtype = pick_dtype(chosen_device, dtype)
    try:
        csm = CsmForConditionalGeneration.from_pretrained(source, dtype=chosen_dtype)
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise TokenttsError(f"cannot load model {source!r}: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(csm, CsmForConditionalGeneration) or not isinstance(processor, CsmProcessor):
        raise TokenttsError(f"{source!r} is not a CSM checkpoint")
    check_tied_audio_embeddings(csm)
    TextLayout.of(csm.config)  # an unknown or inconsistent text layout fails here, not at the first prompt
    if adapter is not None:
        adapter_path = Path(adapter).expanduser()
        if not adapter_path.is_dir():
            raise TokenttsError(f"adapter folder {adapter} does not exist")
        csm = _apply_adapter(csm, adapter_path, source)
        check_tied_audio_embeddings(csm)
        if (adapter_path / SPEAKING_RATE_FILENAME).is_file():
            rate = json.loads((adapter_path / SPEAKING_RATE_FILENAME).read_text())[FRAMES_PER_TOKEN_KEY]
            setattr(csm.config, FRAMES_PER_TOKEN_KEY, float(rate))
    csm = csm.to(chosen_device).eval()
    # A fine-tuned voice may bring its own codec (its decoder adapted to the voice); else the model's.
    codec_dirs = [Path(adapter).expanduser() / MODEL_CODEC_SUBDIR] if adapter is not None else []
    codec_dir = next((d for d in [*codec_dirs, Path(source) / MODEL_CODEC_SUBDIR] if d.is_dir()), None)
    codec = load_codec(codec_dir) if codec_dir else MimiCodec(csm.codec_model, num_codebooks=csm.config.num_codebooks)
    if codec.num_codebooks != csm.config.num_codebooks:
        raise TokenttsError(f"model {source!r} predicts {csm.config.num_codebooks} codebooks but its codec has {codec.num_codebooks}")
    log.debug("loaded %s on %s as %s", source, chosen_device, chosen_dtype)
    return LoadedModel(model=csm, processor=processor, codec=codec, device=chosen_device, dtype=chosen_dtype,
                       source=source)
