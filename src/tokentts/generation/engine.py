"""Our CSM decoding loop: backbone + depth decoder over static KV caches.

One audio frame costs one backbone step (-> codebook 0) and K - 1 depth-decoder steps
(-> codebooks 1..K-1). transformers' generic `generate` spends most of its time per step on
bookkeeping (cache objects, mask builders, logits processors, a nested `generate` per frame);
this loop calls the model's own weights directly:

- KV caches are allocated once per Generator (grown only for a larger batch) and written in
  place; the depth decoder's cache is simply overwritten from position 0 every frame;
- RoPE cos/sin tables are computed once for all positions; q/k/v and gate/up projections are
  stacked into one matmul each; single-token attention is two small matmuls per KV head group;
- optional weight-only int8 matmuls (CPU), since a frame's time is bound by reading the weights;
- sampling (temperature, top-k, top-p, or greedy) is set separately for the backbone and the
  depth decoder, with a seeded `torch.Generator` per call;
- on CUDA the single-token steps attend over the full static cache with a mask, so their shapes
  never change and `torch.compile(mode="reduce-overhead")` can capture them as CUDA graphs.

The math is that of transformers' `CsmForConditionalGeneration` (same weights and operations, some
fused), so greedy decoding gives the same codes as
`model.generate(do_sample=False, depth_decoder_do_sample=False)` (tests/test_generation.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokentts.codecs.base import StreamingDecoder
from tokentts.config import write_json_atomic
from tokentts.errors import TokenttsError
from tokentts.generation.text import split_sentences
from tokentts.model.loading import LoadedModel
from tokentts.model.prompt import Prompt, Segment, build_prompt, embed_frames, encode_segments

log = logging.getLogger(__name__)


# Sampling when neither the caller nor the model sets it.
BUILT_IN_SAMPLING = {"temperature": 0.9, "top_k": 50, "top_p": 1.0,
                     "depth_temperature": 0.9, "depth_top_k": 50, "depth_top_p": 1.0}
# Our names -> the keys of a model's generation_config.json (those transformers' CSM `generate` reads).
GENERATION_CONFIG_KEYS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
                          "depth_temperature": "depth_decoder_temperature", "depth_top_k": "depth_decoder_top_k",
                          "depth_top_p": "depth_decoder_top_p"}


def _model_default(name: str) -> str:
    return f"default: the model's generation_config.json, else {BUILT_IN_SAMPLING[name]:g}"


@dataclass
class SamplingConfig:
    """How codes are drawn. Unset (None) values come from the model's generation_config.json, so
    a model ships the sampling it was evaluated with; then from BUILT_IN_SAMPLING."""

    temperature: float | None = field(default=None, metadata={
        "help": f"backbone (codebook 0) sampling temperature ({_model_default('temperature')})"})
    top_k: int | None = field(default=None, metadata={"help": f"backbone top-k, 0 = off ({_model_default('top_k')})"})
    top_p: float | None = field(default=None, metadata={
        "help": f"backbone nucleus sampling threshold, 1 = off ({_model_default('top_p')})"})
    depth_temperature: float | None = field(default=None, metadata={
        "help": f"depth decoder (codebooks 1..K-1) temperature ({_model_default('depth_temperature')})"})
    depth_top_k: int | None = field(default=None, metadata={
        "help": f"depth decoder top-k, 0 = off ({_model_default('depth_top_k')})"})
    depth_top_p: float | None = field(default=None, metadata={
        "help": f"depth decoder nucleus threshold, 1 = off ({_model_default('depth_top_p')})"})
    greedy: bool = field(default=False, metadata={"help": "always take the most likely code (deterministic)"})
    seed: int | None = field(default=None, metadata={"help": "random seed for reproducible output"})
    max_seconds: float = field(default=20.0, metadata={"help": "longest audio generated for one text chunk"})
    runaway_seconds: float = field(
        default=4.0,
        metadata={"help": "stop when codebook 0 stays on at most two values this long (stuck or silent; 0 = off)"},
    )

    def __post_init__(self) -> None:
        for name in ("temperature", "depth_temperature"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 (use greedy for deterministic decoding)")
        for name in ("top_p", "depth_top_p"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if min(self.top_k or 0, self.depth_top_k or 0) < 0:
            raise ValueError("top_k must be >= 0")
        if self.max_seconds <= 0:
            raise ValueError("max_seconds must be > 0")

    def resolved(self, model_sampling: dict[str, float]) -> SamplingConfig:
        """This config with every unset value taken from `model_sampling`, else the built-in one."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingConfig)}
        unset = {name: model_sampling.get(name, built_in) for name, built_in in BUILT_IN_SAMPLING.items()
                 if own[name] is None}
        return SamplingConfig(**{**own, **unset})  # the model's values are checked like the caller's


