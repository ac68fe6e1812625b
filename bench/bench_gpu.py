"""GPU step time and memory: ltxq's training loop on the real-size LTX-Video 2B and 13B
transformers, next to a bare PyTorch loop of the same model measured in the same run.

The prepared one-shot check for a lent GPU machine (issue 5 item 5, issue 14 item 7).
It builds the 2B
transformer from its config (28 layers, 32 heads of 64, cross-attention 2048, caption
channels 4096, 128 latent channels) with random weights, in bf16, adds a LoRA of rank 32 on
the attention projections (peft, through ltxq's own `add_lora`), turns on gradient
checkpointing, and runs ltxq's `fit` (the same rectified-flow loss, sigma sampling,
first-frame conditioning, AdamW, clipping and schedule a job uses) for WARMUP + STEPS steps.

No VAE or T5 is loaded: the samples are random latents of the shape the real VAE gives
768x512x49 (32x space, 8x time: 128 x 7 x 16 x 24 = 2,688 tokens) and random T5-XXL
embeddings (4096 wide, 128 tokens). Random weights run the same kernels as trained ones,
so s/step and memory are those of real training at this size.

    .venv/bin/python bench/bench_gpu.py                 # on a CUDA machine
    .venv/bin/python bench/bench_gpu.py --tiny          # CPU smoke check (tiny model, fp32)
    .venv/bin/python bench/bench_gpu.py --all           # the issue-14 set, one process each:
        2B bf16 (ltxq, bare), 13B int8 weights (ltxq, bare); then a markdown table

`--model 13b` is the 13B 0.9.7/0.9.8 transformer (48 layers, 32 heads of 128, cross-attention
4096: 13.04 B parameters); `--quantization int8|fp8` gives its frozen weights 8 bits (torchao,
as `model.quantization` does; bf16 13B alone is 24.3 GiB); `--optimizer adamw8bit` uses
bitsandbytes; `--loop bare` replaces ltxq's `fit` by a plain loop (pack, noise, forward,
MSE, backward, clip, AdamW step) over the same LoRA-wrapped transformer: the overhead of
ltxq's loop is the difference.

Prints one block: median s/step over the timed steps and peak GPU memory
(torch.cuda.max_memory_allocated, from after the model is built to the end of the run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from timing_run import TimingRun  # bench/ is on sys.path when a bench script runs

REAL_TRANSFORMER = dict(  # Lightricks/LTX-Video 2B (REFERENCE.md)
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
    attention_head_dim=64, cross_attention_dim=2048, num_layers=28, caption_channels=4096)
REAL_13B_TRANSFORMER = dict(  # Lightricks/LTX-Video 13B 0.9.7 / 0.9.8 (REFERENCE.md)
    REAL_TRANSFORMER, attention_head_dim=128, cross_attention_dim=4096, num_layers=48)
REAL_SPATIAL_COMPRESSION = 32
REAL_TEMPORAL_COMPRESSION = 8
REAL_TEXT_TOKENS = 128  # ltxq's DEFAULT_MAX_SEQUENCE_LENGTH for the real model
TINY_RESOLUTION = "32x32x9"
SAMPLES = 2  # random samples the loop cycles through (one per step at batch 1)


@dataclass(frozen=True)
class Figures:
    """What one run measured."""

    model: str
    device: str
    precision: str
    resolution: str
    latent_shape: tuple[int, ...]  # [C, F, H, W]
    tokens: int
    text_shape: tuple[int, int]    # [tokens, width]
    rank: int
    trainable: int                 # LoRA parameters
    warmup: int
    step_seconds: list[float]      # the timed steps
    peak_bytes: int | None         # GPU only
    loop: str = "ltxq"             # ltxq's fit, or the bare baseline loop
    quantization: str = "none"
    optimizer: str = "adamw"

    @property
    def median(self) -> float:
        return statistics.median(self.step_seconds)


def build_components(tiny: bool, device: torch.device, dtype: torch.dtype, model: str = "2b"):
    """Return ltxq Components: the tiny-random model, or the 2B/13B transformer (random weights).

    For the 2B model only the transformer is real: the loop reads nothing of the VAE but its
    compression ratios (no validation prompts), and no text is encoded.
    """
    from diffusers import LTXVideoTransformer3DModel

    from ltxq.trainer.models import DEFAULT_MAX_SEQUENCE_LENGTH, Components, build_tiny_random

    if tiny:
        components = build_tiny_random()  # float32, as --tiny runs
        components.transformer.to(device=device)
        return components
    # Built on the device and in DTYPE: 2B parameters initialise in a blink on a GPU (slowly
    # on a CPU), with no float32 copy first (and no diffusers warning about casting later).
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = LTXVideoTransformer3DModel(
                **(REAL_13B_TRANSFORMER if model == "13b" else REAL_TRANSFORMER))
    finally:
        torch.set_default_dtype(default)
    transformer.eval()
    vae = SimpleNamespace(spatial_compression_ratio=REAL_SPATIAL_COMPRESSION,
                          temporal_compression_ratio=REAL_TEMPORAL_COMPRESSION)
    return Components(transformer=transformer, vae=vae, text_encoder=None, tokenizer=None,
                      scheduler=None, source=f"LTX-Video {model.upper()} config, random weights",
                      max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH)


def latent_shape(components, resolution: str) -> tuple[int, int, int, int]:
    """Return the [C, F, H, W] latents COMPONENTS' VAE makes of a WxHxF clip."""
    from ltxq.config import Resolution

    r = Resolution.parse(resolution)
    s, t = components.vae.spatial_compression_ratio, components.vae.temporal_compression_ratio
    return (components.transformer.config.in_channels, (r.frames - 1) // t + 1,
            r.height // s, r.width // s)


def random_samples(shape: tuple[int, ...], text_tokens: int, text_width: int,
                   count: int = SAMPLES, seed: int = 0) -> list:
    """Return COUNT PreparedSamples of random latents and random text embeddings."""
    from ltxq.trainer.preprocess import PreparedSample

    g = torch.Generator().manual_seed(seed)
    return [PreparedSample(latents=torch.randn(shape, generator=g),
                           prompt_embeds=torch.randn((text_tokens, text_width), generator=g),
                           prompt_mask=torch.ones(text_tokens, dtype=torch.bool),
                           caption=f"random sample {i}", source=f"random_{i}")
            for i in range(count)]


def bench(args: argparse.Namespace) -> Figures:
    """Build the model, run WARMUP + STEPS optimizer steps of ltxq's loop, measure them."""
    from ltxq.config import parse_config
    from ltxq.trainer.device import weight_dtype
    from ltxq.trainer.loop import fit
    from ltxq.trainer.lora import remove_lora
    from ltxq.trainer.memory import quantize_transformer

    device = torch.device(args.device)
    precision = "no" if args.tiny else "bf16"
    components = build_components(args.tiny, device, weight_dtype(precision), args.model)
    # As model.quantization does (fp8 keeps the LoRA targets: peft has no fp8 LoRA layer).
    quantize_transformer(components.transformer, args.quantization,
                         ("to_k", "to_q", "to_v", "to_out.0") if args.quantization == "fp8" else ())
    shape = latent_shape(components, args.resolution)
    text_tokens = components.max_sequence_length if args.tiny else REAL_TEXT_TOKENS
    text_width = components.transformer.config.caption_channels
    samples = random_samples(shape, text_tokens, text_width)
    config = parse_config({
        "model": {"source": "tiny-random"},  # not loaded: fit() gets the components
        "data": {"dataset": "unused", "resolution": args.resolution},
        "lora": {"rank": args.rank},
        "optimization": {"steps": args.warmup + args.steps, "batch_size": 1,
                         "mixed_precision": precision, "gradient_checkpointing": True,
                         "optimizer": args.optimizer},
        "validation": {"prompts": []},
        "checkpoints": {"interval": 0}})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    if args.loop == "bare":
        steps, trainable = bare_loop(components, samples, config, device, precision,
                                     args.warmup)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_gpu_") as out:
            run = TimingRun(Path(out), str(device))
            try:
                fit(config, run, components, samples, device=device, precision=precision)
                trainable = sum(p.numel() for p in components.transformer.parameters()
                                if p.requires_grad)
            finally:
                remove_lora(components.transformer)
        # Stamps mark step ends; the first timed step starts when the last warm-up one ended.
        stamps = run.stamps[args.warmup - 1:]
        steps = [b - a for a, b in itertools.pairwise(stamps)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return Figures(
        model="tiny-random" if args.tiny else
        f"LTX-Video {args.model.upper()} transformer, random weights",
        loop=args.loop, quantization=args.quantization, optimizer=args.optimizer,
        device=_device_name(device), precision="fp32" if precision == "no" else precision,
        resolution=args.resolution, latent_shape=shape, tokens=shape[1] * shape[2] * shape[3],
        text_shape=(text_tokens, text_width), rank=args.rank, trainable=trainable,
        warmup=args.warmup, step_seconds=steps, peak_bytes=peak)


def bare_loop(components, samples: list, config, device: torch.device, precision: str,
              warmup: int) -> tuple[list[float], int]:
    """Run a plain training loop over the same LoRA-wrapped transformer; return the timed
    step seconds and the LoRA parameter count. No sigma shift, no first-frame conditioning,
    no schedule, no checkpoints: the floor ltxq's loop is compared with."""
    from diffusers import LTXPipeline

    from ltxq.trainer.lora import add_lora, remove_lora
    from ltxq.trainer.memory import make_optimizer

    opt = config.optimization
    transformer = components.transformer
    params = add_lora(transformer, config.lora, seed=0)
    transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = make_optimizer(params, opt)
    vae = components.vae
    _, f, h, w = samples[0].latents.shape
    rope = (vae.temporal_compression_ratio / 25.0, vae.spatial_compression_ratio,
            vae.spatial_compression_ratio)
    dtype = transformer.dtype
    seconds = []
    try:
        for i in range(opt.steps):
            sample = samples[i % len(samples)]
            start = time.perf_counter()
            x = LTXPipeline._pack_latents(sample.latents[None].to(device, dtype), 1, 1)  # noqa: SLF001
            noise = torch.randn_like(x)
            sigma = torch.rand(1, device=device, dtype=dtype)
            noisy = (1 - sigma) * x + sigma * noise
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                pred = transformer(
                    hidden_states=noisy,
                    encoder_hidden_states=sample.prompt_embeds[None].to(device, dtype),
                    timestep=sigma * 1000, encoder_attention_mask=sample.prompt_mask[None].to(
                        device), num_frames=f, height=h, width=w,
                    rope_interpolation_scale=rope, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(pred.float(), (noise - x).float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, opt.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()  # waits for the device, as ltxq's loop does each step
            seconds.append(time.perf_counter() - start)
        trainable = sum(p.numel() for p in params)
    finally:
        remove_lora(transformer)
    return seconds[warmup:], trainable


def render(f: Figures) -> str:
    """Return the figure block."""
    c, fr, h, w = f.latent_shape
    memory = (f"{f.peak_bytes / 2**30:8.2f} GiB  (torch.cuda.max_memory_allocated)"
              if f.peak_bytes is not None else
              f"n/a on CPU (peak RSS {_peak_rss_gib():.2f} GiB)")
    return "\n".join([
        f"bench_gpu: {f.model}; {f.loop} loop"
        + (f"; {f.quantization} weights" if f.quantization != "none" else ""),
        f"  {f.device}, torch {torch.__version__}, "
        + ("fp32" if f.precision == "fp32" else f"{f.precision} weights and autocast"),
        f"  video {f.resolution} -> latents {c}x{fr}x{h}x{w} = {f.tokens} tokens; "
        f"text {f.text_shape[0]}x{f.text_shape[1]}; batch 1",
        f"  LoRA rank {f.rank} on to_k/to_q/to_v/to_out.0 ({f.trainable:,} params), "
        f"gradient checkpointing, {f.optimizer}",
        f"  steps: {f.warmup} warm-up + {len(f.step_seconds)} timed",
        f"  median s/step    {f.median:8.3f} s  (min {min(f.step_seconds):.3f}, "
        f"max {max(f.step_seconds):.3f})",
        f"  peak memory      {memory}",
    ])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny-random model in fp32 (a CPU smoke check, not a figure)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (3; tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (5; tiny 2)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--resolution", default=None,
                        help=f"WxHxF (768x512x49; tiny {TINY_RESOLUTION})")
    parser.add_argument("--device", default=None, help="cuda, cuda:N (tiny: cpu)")
    parser.add_argument("--model", choices=("2b", "13b"), default="2b")
    parser.add_argument("--quantization", choices=("none", "int8", "fp8"), default="none")
    parser.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw")
    parser.add_argument("--loop", choices=("ltxq", "bare"), default="ltxq")
    parser.add_argument("--all", action="store_true",
                        help="2B (ltxq, bare) and 13B int8 (ltxq, bare), one process each")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.steps = args.steps if args.steps is not None else (2 if args.tiny else 5)
    args.resolution = args.resolution or (TINY_RESOLUTION if args.tiny else "768x512x49")
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA GPU here; run it on a GPU machine, or add --tiny for "
              "the CPU smoke check", file=sys.stderr)
        return 2
    if args.all:
        return run_all(args)
    figures = bench(args)
    print(render(figures))
    if args.json:
        print(JSON_PREFIX + json.dumps(asdict(figures)))
    sys.stdout.flush()
    return 0


JSON_PREFIX = "bench_gpu-json "
# The issue-14 set: each in its own process, so one's peak memory never counts in another's.
VARIANTS = (("2b", "none", "ltxq"), ("2b", "none", "bare"),
            ("13b", "int8", "ltxq"), ("13b", "int8", "bare"))


def run_all(args: argparse.Namespace) -> int:
    """Run every variant in a fresh process; print each block, then a markdown table."""
    rows, failed = [], 0
    for model, quantization, loop in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--json", "--model", model,
               "--quantization", quantization, "--loop", loop, "--rank", str(args.rank),
               "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--resolution", args.resolution, "--device", args.device,
               "--optimizer", args.optimizer] + (["--tiny"] if args.tiny else [])
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        lines = p.stdout.splitlines()
        print("\n".join(line for line in lines if not line.startswith(JSON_PREFIX)))
        doc = next((json.loads(line[len(JSON_PREFIX):]) for line in lines
                    if line.startswith(JSON_PREFIX)), None)
        if p.returncode != 0 or doc is None:
            failed += 1
            last = (p.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"bench_gpu: {model} {quantization} {loop} failed: {last}")
            continue
        rows.append(doc)
    print("\n| model | weights | loop | median s/step | peak GiB |\n|---|---|---|---|---|")
    for d in rows:
        peak = f"{d['peak_bytes'] / 2**30:.2f}" if d["peak_bytes"] is not None else "n/a (CPU)"
        print(f"| {d['model']} | {d['quantization']} | {d['loop']} | "
              f"{statistics.median(d['step_seconds']):.3f} | {peak} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
