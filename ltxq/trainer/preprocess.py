"""Turn a dataset folder into training samples (VAE latents + T5 embeddings), cached on disk.

The cache lives in `$LTXQ_CACHE` or `~/.cache/ltxq/preprocessed/`, one folder per key.
The key hashes the dataset's content as names, sizes, modification times and caption texts
(not the media bytes: hashing a 50 GB dataset would cost minutes on every job start, and any
normal edit of a file changes its size or mtime) plus every setting that changes the output:
model source, revision and local model files, bucket, caption prefix, sequence length and
CACHE_VERSION. Device and dtype are left out on purpose, so `ltxq preprocess` on one machine
serves training on another. A cache folder is built under a temporary name and published
with one rename, so a reader (another daemon on the same data) sees all of it or nothing;
when two processes race, the first rename wins and the loser drops its copy. Tensors are
safetensors, metadata JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import LTXPipeline
from safetensors.torch import load_file, save_file

from ltxq import fsutil
from ltxq.config import TINY_RANDOM, TrainingConfig, looks_like_local_path
from ltxq.errors import LtxqError, TrainingError
from ltxq.trainer.captions import (
    CAPTION_FILES,
    load_caption_table,
    media_key,
    sidecar_caption,
)
from ltxq.trainer.family import family_of
from ltxq.trainer.media import MediaError, frame_rate_of, is_media, load_clip_in_buckets
from ltxq.trainer.memory import on_device
from ltxq.trainer.models import Components

# Bump when a code change alters what is written for the same inputs (old caches then miss).
CACHE_VERSION = 2  # 2: each clip's frame rate; captions to data.caption_max_tokens
MANIFEST = "manifest.json"
_STALE_TMP_SECONDS = 24 * 3600

Log = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class PreparedSample:
    """One training example, ready for the transformer."""

    latents: torch.Tensor        # [C, F', H', W'] float32 CPU, normalised
    prompt_embeds: torch.Tensor  # [L, D] float32 CPU, L = max_sequence_length
    prompt_mask: torch.Tensor    # [L] bool
    caption: str                 # the text encoded (caption_prefix included)
    source: str                  # media file name relative to the dataset
    frame_rate: float | None = None  # the file's own rate; None: data.frame_rate applies


@dataclass
class PreparedDataset:
    """The samples of a dataset and where they came from."""

    samples: list[PreparedSample]
    cache_dir: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    from_cache: bool = False


@dataclass(frozen=True)
class _Item:
    key: str                 # relative POSIX name
    path: Path
    caption: str | None      # None: no caption found
    size: int
    mtime_ns: int


def cache_root() -> Path:
    """Return the folder that holds every preprocessing cache."""
    env = os.environ.get("LTXQ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ltxq" / "preprocessed"


def prepare_dataset(config: TrainingConfig, components: Components, log: Log = print,
                    progress: Progress | None = None) -> list[PreparedSample]:
    """Load the dataset's samples from the cache, or encode them and fill the cache.

    Skipped files are reported by name through LOG; raises TrainingError when no usable
    sample is left.
    """
    return prepare(config, components, log, progress).samples


def prepare(config: TrainingConfig, components: Components, log: Log = print,
            progress: Progress | None = None) -> PreparedDataset:
    """Like `prepare_dataset`, but also say where the cache is and what was skipped."""
    dataset = _dataset_dir(config)
    items = _scan(dataset, log)
    key = _cache_key(config, components, items)
    root = cache_root()
    final = root / key
    cached = _load_cache(final, log)
    if cached is not None:
        log(f"preprocessing cache used: {len(cached.samples)} samples from {final}")
        for name, reason in cached.skipped:
            log(f"skipped {name}: {reason} (as when the cache was built)")
        if progress is not None:
            progress(len(items), len(items))
        return cached
    prepared = _build(config, components, dataset, items, log, progress)
    prepared.cache_dir = _publish(root, key, prepared, _manifest_settings(config, components),
                                  dataset, log)
    return prepared


def _cache_key(config: TrainingConfig, components: Components, items: list[_Item]) -> str:
    """Hash the dataset's content and the settings that change the preprocessed tensors."""
    h = hashlib.sha256()
    settings = _manifest_settings(config, components)
    settings["model_files"] = _model_fingerprint(components.source)
    if config.model.base is not None:  # a single file's VAE and T5 may come from its base
        settings["base_files"] = _model_fingerprint(config.model.base)
    h.update(json.dumps(settings, sort_keys=True).encode())
    for item in items:
        h.update(json.dumps([item.key, item.size, item.mtime_ns, item.caption]).encode())
    return h.hexdigest()[:32]


