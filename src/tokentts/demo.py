"""`tokentts demo`: the main job end to end, offline, on embedded defaults.

    target voice (Piper Joe, never heard in pretraining) speaks a script
      -> one long recording + a held-out reference clip + held-out test sentences
      -> prepare (real Whisper) -> dataset
      -> finetune LoRA on the base model -> adapter
      -> evaluate base / cloned / fine-tuned / fine-tuned + cloned -> report.html

The base model is the embedded one when this build ships it; otherwise a tiny randomly
initialised CSM stands in, so every stage still runs for real (its speech is noise, and the
demo says so).
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokentts.audio import SAMPLE_RATE, write_audio
from tokentts.audio.synth import EspeakVoice, piper_available, synthesize_espeak, synthesize_piper
from tokentts.config import add_config_arguments, config_from_args, write_config
from tokentts.data.dataset import Clip, clips_to_dataset
from tokentts.data.synthetic import speak_espeak, synthetic_sentences, synthetic_speakers
from tokentts.errors import TokenttsError
from tokentts.training.config import LORA_MODELS, check_lora_models

log = logging.getLogger(__name__)

# Pause between sentences of the long recording: long enough for Whisper to end a sentence there.
_SENTENCE_PAUSE_SECONDS = 0.6


@dataclass
class DemoConfig:
    out: Path = field(default=Path("demo-output"), metadata={"help": "folder for everything the demo makes"})
    model: str | None = field(default=None, metadata={"help": "base CSM model (default: the embedded base, else a tiny random CSM)"})
    train_sentences: int = field(default=48, metadata={"help": "sentences in the target voice's training recording"})
    # 16: with 8, the verdict on base + clone > base flipped between two runs that differed only in float rounding.
    test_sentences: int = field(default=16, metadata={"help": "held-out sentences to evaluate on"})
    # One clip's embedding carries that clip's quirks; Resemblyzer's speaker embedding averages utterances.
    target_clips: int = field(default=3, metadata={"help": "held-out clips of the target voice that, with the "
                                                          "reference clip, make the similarity target"})
    samples_per_sentence: int = field(default=2, metadata={"help": "samples per test sentence and condition"})
    max_steps: int = field(default=120, metadata={"help": "LoRA fine-tuning steps"})
    learning_rate: float = field(default=2e-3, metadata={"help": "LoRA fine-tuning peak learning rate"})
    codec_decoder_steps: int = field(default=400, metadata={"help": "steps adapting the embedded codec's decoder to the "
                                                                    "target voice (0 = off)"})
    input_code_noise: float = field(default=0.4, metadata={"help": "share of fine codes made random in the LoRA "
                                                                    "fine-tune's input, as the embedded base was trained"})
    # Without contexts in its examples the fine-tune stops using one: fine-tuned + clone then equals fine-tuned.
    # With a context in every example the adapter is trained for the prompt it is cloned with: with the depth
    # decoder trained on 1/16 of the frames, fine-tuned + clone gained +0.007..+0.027 over fine-tuned on three
    # seeds, against -0.002..+0.012 with half; trained on every frame, +0.001..+0.007 (BENCHMARKS.md).
    context_probability: float = field(default=1.0, metadata={
        "help": "share of the LoRA fine-tune's examples with another clip of the target voice as context"})
    # Sesame trains csm-1b's depth decoder on 1/16 of the frames to save compute. Here it is small, and the
    # fine codes it samples are what a voice's timbre and intelligibility hinge on: Joe's own codebook 0 with
    # its sampled fine codes is heard at WER 0.86 after a 1/16 fine-tune and 0.69 after one on every frame
    # (0.23 with his real fine codes). The fine-tuned voice's similarity rises by 0.02-0.04 and its WER falls
    # by 0.1-0.35 (BENCHMARKS.md).
    depth_frame_fraction: float = field(default=1.0, metadata={
        "help": "share of audio frames the LoRA fine-tune trains the depth decoder on"})
    # LoRA on both is the seed's recipe and the best fine-tuned voice; on the backbone alone the depth decoder
    # keeps rendering a context clip's voice, so fine-tuned + clone beats fine-tuned clearly, at a cost to both
    # (BENCHMARKS.md).
    lora_models: list[str] = field(default_factory=lambda: list(LORA_MODELS), metadata={
        "help": "which transformers the LoRA fine-tune adapts: backbone, depth_decoder"})
    # Trained on Joe alone, with his clip as context in every example, the adapter hard-wires his voice to
    # his id and a clip of him adds nothing (fine-tuned + clone - fine-tuned +0.001..+0.007). Other voices in
    # the fine-tune, each learned from a context clip under another's id (prior preservation), keep it
    # cloning: fine-tuned + clone then clearly beats fine-tuned (BENCHMARKS.md).
    prior_speakers: int = field(default=12, metadata={
        "help": "eSpeak speakers of the base's corpus in the LoRA fine-tune's prior dataset (0 = none)"})
    prior_clips_per_speaker: int = field(default=4, metadata={"help": "sentences each prior speaker says"})
    prior_speaker_swap: float = field(default=0.7, metadata={
        "help": "share of the prior speakers' examples under another prior speaker's id"})
    clip_seconds: float = field(default=6.0, metadata={"help": "longest prepared training snippet: the embedded base "
                                                               "learned from single sentences of 2-5 s"})
    max_seconds: float = field(default=8.0, metadata={"help": "longest generated sample"})
    seed: int = field(default=0, metadata={"help": "seed for the script, training and sampling"})
    overwrite: bool = field(default=True, metadata={"help": "replace an earlier demo folder"})

    def __post_init__(self) -> None:
        counts = (self.train_sentences, self.test_sentences, self.samples_per_sentence, self.max_steps)
        if min(counts) < 1 or min(self.target_clips, self.prior_speakers) < 0 or self.prior_clips_per_speaker < 1:
            raise ValueError("train_sentences, test_sentences, samples_per_sentence, max_steps and "
                             "prior_clips_per_speaker must be at least 1 (target_clips and prior_speakers at least 0)")
        # Checked here too, so that a bad share fails before the voice is synthesized and prepared.
        if not all(0 <= x <= 1 for x in (self.input_code_noise, self.context_probability, self.prior_speaker_swap)):
            raise ValueError("input_code_noise, context_probability and prior_speaker_swap must be in [0, 1]")
        if not 0 < self.depth_frame_fraction <= 1:
            raise ValueError("depth_frame_fraction must be in (0, 1]")
        check_lora_models(self.lora_models)


def _stage(number: int, title: str) -> float:
    print(f"\n[{number}/5] {title}", flush=True)
    return time.perf_counter()


def _done(started: float, what: str) -> None:
    print(f"      {what} ({time.perf_counter() - started:.0f} s)", flush=True)


def speak_target(text: str, seed: int) -> np.ndarray:
    """The demo's target voice: Piper's natural Joe voice when installed, else an eSpeak voice
    the synthetic pretraining corpus does not use."""
    if piper_available():
        # Seeded, so a run repeats its recordings: cloning's result depends on the very reference clip.
        return synthesize_piper(text, seed=seed)
    return synthesize_espeak(text, EspeakVoice("en-us", "Andy", pitch=40, rate=160))


def make_recording(sentences: list[str], seed: int) -> np.ndarray:
    pause = np.zeros(int(_SENTENCE_PAUSE_SECONDS * SAMPLE_RATE), np.float32)
    parts: list[np.ndarray] = []
    for sentence in sentences:
        parts += [speak_target(sentence, seed), pause]
    return np.concatenate(parts)


def prior_clips(speakers: int, clips_per_speaker: int, avoid: set[str], seed: int) -> list[Clip]:
    """The fine-tune's prior dataset: speakers 1..N of the embedded base's eSpeak corpus (0 is the id
    `prepare` gives the target) reading grammar sentences that are not in the demo's script."""
    rng = random.Random(seed)
    sentences = [s for s in synthetic_sentences(speakers * clips_per_speaker + len(avoid), seed=20_000 + seed)
                 if s not in avoid][: speakers * clips_per_speaker]
    voices = synthetic_speakers(speakers + 1)[1:]  # the base corpus's speakers, by id (BaseModelConfig's seed 0)
    clips = []
    for index, voice in enumerate(voices, start=1):
        first = (index - 1) * clips_per_speaker
        clips += speak_espeak(voice, str(index), sentences[first:first + clips_per_speaker], rng)
    return clips


