"""The aligned text layout (tokentts.model.prompt): positions, training examples that equal the
generation prompt, our engine against transformers' forward with the same positions, and the
speaking rate that pretraining and LoRA fine-tuning record."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tokentts.errors import TokenttsError
from tokentts.generation import Generator, SamplingConfig
from tokentts.model import Segment, build_prompt, load_model, save_tiny_csm
from tokentts.model.prompt import (
    ALIGNED,
    TIMED,
    FRAMES_PER_TOKEN_KEY,
    TEXT_POSITIONS_KEY,
    Prompt,
    TextLayout,
    align_text,
    audio_frames,
    embed_frames,
    header_length,
    text_frames,
    tokenize_text,
    spoken_text,
)
from tokentts.training.examples import CsmTrainingDataset, TrainingClip

RATE = 2.0  # frames per text token of the test model


@pytest.fixture(scope="module")
def aligned_dir(tmp_path_factory):
    """The tiny random CSM, saved with the aligned layout in its config (as `pretrain` writes it)."""
    folder = save_tiny_csm(tmp_path_factory.mktemp("aligned"), num_codebooks=8, seed=1)
    config = json.loads((folder / "config.json").read_text())
    config.update({TEXT_POSITIONS_KEY: ALIGNED, FRAMES_PER_TOKEN_KEY: RATE})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def aligned(aligned_dir):
    return load_model(aligned_dir, device="cpu")


def random_codes(frames: int, seed: int = 0) -> torch.LongTensor:
    return torch.randint(1, 2048, (8, frames), generator=torch.Generator().manual_seed(seed))


def test_text_is_spread_over_the_audio_it_speaks():
    text = text_frames(list(range(11)), num_codebooks=8)  # <bos> [ 0 ] + 6 text tokens + <eos>
    spread = align_text(text, header_tokens=4, num_frames=12)
    assert spread.positions.tolist() == [0, 0, 0, 0, 1, 3, 5, 7, 9, 11, 12]
    segment = Prompt.cat([spread, audio_frames(random_codes(12), 9, 10)])
    # Audio frame t sits at position t, the end-of-audio frame at 12; the next segment starts at 13.
    assert segment.positions[11:].tolist() == list(range(13)) and segment.next_position == 13
    assert Prompt.cat([segment, spread]).positions[-1] == 13 + 12


def test_csm_1b_layout_is_unchanged(loaded):
    """A model without the aligned setting numbers frames 0, 1, 2, ... as csm-1b does."""
    assert not TextLayout.of(loaded.model.config).aligned
    prompt = build_prompt([Segment("0", "Hi there.", codes=random_codes(5)), Segment("0", "And you?")], loaded)
    assert prompt.positions.tolist() == list(range(len(prompt))) and prompt.next_position == len(prompt)


def test_target_text_spreads_over_the_context_speaking_rate(aligned):
    tokenizer = aligned.processor.tokenizer
    context = Segment("0", "Ten words.", codes=random_codes(30))  # 10 text tokens -> 3 frames per token
    prompt = build_prompt([context, Segment("0", "Four")], aligned)
    context_len = len(tokenize_text(tokenizer, "0", context.text)) + 30 + 1
    target = prompt.positions[context_len:]
    assert target[0] == 31 and target[-1] == 31 + 4 * 3 and prompt.next_position == 31
    # Without audio in the prompt, the model's own rate applies.
    alone = build_prompt([Segment("0", "Four")], aligned)
    assert alone.positions[-1] == 4 * RATE and alone.next_position == 0


@pytest.fixture(scope="module")
def timed(aligned_dir, tmp_path_factory):
    """The same tiny model with the timed layout."""
    folder = tmp_path_factory.mktemp("timed") / "model"
    shutil.copytree(aligned_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, TEXT_POSITIONS_KEY: TIMED}))
    return load_model(folder, device="cpu")


@pytest.fixture(scope="module")
def phoneme_timed(aligned_dir, tmp_path_factory):
    """The same tiny model reading eSpeak's timed phonemes."""
    from tokentts.model.prompt import ESPEAK_IPA, TEXT_FRONTEND_KEY

    folder = tmp_path_factory.mktemp("phoneme-timed") / "model"
    shutil.copytree(aligned_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, TEXT_POSITIONS_KEY: TIMED, TEXT_FRONTEND_KEY: ESPEAK_IPA}))
    return load_model(folder, device="cpu")


