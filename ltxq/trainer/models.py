"""The LTX-Video components: the built-in tiny-random model, a local folder or hub id, or a
single-file checkpoint in the original Lightricks layout (with a diffusers base for the rest).

`tiny-random` is the real architecture (the configs diffusers' own pipeline tests use) with
random weights, built in code in about 0.2 s: nothing is downloaded or committed, so it
never ties us to one transformers serialization format.
"""

from __future__ import annotations

import dataclasses
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

from ltxq.config import SINGLE_FILE_SUFFIXES, TINY_RANDOM, TrainingConfig
from ltxq.errors import TrainingError
from ltxq.trainer.memory import quantize_text_encoder, quantize_transformer

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
    # The training device: the transformer lives there; the VAE and T5 stay on the CPU and
    # come to it only to encode or decode (memory.on_device).
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    family: str = "ltx-video"   # its entry in trainer.family.FAMILIES


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


def load_options(config: TrainingConfig) -> dict[str, object]:
    """Return the `load_components` options CONFIG's [model] asks for (beyond source)."""
    model = config.model
    # peft has no LoRA layer over fp8 weights: the targets stay in the compute dtype.
    keep = tuple(config.lora.target_modules) if model.quantization == "fp8" else ()
    return {"base": model.base, "quantization": model.quantization, "keep_unquantized": keep,
            "text_encoder_8bit": model.text_encoder_8bit}


def load_components(source: str, *, revision: str | None = None,
                    dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", base: str | None = None,
                    quantization: str = "none", keep_unquantized: tuple[str, ...] = (),
                    text_encoder_8bit: bool = False) -> Components:
    """Load SOURCE (tiny-random, a local diffusers folder, a hub id or a single .safetensors
    file with BASE for the rest) in DTYPE: the transformer onto DEVICE, the VAE and T5 onto
    the CPU until they are needed.

    QUANTIZATION (none, int8, fp8) gives the frozen transformer 8-bit weights, except the
    Linear layers named in KEEP_UNQUANTIZED under fp8; TEXT_ENCODER_8BIT does so for T5.
    Raises TrainingError with one line when the folder is missing, the hub cannot be
    reached, or the files are not an LTX-Video model.
    """
    device = torch.device(device)
    if source == TINY_RANDOM:
        components = build_tiny_random()
    elif source.endswith(SINGLE_FILE_SUFFIXES):
        components = _load_single_file(source, base, revision, dtype)
    else:
        pipe = _load_pipeline(source, revision, dtype)
        components = _from_pipeline(pipe, source)
    components.device = device
    for module, where in ((components.transformer, device), (components.vae, "cpu"),
                          (components.text_encoder, "cpu")):
        module.to(device=where)
        if module.dtype != dtype:  # from_pretrained already cast; a second .to() only warns
            module.to(dtype=dtype)
        module.eval()
    if source != TINY_RANDOM:
        # Large buckets and long samples encode and decode in tiles (the tiny VAE's inputs
        # are below one tile, so tiling would change nothing there).
        components.vae.enable_tiling()
    quantize_transformer(components.transformer, quantization, keep_unquantized)
    if text_encoder_8bit:
        quantize_text_encoder(components.text_encoder)
    return components


def _from_pipeline(pipe: LTXPipeline, source: str) -> Components:
    return Components(
        transformer=pipe.transformer, vae=pipe.vae, text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer, scheduler=pipe.scheduler, source=source,
        max_sequence_length=_max_sequence_length(pipe.tokenizer))


def _load_single_file(path: str, base: str | None, revision: str | None,
                      dtype: torch.dtype) -> Components:
    """Load a Lightricks single-file checkpoint: its transformer (and VAE, when the file holds
    one) converted by diffusers, the rest (T5, tokenizer, scheduler, configs) from BASE."""
    from safetensors import safe_open

    file = Path(path).expanduser()
    if not file.is_file():
        raise TrainingError(f"model file not found: {file}")
    try:
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike: one line
        raise TrainingError(f"not a readable .safetensors file: {file} ({e})") from None
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise TrainingError(f"not an LTX-Video single-file checkpoint (no model.diffusion_model."
                            f" keys): {file}")
    if base is None:
        base = _inferred_base(file)
    local = Path(base).expanduser().is_dir()
    base_ref = str(Path(base).expanduser()) if local else base
    common = {"config": base_ref, "local_files_only": local, "torch_dtype": dtype}
    try:
        transformer = LTXVideoTransformer3DModel.from_single_file(
            str(file), subfolder="transformer", **common)
        vae = (AutoencoderKLLTXVideo.from_single_file(str(file), subfolder="vae", **common)
               if any(k.startswith("vae.") for k in keys) else None)
    except Exception as e:  # noqa: BLE001 - conversion and config errors: one line each
        raise TrainingError(f"cannot load {file} with the configs of {base}: "
                            f"{_first_line(e)}") from None
    pipe_kwargs = {"transformer": transformer} | ({"vae": vae} if vae is not None else {})
    pipe = _load_pipeline(base_ref, None if local else revision, dtype, **pipe_kwargs)
    return _from_pipeline(pipe, path)


def _inferred_base(file: Path) -> str:
    """Return the diffusers repository whose configs match FILE's keys (as diffusers infers)."""
    from diffusers.loaders.single_file_utils import (
        DIFFUSERS_DEFAULT_PIPELINE_PATHS,
        infer_diffusers_model_type,
    )
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        # Keys, and only the few tensors diffusers looks at (a 13B file is 26 GB).
        class Lazy(dict):
            def __getitem__(self, key: str) -> torch.Tensor:
                return f.get_tensor(key)

        model_type = infer_diffusers_model_type(Lazy.fromkeys(f.keys()))
    found = DIFFUSERS_DEFAULT_PIPELINE_PATHS.get(model_type, {})
    if "ltx" not in model_type or "pretrained_model_name_or_path" not in found:
        raise TrainingError(f"cannot tell which LTX-Video version {file} is: set model.base")
    return found["pretrained_model_name_or_path"]


def _first_line(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first if len(first) <= 240 else first[:237] + "..."


def _load_pipeline(source: str, revision: str | None, dtype: torch.dtype,
                   **parts: torch.nn.Module) -> LTXPipeline:
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
            dtype=dtype, local_files_only=is_local, **parts)
    except TrainingError:
        raise
    except Exception as e:  # noqa: BLE001 - hub/IO errors come in many classes; one line each
        first = _first_line(e)
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