# --- scanning ---------------------------------------------------------------------------


def _dataset_dir(config: TrainingConfig) -> Path:
    if not config.data.dataset:
        raise TrainingError("data.dataset is empty: name the folder of training videos")
    dataset = Path(config.data.dataset).expanduser()
    if not dataset.is_dir():
        raise TrainingError(f"dataset folder not found: {dataset}")
    return dataset


def _scan(dataset: Path, log: Log) -> list[_Item]:
    """List the media files of DATASET (sorted, hidden ones left out) with their captions."""
    table, _ = load_caption_table(dataset)
    paths = sorted((p for p in dataset.rglob("*")
                    if p.is_file() and is_media(p) and not _hidden(dataset, p)),
                   key=lambda p: media_key(dataset, p))
    items = []
    for path in paths:
        key = media_key(dataset, path)
        caption = table.get(key)
        if caption is None:
            caption = sidecar_caption(path)
        st = path.stat()
        items.append(_Item(key, path, caption, st.st_size, st.st_mtime_ns))
    found = {item.key for item in items}
    for key in sorted(set(table) - found):
        log(f"caption table names {key}, but no such media file is in {dataset}")
    return items


def _hidden(dataset: Path, path: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(dataset).parts)


# --- encoding ---------------------------------------------------------------------------


def _build(config: TrainingConfig, components: Components, dataset: Path, items: list[_Item],
           log: Log, progress: Progress | None) -> PreparedDataset:
    buckets = config.data.buckets
    samples: list[PreparedSample] = []
    skipped: list[tuple[str, str]] = []
    where = (f"bucket {buckets[0]}" if len(buckets) == 1
             else "buckets " + ", ".join(str(b) for b in buckets))
    log(f"preprocessing {len(items)} media files in {dataset} for {where}")
    if progress is not None:
        progress(0, len(items))

    def skip(name: str, reason: str) -> None:
        skipped.append((name, reason))
        log(f"skipped {name}: {reason}")

    max_tokens = config.data.caption_max_tokens
    # The VAE and T5 come to the training device only for this (and leave it after).
    with on_device(components.vae, components.device), \
            on_device(components.text_encoder, components.device):
        for done, item in enumerate(items, start=1):
            _encode_item(components, config, item, max_tokens, samples, skip, log)
            if progress is not None:
                progress(done, len(items))
    if not samples:
        raise TrainingError(f"no usable media in {dataset}: {len(items)} found, "
                            f"{len(skipped)} skipped (reasons above)")
    return PreparedDataset(samples, cache_dir=Path(), skipped=skipped)


