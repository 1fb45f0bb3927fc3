"""`tokentts build-base`: the recipe of the embedded base model, from nothing to packaged weights.

    synth-corpus (40 eSpeak voices) ─▶ train-codec ─▶ codec ┐   (--codec: reuse one, report on it)
    synth-corpus (same voices, more sentences) ─────────────┴▶ pretrain (timed CSM) ─▶ model
    (--flite-voices: Flite's voices join both corpora as more speakers)
    model ─▶ continue training (full fine-tune, a second cosine schedule; optional) ─▶ model-continued
    corpus + speakers shifted from the Flite voices ─▶ voices-corpus ─▶ voices phase (more cloning
                   examples; optional) ─▶ model-voices
    model-continued + model-voices ─▶ weight average (--voices-share) ─▶ model-averaged
    final model ─▶ its sampling defaults (generation_config.json) ─▶ evaluate on held-out sentences,
                   against eSpeak's own recordings of them ─▶ report
    model + report ─▶ package: float16 weights + model card (README.md) [─▶ --install into the package]

Each stage writes its own folder under WORK and is skipped when that folder is complete, so a
recipe that stopped continues where it was (codec training and pretraining resume from their
last checkpoints). Wall times per stage go to WORK/timings.json and into the model card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokentts.audio.synth import check_flite_voices
from tokentts.data.synthetic import check_pitches_known
from tokentts.config import add_config_arguments, config_from_args, write_config, write_json_atomic
from tokentts.model.prompt import CHARACTERS, ESPEAK_IPA, TEXT_POSITIONS

if TYPE_CHECKING:  # the codec stack (torch) is imported only when a stage runs
    from tokentts.codecs.neural.train import TrainCodecConfig

log = logging.getLogger(__name__)

# The intelligibility bar of the embedded model: its WER at most this much above the WER of
# eSpeak's own recordings of the same sentences (same ASR model).
WER_MARGIN = 0.20


@dataclass
class BaseModelConfig:
    work: Path = field(default=Path("base-model-run"), metadata={"help": "folder for every stage's output"})
    install: bool = field(default=False, metadata={"help": "also write the packaged model into this installation "
                                                           "(tokentts/model/embedded), where commands find it"})
    speakers: int = field(default=40, metadata={"help": "eSpeak speakers (accent, variant, pitch, rate)"})
    # eSpeak's voices are all far from a natural one (BENCHMARKS.md: cloning Piper Joe needs voices near his).
    flite_voices: list[str] = field(default_factory=lambda: ["awb", "rms", "slt", "kal16"], metadata={
        "help": "Flite voices (recordings of real speakers; apt-get install flite) added to both corpora as "
                "speakers after the eSpeak ones (none: flite_voices = [] in a --config file)"})
    codec_clips_per_speaker: int = field(default=50, metadata={"help": "sentences per speaker for the codec"})
    clips_per_speaker: int = field(default=200, metadata={"help": "sentences per speaker for the model"})
    codec_minutes: float = field(default=29.0, metadata={"help": "codec training time"})
    # Units: a speaker-invariant codebook 0, so a model reads in voices it has not heard (BENCHMARKS.md, b13).
    codec_whisper_units: bool = field(default=True, metadata={"help": "the codec's codebook 0 = Whisper units "
                                                                        "(see tokentts train-codec --help)"})
    codec_codebook_size: int = field(default=256, metadata={"help": "codes per codebook (and Whisper units, with "
                                                                      "--codec-whisper-units)"})
    codec: Path | None = field(default=None, metadata={"help": "a trained codec folder (train-codec's codec/) to use "
                                                              "instead of training one; it is still reported on"})
    codec_eval_clips: int = field(default=30, metadata={"help": "codec-corpus clips held out for the codec's report"})
    text_frontend: str = field(default=CHARACTERS, metadata={"help": "what the model reads: characters or espeak-ipa"})
    text_positions: str = field(default="timed", metadata={"help": "text positions: aligned, timed or sequential "
                                                                     "(see tokentts pretrain --help)"})
    steps: int = field(default=1200, metadata={"help": "pretraining optimizer steps"})
    continue_steps: int = field(default=1800, metadata={"help": "steps of a second training phase on the same "
                                                              "corpus after pretraining (0 = none)"})
    continue_learning_rate: float = field(default=3e-4, metadata={"help": "peak learning rate of that phase"})
    batch_size: int = field(default=16, metadata={"help": "pretraining clips per step"})
    context_probability: float = field(default=0.5, metadata={"help": "share of examples with a voice context"})
    context_speaker_swap: float = field(default=0.5, metadata={"help": "share of those under another speaker's id "
                                                                        "(teaches cloning from the context)"})
    input_code_noise: float = field(default=0.4, metadata={"help": "share of the input's fine codes made random "
                                                                    "(see tokentts finetune --help)"})
    # Four recorded voices are too few to learn cloning from; shifted, they become families of voices.
    voices_steps: int = field(default=800, metadata={
        "help": "steps of the voices phase after the continuation: the corpus plus speakers shifted from the "
                "Flite voices, more examples with a context clip (0 = no voices phase)"})
    shifted_speakers_per_voice: int = field(default=10, metadata={
        "help": "voices phase: speakers made from each Flite voice by shifting its vocal tract and pitch"})
    shifted_clips_per_speaker: int = field(default=60, metadata={"help": "voices phase: sentences each shifted "
                                                                         "speaker says"})
    voices_learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate of the voices phase"})
    voices_context_probability: float = field(default=0.6, metadata={"help": "context_probability of that phase"})
    voices_context_speaker_swap: float = field(default=0.7, metadata={"help": "context_speaker_swap of that phase"})
    # The voices phase costs some reading; the average of the two phases' weights reads as the
    # continuation did and keeps part of the voices phase's cloning (BENCHMARKS.md, "Averaging the two phases").
    voices_share: float = field(default=0.5, metadata={
        "help": "share of the voices phase in the shipped weights, the rest the continuation's "
                "(1 = the voices phase as trained)"})
    # The depth decoder renders a context's voice: averaged, one demo reference no longer cloned (BENCHMARKS.md).
    voices_depth_share: float = field(default=1.0, metadata={
        "help": "share of the voices phase in the depth decoder's weights (its other weights: --voices-share)"})
    learning_rate: float = field(default=1e-3, metadata={"help": "pretraining peak learning rate (cosine)"})
    hidden_size: int = field(default=256, metadata={"help": "backbone width"})
    num_layers: int = field(default=6, metadata={"help": "backbone layers"})
    # With units in codebook 0 the depth decoder carries the voice and much of the phone: it is the bottleneck.
    depth_hidden_size: int = field(default=256, metadata={"help": "depth-decoder width"})
    depth_layers: int = field(default=3, metadata={"help": "depth-decoder layers"})
    temperature: float = field(default=0.6, metadata={"help": "codebook-0 sampling temperature, written into the "
                                                              "model's generation_config.json (its default)"})
    depth_temperature: float = field(default=0.1, metadata={"help": "depth-decoder sampling temperature, written "
                                                                    "there too"})
    # 30: with 10, the base's WER interval was 0.33 wide (single Whisper repetition loops swing the mean).
    eval_sentences: int = field(default=30, metadata={"help": "held-out sentences in the model card's evaluation"})
    # 4: with 2, two draws of the shipped model differed by 0.045 in WER, more than the bar's margin.
    samples_per_sentence: int = field(default=4, metadata={"help": "samples per sentence and condition"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda (pretraining); the recipe runs on CPU"})
    seed: int = field(default=0, metadata={"help": "seed of voices, sentences and training"})

    @property
    def averaged(self) -> bool:
        """Whether the shipped weights average the voices phase with the continuation."""
        return self.voices_share < 1 or self.voices_depth_share < 1

    @property
    def voices_phase(self) -> bool:
        return self.shifted_speakers_per_voice > 0 and self.voices_steps > 0

    def __post_init__(self) -> None:
        if min(self.speakers, self.steps, self.eval_sentences, self.samples_per_sentence) < 1 or self.continue_steps < 0:
            raise ValueError("speakers, steps, eval_sentences and samples_per_sentence must be at least 1 "
                             "(continue_steps at least 0)")
        # Settings the pretraining stage checks too, checked here so a bad one fails before hours of corpus and codec.
        if self.text_frontend not in (CHARACTERS, ESPEAK_IPA) or self.text_positions not in TEXT_POSITIONS:
            raise ValueError(f"text_frontend must be {CHARACTERS} or {ESPEAK_IPA}, text_positions one of "
                             f"{', '.join(TEXT_POSITIONS)}")
        shares = (self.context_probability, self.context_speaker_swap, self.input_code_noise,
                  self.voices_context_probability, self.voices_context_speaker_swap)
        if not all(0 <= x <= 1 for x in shares):
            raise ValueError("context_probability, context_speaker_swap, input_code_noise and the voices phase's "
                             "context settings must be in [0, 1]")
        if not (0 < self.voices_share <= 1 and 0 < self.voices_depth_share <= 1):
            raise ValueError("voices_share and voices_depth_share must be in (0, 1]")
        if self.voices_phase and self.averaged and not self.continue_steps:
            raise ValueError("voices_share or voices_depth_share < 1 averages the voices phase with the continuation: "
                             "give --continue-steps, or both shares 1")
        if min(self.shifted_speakers_per_voice, self.voices_steps) < 0 or self.shifted_clips_per_speaker < 1:
            raise ValueError("shifted_speakers_per_voice and voices_steps must be at least 0, "
                             "shifted_clips_per_speaker at least 1")
        if self.voices_phase and not self.flite_voices:
            raise ValueError("the voices phase shifts Flite voices: give --flite-voices, or --voices-steps 0")
        if min(self.temperature, self.depth_temperature) <= 0:
            raise ValueError("temperature and depth_temperature must be > 0")
        check_flite_voices(self.flite_voices)
        if self.voices_phase:
            check_pitches_known(self.flite_voices)
        if self.codec is not None and not (Path(self.codec) / "codec_config.json").is_file():
            raise ValueError(f"codec {self.codec} is not a codec folder (no codec_config.json)")


def _stage_done(path: Path, marker: str) -> bool:
    return (path / marker).is_file()


class _Timings:
    """Wall time of each stage, kept in WORK/timings.json across resumed runs."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, stage: str, work) -> Any:
        print(f"[{stage}] ...", flush=True)
        started = time.perf_counter()
        result = work()
        self.values[stage] = round(self.values.get(stage, 0.0) + time.perf_counter() - started, 1)
        write_json_atomic(self.path, self.values)
        print(f"[{stage}] done in {self.values[stage] / 60:.1f} min", flush=True)
        return result


