"""The tiny-random captioner: the real Qwen2.5-VL architecture, tiny sizes, random weights.

Built in code (there is no model hub here) and saved with `save_pretrained`, so tests load it
back by folder path through the same code a real model takes. The tokenizer is byte-level BPE
with no merges (every byte a token) plus Qwen's chat and vision special tokens; the processors
are the real Qwen2-VL ones. It writes gibberish: tests check plumbing and files, never text.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_RANDOM = "tiny-random"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Qwen2.5-VL's chat format, reduced to what captioning sends (one user turn, media + text).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Upstream's pixel budget per image or frame (LTX-Video-Trainer's captioner).
MIN_PIXELS = 16 * 28 * 28
MAX_PIXELS = 64 * 28 * 28


def tiny_folder() -> Path:
    """Return the folder of the tiny-random captioner, building it there once per version."""
    import transformers

    root = Path(os.environ.get("LTXQ_CACHE") or Path.home() / ".cache" / "ltxq").expanduser()
    folder = root / f"tiny-random-captioner-{transformers.__version__}"
    if not (folder / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-captioner-"))
        try:
            save_tiny_captioner(staging)
            try:
                staging.rename(folder)
            except OSError:   # another process published it first: use theirs
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return folder


def save_tiny_captioner(folder: Path, seed: int = 0) -> Path:
    """Build the tiny-random Qwen2.5-VL and save model, tokenizer and processors in FOLDER."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"],
                     # mrope sections sum to head_dim / 2 (8 / 2)
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
                       "out_hidden_size": 32, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "fullatt_block_indexes": [1],
                       "window_size": 56},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(folder)
    # What a hub folder holds for the processor and the video processor (they need torchvision
    # to be built, so they are written as the hub writes them).
    vision = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": 14,
              "temporal_patch_size": 2, "merge_size": 2,
              "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711]}
    _write_json(folder / "video_preprocessor_config.json",
                {"video_processor_type": "Qwen2VLVideoProcessor", **vision})
    _write_json(folder / "processor_config.json", {"processor_class": "Qwen2_5_VLProcessor"})
    _write_json(folder / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
