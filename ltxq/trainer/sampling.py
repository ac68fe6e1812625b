"""The randomness of a training step: sigmas, noise and the first-frame coin.

Every draw comes from an explicit CPU `torch.Generator`, so a run is a function of its seed
and a checkpoint can store and restore the exact stream (noise is drawn on the CPU and then
moved: the same numbers on every device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Upstream's shifted logit-normal: the shift grows linearly with the token count, from
# 0.95 at 1,024 tokens to 2.05 at 4,096 (longer sequences train at noisier sigmas).
SHIFT_MIN_TOKENS, SHIFT_MAX_TOKENS = 1024, 4096
SHIFT_AT_MIN, SHIFT_AT_MAX = 0.95, 2.05


def shift_for_sequence_length(tokens: int) -> float:
    """Return the logit-normal mean for a sequence of TOKENS tokens (linear, extrapolated)."""
    slope = (SHIFT_AT_MAX - SHIFT_AT_MIN) / (SHIFT_MAX_TOKENS - SHIFT_MIN_TOKENS)
    return SHIFT_AT_MIN + slope * (tokens - SHIFT_MIN_TOKENS)


def sample_sigmas(batch: int, tokens: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Draw BATCH sigmas in (0, 1): sigmoid(N(shift, 1)) or uniform."""
    if kind == "shifted_logit_normal":
        normal = torch.randn(batch, generator=generator) + shift_for_sequence_length(tokens)
        return torch.sigmoid(normal)
    if kind == "uniform":
        return torch.rand(batch, generator=generator)
    raise ValueError(f"unknown timestep sampling {kind!r}")


@dataclass
class Generators:
    """The seeded streams of one run; their states go into every checkpoint."""

    sigma: torch.Generator
    noise: torch.Generator
    condition: torch.Generator

    @classmethod
    def seeded(cls, seed: int) -> Generators:
        """Make independent streams from SEED (changing one setting leaves the others alone)."""
        return cls(*(torch.Generator().manual_seed(seed * 7919 + k) for k in (1, 2, 3)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the generator states (ByteTensors: safe for torch.load(weights_only=True))."""
        return {"sigma": self.sigma.get_state(), "noise": self.noise.get_state(),
                "condition": self.condition.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the states saved by `state_dict`."""
        for name in ("sigma", "noise", "condition"):
            getattr(self, name).set_state(state[name])


class DataOrder:
    """A seeded endless stream of sample indices: a fresh permutation every epoch.

    The permutation of epoch E depends only on (seed, E), so the position alone is the
    whole state of the stream.
    """

    def __init__(self, size: int, seed: int, position: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.position = position
        self._epoch = -1
        self._perm: list[int] = []

    def take(self, count: int) -> list[int]:
        """Return the next COUNT indices (an epoch boundary may fall inside them)."""
        out = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.size)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.size, generator=g).tolist()
                self._epoch = epoch
            out.append(self._perm[offset])
            self.position += 1
        return out


class BucketOrder:
    """A seeded endless stream of batches, each from one resolution bucket (GROUPS of sample
    indices): every epoch shuffles each bucket, cuts it into whole batches of BATCH (a
    remainder waits for a later epoch's shuffle), and shuffles the batches of all buckets.

    Like `DataOrder`, the position (samples taken) is the whole state of the stream.
    """

    def __init__(self, groups: list[list[int]], batch: int, seed: int,
                 position: int = 0) -> None:
        self.groups, self.batch, self.seed, self.position = groups, batch, seed, position
        self.per_epoch = sum(len(g) // batch for g in groups)
        if self.per_epoch == 0:
            raise ValueError(f"no bucket holds a whole batch of {batch} samples")
        self._epoch = -1
        self._batches: list[list[int]] = []

    def take(self, count: int) -> list[int]:
        """Return the next batch's indices (COUNT must be the batch size)."""
        if count != self.batch:
            raise ValueError(f"batches of {self.batch} samples, not {count}")
        epoch, offset = divmod(self.position // self.batch, self.per_epoch)
        if epoch != self._epoch:
            base = self.seed * 1_000_003 + epoch
            batches = []
            for i, group in enumerate(self.groups):
                g = torch.Generator().manual_seed(base * 31 + i + 1)
                shuffled = [group[j] for j in torch.randperm(len(group), generator=g).tolist()]
                batches += [shuffled[k:k + self.batch]
                            for k in range(0, len(group) - self.batch + 1, self.batch)]
            order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(base))
            self._batches = [batches[j] for j in order.tolist()]
            self._epoch = epoch
        self.position += count
        return list(self._batches[offset])


def first_frame_mask(coins: torch.Tensor, tokens: int, tokens_per_frame: int) -> torch.Tensor:
    """Return a [B, TOKENS] bool mask that is True on the first frame's tokens where COINS."""
    mask = torch.zeros(coins.shape[0], tokens, dtype=torch.bool)
    mask[:, :tokens_per_frame] = coins[:, None]
    return mask