def model_sampling(model: torch.nn.Module) -> dict[str, float]:
    """The sampling values a CSM model's generation_config.json sets, by our names. transformers
    loads its depth_decoder_* keys into the depth decoder's own generation config."""
    written = {}
    for prefix, config in (("", model.generation_config), ("depth_decoder_", model.depth_decoder.generation_config)):
        written.update({prefix + key: value for key, value in config.to_diff_dict().items()})
    return {name: written[key] for name, key in GENERATION_CONFIG_KEYS.items() if key in written}


def write_model_sampling(model_dir: Path, sampling: dict[str, float]) -> Path:
    """Make `sampling` (our names) the default sampling of the model folder `model_dir`."""
    path = Path(model_dir) / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    config.update({GENERATION_CONFIG_KEYS[name]: value for name, value in sampling.items()})
    # do_sample: transformers' generate samples with them too. _from_model_config False: otherwise
    # transformers drops the depth_decoder_* keys on load (it keeps extra keys only in written configs).
    config.update(do_sample=True, depth_decoder_do_sample=True, _from_model_config=False)
    return write_json_atomic(path, config)


@dataclass
class GenerationResult:
    audio: np.ndarray  # mono float32 at codec.sample_rate
    codes: torch.LongTensor  # [K, T]
    stop_reason: str  # "eos" | "max_length" | "runaway"
    seconds_taken: float  # generating the codes; a batch's time is split evenly between its rows


# One random stream for a whole batch, or one per row (a row then samples what it would alone).
Rng = torch.Generator | list[torch.Generator]


def sample_codes(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, greedy: bool,
                 generator: Rng | None) -> torch.LongTensor:
    """logits [B, V] -> codes [B]; the same warpers, in the same order, as transformers' sampling."""
    if greedy:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth_best = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth_best, -float("inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        remove_sorted = cumulative <= 1 - top_p
        remove_sorted[..., -1] = False  # always keep the best code
        scores = scores.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), -float("inf"))
    probs = scores.softmax(-1)
    if isinstance(generator, list):
        return torch.cat([torch.multinomial(row, 1, generator=rng) for row, rng in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@functools.cache
def int8_activations_saturate() -> bool:
    """Whether this CPU's int8 kernel would saturate on 8-bit activations. Without VNNI, fbgemm sums
    pairs of u8 x s8 products in int16 (vpmaddubsw), which overflows: measured on an AVX2 CPU, a
    mat-vec's error was 3.9 % with 8-bit activations and 1.8 % with 7-bit ones (PyTorch's own
    dynamic quantization uses 7 bits there too). Unknown CPUs count as saturating."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return re.search(r"\b(avx512_vnni|avx_vnni)\b", cpuinfo) is None


@dataclass
class Int8Weight:
    """Weight-only int8 (symmetric, one scale per output row): a quarter of fp32's bytes to read
    per mat-vec, which is what bounds CSM's frame time on CPU. Runs on PyTorch's x86/fbgemm int8
    kernel (activations are quantized on the fly per call), the one CPU int8 path that reaches the
    memory bandwidth here."""

    packed: torch.ScriptObject  # the kernel's prepacked int8 weight and scales

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Int8Weight:
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        zero_points = torch.zeros(len(scale), dtype=torch.long)
        with warnings.catch_warnings():
            # torch marks quantized-tensor constructors as deprecated; the kernel still needs one.
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor, torch.quantize_per_channel.*")
            q = torch.quantize_per_channel(w, scale.double(), zero_points, 0, torch.qint8)
        return cls(torch.ops.quantized.linear_prepack(q, None))

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] @ weight.T -> [..., out], like F.linear."""
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]).float(), self.packed,
                                                 int8_activations_saturate())
        return out.to(x.dtype).view(*x.shape[:-1], -1)


Weight = torch.Tensor | Int8Weight


def _linear(x: torch.Tensor, w: Weight) -> torch.Tensor:
    """x [..., in] @ w.T -> [..., out]."""
    if isinstance(w, Int8Weight):
        return w.linear(x)
    if w.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() == x.shape[-1] and w.is_contiguous():
        # One row on CPU: torch.mv streams contiguous bf16 weights ~1.5x faster than linear's gemm
        # path (measured here: 22 vs 15 GB/s; a strided view, like the depth heads, is 8x slower
        # through mv), and a generation step is bound by reading the weights.
        return torch.mv(w, x.reshape(-1)).view(*x.shape[:-1], -1)
    return F.linear(x, w)