def shifted_voices_sentence_start(config: BaseModelConfig) -> int:
    """Where the shifted speakers' sentences start in the grammar's order: past both corpora's and the
    held-out evaluation's (the shipped build's 8,800: its speakers, Flite's counted, x clips each)."""
    return max((config.speakers + len(config.flite_voices)) * config.clips_per_speaker,
               config.speakers * max(config.clips_per_speaker, config.codec_clips_per_speaker) + config.eval_sentences + 1)


def held_out_sentences(config: BaseModelConfig) -> list[str]:
    """Sentences of the corpus grammar that neither corpus contains (the corpora use the first ones)."""
    from tokentts.data.synthetic import synthetic_sentences

    used = config.speakers * max(config.clips_per_speaker, config.codec_clips_per_speaker)
    return synthetic_sentences(used + config.eval_sentences + 1, config.seed)[used:]


def build_base_model(config: BaseModelConfig) -> Path:
    """Run (or continue) the recipe; returns the packaged model folder."""
    from tokentts.codecs.neural.train import TrainCodecConfig, train_codec
    from tokentts.data.synthetic import (SyntheticCorpusConfig, shifted_flite_clips, write_corpus_with_shifted_speakers,
                                         write_synthetic_corpus)
    from tokentts.generation.engine import write_model_sampling
    from tokentts.training.config import FinetuneConfig
    from tokentts.training.finetune import finetune, last_checkpoint
    from tokentts.training.pretrain import PretrainConfig, pretrain

    work = Path(config.work)
    work.mkdir(parents=True, exist_ok=True)
    write_config(config, work, "build_base_config.json")
    timings = _Timings(work / "timings.json")

    corpora = {"codec-corpus": config.codec_clips_per_speaker, "corpus": config.clips_per_speaker}
    for name, clips in corpora.items():
        if not _stage_done(work / name, "dataset_info.json"):
            timings.run(name, lambda: write_synthetic_corpus(SyntheticCorpusConfig(
                out=work / name, speakers=config.speakers, clips_per_speaker=clips, flite_voices=config.flite_voices,
                flite_clips_per_voice=clips, seed=config.seed)))

    codec_run = work / "codec-run"
    codec_config = TrainCodecConfig(corpus=work / "codec-corpus", out=codec_run, max_minutes=config.codec_minutes,
                                    whisper_units=config.codec_whisper_units, codebook_size=config.codec_codebook_size,
                                    eval_clips=config.codec_eval_clips,
                                    seed=config.seed)
    if config.codec is not None:
        if not _stage_done(codec_run, "report.json"):
            timings.run("codec-report", lambda: report_reused_codec(Path(config.codec), codec_config))
    elif not _stage_done(codec_run / "codec", "codec_config.json"):
        codec_config.resume = codec_run.is_dir() and any(codec_run.iterdir())
        timings.run("train-codec", lambda: train_codec(codec_config))

    pretrain_config = PretrainConfig(
        dataset=str(work / "corpus"), codec=str(config.codec or codec_run / "codec"), output_dir=work / "model",
        cache_dir=work / "cache", eval_fraction=0.0, batch_size=config.batch_size, grad_accum=1,
        max_steps=config.steps, learning_rate=config.learning_rate, warmup=60, scheduler="cosine",
        depth_frame_fraction=0.5, context_probability=config.context_probability,
        context_speaker_swap=config.context_speaker_swap, input_code_noise=config.input_code_noise,
        logging_steps=10, save_steps=200, save_total_limit=2,
        hidden_size=config.hidden_size, num_layers=config.num_layers, depth_hidden_size=config.depth_hidden_size,
        depth_layers=config.depth_layers, text_frontend=config.text_frontend,
        text_positions=config.text_positions, device=config.device, seed=config.seed,
        # eSpeak's clips have no silent edges to cut (about 10 ms); left as they are, the codes (and
        # their cache) are those the shipped model was trained on.
        trim_silence=False,
    )
    if not _stage_done(work / "model", "config.json"):
        pretrain_config.resume = last_checkpoint(pretrain_config) is not None
        timings.run("pretrain", lambda: pretrain(pretrain_config))

    final = work / "model"
    # Later phases train all weights on a second (lower) cosine schedule: plain `finetune`.
    shared = {f.name: getattr(pretrain_config, f.name) for f in dataclasses.fields(FinetuneConfig)}
    if config.continue_steps:
        # The same data and settings.
        continued = FinetuneConfig(**{**shared, "model": str(final), "output_dir": work / "model-continued",
                                      "max_steps": config.continue_steps, "learning_rate": config.continue_learning_rate,
                                      "warmup": 20, "resume": False})
        final = work / "model-continued"
        if not _stage_done(final, "config.json"):
            continued.resume = last_checkpoint(continued) is not None
            timings.run("continue", lambda: finetune(continued))

    if config.voices_phase:
        # The corpus and the shifted Flite speakers, more examples with a context, more of them under
        # another speaker's id, and another data order.
        voices_corpus = work / "voices-corpus"
        if not _stage_done(voices_corpus, "dataset_info.json"):
            timings.run("voices-corpus", lambda: write_corpus_with_shifted_speakers(work / "corpus", voices_corpus,
                                                                                    shifted_flite_clips(
                config.flite_voices, config.shifted_speakers_per_voice, config.shifted_clips_per_speaker,
                first_speaker=config.speakers + len(config.flite_voices),
                first_sentence=shifted_voices_sentence_start(config), seed=config.seed)))
        voices = FinetuneConfig(**{**shared, "dataset": str(voices_corpus), "model": str(final),
                                   "output_dir": work / "model-voices", "max_steps": config.voices_steps,
                                   "learning_rate": config.voices_learning_rate, "warmup": 20,
                                   "context_probability": config.voices_context_probability,
                                   "context_speaker_swap": config.voices_context_speaker_swap,
                                   "seed": config.seed + 1, "resume": False})
        if not _stage_done(work / "model-voices", "config.json"):
            voices.resume = last_checkpoint(voices) is not None
            timings.run("voices", lambda: finetune(voices))
        final = work / "model-voices"
        if config.averaged:
            final = work / "model-averaged"
            if not _stage_done(final, "config.json"):
                timings.run("average", lambda: average_models(work / "model-continued", work / "model-voices",
                                                              config.voices_share, final,
                                                              depth_decoder_share=config.voices_depth_share))

    # The sampling the model is evaluated with becomes its default wherever it is used.
    write_model_sampling(final, {"temperature": config.temperature, "depth_temperature": config.depth_temperature})
    if not _stage_done(work / "evaluation", "report.json"):
        timings.run("evaluate", lambda: evaluate_base(config, final, work / "evaluation"))

    return timings.run("package", lambda: package(config, work, final, timings.values))


