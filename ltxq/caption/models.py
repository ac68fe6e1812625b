"""Captioners behind one interface, loaded by hub id or folder, and kept warm between jobs.

`load_captioner(source)` returns a `Captioner`; `caption(sampled, prompt, max_new_tokens)`
returns the raw text (greedy decoding, as upstream). Qwen2.5-VL (the default) gets its inputs
built here from our own decoded frames:

- images: the image processor (`Qwen2VLImageProcessorPil` when torchvision is missing);
- videos: the real `Qwen2VLVideoProcessor` when torchvision loads (users' CUDA machines);
  without it (these CPU machines: the PyPI torchvision wheel does not load with the CPU
  torch), `video_patches`: every frame through the image processor with a temporal patch of 1
  (the same smart_resize, rescale and normalisation), then the frames paired into temporal
  patches exactly as `Qwen2VLVideoProcessor.patchify` lays them out. tests/test_caption.py
  runs that processor's own patchify source against it.

Other VLMs (LLaVA-NeXT-Video) go through their AutoProcessor. The warm cache holds one
captioner (the last used); `release()` frees it before a training job needs the memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ltxq.caption.frames import Sampled
from ltxq.caption.tiny import MAX_PIXELS, MIN_PIXELS, TINY_RANDOM, tiny_folder
from ltxq.errors import LtxqError

Log = Callable[[str], None]
_lock = threading.Lock()
_warm: dict[tuple[str, str | None, str], Captioner] = {}


class Captioner(Protocol):
    source: str

    def caption(self, clip: Sampled, prompt: str, max_new_tokens: int) -> str:
        """Return the model's raw text for CLIP."""
        ...


def captioner(source: str, *, revision: str | None = None, device: str | None = None,
              log: Log = print) -> Captioner:
    """Return the captioner of SOURCE on DEVICE: the warm one if it is that, else load it
    (dropping the warm one first: one model at a time)."""
    import torch

    from ltxq.trainer.device import resolve_device

    dev = resolve_device(device)
    key = (source, revision, str(dev))
    with _lock:
        cached = _warm.get(key)
        if cached is not None:
            log(f"captioner {source} already loaded (warm)")
            return cached
        _warm.clear()
    _free_cuda()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    loaded = load_captioner(source, revision=revision, device=dev, dtype=dtype)
    with _lock:
        _warm.clear()
        _warm[key] = loaded
    return loaded


def release() -> bool:
    """Drop the warm captioner (its memory goes once no job holds it); True if there was one."""
    with _lock:
        had = bool(_warm)
        _warm.clear()
    if had:
        _free_cuda()
    return had


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_captioner(source: str, *, revision: str | None, device: Any, dtype: Any) -> Captioner:
    """Load SOURCE (hub id, local folder, or tiny-random) by the production path."""
    from transformers import AutoConfig

    path = str(tiny_folder()) if source == TINY_RANDOM else source
    local = Path(path).expanduser().is_dir()
    opts: dict[str, Any] = {"local_files_only": True} if local else {"revision": revision}
    try:
        config = AutoConfig.from_pretrained(path, **opts)
        if config.model_type == "qwen2_5_vl":
            return QwenCaptioner.load(source, path, opts, device, dtype)
        return GenericCaptioner.load(source, path, opts, device, dtype)
    except OSError as e:  # no such folder / repo, no network, missing files
        raise LtxqError(f"cannot load captioner {source}: {str(e).splitlines()[0]}") from None


def _torchvision() -> bool:
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        return False
    try:
        import torchvision  # noqa: F401 - a wheel built for another torch fails here
    except Exception:  # noqa: BLE001 - "operator torchvision::nms does not exist" and kin
        return False
    return True


