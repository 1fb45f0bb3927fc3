"""`finetune(cfg)`: pre-tokenize a voice dataset, train CSM with LoRA (or fully), write the result.

    dataset ──decode + codec, once──▶ cached codes ──tokenize, limits──▶ CsmTrainingDataset
    base CSM ──LoRA──▶ CsmTrainer (transformers Trainer: DDP via torchrun / accelerate launch)
             ──▶ OUTPUT: adapter (or merged weights), finetune_config.json, metrics.json, loss_curves.png

Checkpoints live beside the output in `OUTPUT.checkpoints/` until the run ends; `resume=True`
continues from the last one exactly (model, optimizer, scheduler, data order, RNG). The output
folder appears only when the run is complete.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from accelerate import PartialState
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from tokentts.codecs.mimi import MimiCodec
from tokentts.codecs.neural import NeuralCodec
from tokentts.codecs.neural.adapt import adapt_decoder
from tokentts.data.dataset import decode_audio_cell
from tokentts.config import building_directory, write_config, write_json_atomic
from tokentts.errors import TokenttsError
from tokentts.model.loading import MODEL_CODEC_SUBDIR, SPEAKING_RATE_FILENAME, load_model
from tokentts.model.prompt import FRAMES_PER_TOKEN_KEY, TextLayout, speaking_rate
from tokentts.training.config import FinetuneConfig
from tokentts.training.data import SPEAKER_COLUMNS, EncodedDataset, encode_dataset, open_dataset, speaker_id
from tokentts.training.examples import CsmTrainingDataset, TrainingClip, collate_frames, tokenize_clips
from tokentts.training.lora import load_unsloth, merged_model, prepare_for_training, trainable_parameters
from tokentts.training.trainer import CsmTrainer, plot_loss_curves, unwrap_csm

log = logging.getLogger(__name__)

CONFIG_FILENAME = "finetune_config.json"  # not config.json: a merged model's own config lives there
METRICS_FILENAME = "metrics.json"
PLOT_FILENAME = "loss_curves.png"


@dataclass
class FinetuneResult:
    output_dir: Path
    metrics: dict[str, Any]
    is_main_process: bool = True  # under torchrun every process returns; only the main one wrote the output


def checkpoint_dir(cfg: FinetuneConfig) -> Path:
    out = Path(cfg.output_dir)
    return out.with_name(out.name + ".checkpoints")


def last_checkpoint(cfg: FinetuneConfig) -> str | None:
    """The interrupted run's latest checkpoint, if it saved one (a run killed early leaves an empty folder)."""
    checkpoints = checkpoint_dir(cfg)
    return get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None


def _check_output(cfg: FinetuneConfig, state: PartialState) -> str | None:
    """The checkpoint to resume from, after refusing to clobber earlier work by accident."""
    out, checkpoints = Path(cfg.output_dir), checkpoint_dir(cfg)
    if out.exists() and not cfg.overwrite:
        raise TokenttsError(f"{out} already exists (pass --overwrite to replace it)")
    last = last_checkpoint(cfg)
    if cfg.resume:
        if last is None:
            raise TokenttsError(f"nothing to resume: no checkpoint in {checkpoints}")
        return last
    if last is not None and not cfg.overwrite:
        raise TokenttsError(f"{checkpoints} holds an interrupted run: pass --resume to continue it or --overwrite to start over")
    # A fresh run must not mix its checkpoints with an old run's (a later resume takes the highest step).
    if state.is_main_process:
        shutil.rmtree(checkpoints, ignore_errors=True)
    state.wait_for_everyone()
    return None


