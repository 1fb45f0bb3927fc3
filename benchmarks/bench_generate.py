"""Our CSM generation engine vs transformers' `generate`, same weights and settings, in one run.

    .venv/bin/python benchmarks/bench_generate.py --case tiny --frames 60
    .venv/bin/python benchmarks/bench_generate.py --case full --full-frames 5 --variants float32 int8 bfloat16

(a) `tiny`: the random tiny CSM of the tests (8 codebooks): frames/s, real-time factor, and the
    first-audio latency when streaming.
(b) `full`: the csm-1b architecture (16 + 4 layers, 32 codebooks) with random weights; time per
    frame does not depend on the weights' values. It is compared with the memory-bandwidth floor:
    the bytes of weights one frame must read (one backbone step + K - 1 depth-decoder steps)
    divided by the bandwidth of a plain mat-vec over a weight matrix of one depth step's size.

Both engines decode greedily with the same stopping (max length), and the codes are compared.
The machine may be shared: every figure is the best of `--repeats` runs and the load average is
recorded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from tokentts.generation import Generator, SamplingConfig
from tokentts.generation.engine import Int8Weight
from tokentts.model import LoadedModel, load_model, save_tiny_csm

TEXT = "The quick brown fox jumps over the lazy dog."
NOT_AUDIO = [2048, 2049, 2050]  # the model's padding ids; our engine never samples them


def timed(fn, repeats: int) -> tuple[float, float, float, object]:
    """(best wall-clock, median wall-clock, best CPU) seconds over `repeats` calls, and the last result.

    On a shared machine the process CPU time (all threads) is the steadier measure of work done."""
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), statistics.median(wall), min(cpu), result


def engines(loaded: LoadedModel, quantize: str | None = None):
    """(ours, transformers): each maps a frame count to the generated codes [K, T], audio decoded."""
    generator = Generator(loaded, quantize=quantize)
    conversation = [{"role": "0", "content": [{"type": "text", "text": TEXT}]}]
    inputs = loaded.processor.apply_chat_template(conversation, tokenize=True, return_dict=True).to(loaded.device)

    def ours(frames: int) -> torch.Tensor:
        sampling = SamplingConfig(greedy=True, runaway_seconds=0, max_seconds=frames / loaded.codec.frame_rate)
        return generator.generate(TEXT, "0", (), sampling).codes

    def theirs(frames: int) -> torch.Tensor:
        with torch.inference_mode():
            out = loaded.model.generate(
                **inputs, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=frames,
                suppress_tokens=NOT_AUDIO, depth_decoder_suppress_tokens=NOT_AUDIO, output_audio=True,
                return_dict_in_generate=True)
        return out.sequences[0].T.cpu()

    return generator, ours, theirs


def compare(loaded: LoadedModel, frames: int, repeats: int, stream: bool = True, quantize: str | None = None) -> dict:
    """End-to-end frames/s at `frames`, and the marginal time of one more frame: the difference
    between `frames` and 1 frame, which leaves out the prompt prefill and fixed costs."""
    generator, ours, theirs = engines(loaded, quantize)
    row = {"frames": frames}
    for name, run in (("ours", ours), ("hf", theirs)):
        run(1)  # warm-up (allocations, kernel selection)
        long_best, long_median, long_cpu, codes = timed(lambda: run(frames), repeats)
        one_best, _, one_cpu, _ = timed(lambda: run(1), repeats)
        row.update({f"{name}_fps": frames / long_best, f"{name}_fps_median": frames / long_median,
                    f"{name}_fps_cpu": frames / long_cpu,
                    f"{name}_rtf": long_best / (frames / loaded.codec.frame_rate),
                    f"{name}_frame_s": (long_best - one_best) / (frames - 1),
                    f"{name}_frame_cpu_s": (long_cpu - one_cpu) / (frames - 1), f"{name}_codes": codes})
    ours_codes, hf_codes = row.pop("ours_codes"), row.pop("hf_codes")
    # share of codes identical to transformers' (100 % expected unless weights are quantized)
    row["codes_match"] = (ours_codes == hf_codes).float().mean().item() if ours_codes.shape == hf_codes.shape else 0.0
    if stream:
        sampling = SamplingConfig(greedy=True, runaway_seconds=0, max_seconds=frames / loaded.codec.frame_rate)
        first_chunk = lambda: next(iter(generator.stream(TEXT, "0", (), sampling, first_chunk_frames=1)))  # noqa: E731
        row["ours_first_audio_s"] = timed(first_chunk, repeats)[0]
        row["hf_first_audio_s"] = 1 / row["hf_fps"] * frames  # transformers returns audio only at the end
    return row


def full_size_model(dtype: torch.dtype, tokenizer_dir: Path) -> LoadedModel:
    """csm-1b's architecture (transformers' CsmConfig defaults) with random weights."""
    from transformers import AutoProcessor, CsmConfig, CsmForConditionalGeneration

    from tokentts.codecs import MimiCodec

    torch.manual_seed(0)
    model = CsmForConditionalGeneration(CsmConfig()).to(dtype).eval()
    processor = AutoProcessor.from_pretrained(tokenizer_dir)  # tiny byte-level tokenizer: ids < 128256
    return LoadedModel(model=model, processor=processor, codec=MimiCodec(model.codec_model, 32),
                       device=torch.device("cpu"), dtype=dtype, source="random csm-1b architecture")


# name -> (model dtype, engine weight quantization)
VARIANTS = {"float32": (torch.float32, None), "int8": (torch.float32, "int8"), "bfloat16": (torch.bfloat16, None)}


def weights_per_frame(loaded: LoadedModel) -> tuple[int, int]:
    """(weights read by one backbone step, weights read by one depth-decoder step), in elements."""
    model = loaded.model
    codes = loaded.codec.codebook_size
    count = lambda tensors: sum(t.numel() for t in tensors)  # noqa: E731
    backbone = count(model.backbone_model.layers.parameters()) + count([model.lm_head.weight[:codes]])
    depth = model.depth_decoder
    head = depth.codebooks_head.weight[0][:, :codes]
    step = count(depth.model.layers.parameters()) + count([depth.model.inputs_embeds_projector.weight, head])
    return backbone, step


def matvec_bandwidth(elements: int, dtype: torch.dtype, quantize: str | None, repeats: int) -> tuple[float, float]:
    """Bytes/s of a plain x @ W.T over a [rows, 2048] weight matrix of `elements` weights, and the
    result's relative error against fp32 (the precision cost of the weight format)."""
    cols = 2048
    weight = torch.randn(elements // cols, cols) * 0.02
    x32 = torch.randn(1, cols)
    x = x32.to(dtype)
    if quantize == "int8":
        int8 = Int8Weight.quantize(weight)
        run, nbytes = (lambda: int8.linear(x)), weight.numel()  # one byte per weight
    else:
        low = weight.to(dtype)
        nbytes = low.numel() * low.element_size()
        # The floor uses the faster of the two plain mat-vec kernels (they differ in bf16 on CPU).
        kernels = [lambda: F.linear(x, low), lambda: torch.mv(low, x[0]).view(1, -1)]
        run = min(kernels, key=lambda kernel: timed(kernel, repeats)[0])
    exact = F.linear(x32, weight)
    error = ((run().float() - exact).norm() / exact.norm()).item()
    return nbytes / timed(run, repeats)[0], error


def bench_full(frames: int, variants: list[str], repeats: int, tokenizer_dir: Path) -> list[dict]:
    rows, loaded = [], None
    for name in sorted(variants, key=list(VARIANTS).index):  # fp32 and int8 share one model
        dtype, quantize = VARIANTS[name]
        if loaded is None or loaded.dtype != dtype:
            loaded = None  # free the previous model first: it is ~6 GB in fp32
            loaded = full_size_model(dtype, tokenizer_dir)
        backbone, step = weights_per_frame(loaded)
        bytes_per_weight = 1 if quantize else torch.tensor([], dtype=dtype).element_size()
        frame_bytes = (backbone + (loaded.num_codebooks - 1) * step) * bytes_per_weight
        bandwidth, matvec_error = matvec_bandwidth(step, dtype, quantize, repeats=5)
        row = compare(loaded, frames, repeats, stream=False, quantize=quantize)
        floor = frame_bytes / bandwidth
        row.update(dtype=name, frame_gb=frame_bytes / 1e9, bandwidth_gbs=bandwidth / 1e9, floor_s=floor,
                   ours_vs_floor=row["ours_frame_s"] / floor, matvec_error=matvec_error)
        rows.append(row)
    return rows


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def report(tiny: dict | None, full: list[dict], command: str) -> str:
    lines = [
        f"## Generation benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average before: {os.getloadavg()[0]:.1f} (shared machine)",
        f"- command: `{command}`",
        "- greedy decoding, stop at max length; best of N runs (median in brackets); frames/s include the Mimi decode",
        "",
    ]
    if tiny:
        lines += [
            "### (a) tiny random CSM (8 codebooks)",
            "",
            "| engine | frames/s (wall) | frames/s (CPU time) | marginal ms/frame (wall / CPU) | real-time factor | "
            "first audio (s) |",
            "|---|---|---|---|---|---|",
            f"| transformers `generate` | {tiny['hf_fps']:.1f} ({tiny['hf_fps_median']:.1f}) | {tiny['hf_fps_cpu']:.1f} | "
            f"{tiny['hf_frame_s'] * 1e3:.2f} / {tiny['hf_frame_cpu_s'] * 1e3:.2f} | {tiny['hf_rtf']:.3f} | "
            f"{tiny['hf_first_audio_s']:.3f} (no streaming) |",
            f"| tokentts engine | {tiny['ours_fps']:.1f} ({tiny['ours_fps_median']:.1f}) | {tiny['ours_fps_cpu']:.1f} | "
            f"{tiny['ours_frame_s'] * 1e3:.2f} / {tiny['ours_frame_cpu_s'] * 1e3:.2f} | {tiny['ours_rtf']:.3f} | "
            f"{tiny['ours_first_audio_s']:.3f} |",
            "",
            f"Speed-up over {tiny['frames']} frames: **{tiny['ours_fps'] / tiny['hf_fps']:.1f}x** wall-clock, "
            f"**{tiny['ours_fps_cpu'] / tiny['hf_fps_cpu']:.1f}x** CPU time (target >= 4x); "
            f"codes identical to transformers': {tiny['codes_match']:.0%}.",
            "",
        ]
    if full:
        lines += [
            "### (b) csm-1b architecture, random weights, CPU",
            "",
            "| weights | transformers s/frame | ours s/frame | weights read per frame | mat-vec bandwidth | "
            "bandwidth floor s/frame | ours / floor | codes = transformers' | mat-vec error vs fp32 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in full:
            lines.append(
                f"| {row['dtype']} | {row['hf_frame_s']:.3f} | {row['ours_frame_s']:.3f} | "
                f"{row['frame_gb']:.2f} GB | {row['bandwidth_gbs']:.1f} GB/s | {row['floor_s']:.3f} | "
                f"**{row['ours_vs_floor']:.2f}x** | {row['codes_match']:.0%} | {row['matvec_error']:.2%} |")
        lines += ["", "s/frame is the marginal cost of one more frame (runs of N and 1 frames; prefill excluded), "
                  f"N = {full[0]['frames']}; target: ours within 1.25x of the floor. The int8 row runs transformers "
                  "in fp32 (it has no int8 CPU path here). With random weights, greedy codes of a lower precision "
                  "drift from fp32's after a frame or two (near-tied logits), so the mat-vec error is the "
                  "steadier measure of the precision cost.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["tiny", "full", "all"], default="tiny")
    parser.add_argument("--frames", type=int, default=60, help="frames per run for the tiny model")
    parser.add_argument("--full-frames", type=int, default=5, help="frames per run for the full-size model")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="full-size model: weights in fp32, bf16, or int8 (weight-only, fp32 activations)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="append the markdown report to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = save_tiny_csm(Path(tmp) / "tiny")
        tiny = compare(load_model(tiny_dir), args.frames, args.repeats) if args.case in ("tiny", "all") else None
        full = (bench_full(args.full_frames, args.variants, args.repeats, tiny_dir)
                if args.case in ("full", "all") else [])
    text = report(tiny, full, "python " + " ".join(os.sys.argv))
    print(text)
    if args.out:
        with args.out.open("a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
