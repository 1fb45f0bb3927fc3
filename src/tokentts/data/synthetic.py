"""A synthetic multi-speaker corpus: generated English sentences spoken by many eSpeak NG voices,
and optionally by Flite's voices, which are made from recordings of real speakers.

Each eSpeak speaker is an accent, voice variant, pitch and pitch range; each clip varies the
speaking rate a little around the speaker's own. Sentences come from a small grammar, so the
corpus needs no downloaded text and any number of distinct sentences can be drawn. The Flite
voices become the speakers after the eSpeak ones and say sentences the eSpeak speakers say, so
they add voices, not sentences. The result is an ordinary voice dataset (`tokentts.data.dataset`),
one `source` per speaker.

    tokentts synth-corpus --out corpus --speakers 24 --clips-per-speaker 40 [--flite-voices awb slt]
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokentts.audio.silence import trim_silence
from tokentts.audio.synth import EspeakVoice, FliteVoice, check_flite_voices, synthesize_espeak, synthesize_flite
from tokentts.config import building_directory, add_config_arguments, config_from_args, write_config
from tokentts.data.dataset import Clip, clips_to_dataset
from tokentts.errors import TokenttsError

ACCENTS = ("en-us", "en-us-nyc", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3")

_WORDS = {
    "name": "Anna Ben Clara David Ellen Frank Grace Henry Iris Jack Laura Martin Nora Oscar Paula Sam Tom Vera".split(),
    "person": "the teacher|my neighbour|the old farmer|a young doctor|the pilot|her brother|the baker|our guide|the driver|a quiet student|the captain|his aunt".split("|"),
    "thing": "the red kettle|a wooden box|the map|an old letter|the blue bicycle|a basket of apples|the garden gate|a silver key|the kitchen clock|a paper boat|the heavy suitcase|a jar of honey".split("|"),
    "place": "the market|the harbour|the library|the station|the village square|the forest path|the hospital|the river bank|the museum|the top floor|the bakery|the football field".split("|"),
    "time": "this morning|last night|on Sunday|after lunch|before dawn|every winter|in the spring|at noon|yesterday|next week|at half past six|during the storm".split("|"),
    "verb_past": "found|carried|painted|repaired|forgot|borrowed|cleaned|opened|sold|hid|dropped|measured".split("|"),
    "verb_went": "walked to|drove to|ran to|hurried to|wandered to|cycled to|returned to|climbed up to".split("|"),
    "adjective": "cold|bright|quiet|strange|warm|narrow|noisy|gentle|empty|crowded|tiny|enormous".split("|"),
    "weather": "rain|snow|wind|fog|sunshine|thunder".split("|"),
    "number": "two|three|four|five|seven|nine|twelve|twenty|forty|a hundred".split("|"),
    "plural": "birds|boats|letters|candles|horses|children|questions|windows|lamps|trees".split("|"),
}

_TEMPLATES = (
    "{name} {verb_past} {thing} at {place} {time}.",
    "{person} {verb_went} {place} {time}, because the {weather} was coming.",
    "Did {person} really see {number} {plural} near {place}?",
    "The morning was {adjective}, and {name} waited for {person} by {place}.",
    "{time}, {person} {verb_past} {thing} and left it near {place}.",
    "Please tell {name} that {thing} is still at {place}.",
    "We counted {number} {plural} while the {weather} swept over {place}.",
    "Why was {place} so {adjective} {time}?",
    "{name} and {person} {verb_went} {place}, but nobody was there.",
    "I think {thing} looks {adjective} in this light.",
)


def synthetic_sentences(count: int, seed: int = 0) -> list[str]:
    """`count` distinct sentences from the grammar (5 to 18 words), in a reproducible order."""
    rng = random.Random(seed)
    sentences: dict[str, None] = {}
    attempts = 0
    while len(sentences) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise TokenttsError(f"the sentence grammar cannot make {count} distinct sentences")
        template = rng.choice(_TEMPLATES)
        text = template.format(**{slot: rng.choice(words) for slot, words in _WORDS.items()})
        sentences[text[0].upper() + text[1:]] = None
    return list(sentences)


def synthetic_speakers(count: int, seed: int = 0) -> list[EspeakVoice]:
    """`count` distinct eSpeak speakers (accent, variant, pitch, pitch range, base rate)."""
    rng = random.Random(seed)
    combos = [(a, v) for a in ACCENTS for v in VARIANTS]
    rng.shuffle(combos)
    return [
        EspeakVoice(accent, variant, pitch=rng.randint(25, 75), rate=rng.randint(140, 190), pitch_range=rng.randint(30, 80))
        for accent, variant in (combos[i % len(combos)] for i in range(count))
    ]


def speak_espeak(voice: EspeakVoice, speaker: str, texts: Sequence[str], rng: random.Random) -> list[Clip]:
    """`texts` in `voice`, each at its own rate (0.85-1.15 times the voice's), as clips of `speaker`."""
    clips = []
    for text in texts:
        spoken = EspeakVoice(voice.language, voice.variant, voice.pitch, int(voice.rate * rng.uniform(0.85, 1.15)),
                             voice.pitch_range)
        audio = synthesize_espeak(text, spoken)
        clips.append(Clip(audio, text, speaker, 0.0, len(audio) / 24_000, f"espeak:{voice.name}:p{voice.pitch}"))
    return clips


def build_synthetic_corpus(speakers: int, clips_per_speaker: int, seed: int = 0, flite_voices: Sequence[str] = (),
                           flite_clips_per_voice: int = 0) -> list[Clip]:
    """Speak distinct sentences with `speakers` eSpeak voices, then `flite_clips_per_voice` of those
    sentences (drawn at random) with each Flite voice; clip `source` is the speaker's index."""
    if speakers < 1 or clips_per_speaker < 1 or (flite_voices and flite_clips_per_voice < 1):
        raise TokenttsError("a synthetic corpus needs at least one speaker and one clip per speaker "
                            "(and per Flite voice)")
    check_flite_voices(flite_voices)  # before minutes of eSpeak
    rng = random.Random(seed)
    sentences = synthetic_sentences(speakers * clips_per_speaker, seed)
    clips = []
    for index, voice in enumerate(synthetic_speakers(speakers, seed)):
        own = sentences[index * clips_per_speaker:(index + 1) * clips_per_speaker]
        clips += speak_espeak(voice, str(index), own, rng)
    for index, name in enumerate(flite_voices, start=speakers):
        for _ in range(flite_clips_per_voice):
            text = sentences[rng.randrange(len(sentences))]
            # Flite's clips start and end with silence that eSpeak's do not have; a timed model would learn it.
            audio = trim_silence(synthesize_flite(text, FliteVoice(name, round(rng.uniform(0.85, 1.15), 3))))
            clips.append(Clip(audio, text, str(index), 0.0, len(audio) / 24_000, f"flite:{name}"))
    return clips


# The mean pitch (Hz) around which each Flite voice's shifted speakers draw theirs.
FLITE_PITCH_HZ = {"awb": 110.0, "rms": 100.0, "slt": 170.0, "kal16": 100.0}


def check_pitches_known(flite_voices: Sequence[str]) -> None:
    unknown = [name for name in flite_voices if name not in FLITE_PITCH_HZ]
    if unknown:
        raise TokenttsError(f"no pitch is known for Flite voice {', '.join(unknown)} to shift speakers from "
                            f"(known: {', '.join(FLITE_PITCH_HZ)})")


def shifted_flite_clips(flite_voices: Sequence[str], speakers_per_voice: int, clips_per_speaker: int,
                        first_speaker: int, first_sentence: int, seed: int = 0) -> list[Clip]:
    """New speakers made from Flite's recorded voices: each draws a vocal-tract factor (0.88-1.12) and a
    mean pitch (0.85-1.2 times its voice's) and says `clips_per_speaker` sentences of the grammar from
    `first_sentence` on, each at its own rate: a stretch of 0.85-1.15 over the vocal-tract factor squared
    (a smaller speaker faster: how the shipped model's corpus was made); `source` counts up from `first_speaker`.

    Four recorded voices are too few for a model to learn to take an unheard voice from a context clip;
    shifted, each becomes a family of voices between which the voice must be read from the audio."""
    if min(speakers_per_voice, clips_per_speaker) < 1:
        raise TokenttsError("shifted Flite speakers need at least one speaker per voice and one clip each")
    check_flite_voices(flite_voices)
    check_pitches_known(flite_voices)
    rng = random.Random(seed + 11)
    sentences = synthetic_sentences(first_sentence + 20_000, seed)[first_sentence:]
    clips = []
    speaker = first_speaker
    for name in flite_voices:
        for _ in range(speakers_per_voice):
            vocal_tract, pitch = rng.uniform(0.88, 1.12), FLITE_PITCH_HZ[name] * rng.uniform(0.85, 1.2)
            for _ in range(clips_per_speaker):
                text = sentences[rng.randrange(len(sentences))]
                voice = FliteVoice(name, rng.uniform(0.85, 1.15) / vocal_tract ** 2, vocal_tract, pitch)
                audio = trim_silence(synthesize_flite(text, voice))
                clips.append(Clip(audio, text, str(speaker), 0.0, len(audio) / 24_000,
                                  f"flite:{name}:vt{vocal_tract:.3f}:{pitch:.0f}Hz"))
            speaker += 1
    return clips


def write_corpus_with_shifted_speakers(corpus: Path, out: Path, clips: list[Clip]) -> Path:
    """`corpus` (a saved voice dataset) followed by `clips`, saved as a new dataset folder (atomically)."""
    from datasets import concatenate_datasets, load_from_disk

    out = Path(out)
    if out.exists():
        raise TokenttsError(f"{out} already exists")
    base = load_from_disk(str(corpus))
    with building_directory(out) as tmp:
        concatenate_datasets([base, clips_to_dataset(clips).cast(base.features)]).save_to_disk(str(tmp))
    return out


@dataclass
class SyntheticCorpusConfig:
    out: Path = field(default=Path("synthetic-corpus"), metadata={"help": "output dataset folder"})
    speakers: int = field(default=24, metadata={"help": "number of distinct eSpeak speakers"})
    clips_per_speaker: int = field(default=40, metadata={"help": "sentences spoken by each speaker"})
    flite_voices: list[str] = field(default_factory=list, metadata={
        "help": "Flite voices (apt-get install flite; `flite -lv` lists them) added as speakers after the eSpeak "
                "ones"})
    flite_clips_per_voice: int = field(default=40, metadata={"help": "sentences spoken by each Flite voice"})
    seed: int = field(default=0, metadata={"help": "seed for sentences and voices"})


def write_synthetic_corpus(config: SyntheticCorpusConfig) -> Path:
    """Build the corpus and save it as a voice dataset folder (atomically), with its config."""
    dataset = clips_to_dataset(build_synthetic_corpus(config.speakers, config.clips_per_speaker, config.seed,
                                                      config.flite_voices, config.flite_clips_per_voice))
    out = Path(config.out)
    if out.exists():
        raise TokenttsError(f"{out} already exists")
    with building_directory(out) as tmp:
        dataset.save_to_disk(str(tmp))
        write_config(config, tmp, "synthetic_corpus.json")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, SyntheticCorpusConfig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(SyntheticCorpusConfig, args)
    out = write_synthetic_corpus(config)
    speakers = config.speakers + len(config.flite_voices)
    clips = config.speakers * config.clips_per_speaker + len(config.flite_voices) * config.flite_clips_per_voice
    print(f"wrote {clips} clips by {speakers} speakers to {out}")
    return 0
