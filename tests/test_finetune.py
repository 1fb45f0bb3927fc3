"""`tokentts finetune` on the tiny CSM, on CPU: learning, stopping, adapters, resume, DDP, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import CsmForConditionalGeneration, TrainerCallback, TrainingArguments

from tokentts.audio import encode_audio, resample
from tokentts.audio.synth import EspeakVoice, synthesize_espeak
from tokentts.cli import main
from tokentts.data.dataset import Clip, clips_to_dataset
from tokentts.errors import TokenttsError
from tokentts.generation import Generator, SamplingConfig
from tokentts.model import load_model, save_tiny_csm
from tokentts.training import FinetuneConfig, finetune
from tokentts.training.data import EncodedClip, encode_dataset, encode_in_batches, open_dataset, read_cache
from tokentts.training.examples import (
    IGNORE,
    CsmTrainingDataset,
    SeededLengthGroupedSampler,
    collate_frames,
    tokenize_clips,
)
from tokentts.model.prompt import TEXT_POSITIONS_KEY, TIMED, embed_frames
from tokentts.training.lora import prepare_for_training
from tokentts.training.trainer import CsmTrainer, count_targets, csm_losses, unwrap_csm

# Four short clips, two eSpeak voices (speakers 0 and 1), all of different lengths.
TEXTS = ["Hello there.", "Good morning to you all.", "One two three.", "The cat sat on the mat today."]


def make_dataset(path: Path, texts: list[str], rows: list[dict] | None = None) -> Path:
    """A voice dataset as `tokentts prepare` writes it; `rows` overrides the storage of some rows."""
    clips = []
    for i, text in enumerate(texts):
        audio = synthesize_espeak(text, EspeakVoice(variant="f2" if i % 2 else "m3", pitch=70 if i % 2 else 40))
        clips.append(Clip(audio=audio, text=text, source=str(i % 2), start=0.0, end=len(audio) / 24000, source_file="s.wav"))
    dataset = clips_to_dataset(clips)
    if rows:
        from datasets import Audio

        dataset = dataset.cast_column("audio", Audio(decode=False))
        for index, row in enumerate(rows):
            if row:
                dataset = dataset.map(lambda example, i: {**example, **row} if i == index else example, with_indices=True)
    dataset.save_to_disk(str(path))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared, busy 2-core machine two OpenMP threads make these tiny
    models about 30x slower (they spin waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    return {
        "root": root,
        "model": save_tiny_csm(root / "tiny", num_codebooks=8, seed=0),
        "data": make_dataset(root / "voices", TEXTS),
        "cache": root / "cache",
    }


def config(work: dict[str, Path], out: str, **overrides) -> FinetuneConfig:
    settings = dict(dataset=str(work["data"]), model=str(work["model"]), output_dir=work["root"] / out,
                    cache_dir=work["cache"], device="cpu", eval_fraction=0.0, batch_size=2, grad_accum=1,
                    warmup=0, logging_steps=1, save_steps=1000, seed=0)
    return FinetuneConfig(**{**settings, **overrides})


class ProbeLogits(TrainerCallback):
    """Records the trained model's logits on a fixed input when training ends, and fails the run if
    the codec is called during training (steps must read cached codes only)."""

    def __init__(self):
        self.logits: torch.Tensor | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        codec = unwrap_csm(model).codec_model

        def forbidden(*args, **kwargs):
            raise AssertionError("the codec ran during a training step")

        codec.encode = codec.forward = forbidden

    def on_train_end(self, args, state, control, model=None, **kwargs):
        codec = unwrap_csm(model).codec_model
        del codec.encode, codec.forward
        self.logits = probe_logits(model)


def probe_logits(model) -> torch.Tensor:
    """Backbone and depth-decoder logits for a fixed frame sequence."""
    csm = unwrap_csm(model)
    generator = torch.Generator().manual_seed(0)
    num_codebooks = csm.config.num_codebooks
    tokens = torch.randint(0, 100, (1, 12, num_codebooks + 1), generator=generator)
    mask = torch.zeros(1, 12, num_codebooks + 1, dtype=torch.bool)
    mask[:, :4, -1] = True  # four text frames, then eight audio frames
    mask[:, 4:, :-1] = True
    labels = torch.where(mask[..., :-1], tokens[..., :-1], torch.tensor(IGNORE))
    model.eval()
    with torch.no_grad():
        out = model(inputs_embeds=embed_frames(csm, tokens, mask), labels=labels)
    return torch.cat([out.logits.flatten(), out.depth_decoder_logits.flatten()])


def adapter_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys() and a
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst:.2e}"


# --- training examples ----------------------------------------------------------------------------


def test_examples_match_transformers_layout_and_label_the_end_frame(work):
    """Our frames are exactly what CsmProcessor produces, and our loss on cached codes equals
    transformers' loss with Mimi run inside the forward pass."""
    lm = load_model(work["model"], device="cpu", dtype="float32")
    # Whole Mimi frames: a clip's last partial frame is padded differently by our codec and by
    # transformers' processor path (tests/test_model.py), which would make the codes differ there.
    frame = 1920
    audio = [wav[: len(wav) // frame * frame] for wav in (synthesize_espeak(t) for t in TEXTS[:2])]
    codes = lm.codec.encode_batch(audio)
    clips, dropped = tokenize_clips([EncodedClip(i, t, "1", c) for i, (t, c) in enumerate(zip(TEXTS, codes))],
                                    lm.processor.tokenizer, max_text_tokens=256, max_positions=2048)
    assert len(clips) == 2 and not dropped
    ids = dict(audio_token_id=lm.model.config.audio_token_id, audio_eos_token_id=lm.model.config.audio_eos_token_id)

    # One segment, every frame trained: identical to the processor + model path.
    single = CsmTrainingDataset(clips, depth_frame_fraction=1.0, **ids)[0]
    conversation = [{"role": "1", "content": [{"type": "text", "text": TEXTS[0]}, {"type": "audio", "audio": audio[0]}]}]
    reference = lm.processor.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                                 processor_kwargs={"output_labels": True})
    assert single["tokens"][:, -1].tolist() == reference["input_ids"][0].tolist()
    labelled = (single["labels"][:, 0] != IGNORE).nonzero().flatten().tolist()
    assert labelled == (reference["labels"][0] != IGNORE).nonzero().flatten().tolist()
    assert single["labels"][-1].tolist() == [0] * 8  # the end-of-audio frame is labelled (all-zero codes)
    model = lm.model.train()
    torch.manual_seed(0)
    theirs = model(**reference)
    ours = csm_losses(model, collate_frames([single]))
    assert torch.allclose(ours[0], theirs.backbone_loss, atol=1e-5)
    assert torch.allclose(ours[1], theirs.depth_decoder_loss, atol=1e-5)

    # With context: the other clip of speaker 1 comes first and is not a target; 1/4 of the
    # target's audio frames (plus the end frame) train the depth decoder.
    example = CsmTrainingDataset(clips, depth_frame_fraction=0.25, context_probability=1.0, **ids)[1]
    first_target = len(example["tokens"]) - clips[1].codes.shape[1] - 1
    assert len(example["tokens"]) == clips[0].num_positions + clips[1].num_positions
    assert (example["labels"][:first_target] == IGNORE).all()
    assert (example["labels"][first_target:, 0] != IGNORE).all()
    depth_frames = (example["labels"][:, 1:] != IGNORE).all(-1).nonzero().flatten().tolist()
    assert len(depth_frames) == int(np.ceil(0.25 * clips[1].codes.shape[1])) + 1
    assert depth_frames[-1] == len(example["tokens"]) - 1

    # Speaker swap: the same context and target, both under the id of the corpus's other speaker.
    other = tokenize_clips([EncodedClip(2, TEXTS[2], "12", codes[0])], lm.processor.tokenizer, 256, 2048)[0]
    swapped = CsmTrainingDataset(clips, depth_frame_fraction=0.25, context_probability=1.0, context_speaker_swap=1.0,
                                 context_pool=clips + other, **ids)[1]
    tokenizer = lm.processor.tokenizer
    assert tokenizer.decode(example["tokens"][:, -1]).count("[1]") == 2
    assert tokenizer.decode(swapped["tokens"][:, -1]).count("[12]") == 2 and "[1]" not in tokenizer.decode(
        swapped["tokens"][:, -1])
    assert len(swapped["tokens"]) == len(example["tokens"]) + 2  # "[12]" is one token longer than "[1]", twice
    audio_rows = example["mask"][:, :-1].any(-1)
    assert torch.equal(swapped["tokens"][swapped["mask"][:, :-1].any(-1), :-1], example["tokens"][audio_rows, :-1])
    assert torch.equal(swapped["labels"][-clips[1].codes.shape[1] - 1:, 0], example["labels"][first_target:, 0])

    # Input code noise: the model reads random fine codes in audio frames, and learns the true ones.
    noisy = CsmTrainingDataset(clips, depth_frame_fraction=0.25, context_probability=1.0, input_code_noise=0.5,
                               codebook_size=2048, **ids)[1]
    assert torch.equal(noisy["labels"], example["labels"]) and torch.equal(noisy["tokens"][:, [0, -1]],
                                                                            example["tokens"][:, [0, -1]])
    audio_frames = example["tokens"][:, -1] == lm.model.config.audio_token_id
    changed = (noisy["tokens"][:, 1:-1] != example["tokens"][:, 1:-1])
    assert 0.4 < changed[audio_frames].float().mean() < 0.6 and not changed[~audio_frames].any()
    with pytest.raises(ValueError, match="codebook_size"):
        CsmTrainingDataset(clips, depth_frame_fraction=1.0, input_code_noise=0.5, **ids)


def test_prior_speakers_always_have_a_context_and_are_swapped_among_themselves_and_the_voice_never(work):
    """With `prior_speakers` (a prior dataset's), a swap renames only their examples, and only to one
    another's ids: the voice's own examples keep its id. Their examples always have a context; the
    voice's as often as `context_probability` says."""
    tokenizer = load_model(work["model"], device="cpu").processor.tokenizer
    codes = torch.zeros(8, 5, dtype=torch.int16)
    speakers = ["0", "0", "7", "7", "8", "8"]
    encoded = [EncodedClip(row, TEXTS[row % 4], speaker, codes) for row, speaker in enumerate(speakers)]
    clips, _ = tokenize_clips(encoded, tokenizer, max_text_tokens=256, max_positions=2048)
    for voice_context in (1.0, 0.0):
        dataset = CsmTrainingDataset(clips, audio_token_id=1, audio_eos_token_id=2, depth_frame_fraction=1.0,
                                     context_probability=voice_context, context_speaker_swap=1.0,
                                     prior_speakers={"7", "8"})
        for epoch in range(3):
            dataset.set_epoch(epoch)
            headers = [tokenizer.decode(dataset[i]["tokens"][:, -1]) for i in range(len(clips))]
            expected = 2 if voice_context else 1  # the voice: context and target under its id, or the target alone
            assert [h.count("[0]") for h in headers[:2]] == [expected, expected]
            assert all(h.count("[8]") == 2 and "[7]" not in h for h in headers[2:4])  # 7's clips, always as 8
            assert all(h.count("[7]") == 2 and "[8]" not in h for h in headers[4:])


def test_length_grouped_batches_are_seeded_and_pad_little(work):
    lengths = list(range(10, 74))
    clips = [EncodedClip(i, "x" * 3, "0", torch.zeros(8, n, dtype=torch.int16)) for i, n in enumerate(lengths)]
    lm = load_model(work["model"], device="cpu", dtype="float32")
    training, _ = tokenize_clips(clips, lm.processor.tokenizer, 256, 2048)
    dataset = CsmTrainingDataset(training, audio_token_id=1, audio_eos_token_id=2, depth_frame_fraction=1.0)
    sampler = SeededLengthGroupedSampler(dataset, batch_size=4, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(64)) and order == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != order and dataset.epoch == 1

    def padding(indices):
        batches = [indices[i:i + 4] for i in range(0, len(indices), 4)]
        return sum(max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches)

    shuffled = np.random.default_rng(0).permutation(64).tolist()
    assert padding(order) < padding(shuffled) / 3


# --- loss normalisation ---------------------------------------------------------------------------


def test_stock_trainer_count_is_wrong_and_ours_normalises_each_term(work):
    """transformers' Trainer divides both CSM losses by one count (`labels[..., 1:]`): with 3-D labels
    that is the depth-decoder targets, so the backbone term shrinks. CsmTrainer gives each its own."""
    lm = load_model(work["model"], device="cpu", dtype="float32")
    codes = lm.codec.encode_batch([synthesize_espeak(t) for t in TEXTS[:2]])
    clips, _ = tokenize_clips([EncodedClip(i, TEXTS[i], "0", c) for i, c in enumerate(codes)], lm.processor.tokenizer, 256, 2048)
    dataset = CsmTrainingDataset(clips, audio_token_id=lm.model.config.audio_token_id,
                                 audio_eos_token_id=lm.model.config.audio_eos_token_id, depth_frame_fraction=1.0)
    batch = collate_frames([dataset[0], dataset[1]])
    model = lm.model.train()
    backbone, depth = csm_losses(model, batch)
    backbone_targets, depth_targets = count_targets(batch["labels"]).tolist()
    assert depth_targets == 7 * backbone_targets  # K - 1 = 7 depth targets per frame

    stock_count = batch["labels"][..., 1:].ne(IGNORE).sum()  # what Trainer._get_num_items_in_batch counts
    stock = model(inputs_embeds=embed_frames(model, batch["tokens"], batch["mask"]), attention_mask=batch["attention_mask"],
                  labels=batch["labels"], num_items_in_batch=stock_count)
    assert torch.allclose(stock.backbone_loss * 7, backbone, rtol=1e-4)  # 7x too small (31x for csm-1b)

    trainer = CsmTrainer(model=model, args=TrainingArguments(output_dir=str(work["root"] / "unused"), use_cpu=True, report_to="none"),
                         depth_loss_weight=0.5)
    counts = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    loss = trainer.compute_loss(model, batch, num_items_in_batch=counts)
    assert torch.allclose(loss, backbone + 0.5 * depth, rtol=1e-5)


def test_depth_decoder_trains_on_exactly_num_codebooks_frames(work):
    """transformers 5.24 crashes when a micro-batch trains the depth decoder on exactly K frames;
    `prepare_for_training` works around it without changing the loss."""
    lm = load_model(work["model"], device="cpu", dtype="float32")
    model = lm.model.train()
    codes = lm.codec.encode_batch([synthesize_espeak(TEXTS[3])])[0]  # > 8 frames
    clips, _ = tokenize_clips([EncodedClip(0, TEXTS[3], "0", codes)], lm.processor.tokenizer, 256, 2048)
    batch = collate_frames([CsmTrainingDataset(clips, audio_token_id=model.config.audio_token_id,
                                               audio_eos_token_id=model.config.audio_eos_token_id,
                                               depth_frame_fraction=6.5 / codes.shape[1])[0]])
    assert count_targets(batch["labels"])[1] == 8 * 7  # 8 frames (7 + the end frame) x 7 codebooks
    with pytest.raises(IndexError):  # when this fails, transformers fixed it: drop give_depth_decoder_a_mask
        csm_losses(model, batch)
    embeds = embed_frames(model, batch["tokens"], batch["mask"])
    with_cache = model(inputs_embeds=embeds, labels=batch["labels"], use_cache=True)  # also avoids the bug
    prepare_for_training(model, FinetuneConfig(dataset="-", method="full"))
    backbone, depth = csm_losses(model, batch)
    assert torch.allclose(depth, with_cache.depth_decoder_loss) and torch.allclose(backbone, with_cache.backbone_loss)


@pytest.fixture(scope="module")
def batch_split_runs(work):
    """The same virtual batch of 4 clips as 4x1, 1x4 (gradient accumulation) and 2 processes x 1 x 2."""
    runs = {}
    for name, batch_size, grad_accum in [("whole", 4, 1), ("accumulated", 1, 4)]:
        finetune(config(work, f"split_{name}", batch_size=batch_size, grad_accum=grad_accum, max_steps=2,
                        learning_rate=1e-2, depth_frame_fraction=0.5))
        runs[name] = work["root"] / f"split_{name}"
    out = work["root"] / "split_ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "tokentts.cli", "finetune", "--dataset", str(work["data"]), "--model", str(work["model"]),
               "--output-dir", str(out), "--cache-dir", str(work["cache"]), "--device", "cpu", "--eval-fraction", "0",
               "--batch-size", "1", "--grad-accum", "2", "--max-steps", "2", "--learning-rate", "1e-2", "--warmup", "0",
               "--depth-frame-fraction", "0.5", "--seed", "0", "--logging-steps", "1"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs["ddp"] = out
    return runs


def logged_losses(out: Path) -> list[float]:
    return [entry["loss"] for entry in json.loads((out / "metrics.json").read_text())["log_history"] if "loss" in entry]


def relative_update_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|B_a - B_b| / |B_a| over the LoRA B matrices, which start at zero: the difference of two runs'
    updates relative to the update. (Elementwise maxima are noisy: Adam moves weights whose gradient
    is ~0 by +-lr on float noise.) Measured: 1e-5 for these runs; 0.23 for a per-micro-batch mean."""
    keys = [k for k in a if "lora_B" in k]
    assert keys and a.keys() == b.keys()
    difference = sum(((a[k] - b[k]) ** 2).sum() for k in keys).sqrt()
    return (difference / sum((a[k] ** 2).sum() for k in keys).sqrt()).item()


def test_gradient_accumulation_matches_one_big_batch(batch_split_runs):
    whole, accumulated = batch_split_runs["whole"], batch_split_runs["accumulated"]
    assert logged_losses(whole) == pytest.approx(logged_losses(accumulated), rel=1e-6)
    assert relative_update_difference(adapter_weights(whole), adapter_weights(accumulated)) < 1e-3


def test_two_process_data_parallel_matches_single_process(batch_split_runs):
    whole, ddp = batch_split_runs["whole"], batch_split_runs["ddp"]
    assert json.loads((ddp / "metrics.json").read_text())["data"]["codes_from_cache"]  # encoded once, by the first run
    assert logged_losses(whole) == pytest.approx(logged_losses(ddp), rel=1e-6)
    assert relative_update_difference(adapter_weights(whole), adapter_weights(ddp)) < 1e-3


# --- learning ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overfit(work):
    """Full fine-tune of a tiny model on three short clips until it knows them by heart.

    A LoRA-only fine-tune cannot get far on a *random* tiny model (its frozen heads cap the logits),
    so the learning tests train all weights; LoRA is covered by the adapter tests below. Four
    codebooks instead of eight halve the steps the depth decoder needs to memorise the clips. 120 steps
    make near-ties rare: at 90, an early greedy frame now and then flipped and the rest followed."""
    model = save_tiny_csm(work["root"] / "tiny4", num_codebooks=4, seed=0)
    data = make_dataset(work["root"] / "short", ["Hi there.", "Yes, please.", "Go now."])
    result = finetune(config(work, "overfit", dataset=str(data), model=str(model), method="full", batch_size=3,
                             max_steps=120, learning_rate=1e-2, weight_decay=0.0, depth_frame_fraction=1.0))
    return result, model


@pytest.fixture(scope="module")
def greedy_outputs(overfit):
    """(training clip, base model's greedy output, fine-tuned model's greedy output) per clip."""
    result, base_model = overfit
    greedy = SamplingConfig(greedy=True, max_seconds=4.0, runaway_seconds=0)
    base = Generator(load_model(base_model, device="cpu", dtype="float32"))
    tuned = Generator(load_model(result.output_dir, device="cpu", dtype="float32"))
    clips = read_cache(Path(result.metrics["data"]["codes_cache"])).clips
    assert len(clips) == 3
    return [(clip, base.generate(clip.text, clip.speaker, sampling=greedy), tuned.generate(clip.text, clip.speaker, sampling=greedy))
            for clip in clips]


def test_overfitting_loss_falls_and_greedy_output_reproduces_training_codes(overfit, greedy_outputs):
    losses = [entry["loss"] for entry in overfit[0].metrics["log_history"] if "loss" in entry]
    assert losses[-1] < 0.05 * losses[0]
    for clip, before, after in greedy_outputs:
        target = clip.codes.long()
        n = target.shape[1]
        accuracy_before = (before.codes[:, :n] == target).float().mean().item()
        accuracy_after = (after.codes[:, :n] == target[:, :after.codes.shape[1]]).float().sum().item() / target.numel()
        assert accuracy_after > 0.8 and accuracy_before < 0.1, clip.text


def test_end_frame_is_learned_so_generation_stops_at_the_clip_length(greedy_outputs):
    for clip, before, after in greedy_outputs:
        assert before.stop_reason == "max_length"  # the base model runs to the limit (50 frames)
        assert after.stop_reason == "eos", clip.text
        assert abs(after.codes.shape[1] - clip.codes.shape[1]) <= 1, clip.text


# --- adapters -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(work):
    probe = ProbeLogits()
    # 3e-3: at 1e-2 the loss of 8 two-clip steps now and then ends above where it started.
    result = finetune(config(work, "lora", max_steps=8, learning_rate=3e-3, eval_fraction=0.25, eval_steps=4, lora_rank=8,
                             lora_alpha=16, use_rslora=True), callbacks=[probe])
    return result, probe.logits


def test_lora_run_writes_adapter_config_metrics_and_curves(work, lora_run):
    result, _ = lora_run
    out = result.output_dir
    assert {"adapter_config.json", "adapter_model.safetensors", "finetune_config.json", "metrics.json", "loss_curves.png"} <= {
        p.name for p in out.iterdir()}
    assert not (work["root"] / "lora.checkpoints").exists()
    metrics = result.metrics
    assert metrics["steps"] == 8 and metrics["data"]["train_clips"] == 3 and metrics["data"]["eval_clips"] == 1
    # The evaluation loss is recorded before, during and after training, and falls; so does the
    # training loss (last three steps against the first: single two-clip steps are noisy).
    evals = [e["eval_loss"] for e in metrics["log_history"] if "eval_loss" in e]
    assert len(evals) >= 3 and evals[0] == metrics["eval_loss_start"] and all(map(math.isfinite, evals))
    assert metrics["eval_loss"] < metrics["eval_loss_start"]
    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert sum(losses[-3:]) / 3 < losses[0]
    names = adapter_weights(out).keys()
    assert any("backbone_model" in n for n in names) and any("depth_decoder" in n for n in names)
    assert not any("codec_model" in n for n in names)


def test_lora_on_the_backbone_only_leaves_the_depth_decoder_as_it_was(work):
    result = finetune(config(work, "lora-backbone", max_steps=2, lora_rank=4, lora_models=["backbone"]))
    names = adapter_weights(result.output_dir).keys()
    assert any("backbone_model" in n for n in names) and not any("depth_decoder" in n for n in names)
    assert json.loads((result.output_dir / "finetune_config.json").read_text())["lora_models"] == ["backbone"]


def test_adapter_loads_with_plain_transformers_and_peft_with_identical_logits(work, lora_run):
    result, trained_logits = lora_run
    base = CsmForConditionalGeneration.from_pretrained(work["model"])
    model = PeftModel.from_pretrained(base, str(result.output_dir))
    assert torch.equal(probe_logits(model), trained_logits)
    merged_by_generate = load_model(work["model"], adapter=result.output_dir, device="cpu", dtype="float32").model
    assert torch.allclose(probe_logits(merged_by_generate), trained_logits, atol=1e-4)  # `tokentts generate --adapter`
    assert not torch.allclose(probe_logits(CsmForConditionalGeneration.from_pretrained(work["model"])), trained_logits)


def test_merged_weights_give_the_logits_of_base_plus_adapter(work):
    probe = ProbeLogits()
    result = finetune(config(work, "merged", max_steps=3, learning_rate=1e-2, merge=True), callbacks=[probe])
    merged = CsmForConditionalGeneration.from_pretrained(result.output_dir)
    assert torch.allclose(probe_logits(merged), probe.logits, atol=1e-4)
    assert load_model(result.output_dir, device="cpu").processor is not None  # a complete model folder


# --- resume -------------------------------------------------------------------------------------------


class Interrupt(TrainerCallback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt


def test_interrupted_and_resumed_run_ends_with_the_same_weights(work):
    # One clip per step over four clips: step 6 is in the second epoch, so the resume skips a batch.
    settings = dict(batch_size=1, max_steps=6, save_steps=5, learning_rate=1e-2, lora_dropout=0.1,
                    context_probability=0.5, depth_frame_fraction=0.5)
    finetune(config(work, "straight", **settings))
    with pytest.raises(KeyboardInterrupt):
        finetune(config(work, "resumed", **settings), callbacks=[Interrupt(at_step=5)])
    assert not (work["root"] / "resumed").exists()
    with pytest.raises(TokenttsError, match="--resume"):
        finetune(config(work, "resumed", **settings))
    result = finetune(config(work, "resumed", resume=True, **settings))
    assert (result.metrics["steps"], result.metrics["resumed_from_step"]) == (6, 5)
    assert_same_weights(adapter_weights(work["root"] / "straight"), adapter_weights(result.output_dir), atol=1e-6)


# --- the code cache and bad input ---------------------------------------------------------------------


def test_codes_are_cached_per_dataset_and_codec(work, tmp_path):
    cfg = config(work, "unused", cache_dir=tmp_path)
    dataset, speaker_column = open_dataset(cfg)
    assert speaker_column == "source"
    codec = load_model(work["model"], device="cpu").codec
    first = encode_dataset(dataset, codec, cfg, speaker_column)
    again = encode_dataset(dataset, codec, cfg, speaker_column)
    assert not first.from_cache and again.from_cache
    assert [c.speaker for c in again.clips] == ["0", "1", "0", "1"]
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(first.clips, again.clips))
    other_codec = load_model(save_tiny_csm(tmp_path / "other", seed=1), device="cpu").codec
    assert not encode_dataset(dataset, other_codec, cfg, speaker_column).from_cache
    # Batching (sorted, padded) gives each clip the codes it gets on its own.
    wavs = [synthesize_espeak(text) for text in TEXTS]
    batched = encode_in_batches(codec, wavs, batch_seconds=6.0)
    assert all(torch.equal(b, codec.encode(w)) for b, w in zip(batched, wavs))


def test_other_column_names_and_sample_rates(work, tmp_path):
    from datasets import load_from_disk

    renamed = load_from_disk(str(work["data"])).rename_columns({"audio": "speech", "text": "sentence", "source": "speaker_id"})
    renamed.save_to_disk(str(tmp_path / "renamed"))
    cfg = config(work, "unused", dataset=str(tmp_path / "renamed"), audio_column="speech", text_column="sentence")
    dataset, speaker_column = open_dataset(cfg)
    assert speaker_column == "speaker_id"
    encoded = encode_dataset(dataset, load_model(work["model"], device="cpu").codec, cfg, speaker_column)
    assert [c.text for c in encoded.clips] == TEXTS and [c.speaker for c in encoded.clips] == ["0", "1", "0", "1"]


def test_undecodable_and_overlong_rows_are_counted_and_skipped(work, tmp_path):
    broken = {"audio": {"bytes": b"not audio at all", "path": "broken.wav"}}
    five_seconds = {"audio": {"bytes": encode_audio(np.zeros(5 * 24000, np.float32), 24000, "flac"), "path": "long.flac"}}
    speech = synthesize_espeak(TEXTS[2])
    at_16khz = {"audio": {"bytes": encode_audio(resample(speech, 24000, 16000), 16000, "wav"), "path": "16k.wav"}}
    data = make_dataset(tmp_path / "mixed", TEXTS, rows=[{}, broken, at_16khz, five_seconds])
    cfg = config(work, "unused", dataset=str(data), cache_dir=tmp_path / "cache", max_audio_seconds=4.0)
    dataset, speaker_column = open_dataset(cfg)
    encoded = encode_dataset(dataset, load_model(work["model"], device="cpu").codec, cfg, speaker_column)
    assert encoded.dropped == {"undecodable audio": 1, "audio over 4 s": 1}
    assert [c.row for c in encoded.clips] == [0, 2]
    assert abs(encoded.clips[1].num_frames - math.ceil(len(speech) / 1920)) <= 1  # resampled to 24 kHz
    lm = load_model(work["model"], device="cpu")
    _, dropped = tokenize_clips(encoded.clips, lm.processor.tokenizer, max_text_tokens=18, max_positions=2048)
    assert dropped == {"text over 18 tokens": 1}  # "[0]One two three." + bos/eos = 19 byte tokens


@pytest.mark.parametrize(
    "problem, flags, message",
    [
        ("missing audio column", ["--audio-column", "speech"], "has no 'speech' column"),
        ("missing text column", ["--text-column", "transcript"], "no text column 'transcript'"),
        ("no such dataset", ["--dataset", "/nonexistent/voices"], "cannot load dataset /nonexistent/voices"),
        ("missing speaker column", ["--speaker-column", "voice"], "no speaker column 'voice'"),
        ("every row over the limits", ["--max-audio-seconds", "0.1"], "all 4 rows were dropped (4 audio over 0.1 s)"),
        ("8-bit AdamW on CPU", ["--optimizer", "adamw_8bit"], "needs CUDA and the bitsandbytes package"),
        ("nothing to resume", ["--resume"], "nothing to resume"),
        ("LoRA on no model", ["--lora-models", "codec"], "lora_models must name one or both of backbone, depth_decoder"),
        ("no such prior dataset", ["--prior-dataset", "/nonexistent/voices"], "cannot load dataset /nonexistent/voices"),
    ],
)
def test_bad_input_is_one_clear_error(work, capsys, problem, flags, message):
    code = main(["finetune", "--dataset", str(work["data"]), "--model", str(work["model"]), "--output-dir",
                 str(work["root"] / "bad"), "--cache-dir", str(work["cache"]), "--device", "cpu", *flags])
    assert code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert last_line.startswith("tokentts finetune: error: ") and message in last_line, problem
    assert not (work["root"] / "bad").exists()


def test_a_prior_dataset_trains_beside_the_voice_which_alone_sets_the_rate(work, tmp_path):
    """Prior speakers join the training examples (never the evaluation ones), the voice's speaking rate is
    its own (they speak at half its rate), and a prior dataset that is not told apart from the voice is refused."""
    def voices(name: str, speakers: list[str], rate: int) -> Path:
        clips = [Clip(audio=(a := synthesize_espeak(text, EspeakVoice(variant="f2", rate=rate))), text=text,
                      source=speaker, start=0.0, end=len(a) / 24000, source_file="s.wav")
                 for text, speaker in zip(TEXTS, speakers)]
        clips_to_dataset(clips).save_to_disk(str(tmp_path / name))
        return tmp_path / name

    voice, prior = voices("voice", ["0"] * 4, 175), voices("prior", ["5", "5", "6", "6"], 90)
    timed_model = tmp_path / "timed"
    shutil.copytree(work["model"], timed_model)
    settings = json.loads((timed_model / "config.json").read_text())
    (timed_model / "config.json").write_text(json.dumps({**settings, TEXT_POSITIONS_KEY: TIMED}))
    rates = {}
    for name, extra in (("alone", {}), ("with-prior", {"prior_dataset": str(prior)})):
        result = finetune(config(work, name, model=str(timed_model), dataset=str(voice), cache_dir=tmp_path / "cache",
                                 max_steps=1, eval_fraction=0.25, context_probability=1.0, context_speaker_swap=0.7,
                                 **extra))
        rates[name] = json.loads((result.output_dir / "speaking_rate.json").read_text())
        data = result.metrics["data"]
        expected = (3, 0, 1) if name == "alone" else (7, 4, 1)
        assert (data["train_clips"], data["prior_clips"], data["eval_clips"]) == expected
    assert rates["with-prior"] == rates["alone"]

    with pytest.raises(TokenttsError, match="uses the voice's speaker id 0: give its speakers other ids"):
        finetune(config(work, "same-ids", dataset=str(voice), prior_dataset=str(voice)))
    from datasets import load_from_disk

    load_from_disk(str(prior)).remove_columns("source").save_to_disk(str(tmp_path / "anonymous"))
    with pytest.raises(TokenttsError, match="has no speaker column"):
        finetune(config(work, "anonymous", prior_dataset=str(tmp_path / "anonymous")))
    assert not any((work["root"] / name).exists() for name in ("same-ids", "anonymous"))


def test_empty_dataset_and_existing_output_are_refused(work, tmp_path):
    from datasets import load_from_disk

    # (one explicit shard: datasets cannot reload an empty dataset saved with its default of zero shards)
    load_from_disk(str(work["data"])).select([]).save_to_disk(str(tmp_path / "empty"), num_shards=1)
    with pytest.raises(TokenttsError, match="is empty"):
        finetune(config(work, "empty", dataset=str(tmp_path / "empty")))
    (work["root"] / "taken").mkdir()
    with pytest.raises(TokenttsError, match="already exists"):
        finetune(config(work, "taken"))


def test_silent_edges_are_cut_before_encoding_for_models_with_aligned_text(work, tmp_path):
    """Aligned and timed layouts spread the text over every frame of a clip, so their fine-tunes cut a
    clip's silent start and end (prepare keeps up to 0.2 s, a real recording often more); csm-1b's
    sequential layout keeps clips as they are. The cut is part of the code cache's key."""
    from datasets import load_from_disk

    silence = np.zeros(12_000, np.float32)  # 0.5 s
    clips = [Clip(audio=np.concatenate([silence, synthesize_espeak(text), silence]), text=text, source="0", start=0.0,
                  end=1.0, source_file="s.wav") for text in TEXTS[:2]]
    clips_to_dataset(clips).save_to_disk(str(tmp_path / "padded"))
    codec = load_model(work["model"], device="cpu").codec
    frames = {}
    for trim in (False, True):
        cfg = config(work, "unused", dataset=str(tmp_path / "padded"), cache_dir=tmp_path / "cache", trim_silence=trim)
        dataset, speaker_column = open_dataset(cfg)
        encoded = encode_dataset(dataset, codec, cfg, speaker_column)
        assert not encoded.from_cache  # the second setting does not reuse the first's codes
        frames[trim] = [clip.num_frames for clip in encoded.clips]
    one_second = codec.frame_rate
    assert all(0.8 * one_second <= kept - cut <= one_second + 1 for kept, cut in zip(frames[False], frames[True])), frames

    timed_model = tmp_path / "timed"
    shutil.copytree(work["model"], timed_model)
    settings = json.loads((timed_model / "config.json").read_text())
    (timed_model / "config.json").write_text(json.dumps({**settings, TEXT_POSITIONS_KEY: TIMED}))
    for model, expected in ((work["model"], False), (timed_model, True)):
        out = tmp_path / f"run-{expected}"
        finetune(config(work, out.name, model=str(model), output_dir=out, dataset=str(tmp_path / "padded"),
                        cache_dir=tmp_path / "cache", max_steps=1, codec_decoder_steps=0))
        resolved = json.loads((out / "finetune_config.json").read_text())
        assert resolved["trim_silence"] is expected
    assert len(load_from_disk(str(tmp_path / "padded"))) == 2  # the dataset itself is untouched
