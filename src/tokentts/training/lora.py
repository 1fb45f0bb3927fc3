"""Which weights train: LoRA (peft) on the backbone and depth decoder, or all of them.

CSM also carries its codec (Mimi), whose transformer has its own `q_proj`/`k_proj`/... layers;
a plain list of module names would put adapters there too. The target pattern therefore names
the layers of the backbone and of the depth decoder only. The codec never trains.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tokentts.errors import TokenttsError
from tokentts.training.config import FinetuneConfig

log = logging.getLogger(__name__)

_SUBLAYER = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
_MODEL_PREFIX = {"backbone": "backbone_model", "depth_decoder": r"depth_decoder\.model"}


def lora_target_pattern(targets: list[str], models: list[str]) -> str:
    """A regex (peft full-matches it against module names) for `targets` in `models` (backbone, depth_decoder)."""
    names = "|".join(f"{_SUBLAYER[t]}\\.{t}" for t in targets)
    prefixes = "|".join(_MODEL_PREFIX[m] for m in models)
    return rf"({prefixes})\.layers\.\d+\.({names})"


def lora_config(cfg: FinetuneConfig) -> LoraConfig:
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, use_rslora=cfg.use_rslora,
                      target_modules=lora_target_pattern(cfg.lora_targets, cfg.lora_models), bias="none")


def give_depth_decoder_a_mask(model: torch.nn.Module) -> None:
    """Work around a transformers (5.24) crash when training CSM's depth decoder.

    Without a cache or an attention mask, the depth decoder's mask code looks for packed sequences
    in its 1-D position ids; when a micro-batch trains the depth decoder on exactly as many frames
    as it has positions (num_codebooks: 32 for csm-1b), the ids are not expanded to 2-D and
    `find_packed_sequence_indices` raises IndexError. An all-ones attention mask skips that path and
    changes nothing else (the mask stays purely causal). Generation passes a cache: untouched.
    """

    def add_mask(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("attention_mask") is None and kwargs.get("cache") is None:
            inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
            kwargs["attention_mask"] = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        return args, kwargs

    depth_model = model.depth_decoder.model
    if not getattr(depth_model, "_tokentts_mask_hook", False):
        depth_model.register_forward_pre_hook(add_mask, with_kwargs=True)
        depth_model._tokentts_mask_hook = True


def prepare_for_training(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.nn.Module:
    """LoRA-wrapped model (method lora) or the model with everything but the codec trainable (method full)."""
    model.codec_model.requires_grad_(False)
    give_depth_decoder_a_mask(model)
    if cfg.method == "full":
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith("codec_model."))
        return model
    return get_peft_model(model, lora_config(cfg))


def load_unsloth(cfg: FinetuneConfig):
    """(peft model, processor) through Unsloth's FastModel; only where unsloth and CUDA are present."""
    if not torch.cuda.is_available():
        raise TokenttsError("--backend unsloth needs a CUDA GPU")
    if importlib.util.find_spec("unsloth") is None:
        raise TokenttsError("--backend unsloth needs the unsloth package (pip install unsloth)")
    if cfg.method != "lora":
        raise TokenttsError("--backend unsloth supports --method lora only")
    from transformers import CsmForConditionalGeneration
    from unsloth import FastModel

    model, processor = FastModel.from_pretrained(cfg.model, auto_model=CsmForConditionalGeneration, dtype=None,
                                                 load_in_4bit=False, max_seq_length=2048)
    model = FastModel.get_peft_model(
        model, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
        use_rslora=cfg.use_rslora, target_modules=lora_target_pattern(cfg.lora_targets, cfg.lora_models),
        random_state=cfg.seed,
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
    )
    return model, processor


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def merged_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain CSM with LoRA weights folded in (the model itself after full fine-tuning)."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model