@pytest.mark.parametrize("layout", ["aligned", "timed", "phoneme-timed"])
def test_training_example_is_the_generation_prompt(layout, aligned, timed, phoneme_timed):
    """What the model learns from is laid out exactly as what it later continues from."""
    from tokentts.training.data import EncodedClip
    from tokentts.training.examples import tokenize_clips

    model = {"aligned": aligned, "timed": timed, "phoneme-timed": phoneme_timed}[layout]
    tokenizer, config = model.processor.tokenizer, model.model.config
    texts = ["First clip, quite short.", "The second one is extraordinarily long."]
    clips, _ = tokenize_clips([EncodedClip(row, text, "0", random_codes(frames, row))
                               for row, (text, frames) in enumerate(zip(texts, (27, 43)))],
                              tokenizer, 256, 2048, TextLayout.of(config))
    dataset = CsmTrainingDataset(clips, audio_token_id=config.audio_token_id,
                                 audio_eos_token_id=config.audio_eos_token_id, depth_frame_fraction=1.0,
                                 context_probability=1.0, aligned=True)
    example = dataset[1]  # clip 0 as context, clip 1 as target
    prompt = build_prompt([Segment("0", texts[0], codes=clips[0].codes), Segment("0", texts[1], codes=clips[1].codes)],
                          model)
    assert torch.equal(example["tokens"], prompt.tokens) and torch.equal(example["position_ids"], prompt.positions)
    if layout != "phoneme-timed":
        even = build_prompt([Segment("0", texts[0], codes=clips[0].codes), Segment("0", texts[1], codes=clips[1].codes)],
                            aligned)
        assert torch.equal(even.tokens, prompt.tokens)
        assert torch.equal(even.positions, prompt.positions) == (layout == "aligned")


def test_timed_layout_places_each_word_where_another_voice_says_it(timed):
    """eSpeak's word timings in its default voice, scaled to a clip, predict where a different voice
    (variant, pitch, slower rate) says each word far better than even spreading does."""
    from tokentts.audio.synth import EspeakVoice, espeak_word_timings

    text = "Extraordinarily, a cat sat on the unbelievably comfortable mat at noon."
    words, seconds = espeak_word_timings(text, EspeakVoice("en-gb-x-rp", "m3", pitch=30, rate=120))
    fps = 25.0  # the embedded codec's frame rate
    frames = round(seconds * fps)
    assert 90 < frames < 180 and len(words) >= 8
    tokenizer = timed.processor.tokenizer
    header = header_length(tokenizer, "0")
    ids = tokenize_text(tokenizer, "0", text)
    errors = {}
    timed_layout = TextLayout(aligned=True, timed=True)
    for layout, durations in (("even", None), ("timed", spoken_text(text, timed_layout)[1])):
        positions = align_text(text_frames(ids, 8), header, frames, durations).positions[header:-1]
        # Where the layout puts each word's first character against when the other voice starts it.
        errors[layout] = max(abs(int(positions[len(text[:char].encode())]) - start * fps) for char, start in words)
    assert errors["timed"] < 4 and errors["timed"] < errors["even"] / 2, errors  # 4 frames: 160 ms
    durations = spoken_text("Ünïcode café, naïve.", timed_layout)[1]
    assert len(durations) == len("Ünïcode café, naïve.".encode()) and min(durations) > 0
    with pytest.raises(TokenttsError, match="one token per UTF-8 byte"):
        align_text(text_frames(ids, 8), header, frames, durations)


def test_phoneme_timed_layout_reads_the_phonemes_espeak_speaks_with_their_durations():
    """espeak-ipa + timed: the text is the phonemes of eSpeak's own synthesis, a space before each
    word and "," for each pause, each phoneme's bytes sharing the time eSpeak gives it."""
    from tokentts.audio.synth import espeak_phoneme_timings, espeak_phonemes

    text = "Please wait, then go."
    ipa, durations = spoken_text(text, TextLayout(aligned=True, phonemes=True, timed=True))
    assert ipa.split(",")[0].replace(" ", "") == espeak_phonemes(text).split(",")[0].replace(" ", "")
    assert ipa.count(" ") == 3 and "," in ipa and len(durations) == len(ipa.encode())
    phonemes, total = espeak_phoneme_timings(text)
    assert abs(sum(durations) - total) < 0.1  # the whole utterance, leading and trailing silence included
    # The comma's pause is the longest piece of the sentence.
    pause = ipa.index(",")
    assert durations[len(ipa[:pause].encode())] == max(durations)
    with pytest.raises(TokenttsError, match="nothing to say"):
        spoken_text("?!", TextLayout(aligned=True, phonemes=True, timed=True))


