"""The evaluation run: generate every test sentence under every condition, score each sample.

Conditions are the base model and each fine-tuned adapter, each with and without the target
voice's reference clip as cloning context:

    base | base + clone | fine-tuned | fine-tuned + clone

plus, when recordings of the test sentences are given, a "recordings" row scored the same way:
the WER the ASR model itself leaves on real speech of those sentences, which a model's WER is
judged against.

    report = evaluate(EvaluateConfig(model="sesame/csm-1b", adapters=[Path("runs/lora")],
                                     reference=Path("held_out.wav")))
    report.conditions[1].summary["similarity"].mean

Sample j of sentence i uses the same seed in every condition, so conditions are compared on
paired samples and a run repeats exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tokentts.audio.io import SAMPLE_RATE, load_audio
from tokentts.errors import TokenttsError
from tokentts.evaluation.metrics import (
    DNSMOS_MODEL_NAME,
    DnsmosScores,
    PauseStats,
    SpeakerEncoder,
    cosine,
    dnsmos,
    dnsmos_available,
    pause_stats,
    speaking_rate_wpm,
    transcribe_for_scoring,
    word_errors,
)
from tokentts.evaluation.sentences import load_sentences
from tokentts.evaluation.stats import Estimate, bootstrap_mean

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    model: str = field(default="sesame/csm-1b", metadata={"help": "base CSM checkpoint: a folder or a hub id"})
    adapters: list[Path] = field(
        default_factory=list,
        metadata={"help": "LoRA adapter folders from `tokentts finetune`; each adds a fine-tuned and a "
                          "fine-tuned + clone condition"},
    )
    reference: Path | None = field(
        default=None,
        metadata={"help": "a clip of the target voice held out from training: the cloning context and the "
                          "similarity target"},
    )
    reference_text: str | None = field(
        default=None,
        metadata={"help": "transcript of the reference clip (transcribed with the ASR model when omitted)"},
    )
    target_clips: list[Path] = field(
        default_factory=list,
        metadata={"help": "more held-out clips of the target voice to compare samples with "
                          "(default: the reference clip)"},
    )
    sentences: Path | None = field(
        default=None, metadata={"help": "file with one test sentence per line (default: the built-in set of 10)"}
    )
    recordings: list[Path] = field(
        default_factory=list,
        metadata={"help": "recordings of the test sentences, one file per sentence in order: scored as a "
                          "'recordings' row (the ASR's own WER on real speech of the same text)"},
    )
    num_sentences: int | None = field(default=None, metadata={"help": "use only the first N sentences"})
    samples_per_sentence: int = field(default=3, metadata={"help": "samples generated per sentence and condition"})
    seed: int = field(default=0, metadata={"help": "base seed; sample j of sentence i uses seed + 1000*i + j"})
    speaker: str = field(default="0", metadata={"help": "CSM speaker id for the reference and the generated speech"})
    temperature: float | None = field(default=None, metadata={
        "help": "backbone sampling temperature (default: the model's generation_config.json, else 0.9)"})
    top_k: int | None = field(default=None, metadata={"help": "backbone top-k (default: the model's, else 50)"})
    depth_temperature: float | None = field(default=None, metadata={
        "help": "depth-decoder sampling temperature (default: the model's, else 0.9)"})
    max_seconds: float = field(default=20.0, metadata={"help": "longest sample; hitting it counts as a runaway"})
    # A small model's step costs about the same for 1 row as for 16, so batching generates 3-5x faster
    # on CPU; each sample keeps its own seed, so the batch size does not change what it says.
    batch_size: int = field(default=16, metadata={"help": "samples generated at once"})
    max_reference_seconds: float = field(default=15.0, metadata={"help": "longer reference clips are trimmed"})
    asr_model: str = field(
        default="turbo",
        metadata={"help": "faster-whisper model for WER (falls back to the bundled tiny.en when not "
                          "available offline)"},
    )
    dnsmos: bool = field(default=True, metadata={"help": "score naturalness with DNSMOS (needs speechmos)"})
    long_pause_seconds: float = field(default=2.0, metadata={"help": "a silence longer than this flags a sample"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:N (default: cuda when available)"})
    dtype: str | None = field(default=None, metadata={"help": "float32, bfloat16 or float16 (default: by device)"})

    def __post_init__(self) -> None:
        if self.samples_per_sentence < 1 or self.batch_size < 1:
            raise ValueError("samples_per_sentence and batch_size must be at least 1")
        if self.num_sentences is not None and self.num_sentences < 1:
            raise ValueError("num_sentences must be at least 1")
        if self.max_seconds <= 0:
            raise ValueError("max_seconds must be positive")


@dataclass(frozen=True)
class Condition:
    name: str  # "base", "base + clone", "fine-tuned", "fine-tuned + clone" (adapter name added when several)
    adapter: Path | None
    cloned: bool
    recorded: bool = False  # the recordings row: speech of the sentences, not generated by a model


RECORDINGS = Condition("recordings", None, False, recorded=True)


def plan_conditions(adapters: list[Path]) -> list[Condition]:
    """Base and every adapter, each without and with the cloning context."""
    models: list[tuple[str, Path | None]] = [("base", None)]
    for index, adapter in enumerate(adapters):
        # With one adapter it is simply "fine-tuned"; several are told apart by folder name.
        label = "fine-tuned" if len(adapters) == 1 else f"fine-tuned {Path(adapter).name or index}"
        if any(label == existing for existing, _ in models):
            label = f"{label} #{index + 1}"
        models.append((label, Path(adapter)))
    return [Condition(f"{label} + clone" if cloned else label, adapter, cloned)
            for label, adapter in models for cloned in (False, True)]


@dataclass
class ClipScores:
    """Metrics of one clip against the text it should say."""

    transcript: str  # what the ASR model heard
    wer: float
    cer: float
    similarity: float | None  # cosine to the target voice; None when the clip has no speech
    duration_s: float
    speaking_rate_wpm: float
    silence_ratio: float
    longest_pause_s: float
    dnsmos: DnsmosScores | None


@dataclass
class SampleResult:
    sentence_index: int
    sample_index: int
    seed: int
    text: str
    scores: ClipScores
    rate_vs_reference: float | None  # speaking rate / the reference clip's; None when that is unknown
    long_pause: bool  # longest pause above the threshold
    stop_reason: str  # "eos" | "max_length" | "runaway"
    runaway: bool
    real_time_factor: float | None  # generation seconds per second of audio; None for an empty sample
    audio: np.ndarray = field(repr=False)  # mono float32 at SAMPLE_RATE
    audio_file: str | None = None  # relative to the report folder, once written


@dataclass
class ConditionResult:
    condition: Condition
    samples: list[SampleResult]
    summary: dict[str, Estimate | None]  # metric key -> mean and confidence interval


@dataclass
class ReferenceResult:
    text: str
    transcribed: bool  # text came from the ASR model, so its WER says nothing
    scores: ClipScores
    audio: np.ndarray = field(repr=False)
    audio_file: str | None = None


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str | None  # "lower", "higher", "closer to 1", or None (descriptive only)
    percent: bool
    value: Callable[[SampleResult], float | None]


METRICS: tuple[Metric, ...] = (
    Metric("wer", "WER", "lower", True, lambda s: s.scores.wer),
    Metric("cer", "CER", "lower", True, lambda s: s.scores.cer),
    Metric("similarity", "Speaker similarity", "higher", False, lambda s: s.scores.similarity),
    Metric("dnsmos", "DNSMOS OVRL", "higher", False, lambda s: s.scores.dnsmos.overall if s.scores.dnsmos else None),
    Metric("duration_s", "Duration (s)", None, False, lambda s: s.scores.duration_s),
    Metric("rate_vs_reference", "Speaking rate / reference", "closer to 1", False, lambda s: s.rate_vs_reference),
    Metric("silence_ratio", "Silence ratio", "lower", True, lambda s: s.scores.silence_ratio),
    Metric("longest_pause_s", "Longest pause (s)", "lower", False, lambda s: s.scores.longest_pause_s),
    Metric("long_pause_rate", "Samples with a long pause", "lower", True, lambda s: float(s.long_pause)),
    Metric("runaway_rate", "Runaway samples", "lower", True, lambda s: float(s.runaway)),
    Metric("real_time_factor", "Real-time factor", "lower", False, lambda s: s.real_time_factor),
)


@dataclass
class Difference:
    """`later` minus `earlier` on one metric, over the samples both made with the same sentence and seed."""

    metric: Metric
    earlier: str
    later: str
    estimate: Estimate | None  # mean difference, cluster-bootstrap interval over sentences

    @property
    def beyond_interval(self) -> bool:
        """The interval excludes 0: the conditions differ beyond sampling noise (at 95 %)."""
        return self.estimate is not None and (self.estimate.low > 0 or self.estimate.high < 0)


def paired_difference(earlier: ConditionResult, later: ConditionResult, metric: Metric, num_sentences: int,
                      seed: int = 0) -> Difference:
    values = {(s.sentence_index, s.sample_index): metric.value(s) for s in earlier.samples}
    by_sentence: list[list[float]] = [[] for _ in range(num_sentences)]
    for sample in later.samples:
        mine, theirs = metric.value(sample), values.get((sample.sentence_index, sample.sample_index))
        if mine is not None and theirs is not None:
            by_sentence[sample.sentence_index].append(mine - theirs)
    return Difference(metric, earlier.condition.name, later.condition.name, bootstrap_mean(by_sentence, seed=seed))


# The metrics whose paired differences the reports list.
DIFFERENCE_METRICS = ("similarity", "wer")


@dataclass
class EvaluationReport:
    config: EvaluateConfig
    sentences: list[str]
    reference: ReferenceResult
    conditions: list[ConditionResult]
    asr_model: str
    speaker_model: str
    dnsmos_model: str | None  # None when DNSMOS was off or not installed
    created: str  # UTC, ISO 8601
    sample_rate: int = SAMPLE_RATE

    def differences(self, metric: Metric) -> list[Difference]:
        """Every pair of generated conditions (later minus earlier) on `metric`, over paired samples."""
        generated = [c for c in self.conditions if not c.condition.recorded]
        return [paired_difference(earlier, later, metric, len(self.sentences), self.config.seed)
                for earlier, later in itertools.combinations(generated, 2)]

    def best(self, metric: Metric) -> list[str]:
        """Names of the conditions with the best mean for `metric`: several on a tie, none when
        every condition ties or the metric has no direction."""
        scored = [(c.summary[metric.key].mean, c.condition.name) for c in self.conditions
                  if c.summary.get(metric.key) and not c.condition.recorded]
        if metric.better is None or not scored:
            return []
        badness = {"lower": lambda m: m, "higher": lambda m: -m, "closer to 1": lambda m: abs(m - 1)}[metric.better]
        ranks = [badness(mean) for mean, _ in scored]
        best = min(ranks)
        winners = [name for rank, (_, name) in zip(ranks, scored) if np.isclose(rank, best, rtol=1e-9, atol=1e-12)]
        return [] if len(winners) == len(scored) > 1 else winners


class Scorer:
    """Scores clips against their text and the target voice, with models loaded once."""

    def __init__(self, asr, encoder: SpeakerEncoder, target_embedding: np.ndarray, use_dnsmos: bool) -> None:
        self.asr = asr
        self.encoder = encoder
        self.target_embedding = target_embedding
        self.use_dnsmos = use_dnsmos

    def score(self, wav: np.ndarray, text: str, sample_rate: int = SAMPLE_RATE) -> ClipScores:
        transcript = transcribe_for_scoring(self.asr, wav, sample_rate)
        errors = word_errors(text, transcript)
        pauses: PauseStats = pause_stats(wav, sample_rate)
        # A silent clip has no voice to compare (and its WER is already 1).
        embedding = self.encoder.embed(wav, sample_rate) if pauses.speech_span_s > 0 else None
        return ClipScores(
            transcript=transcript,
            wer=errors.wer,
            cer=errors.cer,
            similarity=cosine(embedding, self.target_embedding) if embedding is not None else None,
            duration_s=pauses.duration_s,
            speaking_rate_wpm=speaking_rate_wpm(text, pauses.speech_span_s),
            silence_ratio=pauses.silence_ratio,
            longest_pause_s=pauses.longest_pause_s,
            dnsmos=dnsmos(wav, sample_rate) if self.use_dnsmos and len(wav) else None,
        )


def sample_seed(config: EvaluateConfig, sentence_index: int, sample_index: int) -> int:
    return config.seed + 1000 * sentence_index + sample_index


def evaluate(config: EvaluateConfig, progress: Callable[[int, int], None] | None = None) -> EvaluationReport:
    """Generate and score every sample of every condition; `progress(done, total)` after each sample."""
    from tokentts.asr import load_asr
    from tokentts.generation import Generator, SamplingConfig
    from tokentts.model import load_model
    from tokentts.model.prompt import load_reference

    if config.reference is None:
        raise TokenttsError("evaluation needs a reference clip of the target voice (--reference)")
    sentences = load_sentences(config.sentences, config.num_sentences)
    if config.recordings and len(config.recordings) != len(sentences):
        raise TokenttsError(f"{len(config.recordings)} recordings for {len(sentences)} test sentences: give one per sentence, in order")
    recordings = [load_audio(p) for p in config.recordings]  # unreadable files fail before any model loads
    conditions = plan_conditions(config.adapters)
    for adapter in config.adapters:
        if not Path(adapter).is_dir():
            raise TokenttsError(f"adapter folder {adapter} does not exist")

    asr = load_asr(config.asr_model)
    reference = load_reference(config.reference, config.reference_text, speaker=config.speaker,
                               max_seconds=config.max_reference_seconds, asr=asr)
    use_dnsmos = config.dnsmos and dnsmos_available()
    if config.dnsmos and not use_dnsmos:
        log.warning("speechmos is not installed; DNSMOS is left out")
    encoder = SpeakerEncoder()
    target_wavs = [load_audio(p) for p in config.target_clips] or [reference.audio]
    scorer = Scorer(asr, encoder, encoder.embed_speaker(target_wavs), use_dnsmos)
    reference_result = ReferenceResult(
        text=reference.text,
        transcribed=not (config.reference_text and config.reference_text.strip()),
        scores=scorer.score(reference.audio, reference.text),
        audio=reference.audio,
    )
    reference_wpm = reference_result.scores.speaking_rate_wpm

    total = len(conditions) * len(sentences) * config.samples_per_sentence
    done = 0
    results: list[ConditionResult] = []
    if recordings:
        recorded = [_score_sample(scorer, wav, None, i, 0, 0, text, reference_wpm, config)
                    for i, (wav, text) in enumerate(zip(recordings, sentences))]
        results.append(ConditionResult(RECORDINGS, recorded, summarize(recorded, len(sentences), config.seed)))
    # One model load per adapter: both of its conditions share it.
    for adapter in dict.fromkeys(c.adapter for c in conditions):
        loaded = load_model(config.model, adapter=adapter, device=config.device, dtype=config.dtype)
        generator = Generator(loaded)
        sampling = SamplingConfig(temperature=config.temperature, top_k=config.top_k,
                                  depth_temperature=config.depth_temperature,
                                  max_seconds=config.max_seconds).resolved(generator.model_sampling)
        # The report records the sampling used (an adapter keeps its base model's defaults).
        config = dataclasses.replace(config, temperature=sampling.temperature, top_k=sampling.top_k,
                                     depth_temperature=sampling.depth_temperature)
        for condition in (c for c in conditions if c.adapter == adapter):
            log.info("evaluating %s", condition.name)
            context = [reference] if condition.cloned else []
            samples = []
            planned = [(i, j, sample_seed(config, i, j)) for i in range(len(sentences))
                       for j in range(config.samples_per_sentence)]
            for start in range(0, len(planned), config.batch_size):
                batch = planned[start : start + config.batch_size]
                batch_results = generator.generate_batch([sentences[i] for i, _, _ in batch], speaker=config.speaker,
                                                         context=context, sampling=sampling,
                                                         seeds=[seed for _, _, seed in batch])
                for (i, j, seed), generated in zip(batch, batch_results):
                    samples.append(_score_sample(scorer, generated.audio, generated, i, j, seed, sentences[i],
                                                 reference_wpm, config))
                    done += 1
                    if progress is not None:
                        progress(done, total)
            results.append(ConditionResult(condition, samples, summarize(samples, len(sentences), config.seed)))
        del generator, loaded  # free the model before loading the next adapter

    return EvaluationReport(
        config=config,
        sentences=sentences,
        reference=reference_result,
        conditions=results,
        asr_model=asr.name,
        speaker_model=encoder.name,
        dnsmos_model=DNSMOS_MODEL_NAME if use_dnsmos else None,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _score_sample(scorer: Scorer, audio: np.ndarray, generated, sentence_index: int, sample_index: int, seed: int,
                  text: str, reference_wpm: float, config: EvaluateConfig) -> SampleResult:
    """Score one clip: a generated one (`generated`: its GenerationResult) or a recording (None)."""
    wav = np.asarray(audio, dtype=np.float32)
    scores = scorer.score(wav, text)
    return SampleResult(
        sentence_index=sentence_index,
        sample_index=sample_index,
        seed=seed,
        text=text,
        scores=scores,
        rate_vs_reference=scores.speaking_rate_wpm / reference_wpm if reference_wpm > 0 else None,
        long_pause=scores.longest_pause_s > config.long_pause_seconds,
        stop_reason=generated.stop_reason if generated else "eos",
        runaway=generated is not None and generated.stop_reason != "eos",
        real_time_factor=generated.seconds_taken / scores.duration_s if generated and scores.duration_s > 0 else None,
        audio=wav,
    )


def summarize(samples: list[SampleResult], num_sentences: int, seed: int = 0) -> dict[str, Estimate | None]:
    """Every metric's mean and 95% cluster-bootstrap interval over sentences."""
    summary = {}
    for metric in METRICS:
        by_sentence: list[list[float]] = [[] for _ in range(num_sentences)]
        for sample in samples:
            value = metric.value(sample)
            if value is not None:
                by_sentence[sample.sentence_index].append(value)
        summary[metric.key] = bootstrap_mean(by_sentence, seed=seed)
    return summary


def condition_slug(name: str) -> str:
    """A file-name-safe form of a condition name: "base + clone" -> "base-clone"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