def run_demo(config: DemoConfig) -> Path:
    """Run every stage into `config.out`; returns the report folder."""
    from tokentts.data.prepare import PrepareConfig, prepare
    from tokentts.evaluation.report import write_reports
    from tokentts.evaluation.runner import EvaluateConfig, evaluate
    from tokentts.model.embedded import embedded_model_path
    from tokentts.model.tiny import save_tiny_csm
    from tokentts.training.config import FinetuneConfig
    from tokentts.training.finetune import finetune

    out = config.out
    if out.exists():
        if not config.overwrite:
            raise TokenttsError(f"{out} exists: pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_config(config, out)

    voice = "Piper en_US-joe-medium" if piper_available() else "eSpeak en-us+Andy (install tokentts[demo] for the Piper voice)"
    # The seed offset keeps the demo's script apart from the synthetic pretraining corpus's sentences.
    script = synthetic_sentences(config.train_sentences + 1 + config.target_clips + config.test_sentences,
                                 seed=10_000 + config.seed)
    train, (reference_text, *held_out) = script[: config.train_sentences], script[config.train_sentences:]
    target_texts, test = held_out[: config.target_clips], held_out[config.target_clips:]

    started = _stage(1, f"target voice: {voice} reads {len(train)} sentences")
    recording = make_recording(train, config.seed)
    write_audio(out / "target_recording.flac", recording)
    write_audio(out / "reference.wav", speak_target(reference_text, config.seed))
    (out / "reference.txt").write_text(reference_text + "\n")
    targets = [write_audio(out / f"target-{i:02d}.wav", speak_target(text, config.seed)) for i, text in enumerate(target_texts)]
    (out / "test_sentences.txt").write_text("\n".join(test) + "\n")
    _done(started, f"{len(recording) / SAMPLE_RATE:.0f} s recording, held-out reference clip, {len(targets)} more "
                   f"held-out clips and {len(test)} test sentences")
    prior = None
    if config.prior_speakers:
        started = time.perf_counter()
        prior = out / "prior-dataset"
        clips_to_dataset(prior_clips(config.prior_speakers, config.prior_clips_per_speaker, set(script),
                                     config.seed)).save_to_disk(str(prior))
        _done(started, f"prior dataset: {config.prior_speakers} eSpeak speakers of the base's corpus, "
                       f"{config.prior_clips_per_speaker} sentences each, in {prior}")

    started = _stage(2, "prepare: Whisper transcript, snippets, dataset")
    prepared = prepare(PrepareConfig(sources=[str(out / "target_recording.flac")], out=out / "dataset", asr_model="turbo",
                                     max_seconds=config.clip_seconds, cache_dir=out / "cache"))
    _done(started, f"{prepared.clips} clips in {prepared.out}")

    started = _stage(3, "base model")
    if config.model:
        base = config.model
        _done(started, f"using {base}")
    elif embedded_model_path() is not None:
        base = str(embedded_model_path())
        _done(started, f"using the embedded base model {base}")
    else:
        base = str(save_tiny_csm(out / "base-model", seed=config.seed))
        _done(started, "this build ships no embedded base model yet: a tiny random CSM stands in, so every stage runs "
                       "for real but generated speech is noise and the report's numbers only show the pipeline working")

    started = _stage(4, f"LoRA fine-tuning, {config.max_steps} steps")
    tuned = finetune(FinetuneConfig(dataset=str(prepared.out), model=base, output_dir=out / "adapter", max_steps=config.max_steps,
                                    batch_size=2, grad_accum=1, learning_rate=config.learning_rate, eval_fraction=0.1, seed=config.seed,
                                    logging_steps=20, eval_steps=max(config.max_steps // 2, 1), save_steps=config.max_steps,
                                    codec_decoder_steps=config.codec_decoder_steps, cache_dir=out / "cache",
                                    input_code_noise=config.input_code_noise, context_probability=config.context_probability,
                                    depth_frame_fraction=config.depth_frame_fraction, lora_models=config.lora_models,
                                    prior_dataset=str(prior) if prior else None,
                                    context_speaker_swap=config.prior_speaker_swap, overwrite=True))
    _done(started, f"adapter in {tuned.output_dir}")

    started = _stage(5, "evaluate: base, base + clone, fine-tuned, fine-tuned + clone")
    evaluation = EvaluateConfig(model=base, adapters=[tuned.output_dir], reference=out / "reference.wav",
                                reference_text=reference_text, target_clips=[out / "reference.wav", *targets],
                                sentences=out / "test_sentences.txt",
                                samples_per_sentence=config.samples_per_sentence, seed=config.seed,
                                max_seconds=config.max_seconds)
    per_condition = len(test) * config.samples_per_sentence
    total = 4 * per_condition

    def progress(done: int, total_samples: int) -> None:
        if done % per_condition == 0:
            print(f"      {done // per_condition}/4 conditions scored ({done}/{total_samples} samples)", flush=True)

    report = evaluate(evaluation, progress=progress)
    report_dir = write_reports(report, out / "report")
    _done(started, f"{total} samples scored with {report.asr_model} and {report.speaker_model}")
    print_claims(report)
    return report_dir


# The seed's claims about similarity to the target voice, as (better, worse) condition pairs.
CLAIMS = (("base + clone", "base"), ("fine-tuned", "base"), ("fine-tuned + clone", "fine-tuned"),
          ("fine-tuned + clone", "base + clone"))


def print_claims(report) -> None:
    """Each condition's WER and similarity, then whether the seed's claims hold beyond the intervals."""
    from tokentts.evaluation.runner import METRICS

    similarity = next(m for m in METRICS if m.key == "similarity")
    print("\n      condition             WER     similarity to the target voice [95% CI]")
    for result in report.conditions:
        wer, sim = result.summary.get("wer"), result.summary.get("similarity")
        sim_text = f"{sim.mean:.3f} [{sim.low:.3f}, {sim.high:.3f}]" if sim else "-"
        print(f"      {result.condition.name:<20} {wer.mean if wer else float('nan'):6.3f}  {sim_text}")
    differences = {(d.later, d.earlier): d for d in report.differences(similarity)}
    for better, worse in CLAIMS:
        d = differences.get((better, worse))
        if d is None or d.estimate is None:
            continue
        holds = "holds" if d.beyond_interval and d.estimate.mean > 0 else (
            "higher, within the interval" if d.estimate.mean > 0 else "does not hold")
        print(f"      {better} > {worse}: {d.estimate.mean:+.3f} [{d.estimate.low:+.3f}, {d.estimate.high:+.3f}] {holds}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DemoConfig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(DemoConfig, args)
    started = time.perf_counter()
    report_dir = run_demo(config)
    print(f"\ndemo finished in {(time.perf_counter() - started) / 60:.1f} min")
    print(f"report: {report_dir / 'report.html'}  (also report.md, report.json)")
    return 0
