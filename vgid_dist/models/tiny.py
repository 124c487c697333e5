"""Tiny random models of the real classes, built in code and saved with ``save_pretrained``, so the demo and
the tests load them through the same ``from_pretrained`` path as real checkpoints. Nothing is downloaded:
the tokenizer is a byte-level BPE trained on the given texts (it still encodes words it never saw)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from vgid_dist.models.export import save_hf_folder
from vgid_dist.prompts import (
    CLASSIFICATION_SUFFIX,
    CLOZE_SUFFIX,
    DEFAULT_REFUSALS,
    GENERATION_SUFFIX_IMAGE,
    GENERATION_SUFFIX_TEXT,
    INSTRUCTIONS,
    REVERSE_ATTACK,
)

LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BASE_TEXTS = ["USER: ASSISTANT: user assistant", *INSTRUCTIONS.values(), *DEFAULT_REFUSALS, REVERSE_ATTACK,
              f"{CLASSIFICATION_SUFFIX} A B C D", CLOZE_SUFFIX, GENERATION_SUFFIX_IMAGE, GENERATION_SUFFIX_TEXT]


def train_bpe(texts: Iterable[str], specials: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) + BASE_TEXTS, trainer)
    return tok


def build_tiny_llava(out: str | Path, texts: Iterable[str] = (), *, vocab_size: int = 1024, hidden: int = 64,
                     layers: int = 2, heads: int = 4, vision_hidden: int = 64, image_size: int = 28,
                     patch_size: int = 7, seed: int = 0) -> Path:
    """A 2-layer LlavaForConditionalGeneration (CLIP vision tower, Llama language model), random init."""
    from tokenizers import processors
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    tok = train_bpe(texts, LLAVA_SPECIALS, vocab_size)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                                       num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                                       patch_size=patch_size, projection_dim=vision_hidden),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                max_position_embeddings=1024, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                                pad_token_id=ids["<pad>"], tie_word_embeddings=False),
        image_token_id=ids["<image>"], vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.bos_token_id = ids["<s>"]
    return save_hf_folder(model, Path(out).expanduser(), tokenizer=tokenizer, image_processor=image_processor)


def build_tiny_qwen2_5_vl(out: str | Path, texts: Iterable[str] = (), *, vocab_size: int = 1024, hidden: int = 64,
                          layers: int = 2, heads: int = 4, vision_hidden: int = 64, image_pixels: int = 56 * 56,
                          seed: int = 0) -> Path:
    """A 2-layer Qwen2_5_VLForConditionalGeneration, random init (56 x 56 image -> 4 merged image tokens)."""
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    tok = train_bpe(texts, QWEN_SPECIALS, vocab_size)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=QWEN_CHAT_TEMPLATE)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=image_pixels, max_pixels=image_pixels, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    head_dim = hidden // heads
    section = head_dim // 2
    mrope = [section - 2 * (section // 3), section // 3, section // 3]
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2 or 1,
                         max_position_embeddings=1024, bos_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False),
        vision_config=dict(depth=2, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
                           out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=56, fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return save_hf_folder(model, Path(out).expanduser(), tokenizer=tokenizer, image_processor=image_processor)


TINY_BUILDERS = {"llava": build_tiny_llava, "qwen2_5_vl": build_tiny_qwen2_5_vl}
