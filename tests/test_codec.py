import json

import numpy as np
import pytest
import torch

from tokentts.audio.synth import EspeakVoice, synthesize_espeak
from tokentts.cli import main
from tokentts.codecs.base import Codec
from tokentts.codecs.neural import CodecModel, CodecModelConfig, NeuralCodec, load_codec
from tokentts.codecs.neural.adapt import _CropSampler, adapt_decoder
from tokentts.codecs.neural.quantizer import EMAVectorQuantizer
from tokentts.codecs.neural.train import TrainCodecConfig, train_codec
from tokentts.config import write_json_atomic
from tokentts.data.synthetic import SyntheticCorpusConfig, synthetic_sentences, write_synthetic_corpus
from tokentts.errors import TokenttsError

# A codec small enough to train for a few hundred steps inside a test.
TINY = {"hidden_dim": 64, "latent_dim": 32, "encoder_layers": 1, "decoder_layers": 2, "num_codebooks": 8, "codebook_size": 32}


def tiny_codec(seed: int = 0) -> NeuralCodec:
    """A randomly initialised tiny codec whose codebooks were initialised on real speech."""
    torch.manual_seed(seed)
    model = CodecModel(CodecModelConfig(**TINY))
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(synthesize_espeak("Codebooks start on real speech.", EspeakVoice(variant="f2")))[None])
    return NeuralCodec(model)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    config = SyntheticCorpusConfig(out=tmp_path_factory.mktemp("data") / "corpus", speakers=2, clips_per_speaker=3)
    return write_synthetic_corpus(config)


