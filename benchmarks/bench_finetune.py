"""Fine-tuning throughput: our pre-tokenized path against transformers' processor path.

Both paths train the same small CSM (real Mimi architecture with random weights, 32 codebooks)
with the same LoRA adapters on the same batches of eSpeak clips, in the same loop (forward,
backward, AdamW step), each in its own child process so that its peak memory is its own:

- pretokenized: codes computed once with `MimiCodec.encode_batch` (timed separately, a one-time
  cost), then `tokentts.training` examples and `csm_losses` (inputs_embeds + 3-D labels);
- processor: `CsmProcessor.apply_chat_template(..., output_labels=True)` batches (prepared up
  front, like a `dataset.map`), then `model(**batch)`, which runs Mimi's encoder inside every
  forward pass, one clip at a time, as in the Unsloth / transformers recipe.

    python benchmarks/bench_finetune.py --steps 6 --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import platform
import resource
import time
from pathlib import Path

import torch

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "She sells sea shells by the sea shore every summer.",
    "A journey of a thousand miles begins with a single step.",
    "The library opens at nine in the morning on weekdays.",
    "Nobody expected the storm to arrive so early this year.",
    "Turn left at the station and walk past the old bakery.",
    "We will meet again when the leaves begin to fall.",
]


def small_csm(seed: int = 0):
    """A small CSM (4 + 2 layers) around the default MimiConfig, random weights, with the tiny processor.

    A random Mimi's codebook centroids are all zero (every frame would encode to code 0), so
    they are drawn at random: the codes then vary as with real speech."""
    from transformers import CsmConfig, CsmForConditionalGeneration, CsmProcessor, EncodecFeatureExtractor, MimiConfig

    from tokentts.model.tiny import CSM_CHAT_TEMPLATE, tiny_config, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    settings = tiny_config(tokenizer, num_codebooks=32).to_dict()
    for key in ("transformers_version", "architectures", "model_type"):
        settings.pop(key, None)
    settings.update(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, codec_config=MimiConfig().to_dict())
    settings["depth_decoder_config"].update(backbone_hidden_size=256, hidden_size=128, intermediate_size=256,
                                            num_hidden_layers=2)
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(CsmConfig(**settings))
    generator = torch.Generator().manual_seed(seed)
    for module in model.codec_model.modules():
        if hasattr(module, "embed_sum"):
            module.embed_sum.copy_(torch.randn(module.embed_sum.shape, generator=generator))
            module._embed = None
    processor = CsmProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0),
                             tokenizer=tokenizer, chat_template=CSM_CHAT_TEMPLATE)
    return model, processor


def clips(count: int) -> list[tuple[str, "object"]]:
    from tokentts.audio.synth import EspeakVoice, synthesize_espeak

    return [(TEXTS[i % len(TEXTS)], synthesize_espeak(TEXTS[i % len(TEXTS)], EspeakVoice(variant=("m3", "f2")[i % 2])))
            for i in range(count)]


def lora(model, rank: int):
    from tokentts.training.config import FinetuneConfig
    from tokentts.training.lora import prepare_for_training

    return prepare_for_training(model, FinetuneConfig(dataset="-", lora_rank=rank, lora_alpha=rank))


def reset_peak_rss() -> None:
    """Linux: restart the process's peak-RSS counter (VmHWM), to measure one phase on its own."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(model, batches: list, step, steps: int, seconds_per_batch: list[float]) -> tuple[float, float]:
    """(audio seconds per second, seconds per step) over `steps` steps after one warm-up step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    timed_audio = 0.0
    for index in range(steps + 1):
        if index == 1:
            started = time.perf_counter()
        batch = batches[index % len(batches)]
        step(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 1:
            timed_audio += seconds_per_batch[index % len(batches)]
    elapsed = time.perf_counter() - started
    return timed_audio / elapsed, elapsed / steps


def run_path(path: str, args: argparse.Namespace, queue) -> None:
    torch.set_num_threads(args.threads)
    from tokentts.codecs.mimi import MimiCodec
    from tokentts.training.examples import CsmTrainingDataset, collate_frames, tokenize_clips
    from tokentts.training.data import EncodedClip, default_encode_batch_seconds, encode_in_batches
    from tokentts.training.trainer import csm_losses

    model, processor = small_csm()
    data = clips(args.clips)
    groups = [data[i:i + args.batch_size] for i in range(0, len(data), args.batch_size)]
    seconds_per_batch = [sum(len(audio) / 24000 for _, audio in group) for group in groups]
    result = {"path": path, "audio_seconds": sum(seconds_per_batch)}
    if path == "pretokenized":
        codec = MimiCodec(model.codec_model, num_codebooks=32)
        codec.encode(data[0][1][:24000])  # warm-up, as the processor path gets a warm-up step
        started = time.perf_counter()
        codes = encode_in_batches(codec, [audio for _, audio in data], default_encode_batch_seconds(torch.device("cpu")))
        result["encode_seconds"] = time.perf_counter() - started
        result["encode_peak_rss_mib"] = peak_rss_mib()
        training, _ = tokenize_clips([EncodedClip(i, text, "0", c) for i, ((text, _), c) in enumerate(zip(data, codes))],
                                     processor.tokenizer, 256, 2048)
        dataset = CsmTrainingDataset(training, audio_token_id=model.config.audio_token_id,
                                     audio_eos_token_id=model.config.audio_eos_token_id,
                                     depth_frame_fraction=args.depth_frame_fraction)
        batches = [collate_frames([dataset[i] for i in range(start, min(start + args.batch_size, len(dataset)))])
                   for start in range(0, len(dataset), args.batch_size)]

        def step(model, batch):
            backbone, depth = csm_losses(model, batch)
            return backbone + depth
    else:
        batches = [processor.apply_chat_template(
            [[{"role": "0", "content": [{"type": "text", "text": text}, {"type": "audio", "audio": audio}]}] for text, audio in group],
            tokenize=True, return_dict=True,
            processor_kwargs={"output_labels": True, "depth_decoder_labels_ratio": args.depth_frame_fraction}) for group in groups]

        def step(model, batch):
            return model(**batch).loss

    model = lora(model, args.lora_rank)
    reset_peak_rss()
    result["audio_seconds_per_second"], result["seconds_per_step"] = train(model, batches, step, args.steps, seconds_per_batch)
    result["peak_rss_mib"] = peak_rss_mib()
    queue.put(result)


def measure(path: str, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_path, args=(path, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per path (after one warm-up step)")
    parser.add_argument("--depth-frame-fraction", type=float, default=1.0,
                        help="1.0 = transformers' default; the same fraction is used on both paths")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each child")
    parser.add_argument("--out", type=Path, help="append a markdown section with the results to this file")
    args = parser.parse_args()

    results = {path: measure(path, args) for path in ("pretokenized", "processor")}
    ours, theirs = results["pretokenized"], results["processor"]
    speedup = ours["audio_seconds_per_second"] / theirs["audio_seconds_per_second"]
    audio_total = ours["audio_seconds"]
    epochs_to_break_even = ours["encode_seconds"] / (audio_total / theirs["audio_seconds_per_second"] - audio_total / ours["audio_seconds_per_second"])
    lines = [
        f"## Fine-tuning throughput, pre-tokenized vs processor path ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} cores visible, "
        f"torch {torch.__version__}, {args.threads} thread(s) per path; CPU shared with other jobs (timings are noisy).",
        f"- Command: `python benchmarks/bench_finetune.py --clips {args.clips} --batch-size {args.batch_size} --steps {args.steps} "
        f"--depth-frame-fraction {args.depth_frame_fraction:g} --lora-rank {args.lora_rank} --threads {args.threads}`",
        f"- Model: small CSM (backbone 4 x 256, depth decoder 2 x 128, 32 codebooks) + default MimiConfig "
        f"(random weights), LoRA r={args.lora_rank} on q,k,v,o,gate,up,down; {args.clips} eSpeak clips "
        f"({audio_total:.1f} s), batch {args.batch_size}, depth-decoder frames {args.depth_frame_fraction:g}.",
        "",
        "| path | audio s / s | s / step | peak RSS while training (MiB) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['audio_seconds_per_second']:.2f} | {r['seconds_per_step']:.2f} | {r['peak_rss_mib']:.0f} |")
    lines += [
        "",
        f"Speed-up: **{speedup:.1f}x** (target >= 3x). One-time pre-tokenization of all {args.clips} clips: "
        f"{ours['encode_seconds']:.1f} s (peak RSS {ours['encode_peak_rss_mib']:.0f} MiB), repaid after {math.ceil(max(epochs_to_break_even, 0) * 100) / 100:g} epochs.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
