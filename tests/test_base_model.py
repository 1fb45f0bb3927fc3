"""`tokentts build-base`, the embedded model's recipe, end to end at toy size: corpora (with a real
Flite voice), codec,
pretraining, evaluation against eSpeak's recordings, float16 packaging with a model card; a
second run skips every finished stage; the packaged model loads and speaks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from tokentts.cli import main
from tokentts.data.synthetic import synthetic_sentences
from tokentts.errors import TokenttsError
from tokentts.generation import Generator, SamplingConfig
from tokentts.generation.engine import model_sampling
from tokentts.model import Segment, build_prompt, embed_prompt, embedded, load_model
from tokentts.model.prompt import TextLayout
from tokentts.training.base_model import BaseModelConfig, _loss_and_time, build_base_model, held_out_sentences

# Five codec clips per speaker: the codec's 128 Whisper units need that many frames of speech.
TOY = dict(speakers=2, flite_voices=["slt"], codec_clips_per_speaker=5, clips_per_speaker=4, codec_minutes=0.05,
           codec_eval_clips=2,
           codec_whisper_units=True, codec_codebook_size=128,
           steps=6, continue_steps=3, shifted_speakers_per_voice=1, shifted_clips_per_speaker=2, voices_steps=2,
           batch_size=4, text_positions="timed", context_speaker_swap=0.5, input_code_noise=0.3,
           hidden_size=64, num_layers=2,
           depth_hidden_size=32, depth_layers=1, eval_sentences=2, samples_per_sentence=1, temperature=0.7,
           depth_temperature=0.2)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, one_thread):
    work = tmp_path_factory.mktemp("base") / "run"
    config = BaseModelConfig(work=work, **TOY)
    # A recipe killed before a training stage's first checkpoint leaves an empty checkpoints folder;
    # the next run starts that stage over instead of failing on "nothing to resume".
    for stage in ("model", "model-continued", "model-voices"):
        (work / f"{stage}.checkpoints").mkdir(parents=True)
    return config, build_base_model(config)


def test_every_stage_leaves_its_output_and_the_card_reports_it(recipe):
    config, packaged = recipe
    work = config.work
    for folder, marker in [("codec-corpus", "dataset_info.json"), ("corpus", "dataset_info.json"),
                           ("codec-run/codec", "codec_config.json"), ("model", "config.json"),
                           ("model-continued", "config.json"), ("voices-corpus", "dataset_info.json"),
                           ("model-voices", "config.json"), ("model-averaged", "config.json"),
                           ("evaluation", "report.json")]:
        assert (work / folder / marker).is_file(), folder
    timings = json.loads((work / "timings.json").read_text())
    assert set(timings) == {"codec-corpus", "corpus", "train-codec", "pretrain", "continue", "voices-corpus", "voices",
                            "average", "evaluate", "package"}
    assert json.loads((work / "model-continued" / "metrics.json").read_text())["steps"] == 3
    # The voices phase: the corpus, then one speaker shifted from slt saying 2 sentences past the held-out ones.
    voices_corpus = load_from_disk(str(work / "voices-corpus"))
    corpus_rows = load_from_disk(str(work / "corpus"))
    assert voices_corpus["text"][:12] == corpus_rows["text"] and voices_corpus["source"][12:] == ["3", "3"]
    assert voices_corpus["source_file"][12].startswith("flite:slt:vt")
    assert set(voices_corpus["text"][12:]) <= set(synthetic_sentences(20_013)[13:])
    voices = json.loads((work / "model-voices" / "finetune_config.json").read_text())
    assert (voices["model"], voices["max_steps"], voices["context_probability"], voices["context_speaker_swap"],
            voices["seed"]) == (str(work / "model-continued"), 2, 0.6, 0.7, 1)
    # The Flite voice is speaker 2 of both corpora, as many clips as an eSpeak speaker.
    for corpus, clips in (("codec-corpus", 5), ("corpus", 4)):
        sources = load_from_disk(str(work / corpus))["source"]
        assert sources.count("2") == sources.count("0") == clips and set(sources) == {"0", "1", "2"}
    pretrained = json.loads((work / "model" / "finetune_config.json").read_text())
    assert (pretrained["context_speaker_swap"], pretrained["input_code_noise"], pretrained["text_positions"]) == (
        0.5, 0.3, "timed")
    report = json.loads((work / "evaluation" / "report.json").read_text())
    # the recipe's sampling is the model's default, and the evaluation ran with it
    assert model_sampling(load_model(work / "model-averaged").model) == {"temperature": 0.7, "depth_temperature": 0.2}
    assert report["config"]["model"] == str(work / "model-averaged")
    assert (report["config"]["temperature"], report["config"]["depth_temperature"]) == (0.7, 0.2)
    assert [c["name"] for c in report["conditions"]] == ["recordings", "base", "base + clone"]
    assert report["sentences"] == held_out_sentences(config)[1:]
    # eSpeak's recordings are what the ASR model hears nearly right; a 6-step model is not.
    wers = {c["name"]: c["summary"]["wer"]["mean"] for c in report["conditions"]}
    assert wers["recordings"] < 0.6 and wers["base"] > wers["recordings"] + 0.3
    card = (packaged / "README.md").read_text()
    assert "does NOT meet" in card and f"{wers['recordings']:.3f}" in card and "*timed* layout" in card
    assert "each word in proportion to the time eSpeak NG takes to say it" in card
    assert "| base + clone |" in card and "make base-model" in card and "Then 3 more steps" in card
    assert "Then 2 steps with the shifted Flite speakers added" in card
    assert "the average of the two phases, 50% the continuation's and 50% the voices phase's" in card
    assert "the depth decoder 100% the voices phase's" in card
    assert "1 speakers made from each Flite voice (speakers 3-3)" in card
    assert "1 Flite voices (slt: CMU voices made from recordings of real speakers, 16 kHz) as speakers 2-2" in card
    assert "codec: 15 clips" in card and "resumed" not in card  # 3 speakers x 5; no phase was interrupted
    assert "temperature 0.7 for codebook 0 and 0.2 for the depth decoder" in card and "train-codec`, 0.05 min" in card
    # Codebook 0 is Whisper units: the packaged codec keeps its centroids, and the card says so.
    assert load_file(str(packaged / "codec" / "model.safetensors"))["unit_centroids"].shape == (128, 384)
    assert "8 codebooks\n  of 128" in card
    assert "Codebook 0 is k-means units of the bundled Whisper tiny.en" in card


def test_held_out_sentences_are_in_neither_corpus(recipe):
    config, _ = recipe
    trained = set(load_from_disk(str(config.work / "corpus"))["text"]) | set(
        load_from_disk(str(config.work / "codec-corpus"))["text"])
    assert not trained & set(held_out_sentences(config))


def test_package_is_float16_and_loads_and_speaks_like_the_trained_model(recipe):
    config, packaged = recipe
    weights = load_file(str(packaged / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float16}
    # Readable like any other installed file (safetensors writes private files).
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in packaged.rglob("*") if p.is_file())
    assert {t.dtype for t in load_file(str(packaged / "codec" / "model.safetensors")).values()
            if t.is_floating_point()} == {torch.float16}
    assert embedded.folder_megabytes(packaged) < 0.6 * embedded.folder_megabytes(config.work / "model-averaged")
    full, half = load_model(config.work / "model-averaged", device="cpu"), load_model(packaged, device="cpu")
    assert half.model.dtype == torch.float32 and TextLayout.of(half.model.config).timed
    # float16 storage moves each weight by < 0.1 %: the next-frame logits barely move.
    prompt = build_prompt([Segment("0", held_out_sentences(config)[1])], full)
    logits = []
    for loaded in (full, half):
        with torch.no_grad():
            out = loaded.model(inputs_embeds=embed_prompt(loaded.model, prompt), position_ids=prompt.positions[None],
                               attention_mask=torch.ones(1, len(prompt), dtype=torch.long), use_cache=False)
        logits.append(out.logits[0, -1])
    assert torch.allclose(logits[0], logits[1], atol=0.02 * float(logits[0].abs().max()))
    result = Generator(half).generate("Hello.", sampling=SamplingConfig(seed=0, max_seconds=0.4))
    assert np.isfinite(result.audio).all() and len(result.audio) > 0


def test_the_shipped_weights_average_the_two_phases_but_keep_the_voices_depth_decoder(recipe):
    config, _ = recipe
    continued, voices, averaged = (load_file(str(config.work / name / "model.safetensors"))
                                   for name in ("model-continued", "model-voices", "model-averaged"))
    assert averaged.keys() == voices.keys()
    moved = 0
    for name, weight in averaged.items():
        # --voices-depth-share 1 (the default): the depth decoder, which renders a context's voice, is the voices phase's.
        expected = voices[name] if name.startswith("depth_decoder.") else (continued[name] + voices[name]) / 2
        torch.testing.assert_close(weight, expected)
        moved += not torch.equal(continued[name], voices[name])
    assert moved > 0  # the voices phase moved weights, so the average is neither phase
    assert (json.loads((config.work / "model-averaged" / "config.json").read_text())
            == json.loads((config.work / "model-voices" / "config.json").read_text()))


def test_averaging_models_of_different_shapes_fails_and_writes_nothing(tmp_path):
    from safetensors.torch import save_file

    from tokentts.training.base_model import average_models

    for name, width in (("a", 4), ("b", 5)):
        (tmp_path / name).mkdir()
        save_file({"w": torch.zeros(width)}, str(tmp_path / name / "model.safetensors"))
    with pytest.raises(TokenttsError, match="not the same architecture"):
        average_models(tmp_path / "a", tmp_path / "b", 0.5, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_second_run_skips_finished_stages_and_install_writes_the_embedded_folder(recipe, monkeypatch, tmp_path):
    config, _ = recipe
    before = json.loads((config.work / "timings.json").read_text())
    target = tmp_path / "embedded"
    monkeypatch.setattr(embedded, "EMBEDDED_MODEL_DIR", target)
    build_base_model(BaseModelConfig(work=config.work, install=True, **TOY))
    after = json.loads((config.work / "timings.json").read_text())
    assert {k: after[k] for k in before if k != "package"} == {k: v for k, v in before.items() if k != "package"}
    assert embedded.embedded_model_path() == target and embedded.default_model() == str(target)
    assert load_model(embedded.default_model(), device="cpu").model.config.num_codebooks == 8


def test_a_trained_codec_is_reused_and_still_reported(recipe, tmp_path):
    config, _ = recipe
    codec = config.work / "codec-run" / "codec"
    work = tmp_path / "reuse"
    packaged = build_base_model(BaseModelConfig(work=work, codec=codec, **{**TOY, "continue_steps": 0, "voices_steps": 0}))
    assert set(json.loads((work / "timings.json").read_text())) == {
        "codec-corpus", "corpus", "codec-report", "pretrain", "evaluate", "package"}
    report = json.loads((work / "codec-run" / "report.json").read_text())
    assert report["training"] == {"reused": str(codec)} and report["intelligibility"]["clips"] == 2
    assert not (work / "codec-run" / "codec").exists()
    # the model carries the reused codec's weights
    assert (packaged / "codec" / "model.safetensors").is_file()
    assert "reused from an earlier build" in (packaged / "README.md").read_text()


def test_the_card_says_which_steps_a_resumed_phase_covers():
    resumed = {"train_loss": 4.7669, "train_seconds": 2961.5, "steps": 1200, "resumed_from_step": 200}
    assert _loss_and_time(resumed) == ("4.767; 49 min (both of steps 201-1200: the phase was resumed from its "
                                       "checkpoint 200, and stage times count only finished runs)")
    assert _loss_and_time({**resumed, "resumed_from_step": 0}) == "4.767; 49 min"


def test_default_model_without_a_packaged_model_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "EMBEDDED_MODEL_DIR", tmp_path / "none")
    with pytest.raises(TokenttsError, match="pass --model .* build-base --install"):
        embedded.default_model()


@pytest.mark.parametrize("flags, message", [(["--steps", "0"], "at least 1"),
                                             (["--text-positions", "diagonal"], "text_positions one of"),
                                             (["--context-speaker-swap", "1.5"], "must be in \\[0, 1\\]"),
                                             (["--codec", "/no/codec"], "not a codec folder"),
                                             (["--depth-temperature", "0"], "must be > 0"),
                                             (["--flite-voices", "nobody"], "Flite has no voice 'nobody'"),
                                             (["--flite-voices", "kal"], "no pitch is known for Flite voice kal"),
                                             (["--voices-context-probability", "2"], "must be in \\[0, 1\\]"),
                                             (["--voices-share", "0"], "voices_share and voices_depth_share must be in \\(0, 1\\]"),
                                             (["--voices-depth-share", "1.5"], "must be in \\(0, 1\\]"),
                                             (["--continue-steps", "0"], "give --continue-steps, or both shares 1")])
def test_cli_refuses_a_bad_recipe_before_any_stage(tmp_path, capsys, flags, message):
    import re

    assert main(["build-base", "--work", str(tmp_path / "w"), *flags]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "w").exists()


def test_the_voices_phase_needs_flite_voices_to_shift():
    with pytest.raises(ValueError, match="give --flite-voices, or --voices-steps 0"):
        BaseModelConfig(flite_voices=[])
    assert not BaseModelConfig(flite_voices=[], voices_steps=0).voices_phase
