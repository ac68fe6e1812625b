"""The LTX-Video components: the built-in tiny-random model, or a local folder or hub id.

`tiny-random` is the real architecture (the configs diffusers' own pipeline tests use) with
random weights, built in code in about 0.2 s: nothing is downloaded or committed, so it
never ties us to one transformers serialization format.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from transformers import PreTrainedTokenizerBase, T5Config, T5EncoderModel, T5Tokenizer

from ltxq.config import TINY_RANDOM
from ltxq.errors import TrainingError

TINY_MAX_SEQUENCE_LENGTH = 32
# The real LTX-Video pipeline encodes prompts to 128 tokens by default; longer costs T5 time
# and transformer memory for nothing on typical captions.
DEFAULT_MAX_SEQUENCE_LENGTH = 128
_TINY_VOCAB_SIZE = 1000
_TINY_WORDS = (  # noqa: SIM905 - a word list reads best as text
    "a an the of and with in on to is are over under at from into its this that "
    "red green blue yellow orange purple white black grey gray pink cyan magenta "
    "square circle triangle disc dot bar shape shapes ball box stripe "
    "moving moves move slowly quickly right left up down across around bouncing "
    "background scene video clip small large big bright dark light colour color"
).split()


@dataclass
class Components:
    """Everything a run needs from the model, on one device and dtype."""

    transformer: LTXVideoTransformer3DModel
    vae: AutoencoderKLLTXVideo
    text_encoder: T5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    scheduler: FlowMatchEulerDiscreteScheduler
    source: str                 # as given in config.model.source
    max_sequence_length: int    # 32 for tiny-random, 128 for the real model


def build_tiny_random(seed: int = 0) -> Components:
    """Build the tiny-random LTX-Video model in code, the same weights for the same SEED."""
    # fork_rng so building a model does not move the caller's global RNG (training seeds).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
            num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
            num_layers=1, caption_channels=32)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=8,
            block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
            upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
            patch_size_t=1, encoder_causal=True, decoder_causal=False)
        # Framewise tiling only matters for long real videos; off keeps shapes simple.
        vae.use_framewise_encoding = False
        vae.use_framewise_decoding = False
        torch.manual_seed(seed + 2)
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=_TINY_VOCAB_SIZE, d_model=32, d_kv=8, d_ff=37, num_layers=2,
            num_heads=4, relative_attention_num_buckets=8, is_encoder_decoder=False,
            use_cache=False))
    for module in (transformer, vae, text_encoder):
        module.eval()
    return Components(
        transformer=transformer, vae=vae, text_encoder=text_encoder,
        tokenizer=_tiny_tokenizer(), scheduler=FlowMatchEulerDiscreteScheduler(),
        source=TINY_RANDOM, max_sequence_length=TINY_MAX_SEQUENCE_LENGTH)


def _tiny_tokenizer() -> T5Tokenizer:
    """Build a small unigram T5 tokenizer in code: whole words for demo captions, else letters."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0),
                                       ("▁", -3.0)]
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for word in _TINY_WORDS:
        add("▁" + word, -1.0)
    for ch in string.ascii_lowercase + string.ascii_uppercase + string.digits:
        add("▁" + ch, -4.0)
    for ch in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        add(ch, -5.0)
    assert len(pieces) <= _TINY_VOCAB_SIZE  # ids must fit the tiny text encoder's embedding
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=TINY_MAX_SEQUENCE_LENGTH)


def load_components(source: str, *, revision: str | None = None,
                    dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> Components:
    """Load SOURCE (tiny-random, a local diffusers folder or a hub id) onto DEVICE in DTYPE.

    Raises TrainingError with one line when the folder is missing, the hub cannot be
    reached, or the files are not an LTX-Video model.
    """
    if source == TINY_RANDOM:
        components = build_tiny_random()
    else:
        pipe = _load_pipeline(source, revision, dtype)
        components = Components(
            transformer=pipe.transformer, vae=pipe.vae, text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer, scheduler=pipe.scheduler, source=source,
            max_sequence_length=_max_sequence_length(pipe.tokenizer))
    for module in (components.transformer, components.vae, components.text_encoder):
        module.to(device=device)
        if module.dtype != dtype:  # from_pretrained already cast; a second .to() only warns
            module.to(dtype=dtype)
        module.eval()
    return components


def _load_pipeline(source: str, revision: str | None, dtype: torch.dtype) -> LTXPipeline:
    is_local = source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()
    if is_local:
        folder = Path(source).expanduser()
        if folder.is_file():
            raise TrainingError(f"expected a diffusers model folder, got a file: {folder}")
        if not folder.is_dir():
            raise TrainingError(f"model folder not found: {folder}")
        index = folder / "model_index.json"
        if not index.is_file():
            raise TrainingError(f"not a diffusers model folder (no model_index.json): {folder}")
        _check_ltx_index(index)
        where = str(folder)
    else:
        where = f"hub model {source!r}" + (f" (revision {revision})" if revision else "")
    try:
        pipe = LTXPipeline.from_pretrained(
            str(Path(source).expanduser()) if is_local else source, revision=revision,
            dtype=dtype, local_files_only=is_local)
    except TrainingError:
        raise
    except Exception as e:  # noqa: BLE001 - hub/IO errors come in many classes; one line each
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first if len(first) <= 240 else first[:237] + "..."
        hint = "" if is_local else " (no network, wrong id, or a gated model?)"
        raise TrainingError(f"cannot load {where}{hint}: {first}") from None
    missing = [name for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
               if getattr(pipe, name, None) is None]
    if missing:
        raise TrainingError(f"{where} lacks {', '.join(missing)}")
    return pipe


def _check_ltx_index(index: Path) -> None:
    try:
        class_name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError) as e:
        raise TrainingError(f"unreadable {index}: {e}") from None
    if "LTX" not in class_name:
        raise TrainingError(f"not an LTX-Video model: {index} names {class_name or 'no class'}")


def _max_sequence_length(tokenizer: PreTrainedTokenizerBase) -> int:
    limit = getattr(tokenizer, "model_max_length", None) or DEFAULT_MAX_SEQUENCE_LENGTH
    return int(min(limit, DEFAULT_MAX_SEQUENCE_LENGTH))


def make_pipeline(components: Components) -> LTXPipeline:
    """Wrap COMPONENTS in an LTXPipeline (shared modules, no copies) for validation sampling."""
    return LTXPipeline(
        transformer=components.transformer, vae=components.vae,
        text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        scheduler=components.scheduler)
