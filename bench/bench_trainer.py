"""Trainer overhead: s/step of ltxq's training loop against a bare loop of the same work.

Both sides train the tiny-random LTX-Video transformer with a rank-R LoRA on the same cached
latents, batch and number of steps. The bare loop below is what a person would write with no
queue: no progress reports, no stop checks, no checkpoints, no schedule bookkeeping. The two
alternate for ROUNDS rounds so drift on the machine hits both alike; each round reports the
median step time after the first WARMUP steps.

    .venv/bin/python bench/bench_trainer.py [--steps 150] [--rounds 3] [--resolution 64x64x9]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import LTXPipeline
from peft import LoraConfig as PeftLoraConfig
from timing_run import TimingRun  # bench/ is on sys.path when a bench script runs

from ltxq.config import parse_config
from ltxq.trainer.demo_data import write_demo_dataset
from ltxq.trainer.loop import fit
from ltxq.trainer.lora import remove_lora
from ltxq.trainer.models import build_tiny_random
from ltxq.trainer.preprocess import prepare_dataset

WARMUP = 10


def ltxq_round(config, components, samples, workdir: Path) -> float:
    """Median s/step of ltxq's loop (checkpoints only at the end, no validation)."""
    run = TimingRun(Path(tempfile.mkdtemp(dir=workdir)))
    try:
        fit(config, run, components, samples)
    finally:
        remove_lora(components.transformer)
    steps = [b - a for a, b in itertools.pairwise(run.stamps[WARMUP:])]
    return statistics.median(steps)


def bare_round(config, components, samples) -> float:
    """Median s/step of a hand-written loop: same model, LoRA, batch, loss and optimizer."""
    opt, lora = config.optimization, config.lora
    transformer = components.transformer
    transformer.requires_grad_(False)
    torch.manual_seed(opt.seed)
    transformer.add_adapter(PeftLoraConfig(r=lora.rank, lora_alpha=lora.effective_alpha,
                                           target_modules=list(lora.target_modules)))
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    latents = torch.stack([s.latents for s in samples])
    embeds = torch.stack([s.prompt_embeds for s in samples])
    mask = torch.stack([s.prompt_mask for s in samples])
    _, _, f, h, w = latents.shape
    vae = components.vae
    rope = (vae.temporal_compression_ratio / config.data.frame_rate,
            vae.spatial_compression_ratio, vae.spatial_compression_ratio)
    transformer.train()
    stamps = []
    for step in range(opt.steps):
        i = step % len(samples)
        x = LTXPipeline._pack_latents(latents[i:i + 1], 1, 1)  # noqa: SLF001
        noise = torch.randn_like(x)
        sigma = torch.sigmoid(torch.randn(1))
        noisy = (1 - sigma) * x + sigma * noise
        timestep = (sigma * 1000).round()[:, None].expand(-1, x.shape[1])
        pred = transformer(hidden_states=noisy, encoder_hidden_states=embeds[i:i + 1],
                           timestep=timestep, encoder_attention_mask=mask[i:i + 1],
                           num_frames=f, height=h, width=w, rope_interpolation_scale=rope,
                           return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opt.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # a real loop looks at its loss too
        stamps.append(time.perf_counter())
    remove_lora(transformer)
    steps = [b - a for a, b in itertools.pairwise(stamps[WARMUP:])]
    return statistics.median(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resolution", default="64x64x9")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ.setdefault("LTXQ_CACHE", str(workdir / "cache"))
        dataset = write_demo_dataset(workdir / "data", clips=2, width=96, height=80, frames=12)
        config = parse_config({
            "model": {"source": "tiny-random"},
            "data": {"dataset": str(dataset), "resolution": args.resolution},
            "lora": {"rank": args.rank},
            "optimization": {"steps": args.steps, "first_frame_conditioning_p": 0.0},
            "checkpoints": {"interval": 0},
        })
        components = build_tiny_random()
        samples = prepare_dataset(config, components, log=lambda m: None)
        ours, bare = [], []
        for _ in range(args.rounds):
            bare.append(bare_round(config, components, samples))
            ours.append(ltxq_round(config, components, samples, workdir))
    med_ours, med_bare = statistics.median(ours), statistics.median(bare)
    print(f"trainer overhead, tiny-random {args.resolution}, rank {args.rank}, "
          f"{args.steps} steps x {args.rounds} rounds, {torch.get_num_threads()} threads")
    print(f"  bare loop   median s/step  {med_bare * 1000:8.2f} ms")
    print(f"  ltxq loop   median s/step  {med_ours * 1000:8.2f} ms")
    print(f"  ratio ltxq/bare            {med_ours / med_bare:8.3f}  (target < 1.05)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