def average_models(first: Path, second: Path, share_of_second: float, target: Path,
                   depth_decoder_share: float | None = None) -> Path:
    """`second`'s model folder with every weight (1 - share) x `first`'s + share x `second`'s, the depth
    decoder's with `depth_decoder_share` when given: two phases of one training run lie close enough
    for their average to keep what each learned."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from tokentts.config import building_directory
    from tokentts.errors import TokenttsError
    from tokentts.model.embedded import WEIGHTS_FILE

    first_weights = load_file(str(Path(first) / WEIGHTS_FILE))
    second_weights = load_file(str(Path(second) / WEIGHTS_FILE))
    if first_weights.keys() != second_weights.keys() or any(
            first_weights[name].shape != tensor.shape for name, tensor in second_weights.items()):
        raise TokenttsError(f"{first} and {second} are not the same architecture: their weights differ")

    def share(name: str) -> float:
        if depth_decoder_share is not None and name.startswith("depth_decoder."):
            return depth_decoder_share
        return share_of_second

    averaged = {name: torch.lerp(first_weights[name].float(), tensor.float(), share(name)).to(tensor.dtype)
                for name, tensor in second_weights.items()}
    with building_directory(Path(target)) as tmp:
        shutil.copytree(second, tmp, dirs_exist_ok=True)
        save_file(averaged, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    return Path(target)


def report_reused_codec(codec_dir: Path, codec_config: TrainCodecConfig) -> Path:
    """The codec report of a codec this run did not train, on this run's held-out codec clips."""
    from tokentts.codecs.neural.codec import load_codec_model
    from tokentts.codecs.neural.train import load_corpus, write_codec_report

    out = Path(codec_config.out)
    corpus = load_corpus(Path(codec_config.corpus), codec_config.eval_clips, codec_config.seed)
    out.mkdir(parents=True, exist_ok=True)
    return write_codec_report(load_codec_model(codec_dir).eval(), corpus, codec_config, out, {"reused": str(codec_dir)})


