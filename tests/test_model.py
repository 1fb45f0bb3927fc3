"""Model core: tiny CSM factory, loading (tie check, adapters), Mimi codec, prompt frame layout."""

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import CsmForConditionalGeneration

from tokentts.codecs import Codec, MimiCodec
from tokentts.codecs.base import StreamingDecoder
from tokentts.errors import TokenttsError
from tokentts.model import Segment, build_prompt, embed_prompt, load_model, save_tiny_csm
from tokentts.model.loading import check_tied_audio_embeddings
from tokentts.model.prompt import load_reference, tokenize_text
from tokentts.model.tiny import tiny_config, tiny_tokenizer


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 24000)) * 0.1).astype(np.float32)


def whole_frames(frames: int, seed: int = 0) -> np.ndarray:
    """Noise of exactly `frames` Mimi frames. transformers' CSM encodes a clip's last partial frame a
    little differently from our (batch-consistent) codec, so comparisons with it use whole frames."""
    return noise(frames * 0.08, seed)


def test_tiny_model_saves_in_csm1b_format_and_loads(tiny_dir, loaded):
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "processor_config.json", "chat_template.jinja"):
        assert (tiny_dir / name).is_file(), name
    assert isinstance(loaded.model, CsmForConditionalGeneration) and not loaded.model.training
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.num_codebooks == 8 and loaded.max_positions == 2048
    assert loaded.source == str(tiny_dir)
    # the same seed gives the same weights
    again = save_tiny_csm(tiny_dir.parent / "again", seed=0)
    reloaded = CsmForConditionalGeneration.from_pretrained(again)
    assert torch.equal(reloaded.lm_head.weight, CsmForConditionalGeneration.from_pretrained(tiny_dir).lm_head.weight)


def test_load_model_dtype_and_bad_paths(tiny_dir, tmp_path):
    assert load_model(tiny_dir, dtype="bfloat16").model.lm_head.weight.dtype == torch.bfloat16
    with pytest.raises(TokenttsError, match="neither a folder nor a hub id"):
        load_model(tmp_path / "missing" / "model")
    with pytest.raises(TokenttsError, match="cannot load model"):
        load_model("nobody/no-such-model")  # offline: the hub is never reached
    with pytest.raises(TokenttsError, match="unknown dtype"):
        load_model(tiny_dir, dtype="float8")
    with pytest.raises(TokenttsError, match="cannot load model"):
        load_model(tmp_path)  # an empty folder


def test_untied_audio_embeddings_are_refused(tiny_dir):
    model = CsmForConditionalGeneration.from_pretrained(tiny_dir)
    check_tied_audio_embeddings(model)
    table = model.backbone_model.embed_tokens.embed_audio_tokens.weight
    model.depth_decoder.model.embed_tokens.weight = torch.nn.Parameter(torch.randn_like(table))
    with pytest.raises(TokenttsError, match="not tied"):
        check_tied_audio_embeddings(model)


def _save_adapter(model, out_dir):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out_dir)
    return out_dir


def test_adapter_is_merged_and_foreign_adapter_refused(tiny_dir, tmp_path):
    base = load_model(tiny_dir).model
    adapter = _save_adapter(CsmForConditionalGeneration.from_pretrained(tiny_dir), tmp_path / "adapter")
    tuned = load_model(tiny_dir, adapter=adapter).model
    assert type(tuned) is CsmForConditionalGeneration  # merged, no peft wrappers left
    q_base = base.backbone_model.layers[0].self_attn.q_proj.weight
    q_tuned = tuned.backbone_model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_base, q_tuned)
    assert torch.equal(base.lm_head.weight, tuned.lm_head.weight)  # not targeted

    # an adapter trained on a CSM of another size
    config = tiny_config(tiny_tokenizer())
    config.hidden_size = 96
    other = _save_adapter(CsmForConditionalGeneration(config), tmp_path / "other")
    with pytest.raises(TokenttsError, match="does not fit model"):
        load_model(tiny_dir, adapter=other)
    with pytest.raises(TokenttsError, match="no adapter_config.json"):
        load_model(tiny_dir, adapter=tmp_path)
    with pytest.raises(TokenttsError, match="does not exist"):
        load_model(tiny_dir, adapter=tmp_path / "nope")


