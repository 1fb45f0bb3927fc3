"""A tiny, randomly initialised CSM for tests and experiments.

It is built from the real transformers classes and saved exactly like `sesame/csm-1b`
(config, safetensors weights, generation config, processor with tokenizer, feature extractor
and chat template), so it goes through the same loading code as the real checkpoint. The
tokenizer is byte-level BPE without merges: every string is encodable, and it needs no download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CsmConfig,
    CsmForConditionalGeneration,
    CsmProcessor,
    EncodecFeatureExtractor,
    PreTrainedTokenizerFast,
)

from tokentts.audio import SAMPLE_RATE

# The same Jinja template as csm-1b's processor: "<bos>[speaker]text<eos>" per message,
# followed by "<|AUDIO|><|audio_eos|>" when the message has audio.
CSM_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] is not string or not message['role'].isdigit() %}"
    "{{- raise_exception(\"The role must be an integer or a string representing an integer\") }}"
    "{%- endif %}"
    "{{- bos_token }}{{- '[' + message['role'] + ']' }}{{- message['content'][0]['text'] }}{{- eos_token }}"
    "{%- if message['content']|length > 1 %}{{- '<|AUDIO|><|audio_eos|>' }}{%- endif %}"
    "{%- endfor %}"
)

SPECIAL_TOKENS = {
    "bos_token": "<|begin_of_text|>",
    "eos_token": "<|end_of_text|>",
    "audio_token": "<|AUDIO|>",
    "audio_eos_token": "<|audio_eos|>",
    "pad_token": "<|finetune_right_pad_id|>",
}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: 256 byte tokens, then the CSM special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=SPECIAL_TOKENS["bos_token"],
        eos_token=SPECIAL_TOKENS["eos_token"],
        pad_token=SPECIAL_TOKENS["pad_token"],
        extra_special_tokens={"audio_token": SPECIAL_TOKENS["audio_token"], "audio_eos_token": SPECIAL_TOKENS["audio_eos_token"]},
    )
    return tokenizer


def small_csm_config(tokenizer: PreTrainedTokenizerFast, *, num_codebooks: int, codebook_size: int = 2048,
                     hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int, intermediate_size: int,
                     depth_hidden_size: int, depth_layers: int, depth_heads: int, depth_kv_heads: int,
                     depth_intermediate_size: int, rope: dict, codec_config: dict,
                     max_positions: int = 2048) -> CsmConfig:
    """A CSM config of any size whose special ids come from `tokenizer` (CSM's five special tokens).

    The audio vocabulary is the codec's codes plus csm-1b's three extra ids (2048 codes -> 2051);
    the last one pads. The depth decoder's RoPE counts codebooks, so its original length is K.
    """
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in SPECIAL_TOKENS.items()}
    vocab_size = codebook_size + 3
    depth_rope = {**rope, "original_max_position_embeddings": num_codebooks} if "original_max_position_embeddings" in rope else rope
    return CsmConfig(
        num_codebooks=num_codebooks,
        vocab_size=vocab_size,
        codebook_pad_token_id=vocab_size - 1,
        text_vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        rope_parameters=rope,
        bos_token_id=ids["bos_token"],
        pad_token_id=ids["pad_token"],
        audio_token_id=ids["audio_token"],
        audio_eos_token_id=ids["audio_eos_token"],
        depth_decoder_config={
            "num_codebooks": num_codebooks, "vocab_size": vocab_size, "backbone_hidden_size": hidden_size,
            "hidden_size": depth_hidden_size, "intermediate_size": depth_intermediate_size,
            "num_hidden_layers": depth_layers, "num_attention_heads": depth_heads,
            "num_key_value_heads": depth_kv_heads, "max_position_embeddings": num_codebooks + 1,
            "rope_parameters": depth_rope,
        },
        codec_config=codec_config,
    )


def tiny_mimi_config(num_codebooks: int) -> dict:
    """A small random Mimi: real classes and code paths, 0.4 M parameters."""
    return {
        "model_type": "mimi", "hidden_size": 32, "num_filters": 4, "codebook_dim": 16,
        "vector_quantization_hidden_dimension": 16, "upsample_groups": 32, "num_hidden_layers": 1,
        "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
        "num_quantizers": num_codebooks, "sliding_window": 64,
    }


def tiny_config(tokenizer: PreTrainedTokenizerFast, num_codebooks: int = 8) -> CsmConfig:
    # csm-1b's RoPE (llama3 scaling as rewritten by transformers' converter), so the tiny model
    # exercises the same position code path.
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}
    return small_csm_config(
        tokenizer, num_codebooks=num_codebooks, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=128, depth_hidden_size=32, depth_layers=2, depth_heads=4, depth_kv_heads=2,
        depth_intermediate_size=64, rope=rope, codec_config=tiny_mimi_config(num_codebooks),
    )


def save_tiny_csm(out_dir: Path, *, num_codebooks: int = 8, seed: int = 0) -> Path:
    """Write a random tiny CSM (model + processor) to `out_dir`, in csm-1b's on-disk format."""
    out_dir = Path(out_dir)
    tokenizer = tiny_tokenizer()
    config = tiny_config(tokenizer, num_codebooks)
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(config).eval()
    # transformers initialises Mimi's codebook centroids (`embed_sum`) to zeros, so a random Mimi
    # encodes every clip to all-zero codes: audio would look exactly like the end-of-audio frame.
    # Random centroids give varied, deterministic codes that tests can tell apart.
    for module in model.codec_model.modules():
        if hasattr(module, "embed_sum"):
            module.embed_sum.normal_(0.0, 1.0)
    # csm-1b samples with top-k 50 at temperature 0.9 in both stages.
    for generation_config in (model.generation_config, model.depth_decoder.generation_config):
        generation_config.update(do_sample=True, top_k=50, temperature=0.9)
    model.generation_config.max_new_tokens = 125
    model.save_pretrained(out_dir)
    feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0)
    processor = CsmProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=CSM_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir
