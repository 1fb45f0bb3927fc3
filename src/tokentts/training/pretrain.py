"""`pretrain(cfg)`: train a small CSM from scratch on a multi-speaker dataset, with any codec.

    codec (neural folder or Mimi) + sizes ──▶ OUTPUT.init/: a fresh random CSM folder (config, weights,
                                              byte-level tokenizer, processor, codec/)
    OUTPUT.init/ ──finetune(method="full")──▶ OUTPUT: a model folder for `load_model` / `tokentts generate`

Everything after the fresh folder is `finetune`: the same pre-tokenized data, losses, checkpoints
(`OUTPUT.checkpoints/`) and exact resume. `OUTPUT.init/` stays until the run completes, because a
resumed run rebuilds its model from it before loading the last checkpoint.

Codec and model must agree: the model predicts `num_codebooks` codes per frame, each from a
vocabulary of `codebook_size` codes plus CSM's special ids (csm-1b: 2048 + 3 = 2051). With Mimi the
codec is the model's own `codec_model`, as in csm-1b. With a neural codec, the codec is saved in the
model folder's `codec/` subfolder, where `load_model` finds it; `codec_model` is then a tiny random
Mimi placeholder, never run, kept only because `CsmForConditionalGeneration` always builds one.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import (
    CsmConfig,
    CsmForConditionalGeneration,
    CsmProcessor,
    EncodecFeatureExtractor,
    MimiModel,
    PreTrainedTokenizerFast,
    TrainerCallback,
)

from tokentts.codecs.neural import NeuralCodec, load_codec
from tokentts.codecs.neural.codec import CONFIG_FILE as NEURAL_CODEC_CONFIG
from tokentts.config import building_directory, write_config
from tokentts.errors import TokenttsError
from tokentts.model.loading import MODEL_CODEC_SUBDIR
from tokentts.model.prompt import (
    ALIGNED,
    CHARACTERS,
    ESPEAK_IPA,
    TEXT_FRONTEND_KEY,
    TEXT_POSITIONS,
    TEXT_POSITIONS_KEY,
)
from tokentts.model.tiny import CSM_CHAT_TEMPLATE, small_csm_config, tiny_mimi_config, tiny_tokenizer
from tokentts.training.config import FinetuneConfig
from tokentts.training.data import open_dataset
from tokentts.training.finetune import FinetuneResult, checkpoint_dir, finetune, last_checkpoint

log = logging.getLogger(__name__)

CONFIG_FILENAME = "pretrain_config.json"

# Settings of FinetuneConfig that describe adapting an existing model; pretraining has no CLI flags for them.
FINETUNE_ONLY = ("model", "method", "merge", "backend", "lora_rank", "lora_alpha", "lora_dropout", "use_rslora",
                 "lora_targets", "lora_models", "codec_decoder_steps", "prior_dataset")


@dataclass
class PretrainConfig(FinetuneConfig):
    """A `FinetuneConfig` (data, losses, optimisation, checkpoints, resume) whose base model is not
    loaded but built fresh from the codec and the sizes below."""

    codec: str = field(
        default="",
        metadata={"help": "a neural codec folder (`tokentts train-codec` output), or a Mimi checkpoint: folder or hub id (kyutai/mimi)"},
    )
    num_codebooks: int = field(
        default=0,
        metadata={"help": "codebooks the model predicts (0 = all of the codec's; only Mimi can use fewer)"},
    )
    hidden_size: int = field(default=256, metadata={"help": "backbone width"})
    num_layers: int = field(default=6, metadata={"help": "backbone transformer layers"})
    num_heads: int = field(default=4, metadata={"help": "backbone attention heads"})
    depth_hidden_size: int = field(default=192, metadata={"help": "depth-decoder width"})
    depth_layers: int = field(default=2, metadata={"help": "depth-decoder transformer layers"})
    depth_heads: int = field(default=4, metadata={"help": "depth-decoder attention heads"})
    max_positions: int = field(default=2048, metadata={"help": "longest prompt in frames (text tokens + audio frames)"})
    text_frontend: str = field(
        default=CHARACTERS,
        metadata={"help": "what the model reads: characters (UTF-8 bytes of the text) or espeak-ipa (eSpeak NG's "
                          "English IPA for it: spelling-free, learns faster on eSpeak speech)"},
    )
    text_positions: str = field(
        default=ALIGNED,
        metadata={"help": "RoPE positions of text: timed (spread over the audio it speaks by eSpeak NG's word "
                          "timings), aligned (spread evenly; learns in minutes) or sequential (csm-1b's; a small "
                          "model needs far more training to align text and audio)"},
    )
    # Defaults that differ from fine-tuning: all weights train, for many passes, at a higher rate.
    output_dir: Path = field(default=Path("pretrained"), metadata={"help": "where the trained model folder is written"})
    method: str = field(default="full", metadata={"help": "always full: every weight of a new model trains"})
    # The codec stays as trained: the base speaks many voices, adapting its decoder is for one voice.
    codec_decoder_steps: int = field(default=0, metadata={"help": "always 0 in pretraining"})
    epochs: float = field(default=20.0, metadata={"help": "passes over the training rows"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    depth_frame_fraction: float = field(
        default=1.0,
        metadata={"help": "share of audio frames the depth decoder is trained on (small models: all)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method != "full" or self.merge or self.backend != "transformers" or self.codec_decoder_steps:
            raise ValueError("pretraining trains every weight: method must be full, without merge or codec decoder "
                             "adaptation, on the transformers backend")
        sizes = (self.hidden_size, self.num_layers, self.num_heads, self.depth_hidden_size, self.depth_layers, self.depth_heads)
        if min(sizes) < 1 or self.num_codebooks < 0:
            raise ValueError("model sizes must be >= 1 and num_codebooks >= 0")
        if self.text_frontend not in (CHARACTERS, ESPEAK_IPA):
            raise ValueError(f"text_frontend must be {CHARACTERS} or {ESPEAK_IPA}")
        if self.text_positions not in TEXT_POSITIONS:
            raise ValueError(f"text_positions must be one of {', '.join(TEXT_POSITIONS)}")
        if self.hidden_size % self.num_heads or self.depth_hidden_size % self.depth_heads:
            raise ValueError("hidden_size and depth_hidden_size must be multiples of their head counts")


def init_dir(cfg: PretrainConfig) -> Path:
    """Where the freshly initialised model lives while it trains."""
    out = Path(cfg.output_dir)
    return out.with_name(out.name + ".init")


def open_codec(spec: str) -> NeuralCodec | MimiModel:
    """The codec named by `spec`: a neural codec (folder) or a Mimi model (folder or hub id)."""
    if not spec:
        raise TokenttsError("no codec given (--codec: a neural codec folder or a Mimi checkpoint such as kyutai/mimi)")
    path = Path(spec).expanduser()
    if (path / NEURAL_CODEC_CONFIG).is_file() or (path / "codec" / NEURAL_CODEC_CONFIG).is_file():
        return load_codec(path)
    try:
        return MimiModel.from_pretrained(spec).eval()
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenttsError(f"codec {spec!r} is neither a neural codec folder nor a Mimi checkpoint: {first_line}") from None


def csm_config(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerFast, num_codebooks: int, codebook_size: int,
               codec_config: dict) -> CsmConfig:
    """A CSM config sized by `cfg`, predicting `num_codebooks` codes from `codebook_size` per frame."""
    return small_csm_config(
        tokenizer, num_codebooks=num_codebooks, codebook_size=codebook_size,
        hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size, depth_hidden_size=cfg.depth_hidden_size, depth_layers=cfg.depth_layers,
        depth_heads=cfg.depth_heads, depth_kv_heads=cfg.depth_heads, depth_intermediate_size=4 * cfg.depth_hidden_size,
        rope={"rope_type": "default", "rope_theta": 10000.0}, codec_config=codec_config, max_positions=cfg.max_positions,
    )


def build_initial_model(cfg: PretrainConfig, out_dir: Path) -> Path:
    """Write a randomly initialised CSM folder for `cfg`'s codec and sizes (atomically)."""
    codec = open_codec(cfg.codec)
    tokenizer = tiny_tokenizer()  # bytes: any text, no download; the model learns spelling to sound itself
    if isinstance(codec, NeuralCodec):
        if cfg.num_codebooks not in (0, codec.num_codebooks):
            raise TokenttsError(f"the neural codec has {codec.num_codebooks} codebooks; the model must predict all of them")
        num_codebooks, codebook_size = codec.num_codebooks, codec.codebook_size
        codec_config = tiny_mimi_config(num_codebooks)  # the unused placeholder Mimi
        sample_rate = codec.sample_rate
    else:
        num_codebooks = cfg.num_codebooks or codec.config.num_quantizers
        if num_codebooks > codec.config.num_quantizers:
            raise TokenttsError(f"Mimi has {codec.config.num_quantizers} codebooks, --num-codebooks asks for {num_codebooks}")
        codebook_size, codec_config = codec.config.codebook_size, codec.config.to_dict()
        sample_rate = codec.config.sampling_rate
    torch.manual_seed(cfg.seed)
    config = csm_config(cfg, tokenizer, num_codebooks, codebook_size, codec_config)
    setattr(config, TEXT_POSITIONS_KEY, cfg.text_positions)  # saved in config.json; the speaking rate follows in training
    setattr(config, TEXT_FRONTEND_KEY, cfg.text_frontend)
    model = CsmForConditionalGeneration(config)
    if isinstance(codec, MimiModel):
        model.codec_model.load_state_dict(codec.state_dict())
    processor = CsmProcessor(
        feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=sample_rate, padding_value=0.0),
        tokenizer=tokenizer,
        chat_template=CSM_CHAT_TEMPLATE,
    )
    with building_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if isinstance(codec, NeuralCodec):
            codec.save(tmp / MODEL_CODEC_SUBDIR)
        write_config(cfg, tmp, CONFIG_FILENAME)
    parameters = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("codec_model."))
    log.info("initialised a %.1f M-parameter CSM (%d codebooks of %d) in %s", parameters / 1e6, num_codebooks,
             codebook_size, out_dir)
    return out_dir