def test_mimi_codec_encode_decode_batch_and_stream(loaded):
    codec = loaded.codec
    assert isinstance(codec, MimiCodec) and isinstance(codec, Codec)
    assert (codec.sample_rate, codec.frame_rate, codec.num_codebooks, codec.codebook_size) == (24000, 12.5, 8, 2048)
    a, b = noise(1.0) , noise(0.3, seed=1)
    codes = codec.encode(a)
    assert codes.shape == (8, 13) and codes.dtype == torch.long and int(codes.max()) < 2048
    batch = codec.encode_batch([a, b])
    assert torch.equal(batch[0], codes) and torch.equal(batch[1], codec.encode(b)) and batch[1].shape == (8, 4)
    audio = codec.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == (13 * 1920,)
    # streaming decode with left context joins into the one-shot decode
    stream = StreamingDecoder(codec, context_frames=8)
    chunks = [stream.push(codes[:, :2]), stream.push(codes[:, 2:9]), stream.push(codes[:, 9:])]
    assert [len(c) for c in chunks] == [2 * 1920, 7 * 1920, 4 * 1920]
    np.testing.assert_allclose(np.concatenate(chunks), audio, atol=1e-4)


def test_prompt_matches_transformers_processor_and_embeddings(loaded):
    reference = whole_frames(13)
    segments = [Segment("1", "Hello there.", reference), Segment("0", "How are you?")]
    prompt = build_prompt(segments, loaded)
    conversation = [
        {"role": "1", "content": [{"type": "text", "text": "Hello there."}, {"type": "audio", "audio": reference}]},
        {"role": "0", "content": [{"type": "text", "text": "How are you?"}]},
    ]
    inputs = loaded.processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
    assert torch.equal(prompt.input_ids, inputs["input_ids"][0])
    # layout: text frames, 13 audio frames, the all-zero end frame, text frames
    tokenizer = loaded.processor.tokenizer
    first_text = tokenize_text(tokenizer, "1", "Hello there.")
    assert first_text[0] == tokenizer.bos_token_id and first_text[-1] == tokenizer.eos_token_id
    n = len(first_text)
    assert not prompt.is_audio[:n].any() and prompt.is_audio[n : n + 14].all() and not prompt.is_audio[n + 14 :].any()
    assert torch.equal(prompt.audio_codes[n : n + 13].T, loaded.codec.encode(reference))
    assert not prompt.audio_codes[n + 13].any()  # end of audio
    merged = loaded.model._merge_input_ids_with_input_values(
        inputs["input_ids"], inputs["input_values"], inputs["input_values_cutoffs"])["inputs_embeds"]
    assert torch.equal(embed_prompt(loaded.model, prompt), merged)
    # pre-encoded codes give the same prompt without the codec
    assert torch.equal(build_prompt([Segment("1", "Hello there.", codes=loaded.codec.encode(reference)), segments[1]],
                                    loaded).tokens, prompt.tokens)


def test_prompt_bad_text_and_speaker(loaded):
    with pytest.raises(TokenttsError, match="empty"):
        build_prompt([Segment("0", "  \n ")], loaded)
    with pytest.raises(TokenttsError, match="speaker"):
        build_prompt([Segment("alice", "hi")], loaded)
    # any character is fine for the byte-level tokenizer (as for Llama 3's)
    assert len(build_prompt([Segment("0", "naïve – 東京 🙂")], loaded)) > 10


def test_load_reference_converts_trims_and_rejects(tmp_path, caplog):
    import soundfile as sf

    stereo = np.random.default_rng(0).uniform(-0.3, 0.3, (3 * 44100, 2))  # 3 s, 44.1 kHz, two channels
    sf.write(tmp_path / "ref.wav", stereo, 44100)
    segment = load_reference(tmp_path / "ref.wav", "some words", speaker="2", max_seconds=2.0)
    assert segment.audio.ndim == 1 and len(segment.audio) == 2 * 24000 and segment.speaker == "2"
    assert "using only its first 2.0 s" in caplog.text
    (tmp_path / "bad.wav").write_bytes(b"this is not audio")
    with pytest.raises(TokenttsError):
        load_reference(tmp_path / "bad.wav", "words")
    with pytest.raises(TokenttsError):
        load_reference(tmp_path / "missing.wav", "words")


def test_reference_without_transcript_is_transcribed():
    from tokentts.audio.synth import synthesize_espeak

    speech = synthesize_espeak("Hello world, this is my voice.")
    segment = load_reference(speech, text=None, speaker="0")
    assert "world" in segment.text.lower() and np.array_equal(segment.audio, speech)