def test_codec_follows_the_protocol_with_the_promised_shapes():
    codec = tiny_codec()
    assert isinstance(codec, Codec)
    assert (codec.sample_rate, codec.frame_rate, codec.num_codebooks, codec.codebook_size) == (24000, 25.0, 8, 32)
    short = synthesize_espeak("One.", EspeakVoice(variant="m3"))
    long = synthesize_espeak("A longer sentence than the first one.", EspeakVoice(variant="m3"))
    codes = codec.encode(long)
    assert codes.dtype == torch.long and codes.shape == (8, -(-len(long) // 960))
    assert 0 <= int(codes.min()) and int(codes.max()) < 32
    # Batched encoding masks the padding: each clip's latents are those it gets alone, up to float
    # rounding (about 1e-7), where unmasked padding moves the short clip's latents by about 2e-2.
    model = codec.model  # NeuralCodec keeps it in eval mode
    padded = torch.zeros(2, len(long))
    padded[0, : len(short)], padded[1] = torch.from_numpy(short), torch.from_numpy(long)
    with torch.inference_mode():
        masked = model.encode_latents(padded, [len(short), len(long)])
        unmasked = model.encode_latents(padded)
        short_alone, long_alone = (model.encode_latents(torch.from_numpy(w)[None])[0] for w in (short, long))
    frames = short_alone.shape[-1]
    assert torch.allclose(masked[0, :, :frames], short_alone, atol=1e-5) and torch.allclose(masked[1], long_alone, atol=1e-5)
    assert not torch.allclose(unmasked[0, :, :frames], short_alone, atol=1e-3)
    # So the codes agree too, except where a latent sits on a near-tie between two codes, which rounding
    # can tip (it changes that frame's later codebooks as well; seen on up to 2 of the short clip's 10 frames).
    batch = codec.encode_batch([short, long])
    for batched, alone in ((batch[0], codec.encode(short)), (batch[1], codes)):
        assert batched.shape == alone.shape and (batched == alone).all(dim=0).float().mean() >= 0.7
    audio = codec.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == (codes.shape[1] * 960,)
    assert codec.decode(codes[:1]).shape == audio.shape  # codebook 0 alone decodes too
    assert codec.decode(codes[:, :0]).shape == (0,)


def test_dead_code_is_restarted_and_used_again():
    torch.manual_seed(0)
    centers = torch.randn(8, 4) * 3
    data = lambda: centers[torch.randint(8, (512,))] + 0.1 * torch.randn(512, 4)  # noqa: E731

    def train_with_killed_code(dead_fraction: float) -> tuple[EMAVectorQuantizer, torch.Tensor]:
        quantizer = EMAVectorQuantizer(dim=4, codebook_size=16, decay=0.8, dead_fraction=dead_fraction).train()
        quantizer(data())
        with torch.no_grad():
            quantizer.codebook[3] = 1e3  # far from every latent: nothing will pick it
            quantizer.embed_sum[3] = 1e3 * quantizer.cluster_size[3]
        for _ in range(40):
            quantizer(data())
        quantizer.eval()
        _, codes = quantizer(data())
        return quantizer, torch.bincount(codes, minlength=16)

    revived, counts = train_with_killed_code(dead_fraction=0.1)
    assert revived.codebook[3].abs().max() < 20 and counts[3] > 0
    # EMA updates moved the codes onto the clusters: most latents lie close to their code
    # (online k-means can still leave one code between two clusters, hence the median).
    latents = data()
    quantized, _ = revived(latents)
    assert (quantized - latents).pow(2).sum(1).median() < 0.2
    # Without restarts the killed code stays dead: the restart is what revived it.
    stuck, counts = train_with_killed_code(dead_fraction=0.0)
    assert stuck.codebook[3].abs().min() > 100 and counts[3] == 0


def test_save_load_round_trip_gives_identical_codes_and_audio(tmp_path):
    codec = tiny_codec()
    wav = synthesize_espeak("Saved and loaded again.", EspeakVoice(variant="m1"))
    path = codec.save(tmp_path / "codec")
    loaded = load_codec(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codec"]  # no temporary folder left behind
    codes = codec.encode(wav)
    assert torch.equal(loaded.encode(wav), codes)
    assert np.array_equal(loaded.decode(codes), codec.decode(codes))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "codec_config.json").write_text((path / "codec_config.json").read_text())
    with pytest.raises(TokenttsError, match="not a neural codec folder"):
        load_codec(broken)


def test_short_training_reconstructs_better_without_codebook_collapse(corpus, tmp_path):
    config = TrainCodecConfig(corpus=corpus, out=tmp_path / "run", max_steps=80, log_every=10, batch_size=4, segment_seconds=1.0,
                              learning_rate=3e-3, warmup_steps=10, eval_clips=1, usage_clips=5, asr_model="none", **TINY)
    train_codec(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(10, 81, 10))
    assert log[-1]["mel"] < 0.75 * log[0]["mel"] and log[-1]["stft"] < 0.75 * log[0]["stft"], (log[0], log[-1])
    usage = json.loads((tmp_path / "run" / "report.json").read_text())["codebook_usage"]
    assert len(usage) == 8
    assert all(row["perplexity"] > 4 for row in usage), usage  # no codebook collapsed onto a few codes


def test_cli_writes_checkpoint_config_report_and_resumes(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    tiny_flags = [flag for name, value in TINY.items() for flag in (f"--{name.replace('_', '-')}", str(value))]
    flags = ["--corpus", str(corpus), "--out", str(out), "--batch-size", "2", "--eval-clips", "1", "--usage-clips", "2",
             "--log-every", "5", "--asr-model", "bundled", "--threads", "1", *tiny_flags]
    assert main(["train-codec", *flags, "--max-steps", "10"]) == 0
    printed = capsys.readouterr().out
    assert "codebook 7: perplexity" in printed and "WER" in printed
    assert {"config.json", "checkpoint", "codec", "report.json", "train_log.jsonl", "samples"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["max_steps"] == 10
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["steps"] == 10 and 0 <= report["intelligibility"]["wer_original"] <= 1
    assert load_codec(out).num_codebooks == 8
    # A finished run is not overwritten by accident; --resume continues from its checkpoint.
    assert main(["train-codec", *flags, "--max-steps", "15"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train-codec", *flags, "--max-steps", "15", "--resume", "--asr-model", "none"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 15
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [5, 10, 15]


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train-codec", "--help"])
    assert exited.value.code == 0 and "--num-codebooks" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    bad_config = tmp_path / "bad.json"
    write_json_atomic(bad_config, {"codebook_size": 1})
    unknown = tmp_path / "unknown.json"
    write_json_atomic(unknown, {"codebooks": 8})
    for argv in (
        ["train-codec", "--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "o1")],
        ["train-codec", "--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"), "--config", str(bad_config)],
        ["train-codec", "--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "o3"), "--config", str(unknown)],
        ["train-codec", "--out", str(tmp_path / "o4")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tokentts train-codec: error:"), err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_synthetic_sentences_are_distinct_and_reproducible():
    sentences = synthetic_sentences(500, seed=1)
    assert len(set(sentences)) == 500 and sentences == synthetic_sentences(500, seed=1)
    assert all(5 <= len(s.split()) <= 18 for s in sentences)


def test_whisper_units_make_codebook_0_and_the_other_codebooks_code_the_rest(corpus, tmp_path):
    """`--whisper-units`: codebook 0 is the nearest k-means unit of Whisper tiny.en's encoder features
    (real Whisper), the learned codebooks quantize the rest, and the saved codec keeps its units."""
    from tokentts.asr.whisper import ENCODER_FRAME_RATE, encoder_features, load_asr
    from tokentts.codecs.neural.units import nearest_units, whisper_features

    # The features: 50 frames a second of the clip's own audio.
    speech = synthesize_espeak("Whisper hears what is said.")
    alone, = encoder_features(load_asr("bundled"), [speech])
    assert abs(len(alone) - len(speech) / 24000 * ENCODER_FRAME_RATE) <= 1 and alone.shape[1] == 384
    config = TrainCodecConfig(corpus=corpus, out=tmp_path / "run", max_steps=60, log_every=10, batch_size=4,
                              segment_seconds=1.0, learning_rate=3e-3, warmup_steps=10, eval_clips=1, usage_clips=5,
                              asr_model="none", whisper_units=True, **TINY)
    train_codec(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["mel"] < 0.8 * log[0]["mel"], (log[0], log[-1])
    codec = load_codec(tmp_path / "run")
    model = codec.model
    assert model.config.unit_dim == 384 and len(model.quantizer.layers) == TINY["num_codebooks"] - 1
    codes = codec.encode(speech)
    assert codes.shape == (TINY["num_codebooks"], codec.num_frames(len(speech)))
    # Codebook 0 is exactly the units of the clip's Whisper features; all 32 units are fitted, several used.
    features, = whisper_features([speech], 24000, codec.frame_rate)
    assert torch.equal(codes[0], nearest_units(model.unit_centroids, features, codes.shape[1]))
    assert model.unit_centroids.abs().sum(1).gt(0).all() and len(codes[0].unique()) >= 4
    assert torch.equal(codes, load_codec(tmp_path / "run").encode(speech))
    # A clip codes the same alone or in a padded batch, and codebook 0 alone decodes to audio.
    batch = codec.encode_batch([speech, speech[: len(speech) // 2]])
    assert torch.equal(batch[0], codes)
    assert codec.decode(codes[:1]).shape == (codes.shape[1] * model.config.samples_per_frame,)
    # Decoder adaptation crops each clip's own units (Whisper heard the whole clip) and keeps every code.
    crops, crop_codes = _CropSampler(model, [speech], 2, 24000).codes(np.random.default_rng(0))
    windows = codes[0].unfold(0, crop_codes.shape[2], 1)  # every 1 s window of the whole clip's units
    assert all((windows == row).all(1).any() for row in crop_codes[:, 0])
    adapted = adapt_decoder(codec, [speech], steps=2, batch_size=2)
    assert torch.equal(adapted.codec.encode(speech), codes) and np.isfinite(adapted.loss_end)
    with pytest.raises(ValueError, match="whisper_units"):
        TrainCodecConfig(corpus=corpus, whisper_units=True, num_codebooks=1)