def pretrain(cfg: PretrainConfig, callbacks: list[TrainerCallback] | None = None) -> FinetuneResult:
    """Build a fresh model (or, with `resume`, reuse the interrupted run's) and train all of it with `finetune`."""
    out, start = Path(cfg.output_dir), init_dir(cfg)
    if out.exists() and not cfg.overwrite:
        raise TokenttsError(f"{out} already exists (pass --overwrite to replace it)")
    if cfg.resume:
        if not (start / "config.json").is_file():
            raise TokenttsError(f"nothing to resume: no initial model in {start}")
        log.info("resuming the run that started from %s (its codec and sizes)", start)
    else:
        # Rebuilding the initial model under an interrupted run's checkpoints would make them unresumable.
        if not cfg.overwrite and last_checkpoint(cfg) is not None:
            raise TokenttsError(f"{checkpoint_dir(cfg)} holds an interrupted run: pass --resume to continue it or --overwrite to start over")
        open_dataset(cfg)  # bad data fails before a model is built
        state = PartialState(cpu=cfg.device == "cpu")  # under torchrun: one process builds, the others wait
        if state.is_main_process:
            build_initial_model(cfg, start)
        state.wait_for_everyone()
    result = finetune(dataclasses.replace(cfg, model=str(start)), callbacks=callbacks)
    if result.is_main_process:
        shutil.rmtree(start, ignore_errors=True)
    return result
