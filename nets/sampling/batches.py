"""N images from a trained model, a batch at a time, as uint8 images.

Only uint8 images (N·C·H·W bytes) are kept across batches, so N is bounded by disk, not by device
memory. Repeatability: the images are a function of (model, coefficient tables, seed, batch
size, device): one generator, seeded once, draws x_T and every z, batch after batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from nets.pixels import images_to_uint8, layout_shape, to_training_tensor
from nets.progress import Progress
from nets.sampling.chain import sample
from nets.sampling.settings import ChainOptions, Conditioning, DeviceCoefficients, Network, SampleOptions

TRAJECTORY_CHAINS = 8
TRAJECTORY_SNAPSHOTS = 10


@dataclass
class Generated:
    images: np.ndarray  # (N, H, W) or (N, H, W, 3) uint8 (the pixel layout)
    labels: np.ndarray | None  # (N,) int64 for a conditional model
    trajectory: np.ndarray | None  # (S, chains, H, W[, 3]) uint8, noisiest first
    trajectory_timesteps: list[int]  # paper step of each snapshot; 0 is the final image
    seconds: float
    settings: dict = field(default_factory=dict)  # what made them, as saved beside them (Pipeline.sample)

    @property
    def images_per_second(self) -> float:
        return len(self.images) / max(self.seconds, 1e-9)

    def as_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The images as the network sees them: (N, C, H, W) float32 in [-1, 1] (the uint8
        values mapped exactly, so this is what was saved, not the chain's unrounded output)."""
        return to_training_tensor(self.images, device)


def generate(net: Network, coeffs: DeviceCoefficients, n: int, seed: int = 0,
             cond: Conditioning = Conditioning(), options: SampleOptions = SampleOptions()) -> Generated:
    """``n`` uint8 images from the reverse chain, ``options.batch_size`` at a time.

    One generator on the network's device, seeded with ``seed``, draws x_T and each step's z,
    batch after batch. ``cond.labels`` (n,) condition a class-conditional model (``cond.guidance``
    w: ε_u + w(ε_c − ε_u); None or 1 = plain conditional). ``options.trajectory`` records
    snapshots of the first batch's first 8 chains.
    """
    if cond.labels is not None and len(cond.labels) != n:
        raise ValueError(f"{len(cond.labels)} labels for {n} images")
    classes, shape = net.model.config.num_classes, net.model.config.image_shape
    if cond.labels is not None and len(cond.labels) and cond.labels.max() > classes:
        raise ValueError(f"labels must be classes 0-{classes - 1} (or {classes}: no label), got "
                         f"{cond.labels.max()}")
    device = net.diffusion.device
    gen = torch.Generator(device=device).manual_seed(seed)

    def noise_fn(_k: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen, device=device, dtype=like.dtype)

    images = np.empty((n, *layout_shape(shape)), dtype=np.uint8)
    snaps, snap_t = None, []
    bar = Progress("sampling" if options.progress else None, n)
    t0 = time.perf_counter()
    for start in range(0, n, options.batch_size):
        b = min(options.batch_size, n - start)
        x_T = torch.randn((b, *shape), generator=gen, device=device)
        record = TRAJECTORY_SNAPSHOTS if options.trajectory and start == 0 else 0
        chain = ChainOptions(cond.batch(start, start + b, device), cond.cfg_weight, options.clip_x0,
                             record, options.cuda_graph)
        result = sample(net, coeffs, x_T, noise_fn, chain)
        images[start:start + b] = images_to_uint8(result.images)
        if record:
            chains = min(TRAJECTORY_CHAINS, b)
            snaps = np.stack([images_to_uint8(s[:chains]) for s in result.snapshots])
            snap_t = list(result.snapshot_timesteps)
        bar.update(start + b)
    bar.close()
    return Generated(images, cond.labels, snaps, snap_t, time.perf_counter() - t0)