def _add_linear(x: torch.Tensor, h: torch.Tensor, w: Weight) -> torch.Tensor:
    """x + h @ w.T for 2-D x and h, with the add fused into the matmul for float weights."""
    if isinstance(w, Int8Weight):
        return x + w.linear(h)
    # addmm saves an op per call (which counts for small models) but its bf16 CPU path for one
    # row is slower than _linear's.
    return torch.addmm(x, h, w.T) if w.dtype == torch.float32 else x + _linear(h, w)


def _maybe_quantize(weight: torch.Tensor, quantize: str | None) -> Weight:
    return Int8Weight.quantize(weight) if quantize == "int8" else weight


@dataclass
class _Layer:
    """One decoder layer's weights, pulled out of the nn.Modules once (attribute lookups through
    nn.Module cost more than the tiny model's matmuls)."""

    input_norm: torch.Tensor
    qkv: Weight  # q, k and v projections stacked: [(H + 2 * KV) * D, hidden]
    o: Weight
    post_norm: torch.Tensor
    gate_up: Weight  # gate and up projections stacked: [2 * I, hidden]
    down: Weight


def _stack_linears(linears: list[torch.nn.Linear]) -> torch.Tensor:
    """One weight for several projections of the same input (one matmul instead of several).

    The modules' weights are re-pointed to views of the stacked tensor, so the model keeps working
    unchanged and no memory is duplicated.
    """
    if any(type(linear) is not torch.nn.Linear for linear in linears):
        # e.g. peft LoRA layers, whose low-rank update this engine would silently skip.
        raise TokenttsError("the generation engine needs plain Linear layers: merge adapters first "
                            "(load_model does; or peft's merge_and_unload())")
    if any(linear.bias is not None for linear in linears):
        raise TokenttsError("CSM projections with bias are not supported by the generation engine")
    stacked = torch.cat([linear.weight.detach() for linear in linears])
    offset = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight.data = stacked[offset : offset + rows]
        offset += rows
    return stacked


