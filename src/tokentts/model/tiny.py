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


def tiny_config(tokenizer: PreTrainedTokenizerFast, num_codebooks: int = 8) -> CsmConfig:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in SPECIAL_TOKENS.items()}
    # csm-1b's RoPE (llama3 scaling as rewritten by transformers' converter), so the tiny model
    # exercises the same position code path.
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}
    codec_config = {
        "model_type": "mimi", "hidden_size": 32, "num_filters": 4, "codebook_dim": 16,
        "vector_quantization_hidden_dimension": 16, "upsample_groups": 32, "num_hidden_layers": 1,
        "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
        "num_quantizers": num_codebooks, "sliding_window": 64,
    }
    return CsmConfig(
        num_codebooks=num_codebooks,
        text_vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_parameters=rope,
        bos_token_id=ids["bos_token"],
        pad_token_id=ids["pad_token"],
        audio_token_id=ids["audio_token"],
        audio_eos_token_id=ids["audio_eos_token"],
        depth_decoder_config={
            "num_codebooks": num_codebooks, "backbone_hidden_size": 64, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": num_codebooks + 1,
            "rope_parameters": {**rope, "original_max_position_embeddings": num_codebooks},
        },
        codec_config=codec_config,
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