def evaluate_base(config: BaseModelConfig, model_dir: Path, out: Path) -> Path:
    """Held-out sentences spoken by the base model (speaker 0, with and without a clip of its voice
    as context) and by eSpeak in that speaker's voice, all scored with the bundled Whisper tiny.en."""
    from tokentts.audio import write_audio
    from tokentts.audio.synth import synthesize_espeak
    from tokentts.data.synthetic import synthetic_speakers
    from tokentts.evaluation.report import write_reports
    from tokentts.evaluation.runner import EvaluateConfig, evaluate

    voice = synthetic_speakers(config.speakers, config.seed)[0]  # the voice of speaker "0" in the corpus
    reference_text, *sentences = held_out_sentences(config)
    inputs = out.with_name(out.name + "-inputs")
    inputs.mkdir(parents=True, exist_ok=True)
    write_audio(inputs / "reference.wav", synthesize_espeak(reference_text, voice))
    (inputs / "sentences.txt").write_text("\n".join(sentences) + "\n")
    recordings = [write_audio(inputs / f"espeak-{i:02d}.wav", synthesize_espeak(text, voice))
                  for i, text in enumerate(sentences)]
    report = evaluate(EvaluateConfig(
        model=str(model_dir), reference=inputs / "reference.wav", reference_text=reference_text,
        sentences=inputs / "sentences.txt", recordings=recordings, samples_per_sentence=config.samples_per_sentence,
        seed=config.seed, max_seconds=12.0, asr_model="bundled", device="cpu",
    ))
    return write_reports(report, out)


def package(config: BaseModelConfig, work: Path, model_dir: Path, timings: dict[str, float]) -> Path:
    from tokentts.model.embedded import EMBEDDED_MODEL_DIR, folder_megabytes, package_model

    card = model_card(config, work, model_dir, timings)
    packaged = package_model(model_dir, work / "package", card)
    size = folder_megabytes(packaged)
    print(f"packaged model: {packaged} ({size:.1f} MB)")
    if config.install:
        package_model(model_dir, EMBEDDED_MODEL_DIR, card)
        print(f"installed as the embedded base model: {EMBEDDED_MODEL_DIR}")
    return packaged


def _loss_and_time(metrics: dict[str, Any]) -> str:
    """A training phase's mean loss and time, saying which steps they cover when the phase was resumed."""
    text = f"{metrics['train_loss']:.3f}; {metrics['train_seconds'] / 60:.0f} min"
    resumed = metrics.get("resumed_from_step", 0)
    return text + (f" (both of steps {resumed + 1}-{metrics['steps']}: the phase was resumed from its checkpoint "
                   f"{resumed}, and stage times count only finished runs)" if resumed else "")


def _estimate(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    if not value:
        return "n/a"
    return f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def model_card(config: BaseModelConfig, work: Path, model_dir: Path, timings: dict[str, float]) -> str:
    """The README.md of the packaged model: what it is, its data, sizes, training time and metrics."""
    model_config = json.loads((model_dir / "config.json").read_text())
    metrics = json.loads((work / "model" / "metrics.json").read_text())  # pretraining's
    phases = {name: json.loads((work / name / "metrics.json").read_text())
              for name in ("model-continued", "model-voices") if (work / name / "metrics.json").is_file()}
    continued, voices = phases.get("model-continued"), phases.get("model-voices")
    codec_report_path = work / "codec-run" / "report.json"
    codec_report = json.loads(codec_report_path.read_text()) if codec_report_path.is_file() else {}
    report = json.loads((work / "evaluation" / "report.json").read_text())
    by_name = {c["name"]: c["summary"] for c in report["conditions"]}
    recorded_wer = by_name["recordings"]["wer"]["mean"]
    base_wer = by_name["base"]["wer"]["mean"]
    depth = model_config["depth_decoder_config"]
    units = json.loads((model_dir / "codec" / "codec_config.json").read_text()).get("unit_dim", 0)
    codebook_0 = (" Codebook 0 is k-means units of the bundled Whisper tiny.en's encoder features\n  "
                  "(`train-codec --whisper-units`), so encoding runs Whisper; decoding does not." if units else "")
    corpus_hours = metrics["data"]["train_audio_seconds"] / 3600
    intelligibility = codec_report.get("intelligibility", {})
    rows = "\n".join(
        f"| {name} | {_estimate(s, 'wer')} | {_estimate(s, 'similarity')} | {_estimate(s, 'runaway_rate')} | "
        f"{_estimate(s, 'duration_s')} |" for name, s in by_name.items())
    stage_times = ", ".join(f"{stage} {seconds / 60:.0f} min" for stage, seconds in timings.items())
    codec_origin = (f"`tokentts train-codec`, {config.codec_minutes:g} min on one CPU thread" if config.codec is None
                    else "reused from an earlier build of this recipe (`build-base --codec`), not retrained")
    verdict = "meets" if base_wer - recorded_wer <= WER_MARGIN else "does NOT meet"
    continued_line = (f"\n- Then {continued['steps']} more steps on the same corpus (`finetune --method full`), peak "
                      f"learning rate {config.continue_learning_rate:g}, cosine; mean train loss "
                      f"{_loss_and_time(continued)}." if continued else "")
    voices_line = (f"\n- Then {voices['steps']} steps with the shifted Flite speakers added (the voices phase): "
                   f"peak learning rate {config.voices_learning_rate:g}, cosine, {config.voices_context_probability:.0%} "
                   f"of examples with a context clip, {config.voices_context_speaker_swap:.0%} of those under another "
                   f"speaker's id; mean train loss {_loss_and_time(voices)}." if voices else "")
    if voices and config.averaged:
        voices_line += (f"\n- Shipped weights: the average of the two phases, {1 - config.voices_share:.0%} the "
                        f"continuation's and {config.voices_share:.0%} the voices phase's (`--voices-share`); "
                        f"the depth decoder {config.voices_depth_share:.0%} the voices phase's (`--voices-depth-share`).")
    shifted_line = ""
    if voices:
        first = config.speakers + len(config.flite_voices)
        last = first + len(config.flite_voices) * config.shifted_speakers_per_voice - 1
        shifted_line = (f"\n- For the voices phase, {config.shifted_speakers_per_voice} speakers made from each Flite "
                        f"voice (speakers {first}-{last}): each its own vocal-tract factor (formants x 0.88-1.12) "
                        f"and mean pitch (x 0.85-1.2), saying {config.shifted_clips_per_speaker} further sentences.")
    flite_line = ""
    if config.flite_voices:
        voices, last = config.flite_voices, config.speakers + len(config.flite_voices) - 1
        flite_line = (f"\n- {len(voices)} Flite voices ({', '.join(voices)}: CMU voices made from recordings of real "
                      f"speakers, 16 kHz) as speakers {config.speakers}-{last}, each saying as many of those "
                      "sentences.")
    reads = ("eSpeak NG's English IPA for the text (`tokentts_text_frontend: espeak-ipa`; English only)"
             if model_config.get("tokentts_text_frontend") == "espeak-ipa" else "the characters of the text")
    layout = model_config.get("tokentts_text_positions", "sequential")
    spread = (", each word in proportion to the time eSpeak NG takes to say it" if layout == "timed" else
              " evenly" if layout == "aligned" else "")
    return f"""# tokentts embedded base model

A small token-based TTS model of the CSM architecture (transformers' `CsmForConditionalGeneration`),
trained from scratch on synthetic speech so that tokentts runs end to end offline, on a CPU,
without downloading a model. It is the default of `tokentts generate`, `serve` and `demo`, and the
base that `tokentts finetune` adapts to a new voice. It is a demonstration model, not a
production voice: it speaks the vocabulary of its training sentences best.

## Model
- Backbone: {model_config['num_hidden_layers']} layers x {model_config['hidden_size']} wide;
  depth decoder: {depth['num_hidden_layers']} layers x {depth['hidden_size']};
  {metrics['total_parameters'] / 1e6:.1f} M parameters, stored as float16.
- Audio: the tokentts neural codec in `codec/` (24 kHz, 25 frames/s, {model_config['num_codebooks']} codebooks
  of {model_config['vocab_size'] - 3}); the model predicts codebook 0 with the backbone and the rest with the depth decoder.{codebook_0}
- Text: {reads}, as UTF-8 bytes. Text positions use the *{layout}* layout (`tokentts_text_positions`):
  each segment's text is spread over the RoPE positions of the audio it speaks{spread}, at
  {model_config.get('tokentts_frames_per_token', 0):.2f} frames per byte when no voice context sets the rate.
  Load it with tokentts (`tokentts.model.load_model`), whose prompts and generation loop apply that layout.
- Sampling: temperature {config.temperature:g} for codebook 0 and {config.depth_temperature:g} for the depth decoder,
  top-k 50, set in `generation_config.json`: the default of `generate`, `serve` and `evaluate` (flags override it).

## Data
- {config.speakers} eSpeak NG speakers (accents x voice variants, pitch, pitch range, base rate), each
  speaking rate varied by +-15 % per sentence; sentences from the grammar in `tokentts.data.synthetic`.
- Model: {metrics['data']['train_clips']} clips, {corpus_hours:.1f} h; codec: {(config.speakers + len(config.flite_voices)) * config.codec_clips_per_speaker} clips
  of the same speakers.{flite_line}{shifted_line}

## Training
- Codec: {codec_origin}; held-out reconstruction WER
  {intelligibility.get('wer_reconstructed', float('nan')):.3f} vs {intelligibility.get('wer_original', float('nan')):.3f} for the originals
  ({intelligibility.get('asr', 'n/a')}).
- Model: `tokentts pretrain`, {metrics['steps']} steps of {config.batch_size} clips, AdamW, peak learning rate
  {config.learning_rate:g}, cosine; mean train loss {_loss_and_time(metrics)}.{continued_line}{voices_line}
- Wall time per stage on the build machine ({platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}): {stage_times}.

## Evaluation
`tokentts evaluate` on {len(report['sentences'])} held-out sentences of the grammar, {config.samples_per_sentence} samples each,
speaker 0 (the corpus's first eSpeak voice), Whisper tiny.en (bundled); "recordings" is eSpeak
speaking the same sentences in that voice. Means with 95 % cluster-bootstrap intervals over sentences.

| condition | WER | similarity to speaker 0 | runaway rate | duration (s) |
|---|---|---|---|---|
{rows}

Intelligibility bar (WER at most {WER_MARGIN:.2f} above the recordings'): base {base_wer:.3f} vs recordings
{recorded_wer:.3f}, {base_wer - recorded_wer:.4f} above them: the model **{verdict}** it.

Fine-tuned on a new voice (`tokentts demo`: LoRA plus the codec-decoder adaptation of `tokentts finetune`,
each of its examples with another clip of its speaker as context, the depth decoder trained on every frame,
and this model's eSpeak speakers 1-12 trained beside the voice as a prior dataset), its speech moves to that
voice, and a clip of the voice as context moves it further. On three demo seeds (BENCHMARKS.md): base + clone
over base +0.02 to +0.11, fine-tuned over base +0.16 to +0.17, fine-tuned + clone over fine-tuned +0.20 to
+0.22 (0.85-0.86), each beyond its interval. The clip costs words: fine-tuned + clone is heard at WER
0.84-0.99, fine-tuned alone at 0.43-0.53. Without the prior speakers (`--prior-speakers 0`) the adapter ties
the voice to its id: fine-tuned alone reaches 0.87 (WER 0.6-0.7) and a clip adds nothing measurable.

## Reproduce
    make base-model        # = tokentts build-base --install

Built {datetime.now(timezone.utc).strftime('%Y-%m-%d')} with tokentts's recipe (`tokentts.training.base_model`).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, BaseModelConfig)


def run(args: argparse.Namespace) -> int:
    build_base_model(config_from_args(BaseModelConfig, args))
    return 0