def _encode_item(components: Components, config: TrainingConfig, item: _Item, max_tokens: int,
                 samples: list[PreparedSample], skip: Callable[[str, str], None],
                 log: Log) -> None:
    """Encode ITEM into SAMPLES, or SKIP it with the reason."""
    if item.caption is None:
        skip(item.key, f"no caption (no {Path(item.key).with_suffix('.txt').name} and "
                       f"not in {' / '.join(CAPTION_FILES)})")
    elif not item.caption:
        skip(item.key, "empty caption")
    else:
        try:
            clip, bucket = load_clip_in_buckets(item.path, config.data.buckets)
        except MediaError as e:
            skip(item.key, str(e))
        else:
            text = _with_prefix(config.data.caption_prefix, item.caption)
            family = family_of(components)
            latents = family.encode_video(components, clip)
            embeds, mask = family.encode_prompt(components, text, max_tokens)
            whole = len(components.tokenizer(text, verbose=False).input_ids)
            if whole > max_tokens:
                log(f"caption of {item.key} cut from {whole} to {max_tokens} tokens "
                    f"(data.caption_max_tokens)")
            fps = frame_rate_of(item.path) if bucket.frames > 1 else None
            samples.append(PreparedSample(latents, embeds, mask, text, item.key, fps))


def _with_prefix(prefix: str, caption: str) -> str:
    return " ".join(p for p in (prefix.strip(), caption.strip()) if p)


