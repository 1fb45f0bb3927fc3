"""Training the neural codec: random crops of a voice dataset, spectral losses, checkpoints, resume.

Output folder of a run:

    config.json        resolved TrainCodecConfig
    checkpoint/        model + optimizer + progress, rewritten every `checkpoint_every` steps (resume from it)
    train_log.jsonl    averaged losses every `log_every` steps
    codec/             the trained codec (`load_codec(out)` reads it)
    report.json        held-out losses per number of codebooks, codebook usage, intelligibility
    samples/           a few held-out originals and their reconstructions
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tokentts.codecs.neural.codec import CODEC_SUBDIR, NeuralCodec, save_codec_model
from tokentts.codecs.neural.losses import SpectralLoss
from tokentts.codecs.neural.model import CodecModel, CodecModelConfig
from tokentts.codecs.neural.report import build_report, codebook_usage
from tokentts.codecs.neural.units import fit_centroids, nearest_units, whisper_features
from tokentts.config import building_directory, write_config, write_json_atomic
from tokentts.data.dataset import iter_audio_rows, load_voice_dataset
from tokentts.errors import TokenttsError

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoint"
_MODEL_DEFAULTS = CodecModelConfig()


@dataclass
class TrainCodecConfig:
    corpus: Path | None = field(
        default=None, metadata={"help": "voice dataset folder (e.g. from `tokentts synth-corpus` or `prepare`)"}
    )
    out: Path = field(default=Path("codec-run"), metadata={"help": "output folder (checkpoints, codec, report)"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/checkpoint instead of starting over"})
    # model
    num_codebooks: int = field(default=_MODEL_DEFAULTS.num_codebooks, metadata={"help": "residual codebooks (K)"})
    codebook_size: int = field(default=_MODEL_DEFAULTS.codebook_size, metadata={"help": "codes per codebook"})
    hidden_dim: int = field(default=_MODEL_DEFAULTS.hidden_dim, metadata={"help": "width of the encoder and decoder"})
    latent_dim: int = field(default=_MODEL_DEFAULTS.latent_dim, metadata={"help": "dimension of the quantized latents"})
    encoder_layers: int = field(default=_MODEL_DEFAULTS.encoder_layers, metadata={"help": "transformer blocks in the encoder"})
    decoder_layers: int = field(default=_MODEL_DEFAULTS.decoder_layers, metadata={"help": "transformer blocks in the decoder"})
    # optimisation
    max_minutes: float = field(default=30.0, metadata={"help": "stop after this much training time (summed over resumes)"})
    max_steps: int = field(default=20_000, metadata={"help": "stop after this many steps"})
    batch_size: int = field(default=8, metadata={"help": "crops per step"})
    segment_seconds: float = field(default=2.0, metadata={"help": "length of each training crop"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate (cosine decay to a tenth of it)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear learning-rate warm-up"})
    commitment_weight: float = field(default=0.5, metadata={"help": "weight of the commitment loss"})
    quantizer_dropout: float = field(
        default=0.3, metadata={"help": "share of steps that train with only the first k codebooks (random k)"}
    )
    whisper_units: bool = field(
        default=False,
        metadata={"help": "codebook 0 = k-means units of Whisper tiny.en's encoder features (what is said, not who "
                          "says it, as HuBERT units; Mimi distils its codebook 0 from WavLM for the same reason); "
                          "the learned codebooks code the rest. Encoding then runs Whisper too"},
    )
    log_every: int = field(default=25, metadata={"help": "steps between log lines"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints"})
    # report
    eval_clips: int = field(default=30, metadata={"help": "held-out clips for the report (never trained on)"})
    usage_clips: int = field(default=200, metadata={"help": "training clips encoded to measure codebook usage"})
    asr_model: str = field(default="bundled", metadata={"help": "Whisper model for the intelligibility report; 'none' skips it"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    # One thread by default: on a CPU shared with other jobs, torch's extra threads spin-wait for
    # each other and a step took 10x longer with 2 threads than with 1 (measured on a busy 2-core machine).
    threads: int = field(default=1, metadata={"help": "CPU threads for torch (more only help on an idle machine)"})

    def __post_init__(self) -> None:
        if self.corpus is None:
            raise ValueError("--corpus is required")
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ValueError("need at least one codebook of at least two codes")
        if self.batch_size < 1 or self.segment_seconds <= 0 or self.max_minutes <= 0 or self.max_steps < 1:
            raise ValueError("batch_size, segment_seconds, max_minutes and max_steps must be positive")
        if not 0 <= self.quantizer_dropout <= 1:
            raise ValueError("quantizer_dropout must be between 0 and 1")
        if self.whisper_units and self.num_codebooks < 2:
            raise ValueError("whisper_units needs at least two codebooks (units, then learned ones)")

    def model_config(self, unit_dim: int = 0) -> CodecModelConfig:
        return CodecModelConfig(
            unit_dim=unit_dim,
            hidden_dim=self.hidden_dim,
            latent_dim=self.latent_dim,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            num_codebooks=self.num_codebooks,
            codebook_size=self.codebook_size,
        )


@dataclass
class CorpusSplit:
    train: list[np.ndarray]
    held_out: list[np.ndarray]
    held_out_texts: list[str]


def load_corpus(path: Path, eval_clips: int, seed: int) -> CorpusSplit:
    """Every clip of a voice dataset in memory, with `eval_clips` random ones held out."""
    rows = list(iter_audio_rows(load_voice_dataset(path)))
    rows = [row for row in rows if len(row["audio"]) > 0]
    if len(rows) <= eval_clips:
        raise TokenttsError(f"{path}: {len(rows)} clips with audio; need more than the {eval_clips} held out")
    random.Random(seed).shuffle(rows)
    held_out, train = rows[:eval_clips], rows[eval_clips:]
    return CorpusSplit([r["audio"] for r in train], [r["audio"] for r in held_out], [r.get("text", "") for r in held_out])


def random_crops(clips: list[np.ndarray], count: int, length: int, rng: np.random.Generator,
                 step: int = 1) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """[count, length] crops of random clips at random offsets (multiples of `step` samples) and gains,
    short clips zero-padded; and each crop's (clip index, start sample)."""
    batch = np.zeros((count, length), dtype=np.float32)
    picks = []
    for row in range(count):
        index = int(rng.integers(len(clips)))
        clip = clips[index]
        start = int(rng.integers(max(1, (len(clip) - length) // step + 1))) * step
        piece = clip[start : start + length]
        batch[row, : len(piece)] = piece * rng.uniform(0.5, 1.0)  # level changes: the codec must not care
        picks.append((index, start))
    return torch.from_numpy(batch), picks


def clip_units(centroids: torch.Tensor, features: list[torch.Tensor], clips: list[np.ndarray],
               samples_per_frame: int) -> list[torch.Tensor]:
    """Each clip's Whisper units [frames], one per code frame."""
    return [nearest_units(centroids, f, -(-len(clip) // samples_per_frame)) for f, clip in zip(features, clips)]


def crop_units(units: list[torch.Tensor], picks: list[tuple[int, int]], frames: int, samples_per_frame: int) -> torch.LongTensor:
    """The units of each crop's frames [B, frames]; frames past a clip's end (zero padding) repeat its last unit."""
    rows = []
    for index, start in picks:
        piece = units[index][start // samples_per_frame : start // samples_per_frame + frames]
        rows.append(torch.cat([piece, piece[-1:].expand(frames - len(piece))]))
    return torch.stack(rows)


def learning_rate(config: TrainCodecConfig, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay to 10% over the run's progress (steps or time, whichever is further)."""
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    return config.learning_rate * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class TrainingState:
    step: int = 0
    seconds: float = 0.0  # training time so far, over all resumes


def save_checkpoint(out: Path, model: CodecModel, optimizer: torch.optim.Optimizer, state: TrainingState) -> None:
    with building_directory(out / CHECKPOINT_SUBDIR) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": state.step, "seconds": state.seconds}) + "\n")


def load_checkpoint(out: Path, model: CodecModel, optimizer: torch.optim.Optimizer) -> TrainingState:
    source = out / CHECKPOINT_SUBDIR
    if not (source / "state.json").exists():
        raise TokenttsError(f"--resume: no checkpoint in {out}")
    try:
        model.load_state_dict(load_file(str(source / "model.safetensors")))
    except RuntimeError:
        raise TokenttsError(f"--resume: the checkpoint in {out} was made with other model settings") from None
    optimizer.load_state_dict(torch.load(source / "optimizer.pt", weights_only=True))
    return TrainingState(**json.loads((source / "state.json").read_text()))


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (written after the checkpoint a run resumes from)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def train_step(
    model: CodecModel,
    loss_fn: SpectralLoss,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    num_codebooks: int | None,
    commitment_weight: float,
    units: torch.LongTensor | None = None,
) -> tuple[dict[str, float], torch.LongTensor]:
    """One optimisation step on `batch` [B, N] (with its Whisper units [B, T] for a unit codec);
    returns the loss terms and the codes [B, K', T]."""
    output = model(batch, num_codebooks, units)
    losses = loss_fn(output.audio, batch)
    loss = losses.total + commitment_weight * output.quantizer.commitment_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    terms = {"loss": loss, "stft": losses.stft, "mel": losses.mel, "commitment": output.quantizer.commitment_loss}
    return {name: float(value.detach()) for name, value in terms.items()}, output.quantizer.codes


def train_codec(config: TrainCodecConfig) -> Path:
    """Train (or resume), then save the codec and its report into `config.out`; returns the codec folder."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not config.resume:
        raise TokenttsError(f"{out} is not empty: pass --resume to continue that run, or choose another --out")
    corpus = load_corpus(Path(config.corpus), config.eval_clips, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_config(config, out)

    features = None
    if config.whisper_units:
        started = time.monotonic()
        shape = config.model_config()
        features = whisper_features(corpus.train, shape.sample_rate, shape.frame_rate)
        log.info("Whisper encoder features of %d clips in %.0f s", len(features), time.monotonic() - started)
    model = CodecModel(config.model_config(unit_dim=features[0].shape[1] if features else 0))
    if features is not None and not config.resume:  # a resumed run keeps the units of its checkpoint
        model.unit_centroids.copy_(fit_centroids(features, config.codebook_size, config.seed))
    loss_fn = SpectralLoss(model.front_end)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.8, 0.99))
    state = load_checkpoint(out, model, optimizer) if config.resume else TrainingState()
    truncate_log(out / "train_log.jsonl", state.step)
    units = None if features is None else clip_units(
        model.unit_centroids, features, corpus.train, model.config.samples_per_frame)
    rng = np.random.default_rng([config.seed, state.step])  # a resumed run draws new crops
    crop = round(config.segment_seconds * model.config.frame_rate) * model.config.samples_per_frame
    log.info(
        "training codec: %d clips (%.1f h), %d held out; %d x %d codes at %.1f frames/s; %.1f M parameters; from step %d",
        len(corpus.train), sum(map(len, corpus.train)) / model.config.sample_rate / 3600, len(corpus.held_out),
        config.num_codebooks, config.codebook_size, model.config.frame_rate,
        sum(p.numel() for p in model.parameters()) / 1e6, state.step,
    )

    model.train()
    totals: dict[str, float] = {}
    with (out / "train_log.jsonl").open("a") as train_log:
        while state.step < config.max_steps and state.seconds < config.max_minutes * 60:
            started = time.monotonic()
            progress = max(state.step / config.max_steps, state.seconds / (config.max_minutes * 60))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, state.step, progress)
            # With Whisper units, crops start on a frame so that the clip's units line up.
            batch, picks = random_crops(corpus.train, config.batch_size, crop, rng,
                                        model.config.samples_per_frame if units is not None else 1)
            crop_codes = None if units is None else crop_units(
                units, picks, crop // model.config.samples_per_frame, model.config.samples_per_frame)
            # Quantizer dropout: some steps decode from the first k codebooks only, so that
            # codebook 0 alone (and every prefix) already gives a usable reconstruction.
            num_codebooks = None
            if rng.random() < config.quantizer_dropout:
                num_codebooks = int(rng.integers(1, config.num_codebooks + 1))
            losses, codes = train_step(model, loss_fn, optimizer, batch, num_codebooks, config.commitment_weight,
                                       crop_codes)
            state.step += 1
            state.seconds += time.monotonic() - started
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value
            if state.step % config.log_every == 0:
                averages: dict[str, object] = {name: round(value / config.log_every, 4) for name, value in totals.items()}
                totals = {}
                # Code usage within this batch: a codebook collapsing onto few codes shows up here first.
                averages["perplexity"] = [row["perplexity"] for row in codebook_usage(list(codes), config.codebook_size)]
                train_log.write(json.dumps({"step": state.step, "seconds": round(state.seconds, 1), **averages}) + "\n")
                train_log.flush()
                summary = "  ".join(f"{name} {value}" for name, value in averages.items())
                log.info("step %d (%.1f min): %s", state.step, state.seconds / 60, summary)
            if state.step % config.checkpoint_every == 0:
                save_checkpoint(out, model, optimizer, state)
    save_checkpoint(out, model, optimizer, state)
    codec_dir = save_codec_model(model.eval(), out / CODEC_SUBDIR)
    training = {"steps": state.step, "minutes": round(state.seconds / 60, 2), "threads": config.threads}
    write_codec_report(model, corpus, config, out, training)
    return codec_dir


def write_codec_report(model: CodecModel, corpus: CorpusSplit, config: TrainCodecConfig, out: Path,
                       training: dict) -> Path:
    """OUT/report.json (and OUT/samples/) for a codec on a corpus's held-out clips."""
    report = build_report(
        NeuralCodec(model), SpectralLoss(model.front_end), corpus.held_out, corpus.held_out_texts,
        corpus.train[: config.usage_clips], out / "samples", config.asr_model,
    )
    report["training"] = training
    return write_json_atomic(out / "report.json", report)
