"""Settings of `tokentts finetune`, one dataclass filled from flags or a config file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_MODELS = ["backbone", "depth_decoder"]


def check_lora_models(models: list[str]) -> None:
    if not models or set(models) - set(LORA_MODELS):
        raise ValueError(f"lora_models must name one or both of {', '.join(LORA_MODELS)}")


@dataclass
class FinetuneConfig:
    # --- input
    dataset: str = field(
        default="",
        metadata={"help": "dataset folder (from `tokentts prepare` or save_to_disk) or a Hugging Face hub id"},
    )
    output_dir: Path = field(
        default=Path("finetuned"),
        metadata={"help": "where the adapter (or merged model) is written"},
    )
    model: str = field(default="sesame/csm-1b", metadata={"help": "base CSM checkpoint: folder or hub id"})
    split: str = field(default="train", metadata={"help": "dataset split to train on"})
    audio_column: str = field(default="audio", metadata={"help": "column with the audio"})
    text_column: str = field(default="text", metadata={"help": "column with the transcript"})
    speaker_column: str | None = field(
        default=None,
        metadata={"help": "column with the speaker id (default: `source` or `speaker_id` if present, "
                          "else everyone is speaker 0)"},
    )
    # DreamBooth's prior preservation, for voices: trained on its voice alone, with a context clip in every
    # example, the adapter hard-wires that voice and a clip of it no longer adds anything (BENCHMARKS.md).
    prior_dataset: str | None = field(
        default=None,
        metadata={"help": "a dataset of other speakers (same columns, its own speaker ids) trained alongside, "
                          "every example with a context clip of its speaker, `context_speaker_swap` of them under "
                          "another of its ids: the adapter keeps taking the voice from a context clip"},
    )
    max_text_tokens: int = field(
        default=256,
        metadata={"help": "drop (and count) rows whose text is longer, in tokens"},
    )
    max_audio_seconds: float = field(default=30.0, metadata={"help": "drop (and count) rows whose audio is longer"})
    trim_silence: bool | None = field(
        default=None,
        metadata={"help": "cut each clip's silent start and end before encoding (default: on for models with "
                          "aligned or timed text positions, which spread the text over the whole clip)"},
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "share of rows held out for the evaluation loss (0 = none)"},
    )
    cache_dir: Path | None = field(
        default=None,
        metadata={"help": "where pre-tokenized codes are cached (default $TOKENTTS_CACHE or ~/.cache/tokentts)"},
    )
    encode_batch_seconds: float | None = field(
        default=None,
        metadata={"help": "seconds of (padded) audio per codec batch while pre-tokenizing (default: 60 on CUDA, 8 on CPU)"},
    )
    # --- training examples and loss
    context_probability: float = field(
        default=0.0,
        metadata={"help": "chance that another clip of the same speaker is put before the target (teaches cloning; "
                          "a prior dataset's examples always get one)"},
    )
    input_code_noise: float = field(
        default=0.0,
        metadata={"help": "share of codebook 1..K-1 codes of the audio frames the model *reads* replaced by random "
                          "codes (labels unchanged): the backbone then leans less on fine codes, which the depth "
                          "decoder only samples at generation time (small models)"},
    )
    context_speaker_swap: float = field(
        default=0.0,
        metadata={"help": "share of examples with a context in which both clips get another speaker's id, so "
                          "that the voice must come from the context audio (pretraining on many speakers; with "
                          "a prior dataset, only its examples, under its ids)"},
    )
    depth_frame_fraction: float = field(
        default=0.0625,
        metadata={"help": "share of audio frames the depth decoder is trained on (Sesame: 1/16; 1 = all)"},
    )
    depth_loss_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the depth-decoder loss against the backbone loss"},
    )
    # --- adapter
    method: str = field(
        default="lora",
        metadata={"help": "lora or full (all weights; small models)", "choices": ["lora", "full"]},
    )
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank r"})
    lora_alpha: float = field(
        default=32.0,
        metadata={"help": "LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)"},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA scaling"})
    lora_targets: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS),
        metadata={"help": "linear layers of the backbone and depth decoder that get LoRA"},
    )
    # The depth decoder renders a context clip's voice; left without LoRA it keeps doing so, and the
    # fine-tuned voice then takes its timbre from a clip (BENCHMARKS.md: the embedded model's demo).
    lora_models: list[str] = field(
        default_factory=lambda: list(LORA_MODELS),
        metadata={"help": "which transformers get LoRA: backbone, depth_decoder (default: both)"},
    )
    merge: bool = field(default=False, metadata={"help": "write merged full weights instead of an adapter"})
    backend: str = field(
        default="transformers",
        metadata={"help": "transformers, or unsloth (needs the unsloth package and CUDA)",
                  "choices": ["transformers", "unsloth"]},
    )
    codec_decoder_steps: int = field(
        default=400,
        metadata={"help": "with a neural codec (the embedded model's): steps adapting the codec's decoder to the "
                          "voice after training, codes unchanged (0 = off); saved with the output in codec/"},
    )
    # --- optimisation
    batch_size: int = field(default=2, metadata={"help": "clips per device per step"})
    grad_accum: int = field(
        default=4,
        metadata={"help": "gradient accumulation steps (virtual batch = batch_size x grad_accum x devices)"},
    )
    epochs: float = field(default=1.0, metadata={"help": "passes over the training rows"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; overrides epochs when > 0"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    warmup: float = field(default=0.03, metadata={"help": "warm-up steps (>= 1) or share of all steps (< 1)"})
    scheduler: str = field(
        default="linear",
        metadata={"help": "learning-rate schedule: linear, cosine, constant, constant_with_warmup, ..."},
    )
    optimizer: str = field(
        default="adamw",
        metadata={"help": "adamw, or adamw_8bit (needs bitsandbytes and CUDA)", "choices": ["adamw", "adamw_8bit"]},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    seed: int = field(
        default=0,
        metadata={"help": "seed for initialisation, data order, context and depth-frame choice"},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16 or fp16",
                  "choices": ["auto", "fp32", "bf16", "fp16"]},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in backward (less memory, slower)"},
    )
    device: str | None = field(
        default=None,
        metadata={"help": "cpu or cuda (default: cuda when available; under torchrun / accelerate launch "
                          "each process gets its own GPU)",
                  "choices": ["cpu", "cuda"]},
    )
    # --- bookkeeping
    logging_steps: int = field(default=10, metadata={"help": "log the training loss every N steps"})
    eval_steps: int = field(default=50, metadata={"help": "evaluation loss every N steps"})
    save_steps: int = field(default=100, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run from its last checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output folder"})
    keep_checkpoints: bool = field(
        default=False,
        metadata={"help": "keep the checkpoint folder after a successful run"},
    )

    def __post_init__(self) -> None:
        if not 0 < self.depth_frame_fraction <= 1:
            raise ValueError("depth_frame_fraction must be in (0, 1]")
        if not all(0 <= x <= 1 for x in (self.context_probability, self.context_speaker_swap, self.input_code_noise)):
            raise ValueError("context_probability, context_speaker_swap and input_code_noise must be in [0, 1]")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")
        if self.max_text_tokens < 3 or self.max_audio_seconds <= 0:
            raise ValueError("max_text_tokens must be >= 3 and max_audio_seconds > 0")
        counts = (self.batch_size, self.grad_accum, self.lora_rank, self.logging_steps, self.eval_steps, self.save_steps)
        if min(counts) < 1:
            raise ValueError("batch_size, grad_accum, lora_rank and the *_steps settings must be >= 1")
        if self.codec_decoder_steps < 0:
            raise ValueError("codec_decoder_steps must be >= 0")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {', '.join(unknown)}; choose from {', '.join(LORA_TARGETS)}")
        check_lora_models(self.lora_models)
