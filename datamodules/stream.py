"""The training stream as pure functions of (seed, epoch, sample): the same on any number of processes.

A benchmark must not depend on the box it ran on. So which samples one optimiser step sees, and
how each of them is augmented, are functions of the run's ``seed``, the epoch and the sample's
index in the data set only, never of the rank, the world size or a generator's history:

- :func:`epoch_order` permutes the fit part once per epoch (numpy's PCG64, integer arithmetic:
  the same permutation on every CPU and every GPU box);
- the epoch is cut into ``len // batch_size`` full global batches (the incomplete tail is dropped,
  a new permutation next epoch), and process ``rank`` of ``world`` takes the ``rank``-th equal
  slice of each (:func:`rank_positions`), so 1 process and 8 see the same global batches;
- :func:`sample_keys` gives every (seed, epoch, index) a 32-bit key that seeds that sample's
  augmentation (the CPU pipeline seeds albumentations with it; the GPU path draws from it with a
  counter-based hash, :func:`uniform`), so a sample is augmented identically however the data
  is sharded or split into loader workers, and a resumed run needs nothing but its epoch.

The hash is Wellons' "lowbias32" construction (https://nullprogram.com/blog/2018/07/31/) with
multipliers below 2**31, so that every product of a 32-bit value fits in a signed 64-bit integer:
numpy and torch, on CPU and CUDA, compute bit-identical keys and uniforms.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x68E31DA5  # odd, < 2**31
_GOLDEN = 0x9E3779B9
_ORDER_TAG = 0x5EED  # separates the shuffle's seed sequence from any other use of (seed, epoch)


@overload
def mix32(x: np.ndarray) -> np.ndarray: ...
@overload
def mix32(x: torch.Tensor) -> torch.Tensor: ...
def mix32(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """A bijective 32-bit integer hash on int64 arrays or tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _M1) & MASK32
    x = x ^ (x >> 15)
    x = (x * _M2) & MASK32
    return x ^ (x >> 16)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``0 .. n-1`` for this (seed, epoch): the same on every machine."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), _ORDER_TAG])))
    return rng.permutation(int(n)).astype(np.int64)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full global batches of an epoch over ``n`` samples (the tail is dropped)."""
    return int(n) // int(batch_size)


def rank_positions(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> np.ndarray:
    """Positions (into the fit part) this process trains on in this epoch, step after step.

    Step ``s`` of every process together is exactly global batch ``s`` of a one-process run.
    """
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} is not divisible by world size {world}")
    steps, per = steps_per_epoch(n, batch_size), batch_size // world
    batches = epoch_order(n, seed, epoch)[: steps * batch_size].reshape(steps, batch_size)
    return batches[:, rank * per : (rank + 1) * per].reshape(-1)


def sample_keys(seed: int, epoch: int, index: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The 32-bit augmentation key of each data-set ``index`` in this (seed, epoch), as int64."""
    head = int(mix32(np.int64((int(seed) & MASK32) ^ _GOLDEN)))
    head = int(mix32(np.int64(head ^ (int(epoch) & MASK32))))
    if isinstance(index, torch.Tensor):
        return mix32((index.to(torch.int64) & MASK32) ^ head)
    return mix32((np.asarray(index, dtype=np.int64) & MASK32) ^ head)


def uniform(keys: torch.Tensor, stream: int, count: int | None = None) -> torch.Tensor:
    """Uniform float32 draws in (0, 1) from per-sample ``keys`` (B,), for draw ``stream``.

    ``count=None``: one draw per sample, shape (B,). ``count=k``: k draws per sample, shape (B, k)
    (e.g. one per pixel), element ``j`` a function of (key, stream, j) only.
    """
    base = mix32((keys.to(torch.int64) + (stream + 1) * _GOLDEN) & MASK32)
    if count is not None:
        offsets = mix32(torch.arange(count, device=keys.device, dtype=torch.int64) ^ _GOLDEN)
        base = mix32(base[:, None] ^ offsets[None])
    # The top 24 bits, centred in their bin: exactly representable in float32, never 0 or 1.
    return ((base >> 8).to(torch.float32) + 0.5) * (1.0 / 2**24)