def encode_clip(components: Components, clip: torch.Tensor) -> torch.Tensor:
    """Encode CLIP [3, F, H, W] in [-1, 1] to normalised latents [C, F', H', W'] (float32 CPU)."""
    vae = components.vae
    x = clip.unsqueeze(0).to(device=vae.device, dtype=vae.dtype)
    with torch.no_grad():
        # The posterior mode: deterministic, and never tied to the training noise generator.
        latents = vae.encode(x).latent_dist.mode()
        latents = LTXPipeline._normalize_latents(  # noqa: SLF001 - as LTXPipeline does
            latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    return latents[0].float().cpu().contiguous()


def encode_caption(components: Components, text: str, max_tokens: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode TEXT as LTXPipeline does: T5 embeddings [L, D] and mask [L], L = MAX_TOKENS
    (default: the components' max_sequence_length)."""
    encoder = components.text_encoder
    tokens = components.tokenizer(
        [text], padding="max_length", max_length=max_tokens or components.max_sequence_length,
        truncation=True, add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        # No attention mask into T5, as in LTXPipeline._get_t5_prompt_embeds: the embeddings
        # then match what validation sampling feeds the transformer.
        embeds = encoder(tokens.input_ids.to(encoder.device))[0]
    return embeds[0].float().cpu().contiguous(), tokens.attention_mask[0].bool().contiguous()


# --- the cache --------------------------------------------------------------------------


def _manifest_settings(config: TrainingConfig, components: Components) -> dict[str, object]:
    return {"cache_version": CACHE_VERSION, "model_source": components.source,
            "model_revision": config.model.revision,
            "resolution": ", ".join(str(b) for b in config.data.buckets),
            "caption_prefix": config.data.caption_prefix, "model_base": config.model.base,
            "text_encoder_8bit": config.model.text_encoder_8bit,
            "max_sequence_length": config.data.caption_max_tokens}


def _model_fingerprint(source: str) -> list[list[object]]:
    """Names, sizes and mtimes of a local model's files, so retrained weights miss the cache."""
    if source == TINY_RANDOM or not looks_like_local_path(source):
        return []
    folder = Path(source).expanduser()
    if folder.is_file():  # a single-file checkpoint
        st = folder.stat()
        return [[folder.name, st.st_size, st.st_mtime_ns]]
    if not folder.is_dir():
        return []
    rows = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            rows.append([p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns])
    return rows


def _load_cache(folder: Path, log: Log) -> PreparedDataset | None:
    """Return the cached dataset in FOLDER, or None when absent; a damaged one is removed."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        if folder.exists():
            _discard(folder, "it has no manifest", log)
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        samples = []
        for entry in manifest["samples"]:
            tensors = load_file(folder / entry["file"])
            samples.append(PreparedSample(tensors["latents"], tensors["prompt_embeds"],
                                          tensors["prompt_mask"], entry["caption"],
                                          entry["source"], entry.get("frame_rate")))
        skipped = [(s["source"], s["reason"]) for s in manifest.get("skipped", [])]
    except Exception as e:  # noqa: BLE001 - any unreadable entry (SafetensorError too) is damage
        _discard(folder, f"it is damaged ({type(e).__name__}: {e})", log)
        return None
    return PreparedDataset(samples, folder, skipped, from_cache=True)


def _discard(folder: Path, why: str, log: Log) -> None:
    log(f"preprocessing cache {folder} is not usable: {why}; rebuilding it")
    aside = folder.with_name(f".tmp-broken-{folder.name}-{os.getpid()}")
    with contextlib.suppress(OSError):
        os.rename(folder, aside)  # out of the way first, so nobody loads it half-deleted
        shutil.rmtree(aside, ignore_errors=True)


def _publish(root: Path, key: str, prepared: PreparedDataset, settings: dict[str, object],
             dataset: Path, log: Log) -> Path:
    """Write PREPARED as ROOT/KEY atomically and return that folder."""
    final = root / key
    # Not mkdtemp: its 0700 would make a cache shared by several users' daemons private.
    tmp = root / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(root)
        tmp.mkdir()
        _write_folder(tmp, key, prepared, settings, dataset)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
            # Another process published the same key first; its tensors equal ours.
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"preprocessing cache {final} was written by another process meanwhile")
            return final
        fsutil.fsync(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # Training can go on without a cache; only the next job pays for it again.
        log(f"could not write the preprocessing cache in {root}: {e}")
        return final
    log(f"preprocessing cache written: {len(prepared.samples)} samples in {final}")
    return final


def _write_folder(folder: Path, key: str, prepared: PreparedDataset,
                  settings: dict[str, object], dataset: Path) -> None:
    """Write the tensors, then the manifest (the mark of a complete folder), all fsynced."""
    entries = []
    for i, s in enumerate(prepared.samples):
        name = f"{i:06d}.safetensors"
        save_file({"latents": s.latents, "prompt_embeds": s.prompt_embeds,
                   "prompt_mask": s.prompt_mask}, str(folder / name))
        fsutil.fsync(folder / name)
        entries.append({"file": name, "source": s.source, "caption": s.caption,
                        "frame_rate": s.frame_rate})
    manifest = {**settings, "key": key, "dataset": str(dataset),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "samples": entries,
                "skipped": [{"source": n, "reason": r} for n, r in prepared.skipped]}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    fsutil.fsync(folder / MANIFEST)
    fsutil.fsync(folder)


def _remove_stale_tmp(root: Path) -> None:
    """Delete temporary folders that crashed writers left behind long ago."""
    cutoff = time.time() - _STALE_TMP_SECONDS
    for p in root.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if p.stat().st_mtime < cutoff:
                shutil.rmtree(p, ignore_errors=True)


# --- `ltxq preprocess` ------------------------------------------------------------------


def preprocess_cli(config: TrainingConfig) -> int:
    """Fill the cache for CONFIG's dataset with a progress bar; print a summary; return the
    exit code (1 with a one-line message on stderr when it cannot)."""
    from tqdm import tqdm

    from ltxq.trainer.models import load_components, load_options

    start = time.monotonic()
    cuda = torch.cuda.is_available()
    try:
        components = load_components(
            config.model.source, revision=config.model.revision,
            dtype=torch.bfloat16 if cuda else torch.float32, device="cuda" if cuda else "cpu",
            **{**load_options(config), "quantization": "none"})  # the transformer idles here
        with tqdm(total=0, unit="file", desc="preprocess", dynamic_ncols=True) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            prepared = prepare(config, components, log=tqdm.write, progress=progress)
    except LtxqError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    how = "loaded from the cache" if prepared.from_cache else "encoded"
    print(f"{len(prepared.samples)} samples {how}, {len(prepared.skipped)} skipped, "
          f"in {time.monotonic() - start:.1f} s: {prepared.cache_dir}")
    return 0