def test_engine_matches_transformers_forward_with_aligned_positions(aligned):
    """Greedy frames from our engine, teacher-forced through transformers' CSM with the positions the
    layout prescribes, are the frames transformers would pick: the engine places every generated frame
    where training put it."""
    frames = 12
    context = [Segment("0", "A reference clip.", codes=random_codes(20, seed=5))]
    result = Generator(aligned).generate("Say this now.", "0", context,
                                         SamplingConfig(greedy=True, runaway_seconds=0, max_seconds=frames / 12.5))
    assert result.codes.shape == (8, frames)
    prompt = build_prompt([*context, Segment("0", "Say this now.")], aligned)
    generated = audio_frames(result.codes, aligned.model.config.audio_token_id, 0)
    tokens = torch.cat([prompt.tokens, generated.tokens[:frames]])
    mask = torch.cat([prompt.mask, generated.mask[:frames]])
    positions = torch.cat([prompt.positions, prompt.next_position + torch.arange(frames)])
    # An explicit attention mask: given position ids without one, transformers reads every drop in
    # position as the start of another packed sequence and masks across it (training passes one too).
    everything = torch.ones(1, len(tokens), dtype=torch.long)
    with torch.no_grad():
        out = aligned.model(inputs_embeds=embed_frames(aligned.model, tokens[None], mask[None]),
                            position_ids=positions[None], attention_mask=everything, use_cache=False)
    # Logits at the last prompt frame and each generated frame predict codebook 0 of the next frame.
    c0_logits = out.logits[0, len(prompt) - 1 : len(prompt) - 1 + frames, :2048]
    assert torch.equal(c0_logits.argmax(-1), result.codes[0])
    # The sequential numbering gives other logits: the positions are in effect.
    with torch.no_grad():
        plain = aligned.model(inputs_embeds=embed_frames(aligned.model, tokens[None], mask[None]),
                              attention_mask=everything, use_cache=False)
    assert not torch.allclose(plain.logits, out.logits, atol=1e-3)


def test_phoneme_front_end_reads_espeak_ipa(aligned_dir, tmp_path):
    """A model whose config names the espeak-ipa front end reads eSpeak NG's IPA for the text, in
    prompts and training examples alike."""
    from tokentts.audio.synth import espeak_phonemes
    from tokentts.model.prompt import ESPEAK_IPA, TEXT_FRONTEND_KEY
    from tokentts.training.data import EncodedClip
    from tokentts.training.examples import tokenize_clips

    ipa = espeak_phonemes("Please tell Clara. Why?")
    assert "klˈ" in ipa and ipa == espeak_phonemes("Please tell Clara. Why?") and not set(ipa) & set("CPW")
    folder = tmp_path / "ipa"
    shutil.copytree(aligned_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, TEXT_FRONTEND_KEY: ESPEAK_IPA}))
    model = load_model(folder, device="cpu")
    assert TextLayout.of(model.model.config).phonemes
    tokenizer = model.processor.tokenizer
    prompt = build_prompt([Segment("0", "Please tell Clara.")], model)
    assert tokenizer.decode(prompt.input_ids[4:-1].tolist()) == espeak_phonemes("Please tell Clara.")
    clips, _ = tokenize_clips([EncodedClip(0, "Please tell Clara.", "0", random_codes(9))], tokenizer, 256, 2048,
                              TextLayout.of(model.model.config))
    assert clips[0].text_ids == prompt.input_ids.tolist()
    with pytest.raises(TokenttsError, match="nothing to phonemize"):
        espeak_phonemes("  ")
    with pytest.raises(TokenttsError, match="nothing to say"):
        build_prompt([Segment("0", "?!")], model)