class QwenCaptioner:
    """Qwen2.5-VL: inputs built from our frames (see the module docstring)."""

    def __init__(self, source: str, model: Any, tokenizer: Any, image_processor: Any,
                 video_processor: Any | None, device: Any):
        self.source = source
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.video_processor = video_processor   # None without torchvision
        self.device = device
        self.size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}

    @classmethod
    def load(cls, source: str, path: str, opts: dict[str, Any], device: Any,
             dtype: Any) -> QwenCaptioner:
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        video_processor = None
        if _torchvision():
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(path, **opts)
            tokenizer, image_processor = processor.tokenizer, processor.image_processor
            video_processor = processor.video_processor
            if getattr(tokenizer, "chat_template", None) is None:
                tokenizer.chat_template = processor.chat_template
        else:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
                Qwen2VLImageProcessorPil,
            )

            tokenizer = AutoTokenizer.from_pretrained(path, **opts)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **opts)
            if getattr(tokenizer, "chat_template", None) is None:
                tokenizer.chat_template = _chat_template(path, opts)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, **opts)
        model.to(device).eval()
        return cls(source, model, tokenizer, image_processor, video_processor, device)

    def inputs(self, clip: Sampled, prompt: str) -> dict[str, Any]:
        """Return the model inputs for CLIP and PROMPT (tensors on the model's device)."""
        import torch

        kind = "image" if clip.is_image else "video"
        messages = [{"role": "user", "content": [{"type": kind}, {"type": "text",
                                                                  "text": prompt}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        merge = self.image_processor.merge_size ** 2
        if clip.is_image:
            vision = self.image_processor(images=[clip.frames[0]], size=self.size,
                                          return_tensors="pt")
            pixels = {"pixel_values": vision["pixel_values"],
                      "image_grid_thw": vision["image_grid_thw"]}
            tokens = int(vision["image_grid_thw"][0].prod()) // merge
            text = text.replace("<|image_pad|>", "<|image_pad|>" * tokens, 1)
        else:
            values, grid = self.video_inputs(clip.frames)
            tps = self.image_processor.temporal_patch_size
            pixels = {"pixel_values_videos": values, "video_grid_thw": grid,
                      "second_per_grid_ts": torch.tensor([tps / clip.fps])}
            tokens = int(grid[0].prod()) // merge
            text = text.replace("<|video_pad|>", "<|video_pad|>" * tokens, 1)
        encoded = self.tokenizer([text], return_tensors="pt")
        ids = encoded["input_ids"]
        config = self.model.config
        types = torch.zeros_like(ids)
        types[ids == config.image_token_id] = 1
        types[ids == config.video_token_id] = 2
        dtype = self.model.dtype
        out = {"input_ids": ids, "attention_mask": encoded["attention_mask"],
               "mm_token_type_ids": types}
        for name, value in pixels.items():
            out[name] = value.to(dtype) if name.startswith("pixel_values") else value
        return {k: v.to(self.device) for k, v in out.items()}

    def video_inputs(self, frames: np.ndarray) -> tuple[Any, Any]:
        """Return (pixel_values_videos, video_grid_thw) of uint8 FRAMES [T, H, W, 3]."""
        import torch

        if self.video_processor is not None:
            out = self.video_processor(videos=[list(frames)], size=self.size,
                                       do_sample_frames=False, return_tensors="pt")
            return out["pixel_values_videos"], out["video_grid_thw"]
        values, grid = video_patches(self.image_processor, list(frames), self.size)
        return torch.from_numpy(values), torch.from_numpy(grid)

    def caption(self, clip: Sampled, prompt: str, max_new_tokens: int) -> str:
        """Return the raw caption of CLIP (greedy decoding)."""
        import torch

        inputs = self.inputs(clip, prompt)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True)


def video_patches(image_processor: Any, frames: list[np.ndarray],
                  size: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Lay out FRAMES as Qwen2VLVideoProcessor does, with the image processor only.

    Each frame is resized, rescaled and normalised by IMAGE_PROCESSOR with a temporal patch of
    1; an odd last frame is repeated (as the video processor pads); then frames 2k and 2k+1 are
    stacked on the temporal axis of each patch: [t, h/m, w/m, m, m, C, T, p, p] flattened.
    """
    tps = image_processor.temporal_patch_size
    patch = image_processor.patch_size
    if len(frames) % tps:
        frames = frames + [frames[-1]] * (tps - len(frames) % tps)
    out = image_processor(images=frames, size=size, temporal_patch_size=1, return_tensors="np")
    values, grids = np.asarray(out["pixel_values"]), np.asarray(out["image_grid_thw"])
    _, grid_h, grid_w = (int(x) for x in grids[0])
    t = len(frames) // tps
    per_frame = values.reshape(t, tps, grid_h * grid_w, -1, patch, patch)  # [t, T, N, C, p, p]
    stacked = per_frame.transpose(0, 2, 3, 1, 4, 5)                        # [t, N, C, T, p, p]
    flat = np.ascontiguousarray(stacked).reshape(t * grid_h * grid_w, -1)
    return flat, np.array([[t, grid_h, grid_w]], dtype=np.int64)


def _chat_template(path: str, opts: dict[str, Any]) -> str | None:
    """Read the chat template a hub folder keeps beside the processor (chat_template.json)."""
    import json

    local = Path(path) / "chat_template.json"
    try:
        if local.is_file():
            return json.loads(local.read_text(encoding="utf-8"))["chat_template"]
        from huggingface_hub import hf_hub_download

        file = hf_hub_download(path, "chat_template.json", revision=opts.get("revision"))
        return json.loads(Path(file).read_text(encoding="utf-8"))["chat_template"]
    except Exception:  # noqa: BLE001 - the tokenizer may carry it instead; checked by caller
        return None


class GenericCaptioner:
    """Any other transformers VLM with a chat template (LLaVA-NeXT-Video): its AutoProcessor."""

    def __init__(self, source: str, model: Any, processor: Any, device: Any):
        self.source = source
        self.model = model
        self.processor = processor
        self.device = device

    @classmethod
    def load(cls, source: str, path: str, opts: dict[str, Any], device: Any,
             dtype: Any) -> GenericCaptioner:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(path, **opts)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **opts)
        model.to(device).eval()
        return cls(source, model, processor, device)

    def caption(self, clip: Sampled, prompt: str, max_new_tokens: int) -> str:
        import torch

        kind = "image" if clip.is_image else "video"
        messages = [{"role": "user", "content": [{"type": kind}, {"type": "text",
                                                                  "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        media = ({"images": [clip.frames[0]]} if clip.is_image
                 else {"videos": [list(clip.frames)]})
        inputs = self.processor(text=[text], return_tensors="pt", **media).to(self.device)
        for name, value in inputs.items():
            if name.startswith("pixel_values"):
                inputs[name] = value.to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.decode(new, skip_special_tokens=True)