def _precision(cfg: FinetuneConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        if cfg.precision != "fp32" and device.type != "cuda":
            raise TokenttsError(f"--precision {cfg.precision} needs a CUDA GPU; use fp32 on {device.type}")
        return cfg.precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _optimizer_name(cfg: FinetuneConfig, device: torch.device) -> str:
    if cfg.optimizer == "adamw":
        return "adamw_torch"
    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        raise TokenttsError("--optimizer adamw_8bit needs CUDA and the bitsandbytes package; use --optimizer adamw")
    return "adamw_bnb_8bit"


def split_train_eval(clips: list[TrainingClip], eval_fraction: float, seed: int) -> tuple[list[TrainingClip], list[TrainingClip]]:
    """A seeded random hold-out: at least one eval clip when asked for one, at least one training clip."""
    if eval_fraction == 0 or len(clips) < 2:
        return clips, []
    order = np.random.default_rng(seed).permutation(len(clips))
    num_eval = min(max(1, round(eval_fraction * len(clips))), len(clips) - 1)
    held_out = set(order[:num_eval].tolist())
    return ([c for i, c in enumerate(clips) if i not in held_out], [c for i, c in enumerate(clips) if i in held_out])


def _load(cfg: FinetuneConfig, device: torch.device, precision: str):
    """(model ready to train, processor, codec)."""
    if cfg.backend == "unsloth":
        model, processor = load_unsloth(cfg)
        csm = unwrap_csm(model)
        return model, processor, MimiCodec(csm.codec_model, num_codebooks=csm.config.num_codebooks)
    # LoRA keeps the frozen base in the GPU's half precision (adapters stay fp32, peft's default);
    # full fine-tuning keeps fp32 master weights and trains under autocast.
    dtype = precision if cfg.method == "lora" and precision != "fp32" else "fp32"
    loaded = load_model(cfg.model, device=str(device), dtype=dtype)
    torch.manual_seed(cfg.seed)  # LoRA initialisation
    model = prepare_for_training(loaded.model, cfg)
    if cfg.gradient_checkpointing:
        unwrap_csm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, loaded.processor, loaded.codec


def _training_arguments(cfg: FinetuneConfig, device: torch.device, precision: str, optimizer: str,
                        has_eval: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(checkpoint_dir(cfg)),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup,
        lr_scheduler_type=cfg.scheduler,
        optim=optimizer,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        prediction_loss_only=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        report_to="none",
    )


def _drop_report(dropped: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in dropped.most_common())


class TrainingSets(NamedTuple):
    train: CsmTrainingDataset
    eval: CsmTrainingDataset | None
    dropped: Counter  # rows of the voice's dataset, by reason
    voice_clips: list[TrainingClip]  # the training clips of the voice itself (not of a prior dataset)


def build_datasets(cfg: FinetuneConfig, encoded: EncodedDataset, tokenizer: Any, csm_config: Any,
                   codebook_size: int, prior: EncodedDataset | None = None) -> TrainingSets:
    """Training and evaluation examples from the encoded clips (and a prior dataset's, for training only),
    with every dropped row counted by reason."""
    layout = TextLayout.of(csm_config)
    clips, text_dropped = tokenize_clips(encoded.clips, tokenizer, cfg.max_text_tokens, csm_config.max_position_embeddings,
                                         layout)
    dropped = encoded.dropped + text_dropped
    if not clips:
        raise TokenttsError(f"no usable rows: all {encoded.rows_total} rows were dropped ({_drop_report(dropped)})")
    if dropped:
        log.warning("dropped %d of %d rows: %s", sum(dropped.values()), encoded.rows_total, _drop_report(dropped))
    train_clips, eval_clips = split_train_eval(clips, cfg.eval_fraction, cfg.seed)
    prior_clips: list[TrainingClip] = []
    if prior is not None:
        prior_clips, prior_text_dropped = tokenize_clips(prior.clips, tokenizer, cfg.max_text_tokens,
                                                         csm_config.max_position_embeddings, layout)
        prior_dropped = prior.dropped + prior_text_dropped
        if not prior_clips:
            raise TokenttsError(f"no usable rows in prior dataset {cfg.prior_dataset}: all {prior.rows_total} were "
                                f"dropped ({_drop_report(prior_dropped)})")
        if prior_dropped:
            log.warning("prior dataset: dropped %d of %d rows: %s", sum(prior_dropped.values()), prior.rows_total,
                        _drop_report(prior_dropped))
    # Context clips come from the training split only, for the evaluation examples too.
    settings = dict(audio_token_id=csm_config.audio_token_id, audio_eos_token_id=csm_config.audio_eos_token_id,
                    depth_frame_fraction=cfg.depth_frame_fraction, context_probability=cfg.context_probability,
                    context_speaker_swap=cfg.context_speaker_swap, context_pool=train_clips + prior_clips,
                    prior_speakers={c.speaker for c in prior_clips} if prior is not None else None,
                    max_positions=csm_config.max_position_embeddings, seed=cfg.seed, aligned=layout.aligned)
    # Input noise only where the model learns: evaluation measures the loss on the real codes.
    return TrainingSets(CsmTrainingDataset(train_clips + prior_clips, input_code_noise=cfg.input_code_noise,
                                           codebook_size=codebook_size, **settings),
                        CsmTrainingDataset(eval_clips, **settings) if eval_clips else None, dropped, train_clips)


def open_prior_dataset(cfg: FinetuneConfig, voice: Any, voice_speaker_column: str | None) -> tuple[Any, str]:
    """The prior dataset and its speaker column, which it must have, with ids other than the voice's
    (`voice`: the voice's dataset): checked on the columns, before any audio is decoded."""
    source, speaker_column = open_dataset(dataclasses.replace(cfg, dataset=cfg.prior_dataset, speaker_column=None))
    if speaker_column is None:
        raise TokenttsError(f"prior dataset {cfg.prior_dataset} has no speaker column ({', '.join(SPEAKER_COLUMNS)})")
    voice_ids = {speaker_id(v) for v in voice[voice_speaker_column]} if voice_speaker_column else {"0"}
    shared = voice_ids & {speaker_id(v) for v in source[speaker_column]} - {None}
    if shared:
        raise TokenttsError(f"prior dataset {cfg.prior_dataset} uses the voice's speaker id "
                            f"{', '.join(sorted(shared, key=int))}: give its speakers other ids")
    return source, speaker_column


def finetune(cfg: FinetuneConfig, callbacks: list[TrainerCallback] | None = None) -> FinetuneResult:
    """Run a fine-tune as configured; returns where the result is and its metrics.

    `callbacks` are transformers `TrainerCallback`s added to the Trainer's (progress, logging)."""
    if not cfg.dataset:
        raise TokenttsError("no dataset given (--dataset DIR or hub id)")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TokenttsError("--device cuda requested but CUDA is not available")
    state = PartialState(cpu=cfg.device == "cpu")  # under torchrun / accelerate launch: this process's device
    resume_from = _check_output(cfg, state)
    precision = _precision(cfg, state.device)
    optimizer = _optimizer_name(cfg, state.device)
    # The main process downloads the dataset (a hub id) and encodes and caches its audio; the others then read the cache.
    with state.main_process_first():
        source, speaker_column = open_dataset(cfg)  # before loading the model: bad input fails fast
        prior_source = open_prior_dataset(cfg, source, speaker_column) if cfg.prior_dataset else None
    model, processor, codec = _load(cfg, state.device, precision)
    csm_config = unwrap_csm(model).config
    if cfg.trim_silence is None:
        # Text spread over the clip's frames expects speech from the first frame to the last.
        cfg = dataclasses.replace(cfg, trim_silence=TextLayout.of(csm_config).aligned)
    with state.main_process_first():
        encoded = encode_dataset(source, codec, cfg, speaker_column, state.device)
        prior = (encode_dataset(prior_source[0], codec, dataclasses.replace(cfg, dataset=cfg.prior_dataset),
                                prior_source[1], state.device) if prior_source else None)
    train_set, eval_set, dropped, voice_clips = build_datasets(cfg, encoded, processor.tokenizer, csm_config,
                                                               codec.codebook_size, prior)
    if train_set.aligned:
        # The voice's speaking rate, which places the text of new sentences (tokentts.model.prompt).
        rate = speaking_rate([(len(c.text_ids) - c.header_tokens - 1, c.codes.shape[1]) for c in voice_clips])
        setattr(csm_config, FRAMES_PER_TOKEN_KEY, round(rate, 4))

    trainer = CsmTrainer(
        model=model,
        args=_training_arguments(cfg, state.device, precision, optimizer, eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collate_frames,
        callbacks=callbacks,
        depth_loss_weight=cfg.depth_loss_weight,
    )
    eval_start = trainer.evaluate()["eval_loss"] if eval_set is not None and resume_from is None else None
    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started
    eval_end = trainer.evaluate()["eval_loss"] if eval_set is not None else None
    adaptation = None
    if isinstance(codec, NeuralCodec) and cfg.codec_decoder_steps and state.is_main_process:
        adaptation = adapt_decoder(codec, _training_audio(source, cfg, voice_clips), cfg.codec_decoder_steps,
                                   seed=cfg.seed)

    train_audio_seconds = sum(clip.codes.shape[1] for clip in train_set.clips) / codec.frame_rate
    # A resumed run's loss and time cover only the steps after its checkpoint (transformers names it checkpoint-STEP).
    resumed_from_step = int(Path(resume_from).name.rsplit("-", 1)[-1]) if resume_from else 0
    epochs_run = trainer.state.epoch * (1 - resumed_from_step / max(trainer.state.global_step, 1))
    trainable, total = trainable_parameters(model)
    metrics = {
        "train_loss": train_output.training_loss,
        "eval_loss_start": eval_start,
        "eval_loss": eval_end,
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_from_step,
        "epochs": trainer.state.epoch,
        "train_seconds": round(seconds, 2),
        "train_audio_seconds_per_second": round(train_audio_seconds * epochs_run / seconds, 3),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "data": {
            "rows": encoded.rows_total,
            "train_clips": len(train_set),
            "prior_clips": len(train_set) - len(voice_clips),  # of the train clips
            "eval_clips": len(eval_set) if eval_set is not None else 0,
            "train_audio_seconds": round(train_audio_seconds, 2),
            "dropped": dict(dropped),
            "codes_cache": str(encoded.cache_dir) if encoded.cache_dir else None,
            "codes_from_cache": encoded.from_cache,
        },
        "log_history": ([{"step": 0, "eval_loss": eval_start}] if eval_start is not None else []) + trainer.state.log_history,
    }
    if adaptation is not None:
        metrics["codec_decoder_adaptation"] = {"steps": adaptation.steps, "seconds": round(adaptation.seconds, 1),
                                               "loss_start": adaptation.loss_start, "loss_end": adaptation.loss_end}
    if state.is_main_process:
        _write_output(cfg, model, processor, metrics, adaptation.codec if adaptation else None)
    state.wait_for_everyone()
    return FinetuneResult(Path(cfg.output_dir), metrics, state.is_main_process)


def _training_audio(source: Any, cfg: FinetuneConfig, clips: list[TrainingClip], limit: int = 200) -> list[np.ndarray]:
    """Decoded audio of (up to `limit`, evenly spread) of the voice's training clips, for adapting the codec decoder."""
    rows = sorted({clip.row for clip in clips})
    rows = rows[:: max(1, len(rows) // limit)][:limit]
    return [decode_audio_cell(row[cfg.audio_column]) for row in source.select(rows)]


def _write_output(cfg: FinetuneConfig, model: torch.nn.Module, processor: Any, metrics: dict[str, Any],
                  adapted_codec: NeuralCodec | None = None) -> None:
    """Assemble the result in a temporary folder beside OUTPUT, then rename it into place."""
    out = Path(cfg.output_dir)
    with building_directory(out) as tmp:
        if cfg.merge or cfg.method == "full":
            merged_model(model).save_pretrained(tmp)
            processor.save_pretrained(tmp)
            # A base model with its own codec folder (not its Mimi) passes it on to the new full model.
            codec_dir = Path(cfg.model).expanduser() / MODEL_CODEC_SUBDIR
            if codec_dir.is_dir() and adapted_codec is None:
                shutil.copytree(codec_dir, tmp / MODEL_CODEC_SUBDIR)
        else:
            model.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors
            rate = getattr(unwrap_csm(model).config, FRAMES_PER_TOKEN_KEY, None)
            if rate:  # the base config is not saved with an adapter; load_model applies this file
                write_json_atomic(tmp / SPEAKING_RATE_FILENAME, {FRAMES_PER_TOKEN_KEY: rate})
        if adapted_codec is not None:  # load_model prefers it to the base model's codec
            adapted_codec.save(tmp / MODEL_CODEC_SUBDIR)
        write_config(cfg, tmp, filename=CONFIG_FILENAME)
        write_json_atomic(tmp / METRICS_FILENAME, metrics)
        plot_loss_curves(metrics["log_history"], tmp / PLOT_FILENAME)
    if not cfg.keep_checkpoints:
        shutil.rmtree(checkpoint_dir(cfg), ignore_errors=True)
    log.info("wrote %s (train loss %.3f%s)", out, metrics["train_loss"],
             f", eval loss {metrics['eval_loss_start']:.3f} -> {metrics['eval_loss']:.3f}" if metrics["eval_loss"] is not None
             and metrics["eval_loss_start"] is not None else "")
    if math.isnan(metrics["train_loss"]):
        log.warning("the training loss is NaN: lower --learning-rate or use --precision fp32")
