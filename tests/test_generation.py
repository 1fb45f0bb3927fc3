"""Generation engine: equality with transformers' generate, sampling, stopping, batching, streaming,
long text, bad input, and the `tokentts generate` command."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from tokentts.cli import main
from tokentts.errors import TokenttsError
from tokentts.generation import Generator, SamplingConfig
from tokentts.generation.engine import Int8Weight, int8_activations_saturate, model_sampling, sample_codes, write_model_sampling
from tokentts.generation.text import split_sentences
from tokentts.model import Segment, load_model

GREEDY = dict(greedy=True, runaway_seconds=0)
# transformers' generate may pick the model's padding ids 2048..2050; our engine never does.
NOT_AUDIO = [2048, 2049, 2050]


@pytest.fixture(scope="module")
def generator(loaded):
    return Generator(loaded)


def whole_frames(frames: int, seed: int = 0) -> np.ndarray:
    """Noise of exactly `frames` Mimi frames (see tests/test_model.py: whole frames encode the same
    in transformers' CSM and in our codec)."""
    return (np.random.default_rng(seed).standard_normal(frames * 1920) * 0.1).astype(np.float32)


def transformers_greedy(loaded, conversation, frames):
    inputs = loaded.processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
    out = loaded.model.generate(**inputs, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=frames,
                                suppress_tokens=NOT_AUDIO, depth_decoder_suppress_tokens=NOT_AUDIO)
    return out[0].T  # [K, T]


def test_greedy_equals_transformers_generate(loaded, generator):
    frames = 24
    sampling = SamplingConfig(max_seconds=frames / 12.5, **GREEDY)
    ours = generator.generate("Hello there, how are you?", "0", (), sampling)
    theirs = transformers_greedy(loaded, [{"role": "0", "content": [{"type": "text", "text": "Hello there, how are you?"}]}], frames)
    assert ours.codes.shape == (8, frames) and ours.stop_reason == "max_length"
    assert torch.equal(ours.codes, theirs)
    assert ours.audio.shape == (frames * 1920,) and ours.audio.dtype == np.float32


def test_greedy_equals_transformers_generate_with_cloning_context(loaded, generator):
    frames = 16
    reference = whole_frames(15)
    sampling = SamplingConfig(max_seconds=frames / 12.5, **GREEDY)
    ours = generator.generate("How are you?", "1", [Segment("1", "Hello there.", reference)], sampling)
    conversation = [
        {"role": "1", "content": [{"type": "text", "text": "Hello there."}, {"type": "audio", "audio": reference}]},
        {"role": "1", "content": [{"type": "text", "text": "How are you?"}]},
    ]
    assert torch.equal(ours.codes, transformers_greedy(loaded, conversation, frames))


def test_cuda_static_shape_path_gives_the_same_codes(loaded, generator):
    """The static-shape steps that CUDA graphs capture (attend over the whole cache with a mask),
    run here on CPU: same greedy codes as the default path, batched and with a cloning context."""
    static = Generator(loaded, compile=False)
    static.static_shapes = True
    sampling = SamplingConfig(max_seconds=12 / 12.5, **GREEDY)
    context = [Segment("1", "A short reference.", whole_frames(6, seed=3))]
    texts = ["Hello there.", "A longer sentence than the first one."]
    for ours, reference in zip(static.generate_batch(texts, "0", context, sampling),
                               generator.generate_batch(texts, "0", context, sampling)):
        assert torch.equal(ours.codes, reference.codes)


def test_batch_rows_equal_single_generation(generator):
    context = [Segment("1", "Hello there.", whole_frames(10))]
    sampling = SamplingConfig(max_seconds=1.0, **GREEDY)
    texts = ["Hi.", "A much longer sentence than the first one."]  # different lengths: left padding
    batch = generator.generate_batch(texts, "0", context, sampling)
    for text, result in zip(texts, batch):
        assert torch.equal(result.codes, generator.generate(text, "0", context, sampling).codes)


def test_batch_rows_with_their_own_seeds_sample_what_they_would_alone(generator):
    context = [Segment("1", "Hello there.", whole_frames(10))]
    sampling = SamplingConfig(max_seconds=1.0, runaway_seconds=0)
    texts = ["Hi.", "A much longer sentence than the first one.", "Hi."]
    batch = generator.generate_batch(texts, "0", context, sampling, seeds=[5, 6, 7])
    for text, seed, result in zip(texts, (5, 6, 7), batch):
        alone = generator.generate(text, "0", context, dataclasses.replace(sampling, seed=seed))
        assert torch.equal(result.codes, alone.codes)
    assert not torch.equal(batch[0].codes, batch[2].codes)  # same text, other seed: other sample
    with pytest.raises(ValueError, match="2 seeds for 3 texts"):
        generator.generate_batch(texts, "0", context, sampling, seeds=[1, 2])


def test_seeded_sampling_is_reproducible(generator):
    sampling = SamplingConfig(seed=7, max_seconds=1.0, runaway_seconds=0)
    a = generator.generate("Good morning.", sampling=sampling)
    b = generator.generate("Good morning.", sampling=sampling)
    c = generator.generate("Good morning.", sampling=SamplingConfig(seed=8, max_seconds=1.0, runaway_seconds=0))
    assert torch.equal(a.codes, b.codes) and np.array_equal(a.audio, b.audio)
    assert not torch.equal(a.codes, c.codes)
    assert int(a.codes.max()) < 2048  # never the model's padding ids


def test_sample_codes_warpers():
    logits = torch.tensor([[0.0, 1.0, 5.0, 4.9, -3.0]])
    rng = torch.Generator().manual_seed(0)
    assert sample_codes(logits, 1.0, 0, 1.0, True, rng).item() == 2
    top2 = {sample_codes(logits, 5.0, 2, 1.0, False, rng).item() for _ in range(200)}
    assert top2 == {2, 3}  # top-k keeps exactly the two best, even at a high temperature
    nucleus = {sample_codes(logits, 1.0, 0, 0.3, False, rng).item() for _ in range(100)}
    assert nucleus == {2}  # the best code alone holds more than 30 % of the mass
    spread = {sample_codes(logits, 100.0, 0, 1.0, False, rng).item() for _ in range(300)}
    assert spread == {0, 1, 2, 3, 4}


def test_model_generation_config_sets_the_default_sampling(tiny_dir, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir, model_dir)
    # top-k 1 in both decoders: the model's default sampling becomes greedy decoding
    write_model_sampling(model_dir, {"temperature": 0.5, "top_k": 1, "depth_temperature": 0.5, "depth_top_k": 1})
    loaded = load_model(model_dir)
    assert model_sampling(loaded.model) == {"temperature": 0.5, "top_k": 1, "depth_temperature": 0.5, "depth_top_k": 1}
    generator = Generator(loaded)
    greedy = generator.generate("Defaults.", sampling=SamplingConfig(max_seconds=1.0, **GREEDY)).codes
    unset = generator.generate("Defaults.", sampling=SamplingConfig(seed=1, max_seconds=1.0, runaway_seconds=0)).codes
    assert torch.equal(unset, greedy)
    # flags override the model: the built-in top-k 50 samples something else
    overridden = SamplingConfig(seed=1, top_k=50, depth_top_k=50, temperature=0.9, max_seconds=1.0, runaway_seconds=0)
    assert not torch.equal(generator.generate("Defaults.", sampling=overridden).codes, greedy)

    # saving the model keeps them (transformers moves the depth_decoder_* keys and back)
    loaded.model.save_pretrained(tmp_path / "saved")
    from transformers import CsmForConditionalGeneration

    assert model_sampling(CsmForConditionalGeneration.from_pretrained(tmp_path / "saved"))["depth_top_k"] == 1

    # `generate` records the sampling it ran with: the model's, or the flag's
    for flags, temperature in (([], 0.5), (["--temperature", "0.7"], 0.7)):
        out = tmp_path / f"o{temperature}.wav"
        assert main(["generate", "--model", str(model_dir), "--text", "Hi.", "--max-seconds", "0.2",
                     "--out", str(out), *flags]) == 0
        recorded = json.loads(out.with_suffix(".config.json").read_text())
        assert (recorded["temperature"], recorded["top_k"], recorded["depth_top_p"]) == (temperature, 1, 1.0)


def test_stops_at_end_frame_and_on_runaway(tiny_dir):
    # Zero heads make every logit equal, so greedy picks code 0 everywhere: the end-of-audio frame.
    silent = load_model(tiny_dir)
    with torch.no_grad():
        silent.model.lm_head.weight.zero_()
        silent.model.depth_decoder.codebooks_head.weight.zero_()
    result = Generator(silent).generate("Hello.", sampling=SamplingConfig(max_seconds=2.0, greedy=True))
    assert result.stop_reason == "eos" and result.codes.shape == (8, 0) and len(result.audio) == 0

    # Codebook 0 stuck on one value (the others vary): stopped as runaway after runaway_seconds.
    stuck = load_model(tiny_dir)
    with torch.no_grad():
        stuck.model.lm_head.weight.zero_()
    sampling = SamplingConfig(max_seconds=5.0, greedy=True, runaway_seconds=0.8)
    result = Generator(stuck).generate("Hello.", sampling=sampling)
    assert result.stop_reason == "runaway" and result.codes.shape[1] == 10


def test_int8_weights_stay_close_to_float(loaded):
    weight = loaded.model.backbone_model.layers[0].mlp.down_proj.weight
    x = torch.randn(4, weight.shape[1], generator=torch.Generator().manual_seed(0))
    exact = torch.nn.functional.linear(x, weight)
    error = (Int8Weight.quantize(weight).linear(x) - exact).norm() / exact.norm()
    # 8-bit activations where the CPU sums them without saturating (VNNI), 7-bit ones elsewhere.
    assert 0 < error < (0.025 if int8_activations_saturate() else 0.01)
    codes = Generator(loaded, quantize="int8").generate("Quantized.", sampling=SamplingConfig(max_seconds=0.4, **GREEDY)).codes
    assert codes.shape == (8, 5) and int(codes.max()) < 2048
    with pytest.raises(TokenttsError, match="only int8"):
        Generator(loaded, quantize="int4")


def test_stream_yields_early_chunks_matching_generate(generator):
    sampling = SamplingConfig(seed=3, max_seconds=2.0, runaway_seconds=0)
    chunks = list(generator.stream("Streaming works.", sampling=sampling, first_chunk_frames=2, chunk_frames=8))
    full = generator.generate("Streaming works.", sampling=sampling)
    assert len(chunks[0]) == 2 * 1920 and all(len(c) == 8 * 1920 for c in chunks[1:-1])
    np.testing.assert_allclose(np.concatenate(chunks), full.audio, atol=1e-4)


def test_long_text_is_spoken_sentence_by_sentence(loaded):
    text = "First sentence here. Second one follows! And a third? " * 2
    assert len(split_sentences(text, max_chars=30)) == 6
    # each chunk gets its own frame budget (5 frames) and follows the previous chunk's audio
    result = Generator(loaded, max_chunk_chars=30).generate(text, sampling=SamplingConfig(max_seconds=0.4, **GREEDY))
    assert result.codes.shape[1] == 5 * 6


def test_split_sentences():
    assert split_sentences("One. Two!  Three?", max_chars=5) == ["One.", "Two!", "Three?"]
    assert split_sentences("One. Two! Three?") == ["One. Two! Three?"]
    assert split_sentences('He said "stop." Then left.', max_chars=12) == ["He said", '"stop."', "Then left."]
    long = "word " * 100
    assert all(len(c) <= 30 for c in split_sentences(long, max_chars=30))
    assert " ".join(split_sentences(long, max_chars=30)) == long.strip()


def test_context_too_long_for_the_model_is_refused(generator):
    huge = Segment("0", "A very long reference.", codes=torch.randint(0, 2048, (8, 2040)))
    with pytest.raises(TokenttsError, match="leaving no room"):
        generator.generate("Hello.", context=[huge])
    with pytest.raises(TokenttsError, match="empty"):
        generator.generate("   ")
    with pytest.raises(TokenttsError, match="has no audio"):
        generator.generate("Hello.", context=[Segment("0", "no audio here")])


def test_cli_generate_writes_audio_and_config(tiny_dir, tmp_path):
    from tokentts.audio import load_audio, write_audio

    write_audio(tmp_path / "ref.wav", whole_frames(12), 24000)
    out = tmp_path / "out" / "speech.wav"
    code = main(["generate", "--model", str(tiny_dir), "--text", "Hello world.", "--voice", str(tmp_path / "ref.wav"),
                 "--voice-text", "Some reference words.", "--seed", "1", "--max-seconds", "0.8",
                 "--runaway-seconds", "0", "--out", str(out)])
    assert code == 0
    assert len(load_audio(out)) == 10 * 1920
    config = json.loads((out.parent / "speech.config.json").read_text())
    assert config["seed"] == 1 and config["model"] == str(tiny_dir)

    streamed = tmp_path / "streamed.wav"
    assert main(["generate", "--model", str(tiny_dir), "--text", "Hello world.", "--seed", "1", "--stream",
                 "--max-seconds", "0.8", "--runaway-seconds", "0", "--out", str(streamed)]) == 0
    assert len(load_audio(streamed)) == 10 * 1920


def test_cli_without_model_uses_the_embedded_base(tmp_path, capsys):
    from tokentts.model.embedded import embedded_model_path

    assert embedded_model_path() is not None  # the package ships its base model
    args = ["generate", "--text", "Hi.", "--max-seconds", "0.16", "--out", str(tmp_path / "o.wav")]
    assert main(args) == 0 and (tmp_path / "o.wav").is_file()
    assert json.loads((tmp_path / "o.config.json").read_text())["model"] == str(embedded_model_path())


@pytest.mark.parametrize("args, message", [
    (["--model", "MODEL"], "exactly one of --text or --text-file"),
    (["--model", "MODEL", "--text", "  "], "the text is empty"),
    (["--model", "MODEL", "--text-file", "/no/such/file.txt"], "cannot read text file"),
    (["--model", "/no/such/model", "--text", "Hi."], "neither a folder nor a hub id"),
    (["--model", "MODEL", "--text", "Hi.", "--voice", "BAD"], "cannot read reference audio"),
    (["--model", "MODEL", "--text", "Hi.", "--adapter", "/no/adapter"], "does not exist"),
    (["--model", "MODEL", "--text", "Hi.", "--temperature", "0"], "temperature must be > 0"),
    (["--model", "MODEL", "--text", "Hi.", "--speaker", "bob"], "speaker must be a number"),
    # an argument with undecodable bytes reaches Python as lone surrogates
    (["--model", "MODEL", "--text", "Hi \udcff there."], "not valid Unicode"),
])
def test_cli_bad_input_is_one_line_error(tiny_dir, tmp_path, capsys, args, message):
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really audio")
    args = [str(tiny_dir) if a == "MODEL" else str(tmp_path / "bad.wav") if a == "BAD" else a for a in args]
    assert main(["generate", *args, "--out", str(tmp_path / "o.wav")]) == 2
    err = capsys.readouterr().err.strip()
    # one line (after any model-loading progress bar), no traceback
    assert message in err.splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "o.wav").exists()