class _Transformer:
    """The Llama-style layers of the backbone or of the depth decoder, run over a static KV cache."""

    def __init__(self, module: torch.nn.Module, max_positions: int, quantize: str | None = None):
        config = module.config
        if config.hidden_act != "silu":
            raise TokenttsError(f"unsupported activation {config.hidden_act!r} (CSM uses silu)")
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.max_positions = max_positions
        with torch.no_grad():
            self.layers = [
                _Layer(
                    input_norm=layer.input_layernorm.weight,
                    qkv=_maybe_quantize(_stack_linears(
                        [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]), quantize),
                    o=_maybe_quantize(layer.self_attn.o_proj.weight, quantize),
                    post_norm=layer.post_attention_layernorm.weight,
                    gate_up=_maybe_quantize(_stack_linears([layer.mlp.gate_proj, layer.mlp.up_proj]), quantize),
                    down=_maybe_quantize(layer.mlp.down_proj.weight, quantize),
                )
                for layer in module.layers[: config.num_hidden_layers]
            ]
            self.final_norm = module.norm.weight
            positions = torch.arange(max_positions, device=self.final_norm.device)[None]
            cos, sin = module.rotary_emb(self.final_norm, position_ids=positions)
        # RoPE as x * cos + roll(x, D/2) * sin_signed: the same products as transformers'
        # x * cos + rotate_half(x) * sin, with the sign of rotate_half folded into the table. The
        # tables span all q, k and v heads of the stacked projection: v heads get cos = 1, sin = 0
        # (unchanged, exactly), and q heads are pre-multiplied by the attention scale 1/sqrt(D)
        # (exact when D is a power of 4, as in CSM: a power-of-two factor).
        half = self.head_dim // 2
        cos, sin = cos[0][:, None], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)[:, None]  # [L, 1, D]
        q, k, v = self.num_heads, self.num_kv_heads, self.num_kv_heads
        self.cos = torch.cat([cos.expand(-1, q, -1) * self.scale, cos.expand(-1, k, -1),
                              torch.ones_like(cos).expand(-1, v, -1)], dim=1)  # [L, H + 2 KV, D]
        self.sin = torch.cat([sin.expand(-1, q, -1) * self.scale, sin.expand(-1, k, -1),
                              torch.zeros_like(sin).expand(-1, v, -1)], dim=1)
        # K and V of a layer share one cache tensor [B, 2 KV, L, D], written with one copy per step.
        self.cache: list[torch.Tensor] = []  # per layer, allocated for the largest batch so far
        self.batch_cache: list[torch.Tensor] = []  # views of the current batch's rows

    def allocate(self, batch_size: int) -> None:
        """Select the cache rows of a batch; (re)allocate only when a larger batch than before arrives."""
        if not self.cache or self.cache[0].shape[0] < batch_size:
            weight = self.final_norm
            shape = (batch_size, 2 * self.num_kv_heads, self.max_positions, self.head_dim)
            self.cache = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in self.layers]
        self.batch_cache = [cache[:batch_size] for cache in self.cache]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # CsmRMSNorm's math in one fused kernel (it computes the statistics in float32 too).
        return F.rms_norm(x, weight.shape, weight, self.eps)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Grouped-query attention for a few queries: q [B, S, H, D], k/v [B, KV, L, D], mask [B, 1, S, L]
        (True = may attend) or None -> [B, S, H * D]. The query heads sharing a KV head are folded
        into one matmul, so K and V are never repeated."""
        batch, length, _, dim = q.shape
        group = self.num_heads // self.num_kv_heads
        if length == 1:
            q = q.view(batch, self.num_kv_heads, group, dim)
        else:
            q = q.view(batch, length, self.num_kv_heads, group, dim).permute(0, 2, 3, 1, 4)
            q = q.reshape(batch, self.num_kv_heads, group * length, dim)
        scores = q @ k.transpose(-1, -2)  # [B, KV, group * S, L]; q comes pre-scaled
        if mask is not None:
            scores = scores.masked_fill(~mask.repeat(1, 1, group, 1), -float("inf"))
        out = scores.softmax(-1) @ v  # [B, KV, group * S, D]
        if length == 1:
            return out.view(batch, 1, -1)
        out = out.view(batch, self.num_kv_heads, group, length, dim).permute(0, 3, 1, 2, 4)
        return out.reshape(batch, length, -1)

    def __call__(self, x: torch.Tensor, positions: torch.LongTensor | int, slots: torch.LongTensor, kv_len: int,
                 mask: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
        """x [B, S, hidden] at RoPE `positions` ([B, S], or an int: the first of S positions shared by all
        rows), written to cache `slots` [S]; attends to the first `kv_len` cache slots under `mask`
        [B, 1, S, kv_len] (True = may attend; None = everything, or causal within a prompt when
        `causal`). Returns the final-normed hidden states [B, S, hidden]."""
        batch, length, _ = x.shape
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        if isinstance(positions, int):  # a view, no gather
            cos = self.cos[positions : positions + length][None]  # [1, S, H + 2 KV, D]
            sin = self.sin[positions : positions + length][None]
        else:
            cos, sin = self.cos[positions], self.sin[positions]  # [B, S, H + 2 KV, D]
        x = x.reshape(batch * length, -1)  # 2-D: matmuls (and residual adds fused into them) are cheaper
        for layer, cache in zip(self.layers, self.batch_cache):
            h = self._norm(x, layer.input_norm)
            qkv = _linear(h, layer.qkv).view(batch, length, heads + 2 * kv_heads, dim)
            qkv = qkv * cos + qkv.roll(dim // 2, dims=-1) * sin  # RoPE on q and k, scale on q
            q = qkv[:, :, :heads]
            cache.index_copy_(2, slots, qkv[:, :, heads:].transpose(1, 2))  # k and v at once
            keys, values = cache[:, :kv_heads, :kv_len], cache[:, kv_heads:, :kv_len]
            if causal and length > 2:
                # Prompt prefill: the fused kernel avoids materialising S x S scores per head.
                out = F.scaled_dot_product_attention(
                    q.transpose(1, 2), keys, values, attn_mask=mask, is_causal=mask is None, scale=1.0,
                    enable_gqa=True,
                ).transpose(1, 2).reshape(batch, length, -1)
            else:
                if causal and mask is None and length > 1:
                    mask = torch.ones(length, kv_len, dtype=torch.bool, device=x.device).tril(kv_len - length)[None, None]
                out = self._attend(q, keys, values, mask)
            x = _add_linear(x, out.reshape(batch * length, -1), layer.o)  # x + o_proj(out)
            h = self._norm(x, layer.post_norm)
            gate, up = _linear(h, layer.gate_up).chunk(2, dim=-1)
            x = _add_linear(x, F.silu(gate) * up, layer.down)  # x + down_proj(...)
        return self._norm(x, self.final_norm).view(batch, length, -1)


@dataclass
class _Batch:
    """State of one batched generation: left-padded prompts sharing cache slots."""

    pad: torch.LongTensor  # [B] left padding of each row
    position_offset: torch.LongTensor  # [B] RoPE position of a row's frame in slot s: s + offset
    length: int  # slots filled so far
    valid: torch.BoolTensor  # [B, L] slots a row may attend to
    padded: bool  # whether any row has padding (else no attention mask is needed)
    shared_positions: bool  # every row's frame in slot s is at position s (one int, no gather)


class Generator:
    """Text (+ optional voice context) -> CSM audio codes -> audio, with our own decoding loop."""

    def __init__(self, loaded: LoadedModel, compile: bool | None = None, stream_context_frames: int = 25,
                 max_chunk_chars: int = 250, quantize: str | None = None):
        """`compile`: compile the per-token steps (default: on CUDA only). `stream_context_frames`:
        left context when decoding streamed chunks. `max_chunk_chars`: longer text is spoken in
        sentence chunks of about this size. `quantize="int8"`: weight-only int8 matmuls (CPU; the
        model's own weights stay as they are, the engine keeps int8 copies)."""
        if quantize not in (None, "int8"):
            raise TokenttsError(f"unknown quantization {quantize!r} (only int8)")
        self.loaded = loaded
        self.max_chunk_chars = max_chunk_chars
        self.model = loaded.model
        self.codec = loaded.codec
        self.sample_rate = self.codec.sample_rate
        config = self.model.config
        self.num_codebooks = config.num_codebooks
        self.max_positions = config.max_position_embeddings
        self.device = next(self.model.parameters()).device
        self.stream_context_frames = stream_context_frames
        self.model_sampling = model_sampling(self.model)
        if quantize and self.device.type != "cpu":
            raise TokenttsError("int8 weights are a CPU option (use bf16 on GPUs)")
        self.backbone = _Transformer(self.model.backbone_model, self.max_positions, quantize)
        self.depth = _Transformer(self.model.depth_decoder.model, self.num_codebooks, quantize)
        # Weights used once per step, pulled out of their modules. Ids past the codec's codebook
        # (the model's padding ids 2048..2050) are never audio, so their logits are not computed.
        depth = self.model.depth_decoder
        audio_codes = self.codec.codebook_size
        self._c0_head = _maybe_quantize(self.model.lm_head.weight[:audio_codes], quantize)
        self._depth_heads = [_maybe_quantize(w.T[:audio_codes], quantize)  # per codebook 1..K-1
                             for w in depth.codebooks_head.weight]
        self._depth_embed = depth.model.embed_tokens.weight  # [K * V, backbone hidden], tied to the backbone's
        self._depth_projector = _maybe_quantize(depth.model.inputs_embeds_projector.weight, quantize)
        self._vocab_size = depth.config.vocab_size
        self._slot_index = torch.arange(self.max_positions, device=self.device)
        # Depth-decoder positions of each step: [0, 1] for codebook 1, then [i] for codebook i.
        self._depth_positions = {i: torch.arange(0 if i == 1 else i, i + 1, device=self.device)
                                 for i in range(1, self.num_codebooks)}
        self._depth_masks = {i: (torch.arange(self.num_codebooks, device=self.device) <= i)[None, None, None]
                             for i in range(1, self.num_codebooks)}
        # Static shapes on CUDA (attend over the whole cache with a mask) make the one-token steps
        # capturable as CUDA graphs; on CPU, attending to the filled part only is faster.
        self.static_shapes = self.device.type == "cuda"
        self._backbone_step = self._backbone_forward
        self._depth_step = self._depth_forward
        if compile if compile is not None else self.static_shapes:
            self._backbone_step = torch.compile(self._backbone_forward, mode="reduce-overhead", fullgraph=True)
            self._depth_step = torch.compile(self._depth_forward, mode="reduce-overhead", fullgraph=True)

    # ---- public API -------------------------------------------------------------------------

    def generate(self, text: str, speaker: str = "0", context: Sequence[Segment] = (),
                 sampling: SamplingConfig = SamplingConfig()) -> GenerationResult:
        return self.generate_batch([text], speaker, context, sampling)[0]

    def generate_batch(self, texts: list[str], speaker: str = "0", context: Sequence[Segment] = (),
                       sampling: SamplingConfig = SamplingConfig(),
                       seeds: Sequence[int] | None = None) -> list[GenerationResult]:
        """Several texts at once, all in the same voice context. Long texts are split into sentence
        chunks; chunk i of every text is generated in one batch, with chunk i - 1's audio as context.

        `seeds` gives each text its own random stream (instead of one from `sampling.seed` for the
        batch), so that a text samples what it would with that seed alone, whatever else is in the
        batch (up to the rounding of batched matmuls). Each result's `seconds_taken` is its share of
        the batch's time."""
        if not texts:
            return []
        if seeds is not None and len(seeds) != len(texts):
            raise ValueError(f"{len(seeds)} seeds for {len(texts)} texts")
        start = time.perf_counter()
        sampling = sampling.resolved(self.model_sampling)
        generators = [self._rng(seed) for seed in seeds] if seeds is not None else None
        generator = self._rng(sampling.seed) if generators is None else None
        context = self._encode_context(context)
        chunks = [split_sentences(t, self.max_chunk_chars) for t in texts]
        codes: list[list[torch.LongTensor]] = [[] for _ in texts]
        reasons: list[str] = ["eos"] * len(texts)
        previous: list[Segment | None] = [None] * len(texts)
        for round_index in range(max(len(c) for c in chunks)):
            rows = [i for i, c in enumerate(chunks) if round_index < len(c)]
            prompts = [self._target_prompt(context, previous[i], chunks[i][round_index], speaker) for i in rows]
            max_frames = self._frame_budget(prompts, sampling)
            rng = generator if generators is None else [generators[i] for i in rows]
            frames, row_reasons = self._run(prompts, sampling, max_frames, rng)
            for i, row_frames, reason in zip(rows, frames, row_reasons):
                codes[i].append(row_frames)
                previous[i] = Segment(speaker, chunks[i][round_index], codes=row_frames)
                if reason != "eos":
                    reasons[i] = reason
        seconds_each = (time.perf_counter() - start) / len(texts)
        results = []
        for row_codes, reason in zip(codes, reasons):
            all_codes = torch.cat(row_codes, dim=1)
            results.append(GenerationResult(self.codec.decode(all_codes), all_codes, reason, seconds_each))
        return results

    def stream(self, text: str, speaker: str = "0", context: Sequence[Segment] = (),
               sampling: SamplingConfig = SamplingConfig(), first_chunk_frames: int = 2,
               chunk_frames: int = 8) -> Iterator[np.ndarray]:
        """Yield audio chunks as frames are produced: a short first chunk for low latency, then
        `chunk_frames` frames at a time, decoded with left context so chunks join seamlessly."""
        sampling = sampling.resolved(self.model_sampling)
        generator = self._rng(sampling.seed)
        context = self._encode_context(context)
        decoder = StreamingDecoder(self.codec, self.stream_context_frames)
        previous: Segment | None = None
        pending: list[torch.LongTensor] = []
        emitted_any = False
        for chunk_text in split_sentences(text, self.max_chunk_chars):
            prompt = self._target_prompt(context, previous, chunk_text, speaker)
            max_frames = self._frame_budget([prompt], sampling)
            chunk_codes = []
            for frame in self._frames([prompt], sampling, max_frames, generator):
                codes = frame.codes[0]
                if frame.finished[0] and frame.reason[0] == "eos":
                    break
                chunk_codes.append(codes)
                pending.append(codes)
                if len(pending) >= (chunk_frames if emitted_any else first_chunk_frames):
                    yield decoder.push(torch.stack(pending, dim=1))
                    pending, emitted_any = [], True
                if frame.finished[0]:
                    break
            previous = Segment(speaker, chunk_text, codes=torch.stack(chunk_codes, dim=1) if chunk_codes else
                               torch.zeros(self.num_codebooks, 0, dtype=torch.long))
        if pending:
            yield decoder.push(torch.stack(pending, dim=1))

    # ---- prompts and budgets ----------------------------------------------------------------

    def _rng(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    def _encode_context(self, context: Sequence[Segment]) -> list[Segment]:
        """The voice context with its audio encoded once (every text chunk reuses the codes)."""
        for segment in context:
            if not segment.has_audio:
                raise TokenttsError(f"context segment {segment.text[:40]!r} has no audio")
        return encode_segments(context, self.codec)

    def _target_prompt(self, context: list[Segment], previous: Segment | None, text: str, speaker: str) -> Prompt:
        with_previous = [previous] if previous is not None and previous.codes.shape[1] > 0 else []
        prompt = build_prompt([*context, *with_previous, Segment(speaker, text)], self.loaded)
        if with_previous and len(prompt) > self.max_positions // 2:
            # The previous chunk is only there to keep the voice steady; drop it before it crowds
            # out the room left for new audio.
            return self._target_prompt(context, None, text, speaker)
        return prompt

    def _frame_budget(self, prompts: list[Prompt], sampling: SamplingConfig) -> int:
        wanted = max(1, int(round(sampling.max_seconds * self.codec.frame_rate)))
        room = self.max_positions - max(len(p) for p in prompts)
        # At least ~1 s of room, or the text (with its voice context) is too long for the model.
        if room < min(wanted, int(self.codec.frame_rate)):
            raise TokenttsError(
                f"text plus voice context take {max(len(p) for p in prompts)} of the model's {self.max_positions} "
                "positions, leaving no room for audio; use a shorter reference clip or shorter text"
            )
        if room < wanted:
            log.warning("only %.1f s of audio fit after the prompt (asked for up to %.1f s)",
                        room / self.codec.frame_rate, sampling.max_seconds)
        return min(wanted, room)

    # ---- the decoding loop ------------------------------------------------------------------

    @torch.inference_mode()
    def _run(self, prompts: list[Prompt], sampling: SamplingConfig, max_frames: int,
             generator: Rng) -> tuple[list[torch.LongTensor], list[str]]:
        """Generate for every prompt; returns codes [K, T_i] (without the end frame) and stop reasons."""
        collected: list[list[torch.LongTensor]] = [[] for _ in prompts]
        reasons = ["max_length"] * len(prompts)
        done = [False] * len(prompts)
        for frame in self._frames(prompts, sampling, max_frames, generator):
            for row in range(len(prompts)):
                if done[row]:
                    continue
                if frame.reason[row] != "eos":
                    collected[row].append(frame.codes[row])
                if frame.finished[row]:
                    done[row], reasons[row] = True, frame.reason[row]
        codes = [torch.stack(c, dim=1) if c else torch.zeros(self.num_codebooks, 0, dtype=torch.long)
                 for c in collected]
        return codes, reasons

    @torch.inference_mode()
    def _frames(self, prompts: list[Prompt], sampling: SamplingConfig, max_frames: int,
                generator: Rng) -> Iterator[_Frame]:
        """Yield each generated frame for all rows until every row has stopped."""
        batch_size = len(prompts)
        self.backbone.allocate(batch_size)
        self.depth.allocate(batch_size)
        state, hidden = self._prefill(prompts)
        runaway_frames = max(2, int(sampling.runaway_seconds * self.codec.frame_rate)) if sampling.runaway_seconds else 0
        recent_c0 = torch.zeros(batch_size, 0, dtype=torch.long)  # codebook 0 of the latest frames
        finished = [False] * batch_size
        for step in range(max_frames):
            codes = self._decode_frame(hidden, sampling, generator)  # [B, K]
            codes_cpu = codes.cpu()
            if runaway_frames:
                recent_c0 = torch.cat([recent_c0, codes_cpu[:, :1]], dim=1)[:, -runaway_frames:]
            reasons = [""] * batch_size
            for row in range(batch_size):
                if finished[row]:
                    continue
                if not codes_cpu[row].any():
                    reasons[row] = "eos"
                elif recent_c0.shape[1] == runaway_frames > 0 and recent_c0[row].unique().numel() <= 2:
                    reasons[row] = "runaway"
                elif step + 1 == max_frames:
                    reasons[row] = "max_length"
            finished = [done or bool(reason) for done, reason in zip(finished, reasons)]
            yield _Frame(codes_cpu, finished, reasons)
            if all(finished):
                return
            hidden = self._advance(state, codes)

    def _prefill(self, prompts: list[Prompt]) -> tuple[_Batch, torch.Tensor]:
        """Run the prompts (left-padded to one length) through the backbone; last hidden state [B, H]."""
        longest = max(len(p) for p in prompts)
        width = self.num_codebooks + 1
        tokens = torch.zeros(len(prompts), longest, width, dtype=torch.long)
        mask = torch.zeros(len(prompts), longest, width, dtype=torch.bool)
        positions = torch.zeros(len(prompts), longest, dtype=torch.long)
        pad = torch.tensor([longest - len(p) for p in prompts])
        for row, prompt in enumerate(prompts):
            tokens[row, pad[row]:] = prompt.tokens
            mask[row, pad[row]:] = prompt.mask
            positions[row, pad[row]:] = prompt.positions
        # Generated frames continue from each prompt's next_position, one position per slot.
        offset = torch.tensor([p.next_position - longest for p in prompts])
        if int(positions.max()) >= self.max_positions:  # aligned text spread past the model's positions
            raise TokenttsError(f"the text is too long for the model's {self.max_positions} positions")
        tokens, mask, pad, offset = (t.to(self.device) for t in (tokens, mask, pad, offset))
        slots = torch.arange(longest, device=self.device)
        valid = torch.arange(self.max_positions, device=self.device)[None] >= pad[:, None]  # [B, L]
        sequential = all(torch.equal(p.positions, torch.arange(len(p))) and p.next_position == len(p) for p in prompts)
        state = _Batch(pad=pad, position_offset=offset, length=longest, valid=valid, padded=bool(pad.any()),
                       shared_positions=sequential and not pad.any())
        positions = 0 if state.shared_positions else positions.to(self.device)
        attn_mask = None
        if state.padded:
            causal = slots[:, None] >= slots[None, :]
            attn_mask = (causal[None] & valid[:, None, :longest])[:, None]  # [B, 1, S, S]
            # Padding rows attend to nothing; let them see themselves to avoid NaNs.
            attn_mask = attn_mask | torch.eye(longest, dtype=torch.bool, device=self.device)[None, None]
        hidden = self.backbone(embed_frames(self.model, tokens, mask), positions, slots, longest, attn_mask, causal=True)
        return state, hidden[:, -1]

    def _advance(self, state: _Batch, codes: torch.LongTensor) -> torch.Tensor:
        """Feed the frame just generated [B, K] back into the backbone; next last hidden state [B, H]."""
        if state.length >= self.max_positions:
            raise TokenttsError("the model's context is full")
        slot = state.length
        state.length += 1
        embeds = self.model.backbone_model.embed_tokens(codes[:, None, :])  # [B, 1, H]
        positions = (slot + state.position_offset)[:, None]  # per row: left padding, aligned text layout
        slots = self._slot_index[slot : slot + 1]
        if self.static_shapes:  # tensors only: a Python int would be baked into the compiled graph
            attn_mask = (state.valid & (self._slot_index <= slot))[:, None, None]
            hidden = self._backbone_step(embeds, positions, slots, self.max_positions, attn_mask)
        else:
            attn_mask = state.valid[:, None, None, : slot + 1] if state.padded else None
            hidden = self._backbone_step(embeds, slot if state.shared_positions else positions, slots, slot + 1,
                                         attn_mask)
        return hidden[:, -1]

    def _backbone_forward(self, embeds, positions, slots, kv_len, attn_mask):
        return self.backbone(embeds, positions, slots, kv_len, attn_mask)

    def _depth_forward(self, embeds, positions, slots, kv_len, attn_mask):
        return self.depth(embeds, positions, slots, kv_len, attn_mask)

    def _decode_frame(self, backbone_hidden: torch.Tensor, sampling: SamplingConfig,
                      generator: Rng) -> torch.LongTensor:
        """Backbone hidden state [B, H] -> the frame's K codes [B, K]."""
        batch = backbone_hidden.shape[0]
        c0 = sample_codes(_linear(backbone_hidden, self._c0_head), sampling.temperature, sampling.top_k,
                          sampling.top_p, sampling.greedy, generator)
        # The depth decoder's first step sees two positions: the backbone's hidden state and codebook 0.
        inputs = torch.stack([backbone_hidden, F.embedding(c0, self._depth_embed)], dim=1)
        codes = [c0]
        for codebook in range(1, self.num_codebooks):
            projected = _linear(inputs, self._depth_projector)
            slots = self._depth_positions[codebook]
            if codebook == 1:
                hidden = self.depth(projected, 0, slots, 2, None, causal=True)
            elif self.static_shapes:
                hidden = self._depth_step(projected, slots[None].expand(batch, -1), slots, self.num_codebooks,
                                          self._depth_masks[codebook])
            else:
                hidden = self._depth_step(projected, codebook, slots, codebook + 1, None)
            logits = _linear(hidden[:, -1], self._depth_heads[codebook - 1])
            code = sample_codes(logits, sampling.depth_temperature, sampling.depth_top_k, sampling.depth_top_p,
                                sampling.greedy, generator)
            codes.append(code)
            # Codebook i's code, embedded from its own slice of the shared table, is position i + 1.
            inputs = F.embedding(code + codebook * self._vocab_size, self._depth_embed)[:, None]
        return torch.stack(codes, dim=1)


@dataclass
class _Frame:
    codes: torch.LongTensor  # [B, K] on the CPU
    finished: list[bool]  # row stops after this frame
    reason: list[str]  # why it stopped ("" while running); an "eos" frame is not audio
